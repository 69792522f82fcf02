"""The layering rules of docs/contributing.md, checked on every module's imports (AST, no import).

Neutral modules (``abi``, ``_invariant``, ``_ranges``, ``_gc``, ``_input``) import only each other;
the model imports the neutral modules and itself, never the native layer or the tools;
the native layer likewise never imports the model; ``opscript`` never imports the tools
above it (``analyze``, ``cli``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "sparsemm"
NEUTRAL = {"abi", "_invariant", "_ranges", "_gc", "_input"}
#: layer -> the top-level ``sparsemm`` modules it may import (besides itself).
ALLOWED = {
    "neutral": NEUTRAL,
    "model": NEUTRAL,
    "native": NEUTRAL,
    "opscript": NEUTRAL | {"model", "native"},
}


def _layer(path: Path) -> str | None:
    top = path.relative_to(SRC).parts[0].removesuffix(".py")
    if top in NEUTRAL:
        return "neutral"
    return top if top in ALLOWED else None


def _imports(path: Path) -> set[str]:
    """The top-level ``sparsemm`` modules ``path`` imports (``from sparsemm import abi`` -> abi)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module + "." + a.name for a in node.names] if node.module == "sparsemm" \
                else [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "sparsemm" and len(parts) > 1:
                out.add(parts[1])
    return out


MODULES = sorted(p for p in SRC.rglob("*.py") if _layer(p) is not None)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_only_what_its_layer_may(path):
    layer = _layer(path)
    own = path.relative_to(SRC).parts[0].removesuffix(".py")
    bad = _imports(path) - ALLOWED[layer] - {own}
    assert not bad, f"{path.relative_to(SRC)} ({layer} layer) imports {sorted(bad)}"


def test_the_check_sees_imports():
    assert {"model", "opscript"} <= _imports(SRC / "opscript" / "designs.py")
    assert _imports(SRC / "model" / "mm.py") >= {"abi", "model"}
