"""Measure what an op script's layout costs the running kernel, and say how each figure was got.

``measure_script(script)`` builds the layout in fresh children (``python -m
sparsemm.opscript.measure``; the ops run on the kernel backend's ``KernelRunner``, snapshots
skipped) and takes, per quantity, the median over ``repeat`` runs, at one of three scopes:

- *process*: arena VMAs, ``map_count`` and ``VmPTE`` of the measuring child (``/proc/self``);
- *cgroup*: the kernel bytes charged to a memory cgroup holding only that child
  (``native.memcg``), where one can be made;
- *machine*: slab objects from ``/proc/slabinfo``, a breakdown that other processes move;
  a row whose runs disagree is dropped, never shown as a result.

Owns ``Measurement``, the child side and ``compare`` (the measured-vs-predicted rows).
Printing is the CLI's (``sparsemm.measure_view``).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from sparsemm import abi
from sparsemm.native import memcg
from sparsemm.opscript.kernel import KernelRunner
from sparsemm.opscript.script import Script, parse_script

__all__ = ["KEYS", "SLAB_CACHES", "SCOPES", "LABELS", "Measurement", "MeasureError", "Row",
           "measure_script", "compare", "prediction_from_counts", "whole_machine_problem",
           "SLAB_AGREEMENT", "SLAB_MIN_RUNS"]

#: The kernel slab caches counted, by the name the kernel gives them at creation.
SLAB_CACHES = ("vm_area_struct", "anon_vma", "anon_vma_chain", "maple_node")

#: Every measured quantity, in table order. Object counts, except the ``_bytes`` keys.
#: A prediction dict uses the same keys (``prediction_from_counts``).
KEYS = ("arena_vmas", "map_count", "vmpte_bytes", "memcg_bytes") + SLAB_CACHES

#: Whose memory each key counts: this process alone, its memory cgroup, or the whole machine.
SCOPES = {"arena_vmas": "process", "map_count": "process", "vmpte_bytes": "process",
          "memcg_bytes": "cgroup", **{name: "machine" for name in SLAB_CACHES}}

LABELS = {
    "arena_vmas": "VMAs in the arena",
    "map_count": "map_count delta",
    "vmpte_bytes": "VmPTE delta (bytes)",
    "memcg_bytes": "kernel bytes charged (memcg)",
    "vm_area_struct": "vm_area_struct objects",
    "anon_vma": "anon_vma objects",
    "anon_vma_chain": "anon_vma_chain objects",
    "maple_node": "maple_node objects",
}

#: How each process-scope key is read, in words.
_PROCESS_METHODS = {"arena_vmas": "/proc/self/maps lines in the arena",
                    "map_count": "/proc/self/maps lines, after minus before",
                    "vmpte_bytes": "/proc/self/status VmPTE, after minus before"}
_SLAB_METHOD = "/proc/slabinfo active_objs after a shrink, after minus before (whole machine)"

#: A whole-machine row is a result only when at least ``SLAB_MIN_RUNS`` quiet runs (no task
#: started or ended) agree: max - min at most this many objects, or this fraction of the
#: median, whichever is larger. Its median and spread are then the quiet runs'.
SLAB_AGREEMENT = (8, 0.01)
SLAB_MIN_RUNS = 3
SLAB_SYSFS = "/sys/kernel/slab"
SLABINFO = "/proc/slabinfo"
# An RCU grace period is a few ms on an idle 2-CPU guest; the environment variable is for
# experiments (bench_costs_calibration.py).
_SETTLE_SECONDS = float(os.environ.get("SPARSEMM_MEASURE_SETTLE", "0.05"))
_MAPS_BUFFER_BYTES = 32 << 20  # > 65530 maps lines; allocated and touched before the baseline


class MeasureError(RuntimeError):
    """A measuring child failed (arena occupied, crash)."""


@dataclass(slots=True)
class Measurement:
    """Medians over ``len(runs)`` fresh processes, and how each was obtained.

    ``values``: the median per key (``median_low``, always one run's value) of every key that
    was measured and is a result; ``runs`` each run's raw deltas; ``spread`` (min, max) per
    key. ``methods``: how each key was read. ``dropped``: keys measured but not results (a
    whole-machine row whose runs disagree), with the reason; they are not in ``values``.
    ``skipped``: keys not measured and why. ``memcg``: the cgroup method, or ``""`` when no
    cgroup could be made (``memcg_unavailable`` says why). ``memcg_slack``: bytes a
    ``memcg_bytes`` delta may sit from the exact charge (page-granular charging).
    ``slab_names`` maps each cache to the sysfs directory it really is (``anon_vma_chain`` ->
    ``:A-0000064`` when SLUB merged it with other 64 B caches). ``failed_ops``: ops whose
    call returned an error (per run, max). ``quiet_runs``: runs in which no task started or
    ended; ``self_disturbed``: runs in which the measuring process changed its own mappings
    (not used unless too few others came).
    """

    values: dict[str, int]
    runs: list[dict[str, int]]
    spread: dict[str, tuple[int, int]]
    methods: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slab_names: dict[str, str] = field(default_factory=dict)
    failed_ops: int = 0
    note: str = ""
    attempts: int = 0  # children run in all
    quiet_runs: int = 0
    self_disturbed: int = 0
    memcg: str = ""
    memcg_unavailable: str = ""
    memcg_slack: int = 0

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(slots=True)
class Row:
    """One quantity measured beside its prediction.

    ``verdict``: ``"exact"``; ``"within"`` (a ``memcg_bytes`` diff inside ``slack``, the charge
    granularity); ``"MISMATCH"`` (a process or cgroup figure off its prediction);
    ``"breakdown"`` (a whole-machine figure, shown for information); ``"dropped"`` (measured
    but not a result: ``measured`` is None and ``note`` says why); ``""`` with no prediction.
    """

    key: str
    label: str
    scope: str
    method: str
    predicted: int | None
    measured: int | None
    spread: tuple[int, int] | None
    diff: int | None
    verdict: str
    note: str = ""
    slack: int = 0

    @property
    def diff_pct(self) -> float | None:
        if self.diff is None or not self.predicted:
            return None
        return round(100.0 * self.diff / self.predicted, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["diff_pct"] = self.diff_pct
        d["exact"] = None if self.diff is None else self.diff == 0
        return d


def measure_script(script: Script, *, repeat: int = 3, max_attempts: int | None = None,
                   timeout: float = 1800.0, use_memcg: bool = True) -> Measurement:
    """Build ``script``'s layout in fresh children; return the medians and their methods.

    Kernel bytes: each child moves itself into one new memory cgroup (made here, removed
    before returning, on error and Ctrl-C too) and reads its kernel-memory counter after its
    own start-up and after the layout. Where no cgroup can be made (or ``use_memcg`` is
    false), there is no ``memcg_bytes`` and ``memcg_unavailable`` says why.

    Runs used: a run in which the child changed its own mappings outside the arena (its heap
    grew) would count its own page tables, so it is retried. Without a cgroup, runs are also
    retried until ``repeat`` are *quiet* (no task created or ended between the child's two
    snapshots, ``/proc/loadavg``), as the slab counts are then the only kernel figures.
    At most ``max_attempts`` children (default ``2 * repeat`` with a cgroup, ``4 * repeat``
    without); too few good runs are topped up with the earliest others, with a note.
    O(attempts x ops) syscalls. Raises ``MeasureError`` if a child fails, ``ValueError`` if
    ``repeat < 1``.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    cgroup, unavailable = None, "not asked for"
    if use_memcg:
        try:
            cgroup = memcg.MemoryCgroup.create()
        except memcg.MemcgUnavailable as exc:
            unavailable = str(exc)
    try:
        if max_attempts is None:
            max_attempts = (2 if cgroup else 4) * repeat
        used, attempts = _run_until_good(script, repeat, max(max_attempts, repeat), timeout,
                                         cgroup.env if cgroup else {}, need_quiet=cgroup is None)
    finally:
        if cgroup is not None:
            cgroup.remove()
    m = _summarize(script, used, attempts)
    if cgroup is not None and "memcg_bytes" in m.values:
        m.memcg_slack = memcg.charge_slack_bytes()
        m.methods["memcg_bytes"] = (f"{m.memcg} of a child cgroup holding only the measuring "
                                    f"process, after minus before (page-granular: within "
                                    f"{m.memcg_slack:,} B)")
    else:
        m.memcg_unavailable = unavailable if cgroup is None else "the child could not join the cgroup"
    if cgroup is not None and not cgroup.removed:
        m.notes.append(f"memory cgroup {cgroup.path} could not be removed yet; the next "
                       "measurement removes it")
    return m


def _good(out: dict, need_quiet: bool) -> bool:
    return out["self_quiet"] and (out["quiet"] or not need_quiet)


def _run_until_good(script: Script, repeat: int, max_attempts: int, timeout: float,
                    env: dict[str, str], need_quiet: bool) -> tuple[list[dict], int]:
    """Children until ``repeat`` good runs or ``max_attempts``. Returns (the ``repeat`` runs to
    use: good ones first, then the least disturbed in the order they came; attempts)."""
    outs: list[dict] = []
    while sum(_good(o, need_quiet) for o in outs) < repeat and len(outs) < max_attempts:
        outs.append(_run_child(script, timeout, env))
    rank = sorted(range(len(outs)), key=lambda i: (not _good(outs[i], need_quiet),
                                                   not outs[i]["self_quiet"], not outs[i]["quiet"], i))
    return [outs[i] for i in rank[:repeat]], len(outs)


def _summarize(script: Script, used: list[dict], attempts: int) -> Measurement:
    keys = [k for k in KEYS if all(k in o["delta"] for o in used)]
    runs = [{k: o["delta"][k] for k in keys} for o in used]
    spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in keys}
    medians = {k: statistics.median_low(r[k] for r in runs) for k in keys}
    methods = {k: _PROCESS_METHODS[k] for k in keys if k in _PROCESS_METHODS}
    values, dropped = {}, {}
    # Whole-machine counts: only runs in which no task started or ended can be results.
    quiet_runs = [r for r, o in zip(runs, used) if o["quiet"]]
    for k in keys:
        if SCOPES[k] != "machine":
            values[k] = medians[k]
            continue
        methods[k] = _SLAB_METHOD
        if quiet_runs:
            spread[k] = (min(r[k] for r in quiet_runs), max(r[k] for r in quiet_runs))
            medians[k] = statistics.median_low(r[k] for r in quiet_runs)
        reason = whole_machine_problem(spread[k], medians[k], len(quiet_runs))
        if reason:
            dropped[k] = reason
        else:
            values[k] = medians[k]
    notes: list[str] = []
    quiet = sum(o["quiet"] for o in used)
    disturbed = sum(not o["self_quiet"] for o in used)
    if attempts > len(used):
        notes.append(f"{attempts} runs made, {len(used)} used: the others were disturbed "
                     f"(a task started or ended, or the measuring process mapped memory)")
    if disturbed:
        notes.append(f"{disturbed} of the {len(used)} runs used had the measuring process change its "
                     "own mappings: VmPTE and kernel bytes may include its own page tables")
    for k in ("arena_vmas", "map_count", "vmpte_bytes"):
        if k in spread and spread[k][0] != spread[k][1]:
            notes.append(f"{LABELS[k]}: the runs disagree ({spread[k][0]}..{spread[k][1]}); "
                         "the median is shown")
    for o in used:
        notes.extend(n for n in o["notes"] if n not in notes)
    return Measurement(values=values, runs=runs, spread=spread, methods=methods, dropped=dropped,
                       skipped=used[0]["skipped"], notes=notes, slab_names=used[0]["slab_names"],
                       failed_ops=max(o["failed_ops"] for o in used), note=script.note,
                       attempts=attempts, quiet_runs=quiet, self_disturbed=disturbed,
                       memcg=used[0]["memcg"] if "memcg_bytes" in values else "")


