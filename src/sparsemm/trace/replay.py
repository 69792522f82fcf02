"""Replay a recording on the model: every traced call, per address space, as run and under each guard design.

Owns the process topology (which task uses which address space: threads share one, fork
copies it, execve replaces it from the snapshot read at that moment, the last task's exit
ends it), the per-design metrics (VMAs at every call, sampled kernel bytes, calls issued),
the comparison of the as-run model with every map read from the real process, and running
the designs in parallel worker processes. The per-call translation is ``designs.DesignMm``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from sparsemm import abi
from sparsemm._gc import gc_paused
from sparsemm.analyze.guards import GuardPolicy
from sparsemm.analyze.maps import MapKind, parse_maps
from sparsemm.model.brk import BrkState
from sparsemm.model.costs import kernel_cost
from sparsemm.trace import parse as tp
from sparsemm.trace.designs import AS_RUN, DesignMm, model_design, trace_designs
from sparsemm.trace.record import Recording, Snapshot
from sparsemm.trace.seed import entries_of, seed_mm

__all__ = ["replay", "replay_designs", "ReplayResult", "DesignResult", "MmResult", "Sample", "Comparison",
           "Mismatch", "compare_maps"]

_SAMPLES = 1000  # time-series points per design (each keeps the peak since the previous one)
_COST_SAMPLES = 100  # of which this many recompute kernel bytes (O(VMAs) each); the others repeat it
_MISMATCHES = 20  # as-run call mismatches kept (the count is exact)
_MM_CALLS = frozenset({"mmap", "munmap", "mprotect", "pkey_mprotect", "madvise", "mremap", "brk", "mlock",
                       "mlock2", "munlock", "mlockall", "munlockall", "process_madvise", "mseal", "shmat",
                       "shmdt", "prctl"})
_CLONES = frozenset({"clone", "clone3", "fork", "vfork"})


@dataclass(slots=True)
class Sample:
    """One time-series point of one design: totals over the live address spaces."""

    t: float  # seconds since the first event
    event: int  # events replayed so far
    vmas: int  # VMAs (vm_area_structs) now
    vmas_max: int  # the largest VMA total since the previous point (so no peak is lost)
    root_vmas: int  # VMAs of the root process's address space (0 when it has none)
    map_count: int  # as counted against vm.max_map_count (kernel_cost)
    kernel_bytes: int  # model.costs estimate of the VMA-side kernel objects (page tables apart)
    root_kernel_bytes: int  # the same for the root process's address space
    table_bytes: int  # page tables the traced calls need (guard markers, populate): see docs
    calls: int  # memory-management calls issued so far under this design


@dataclass(slots=True)
class Comparison:
    """The as-run model against a map read from the process (at exit, or at detach)."""

    lineno: int
    kind: str  # "exit", "detach"
    measured_vmas: int
    model_vmas: int
    held: bool
    first_difference: str | None  # None when every VMA matches (a grown stack is not a difference)
    last_call_line: int | None  # the last traced call that changed the first differing range
    note: str = ""

    @property
    def matches(self) -> bool:
        return self.first_difference is None


@dataclass(slots=True)
class Mismatch:
    """A call whose as-run model result differs from what the kernel returned."""

    lineno: int
    pid: int
    call: str
    kernel: str
    model: str


@dataclass(slots=True)
class MmResult:
    """One address space of the run (design-independent facts, plus per-design figures)."""

    ident: int
    pid: int
    label: str
    born: str  # "exec", "fork", "attach"
    born_line: int
    parent: int | None  # ident of the forking address space
    ended_line: int | None = None
    end: str = "running"  # "exit", "exec" (replaced), "running" (still alive at the end of the trace)
    seeded: bool = True
    calls: int = 0  # traced mm calls replayed on it
    peak: dict[str, int] = field(default_factory=dict)  # design -> peak VMAs
    final: dict[str, int] = field(default_factory=dict)  # design -> VMAs at the measurement or the end
    final_kernel_bytes: dict[str, int] = field(default_factory=dict)  # design -> kernel bytes then
    final_table_bytes: dict[str, int] = field(default_factory=dict)  # design -> page-table bytes then
    comparisons: list[Comparison] = field(default_factory=list)  # as-run only
    role: str = ""  # what the process said it is at its exit (Chromium's --type=renderer...)


@dataclass(slots=True)
class DesignResult:
    name: str
    samples: list[Sample]
    peak_vmas: int  # over the totals (every call)
    peak_kernel_bytes: int  # over the totals' samples
    peak_root_kernel_bytes: int  # the root process's, over the samples
    peak_table_bytes: int  # page tables the calls need, all processes, over the samples
    calls: dict[str, int]  # issued, by kind
    forks: int  # address spaces copied (fork, clone without CLONE_VM)
    fork_vmas: int  # VMAs those copies copied
    failed: int  # calls the kernel accepted but this design refused (e.g. the max_map_count wall)
    first_failure: str | None
    mismatches: list[Mismatch]  # as-run only
    mismatch_count: int


@dataclass(slots=True)
class ReplayResult:
    designs: dict[str, DesignResult]
    mms: list[MmResult]
    root: int | None  # ident of the root process's last seeded address space
    events: int
    calls: int
    unmodelled: dict[str, int]  # calls replayed as no change, by what
    untracked_calls: int  # calls of address spaces without a seed (the launcher before exec)
    notes: list[str]
    duration_s: float
    t0: float | None
    payload: bool = False  # pte/tree also turned the decommitted payload into guards


class _Mm:
    """One address space during the replay: its tasks and its state under each design."""

    __slots__ = ("res", "users", "states", "last_vmas", "dirty", "cost_cache", "pid", "open_check")

    def __init__(self, res: MmResult, states: dict[str, DesignMm] | None):
        self.res = res
        self.pid = res.pid
        self.users: set[int] = set()
        self.states = states  # None: not seeded, calls are not replayed
        self.last_vmas = {d: s.vmas for d, s in states.items()} if states else {}
        self.dirty = {d: True for d in (states or {})}
        self.cost_cache: dict[str, tuple[int, int]] = {}
        #: [snapshot, entry time of the event it was read at, comparison index, calls applied since]
        #: while a mismatch may still be explained by calls in flight at the read
        self.open_check: list | None = None


def compare_maps(state: DesignMm, snap: Snapshot) -> Comparison:
    """The model's VMAs against the snapshot's maps, in address order. A ``[stack]`` whose
    start moved down matches (the stack grows by faults, which the trace does not show).
    O(n)."""
    real = [e for e in parse_maps(snap.maps, f"maps of pid {snap.pid}") if e.kind is not MapKind.VSYSCALL]
    model = [v for v in state.mm if not v.is_guard_entry]
    first, rng = None, (0, 0)
    n = max(len(real), len(model))
    for i in range(n):
        r = real[i] if i < len(real) else None
        m = model[i] if i < len(model) else None
        if r is not None and m is not None and r.end == m.vm_end and r.perms == m.perms and (
                r.start == m.vm_start or (r.kind is MapKind.STACK and m.vm_flags & abi.VmFlag.GROWSDOWN)):
            continue
        if m is None:
            first = (f"the process has {r.start:#x}-{r.end:#x} {r.perms} {r.path or '(anon)'} "
                     "beyond the model's last VMA")
            rng = (r.start, r.end)
        elif r is None:
            first = f"the model has {m.vm_start:#x}-{m.vm_end:#x} {m.perms} beyond the process's last VMA"
            rng = (m.vm_start, m.vm_end)
        else:
            first = (f"the process has {r.start:#x}-{r.end:#x} {r.perms} {r.path or '(anon)'} "
                     f"where the model has {m.vm_start:#x}-{m.vm_end:#x} {m.perms}")
            rng = (min(r.start, m.vm_start), max(r.start, m.vm_start) + abi.PAGE_SIZE)
        break
    if first is None and snap.guards is not None:
        first, rng = _compare_markers(state, snap.guards)
    last_line = state.last_call_on(*rng) if first is not None else None
    return Comparison(snap.lineno, snap.kind, len(real), len(model), snap.held, first, last_line, snap.note)


def _compare_markers(state: DesignMm, real: list) -> tuple[str | None, tuple[int, int] | None]:
    """The model's guard-marker runs against those read from the process (both merged where
    they touch): (None, None), or the first difference and its byte range."""
    model: list[list[int]] = []
    for run in state.mm.pt.marker_runs():
        s, e = run.start << abi.PAGE_SHIFT, run.stop << abi.PAGE_SHIFT
        if model and model[-1][1] == s:
            model[-1][1] = e
        else:
            model.append([s, e])
    for i in range(max(len(real), len(model))):
        r = real[i] if i < len(real) else None
        m = model[i] if i < len(model) else None
        if r is not None and m is not None and list(r) == m:
            continue
        if m is None:
            return f"guard markers: the process has {r[0]:#x}-{r[1]:#x}, the model none there", tuple(r)
        if r is None:
            return f"guard markers: the model has {m[0]:#x}-{m[1]:#x}, the process none there", tuple(m)
        return (f"guard markers: the process has {r[0]:#x}-{r[1]:#x} where the model has {m[0]:#x}-{m[1]:#x}",
                (min(r[0], m[0]), max(r[1], m[1])))
    return None, None


class _Replayer:
    """The replay of one recording under ``designs`` (one pass over the trace)."""

    def __init__(self, rec: Recording, designs: tuple[str, ...], policy: GuardPolicy, written: str,
                 progress_counter=None, focus: int | None = None, payload: bool = False):
        self.rec = rec
        self.payload = payload
        self.focus = focus if focus is not None else rec.root_pid
        self.designs = designs
        self.policy = policy
        self.written = written
        self.snap_by_line: dict[int, list[Snapshot]] = {}
        for s in rec.snapshots:
            self.snap_by_line.setdefault(s.lineno, []).append(s)
        self.tasks: dict[int, _Mm | None] = {}
        self.tgid: dict[int, int] = {}
        self.pending_clone: dict[int, int] = {}  # parent tid -> clone flags (entry seen, no return yet)
        self.mms: list[_Mm] = []
        self.live: set[_Mm] = set()
        self.totals = dict.fromkeys(designs, 0)
        self.peaks = dict.fromkeys(designs, 0)
        self.samples: dict[str, list[Sample]] = {d: [] for d in designs}
        self.window_max = dict.fromkeys(designs, 0)
        self.every = max(1, rec.lines // _SAMPLES)  # trace lines between points
        self.cost_every = max(1, _SAMPLES // _COST_SAMPLES)
        self.next_sample = self.every
        self.nsamples = 0
        self.events = 0
        self.calls = 0
        self.failed = Counter()
        self.first_failure: dict[str, str] = {}
        self.mismatches: list[Mismatch] = []
        self.mismatch_count = 0
        self.unmodelled: Counter = Counter()
        self.untracked_calls = 0
        self.notes: list[str] = []
        self.t0: float | None = None
        self.t = 0.0
        self.root: _Mm | None = None
        self.progress = progress_counter
        self.calls_total = dict.fromkeys(designs, 0)
        self.execs = 0
        self.deferred: list = []  # (mm, event, op): calls waiting for a call in flight beside them

    # --- address spaces ------------------------------------------------------------------------

    def new_mm(self, pid: int, label: str, born: str, lineno: int, parent: _Mm | None,
               states: dict[str, DesignMm] | None) -> _Mm:
        res = MmResult(ident=len(self.mms), pid=pid, label=label, born=born, born_line=lineno,
                       parent=parent.res.ident if parent else None, seeded=states is not None)
        mm = _Mm(res, states)
        self.mms.append(mm)
        if states is not None:
            self.live.add(mm)
            for d, s in states.items():
                self.totals[d] += s.vmas
                res.peak[d] = s.vmas
            if pid == self.focus:
                self.root = mm
        return mm

    def seed(self, snap: Snapshot, lineno: int, born: str, label: str) -> _Mm:
        if not snap.held:
            self.notes.append(f"pid {snap.pid}: its map at line {snap.lineno} was read while it ran on "
                              f"({snap.note}); its calls are not replayed (raise --hold)")
            return self.new_mm(snap.pid, label, born, lineno, None, None)
        entries = entries_of(snap.maps, snap.smaps, f"maps of pid {snap.pid}")
        heap = next((e for e in entries if e.kind is MapKind.HEAP), None)
        start_brk = snap.start_brk if snap.start_brk is not None else (heap.start if heap else 0)
        brk = heap.end if (heap is not None and born == "attach") else start_brk
        states = {}
        for d in self.designs:
            mm, files = seed_mm(entries, model_design(d), self.rec.max_map_count)
            st = DesignMm(d, mm, files, BrkState(start_brk, brk), self.policy, self.written, self.payload)
            for start, end in snap.guards or ():  # markers it already holds (attach)
                try:
                    mm.madvise(start, end - start, abi.Madv.GUARD_INSTALL)
                except OSError as exc:
                    self.notes.append(f"pid {snap.pid}: its guard markers at {start:#x}-{end:#x} do not "
                                      f"fit the model ({exc})")
            st.reconcile(0, abi.TASK_SIZE)  # existing PROT_NONE guards (attach)
            st.calls.clear()
            st.issued = 0
            states[d] = st
        return self.new_mm(snap.pid, label, born, lineno, None, states)

    def end_mm(self, mm: _Mm, lineno: int, how: str) -> None:
        if mm.res.ended_line is not None:
            return
        mm.res.ended_line, mm.res.end = lineno, how
        if mm.states is None:
            return
        for d, s in mm.states.items():
            if d not in mm.res.final:
                mm.res.final[d] = s.vmas
                mm.res.final_kernel_bytes[d], _, mm.res.final_table_bytes[d] = self.mm_cost(mm, d)
            self.totals[d] -= mm.last_vmas[d]
            s.exit()
        self.live.discard(mm)

    def detach(self, tid: int, lineno: int, how: str) -> None:
        mm = self.tasks.pop(tid, None)
        self.tgid.pop(tid, None)
        if mm is not None:
            mm.users.discard(tid)
            if not mm.users:
                self.end_mm(mm, lineno, how)

    # --- events -----------------------------------------------------------------------------------

    def task_of(self, ev: tp.Event) -> _Mm | None:
        tid = ev.pid
        if tid in self.tasks:
            return self.tasks[tid]
        # a task whose first line comes before its parent's clone returned
        for parent, flags in list(self.pending_clone.items()):
            pmm = self.tasks.get(parent)
            if pmm is None:
                continue
            del self.pending_clone[parent]
            self.add_child(parent, tid, flags, ev.lineno)
            return self.tasks[tid]
        self.tasks[tid] = None
        self.tgid[tid] = tid
        return None

    def add_child(self, parent: int, child: int, flags: int, lineno: int) -> None:
        pmm = self.tasks.get(parent)
        self.tgid[child] = self.tgid.get(parent, parent) if flags & tp.CLONE_THREAD else child
        if pmm is None or flags & tp.CLONE_VM:
            self.tasks[child] = pmm
            if pmm is not None:
                pmm.users.add(child)
            return
        states = None
        if pmm.states is not None:
            states = {}
            for d, s in pmm.states.items():
                s.forks += 1
                s.fork_vmas += s.vmas
                states[d] = s.fork()
        mm = self.new_mm(child, pmm.res.label, "fork", lineno, pmm, states)
        mm.users.add(child)
        self.tasks[child] = mm

    def clone_flags(self, ev: tp.Event) -> int:
        if ev.name == "fork":
            return 0
        if ev.name == "vfork":
            return tp.CLONE_VM | tp.CLONE_VFORK
        for a in ev.args:
            if ev.name == "clone3":
                raw = tp.struct_field(a, "flags")
                if raw is not None:
                    return tp.flags_arg(raw, tp.CLONE_NAMES)
            elif a.startswith("flags="):
                return tp.flags_arg(a[6:], tp.CLONE_NAMES)
        return 0

    def on_event(self, ev: tp.Event) -> None:
        if ev.pid == self.rec.heartbeat_pid:
            return
        if self.deferred and ev.ts is not None:
            self.retry_deferred(ev.ts, force=False)
        self.events += 1
        if ev.ts is not None:
            if self.t0 is None:
                self.t0 = ev.ts
            self.t = ev.ts - self.t0
        kind, name = ev.kind, ev.name
        if kind == tp.CALL:
            if name in _MM_CALLS:
                mm = self.task_of(ev)
                self.calls += 1
                if mm is None or mm.states is None:
                    self.untracked_calls += 1
                else:
                    self.apply(mm, ev)
            elif name in _CLONES:
                self.task_of(ev)
                self.pending_clone.pop(ev.pid, None)
                if ev.ok and ev.ret and ev.ret > 0 and ev.ret not in self.tasks:
                    self.add_child(ev.pid, ev.ret, self.clone_flags(ev), ev.lineno)
                elif ev.ok and ev.ret and ev.ret > 0 and self.tasks.get(ev.ret) is not None:
                    pass  # created at its first line already
            elif name in ("execve", "execveat"):
                if ev.ok and (ev.ret is None or ev.ret >= 0):
                    self.on_exec(ev)
                else:
                    self.task_of(ev)
            elif name == "exit_group":
                self.on_exit_group(ev)
            elif name == tp.UNNAMED:
                mm = self.task_of(ev)
                if mm is not None and mm.states is not None:
                    self.unmodelled["??? (a call strace could not name)"] += 1
        elif kind == tp.ENTER:
            self.task_of(ev)
            if name in _CLONES:
                self.pending_clone[ev.pid] = self.clone_flags(ev)
            elif name == "exit_group":
                self.on_exit_group(ev)
        elif kind in (tp.EXITED, tp.KILLED):
            self.pending_clone.pop(ev.pid, None)
            self.detach(ev.pid, ev.lineno, "exit" if kind == tp.EXITED else f"killed by {ev.name}")
        elif kind == tp.SUPERSEDED:
            # task ev.status exec'd and takes the leader's pid ev.pid: drop its old identity
            mm = self.tasks.pop(ev.status, None)
            self.tgid.pop(ev.status, None)
            if mm is not None:
                mm.users.discard(ev.status)
        if self.progress is not None and not self.events & 1023:
            self.progress.value = ev.lineno
        if ev.lineno >= self.next_sample:
            self.next_sample = ev.lineno + self.every
            self.sample()

    def on_exec(self, ev: tp.Event) -> None:
        tid = ev.pid
        old = self.tasks.get(tid)
        if old is not None:
            group = self.tgid.get(tid, tid)
            for t in [t for t in old.users if self.tgid.get(t, t) == group or t == tid]:
                old.users.discard(t)
                if t != tid:
                    self.tasks.pop(t, None)
            if not old.users:
                self.end_mm(old, ev.lineno, "exec")
        self.tgid[tid] = tid
        snaps = [s for s in self.snap_by_line.get(ev.lineno, ()) if s.kind == "exec"]
        label = _exe_label(ev)
        if snaps:
            mm = self.seed(snaps[0], ev.lineno, "exec", label)
        else:
            if self.execs or self.rec.mode != "command":  # the first one is the launcher's (env)
                self.notes.append(f"pid {tid}: no map was read at its execve (line {ev.lineno}); "
                                  "its calls are not replayed")
            mm = self.new_mm(tid, label, "exec", ev.lineno, None, None)
        self.execs += 1
        mm.users.add(tid)
        self.tasks[tid] = mm

    def on_exit_group(self, ev: tp.Event) -> None:
        mm = self.task_of(ev)
        for snap in self.snap_by_line.get(ev.lineno, ()):
            if snap.kind == "exit" and mm is not None:
                self.measure(mm, snap, ev.ts)

    def measure(self, mm: _Mm, snap: Snapshot, ts: float | None = None) -> None:
        """Compare the as-run model with ``snap`` now (every call completed before its line is
        applied, none in flight there). On a mismatch, calls of other threads that were in
        flight at the read (entered before ``ts``, completed after) may have taken effect
        before it: the check stays open and is redone after each of them (``recheck``)."""
        if mm.states is None or not snap.maps.strip():
            return  # (recordings before the recorder skipped an exiting process's empty map)
        self.set_final(mm)
        if AS_RUN in mm.states:
            cmp = compare_maps(mm.states[AS_RUN], snap)
            mm.res.comparisons.append(cmp)
            if not cmp.matches and ts is not None:
                mm.open_check = [snap, ts, len(mm.res.comparisons) - 1, 0]
        # setproctitle() leaves one string: look at its words
        words = " ".join(snap.cmdline).split()
        mm.res.role = next((a.split("=", 1)[1] for a in words if a.startswith("--type=")), mm.res.role)

    def set_final(self, mm: _Mm) -> None:
        for d, st in mm.states.items():
            mm.res.final[d] = st.vmas
            mm.res.final_kernel_bytes[d], _, mm.res.final_table_bytes[d] = self.mm_cost(mm, d)

    def recheck(self, mm: _Mm, ev: tp.Event) -> None:
        snap, ts, idx, n = mm.open_check
        if ev.ts is None or ev.ts >= ts:
            mm.open_check = None  # nothing else was in flight at the read
            return
        n += 1
        cmp = compare_maps(mm.states[AS_RUN], snap)
        if cmp.matches:
            cmp.note = (f"matches once the {n} call(s) of other threads in flight at the read (entered "
                        "before, printed after) are applied")
            mm.res.comparisons[idx] = cmp
            self.set_final(mm)
            mm.open_check = None
        else:
            mm.open_check[3] = n

    # --- calls --------------------------------------------------------------------------------------

    def apply(self, mm: _Mm, ev: tp.Event) -> None:
        try:
            op = _decode(ev)
        except (ValueError, IndexError) as exc:
            self.unmodelled[f"{ev.name} (unreadable arguments: {exc})"] += 1
            return
        if op is None:
            return
        if isinstance(op, str):
            self.unmodelled[op] += 1
            return
        if (ev.end_ts is not None and ev.ts is not None and ev.end_ts > ev.ts
                and self.conflicts(mm, op[0], op[1])):
            self.deferred.append((mm, ev, op))  # another thread's call in flight made room first
            return
        self.run(mm, ev, op)
        if self.deferred:
            self.retry_deferred(ev.ts, force=False)

    def conflicts(self, mm: _Mm, method: str, args) -> bool:
        """Can the traced result of this call not have happened on the model's state yet?
        A mapping placed where something is still mapped, an in-place growth into a taken
        range, a move onto one: the kernel ran another thread's overlapping call (an munmap,
        a move) first. O(log n) per design."""
        if method == "mmap":
            addr, length, _, flags, _, _, _, traced = args
            if traced is None or flags & 0x10:
                return False
            lo, hi = traced, traced + abi.page_align(length)
        elif method == "mremap":
            old, old_len, new_len, flags, _, traced = args
            if traced is None or flags & 0x2:
                return False
            if traced == old:
                if new_len <= old_len:
                    return False
                lo, hi = old + abi.page_align(old_len), old + abi.page_align(new_len)
            else:
                lo, hi = traced, traced + abi.page_align(new_len)
        else:
            return False
        return any(st.mm.tree.overlapping(lo, hi) for st in mm.states.values())

    def retry_deferred(self, now: float | None, force: bool) -> None:
        """Apply the deferred calls whose conflict is gone, and (``force``, or once ``now`` is
        past the time their result was printed: nothing else can have run first) the rest."""
        waiting = self.deferred
        self.deferred = []
        for mm, ev, op in waiting:
            if mm.res.ended_line is not None or mm.states is None:
                continue
            late = force or (now is not None and now > ev.end_ts)
            if late or not self.conflicts(mm, op[0], op[1]):
                self.run(mm, ev, op)
            else:
                self.deferred.append((mm, ev, op))

    def run(self, mm: _Mm, ev: tp.Event, op) -> None:
        mm.res.calls += 1
        method, args, span = op
        for d, st in mm.states.items():
            before = st.issued
            result = getattr(st, method)(*args)
            self.calls_total[d] += st.issued - before
            if d == AS_RUN:
                model_res, kernel_res = result, (None if method == "brk" else ev.err)
                if model_res != kernel_res:
                    self.mismatch_count += 1
                    if len(self.mismatches) < _MISMATCHES:
                        self.mismatches.append(Mismatch(ev.lineno, ev.pid, _call_text(ev),
                                                        kernel_res or _ret_text(ev), model_res or "ok"))
                if span is not None:
                    st.touched(ev.lineno, *span)
            elif result is not None and ev.ok:
                self.failed[d] += 1
                self.first_failure.setdefault(d, f"line {ev.lineno}: {_call_text(ev)} -> {result} "
                                                  f"(the kernel returned {_ret_text(ev)})")
            vmas = st.vmas
            delta = vmas - mm.last_vmas[d]
            if delta:
                mm.last_vmas[d] = vmas
                total = self.totals[d] = self.totals[d] + delta
                if total > self.peaks[d]:
                    self.peaks[d] = total
                if total > self.window_max[d]:
                    self.window_max[d] = total
                if vmas > mm.res.peak[d]:
                    mm.res.peak[d] = vmas
            mm.dirty[d] = True
        if mm.open_check is not None:
            self.recheck(mm, ev)

    # --- metrics ------------------------------------------------------------------------------------

    @staticmethod
    def mm_cost(mm: _Mm, d: str) -> tuple[int, int, int]:
        """(VMA-side kernel bytes, map_count, page-table bytes) of one address space under
        design ``d``, recomputed only when a call changed it since. O(VMAs) when recomputed.
        Page tables apart: the model holds only those the calls themselves need (markers,
        populate), not those the program's faults made, which a trace does not show."""
        if mm.dirty[d] or d not in mm.cost_cache:
            st = mm.states[d]
            kc = kernel_cost(st.mm.counts(), max_map_count=st.mm.max_map_count)
            mm.cost_cache[d] = (kc.total - kc.page_tables, kc.map_count, kc.page_tables)
            mm.dirty[d] = False
        return mm.cost_cache[d]

    def kernel_bytes(self, d: str) -> tuple[int, int, int]:
        total = mc = tables = 0
        for mm in self.live:
            kb, m, t = self.mm_cost(mm, d)
            total += kb
            mc += m
            tables += t
        return total, mc, tables

    def sample(self, force_cost: bool = False) -> None:
        root = self.root if (self.root is not None and self.root in self.live) else None
        cost = force_cost or not self.nsamples % self.cost_every
        self.nsamples += 1
        for d in self.designs:
            series = self.samples[d]
            if cost or not series:
                kb, mc, tb = self.kernel_bytes(d)
                rkb = self.mm_cost(root, d)[0] if root else 0
            else:
                last = series[-1]
                kb, mc, rkb, tb = last.kernel_bytes, last.map_count, last.root_kernel_bytes, last.table_bytes
                if root is not None and not last.root_vmas:  # the process appeared since
                    rkb = self.mm_cost(root, d)[0]
            series.append(Sample(self.t, self.events, self.totals[d], max(self.window_max[d], self.totals[d]),
                                 root.last_vmas[d] if root else 0, mc, kb, rkb, tb, self.calls_total[d]))
            self.window_max[d] = self.totals[d]

    def finish(self, lineno: int) -> None:
        self.retry_deferred(None, force=True)
        self.sample(force_cost=True)
        for snap in self.rec.snapshots:
            if snap.kind == "detach":
                mm = self.tasks.get(snap.pid)
                if mm is not None:
                    self.measure(mm, snap)
        for mm in self.mms:
            if mm.states is not None and mm.res.ended_line is None:
                for d, s in mm.states.items():
                    if d not in mm.res.final:
                        mm.res.final[d] = s.vmas
                        mm.res.final_kernel_bytes[d], _, mm.res.final_table_bytes[d] = self.mm_cost(mm, d)

    def result(self, duration: float) -> dict[str, DesignResult]:
        out = {}
        for d in self.designs:
            samples = self.samples[d]
            calls = Counter()
            forks = fork_vmas = 0
            for mm in self.mms:
                if mm.states is not None:
                    calls.update(mm.states[d].calls)
                    forks += mm.states[d].forks
                    fork_vmas += mm.states[d].fork_vmas
            out[d] = DesignResult(
                name=d, samples=samples, peak_vmas=self.peaks[d],
                peak_kernel_bytes=max((s.kernel_bytes for s in samples), default=0),
                peak_root_kernel_bytes=max((s.root_kernel_bytes for s in samples), default=0),
                peak_table_bytes=max((s.table_bytes for s in samples), default=0),
                calls={k: v for k, v in calls.items() if v}, forks=forks, fork_vmas=fork_vmas,
                failed=self.failed[d],
                first_failure=self.first_failure.get(d),
                mismatches=self.mismatches if d == AS_RUN else [],
                mismatch_count=self.mismatch_count if d == AS_RUN else 0)
        return out


