"""The compiled core: which model modules the install compiles with mypyc, and which is in use.

``COMPILED_MODULES`` is the one list: setup.py reads it (without importing the package) to
compile those modules and records the SHA-256 of each source it compiled in
``_compiled_sources.json``; ``status()`` says which were loaded from an extension. Every one
of them loads from its ``.py`` source instead (``install_pure_python_finder``, run by
``sparsemm/__init__.py`` before any model import) when ``SPARSEMM_PURE_PYTHON=1`` is set, or
when a source no longer matches what was compiled (an edited checkout: a stale extension must
never shadow the code). Touches nothing but ``sys.meta_path``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys

__all__ = ["COMPILED_MODULES", "ENV_PURE", "pure_python_forced", "install_pure_python_finder",
           "stale_sources", "status", "describe"]

#: The modules setup.py compiles with mypyc (dotted names). Each compiles cleanly and gains
#: from it; the rest of the model (IntFlag users, mixins with multiple inheritance, the
#: designs subclassing Vma) stays pure Python. Keep in step with docs/performance.md.
COMPILED_MODULES = (
    "sparsemm.model.vma_tree",
    "sparsemm.model.maple",
    "sparsemm.model.pagetable",
    "sparsemm.model.merge",
)

#: The environment variable that forces the pure-Python modules.
ENV_PURE = "SPARSEMM_PURE_PYTHON"
#: Written by setup.py's build_ext beside this module: {module: sha256 of the compiled source}.
SOURCES_FILE = "_compiled_sources.json"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_why_pure = ""  # set by install_pure_python_finder: why the pure modules are in use


def pure_python_forced() -> bool:
    """True when ``SPARSEMM_PURE_PYTHON`` is set to anything but '', '0', 'no' or 'false'."""
    return os.environ.get(ENV_PURE, "").strip().lower() not in ("", "0", "no", "false")


class _PureFinder:
    """A meta-path finder that loads the ``COMPILED_MODULES`` from their ``.py`` sources."""

    @staticmethod
    def find_spec(name, path, target=None):
        if name not in COMPILED_MODULES or not path:
            return None
        leaf = name.rpartition(".")[2] + ".py"
        for entry in path:
            source = os.path.join(entry, leaf)
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(
                    name, source, loader=importlib.machinery.SourceFileLoader(name, source))
        return None


def _source_path(name: str) -> str:
    return os.path.join(os.path.dirname(_PACKAGE_DIR), *name.split(".")) + ".py"


def stale_sources() -> list[str]:
    """The compiled modules whose ``.py`` differs from the source the extension was built
    from ([] when none was built, or all match). Reads and hashes the sources: about 1 ms."""
    try:
        with open(os.path.join(_PACKAGE_DIR, SOURCES_FILE), encoding="utf-8") as fh:
            built = json.load(fh)
    except (OSError, ValueError):
        return []  # no compiled build here (or an unreadable record: nothing to compare)
    stale = []
    for name in COMPILED_MODULES:
        try:
            with open(_source_path(name), "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            continue  # no source installed next to it: the extension is all there is
        if built.get(name) != digest:
            stale.append(name)
    return stale


def install_pure_python_finder() -> bool:
    """Put the pure-Python finder first on ``sys.meta_path`` (idempotent) if
    ``SPARSEMM_PURE_PYTHON`` asks for it or a compiled module is stale; True if it is
    installed. Must run before the model is imported."""
    global _why_pure
    if pure_python_forced():
        _why_pure = f"{ENV_PURE} set"
    else:
        stale = stale_sources()
        if not stale:
            return False
        _why_pure = ("the compiled extension is stale (" + ", ".join(n.rpartition(".")[2] for n in stale)
                     + " changed since the build; reinstall to recompile)")
    if not any(f is _PureFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _PureFinder)  # type: ignore[arg-type]
    return True


def status() -> dict:
    """Which build of each ``COMPILED_MODULES`` module is loaded: ``{"core": "compiled" |
    "pure-python" | "mixed", "forced_pure": bool, "why_pure": str ('' unless the finder
    redirected them), "modules": {name: "compiled" | "pure-python"}}``.
    Imports the modules. O(1)."""
    mods = {}
    for name in COMPILED_MODULES:
        mod = importlib.import_module(name)
        origin = getattr(mod.__spec__, "origin", "") or ""
        compiled = origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        mods[name] = "compiled" if compiled else "pure-python"
    kinds = set(mods.values())
    core = kinds.pop() if len(kinds) == 1 else "mixed"
    return {"core": core, "forced_pure": pure_python_forced(), "why_pure": _why_pure, "modules": mods}


def describe() -> str:
    """One line for ``--version`` and ``probe``: the build of the model core in use."""
    st = status()
    if st["core"] == "compiled":
        return "model core: compiled (mypyc: " + ", ".join(
            n.rpartition(".")[2] for n in COMPILED_MODULES) + ")"
    why = f" ({_why_pure})" if _why_pure else " (no compiled extension built)"
    if st["core"] == "mixed":
        return "model core: mixed (" + ", ".join(f"{n.rpartition('.')[2]} {k}"
                                                for n, k in st["modules"].items()) + ")"
    return "model core: pure Python" + why