def whole_machine_problem(spread: tuple[int, int], median: int, runs: int) -> str:
    """Why a whole-machine count with this (min, max) and median over ``runs`` quiet runs is
    not a result, or ``""`` if it is: fewer than ``SLAB_MIN_RUNS`` runs, or a spread beyond
    ``SLAB_AGREEMENT``. O(1)."""
    lo, hi = spread
    if runs < SLAB_MIN_RUNS:
        said = {0: "no run was", 1: "only 1 run was"}.get(runs, f"only {runs} runs were")
        return (f"{said} quiet (no other process started or ended during it): too few to tell this "
                f"whole-machine count from other processes' activity (needs {SLAB_MIN_RUNS} quiet runs "
                "that agree)")
    objects, frac = SLAB_AGREEMENT
    allowed = max(objects, int(frac * abs(median)))
    if hi - lo > allowed:
        return (f"runs disagree ({lo:,}..{hi:,}, {hi - lo:,} apart, more than {allowed:,}): other processes "
                "moved this whole-machine count")
    return ""


def _run_child(script: Script, timeout: float, env: dict[str, str]) -> dict:
    """One measuring child (``opscript.child``), under the measurement lock (``opscript.lock``):
    two measurements at once would each count the other's objects."""
    from sparsemm.opscript.child import ChildTimeout, run_child
    from sparsemm.opscript.lock import LockError, measure_lock

    try:
        with measure_lock():
            end = run_child("sparsemm.opscript.measure", json.dumps(script.doc).encode(),
                            timeout=timeout, env=env)
    except ChildTimeout as exc:
        raise MeasureError(f"measure child timed out after {exc.seconds:g} s") from None
    except LockError as exc:
        raise MeasureError(str(exc)) from None
    if end.returncode != 0:
        raise MeasureError(f"measure child failed: {end.last_error_line()}")
    return json.loads(end.stdout)


