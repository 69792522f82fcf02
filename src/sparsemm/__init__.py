"""sparsemm: guard regions and sparse memory mappings for Linux, in Python.

Layers (data flows down, nothing imports upward): ``abi`` (constants),
``model`` (an executable model of a process address space), ``native`` (the
real kernel through ctypes), ``opscript`` (one script format for both), and the
command-line tools in ``cli``.
"""

__version__ = "0.1.0"

# SPARSEMM_PURE_PYTHON=1: load the model core from .py even where the compiled one exists
from sparsemm._compiled import install_pure_python_finder as _install_pure  # noqa: E402

_install_pure()

# Lazy exports: importing ``sparsemm`` must not load ctypes/libc (the model runs anywhere).
_LAZY = {
    "Mapping": "sparsemm.native.mapping",
    "GuardFault": "sparsemm.native.mapping",
    "VmaLimitError": "sparsemm.native.mapping",
    "GuardedHeap": "sparsemm.native.heap",
    "HeapStats": "sparsemm.native.heap",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsemm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