def _exe_label(ev: tp.Event) -> str:
    if not ev.args:
        return ev.name
    path = ev.args[0].strip('"') if ev.name == "execve" else (ev.args[1].strip('"') if len(ev.args) > 1 else "")
    return os.path.basename(path) or path or ev.name


def _call_text(ev: tp.Event, limit: int = 100) -> str:
    text = f"{ev.name}({', '.join(ev.args)})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ret_text(ev: tp.Event) -> str:
    if ev.err:
        return ev.err
    if ev.ret is None:
        return "?"
    return hex(ev.ret) if ev.ret > 4096 else str(ev.ret)


def _decode(ev: tp.Event):
    """(DesignMm method, its arguments, the byte range it changes or None), or None (no
    effect on an address space), or a string naming why the call is not modelled."""
    a, name = ev.args, ev.name
    traced = ev.ret if ev.ok else None
    if name == "mmap":
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        prot, flags = tp.flags_arg(a[2], tp.PROT_NAMES), tp.flags_arg(a[3], tp.MAP_NAMES)
        fd, path = tp.fd_arg(a[4])
        off = tp.int_arg(a[5])
        at = traced if traced is not None else addr
        return "mmap", (addr, length, prot, flags, fd, path, off, traced), (at, at + length)
    if name == "munmap":
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        return "munmap", (addr, length), (addr, addr + length)
    if name in ("mprotect", "pkey_mprotect"):
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        return "mprotect", (addr, length, tp.flags_arg(a[2], tp.PROT_NAMES)), (addr, addr + length)
    if name == "madvise":
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        return "madvise", (addr, length, tp.flags_arg(a[2], tp.MADV_NAMES)), (addr, addr + length)
    if name == "mremap":
        old, old_len, new_len = tp.int_arg(a[0]), tp.int_arg(a[1]), tp.int_arg(a[2])
        flags = tp.flags_arg(a[3], tp.MREMAP_NAMES)
        new_addr = tp.int_arg(a[4]) if len(a) > 4 else 0
        return "mremap", (old, old_len, new_len, flags, new_addr, traced), None
    if name == "brk":
        return "brk", (tp.int_arg(a[0]), ev.ret), None
    if name in ("mlock", "mlock2"):
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        flags = tp.flags_arg(a[2], tp.MLOCK_NAMES) if len(a) > 2 else 0
        return "mlock", (addr, length, flags), (addr, addr + length)
    if name == "munlock":
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        return "munlock", (addr, length), (addr, addr + length)
    if name == "mlockall":
        return "mlockall", (tp.flags_arg(a[0], tp.MCL_NAMES),), None
    if name == "munlockall":
        return "munlockall", (), None
    if name == "mseal":
        addr, length = tp.int_arg(a[0]), tp.int_arg(a[1])
        return "mseal", (addr, length, tp.int_arg(a[2]) if len(a) > 2 else 0), (addr, addr + length)
    if name == "process_madvise":
        return "process_madvise", (tp.iovec_arg(a[1]), tp.flags_arg(a[3], tp.MADV_NAMES)), None
    if name in ("shmat", "shmdt"):
        return f"{name} (System V shared memory: its size is not in the trace)"
    if name == "prctl":
        if a and tp.flags_arg(a[0], tp.PR_NAMES) == tp.PR_SET_VMA and ev.ok:
            return "prctl(PR_SET_VMA) (anonymous VMA names: not modelled)"
        return None
    return None


