"""The model backend: run an op script on ``sparsemm.model`` and produce the kernel's records.

``run_model(script, design=...)`` executes each op on an ``AddressSpace`` in this
process; records match ``sparsemm.opscript.kernel`` byte for byte (OPSCRIPT.md).
Owns no semantics of its own: every behaviour lives in the model.
"""

from __future__ import annotations

from sparsemm import abi
from sparsemm.model import procfs
from sparsemm.model.frames import MemFile
from sparsemm.model.mm import AddressSpace
from sparsemm.opscript import records as rec
from sparsemm.opscript.dispatch import OpDispatcher
from sparsemm.opscript.script import Op, Script


_U64 = (1 << 64) - 1  # the kernel sees lengths and addresses as unsigned long


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
        self.mm.mmap(op.addr & _U64, op.length & _U64, op.prot, op.flags, file, op.offset)

    def op_munmap(self, op: Op):
        self.mm.munmap(op.addr, op.length & (_U64))

    def op_mprotect(self, op: Op):
        self.mm.mprotect(op.addr, op.length & (_U64), op.prot)

    def op_madvise(self, op: Op):
        self.mm.madvise(op.addr, op.length & (_U64), op.advice)

    def remap(self, op: Op) -> int:
        return self.mm.mremap(op.addr, op.length & _U64, op.new_length & _U64, op.flags,
                              (op.to_addr or 0) & _U64)

    def op_mlock(self, op: Op):
        self.mm.mlock(op.addr, op.length & (_U64), op.flags)

    def op_munlock(self, op: Op):
        self.mm.munlock(op.addr, op.length & (_U64))

    def touch_page(self, addr: int, write: bool, value: int):
        return self.mm.touch(addr, write, value)

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
        done = 0
        for addr, length in op.ranges:
            try:
                self.mm.madvise(addr, length, op.advice)
            except OSError:
                if done:
                    break
                raise
            done += length
        return {"value": done // abi.PAGE_SIZE}


def snapshot(mm: AddressSpace, base: int, end: int) -> dict:
    """The snapshot value (OPSCRIPT.md): VMAs overlapping ``[base, end)`` and the pages string."""
    views = []
    last_mapped = base
    for vma in mm.tree.overlapping(base, end):
        last_mapped = max(last_mapped, min(vma.vm_end, end))
        if vma.is_guard_entry:
            continue  # tree design T10: not a VMA, but its pages show as G
        backing = "anon" if vma.vm_file is None else vma.vm_file.label
        mnemonics = abi.vmflags_to_mnemonics(vma.vm_flags)
        views.append(rec.VmaView((vma.vm_start - base) // abi.PAGE_SIZE,
                                 (vma.vm_end - base) // abi.PAGE_SIZE, vma.perms, backing,
                                 vma.maps_pgoff(), rec.snapshot_flags(mnemonics)))
    npages = (last_mapped - base) // abi.PAGE_SIZE
    mapped = bytearray(npages)
    for v in views:
        for p in range(max(v.start, 0), min(v.end, npages)):
            mapped[p] = 1
    words = procfs.pagemap(mm, base, npages)
    pages = "".join(rec.page_char(w, bool(m)) for w, m in zip(words, mapped))
    return rec.snapshot_value(views, pages)


def start_model(script: Script, design: str = "pte", *, max_map_count: int | None = None
                ) -> _ModelRunner:
    """A runner for ``script`` on a fresh model address space (``.mm``), no op run yet.

    An unknown ``design`` raises ``BackendUnavailable``.
    """
    kw = {} if max_map_count is None else {"max_map_count": max_map_count}
    try:
        mm = AddressSpace(guard_design=design, **kw)
    except ValueError as exc:
        from sparsemm.opscript.runner import BackendUnavailable

        raise BackendUnavailable(str(exc)) from None
    files = {name: MemFile(name, pages * abi.PAGE_SIZE) for name, pages in script.files.items()}
    return _ModelRunner(script, mm, files)


def run_model_state(script: Script, design: str = "pte", *, check: bool = False,
                    max_map_count: int | None = None) -> tuple[list[dict], AddressSpace]:
    """Run ``script`` on a fresh model address space; ``(records, mm)`` with the final state.

    ``check`` runs ``AddressSpace.check()`` after every op (tests). ``design`` is the
    guard design (``pte``, ``vma``, ``tree``); an unknown one raises ``BackendUnavailable``.
    """
    runner = start_model(script, design, max_map_count=max_map_count)
    mm = runner.mm
    if not check:
        return runner.run_ops(script.ops), mm
    out = []
    for op in script.ops:
        out.append(runner.run_op(op))
        mm.check()
    return out, mm


def run_model(script: Script, design: str = "pte", *, check: bool = False) -> list[dict]:
    """Run ``script`` on a fresh model address space; return the records (see ``run_model_state``)."""
    return run_model_state(script, design, check=check)[0]