def prediction_from_counts(counts) -> dict[str, int]:
    """A prediction dict with ``KEYS`` from a ``sparsemm.model.costs.MmCounts`` delta. O(log slots).

    ``arena_vmas`` and ``map_count`` are both ``counts.vmas`` (a script's arena is its only
    change); ``memcg_bytes`` is ``costs.memcg_bytes``; ``maple_node`` is ``counts.maple_nodes``
    or the ``maple_nodes_for_slots`` estimate.
    """
    from sparsemm.model.costs import kernel_cost

    cost = kernel_cost(counts)
    return {"arena_vmas": counts.vmas, "map_count": counts.vmas, "vmpte_bytes": cost.vmpte,
            "memcg_bytes": cost.memcg, "vm_area_struct": counts.vmas, "anon_vma": counts.anon_vmas,
            "anon_vma_chain": counts.anon_vma_chains, "maple_node": cost.maple_nodes}


def compare(m: Measurement, prediction: dict[str, int] | None = None) -> list[Row]:
    """The measurement as rows in ``KEYS`` order, each beside its prediction, with a verdict
    (see ``Row``). Keys neither measured, dropped nor predicted are left out. O(keys)."""
    prediction = prediction or {}
    rows = []
    for key in KEYS:
        p, v = prediction.get(key), m.values.get(key)
        if v is None and key not in m.dropped and p is None:
            continue
        scope = SCOPES[key]
        slack = m.memcg_slack if key == "memcg_bytes" else 0
        diff = None if p is None or v is None else v - p
        if key in m.dropped:
            verdict, note = "dropped", m.dropped[key]
        elif v is None:
            verdict, note = "", _why_not_measured(m, key)
        elif diff is None:
            verdict, note = "", ""
        elif scope == "machine":
            verdict, note = "breakdown", ""
        elif diff == 0:
            verdict, note = "exact", ""
        elif abs(diff) <= slack:
            verdict, note = "within", f"within the page-granular charge (±{slack:,} B)"
        else:
            verdict, note = "MISMATCH", ""
        rows.append(Row(key=key, label=LABELS[key], scope=scope, method=m.methods.get(key, ""),
                        predicted=p, measured=v, spread=m.spread.get(key) if v is not None else None,
                        diff=diff, verdict=verdict, note=note, slack=slack))
    return rows