def replay(rec: Recording, designs: tuple[str, ...] | None = None, *, policy: GuardPolicy | None = None,
           written: str = "fork", progress_counter=None, focus: int | None = None,
           payload: bool = False) -> ReplayResult:
    """Replay ``rec`` under ``designs`` (default ``trace_designs()``) in this process (one pass over the log). O(calls x
    the model's cost per call); memory O(VMAs + samples), the log is streamed."""
    started = time.monotonic()
    designs = trace_designs() if designs is None else designs
    r = _Replayer(rec, designs, policy or GuardPolicy(), written, progress_counter, focus, payload)
    for snap in rec.snapshots:
        if snap.kind == "attach":
            mm = r.seed(snap, 0, "attach", snap.comm or str(snap.pid))
            for tid in snap.tids or [snap.pid]:
                mm.users.add(tid)
                r.tasks[tid] = mm
                r.tgid[tid] = snap.pid
    lineno = 0
    with gc_paused():
        for ev in tp.parse_file(rec.log, order="entry", barriers=frozenset(s.lineno for s in rec.snapshots)):
            lineno = ev.lineno
            r.on_event(ev)
    r.finish(lineno)
    if rec.untraced:
        r.notes.append(f"not traced by this strace ({rec.strace_version}): {', '.join(rec.untraced)} "
                       "(a newer strace names them); such calls are missing from the replay")
    return ReplayResult(designs=r.result(time.monotonic() - started), mms=[m.res for m in r.mms],
                        root=r.root.res.ident if r.root is not None else None, events=r.events, calls=r.calls,
                        unmodelled=dict(r.unmodelled), untracked_calls=r.untracked_calls, notes=r.notes,
                        duration_s=time.monotonic() - started, t0=r.t0, payload=payload)


