"""The efence library's build step (setup.py's ``build_efence``), where it is found, and the
message when it is missing; and the comparison with Debian's Electric Fence when installed.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

import sparsemm.efence
from sparsemm import cli
from sparsemm.efence import driver

from conftest import ROOT, needs_guards

LIBEFENCE = "/usr/lib/libefence.so.0"


def _setup_module():
    """setup.py as a module: its build helpers without running setup() (guarded by __main__)."""
    spec = importlib.util.spec_from_file_location("sparsemm_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_without_a_compiler_fails_softly_and_says_why(tmp_path, monkeypatch):
    setup = _setup_module()
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    reason = setup.compile_library(tmp_path)
    assert reason is not None and "no C compiler" in reason
    assert not (tmp_path / driver.LIB_NAME).exists()
    assert (tmp_path / driver.BUILD_ERROR).read_text().strip() == reason


def test_build_with_a_compiler_gives_the_library(tmp_path, monkeypatch):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    monkeypatch.delenv("CC", raising=False)
    setup = _setup_module()
    (tmp_path / driver.BUILD_ERROR).write_text("stale\n")
    assert setup.compile_library(tmp_path) is None
    assert (tmp_path / driver.LIB_NAME).is_file()
    assert not (tmp_path / driver.BUILD_ERROR).exists()  # a stale reason is removed
    assert setup.LIB_NAME == driver.LIB_NAME and setup.ERROR_NAME == driver.BUILD_ERROR


def test_missing_library_is_one_clear_line(tmp_path, monkeypatch, capsys):
    (tmp_path / driver.BUILD_ERROR).write_text("no C compiler found ($CC, cc, gcc and clang are all missing)\n")
    monkeypatch.setattr(driver, "library_dir", lambda: tmp_path)
    assert cli.main(["efence", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sparsemm efence: the efence library is not built (no C compiler found")
    assert "reinstall sparsemm" in err
    (tmp_path / driver.BUILD_ERROR).unlink()
    with pytest.raises(driver.LibraryNotBuilt, match="no build of it was found"):
        driver.library_path()


def test_the_library_is_not_importable_as_a_python_module():
    names = {m.name for m in pkgutil.iter_modules(sparsemm.efence.__path__)}
    assert names == {"cli", "driver"}
    assert importlib.util.find_spec("sparsemm.efence.libsparsemm_efence") is None


def test_exit_status_rule():
    assert driver.exit_status(0) == 0 and driver.exit_status(3) == 3
    assert driver.exit_status(-11) == 139 and driver.exit_status(-9) == 137


def test_environment_puts_the_library_first_and_keeps_other_preloads():
    try:
        lib = str(driver.library_path())
    except driver.LibraryNotBuilt as exc:
        pytest.skip(str(exc))
    env = driver.environment(driver.Options(sample=5), {"LD_PRELOAD": "/x/a.so:/x/b.so", "K": "v"})
    assert env["LD_PRELOAD"] == f"{lib} /x/a.so /x/b.so"
    assert env["SPARSEMM_EFENCE_SAMPLE"] == "5" and env["K"] == "v"


@needs_guards
def test_electric_fence_cannot_run_100000_live_blocks(tmp_path):
    """Debian's Electric Fence (the bench installs it; tests only use it when present)."""
    if not os.path.exists(LIBEFENCE):
        pytest.skip("Debian's electric-fence is not installed (apt-get install electric-fence); "
                    "bench/bench_efence.py installs it")
    try:
        driver.library_path()
    except driver.LibraryNotBuilt as exc:
        pytest.skip(str(exc))
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    prog = tmp_path / "cases"
    subprocess.run([cc, "-O1", "-pthread", "-o", str(prog), str(ROOT / "tests/efence/cases.c")],
                   check=True, timeout=300)
    ef = subprocess.run([str(prog), "live", "100000"], capture_output=True, text=True, timeout=300,
                        env={**os.environ, "LD_PRELOAD": LIBEFENCE, "EF_ALIGNMENT": "1"})
    assert ef.returncode != 0 and "done" not in ef.stdout
    assert "mprotect() failed" in ef.stderr
    ours = subprocess.run([sys.executable, "-m", "sparsemm", "efence", "--", str(prog), "live",
                           "100000"], capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0 and ours.stdout.splitlines()[-1] == "done"
