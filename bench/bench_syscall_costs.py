"""Per-call cost of the memory-management system calls on this kernel: the constants behind `sparsemm trace`'s kernel-time estimate.

Run: PYTHONPATH=src python3 bench/bench_syscall_costs.py [--quick] [--record] [--rounds N] [--store]
Compiles a small C program (needs cc) that times each call kind in a tight loop
(clock_gettime around N calls, nanoseconds per call, as seen from user space, so the
syscall entry and exit are included), runs it ``--rounds`` times, and prints the median
and the worst round per kind as Markdown to out/bench/results_syscall_costs.md
(``--record``: bench/results_syscall_costs.md). ``--store`` writes the medians to
``src/sparsemm/data/syscall_costs.json`` (the package data the estimate reads); ``make bench``
passes neither, so it never rewrites tracked files.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "src" / "sparsemm" / "data" / "syscall_costs.json"
sys.path.insert(0, str(HERE))
from _common import Run, parser, skip  # noqa: E402

# Each kind: what one call does. The loops alternate so that every call does work (a split
# then a merge, a grow then a shrink), on memory that was written first where it matters.
KINDS = {
    "null": "syscall(SYS_getppid): the entry/exit floor, for reference",
    "mmap": "mmap of 4 KiB private anonymous memory, placed next to the previous one (merges)",
    "munmap": "munmap of 4 KiB at the edge of a mapping (shrinks it)",
    "mprotect": "mprotect of one written page inside a writable mapping, PROT_NONE then back (split, merge)",
    "guard_install": "MADV_GUARD_INSTALL of one written page inside a writable mapping",
    "guard_remove": "MADV_GUARD_REMOVE of that page",
    "madvise": "MADV_DONTNEED of one written page",
    "mremap": "mremap growing a 1-page mapping in place to 2 pages, then shrinking it back",
    "brk": "brk growing the break by one page, then shrinking it back",
    "mlock": "mlock of one written page",
    "munlock": "munlock of that page",
    "fork_per_vma": "fork + child _exit + waitpid: extra nanoseconds per VMA of the parent (dup_mmap, exit_mmap)",
}

C_SOURCE = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
#define P 4096L
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static void out(const char *k, double ns, long n) { printf("%s %.1f\n", k, ns / n); }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    double t0, t1, t2;
    char *m, **ptrs = malloc(n * sizeof(char *));
    t0 = now(); for (long i = 0; i < n; i++) syscall(SYS_getppid); out("null", now() - t0, n);
    t0 = now(); for (long i = 0; i < n; i++) ptrs[i] = mmap(0, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    t1 = now(); for (long i = 0; i < n; i++) munmap(ptrs[i], P);
    t2 = now(); out("mmap", t1 - t0, n); out("munmap", t2 - t1, n);
    m = mmap(0, (2 * n + 1) * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 1, (2 * n + 1) * P);
    t0 = now();
    for (long i = 0; i < n; i++) mprotect(m + (2 * i + 1) * P, P, PROT_NONE);
    for (long i = 0; i < n; i++) mprotect(m + (2 * i + 1) * P, P, PROT_READ | PROT_WRITE);
    out("mprotect", now() - t0, 2 * n);
    int guards = madvise(m + P, P, MADV_GUARD_INSTALL) == 0;
    if (guards) {
        madvise(m + P, P, MADV_GUARD_REMOVE);
        t0 = now(); for (long i = 0; i < n; i++) madvise(m + (2 * i + 1) * P, P, MADV_GUARD_INSTALL);
        t1 = now(); for (long i = 0; i < n; i++) madvise(m + (2 * i + 1) * P, P, MADV_GUARD_REMOVE);
        t2 = now(); out("guard_install", t1 - t0, n); out("guard_remove", t2 - t1, n);
    }
    memset(m, 1, (2 * n + 1) * P);
    t0 = now(); for (long i = 0; i < n; i++) madvise(m + (2 * i + 1) * P, P, MADV_DONTNEED); out("madvise", now() - t0, n);
    memset(m, 1, (2 * n + 1) * P);
    t0 = now(); for (long i = 0; i < n; i++) mlock(m + (2 * i + 1) * P, P);
    t1 = now(); for (long i = 0; i < n; i++) munlock(m + (2 * i + 1) * P, P);
    t2 = now(); out("mlock", t1 - t0, n); out("munlock", t2 - t1, n);
    munmap(m, (2 * n + 1) * P);
    m = mmap(0, 4 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(m + P, 3 * P);
    t0 = now();
    for (long i = 0; i < n; i++) { mremap(m, P, 2 * P, 0); mremap(m, 2 * P, P, 0); }
    out("mremap", now() - t0, 2 * n);
    long cur = syscall(SYS_brk, 0);
    t0 = now();
    for (long i = 0; i < n; i++) { syscall(SYS_brk, cur + P); syscall(SYS_brk, cur); }
    out("brk", now() - t0, 2 * n);
    /* fork cost against the parent's VMA count: 100 vs 10100 extra VMAs */
    double fork_ns[2];
    for (int k = 0; k < 2; k++) {
        long extra = k ? 10100 : 100;
        char *f = mmap(0, 2 * extra * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        for (long i = 0; i < extra; i++) mprotect(f + 2 * i * P, P, PROT_READ);
        int reps = 50;
        t0 = now();
        for (int r = 0; r < reps; r++) { pid_t c = fork(); if (!c) _exit(0); waitpid(c, 0, 0); }
        fork_ns[k] = (now() - t0) / reps;
        munmap(f, 2 * extra * P);
    }
    printf("fork_per_vma %.2f\n", (fork_ns[1] - fork_ns[0]) / 20000.0);
    return 0;
}
"""