def _child(conn, rec, designs, policy, written, counter, focus, payload) -> None:
    try:
        conn.send(("ok", replay(rec, designs, policy=policy, written=written, progress_counter=counter,
                                focus=focus, payload=payload)))
    except tp.TraceParseError as exc:  # bad input: the parent raises it again
        conn.send(("parse", (exc.source, exc.lineno, exc.reason)))
    except BaseException as exc:  # reported by the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def replay_designs(rec: Recording, designs: tuple[str, ...] | None = None, *, policy: GuardPolicy | None = None,
                   written: str = "fork", jobs: int | None = None, progress=None,
                   focus: int | None = None, payload: bool = False) -> ReplayResult:
    """Replay under every design, the designs split over ``jobs`` forked worker processes
    (default: the CPUs, at most one per design); each worker streams and parses the log
    itself. ``progress(done, total)`` (trace lines) is called about every two seconds.
    Results are merged: the topology is the same in every worker, each design's figures
    come from the worker that replayed it. A worker's failure is raised as RuntimeError, an
    unreadable trace line as ``TraceParseError``."""
    designs = trace_designs() if designs is None else designs
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(designs)))
    if jobs == 1:
        return replay(rec, designs, policy=policy, written=written, focus=focus, payload=payload)
    groups = [tuple(designs[i::jobs]) for i in range(jobs)]
    ctx = multiprocessing.get_context("fork")
    workers = []
    for g in groups:
        counter = ctx.Value("q", 0, lock=False)
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, rec, g, policy, written, counter, focus, payload), daemon=True)
        proc.start()
        send.close()
        workers.append((proc, recv, counter))
    results: dict[int, ReplayResult] = {}
    try:
        while len(results) < len(workers):
            ready = multiprocessing.connection.wait([w[1] for i, w in enumerate(workers) if i not in results], 2)
            for i, (proc, recv, _) in enumerate(workers):
                if i in results or recv not in ready:
                    continue
                try:
                    status, value = recv.recv()
                except EOFError:
                    raise RuntimeError(f"replay worker {proc.pid} died (exit status {proc.exitcode})") from None
                if status == "parse":
                    raise tp.TraceParseError(*value)
                if status != "ok":
                    raise RuntimeError(f"replay worker failed: {value}")
                results[i] = value
            if progress is not None and len(results) < len(workers):
                progress(min(w[2].value for i, w in enumerate(workers) if i not in results), rec.lines)
    finally:
        for proc, recv, _ in workers:
            recv.close()
            if proc.is_alive():
                proc.kill()
            proc.join()
    return _merge([results[i] for i in range(len(workers))], groups)


def _merge(parts: list[ReplayResult], groups) -> ReplayResult:
    base = parts[0]
    for part, group in zip(parts[1:], groups[1:]):
        base.designs.update(part.designs)
        for mine, theirs in zip(base.mms, part.mms):
            mine.peak.update(theirs.peak)
            mine.final.update(theirs.final)
            mine.final_kernel_bytes.update(theirs.final_kernel_bytes)
            mine.final_table_bytes.update(theirs.final_table_bytes)
            mine.comparisons.extend(theirs.comparisons)
            mine.role = mine.role or theirs.role
        base.duration_s = max(base.duration_s, part.duration_s)
    order = [d for g in groups for d in g]
    base.designs = {d: base.designs[d] for d in trace_designs() if d in base.designs} or {d: base.designs[d] for d in order}
    return base
