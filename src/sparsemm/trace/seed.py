"""Seed a model address space with a real process's map, read from /proc while the process was held.

Owns ``seed_mm``: one model ``Vma`` per maps entry, inserted as the kernel holds it (no
merging), with the exact ``VmFlags`` of smaps when it was read (stack ``gd``, the ``pf``/``io``
of [vvar], ``ac``, ``dd``...), one ``MemFile`` per file path (so mappings of one file can
merge later, as mappings through one open file do), and an anon_vma for every private
mapping smaps shows anonymous pages in (shared by adjacent compatible ones, as
``anon_vma_prepare`` would have made them share). Reads ``MapEntry`` records only.
"""

from __future__ import annotations

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.analyze.maps import MapEntry, MapKind, parse_maps, parse_smaps
from sparsemm.model import AddressSpace, MemFile
from sparsemm.model.vma import AnonVma, Vma

__all__ = ["seed_mm", "entries_of", "FILE_SIZE", "file_for"]

#: The size given to a MemFile standing for a mapped file: its real size is not in the trace,
#: and only populate (MAP_POPULATE, mlock) reads it; large enough that nothing is past EOF.
FILE_SIZE = 1 << 46

_MAY_RWX = int(VmFlag.MAYREAD | VmFlag.MAYWRITE | VmFlag.MAYEXEC)


def entries_of(maps: str, smaps: str | None, source: str) -> list[MapEntry]:
    """The parsed entries of a snapshot: smaps when it was read (exact flags), else maps."""
    if smaps:
        return parse_smaps(smaps, source)
    return parse_maps(maps, source)


def file_for(files: dict, path: str, *, shared_anon: bool = False) -> MemFile:
    """The MemFile standing for ``path`` in one address space (created on first use)."""
    f = files.get(path)
    if f is None:
        f = files[path] = MemFile(path, FILE_SIZE, fill_pattern=False, shared_anon=shared_anon)
    return f


def _flags(e: MapEntry) -> int:
    if e.vmflags_bits is not None:
        return e.vmflags_bits
    # maps only: the protection, VM_MAY* as mmap sets them, and what the kind implies
    flags = e.prot | _MAY_RWX
    if e.shared:
        flags |= int(VmFlag.SHARED | VmFlag.MAYSHARE)
    elif e.prot & abi.PROT_WRITE:
        flags |= int(VmFlag.ACCOUNT)
    if e.kind is MapKind.STACK:
        flags |= int(VmFlag.GROWSDOWN)
    if e.kind in (MapKind.VVAR, MapKind.VDSO, MapKind.SPECIAL):
        flags |= int(VmFlag.DONTEXPAND)  # special mappings never merge (VM_SPECIAL)
    return flags


def _has_anon_pages(e: MapEntry) -> bool:
    c = e.counters
    if c is None:  # maps only: a written private mapping is likely (the stack always is)
        return e.kind in (MapKind.STACK, MapKind.HEAP) or (not e.shared and bool(e.prot & abi.PROT_WRITE))
    return bool(c.get("Anonymous", 0) or c.get("Swap", 0))


def seed_mm(entries: list[MapEntry], design: str, max_map_count: int) -> tuple[AddressSpace, dict]:
    """A model address space holding ``entries`` exactly (``[vsyscall]`` left out: not a VMA),
    under the model guard design ``design``; and its path -> MemFile table. O(n log n)."""
    mm = AddressSpace(guard_design=design, max_map_count=max_map_count)
    files: dict = {}
    prev: Vma | None = None
    for e in entries:
        if e.kind is MapKind.VSYSCALL:
            continue
        flags = _flags(e)
        if e.kind in (MapKind.FILE, MapKind.MEMFD):
            vm_file = file_for(files, e.path)
            pgoff = e.offset >> abi.PAGE_SHIFT
        elif e.shared or e.kind is MapKind.SHARED_ANON:
            # each shared anonymous mapping is its own shmem object (shmem_zero_setup)
            vm_file = MemFile("dev/zero", FILE_SIZE, fill_pattern=False, shared_anon=True)
            pgoff = e.offset >> abi.PAGE_SHIFT
        else:
            vm_file = None
            pgoff = e.start >> abi.PAGE_SHIFT
        anon_vma = None
        if not e.shared and _has_anon_pages(e):
            if (prev is not None and prev.vm_end == e.start and prev.anon_vma is not None
                    and prev.vm_file is vm_file
                    and not ((int(prev.vm_flags) ^ flags) & ~int(VmFlag.READ | VmFlag.WRITE | VmFlag.EXEC
                                                                | VmFlag.SOFTDIRTY | VmFlag.MAYBE_GUARD))):
                anon_vma = prev.anon_vma  # anon_vma_prepare() reuses a compatible neighbour's
            else:
                anon_vma = AnonVma()
        vma = Vma(e.start, e.end, flags, pgoff, vm_file, anon_vma)
        mm.tree.insert(vma)
        if vm_file is not None:
            mm.use_file(vm_file)
        prev = vma
    return mm, files
