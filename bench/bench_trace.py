"""How fast `sparsemm trace` replays a long trace under all four designs (as-run, vma, pte, tree).

Run: PYTHONPATH=src python3 bench/bench_trace.py [--quick] [--record] [--calls N] [--jobs J]
Writes a synthetic strace log of N memory-management calls (default 1,000,000; --quick:
20,000) of a
multi-threaded program whose mix is modelled on the Chromium and CPython traces in
docs/trace.md: thread stacks carved from PROT_NONE reservations, PartitionAlloc-style 2 MiB
super pages committed and decommitted by mprotect with guard pages, malloc-style
mmap/munmap churn, MADV_DONTNEED, guard-marker ladders, brk. The generator keeps track of
what is mapped, so every call is one the kernel would accept and the as-run replay must
agree with every traced result (checked: exit status 1 otherwise). Then replays it with
``replay_designs`` and prints CPU and wall time, calls per CPU second and peak memory as
Markdown to out/bench/results_trace.md (``--record``: bench/results_trace.md).
"""

from __future__ import annotations

import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Run, parser  # noqa: E402
from sparsemm.trace.record import Recording, Snapshot  # noqa: E402
from sparsemm.trace.replay import replay_designs  # noqa: E402

P = 4096
MiB = 1 << 20
SUPER = 2 * MiB
INITIAL_MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 100 /usr/bin/synth
55d0c0001000-55d0c0002000 r-xp 00001000 08:01 100 /usr/bin/synth
55d0c0002000-55d0c0003000 r--p 00002000 08:01 100 /usr/bin/synth
55d0c0003000-55d0c0005000 rw-p 00003000 08:01 100 /usr/bin/synth
7f0000000000-7f0000001000 r--p 00000000 08:01 200 /usr/lib/ld.so
7f0000001000-7f0000020000 r-xp 00001000 08:01 200 /usr/lib/ld.so
7f0000020000-7f0000028000 r--p 00020000 08:01 200 /usr/lib/ld.so
7f0000028000-7f000002a000 rw-p 00028000 08:01 200 /usr/lib/ld.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0 [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0 [vdso]
"""
START_BRK = 0x55D0C0010000


class Synth:
    """Emits strace -f -ttt -X raw lines while tracking what is mapped, so every call is one
    the kernel would have accepted and every returned address is free."""

    def __init__(self, seed: int, out):
        self.rng = random.Random(seed)
        self.out = out
        self.t = 1_800_000_000.0
        self.lines = 0
        self.calls = 0
        self.cursor = 0x7E00_0000_0000  # top-down placement, addresses never reused
        self.pid = 1000
        self.threads = [1000]
        self.next_tid = 1001
        self.stacks: list[tuple[int, int]] = []  # (base, tid)
        self.supers: list[dict] = []  # PartitionAlloc-like super pages
        self.mallocs: list[tuple[int, int]] = []
        self.ladders: list[tuple[int, int]] = []
        self.brk = START_BRK

    def emit(self, tid: int, text: str) -> None:
        self.t += self.rng.uniform(2e-6, 2e-5)
        self.out.write(f"{tid} {self.t:.6f} {text}\n")
        self.lines += 1

    def call(self, text: str) -> None:
        self.calls += 1
        self.emit(self.rng.choice(self.threads), text)

    def place(self, length: int, align: int = P) -> int:
        self.cursor = (self.cursor - length) & ~(align - 1)
        return self.cursor

    # --- idioms -------------------------------------------------------------------------------

    def thread(self) -> None:
        size = 8 * MiB + P
        base = self.place(size)
        parent = self.threads[0]
        self.calls += 2
        self.emit(parent, f"mmap(NULL, {size}, 0, 0x20022, -1, 0) = {base:#x}")
        self.emit(parent, f"mprotect({base + P:#x}, {8 * MiB}, 0x3) = 0")
        tid = self.next_tid
        self.next_tid += 1
        self.emit(parent, f"clone3({{flags=0x3d0f00, child_tid={base + 8 * MiB:#x}, parent_tid={base:#x}, "
                          f"exit_signal=0, stack={base:#x}, stack_size=0x7fff80, tls={base:#x}}} => "
                          f"{{parent_tid=[{tid}]}}, 88) = {tid}")
        self.threads.append(tid)
        self.stacks.append((base, tid))

    def thread_exit(self) -> None:
        if len(self.stacks) < 2:
            return
        base, tid = self.stacks.pop(self.rng.randrange(len(self.stacks)))
        self.calls += 1
        self.emit(tid, f"madvise({base:#x}, {8 * MiB - 20 * P}, 0x4) = 0")
        self.emit(tid, "exit(0)                                 = ?")
        self.emit(tid, "+++ exited with 0 +++")
        self.threads.remove(tid)
        self.call(f"munmap({base:#x}, {8 * MiB + P}) = 0")

    def super_page(self) -> None:
        base = self.place(SUPER, SUPER)
        self.call(f"mmap(NULL, {SUPER}, 0, 0x4022, -1, 0) = {base:#x}")
        self.call(f"mprotect({base + P:#x}, {P}, 0x3) = 0")  # metadata page between two guards
        self.supers.append({"base": base, "spans": [], "next": base + 4 * P})

    def commit_span(self) -> None:
        if not self.supers:
            return self.super_page()
        sp = self.rng.choice(self.supers)
        npages = self.rng.choice((1, 2, 4, 4, 8, 16))
        end = sp["next"] + npages * P
        if end > sp["base"] + SUPER - P:
            return self.super_page()
        self.call(f"mprotect({sp['next']:#x}, {npages * P}, 0x3) = 0")
        sp["spans"].append((sp["next"], npages))
        sp["next"] = end

    def decommit_span(self) -> None:
        live = [s for s in self.supers if s["spans"]]
        if not live:
            return
        sp = self.rng.choice(live)
        start, npages = sp["spans"].pop(self.rng.randrange(len(sp["spans"])))
        self.call(f"madvise({start:#x}, {npages * P}, 0x4) = 0")
        self.call(f"mprotect({start:#x}, {npages * P}, 0) = 0")

    def recommit_span(self) -> None:
        self.commit_span()

    def malloc_big(self) -> None:
        length = self.rng.choice((132 * 1024, 256 * 1024, MiB, 4 * MiB))
        base = self.place(length)
        self.call(f"mmap(NULL, {length}, 0x3, 0x22, -1, 0) = {base:#x}")
        self.mallocs.append((base, length))

    def free_big(self) -> None:
        if not self.mallocs:
            return
        base, length = self.mallocs.pop(self.rng.randrange(len(self.mallocs)))
        self.call(f"munmap({base:#x}, {length}) = 0")

    def ladder(self) -> None:
        n = self.rng.choice((16, 64, 256))
        base = self.place((2 * n + 1) * P)
        self.call(f"mmap(NULL, {(2 * n + 1) * P}, 0x3, 0x22, -1, 0) = {base:#x}")
        marker = self.rng.random() < 0.5
        for i in range(n):
            at = base + (2 * i + 1) * P
            self.call(f"madvise({at:#x}, {P}, 0x66) = 0" if marker else f"mprotect({at:#x}, {P}, 0) = 0")
        self.ladders.append((base, (2 * n + 1) * P))

    def drop_ladder(self) -> None:
        if self.ladders:
            base, length = self.ladders.pop(self.rng.randrange(len(self.ladders)))
            self.call(f"munmap({base:#x}, {length}) = 0")

    def brk_step(self) -> None:
        new = self.brk + self.rng.choice((1, 2, 8)) * 33 * P if self.rng.random() < 0.6 else \
            max(START_BRK, self.brk - 16 * P)
        self.call(f"brk({new:#x}) = {new:#x}")
        self.brk = new

    def run(self, calls: int) -> None:
        self.emit(self.pid, 'execve("/usr/bin/synth", ["synth"], 0x7ffd00020000 /* 1 var */) = 0')
        self.call("brk(NULL)       = %#x" % START_BRK)
        idioms = [(self.thread, 2), (self.thread_exit, 2), (self.super_page, 3), (self.commit_span, 40),
                  (self.decommit_span, 15), (self.recommit_span, 10), (self.malloc_big, 8), (self.free_big, 8),
                  (self.ladder, 0.3), (self.drop_ladder, 0.3), (self.brk_step, 3)]
        fns, weights = zip(*idioms)
        while self.calls < calls:
            self.rng.choices(fns, weights)[0]()
            if len(self.supers) > 3000:  # keep the address space bounded like a real heap
                sp = self.supers.pop(0)
                self.call(f"munmap({sp['base']:#x}, {SUPER}) = 0")
        self.emit(self.pid, "exit_group(0)                           = ?")
        self.emit(self.pid, "+++ exited with 0 +++")


def make_recording(directory: Path, calls: int, seed: int = 1) -> tuple[Recording, Synth]:
    with open(directory / "strace.log", "w") as out:
        synth = Synth(seed, out)
        synth.run(calls)
    snap = Snapshot(pid=1000, tid=1000, lineno=1, kind="exec", maps=INITIAL_MAPS, start_brk=START_BRK,
                    comm="synth")
    rec = Recording(directory=str(directory), mode="command", command=["synth"], root_pid=1000,
                    heartbeat_pid=-1, snapshots=[snap], max_map_count=1 << 30, kernel=platform.release(),
                    strace_version="synthetic", hold_seconds=0, started_at=time.time(), duration_s=0,
                    lines=synth.lines)
    rec.save()
    return rec, synth


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the replay workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


FULL, QUICK = "about 25 minutes (1,000,000 calls)", "about 30 s (20,000 calls)"


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--calls", type=int, default=None, help="calls in the log (default 1,000,000; --quick 20,000)")
    ap.add_argument("--jobs", type=int, default=None, help="replay worker processes (default: CPUs, max 4)")
    args = ap.parse_args(argv)
    run = Run("trace", args, argv, full=FULL, quick=QUICK)
    n = args.calls or (20_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        rec, synth = make_recording(Path(tmp), n)
        gen_s = time.monotonic() - t0
        size = (Path(tmp) / "strace.log").stat().st_size
        t0 = time.monotonic()
        cpu0 = _cpu()
        res = replay_designs(rec, jobs=args.jobs)
        wall = time.monotonic() - t0
        cpu = _cpu() - cpu0
    rss_mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    rows = []
    for name, d in res.designs.items():
        rows.append(f"| {name} | {d.peak_vmas:,} | {sum(d.calls.values()):,} | {d.failed:,} |")
    asrun = res.designs["as-run"]
    jobs = args.jobs or min(os.cpu_count() or 1, 4)
    text = "\n".join(run.header("Replaying a long trace under all four designs (`bench/bench_trace.py`)") + [
        f"A synthetic strace log of {synth.calls:,} memory-management calls ({synth.lines:,} lines, "
        f"{size / MiB:.0f} MiB; {len(synth.threads)} threads at the end) written in {gen_s:.0f} s, "
        f"replayed by `replay_designs` with {jobs} worker process(es): **{cpu:.0f} s of CPU**, "
        f"{wall:.0f} s wall ({synth.calls / cpu:,.0f} calls per CPU second for all four designs "
        f"together, {4 * synth.calls / cpu:,.0f} design-calls per CPU second); peak RSS of one process "
        f"{rss_mib:.0f} MiB. "
        f"The as-run replay disagreed with the generator on {asrun.mismatch_count} call(s).\n",
        "| design | peak VMAs | calls issued | calls refused |",
        "|---|---:|---:|---:|",
        *rows,
    ])
    run.write(text)
    if asrun.mismatch_count:
        print(f"as-run mismatches: {asrun.mismatches[:3]}", file=sys.stderr)
    return 1 if asrun.mismatch_count else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
