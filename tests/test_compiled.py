"""The compiled model core (mypyc) and its pure-Python fallback: which one loads, when each is
forced, that a stale extension never shadows edited code, that both give the same records, and
that setup.py's build step never fails the install."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsemm import _compiled, workloads

ROOT = Path(__file__).resolve().parent.parent
PKG = Path(_compiled.__file__).resolve().parent
SPARSEMM = shutil.which("sparsemm", path=str(Path(sys.executable).parent)) or "sparsemm"


def built_here() -> bool:
    """The install compiled the core: every module has an extension and the record exists."""
    if not (PKG / _compiled.SOURCES_FILE).is_file():
        return False
    return all(list((PKG.parent / Path(*m.split(".")).parent).glob(m.rpartition(".")[2] + ".*.so"))
               for m in _compiled.COMPILED_MODULES)


def run_py(code: str, *, pure: bool, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != _compiled.ENV_PURE}
    if pure:
        env[_compiled.ENV_PURE] = "1"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, check=True)


STATUS = "import json; from sparsemm import _compiled; print(json.dumps(_compiled.status()))"


def test_pure_python_forced_loads_every_core_module_from_source():
    st = json.loads(run_py(STATUS, pure=True).stdout)
    assert st["core"] == "pure-python" and st["forced_pure"]
    assert set(st["modules"]) == set(_compiled.COMPILED_MODULES)
    assert set(st["modules"].values()) == {"pure-python"}


def test_default_loads_the_compiled_core_exactly_when_the_install_built_it():
    st = json.loads(run_py(STATUS, pure=False).stdout)
    want = "compiled" if built_here() and not _compiled.stale_sources() else "pure-python"
    assert st["core"] == want and not st["forced_pure"]


def test_this_test_run_uses_the_build_the_environment_asks_for():
    want_pure = _compiled.pure_python_forced() or not built_here()
    assert _compiled.status()["core"] == ("pure-python" if want_pure else "compiled")


def test_version_and_probe_say_which_core_is_in_use():
    env = {k: v for k, v in os.environ.items() if k != _compiled.ENV_PURE}
    pure = subprocess.run([SPARSEMM, "--version"], capture_output=True, text=True,
                          env={**env, _compiled.ENV_PURE: "1"}, timeout=120)
    assert pure.returncode == 0 and pure.stdout.startswith("sparsemm ")
    assert "model core: pure Python (SPARSEMM_PURE_PYTHON set)" in pure.stdout
    default = subprocess.run([SPARSEMM, "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert default.returncode == 0
    assert ("model core: compiled (mypyc: vma_tree" in default.stdout) == (
        built_here() and not _compiled.stale_sources())
    probe = subprocess.run([SPARSEMM, "probe"], capture_output=True, text=True,
                           env={**env, _compiled.ENV_PURE: "1"}, timeout=120)
    assert "model core: pure Python" in probe.stdout


def test_a_stale_extension_never_shadows_the_source(tmp_path):
    """An edited source (its hash no longer the one compiled) loads from the .py, and says why."""
    if not built_here():
        pytest.skip("this install has no compiled core (no C compiler or no mypyc at install time)")
    shutil.copytree(PKG, tmp_path / "sparsemm", ignore=shutil.ignore_patterns("__pycache__"))
    for lib in PKG.parent.glob("*__mypyc.*.so"):  # mypyc's shared runtime sits beside the package
        shutil.copy(lib, tmp_path)
    code = STATUS + "; print(_compiled.describe())"
    fresh = run_py(code, pure=False, pythonpath=str(tmp_path)).stdout.splitlines()
    assert json.loads(fresh[0])["core"] == "compiled"
    src = tmp_path / "sparsemm" / "model" / "merge.py"
    src.write_text(src.read_text() + "\n# an edit after the build\n")
    stale = run_py(code, pure=False, pythonpath=str(tmp_path)).stdout.splitlines()
    assert json.loads(stale[0])["core"] == "pure-python"
    assert "stale (merge changed since the build" in stale[1]


def test_compiled_and_pure_cores_give_the_same_records_and_counts():
    code = ("import json, hashlib; from sparsemm import workloads; "
            "from sparsemm.opscript.script import parse_script; "
            "from sparsemm.opscript.designs import run_designs; "
            "s = parse_script(workloads.random_guards(600, seed=7)); "
            "r = run_designs(s); "
            "print(json.dumps({d: x.as_dict() for d, x in r.items()}, sort_keys=True))")
    pure = json.loads(run_py(code, pure=True).stdout)
    default = json.loads(run_py(code, pure=False).stdout)
    assert pure == default
    assert set(pure) == {"vma", "pte", "tree"} and all(not v.get("error") for v in pure.values())
    assert workloads.guard_count(workloads.random_guards(600, seed=7)) == 600


def _setup_module():
    spec = importlib.util.spec_from_file_location("sparsemm_setup_compiled", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_setup_compiles_the_listed_modules_and_falls_back_without_mypyc(monkeypatch, capsys):
    setup = _setup_module()
    assert tuple(setup.compiled_module_names()) == _compiled.COMPILED_MODULES
    monkeypatch.setitem(sys.modules, "mypyc.build", None)  # import fails as if mypyc were absent
    monkeypatch.delenv(_compiled.ENV_PURE, raising=False)
    assert setup.mypyc_extensions() == []
    assert "mypyc is not installed" in capsys.readouterr().out
    monkeypatch.setenv(_compiled.ENV_PURE, "1")
    assert setup.mypyc_extensions() == []
    assert "stays pure Python" in capsys.readouterr().out


def test_the_build_record_hashes_the_sources_it_compiled():
    if not built_here():
        pytest.skip("this install has no compiled core")
    record = json.loads((PKG / _compiled.SOURCES_FILE).read_text())
    assert set(record) == set(_compiled.COMPILED_MODULES)
    for name, digest in record.items():
        src = PKG.parent / (name.replace(".", "/") + ".py")
        assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
