"""The pure-Python model of a Linux mm: VMAs, their index, page tables, and the syscalls that change them.

``AddressSpace`` is the mm_struct; ``SegFault`` is what a CPU access that the
kernel would kill raises; ``InvariantError`` what ``check()`` raises when the model
is inconsistent; ``designs`` the guard-design registry. See docs/model.md.
"""

from sparsemm._invariant import InvariantError
from sparsemm.model.frames import MemFile
from sparsemm.model.mm import AddressSpace, SegFault

__all__ = ["AddressSpace", "SegFault", "MemFile", "InvariantError"]
