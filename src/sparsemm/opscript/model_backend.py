"""The model backend: run an op script on ``sparsemm.model`` and produce the kernel's records.

``run_model(script, design=...)`` executes each op on an ``AddressSpace`` in this
process; records match ``sparsemm.opscript.kernel`` byte for byte (docs/opscript.md).
Owns no semantics of its own: every behaviour lives in the model.
"""

from __future__ import annotations

import errno
import tempfile

from sparsemm import abi
from sparsemm._gc import gc_paused
from sparsemm.abi import ULONG_MAX  # the kernel sees lengths and addresses as unsigned long
from sparsemm.model import procfs
from sparsemm.model.frames import MemFile
from sparsemm.model.mm import AddressSpace, SegFault
from sparsemm.model.vma import Vma
from sparsemm.native import probe as native_probe
from sparsemm.native import procfs as native_procfs
from sparsemm.opscript import records as rec
from sparsemm.opscript.dispatch import BackendUnavailable, OpDispatcher
from sparsemm.opscript.script import Op, Script, effective_headroom


class _ModelRunner(OpDispatcher):
    """Runs ops on one AddressSpace; ``files`` maps script names to MemFiles (shared with children)."""

    __slots__ = ("script", "mm", "files", "base", "end")

    def __init__(self, script: Script, mm: AddressSpace, files: dict[str, MemFile]):
        self.script = script
        self.mm = mm
        self.files = files
        self.base = script.base
        self.end = script.base + script.arena_bytes

    def op_mmap(self, op: Op):
        file = self.files[op.file] if op.file is not None else None
        self.mm.mmap(op.addr & ULONG_MAX, op.length & ULONG_MAX, op.prot, op.flags, file, op.offset,
                     op.readonly)

    def op_munmap(self, op: Op):
        self.mm.munmap(op.addr, op.length & ULONG_MAX)

    def op_mprotect(self, op: Op):
        self.mm.mprotect(op.addr, op.length & ULONG_MAX, op.prot)

    def op_madvise(self, op: Op):
        self.mm.madvise(op.addr, op.length & ULONG_MAX, op.advice)

    def remap(self, op: Op) -> int:
        return self.mm.mremap(op.addr, op.length & ULONG_MAX, op.new_length & ULONG_MAX, op.flags,
                              (op.to_addr or 0) & ULONG_MAX)

    def op_mlock(self, op: Op):
        self.mm.mlock(op.addr, op.length & ULONG_MAX, op.flags)

    def op_munlock(self, op: Op):
        self.mm.munlock(op.addr, op.length & ULONG_MAX)

    def touch_page(self, addr: int, write: bool, value: int):
        return self.mm.touch(addr, write, value)

    def cpu_touch(self, addr: int, npages: int, write: bool, value: int) -> list:
        values: list = []
        child = None
        try:
            for i in range(npages):
                if child is None:
                    child = self.mm.fork()
                try:
                    got = child.access(addr + i * abi.PAGE_SIZE, write, value)
                except SegFault as exc:  # the child dies; the next page gets a new one
                    values.append(exc.signal)
                    child.exit()
                    child = None
                    continue
                values.append("ok" if write else got)
        finally:
            if child is not None:
                child.exit()
        return values

    def op_fork(self, op: Op):
        child = _ModelRunner(self.script, self.mm.fork(), self.files)
        try:
            records = child.run_ops(op.child)
        finally:
            child.mm.exit()
        return {"value": records}

    def op_snapshot(self, op: Op):
        return {"value": snapshot(self.mm, self.base, self.end)}

    def op_ftruncate(self, op: Op):
        f = self.files[op.file]
        self.mm.truncate(f, op.file_length)

    def op_fallocate_punch(self, op: Op):
        self.mm.punch_hole(self.files[op.file], op.addr, op.length)

    def op_seal(self, op: Op):
        self.mm.add_seals(self.files[op.file], op.seals)

    def op_process_madvise(self, op: Op):
        """mm/madvise.c: process_madvise(): flags, then the vector (``abi.import_iovec``), then
        the target (a pidfd of this process or of a fork child), then the advice."""
        if op.flags:
            raise OSError(errno.EINVAL, "process_madvise: flags")
        iovecs = abi.import_iovec(op.ranges)
        if op.target == "self":
            return {"value": _vector_madvise(self.mm, iovecs, op.advice) // abi.PAGE_SIZE}
        child = self.mm.fork()
        try:
            if op.advice not in _REMOTE_ADVICE:  # process_madvise_remote_valid()
                raise OSError(errno.EINVAL, "process_madvise: advice not for another process")
            done = _vector_madvise(child, iovecs, op.advice)
            return {"value": {"pages": done // abi.PAGE_SIZE,
                              "child": snapshot(child, self.base, self.end)}}
        finally:
            child.exit()


    def op_uffd_register(self, op: Op):
        self.mm.uffd_register(op.addr, op.length & ULONG_MAX)

    def op_uffd_unregister(self, op: Op):
        self.mm.uffd_unregister(op.addr, op.length & ULONG_MAX)

    def op_uffd_copy(self, op: Op):
        try:
            copied, err = self.mm.uffd_copy(op.addr, op.length & ULONG_MAX, op.value)
        except OSError as exc:  # refused before copying: the ioctl's copy field stays 0
            copied, err = 0, exc.errno
        out = {"value": copied // abi.PAGE_SIZE}
        if err:
            out["ret"] = rec.errno_name(err)
        return out

    def op_special_madvise(self, op: Op):
        """The model's address space has no special mappings: the advice goes to a scratch
        one holding a VMA with the mapping's flags (``_SPECIAL``), or, for the vsyscall page
        (a gate area above TASK_SIZE, no VMA), to an empty one."""
        scratch = AddressSpace()
        flags = _SPECIAL[op.mapping]
        addr = _SPECIAL_AT if flags is not None else _VSYSCALL_AT
        if flags is not None:
            scratch.tree.insert(Vma(addr, addr + 2 * abi.PAGE_SIZE, flags, addr >> abi.PAGE_SHIFT, None))
        scratch.madvise(addr, abi.PAGE_SIZE, op.advice)

    def op_mseal(self, op: Op):
        self.mm.mseal(op.addr, op.length & ULONG_MAX, op.flags)

    def op_pagemap_scan(self, op: Op):
        mask, anyof, inverted, ret_mask, max_pages, vec_len = op.scan
        regions, walk_end = procfs.pagemap_scan(self.mm, op.addr, (op.addr + op.length) & ULONG_MAX,
                                                mask, anyof, inverted, ret_mask, max_pages, vec_len)
        return {"value": rec.scan_value(regions, walk_end, self.base)}


#: The VMA flags of the special mappings (smaps VmFlags on 6.18 x86-64): the vDSO is
#: ``rd ex mr mw me de`` (``_install_special_mapping()`` adds VM_DONTEXPAND), the vvar pages
#: ``rd mr pf io de dd``; the vsyscall page is no VMA (None).
_SPECIAL = {
    "vdso": abi.VmFlag.READ | abi.VmFlag.EXEC | abi.VmFlag.MAYREAD | abi.VmFlag.MAYWRITE
            | abi.VmFlag.MAYEXEC | abi.VmFlag.DONTEXPAND,
    "vvar": abi.VmFlag.READ | abi.VmFlag.MAYREAD | abi.VmFlag.PFNMAP | abi.VmFlag.IO
            | abi.VmFlag.DONTEXPAND | abi.VmFlag.DONTDUMP,
    "vvar_vclock": abi.VmFlag.READ | abi.VmFlag.MAYREAD | abi.VmFlag.PFNMAP | abi.VmFlag.IO
                   | abi.VmFlag.DONTEXPAND | abi.VmFlag.DONTDUMP,
    "vsyscall": None,
}
_SPECIAL_AT = 0x7F00_0000_0000
_VSYSCALL_AT = 0xFFFF_FFFF_FF60_0000

#: mm/madvise.c: process_madvise_remote_valid(): the advice one process may give another.
_REMOTE_ADVICE = frozenset(int(m) for m in (abi.Madv.COLD, abi.Madv.PAGEOUT, abi.Madv.WILLNEED,
                                            abi.Madv.COLLAPSE))


def _vector_madvise(mm: AddressSpace, iovecs: list[tuple[int, int]], advice: int) -> int:
    """mm/madvise.c: vector_madvise() over what ``abi.import_iovec`` left: each range in turn
    while any length is left; an error after some ranges were advised ends the call with the
    bytes done, else it is the call's error. The first range is advised even when empty (its
    advice is checked); later empty ones are stepped over (``iov_iter_advance()``), and a
    vector of empty ranges only is 0 with nothing checked. O(ranges) madvises."""
    done = 0
    left = sum(length for _, length in iovecs)  # iov_iter_count()
    for i, (addr, length) in enumerate(iovecs):
        if not left:
            break
        if not length and i:
            continue
        try:
            mm.madvise(addr, length, advice)
        except OSError:
            if done:
                break
            raise
        done += length
        left -= length
    return done


def snapshot(mm: AddressSpace, base: int, end: int) -> dict:
    """The snapshot value (docs/opscript.md) of ``[base, end)``: the VMAs meeting it and the
    pages string, built from what ``model.procfs`` shows (maps, pagemap) as the kernel
    backend builds it from /proc. O(k + pages)."""
    views = [rec.VmaView((v.vm_start - base) // abi.PAGE_SIZE, (v.vm_end - base) // abi.PAGE_SIZE,
                         v.perms, "anon" if v.backing is None else v.backing, v.pgoff,
                         rec.snapshot_flags(v.vmflags))
             for v in procfs.vmas_in(mm, base, end)]
    npages = (procfs.mapped_end(mm, base, end) - base) // abi.PAGE_SIZE  # guard entries too (T10)
    mapped = bytearray(npages)
    for v in views:
        for p in range(max(v.start, 0), min(v.end, npages)):
            mapped[p] = 1
    words = procfs.pagemap(mm, base, npages)
    pages = "".join(rec.page_char(w, bool(m)) for w, m in zip(words, mapped))
    return rec.snapshot_value(views, pages)


def start_model(script: Script, design: str | None = None, *, max_map_count: int | None = None
                ) -> _ModelRunner:
    """A runner for ``script`` on a fresh model address space (``.mm``), no op run yet.

    ``design``: a registered guard design (default the kernel's own); an unknown one
    raises ``BackendUnavailable``.
    """
    if max_map_count is None:  # the script's headroom: the VMAs the kernel child can still add
        max_map_count = script.map_count_headroom
    kw = {} if max_map_count is None else {"max_map_count": max_map_count}
    # the kernel's overcommit heuristic depends on this machine's RAM and swap (docs/model.md)
    kw["commit_limit"] = native_procfs.overcommit_limit_pages()
    # mmap_min_addr and CAP_SYS_RAWIO: the script's pins, else this machine's and this
    # process's, as the kernel backend's child (forked from it) has them
    pin = script.mmap_min_addr if script.mmap_min_addr is not None else native_probe.mmap_min_addr()
    if pin is not None:
        kw["dac_mmap_min_addr"], kw["mmap_min_addr"] = pin
    kw["cap_sys_rawio"] = (script.cap_sys_rawio if script.cap_sys_rawio is not None
                           else native_procfs.has_capability(native_procfs.CAP_SYS_RAWIO))
    try:
        mm = AddressSpace(guard_design=design, **kw)
    except ValueError as exc:
        raise BackendUnavailable(str(exc)) from None
    mm.hugetlb_pool[0] = script.hugetlb_pages
    files = {name: MemFile(name, pages * abi.PAGE_SIZE, disk=name in script.disk_files,
                           **(_disk_readahead() if name in script.disk_files else {}))
             for name, pages in script.files.items()}
    return _ModelRunner(script, mm, files)


def _disk_readahead() -> dict:
    """The readahead limits a disk file of the kernel backend gets: those of the block device
    holding the directory it is made in (``tempfile.gettempdir()``); the kernel's defaults
    (128 KiB, no larger I/O) when that is no block device (docs/model.md)."""
    limits = native_procfs.readahead_limits(tempfile.gettempdir())
    return {} if limits is None else {"ra_pages": limits[0], "io_pages": limits[1]}


def run_model_state(script: Script, design: str | None = None, *, check: bool = False,
                    max_map_count: int | None = None, node_model: bool = True
                    ) -> tuple[list[dict], AddressSpace]:
    """Run ``script`` on a fresh model address space; ``(records, mm)`` with the final state.

    ``check`` runs ``AddressSpace.check()`` after every op (tests; ``InvariantError`` if it
    fails). ``design``: see ``start_model``. ``node_model=False`` keeps no maple node model
    (no record shows its counts; ``mm.counts()`` then gives the slot-count estimate).
    """
    runner = start_model(script, design, max_map_count=max_map_count)
    mm = runner.mm
    if not node_model:
        mm.tree.maple = None  # the tree is empty: nothing is lost (VmaTree(nodes=False))
    if not check:
        # The model's objects hold no cycles (a 100,000-op run leaves no cyclic garbage), so
        # the collector's scans of them are wasted: 20-35 % of a design run (bench_perf.py).
        with gc_paused():
            return runner.run_ops(script.ops), mm
    out = []
    for op in script.ops:
        out.append(runner.run_op(op))
        mm.check()
    return out, mm


def run_model(script: Script, design: str | None = None, *, check: bool = False) -> list[dict]:
    """Run ``script`` on a fresh model address space; return the records (see
    ``run_model_state``), as the kernel backend gives them: the process has
    ``effective_headroom(script)`` VMAs left before ``vm.max_map_count``. No record shows
    maple-node counts, so no node model is kept, but with ``check`` (which verifies it
    after every op)."""
    return run_model_state(script, design, check=check, node_model=check,
                           max_map_count=effective_headroom(script))[0]