def compile_helper(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_syscall_costs: needs a C compiler (cc) to time the calls without "
                         "interpreter overhead; install gcc")
    src, exe = tmp / "costs.c", tmp / "costs"
    src.write_text(C_SOURCE)
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def measure(exe: Path, rounds: int, n: int) -> dict[str, list[float]]:
    per_kind: dict[str, list[float]] = {}
    for _ in range(rounds):
        out = subprocess.run([str(exe), str(n)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            kind, value = line.split()
            per_kind.setdefault(kind, []).append(float(value))
    return per_kind


FULL, QUICK = "about 1 minute (7 rounds of 20,000 calls)", "about 5 s (1 round of 2,000 calls)"


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--rounds", type=int, default=None, help="runs of the C helper (default 7; --quick 1)")
    ap.add_argument("--calls", type=int, default=None, help="calls per kind per run (default 20000; --quick 2000)")
    ap.add_argument("--store", action="store_true", help=f"write the medians to {DATA.relative_to(HERE.parent)}")
    args = ap.parse_args(argv)
    run = Run("syscall_costs", args, argv, full=FULL, quick=QUICK)
    title = "Per-call cost of memory-management system calls (`bench/bench_syscall_costs.py`)"
    if args.store and args.quick:
        print("bench_syscall_costs: --store takes a full run, not --quick", file=sys.stderr)
        return 2
    args.rounds = args.rounds or (1 if args.quick else 7)
    args.calls = args.calls or (2000 if args.quick else 20000)
    if shutil.which("cc") is None:
        return skip(run, title, "no C compiler (cc) to build the timing helper")
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_helper(Path(tmp))
        per_kind = measure(exe, args.rounds, args.calls)
    date = datetime.date.today().isoformat()
    kernel = platform.release()
    med = {k: statistics.median(v) for k, v in per_kind.items()}
    worst = {k: max(v) for k, v in per_kind.items()}
    cmd = f"PYTHONPATH=src python3 bench/bench_syscall_costs.py --rounds {args.rounds} --calls {args.calls}"
    lines = run.header(title, [
        f"A C helper times {args.calls:,} calls per kind with clock_gettime (user-visible time of the "
        f"call: entry, the kernel's work, exit); {args.rounds} runs, median and worst run. These are "
        "the constants of `sparsemm trace`'s kernel-time estimate (`src/sparsemm/data/syscall_costs.json`, "
        "written with `--store`).",
    ]) + [
        "| kind | what one call does | median ns | worst run ns |",
        "|---|---|---:|---:|",
    ]
    for kind, what in KINDS.items():
        if kind in med:
            lines.append(f"| {kind} | {what} | {med[kind]:,.1f} | {worst[kind]:,.1f} |")
        else:
            lines.append(f"| {kind} | {what} | not available on this kernel | |")
    run.write("\n".join(lines))
    if args.store:
        doc = {
            "_about": (f"Per-call costs in nanoseconds, measured {date} on Linux {kernel} x86-64 by "
                       f"`{cmd} --store`: median of {args.rounds} runs of {args.calls} calls per kind, timed "
                       "from user space by a C helper (syscall entry and exit included). fork_per_vma is "
                       "the extra cost of fork + exit per VMA of the parent (100 vs 10,100 VMAs). An "
                       "estimate's basis, not a measurement of any traced run."),
            "kernel": kernel,
            "measured": date,
            "ns_per_call": {k: round(v, 1) for k, v in med.items() if k not in ("fork_per_vma",)},
            "fork_ns_per_vma": round(med.get("fork_per_vma", 0.0), 2),
            "kinds": KINDS,
        }
        DATA.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"stored {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