def _why_not_measured(m: Measurement, key: str) -> str:
    if key == "memcg_bytes":
        return f"not measured: no memory cgroup ({m.memcg_unavailable})" if m.memcg_unavailable else ""
    return next((s.split(": ", 1)[1] for s in m.skipped if s.startswith(key + ":")), "not measured")


# ---------------------------------------------------------------------------
# Inside the child.


class _MapsReader:
    """Reads ``/proc/self/maps`` into one buffer allocated and touched up front.

    A reader that allocated per read would add its own VMAs (glibc serves big buffers
    with mmap) and page tables between the baseline and the final count.
    """

    def __init__(self) -> None:
        self.buf = bytearray(_MAPS_BUFFER_BYTES)
        self.buf[::4096] = bytes(len(range(0, _MAPS_BUFFER_BYTES, 4096)))  # fault every page in now
        self.view = memoryview(self.buf)

    def read(self) -> bytes:
        n = 0
        with open("/proc/self/maps", "rb", buffering=0) as fh:
            while True:
                got = fh.readinto(self.view[n:])
                if not got:
                    break
                n += got
                if n == len(self.buf):
                    raise MeasureError("/proc/self/maps larger than the read buffer")
        return bytes(self.view[:n])

    def counts(self, lo: int, hi: int) -> tuple[int, int, list[bytes]]:
        """(map_count, VMAs overlapping [lo, hi), the maps lines outside [lo, hi)).
        ``[vsyscall]`` is a maps line but no VMA."""
        data = self.read()
        map_count = data.count(b"\n") - (1 if b"[vsyscall]" in data else 0)
        in_arena = 0
        outside = []
        for line in data.splitlines():
            dash = line.index(b"-")
            start = int(line[:dash], 16)
            end = int(line[dash + 1:line.index(b" ")], 16)
            if start < hi and end > lo:
                in_arena += 1
            else:
                outside.append(line)
        return map_count, in_arena, outside


