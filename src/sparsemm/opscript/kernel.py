"""The kernel backend: run an op script on the running Linux kernel.

``run_kernel(script)`` starts a fresh Python child (``python -m
sparsemm.opscript.kernel``) so no state carries between scripts; the child maps
the arena at ``ARENA_BASE``, executes each op through ``sparsemm.native.libc``
and prints the records. Owns nothing the model uses.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

from sparsemm import abi
from sparsemm.native import libc, procfs
from sparsemm.opscript import records as rec
from sparsemm.opscript.dispatch import OpDispatcher
from sparsemm.opscript.script import Op, Script, parse_script



#: The child's environment. Its Python allocates through glibc malloc (not pymalloc's
#: mmap'd arenas) and glibc never mmaps: every allocation then grows the heap VMA
#: with brk, so the child still allocates, and reports, once a script has brought
#: it to vm.max_map_count (a mmap'd arena would need a new VMA: MemoryError).
CHILD_ENV = {"PYTHONHASHSEED": "0", "PYTHONMALLOC": "malloc", "MALLOC_MMAP_MAX_": "0"}


class KernelBackendError(RuntimeError):
    """The child could not run the script (arena occupied, crash)."""


def run_kernel(script: Script, *, timeout: float = 600.0, attempts: int = 4) -> list[dict]:
    """Run ``script`` in a fresh child process; return its records.

    The kernel has background actors a script cannot control: khugepaged may
    collapse a range the script just split (it wakes as soon as MADV_HUGEPAGE
    registers the process), and a THP fault may fall back to base pages under
    fragmentation. A run during which :func:`procfs.thp_activity` moved is run
    again, up to ``attempts`` times in all; the last run's records are returned
    either way (the activity may have been another process's).
    """
    for _ in range(max(1, attempts)):
        records, quiet = _run_child(script, timeout)
        if quiet:
            break
    return records


def _run_child(script: Script, timeout: float) -> tuple[list[dict], bool]:
    """(records, whether the THP counters stood still from the first op to the last)."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparsemm.opscript.kernel"],
        input=json.dumps(script.doc), capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **CHILD_ENV},
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise KernelBackendError(f"kernel backend child failed: {detail[0]}")
    out = json.loads(proc.stdout)
    return out["records"], out["thp_quiet"]


# ---------------------------------------------------------------------------
# Inside the child.


