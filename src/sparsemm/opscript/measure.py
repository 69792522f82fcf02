"""Measure what an op script's layout costs the running kernel: VMAs, VmPTE, slab objects.

``measure_script(script)`` builds the layout in fresh child processes (``python -m
sparsemm.opscript.measure``; the ops run on the kernel backend's ``_Runner``, snapshots
skipped) and reports the median delta over ``repeat`` runs. Owns the slab counting
(shrink, then ``/proc/slabinfo`` ``active_objs``) and the measured-vs-predicted table.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from sparsemm.opscript.script import Script, parse_script

__all__ = ["KEYS", "SLAB_CACHES", "Measurement", "measure_script", "format_table",
           "prediction_from_counts", "measure_main"]

#: The kernel slab caches counted, by the name the kernel gives them at creation.
SLAB_CACHES = ("vm_area_struct", "anon_vma", "anon_vma_chain", "maple_node")

#: Every measured quantity, in table order. Object counts, except ``vmpte_bytes``.
#: A prediction dict uses the same keys (``prediction_from_counts``).
KEYS = ("arena_vmas", "map_count", "vmpte_bytes") + SLAB_CACHES

_LABELS = {
    "arena_vmas": "VMAs in the arena",
    "map_count": "map_count delta",
    "vmpte_bytes": "VmPTE delta (bytes)",
    "vm_area_struct": "vm_area_struct delta",
    "anon_vma": "anon_vma delta",
    "anon_vma_chain": "anon_vma_chain delta",
    "maple_node": "maple_node delta",
}

SLAB_SYSFS = "/sys/kernel/slab"
SLABINFO = "/proc/slabinfo"
# An RCU grace period is a few ms on an idle 2-CPU guest; the environment variable is for
# experiments (bench_costs_calibration.py).
_SETTLE_SECONDS = float(os.environ.get("SPARSEMM_MEASURE_SETTLE", "0.05"))
_MAPS_BUFFER_BYTES = 32 << 20  # > 65530 maps lines; allocated before the baseline, see _MapsReader


class MeasureError(RuntimeError):
    """A measuring child failed (arena occupied, crash)."""


@dataclass(slots=True)
class Measurement:
    """Median deltas (``values``, keyed by ``KEYS``) over ``len(runs)`` fresh processes.

    ``runs`` holds each run's raw deltas; ``spread`` the (min, max) per key. A key missing
    from ``values`` was not measured and ``skipped`` says why. ``slab_names`` maps each cache
    to the sysfs directory it really is (``anon_vma_chain`` -> ``:A-0000064`` when SLUB merged
    it with other 64 B caches). ``failed_ops``: ops whose call returned an error (per run, max).
    The median is ``median_low`` (always one run's value).
    """

    values: dict[str, int]
    runs: list[dict[str, int]]
    spread: dict[str, tuple[int, int]]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slab_names: dict[str, str] = field(default_factory=dict)
    failed_ops: int = 0
    note: str = ""
    attempts: int = 0  # children run in all
    quiet_runs: int = 0  # of the runs used, how many were quiet (see measure_script)

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


def measure_script(script: Script, *, repeat: int = 3, max_attempts: int | None = None,
                   timeout: float = 1800.0) -> Measurement:
    """Build ``script``'s layout in fresh children until ``repeat`` quiet runs; return the medians.

    Noise: the slab counts are system-wide, so another process starting or exiting during a
    run (a Python interpreter is ~100 VMAs) moves them by tens to hundreds of objects. A run
    is *quiet* when no task was created or ended between its two snapshots (``/proc/loadavg``
    last pid and task count unchanged); noisy runs are retried up to ``max_attempts``
    (default ``4 * repeat``) in all, and used only if too few quiet runs came.
    O(attempts x ops) syscalls. Raises ``MeasureError`` if a child fails, ``ValueError`` if
    ``repeat < 1``.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    if max_attempts is None:
        max_attempts = 4 * repeat
    outs: list[dict] = []
    quiet: list[dict] = []
    while len(quiet) < repeat and len(outs) < max(max_attempts, repeat):
        out = _run_child(script, timeout)
        outs.append(out)
        if out["quiet"]:
            quiet.append(out)
    attempts, noisy = len(outs), len(outs) - len(quiet)
    # the quiet runs, topped up with the earliest noisy ones if fewer than ``repeat`` came
    outs = (quiet + [o for o in outs if not o["quiet"]])[:repeat]
    quiet_used = min(len(quiet), repeat)
    keys = [k for k in KEYS if all(k in o["delta"] for o in outs)]
    runs = [{k: o["delta"][k] for k in keys} for o in outs]
    values = {k: statistics.median_low(r[k] for r in runs) for k in keys}
    spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in keys}
    notes: list[str] = []
    if noisy:
        notes.append(f"{noisy} of {attempts} run(s) noisy (a task started or ended while measuring); "
                     f"{quiet_used} quiet run(s) used")
    for o in outs:
        notes.extend(n for n in o["notes"] if n not in notes)
    return Measurement(values=values, runs=runs, spread=spread, skipped=outs[0]["skipped"],
                       notes=notes, slab_names=outs[0]["slab_names"],
                       failed_ops=max(o["failed_ops"] for o in outs), note=script.note,
                       attempts=attempts, quiet_runs=quiet_used)


