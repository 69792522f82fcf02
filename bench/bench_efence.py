"""sparsemm efence (markers, prot_none) vs Debian's Electric Fence vs the plain allocator.

Run: PYTHONPATH=src python3 bench/bench_efence.py [--quick] [--runs N] [--record]
A run that does not finish is killed after 90 s (--quick: 10 s) and reported as such.
Programs, side by side in one run: the C program with 100,000 live blocks
(tests/efence/cases.c ``live``), the same with a seeded one-byte overflow, gzip
compressing a generated file, and python3 with PYTHONMALLOC=malloc running a
short workload. Measures: runs or dies (and why), overflow caught, wall time
(median and worst of --runs runs), peak RSS (wait4 ru_maxrss), VMAs (the
program's own /proc/self/maps count at its peak where it prints one, else
/proc/PID/maps sampled every 5 ms in one extra run, so sampling never slows
the timed runs). Installs Debian's electric-fence (apt-get) if it is missing (--quick uses
it only if it is there). --quick: 20,000 blocks, 1 MiB for gzip, n=1,000 for python3, 1 run
each, VMAs sampled during that run: a smoke test.
Writes the results to out/bench/results_efence.md and stdout; --record writes
bench/results_efence.md (tracked) instead.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

sys.path.insert(0, str(HERE))

from _common import Run, parser  # noqa: E402
from sparsemm.efence import driver  # noqa: E402

FULL, QUICK = "about 15 minutes", "about 40 s"

LIBEFENCE = "/usr/lib/libefence.so.0"
CASES_C = ROOT / "tests" / "efence" / "cases.c"
PY_WORKLOAD = """\
import json, collections
d = {{str(i): [i, str(i) * 3, {{'k': i}}] for i in range({n})}}
e = json.loads(json.dumps(d))
c = collections.Counter(len(v[1]) for v in e.values())
print(len(e), sum(v[0] for v in e.values()), sorted(c.items())[0])
"""


@dataclass(slots=True)
class Program:
    name: str
    argv: list[str]
    align: int  # what the program needs: 1 for C and gzip, 16 for CPython's malloc'd objects
    env: dict[str, str] = field(default_factory=dict)
    overflow: bool = False  # seeded overflow: caught = killed by SIGSEGV before "after"
    self_vmas: bool = False  # prints "vmas N" at its peak
    stdin: str | None = None


@dataclass(slots=True)
class Outcome:
    status: int  # shell exit status (128 + signal)
    walls: list[float]
    rss_kib: int  # peak RSS of the last timed run
    vmas: int | None
    vmas_how: str
    why: str  # first diagnostic line when it did not run to completion
    caught: bool | None


def allocators(have_ef: bool, why_not: str) -> dict[str, object]:
    """Name -> function(program) -> extra environment, or a reason it is unavailable."""
    def ours(mode):
        def env(prog):
            return driver.environment(driver.Options(mode=mode, align=prog.align), base={})
        return env

    out = {"plain": lambda prog: {},
           "sparsemm markers": ours("markers"),
           "sparsemm prot_none": ours("prot_none")}
    if have_ef:
        out["Electric Fence 2.2"] = lambda prog: {
            "LD_PRELOAD": LIBEFENCE, "EF_ALIGNMENT": str(prog.align), "EF_ALLOW_MALLOC_0": "1"}
    else:
        out["Electric Fence 2.2"] = why_not
    return out


def ensure_electric_fence() -> bool:
    if os.path.exists(LIBEFENCE):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print("installing Debian's electric-fence (apt-get install -y electric-fence)", flush=True)
    cmd = ["apt-get", "install", "-y", "-q", "electric-fence"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        subprocess.run(cmd, capture_output=True)
    return os.path.exists(LIBEFENCE)


def map_count(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/maps", "rb") as fh:
            return fh.read().count(b"\n")
    except OSError:
        return None


def run_once(prog: Program, env: dict[str, str], workdir: Path, sample_vmas: bool,
             timeout: float):
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        stdin = subprocess.PIPE if prog.stdin else subprocess.DEVNULL
        t0 = time.perf_counter()
        proc = subprocess.Popen(prog.argv, env={**os.environ, **prog.env, **env}, stdout=out,
                                stderr=err, stdin=stdin)
        if prog.stdin:
            proc.stdin.close()
        peak = 0
        deadline = t0 + timeout
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if sample_vmas:
                n = map_count(proc.pid)
                peak = max(peak, n or 0)
            if time.perf_counter() > deadline and not timed_out:
                timed_out = True
                proc.kill()
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(errors="replace")
    if timed_out:
        stderr = f"TIMEOUT: killed after {timeout:.0f} s without finishing\n" + stderr
    return (driver.exit_status(proc.returncode), wall, ru.ru_maxrss, peak,
            out_path.read_text(errors="replace"), stderr)


def why(status: int, stdout: str, stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith("Electric Fence 2.2 Copyright")
            and "warning: --mode prot_none" not in ln]
    text = next((ln for ln in keep if "TIMEOUT" in ln or "mprotect" in ln or "max_map_count" in ln
                 or "Fatal" in ln or "SIGSEGV" in ln or "failed" in ln), keep[0] if keep else "")
    m = re.search(r"malloc failed after (\d+) blocks", stdout)
    if m:
        text = f"malloc returned NULL after {int(m.group(1)):,} blocks; " + text
    return text.removeprefix("sparsemm efence: ")[:200]


def measure(prog: Program, env: dict[str, str], runs: int, timeout: float, sample: bool = False) -> Outcome:
    """``runs`` timed runs, then one untimed run sampling the VMAs (``sample``: sample
    during the timed runs instead, which slows them: --quick)."""
    with tempfile.TemporaryDirectory(prefix="bench-efence-") as tmp:
        work = Path(tmp)
        walls, rss, last = [], 0, None
        for _ in range(runs):
            status, wall, rss, peak, stdout, stderr = run_once(prog, env, work, sample, timeout)
            walls.append(wall)
            last = (status, stdout, stderr)
            if stderr.startswith("TIMEOUT"):
                break  # one run that never finishes says enough
        status, stdout, stderr = last
        m = re.search(r"vmas (\d+)", stdout) if prog.self_vmas else None
        if m:
            vmas, how = int(m.group(1)), "own count at peak"
        elif sample:
            vmas, how = (peak or None), "sampled in the timed run"
        else:
            _, _, _, peak, _, _ = run_once(prog, env, work, True, timeout)
            vmas, how = (peak or None), "sampled"
        ok = status == 0
        if prog.overflow:
            caught = status == 139 and "after" not in stdout.split()
            ok = caught
        else:
            caught = None
        return Outcome(status, walls, rss, vmas, how, "" if ok else why(status, stdout, stderr),
                       caught)


def fmt_time(walls: list[float]) -> str:
    if len(walls) == 1:
        return f"{walls[0]:.2f} s (1 run)"
    return f"{statistics.median(walls):.2f} s (worst {max(walls):.2f})"


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--runs", type=int, help="timed runs per cell (default 5, --quick 1)")
    args = ap.parse_args(argv)
    run = Run("efence", args, argv, full=FULL, quick=QUICK)
    runs = args.runs or (1 if args.quick else 5)
    timeout = 10.0 if args.quick else 90.0  # per run; a program stuck at the VMA wall is killed
    try:
        driver.library_path()
    except driver.LibraryNotBuilt as exc:
        print(f"bench_efence: {exc}", file=sys.stderr)
        return 2
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        print("bench_efence: no C compiler to build the test program", file=sys.stderr)
        return 2
    have_ef = os.path.exists(LIBEFENCE) if args.quick else ensure_electric_fence()
    ef_missing = ("not installed (--quick installs nothing)" if args.quick else
                  "not installed (apt-get install electric-fence failed)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-efence-"))
    cases = tmp / "cases"
    subprocess.run([cc, "-O1", "-g", "-pthread", "-o", str(cases), str(CASES_C)], check=True)
    data = tmp / "input.txt"
    mib = 1 if args.quick else 8
    with open(data, "w") as fh:  # compressible text, deterministic
        i = 0
        while fh.tell() < mib << 20:
            fh.write(f"line {i} value {i * 7919 % 100003} {'abcdefgh'[i % 8] * (i % 13)}\n")
            i += 1
    py_n = 1000 if args.quick else 10000
    blocks = 20_000 if args.quick else 100_000
    python = shutil.which("python3") or sys.executable
    programs = [
        Program(f"C: {blocks:,} live blocks", [str(cases), "live", str(blocks)], 1, self_vmas=True),
        Program(f"C: same, one-byte overflow of block {blocks // 2:,}",
                [str(cases), "live", str(blocks), str(blocks // 2)], 1, overflow=True, self_vmas=True),
        Program(f"gzip -6 of {mib} MiB", ["gzip", "-6", "-c", str(data)], 1),
        Program(f"python3 (PYTHONMALLOC=malloc) json/dict workload, n={py_n}",
                [python, "-c", PY_WORKLOAD.format(n=py_n)], 16, env={"PYTHONMALLOC": "malloc"}),
    ]
    allocs = allocators(have_ef, ef_missing)
    rows = []
    for prog in programs:
        base = None
        for name, make_env in allocs.items():
            if isinstance(make_env, str):
                rows.append((prog.name, name, make_env, "", "", "", "", ""))
                continue
            print(f"{prog.name} / {name} ...", flush=True)
            o = measure(prog, make_env(prog), runs, timeout, sample=args.quick)
            med = statistics.median(o.walls)
            if name == "plain":
                base = med
            ran = "runs" if o.status == 0 else f"dies (exit {o.status})"
            if prog.overflow:
                ran = "killed at the write (139)" if o.caught else (
                    "ran to completion" if o.status == 0 else f"dies (exit {o.status})")
            caught = "" if o.caught is None else ("yes" if o.caught else "no")
            if prog.overflow and not o.caught and o.status not in (0, 139):
                caught = "not reached"  # died before the seeded write
            ratio = f"{med / base:.1f}x" if base else ""
            vmas = f"{o.vmas:,} ({o.vmas_how})" if o.vmas else "n/a"
            rows.append((prog.name, name, ran, caught, fmt_time(o.walls), ratio,
                         f"{o.rss_kib / 1024:.0f} MiB", vmas))
            if o.why:
                rows.append((prog.name, name, f"↳ {o.why}", "", "", "", "", ""))
    lines = [
        *run.header("efence: sparsemm efence vs Electric Fence vs the plain allocator (`bench/bench_efence.py`)", [
            f"vm.max_map_count {open('/proc/sys/vm/max_map_count').read().strip()}.",
            f"Wall: median and worst of {runs} runs; ratio: median over the plain allocator's median. "
            "Peak RSS: wait4 ru_maxrss of the last timed run. VMAs: the program's own /proc/self/maps "
            "count at its peak (C program), else the most /proc/PID/maps lines seen when sampling every "
            "5 ms in one extra, untimed run (a short peak can be missed).",
            "Alignment: 1 byte for the C program and gzip (every block ends at its guard; "
            "EF_ALIGNMENT=1 for Electric Fence), 16 for python3 (CPython needs aligned objects; "
            "EF_ALIGNMENT=16). Electric Fence runs with EF_ALLOW_MALLOC_0=1.",
            f"A run that has not finished after {timeout:.0f} s is killed (a program whose mallocs fail "
            "at the VMA wall may retry forever); such a cell has 1 run."]),
        "| program | allocator | outcome | overflow caught | wall | vs plain | peak RSS | VMAs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    run.write("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
