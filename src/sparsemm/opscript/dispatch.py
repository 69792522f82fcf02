"""What both backends do alike when running ops: dispatch by name, errno records, touch.

Owns ``OpDispatcher``: a backend subclasses it, provides ``op_<name>`` methods, a
``touch_page`` and a ``remap`` primitive, and gets the record shapes of docs/opscript.md
for free; and ``BackendUnavailable``, what a backend raises when it cannot run a script.
Knows no kernel and no model.
"""

from __future__ import annotations

from sparsemm import abi
from sparsemm.opscript import records as rec
from sparsemm.opscript.script import Op


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (unknown backend or design, or the kernel lacks a feature)."""


class OpDispatcher:
    """Run ops through ``op_<name>`` methods; an ``OSError`` becomes the op's errno record.

    Subclasses set ``base`` (the arena base, bytes) and implement
    ``touch_page(addr, write, value)`` (the byte read, or anything for a write;
    ``OSError`` where the access faults) and ``remap(op)`` (the new address).
    """

    __slots__ = ()
    base: int

    def run_ops(self, ops) -> list[dict]:
        """The record of each op, in order. Unless a subclass overrides ``run_op``, the
        ``op_<name>`` handlers are bound once into a table instead of looked up per op."""
        if type(self).run_op is not OpDispatcher.run_op:
            return [self.run_op(op) for op in ops]
        table = self.dispatch_table()
        op_record, errno_name = rec.op_record, rec.errno_name
        out: list[dict] = []
        append = out.append
        for op in ops:
            try:
                extra = table[op.name](op)
            except OSError as exc:
                append(op_record(op.index, op.name, errno_name(exc.errno)))
                continue
            if extra:
                ret = extra.pop("ret", "ok")
                append(op_record(op.index, op.name, ret, **extra))
            else:
                append(op_record(op.index, op.name))
        return out

    def dispatch_table(self) -> dict:
        """Op name -> this backend's bound ``op_<name>`` method. O(methods)."""
        return {name[3:]: getattr(self, name) for name in dir(type(self)) if name.startswith("op_")}

    def run_op(self, op: Op) -> dict:
        handler = getattr(self, "op_" + op.name)
        try:
            extra = handler(op) or {}
        except OSError as exc:
            return rec.op_record(op.index, op.name, rec.errno_name(exc.errno))
        ret = extra.pop("ret", "ok")
        return rec.op_record(op.index, op.name, ret, **extra)

    def touch_page(self, addr: int, write: bool, value: int):
        raise NotImplementedError

    def remap(self, op: Op) -> int:
        raise NotImplementedError

    def cpu_touch(self, addr: int, npages: int, write: bool, value: int) -> list:
        """A real CPU load or store of the first byte of each of ``npages`` pages from
        ``addr``, in a forked child (a fresh one after each signal): per page the byte read,
        ``"ok"`` for a store, or the signal's name (``"SIGSEGV"``, ``"SIGBUS"``)."""
        raise NotImplementedError

    def op_touch(self, op: Op):
        """One byte per page at its first byte; ``"fault"`` where the access fails (with
        ``cpu``, the signal a CPU access got)."""
        write = op.access == "write"
        npages = max(0, (op.length + abi.PAGE_SIZE - 1) // abi.PAGE_SIZE)
        if op.cpu:
            return {"value": self.cpu_touch(op.addr, npages, write, op.value)}
        touch_page, value, page = self.touch_page, op.value, abi.PAGE_SIZE
        values: list = []
        append = values.append
        start = op.addr
        for addr in range(start, start + npages * page, page):
            try:
                got = touch_page(addr, write, value)
            except OSError:
                append(rec.FAULT)
                continue
            append("ok" if write else got)
        return {"value": values}

    def op_mremap(self, op: Op):
        new = self.remap(op)
        if new != op.addr and not op.flags & abi.MremapFlag.FIXED:  # a move the kernel chose
            return {"ret": "MOVED", "to": (new - self.base) // abi.PAGE_SIZE}
        return None