def _run_child(script: Script, timeout: float) -> dict:
    """One measuring child (``opscript.child``), under the measurement lock (``opscript.lock``):
    two measurements at once would each count the other's objects."""
    from sparsemm.opscript.child import ChildTimeout, run_child
    from sparsemm.opscript.lock import LockError, measure_lock

    try:
        with measure_lock():
            end = run_child("sparsemm.opscript.measure", json.dumps(script.doc).encode(),
                            timeout=timeout)
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
    change); ``maple_node`` is ``counts.maple_nodes`` or the ``maple_nodes_for_slots`` estimate.
    """
    from sparsemm.model.costs import kernel_cost, vmpte_bytes

    cost = kernel_cost(counts)
    return {"arena_vmas": counts.vmas, "map_count": counts.vmas, "vmpte_bytes": vmpte_bytes(counts),
            "vm_area_struct": counts.vmas, "anon_vma": counts.anon_vmas,
            "anon_vma_chain": counts.anon_vma_chains, "maple_node": cost.maple_nodes}


def format_table(m: Measurement, prediction: dict | None = None) -> str:
    """The measurement as a plain-text table; with ``prediction`` (same keys), side by side.

    Columns: quantity, measured median, min..max over the runs, slab bytes of the median
    (object count x stride from ``CostConstants``), then predicted and measured - predicted.
    """
    from sparsemm.model.costs import constants

    c = constants()
    stride = {"vm_area_struct": c.vm_area_struct, "anon_vma": c.anon_vma,
              "anon_vma_chain": c.anon_vma_chain, "maple_node": c.maple_node, "vmpte_bytes": 1}
    head = ["quantity", "measured", "min..max", "bytes"]
    if prediction is not None:
        head += ["predicted", "diff"]
    rows = [head]
    for key in KEYS:
        if key not in m.values and (prediction is None or key not in prediction):
            continue
        v = m.values.get(key)
        lo, hi = m.spread.get(key, (None, None))
        row = [_LABELS[key], "-" if v is None else str(v), "-" if lo is None else f"{lo}..{hi}",
               str(v * stride[key]) if v is not None and key in stride else ""]
        if prediction is not None:
            p = prediction.get(key)
            row += ["-" if p is None else str(p),
                    "" if p is None or v is None else f"{v - p:+d}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = []
    if m.note:
        out.append(f"# {m.note}")
    out.append(f"# median of {len(m.runs)} run(s) ({m.quiet_runs} quiet, {m.attempts} run in all); "
               f"kernel constants: {c.kernel}")
    out.extend(lines)
    if m.failed_ops:
        out.append(f"warning: {m.failed_ops} op(s) of the script failed on the kernel")
    out.extend(f"skipped: {s}" for s in m.skipped)
    out.extend(f"note: {n}" for n in m.notes)
    return "\n".join(out)


def measure_main(args, prediction: dict | None = None) -> int:
    """``sparsemm measure SCRIPT [--repeat N] [--json]``: ``args.script``, ``args.repeat``, ``args.json``."""
    from sparsemm.opscript.script import load_script

    script = load_script(args.script)
    m = measure_script(script, repeat=getattr(args, "repeat", 3) or 3)
    if getattr(args, "json", False):
        doc = m.as_dict()
        if prediction is not None:
            doc["prediction"] = prediction
        print(json.dumps(doc, indent=1))
    else:
        print(format_table(m, prediction))
    return 0


# ---------------------------------------------------------------------------
# Inside the child.


class _MapsReader:
    """Reads ``/proc/self/maps`` into one buffer allocated up front.

    A reader that allocated per read would add its own VMAs (glibc serves big buffers
    with mmap) between the baseline and the final count.
    """

    def __init__(self) -> None:
        self.buf = bytearray(_MAPS_BUFFER_BYTES)
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

    def counts(self, lo: int, hi: int) -> tuple[int, int]:
        """(map_count, VMAs overlapping [lo, hi)). ``[vsyscall]`` is a maps line but no VMA."""
        data = self.read()
        map_count = data.count(b"\n") - (1 if b"[vsyscall]" in data else 0)
        in_arena = 0
        for line in data.splitlines():
            dash = line.index(b"-")
            start = int(line[:dash], 16)
            end = int(line[dash + 1:line.index(b" ")], 16)
            if start < hi and end > lo:
                in_arena += 1
        return map_count, in_arena


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


def _shrink(names, skipped: list[str], notes: list[str]) -> None:
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


def _snapshot(maps: _MapsReader, lo: int, hi: int, caches, dirs, skipped, notes) -> dict[str, int]:
    from sparsemm.native import procfs

    snap: dict[str, int] = {}
    if caches:
        # Shrink, wait for RCU to free what was queued (maple nodes, typesafe-by-RCU VMAs),
        # shrink again: what is left active is what processes hold.
        _shrink(caches, skipped, notes)
        time.sleep(_SETTLE_SECONDS)
        _shrink(caches, skipped, notes)
        try:
            snap.update(_read_slabinfo({n: [n, *_slab_aliases(n, dirs[n])] for n in caches}))
        except OSError as exc:
            reason = f"{SLABINFO} not readable ({exc.strerror}; needs root)"
            for name in caches:
                msg = f"{name}: {reason}"
                if msg not in skipped:
                    skipped.append(msg)
    snap["vmpte_bytes"] = procfs.status_kib("self", "VmPTE") * 1024
    snap["map_count"], snap["arena_vmas"] = maps.counts(lo, hi)
    return snap


def _child_main() -> int:
    from sparsemm.opscript.kernel import _Runner

    script = parse_script(json.loads(sys.stdin.read()))
    runner = _Runner(script)
    runner.check_arena_empty()
    runner.create_files()
    maps = _MapsReader()
    skipped: list[str] = []
    notes: list[str] = []
    dirs = _slab_dirs()
    for name in SLAB_CACHES:
        if name not in dirs:
            skipped.append(f"{name}: no {SLAB_SYSFS}/{name}")
    caches = [n for n in SLAB_CACHES if n in dirs]
    if caches and not os.access(SLABINFO, os.R_OK):
        skipped.extend(f"{n}: {SLABINFO} not readable (needs root)" for n in caches)
        caches = []
    lo, hi = runner.base, runner.end
    tasks_before = _tasks()
    before = _snapshot(maps, lo, hi, caches, dirs, skipped, notes)
    failed = 0
    for op in script.ops:
        if op.name == "snapshot":
            continue
        if runner.run_op(op)["ret"] != "ok":
            failed += 1
    after = _snapshot(maps, lo, hi, caches, dirs, skipped, notes)
    forks = any(op.name == "fork" for op in script.ops)
    quiet = forks or _tasks() == tasks_before  # a script that forks cannot tell its children apart
    delta = {k: after[k] - before[k] for k in after if k in before}
    delta["arena_vmas"] = after["arena_vmas"]  # the arena was empty at the baseline
    for name in caches:
        if name in dirs and name not in before and not any(s.startswith(name + ":") for s in skipped):
            skipped.append(f"{name}: not listed in {SLABINFO}")
    json.dump({"delta": delta, "quiet": quiet, "skipped": skipped, "notes": notes, "failed_ops": failed,
               "slab_names": {n: _slab_note(n, dirs[n]) for n in caches}}, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