def _slab_dirs() -> dict[str, str]:
    """Cache name -> the sysfs directory it resolves to (merged caches are symlinks)."""
    out = {}
    for name in SLAB_CACHES:
        path = os.path.join(SLAB_SYSFS, name)
        if os.path.exists(path):
            out[name] = os.path.basename(os.path.realpath(path))
    return out


def _slab_aliases(name: str, real: str) -> list[str]:
    """The other cache names SLUB merged into ``real`` (symlinks to the same directory)."""
    if real == name:
        return []
    try:
        return sorted(a for a in os.listdir(SLAB_SYSFS) if a != name and os.path.islink(
            os.path.join(SLAB_SYSFS, a)) and os.path.basename(os.path.realpath(
                os.path.join(SLAB_SYSFS, a))) == real)
    except OSError:
        return []


def _slab_note(name: str, real: str) -> str:
    if real == name:
        return name
    aliases = _slab_aliases(name, real)
    shared = f", shared with {', '.join(aliases)}" if aliases else ""
    return f"{real} (merged cache{shared})"


def _shrink(names, notes: list[str]) -> None:
    for name in names:
        try:
            with open(os.path.join(SLAB_SYSFS, name, "shrink"), "w") as fh:
                fh.write("1")
        except OSError as exc:
            note = f"cannot shrink {name} ({exc.strerror}): its count includes per-CPU cached objects"
            if note not in notes:
                notes.append(note)