class _Runner(OpDispatcher):
    """Executes ops in this process. ``fds`` maps script file names to memfds."""

    def __init__(self, script: Script):
        self.script = script
        self.base = script.base
        self.end = script.base + script.arena_bytes
        self.fds: dict[str, int] = {}
        self.pid = os.getpid()

    def check_arena_empty(self) -> None:
        for entry in procfs.read_maps():
            if entry.start < self.end and entry.end > self.base:
                raise KernelBackendError(
                    f"arena {self.base:#x}-{self.end:#x} is not empty: {entry.start:#x}-{entry.end:#x}")

    def create_files(self) -> None:
        for name, pages in self.script.files.items():
            fd = libc.memfd_create(name, abi.MFD_CLOEXEC | abi.MFD_ALLOW_SEALING)
            libc.ftruncate(fd, pages * abi.PAGE_SIZE)
            for i in range(pages):
                os.pwrite(fd, bytes([(i + 1) & 0xFF]), i * abi.PAGE_SIZE)
            self.fds[name] = fd

    # -- the calls -----------------------------------------------------------

    def op_mmap(self, op: Op):
        fd = self.fds[op.file] if op.file is not None else -1
        flags = op.flags
        if op.file is None and not flags & abi.MAP_ANONYMOUS:
            fd = -1  # a script without a file and without "anonymous": the kernel says EBADF
        libc.mmap(op.addr, op.length, op.prot, flags, fd, op.offset)

    def op_munmap(self, op: Op):
        libc.munmap(op.addr, op.length)

    def op_mprotect(self, op: Op):
        libc.mprotect(op.addr, op.length, op.prot)

    def op_madvise(self, op: Op):
        libc.madvise(op.addr, op.length, op.advice)

    def remap(self, op: Op) -> int:
        return libc.mremap(op.addr, op.length, op.new_length, op.flags, op.to_addr or 0)

    def op_mlock(self, op: Op):
        libc.mlock(op.addr, op.length, op.flags)

    def op_munlock(self, op: Op):
        libc.munlock(op.addr, op.length)

    def touch_page(self, addr: int, write: bool, value: int):
        if write:
            if libc.process_vm_writev(self.pid, addr, bytes([value])) != 1:
                raise OSError(errno.EFAULT, "short write")
            return None
        data = libc.process_vm_readv(self.pid, addr, 1)
        if not data:
            raise OSError(errno.EFAULT, "short read")
        return data[0]

    def op_fork(self, op: Op):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run, report, leave without running Python's exit handlers
            status = 0
            try:
                os.close(rfd)
                self.pid = os.getpid()
                data = json.dumps(self.run_ops(op.child)).encode()
                with os.fdopen(wfd, "wb") as fh:
                    fh.write(data)
            except BaseException:  # noqa: BLE001 - the parent reports a failed child
                status = 1
            finally:
                os._exit(status)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not data:
            raise KernelBackendError(f"fork child of op {op.index} failed (status {status})")
        return {"value": json.loads(data)}

    def op_snapshot(self, op: Op):
        return {"value": self.snapshot()}

    def op_ftruncate(self, op: Op):
        libc.ftruncate(self.fds[op.file], op.file_length)

    def op_fallocate_punch(self, op: Op):
        libc.fallocate(self.fds[op.file], abi.FALLOC_FL_PUNCH_HOLE | abi.FALLOC_FL_KEEP_SIZE,
                       op.addr, op.length)

    def op_seal(self, op: Op):
        libc.add_seals(self.fds[op.file], op.seals)

    def op_process_madvise(self, op: Op):
        pidfd = libc.pidfd_open(self.pid)
        try:
            done = libc.process_madvise(pidfd, list(op.ranges), op.advice)
        finally:
            os.close(pidfd)
        return {"value": done // abi.PAGE_SIZE}

    # -- observation ---------------------------------------------------------

    def backing(self, entry: procfs.MapsEntry) -> str:
        path = entry.path
        if not path:
            return "anon"
        if path.startswith("/dev/zero"):
            return "shared-anon"
        if path.startswith("/memfd:"):
            name = path[len("/memfd:"):]
            return name[: -len(" (deleted)")] if name.endswith(" (deleted)") else name
        return path

    def snapshot(self) -> dict:
        views = []
        last_mapped = self.base
        for entry in procfs.read_smaps():
            if entry.end <= self.base or entry.start >= self.end:
                continue
            pgoff = entry.offset // abi.PAGE_SIZE
            views.append(rec.VmaView(
                (entry.start - self.base) // abi.PAGE_SIZE, (entry.end - self.base) // abi.PAGE_SIZE,
                entry.perms, self.backing(entry), pgoff, rec.snapshot_flags(entry.vmflags)))
            last_mapped = max(last_mapped, min(entry.end, self.end))
        npages = (last_mapped - self.base) // abi.PAGE_SIZE
        words = procfs.read_pagemap(self.base, npages)
        mapped = bytearray(npages)
        for v in views:
            for p in range(max(v.start, 0), min(v.end, npages)):
                mapped[p] = 1
        pages = "".join(rec.page_char(w, bool(m)) for w, m in zip(words, mapped))
        return rec.snapshot_value(views, pages)


def _child_main() -> int:
    doc = json.loads(sys.stdin.read())
    script = parse_script(doc)
    runner = _Runner(script)
    runner.check_arena_empty()
    runner.create_files()
    before = procfs.thp_activity()
    records = runner.run_ops(script.ops)
    quiet = procfs.thp_activity() == before
    sys.stdout.write(json.dumps({"records": records, "thp_quiet": quiet}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
