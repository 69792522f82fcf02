"""sparsemm: guard regions and sparse memory mappings for Linux, in Python.

Layers (data flows down, nothing imports upward): ``abi`` (constants),
``model`` (an executable model of a process address space), ``native`` (the
real kernel through ctypes), ``opscript`` (one script format for both), and the
command-line tools in ``cli``.
"""

__version__ = "0.1.0"