def _read_slabinfo(rows: dict[str, list[str]]) -> dict[str, int]:
    """``active_objs`` per cache. ``rows`` maps each cache to the slabinfo names to try: a
    merged cache is listed once, under the name of whichever alias created it."""
    found: dict[str, int] = {}
    with open(SLABINFO, encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():  # skips the two header lines
                found[parts[0]] = int(parts[1])
    out = {}
    for cache, names in rows.items():
        hit = next((n for n in names if n in found), None)
        if hit is not None:
            out[cache] = found[hit]
    return out


def _tasks() -> tuple[int, int]:
    """(last pid created, number of tasks) from ``/proc/loadavg``."""
    with open("/proc/loadavg", encoding="ascii") as fh:
        fields = fh.read().split()
    return int(fields[4]), int(fields[3].split("/")[1])


class _Probe:
    """The child's counters. Process and cgroup figures are read right next to the layout
    (before: last; after: first) so nothing the reading does lands between them."""

    def __init__(self, runner, kbytes, caches: list[str], dirs: dict[str, str], skipped, notes):
        self.maps = _MapsReader()
        self.lo, self.hi = runner.base, runner.end
        self.kbytes, self.caches, self.dirs = kbytes, caches, dirs
        self.skipped, self.notes = skipped, notes
        self.outside: list[bytes] = []

    def own(self) -> dict[str, int]:
        """VmPTE and the cgroup's kernel bytes, settled (deferred frees done)."""
        from sparsemm.native import procfs

        snap = {}
        if self.kbytes is not None:
            snap["memcg_bytes"], settled = self.kbytes.settled()
            if not settled and "memcg counter did not settle" not in self.notes:
                self.notes.append("memcg counter did not settle")
        snap["vmpte_bytes"] = procfs.status_kib("self", "VmPTE") * 1024
        return snap

    def maps_and_slabs(self) -> dict[str, int]:
        snap: dict[str, int] = {}
        if self.caches:
            # Shrink, wait for RCU to free what was queued (maple nodes, typesafe-by-RCU VMAs),
            # shrink again: what is left active is what processes hold.
            _shrink(self.caches, self.notes)
            time.sleep(_SETTLE_SECONDS)
            _shrink(self.caches, self.notes)
            try:
                snap.update(_read_slabinfo({n: [n, *_slab_aliases(n, self.dirs[n])] for n in self.caches}))
            except OSError as exc:
                reason = f"{SLABINFO} not readable ({exc.strerror}; needs root)"
                for name in self.caches:
                    msg = f"{name}: {reason}"
                    if msg not in self.skipped:
                        self.skipped.append(msg)
        snap["map_count"], snap["arena_vmas"], outside = self.maps.counts(self.lo, self.hi)
        self.outside.append(b"\n".join(outside))
        return snap


class _MeasuringRunner(KernelRunner):
    """Runs ops without keeping what they see: a ``touch`` of 60,000 pages would otherwise
    build a 60,000-entry list, whose memory can land in a new 2 MiB block and add a PTE table
    to the very VmPTE being measured."""

    def op_touch(self, op):
        if op.cpu:
            return  # a forked child's access: this process's layout does not change
        write = op.access == "write"
        for addr in range(op.addr, op.addr + op.length, abi.PAGE_SIZE):
            try:
                self.touch_page(addr, write, op.value)
            except OSError:
                pass  # a guard: the layout is what counts here, not what the access saw


def _child_main() -> int:
    # First thing: into the measuring cgroup (when given), so what this process allocates from
    # here on is charged there and nowhere else's allocations are.
    notes: list[str] = []
    hierarchy = None
    try:
        hierarchy = memcg.join_from_env()
    except OSError as exc:
        notes.append(f"could not join the memory cgroup ({exc.strerror or exc})")
    script = parse_script(json.loads(sys.stdin.read()))
    runner = _MeasuringRunner(script)
    runner.check_arena_empty()
    runner.create_files()
    skipped: list[str] = []
    dirs = _slab_dirs()
    for name in SLAB_CACHES:
        if name not in dirs:
            skipped.append(f"{name}: no {SLAB_SYSFS}/{name}")
    caches = [n for n in SLAB_CACHES if n in dirs]
    if caches and not os.access(SLABINFO, os.R_OK):
        skipped.extend(f"{n}: {SLABINFO} not readable (needs root)" for n in caches)
        caches = []
    kbytes = memcg.KernelBytes(hierarchy) if hierarchy is not None else None
    probe = _Probe(runner, kbytes, caches, dirs, skipped, notes)
    ops = [op for op in script.ops if op.name != "snapshot"]
    failed = 0
    tasks_before = _tasks()
    gc.disable()  # the collector allocates nothing, but its walks are wasted work here
    before = probe.maps_and_slabs()
    before.update(probe.own())
    for op in ops:
        if runner.run_op(op)["ret"] != "ok":
            failed += 1
    after = probe.own()
    after.update(probe.maps_and_slabs())
    forks = any(op.name == "fork" for op in script.ops)
    quiet = forks or _tasks() == tasks_before  # a script that forks cannot tell its children apart
    delta = {k: after[k] - before[k] for k in after if k in before}
    delta["arena_vmas"] = after["arena_vmas"]  # the arena was empty at the baseline
    for name in caches:
        if name not in before and not any(s.startswith(name + ":") for s in skipped):
            skipped.append(f"{name}: not listed in {SLABINFO}")
    json.dump({"delta": delta, "quiet": quiet, "self_quiet": probe.outside[0] == probe.outside[1],
               "skipped": skipped, "notes": notes, "failed_ops": failed,
               "memcg": hierarchy.method if hierarchy is not None else "",
               "slab_names": {n: _slab_note(n, dirs[n]) for n in caches}}, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
