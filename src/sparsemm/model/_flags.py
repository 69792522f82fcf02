"""Plain-int copies of the ``VmFlag`` bits the model's hot paths test.

``IntFlag`` operators are Python-level enum calls (about 1 µs each); ``int & int`` is one
bytecode. ``Vma.vm_flags`` is a plain int of ``VmFlag`` bits; the fault path, mmap,
mprotect, merging and guard install test it against these. One definition here, imported
where needed.
"""

from __future__ import annotations

from sparsemm.abi import VmFlag
from sparsemm.model.vma import VM_ACCESS_FLAGS, VM_IGNORE_MERGE, VM_SPECIAL, VM_STICKY

_VM_READ, _VM_WRITE, _VM_SHARED = int(VmFlag.READ), int(VmFlag.WRITE), int(VmFlag.SHARED)
_VM_MAYREAD, _VM_MAYWRITE, _VM_MAYSHARE = int(VmFlag.MAYREAD), int(VmFlag.MAYWRITE), int(VmFlag.MAYSHARE)
_VM_MAY_RWX = int(VmFlag.MAYREAD | VmFlag.MAYWRITE | VmFlag.MAYEXEC)
_VM_GROWSDOWN, _VM_LOCKED, _VM_NORESERVE = int(VmFlag.GROWSDOWN), int(VmFlag.LOCKED), int(VmFlag.NORESERVE)
_VM_ACCOUNT, _VM_HUGETLB = int(VmFlag.ACCOUNT), int(VmFlag.HUGETLB)
_VM_IO_PFNMAP = int(VmFlag.IO | VmFlag.PFNMAP)
_VM_HUGEPAGE, _VM_NOHUGEPAGE = int(VmFlag.HUGEPAGE), int(VmFlag.NOHUGEPAGE)
_VM_MAYBE_GUARD = int(VmFlag.MAYBE_GUARD)
_VM_SEALED = int(VmFlag.SEALED)
_VM_UFFD_MISSING = int(VmFlag.UFFD_MISSING)
_VM_ACCESS_FLAGS = int(VM_ACCESS_FLAGS)
_VM_SPECIAL = int(VM_SPECIAL)
_VM_STICKY = int(VM_STICKY)
_NOT_IGNORE_MERGE = ~int(VM_IGNORE_MERGE)
#: madvise_guard_install() refuses these VMAs (docs/rules.md R-B2).
_GUARD_INSTALL_INELIGIBLE = int(VM_SPECIAL | VmFlag.HUGETLB | VmFlag.LOCKED)
