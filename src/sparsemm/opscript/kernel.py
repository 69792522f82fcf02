"""The kernel backend: run an op script on the running Linux kernel.

``run_kernel(script)`` starts a fresh Python child through ``opscript.child`` (so no state
carries between scripts, and the child dies with its caller); the child maps the arena at
``ARENA_BASE``, executes each op through ``sparsemm.native.libc`` and streams one JSON line
per record, so a crash keeps what ran and names the op that killed it. The child never lets
a script reach its own interpreter's memory. Owns nothing the model uses.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import json
import mmap
import os
import resource
import signal
import sys
import tempfile
import time

from sparsemm import abi
from sparsemm.native import _scan, libc, probe, procfs
from sparsemm.opscript import records as rec
from sparsemm.opscript.child import ChildTimeout, default_timeout, describe_status, run_child, set_pdeathsig
from sparsemm.opscript.dispatch import BackendUnavailable, OpDispatcher
from sparsemm.opscript.script import (ARENA_LIMIT, DEFAULT_MAP_COUNT_HEADROOM, LOW_ZONE_END, OWN_VMAS, Op,
                                      Script, ScriptError, op_ranges, page_align, parse_script,
                                      refused_by_arguments, vma_bound)

_U64 = 1 << 64
#: Descriptors the child keeps besides its memfds (stdio, the interpreter's, fork pipes).
_SPARE_FDS = 64


#: Added to the child's environment. Its Python allocates through glibc malloc (not
#: pymalloc's mmap'd arenas) and glibc never mmaps: every allocation then grows the heap
#: VMA with brk, so the child still allocates, and reports, once a script has brought
#: it to vm.max_map_count (a mmap'd arena would need a new VMA: MemoryError).
CHILD_ENV = {"PYTHONMALLOC": "malloc", "MALLOC_MMAP_MAX_": "0"}
#: For benchmarks (bench/bench_replay.py): set to a file path, the child writes there, as JSON,
#: how long its ops took, each ``run_op`` timed alone (the op's calls into the kernel and its
#: record; no start-up, imports, parsing, JSON or streaming), in wall and in CPU time (this
#: thread's: ``time.thread_time``): ``{"ops": n, "seconds": s, "cpu": s, "by_op": {name:
#: [n, s, cpu]}, "clock": [wall, cpu]}``, ``clock`` being what the clock reads themselves add
#: to one op's wall and CPU time (the median of 1,000 empty readings; not subtracted). A fork
#: op's time holds its child's ops. Unset: nothing is timed.
OP_TIMES_ENV = "SPARSEMM_KERNEL_OP_TIMES"


class KernelBackendError(RuntimeError):
    """The child could not run the script (a crash, a timeout). ``records``: what it
    reported before it stopped (records of the ops that ran, in order)."""

    def __init__(self, message: str, records: list[dict] | None = None):
        super().__init__(message)
        self.records = records or []


class ChildRefused(KernelBackendError):
    """Inside the child: the script cannot run here (the arena is not free, an op would
    reach the child's own memory, too few descriptors). The caller sees a ``ScriptError``."""


def run_kernel(script: Script, *, timeout: float | None = None, attempts: int = 4) -> list[dict]:
    """Run ``script`` in a fresh child process; return its records.

    The kernel has background actors a script cannot control: khugepaged may
    collapse a range the script just split (it wakes as soon as MADV_HUGEPAGE
    registers the process), and a THP fault may fall back to base pages under
    fragmentation. A run during which :func:`procfs.thp_activity` moved is run
    again, up to ``attempts`` times in all; the last run's records are returned
    either way (the activity may have been another process's).

    Raises ``ScriptError`` when the child refuses the script (see ``ChildRefused``) and
    ``KernelBackendError`` (with the records so far) when it crashes or runs longer than
    ``timeout`` seconds (default ``child.default_timeout()``).
    """
    if timeout is None:
        timeout = default_timeout()
    check_pins(script)
    with hugetlb_pool(script.hugetlb_pages):
        for _ in range(max(1, attempts)):
            records, quiet = _run_child(script, timeout)
            if quiet:
                break
    return records


def check_pins(script: Script) -> None:
    """``BackendUnavailable`` when this machine cannot give what ``script`` pins: its
    ``mmap_min_addr`` pair (``vm.mmap_min_addr``, the kernel's floor), or CAP_SYS_RAWIO
    held (the child drops it itself for ``"cap_sys_rawio": false``)."""
    if script.mmap_min_addr is not None:
        have = probe.mmap_min_addr()
        if have != script.mmap_min_addr:
            want = script.mmap_min_addr
            raise BackendUnavailable(
                f"the script pins vm.mmap_min_addr {want[0]} with the kernel's floor at {want[1]}; "
                + ("this machine's cannot be read" if have is None else
                   f"this machine has {have[0]} and {have[1]}"))
    if script.cap_sys_rawio and not procfs.has_capability(procfs.CAP_SYS_RAWIO):
        raise BackendUnavailable("the script runs with CAP_SYS_RAWIO (\"cap_sys_rawio\": true), "
                                 "which this process does not hold: run it as root")


_NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def _huge_page_counts() -> tuple[int, int]:
    """``(available, surplus)`` 2 MiB huge pages: free and not promised to a mapping
    (``HugePages_Free - HugePages_Rsvd``: a reservation may outlive its mapping's process, and
    a new mapping cannot take it), and the surplus pages a raise of ``vm.nr_hugepages`` turns
    into persistent ones before it adds any."""
    counts = {}
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("HugePages_"):
                key, value = line.split(":")
                counts[key] = int(value.split()[0])
    return (counts.get("HugePages_Free", 0) - counts.get("HugePages_Rsvd", 0),
            counts.get("HugePages_Surp", 0))


def _free_huge_pages() -> int:
    """2 MiB huge pages free and not reserved (``_huge_page_counts()[0]``, at least 0)."""
    return max(0, _huge_page_counts()[0])


@contextlib.contextmanager
def hugetlb_pool(pages: int):
    """Make sure ``pages`` 2 MiB huge pages are free and unreserved while the block runs, and
    no more where it can (the model's pool is exactly ``pages``: a fork child's faults take
    unreserved pages): raise ``vm.nr_hugepages`` by what is missing or lower it by the free
    excess, and put back the value found when done (only if no one else changed it
    meanwhile). ``BackendUnavailable`` with the reason when they
    cannot be had (not root, memory too fragmented). Runs in the parent, so a killed child
    cannot leave the setting changed."""
    if pages <= 0:
        yield
        return
    before = target = -1
    try:
        with open(_NR_HUGEPAGES, encoding="ascii") as fh:
            before = target = int(fh.read())
        available, surplus = _huge_page_counts()
        missing = pages - available
        if missing < 0 and before > 0:  # more free than the script says: set the excess aside
            target = max(0, before + missing)
            with open(_NR_HUGEPAGES, "w", encoding="ascii") as fh:
                fh.write(str(target))
        # a raise first turns surplus pages persistent (reserved ones too): count them in
        for _ in range(3 if missing > 0 else 0):
            target += missing + surplus
            surplus = 0
            with open(_NR_HUGEPAGES, "w", encoding="ascii") as fh:
                fh.write(str(target))
            missing = pages - _free_huge_pages()
            if missing <= 0:
                break
    except OSError as exc:
        if target != before:  # a later write failed: put back what the first one changed
            with contextlib.suppress(OSError), open(_NR_HUGEPAGES, "w", encoding="ascii") as fh:
                fh.write(str(before))
        raise BackendUnavailable(f"the script needs {pages} free huge pages and vm.nr_hugepages "
                                 f"cannot be raised here ({exc.strerror or exc})") from None
    if target == before:  # enough were free: nothing to put back
        yield
        return
    try:
        if _huge_page_counts()[0] < pages:
            raise BackendUnavailable(f"the script needs {pages} free huge pages; the kernel could not "
                                     "set that many aside (memory too fragmented)")
        yield
    finally:
        with open(_NR_HUGEPAGES, encoding="ascii") as fh:
            now = int(fh.read())
        if now == target:
            with open(_NR_HUGEPAGES, "w", encoding="ascii") as fh:
                fh.write(str(before))


def _run_child(script: Script, timeout: float) -> tuple[list[dict], bool]:
    """(records, whether the THP counters stood still from the first op to the last)."""
    records: list[dict] = []
    state: dict = {}

    def on_line(line: bytes) -> None:
        msg = json.loads(line)
        if "r" in msg:
            records.append(msg["r"])
        else:
            state.update(msg)

    doc = {k: v for k, v in script.doc.items() if k != "expect"}
    payload = json.dumps({"doc": doc, "allow_dangerous": bool(script.warnings)}).encode()
    try:
        end = run_child("sparsemm.opscript.kernel", payload, timeout=timeout, on_line=on_line,
                        env=CHILD_ENV)
    except ChildTimeout as exc:
        raise KernelBackendError(f"kernel backend child timed out after {exc.seconds:g} s "
                                 f"{_where(script, records)}; {_kept(records)}", records) from None
    except ValueError:  # a line that is not JSON: the child wrote something else
        raise KernelBackendError("kernel backend child wrote an unreadable record", records) from None
    if "error" in state:
        if state.get("kind") == "refused":
            raise ScriptError(f"kernel backend: {state['error']}")
        raise KernelBackendError(f"kernel backend child failed {_where(script, records)}: "
                                 f"{state['error']}; {_kept(records)}", records)
    if end.returncode != 0 or "done" not in state:
        detail = (describe_status(end.returncode) if end.returncode < 0 else end.last_error_line())
        raise KernelBackendError(f"kernel backend child {detail} {_where(script, records)}; "
                                 f"{_kept(records)}", records)
    return records, state["done"]["thp_quiet"]


def _where(script: Script, records: list[dict]) -> str:
    """Which op was running: the one after the last record received."""
    n = len(records)
    if n < len(script.ops):
        return f"at op {n} ({script.ops[n].name})"
    return "after the last op"


def _kept(records: list[dict]) -> str:
    return f"the {len(records)} record(s) before it are kept" if records else "no op had finished"


# ---------------------------------------------------------------------------
# Inside the child.


def _raise_nofile(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to ``needed`` (up to the hard limit), or refuse."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ChildRefused(f"the script's files need {needed} open descriptors; this system allows "
                           f"{hard} per process (RLIMIT_NOFILE hard limit)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class KernelRunner(OpDispatcher):
    """Executes a script's ops on the kernel, in this process (public: ``opscript.measure``
    runs its layouts through it). ``fds`` maps script file names to memfds.

    Use: ``r = KernelRunner(script); r.check_arena_empty(); r.create_files()``, then
    ``r.run_op(op)`` per op (its record) or ``r.run_ops(ops)``.

    ``own``: the ranges of this process's own mappings when the script started (the
    interpreter, its libraries and heap); with ``outside_arena`` an op whose reach
    (``_reach``) holds any of them, or any mapping outside the arena zone
    ``[ARENA_BASE, ARENA_LIMIT)`` and the low zone ``[0, LOW_ZONE_END)``, is refused
    before it runs.
    """

    def __init__(self, script: Script):
        self.script = script
        self.base = script.base
        self.end = script.base + script.arena_bytes
        self.fds: dict[str, int] = {}
        self.ro_fds: dict[str, int] = {}  # the same files opened O_RDONLY
        self.uffd: tuple[int, int] | None = None  # (pid that made it, its userfaultfd)
        self.disk_paths: dict[str, str] = {}  # a disk file's path -> its script name
        self.pid = os.getpid()
        self.own: list[tuple[int, int, str]] = []
        self.gate_lines = 0  # maps lines that are no VMA ([vsyscall])

    def check_arena_empty(self) -> None:
        """Refuse an arena this process cannot give (anything mapped in it); record ``own``."""
        self_maps = procfs.read_maps()
        entries = [e for e in self_maps if e.path != "[vsyscall]"]
        self.own = [(e.start, e.end, e.path) for e in entries]
        self.gate_lines = len(self_maps) - len(entries)
        for entry in entries:
            if entry.start < self.end and entry.end > self.base:
                free = max(0, (entry.start - self.base) // abi.PAGE_SIZE)
                raise ChildRefused(
                    f"the arena {self.base:#x}-{self.end:#x} ({self.script.arena_pages} pages) overlaps "
                    f"the kernel backend child's own mapping {entry.start:#x}-{entry.end:#x} "
                    f"{entry.path or '(anonymous)'}: this process can give at most {free} pages")

    def create_files(self) -> None:
        """Each script file as a memfd, or (``disk``) a regular file in a new directory under
        ``tempfile.gettempdir()``; filled, written back (a disk file's pages are clean), and
        opened a second time ``O_RDONLY`` for ``readonly`` mmaps. Disk files are unlinked
        and their directory removed at once: nothing is left behind, however the run ends."""
        _raise_nofile(2 * len(self.script.files) + _SPARE_FDS)
        disk_dir = tempfile.mkdtemp(prefix="sparsemm-files-") if self.script.disk_files else None
        try:
            for name, pages in self.script.files.items():
                if name in self.script.disk_files:
                    path = os.path.join(disk_dir, name)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    self.disk_paths[path] = name
                else:
                    fd = libc.memfd_create(name, abi.MFD_CLOEXEC | abi.MFD_ALLOW_SEALING)
                    path = f"/proc/self/fd/{fd}"
                self.fds[name] = fd
                libc.ftruncate(fd, pages * abi.PAGE_SIZE)
                for i in range(pages):
                    os.pwrite(fd, bytes([(i + 1) & 0xFF]), i * abi.PAGE_SIZE)
                if name in self.script.disk_files:
                    os.fsync(fd)
                self.ro_fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            if disk_dir is not None:
                for path in self.disk_paths:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                os.rmdir(disk_dir)

    # -- vm.max_map_count headroom ----------------------------------------------------------

    def map_count(self) -> int:
        """This process's ``mm->map_count``: its maps lines but the gate area ``[vsyscall]``
        (not a VMA). Reads into a preallocated buffer, so it works at the limit. O(VMAs)."""
        return procfs.count_vmas() - self.gate_lines

    def may_reach_limit(self, script: Script) -> bool:
        """Can ``script`` (no ``map_count_headroom``) come near ``vm.max_map_count`` here or on
        the model (``vma_bound`` against this process's VMAs and the default headroom)? O(ops)."""
        bound = vma_bound(script.ops) + 2
        return bound >= DEFAULT_MAP_COUNT_HEADROOM or \
            self.map_count() + bound >= procfs.read_int("/proc/sys/vm/max_map_count")

    def pad_map_count(self, headroom: int, *, default: bool = False) -> int:
        """Add filler VMAs outside the arena until exactly ``headroom`` more fit under
        ``vm.max_map_count`` (the script's ``map_count_headroom``, or with ``default`` the
        headroom of a script that gives none), so a script reaching the limit gives the same
        records whatever this interpreter mapped itself. The fillers are
        one PROT_NONE mapping with every other page made PROT_READ (each such page adds two
        VMAs; the last page one). Returns the map_count the script starts from; ChildRefused
        when this process already has too many VMAs, RuntimeError if the count misses."""
        target = procfs.read_int("/proc/sys/vm/max_map_count") - headroom
        need = target - self.map_count()
        if need < 0:
            what = (f"a script without map_count_headroom that may reach vm.max_map_count runs "
                    f"with {headroom} VMAs left ({OWN_VMAS} of the process's own at the default "
                    f"limit), but" if default else f"map_count_headroom {headroom}:")
            raise ChildRefused(f"{what} this process already has {self.map_count()} VMAs, more "
                               f"than vm.max_map_count minus {headroom}; give the script a smaller "
                               f"map_count_headroom")
        if need:
            pages = 2 * need + 2
            addr = libc.mmap(0, pages * abi.PAGE_SIZE, abi.PROT_NONE,
                             abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MapFlag.NORESERVE)
            need = target - self.map_count()
            page = 1
            while need >= 2:
                libc.mprotect(addr + page * abi.PAGE_SIZE, abi.PAGE_SIZE, abi.PROT_READ)
                page += 2
                need -= 2
            if need == 1:
                libc.mprotect(addr + (pages - 1) * abi.PAGE_SIZE, abi.PAGE_SIZE, abi.PROT_READ)
        got = self.map_count()
        if got != target:
            raise RuntimeError(f"padding to map_count {target} gave {got}")
        return got

    # -- what a script may reach outside the arena ----------------------------------------

    def _is_own(self, start: int, end: int) -> bool:
        if start >= end:
            return False
        if not (abi.ARENA_BASE <= start and end <= ARENA_LIMIT) and end > LOW_ZONE_END:
            return True  # outside the zones: the interpreter's mmap area, stack, ...
        return any(s < end and e > start for s, e, _ in self.own)

    def check_reach(self, op: Op, maps=None) -> None:
        """Refuse ``op`` (``ChildRefused``) if it could change or read a mapping of this
        process that is not the script's. Only scripts with ``outside_arena`` get here;
        the parser refuses every other range that leaves the arena."""
        if maps is None:
            maps = [(e.start, e.end, e.path) for e in procfs.read_maps() if e.path != "[vsyscall]"]
        ends = [e for _, e, _ in maps]  # address order, so ends ascend: bisect, not a scan
        for lo, hi in _reach(op, maps):  # (a maxmap script: 1,024 ranges over ~65,000 VMAs)
            for k in range(bisect.bisect_right(ends, lo), len(maps)):
                s, e, path = maps[k]
                if s >= hi:
                    break
                if self._is_own(s, e):
                    raise ChildRefused(
                        f"op {op.index} ({op.name}) reaches {max(lo, s):#x}-{min(hi, e):#x}, memory "
                        f"of the kernel backend child itself ({path or 'anonymous'}); "
                        "outside_arena allows only ranges that hold nothing of the child's")

    def check_all_reaches(self, ops) -> None:
        """``check_reach`` of every op (fork children included) against the maps now."""
        maps = [(s, e, p) for s, e, p in self.own]
        stack = list(ops)
        while stack:
            op = stack.pop()
            stack.extend(op.child)
            self.check_reach(op, maps)

    def run_op(self, op: Op) -> dict:
        if self.script.outside_arena and op.name != "fork":
            self.check_reach(op)
        return super().run_op(op)

    # -- the calls -----------------------------------------------------------

    def op_mmap(self, op: Op):
        fd = -1 if op.file is None else (self.ro_fds if op.readonly else self.fds)[op.file]
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

    def cpu_touch(self, addr: int, npages: int, write: bool, value: int) -> list:
        """Each child writes one result per page into a shared buffer (2 bytes: done, byte)
        before the next access, so what it did survives the signal that kills it."""
        values: list = []
        buf = mmap.mmap(-1, max(1, 2 * npages))
        cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
        base = ctypes.addressof(cbuf)
        parent = os.getpid()
        try:
            i = 0
            while i < npages:
                pid = os.fork()
                if pid == 0:
                    status = 0
                    try:
                        set_pdeathsig(parent)
                        _no_core_dump()
                        for j in range(i, npages):
                            page = addr + j * abi.PAGE_SIZE
                            if write:
                                ctypes.memset(page, value, 1)
                                got = 0
                            else:
                                got = ctypes.string_at(page, 1)[0]
                            ctypes.memset(base + 2 * j + 1, got, 1)
                            ctypes.memset(base + 2 * j, 1, 1)
                    except BaseException:  # noqa: BLE001 - the parent reports a failed child
                        status = 1
                    finally:
                        os._exit(status)
                _, status = os.waitpid(pid, 0)
                done = i
                while done < npages and buf[2 * done]:
                    values.append("ok" if write else buf[2 * done + 1])
                    done += 1
                if os.WIFSIGNALED(status) and done < npages:
                    values.append(signal.Signals(os.WTERMSIG(status)).name)
                    i = done + 1
                elif done == npages and status == 0:
                    i = done
                else:
                    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                    raise KernelBackendError(f"touch child {describe_status(code)} at page {done}")
        finally:
            del cbuf
            buf.close()
        return values

    def op_fork(self, op: Op):
        """Run ``op.child`` in a forked child that streams its records through a pipe; a
        child that dies is reported with the op it was running."""
        rfd, wfd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: run, report, leave without running Python's exit handlers
            status = 0
            try:
                os.close(rfd)
                set_pdeathsig(parent)
                self.pid = os.getpid()
                out = os.fdopen(wfd, "w", encoding="utf-8")
                _stream(out, self, op.child)
            except BaseException:  # noqa: BLE001 - the parent reports a failed child
                status = 1
            finally:
                os._exit(status)
        os.close(wfd)
        records: list[dict] = []
        state: dict = {}
        with os.fdopen(rfd, "r", encoding="utf-8") as fh:
            for line in fh:
                msg = json.loads(line)
                if "r" in msg:
                    records.append(msg["r"])
                else:
                    state.update(msg)
        _, status = os.waitpid(pid, 0)
        n = len(records)
        where = (f"at its op {n} ({op.child[n].name})" if n < len(op.child) else "after its last op")
        if "error" in state:
            cls = ChildRefused if state.get("kind") == "refused" else KernelBackendError
            raise cls(state["error"] if cls is ChildRefused else
                      f"fork child of op {op.index} failed {where}: {state['error']}")
        if status != 0 or "done" not in state:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            raise KernelBackendError(f"fork child of op {op.index} {describe_status(code)} {where}")
        return {"value": records}

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
        if op.target == "child":
            return self._process_madvise_child(op)
        pidfd = libc.pidfd_open(self.pid)
        try:
            done = libc.process_madvise(pidfd, list(op.ranges), op.advice, op.flags)
        finally:
            os.close(pidfd)
        return {"value": done // abi.PAGE_SIZE}

    def _process_madvise_child(self, op: Op):
        """Fork a child that waits; advise its memory through a pidfd; the child then sends
        its snapshot (the advice's effect) and exits."""
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                os.close(go_w)
                os.close(out_r)
                set_pdeathsig(parent)
                os.read(go_r, 1)
                with os.fdopen(out_w, "w", encoding="utf-8") as fh:
                    fh.write(json.dumps(self.snapshot()))
            except BaseException:  # noqa: BLE001 - the parent reports a failed child
                status = 1
            finally:
                os._exit(status)
        os.close(go_r)
        os.close(out_w)
        try:
            pidfd = libc.pidfd_open(pid)
            try:
                done, err = libc.process_madvise(pidfd, list(op.ranges), op.advice, op.flags), 0
            except OSError as exc:
                done, err = 0, exc.errno
            finally:
                os.close(pidfd)
            os.write(go_w, b"x")
            with os.fdopen(out_r, "r", encoding="utf-8") as fh:
                text = fh.read()
        finally:
            os.close(go_w)
            _, status = os.waitpid(pid, 0)
        if status != 0 or not text:
            raise KernelBackendError(f"process_madvise child of op {op.index} failed")
        if err:
            raise OSError(err, "process_madvise")
        return {"value": {"pages": done // abi.PAGE_SIZE, "child": json.loads(text)}}

    def _uffd(self) -> int:
        """This process's userfaultfd (made on first use; a fork child makes its own: the
        parent's would act on the parent's memory)."""
        if self.uffd is None or self.uffd[0] != os.getpid():
            self.uffd = (os.getpid(), libc.userfaultfd(abi.UFFD_FEATURE_SIGBUS))
        return self.uffd[1]

    def op_uffd_register(self, op: Op):
        libc.uffd_register(self._uffd(), op.addr, op.length, abi.UFFDIO_REGISTER_MODE_MISSING)

    def op_uffd_unregister(self, op: Op):
        libc.uffd_unregister(self._uffd(), op.addr, op.length)

    def op_uffd_copy(self, op: Op):
        npages = -(-op.length // abi.PAGE_SIZE) + 1
        src = mmap.mmap(-1, npages * abi.PAGE_SIZE)
        try:
            src.write(bytes([op.value]) * len(src))
            csrc = ctypes.c_char.from_buffer(src)
            copied, err = libc.uffd_copy(self._uffd(), op.addr, ctypes.addressof(csrc), op.length)
            del csrc
        finally:
            src.close()
        out = {"value": copied // abi.PAGE_SIZE}
        if err:
            out["ret"] = rec.errno_name(err)
        return out

    def op_special_madvise(self, op: Op):
        """Guard advice on the first page of one of this process's special mappings (the
        parser allows no other advice: these must not change)."""
        want = f"[{op.mapping}]"
        entry = next((e for e in procfs.read_maps() if e.path == want), None)
        if entry is None:
            raise KernelBackendError(f"op {op.index} (special_madvise): this process has no {want}")
        libc.madvise(entry.start, abi.PAGE_SIZE, op.advice)

    def op_mseal(self, op: Op):
        libc.mseal(op.addr, op.length, op.flags)

    def op_pagemap_scan(self, op: Op):
        mask, anyof, inverted, ret_mask, max_pages, vec_len = op.scan
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            regions, walk_end = _scan.pagemap_scan(
                fd, op.addr, (op.addr + op.length) & abi.ULONG_MAX, category_mask=mask,
                anyof_mask=anyof, inverted=inverted, return_mask=ret_mask, max_pages=max_pages,
                vec_len=vec_len)
        finally:
            os.close(fd)
        return {"value": rec.scan_value(regions, walk_end, self.base)}

    # -- observation ---------------------------------------------------------

    def backing(self, entry: procfs.MapsEntry) -> str:
        path = entry.path
        if not path:
            return "anon"
        if path.startswith("/dev/zero"):
            return "shared-anon"
        if path.endswith(" (deleted)") and path[: -len(" (deleted)")] in self.disk_paths:
            return self.disk_paths[path[: -len(" (deleted)")]]
        if path.startswith("/anon_hugepage"):
            return "hugetlb"
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


def _no_core_dump() -> None:
    """A forked toucher killed by a signal must not dump core (``PR_SET_DUMPABLE`` 0 skips
    the dump whatever ``core_pattern`` says)."""
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


def _first_hole(start: int, end: int, maps) -> int:
    """The end of the run of mappings that covers ``start`` without a gap, capped at ``end``
    (``start`` itself when nothing is mapped there)."""
    cur = start
    for s, e, _ in maps:
        if e <= cur:
            continue
        if s > cur or cur >= end:
            break
        cur = e
    return min(cur, end)


def _reach(op: Op, maps) -> list[tuple[int, int]]:
    """The ranges ``op`` could change or read in this process, given its mappings ``maps``
    ((start, end, path), address order). mprotect/mlock/munlock stop at the first hole
    (ENOMEM); mremap's old range must lie in one VMA (else EFAULT); madvise, munmap, mmap,
    touch and process_madvise reach their whole range."""
    name = op.name
    out = []
    if name == "mremap":
        start, end = op.addr, op.addr + page_align(op.length)
        if not refused_by_arguments(name, start, end):
            vma = next(((s, e) for s, e, _ in maps if s <= start < e), None)
            if vma is not None and end <= vma[1]:
                out.append((start, end))
        if op.to_addr is not None and op.flags & abi.MremapFlag.FIXED:
            to_end = op.to_addr + page_align(op.new_length)
            if not refused_by_arguments(name, op.to_addr, to_end):
                out.append((op.to_addr, to_end))
        return out
    for start, end in op_ranges(op):
        if name in ("mlock", "munlock"):
            start &= ~(abi.PAGE_SIZE - 1)
        if refused_by_arguments(name, start, end):
            continue
        if name in ("mprotect", "mlock", "munlock"):
            end = _first_hole(start, end, maps)
        out.append((start, min(end, abi.TASK_SIZE)))
    return out


class _OpTimes:
    """The time of each op the child runs, summed per op name (``OP_TIMES_ENV``)."""

    def __init__(self, runner: KernelRunner, path: str):
        self._run_op = runner.run_op
        self.path = path
        self.by_op: dict[str, list] = {}
        walls, cpus = [], []
        for _ in range(1000):  # the clocks' own cost, read exactly as run_op reads them
            c0 = time.thread_time()
            t0 = time.perf_counter()
            t1 = time.perf_counter()
            c1 = time.thread_time()
            walls.append(t1 - t0)
            cpus.append(c1 - c0)
        walls.sort()
        cpus.sort()
        self.clock = [walls[500], cpus[500]]

    def run_op(self, op: Op) -> dict:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        record = self._run_op(op)
        t1 = time.perf_counter()
        c1 = time.thread_time()
        slot = self.by_op.setdefault(op.name, [0, 0.0, 0.0])
        slot[0] += 1
        slot[1] += t1 - t0
        slot[2] += c1 - c0
        return record

    def write(self) -> None:
        doc = {"ops": sum(v[0] for v in self.by_op.values()),
               "seconds": sum(v[1] for v in self.by_op.values()),
               "cpu": sum(v[2] for v in self.by_op.values()), "by_op": self.by_op, "clock": self.clock}
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)


def _stream(out, runner: KernelRunner, ops, times: _OpTimes | None = None) -> None:
    """Run ``ops``, writing one flushed JSON line per record, then ``{"done": ...}``; a
    failure is one ``{"error": ..., "kind": "refused"|"failed"}`` line. ``times``: each op
    timed (``OP_TIMES_ENV``), written before ``done``."""
    def emit(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    run_op = times.run_op if times else runner.run_op
    try:
        before = procfs.thp_activity()
        for op in ops:
            emit({"r": run_op(op)})
        if times:
            times.write()
        emit({"done": {"thp_quiet": procfs.thp_activity() == before}})
    except ChildRefused as exc:
        emit({"error": str(exc), "kind": "refused"})
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        emit({"error": " ".join(f"{type(exc).__name__}: {exc}".split()), "kind": "failed"})
        raise


#: The heap the child reserves before a script that reaches vm.max_map_count: past the
#: limit even brk fails, and a snapshot of 65,530 VMAs builds tens of MiB of objects.
_HEAP_RESERVE = 256 << 20


def _preload() -> None:
    """Import now what an op imports on first use (``libc.add_seals``: ``fcntl``, an extension
    module whose load maps its library), so no op adds a VMA of the interpreter's own once
    the VMAs are counted."""
    import fcntl  # noqa: F401


def _malloc_without_mmap() -> None:
    """Make glibc's malloc take memory from a heap grown now and never trimmed, and never
    from mmap (``mallopt`` M_MMAP_MAX 0, M_TRIM_THRESHOLD max), so the interpreter adds no
    VMA of its own while a script runs at ``vm.max_map_count`` and can still allocate past
    it (the parent starts this child with PYTHONMALLOC=malloc for the same reason)."""
    import ctypes
    libc_ = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    libc_.mallopt(m_mmap_max, 0)
    libc_.mallopt(m_trim_threshold, 2**31 - 1)
    libc_.malloc.restype = ctypes.c_void_p
    libc_.free.argtypes = [ctypes.c_void_p]
    block = libc_.malloc(ctypes.c_size_t(_HEAP_RESERVE))
    if block:
        libc_.free(block)  # the heap keeps its top: later mallocs need no brk


def _child_main() -> int:
    msg = json.loads(sys.stdin.read())
    out = sys.stdout
    try:
        script = parse_script(msg["doc"], allow_dangerous=bool(msg.get("allow_dangerous")))
        runner = KernelRunner(script)
        runner.check_arena_empty()
        if script.outside_arena:
            runner.check_all_reaches(script.ops)
        runner.create_files()
        # A script that may reach vm.max_map_count starts exactly its headroom below it (the
        # default one when it gives none, as the model assumes: script.effective_headroom)
        default = script.map_count_headroom is None
        if not default or runner.may_reach_limit(script):
            _preload()
            _malloc_without_mmap()
            runner.pad_map_count(DEFAULT_MAP_COUNT_HEADROOM if default else script.map_count_headroom,
                                 default=default)
        if script.cap_sys_rawio is False:  # the script runs as a caller without it
            libc.drop_capability(procfs.CAP_SYS_RAWIO)
    except (ChildRefused, ScriptError) as exc:
        out.write(json.dumps({"error": str(exc), "kind": "refused"}) + "\n")
        out.flush()
        return 2
    times_path = os.environ.get(OP_TIMES_ENV)
    try:
        _stream(out, runner, script.ops, _OpTimes(runner, times_path) if times_path else None)
    except ChildRefused:
        return 2
    except Exception:  # noqa: BLE001 - already reported as an error line
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a parent gone: end quietly
    sys.exit(_child_main())
