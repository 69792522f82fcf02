"""Every example of README.md and docs/*.md runs as written after a plain ``pip install``.

The module builds a wheel the normal way (``pip wheel``, build isolation: setuptools and
mypy from the package index, setup.py compiling the model core with mypyc and the efence C
library) from a copy of the checkout's files (as a fresh clone has them), installs it with ``pip install`` in a
fresh venv (dependencies from the index or pip's cache, as a user's install gets them), and
runs every example (tests/doc_examples.py; ``python`` blocks included) with that venv first
on PATH, in a scratch directory outside the checkout, with no PYTHONPATH: the checkout's
tests/, docs/ and src/ are out of reach. The build and install take minutes (the mypyc
compile most of it), once for the module; the module is marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from doc_examples import ROOT, documents, examples, run_document

pytestmark = pytest.mark.slow

# What a build or install may not print: setuptools' deprecation notices (the licence
# metadata, a data directory it would treat as a package) are ours to fix.
BUILD_WARNINGS = ("SetuptoolsDeprecationWarning", "Package would be ignored", "License classifiers",
                  "project.license` as a TOML table", "check.warn")


def _copy_tracked(dest: Path) -> None:
    """The checkout's files as a fresh clone would have them once committed: tracked files as
    they are now, and new files git does not ignore."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True)
        names = [n for n in out.stdout.decode().split("\0") if n]
    else:  # an unpacked source tree: everything but what a build or a venv leaves behind
        skip = {".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", ".git"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if not skip.intersection(p.relative_to(ROOT).parts) and not p.name.endswith((".so", ".so.1"))
                 and ".egg-info" not in str(p)]
    for name in names:
        src = ROOT / name
        if src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / name)
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=env, **kw)
    assert out.returncode == 0, f"{' '.join(argv)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


class Installed:
    """The wheel, the venv it was installed into and what building and installing printed."""

    def __init__(self, wheel: Path, venv: Path, build_log: str, install_log: str, seconds: dict[str, float]):
        self.wheel, self.venv, self.build_log, self.install_log, self.seconds = wheel, venv, build_log, install_log, seconds
        self.bin = venv / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("pip-install")
    source, wheels, venv = tmp / "sparsemm", tmp / "wheels", tmp / "venv"
    _copy_tracked(source)
    t0 = time.monotonic()
    # -v: pip shows the build backend's output (setuptools' warnings) only when verbose
    build = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir", str(wheels), str(source)],
                 cwd=tmp)
    t1 = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    (wheel,) = wheels.glob("sparsemm-*.whl")
    install = _run([str(venv / "bin" / "python"), "-m", "pip", "install", str(wheel)], cwd=tmp)
    t2 = time.monotonic()
    print(f"wheel built in {t1 - t0:.0f} s, venv and pip install in {t2 - t1:.0f} s")
    return Installed(wheel, venv, build.stdout + build.stderr, install.stdout + install.stderr,
                     {"build": t1 - t0, "install": t2 - t1})


def test_the_build_and_install_print_no_setuptools_warning(installed):
    for log in (installed.build_log, installed.install_log):
        found = [w for w in BUILD_WARNINGS if w in log]
        assert not found, f"{found}:\n{log[-4000:]}"


def test_the_wheel_holds_the_compiled_core_the_efence_library_and_the_samples(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert any(n.startswith("sparsemm/data/maps/") and n.endswith(".maps") for n in names)
    assert "sparsemm/data/example-programs/ladders.py" in names
    assert not any(n.startswith(("tests/", "docs/")) for n in names)
    if shutil.which("cc") or shutil.which("gcc"):  # setup.py builds both with a C compiler
        assert "sparsemm/efence/libsparsemm_efence.so.1" in names
        assert any(n.endswith(".so") and "__mypyc" in n for n in names), names
        out = _run([str(installed.bin / "sparsemm"), "--version"], cwd=installed.venv)
        assert "model core: compiled" in out.stdout and "efence C library: built" in out.stdout, out.stdout
        ran = _run([str(installed.bin / "sparsemm"), "efence", "--", "sort", "/etc/hostname"], cwd=installed.venv)
        assert ran.stdout == "".join(sorted(Path("/etc/hostname").read_text().splitlines(True)))


def test_the_installed_package_is_not_the_checkout(installed):
    out = _run([str(installed.bin / "python"), "-c", "import sparsemm; print(sparsemm.__file__)"], cwd=installed.venv)
    assert Path(out.stdout.strip()).is_relative_to(installed.venv), out.stdout


DOCS = [p for p in documents() if examples(p)]


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_example_runs_from_a_pip_install(installed, path):
    todo = examples(path)
    failures, skipped = run_document(path, todo, installed.bin)
    assert not failures, "\n\n".join(failures)
    if skipped and len(skipped) == len(todo):
        pytest.skip("; ".join(skipped))
