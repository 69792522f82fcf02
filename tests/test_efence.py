"""``sparsemm efence``: real C programs (tests/efence/cases.c, built here with the system
compiler) run under the preloaded allocator, and each outcome checked: the fault at
the overflowing write, the report's words, contents across realloc, alignment,
threads, fork, sampling, 100,000 live blocks and the exit-status rules.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsemm.efence import driver

from conftest import ROOT, needs_guards

CASES_C = ROOT / "tests" / "efence" / "cases.c"
TIMEOUT = 300
MODES = [pytest.param("markers", marks=needs_guards), "prot_none"]


def _library_or_skip() -> Path:
    try:
        return driver.library_path()
    except driver.LibraryNotBuilt as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cases(tmp_path_factory) -> str:
    """The test program, compiled once per session."""
    _library_or_skip()
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc or cc) to build the test programs")
    out = tmp_path_factory.mktemp("efence") / "cases"
    subprocess.run([cc, "-O1", "-g", "-pthread", "-o", str(out), str(CASES_C)], check=True,
                   capture_output=True, timeout=TIMEOUT)
    return str(out)


def efence(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m sparsemm efence ARGS``; output captured."""
    return subprocess.run([sys.executable, "-m", "sparsemm", "efence", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


def run_case(cases: str, *case: str, opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return efence(*opts, "--", cases, *case)


def report_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("sparsemm efence: ")]


def mode_opts(mode: str) -> tuple[str, ...]:
    return ("--mode", mode)


def quiet_stderr(proc: subprocess.CompletedProcess, mode: str) -> list[str]:
    """stderr lines other than the prot_none warning the driver prints."""
    return [line for line in proc.stderr.splitlines()
            if not (mode == "prot_none" and "warning: --mode prot_none" in line)]


@pytest.mark.parametrize("mode", MODES)
def test_one_byte_overflow_is_caught_at_the_write(cases, mode):
    proc = run_case(cases, "overflow", "100", opts=mode_opts(mode))
    assert proc.returncode == 128 + 11, proc.stderr
    assert proc.stdout.splitlines()[-1] == "before"  # died at the write, "after" never printed
    block = re.search(r"block (0x[0-9a-f]+) size 100", proc.stdout).group(1)
    report = report_lines(proc)[-1]
    assert "SIGSEGV: heap overflow: write at" in report
    assert f"1 byte past the end of the 100-byte block at {block} (offset 100; live)" in report


def test_one_byte_read_overflow_is_caught(cases):
    proc = run_case(cases, "overflow_read", "33")
    assert proc.returncode == 139
    assert "heap overflow: read at" in proc.stderr and "the 33-byte block" in proc.stderr


def test_every_size_ends_at_the_guard(cases):
    for size in ("1", "4095", "4096", "4097", "20000", "2000000"):  # the last: a mapping of its own
        proc = run_case(cases, "overflow", size)
        assert proc.returncode == 139, (size, proc.stderr)
        assert f"1 byte past the end of the {size}-byte block" in proc.stderr


@pytest.mark.parametrize("mode", MODES)
def test_underflow_mode_catches_the_byte_before(cases, mode):
    proc = run_case(cases, "underflow", opts=("--underflow", *mode_opts(mode)))
    assert proc.returncode == 139 and proc.stdout.splitlines()[-1] == "before"
    assert "heap underflow: write at" in proc.stderr
    assert "1 byte before the start of the 100-byte block" in proc.stderr
    assert "(offset -1; live)" in proc.stderr


def test_alignment_costs_exactness(cases):
    # 100 bytes at alignment 16 end 12 bytes before the guard: a 1-byte overflow is not seen.
    proc = run_case(cases, "overflow", "100", opts=("--align", "16"))
    assert proc.returncode == 0 and "after" in proc.stdout
    proc = run_case(cases, "overflow", "112", opts=("--align", "16"))
    assert proc.returncode == 139


@pytest.mark.parametrize("mode", MODES)
def test_use_after_free_faults_with_the_freed_block_named(cases, mode):
    proc = run_case(cases, "uaf", opts=("--backtrace", *mode_opts(mode)))
    assert proc.returncode == 139 and proc.stdout.splitlines()[-1] == "before"
    assert "use after free: read at" in proc.stderr
    assert "inside the 64-byte block" in proc.stderr and "(offset 10; freed, in quarantine)" in proc.stderr
    lines = proc.stderr.splitlines()
    alloc_at = lines.index("sparsemm efence: block allocated at:")
    freed_at = lines.index("sparsemm efence: block freed at:")
    assert alloc_at < freed_at
    # The stacks start in the program, not in the allocator.
    assert cases in lines[alloc_at + 1] and cases in lines[freed_at + 1]


def test_double_free_aborts_by_default(cases):
    proc = run_case(cases, "double_free")
    assert proc.returncode == 128 + 6, proc.stderr
    (line,) = report_lines(proc)
    assert re.fullmatch(r"sparsemm efence: double free of (0x[0-9a-f]+): the 32-byte block at \1 "
                        r"\(freed, in quarantine\); aborting", line)


def test_double_and_invalid_free_reported_without_corruption(cases):
    proc = run_case(cases, "double_free", opts=("--on-error", "continue"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["before", "after", "intact"]
    double, invalid = report_lines(proc)
    assert "double free of" in double and "ignored, the program goes on" in double
    assert "invalid free of" in invalid and "offset 5 in the 48-byte block" in invalid


@pytest.mark.parametrize("mode", MODES)
def test_realloc_keeps_contents_and_moves_the_end_to_the_guard(cases, mode):
    proc = run_case(cases, "realloc", opts=mode_opts(mode))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "contents kept"
    proc = run_case(cases, "realloc_overflow", opts=mode_opts(mode))
    assert proc.returncode == 139 and "1 byte past the end of the 100-byte block" in proc.stderr


@pytest.mark.parametrize("case,expect", [("align", "aligned"), ("calloc", "zeroed"),
                                         ("usable", "usable")])
@pytest.mark.parametrize("underflow", [False, True])
def test_alignment_calloc_and_usable_size(cases, case, expect, underflow):
    proc = run_case(cases, case, opts=(("--underflow",) if underflow else ()) + ("--quarantine", "0"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expect and proc.stderr == ""


def test_zero_byte_blocks_are_distinct_and_fault_on_any_access(cases):
    proc = run_case(cases, "zero")
    assert proc.returncode == 139 and "the 0-byte block" in proc.stderr


def test_fork_in_a_multithreaded_program(cases):
    proc = run_case(cases, "fork_threads")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "forked"


@pytest.mark.parametrize("mode", MODES)
def test_eight_threads_never_share_a_block(cases, mode):
    proc = run_case(cases, "threads", opts=mode_opts(mode))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "threads ok"


def test_sample_guards_one_in_n(cases):
    proc = run_case(cases, "sample", opts=("--sample", "10"))
    lines = proc.stdout.splitlines()
    assert lines[0] == "guarded 100"  # exactly one in ten of 1,000 (a deterministic counter)
    assert lines[1] == "unguarded overflow not caught"  # the system allocator's block
    assert lines[-1] == "before" and proc.returncode == 139  # the frees routed to their owners
    assert "1 byte past the end of the 100-byte block" in proc.stderr


@needs_guards
def test_100000_live_blocks_cost_a_handful_of_vmas(cases):
    proc = run_case(cases, "live", "100000", opts=("--mode", "markers"))
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"live 100000 vmas (\d+) \(before (\d+)\)", proc.stdout)
    vmas, before = int(m.group(1)), int(m.group(2))
    assert vmas - before <= 10, proc.stdout  # read from /proc/self/maps at the peak
    assert proc.stdout.splitlines()[-1] == "done" and proc.stderr == ""


@needs_guards
def test_100000_live_blocks_with_a_seeded_overflow_die_at_the_write(cases):
    proc = run_case(cases, "live", "100000", "50000", opts=("--mode", "markers"))
    assert proc.returncode == 139
    size = re.search(r"overflow block 50000 size (\d+)", proc.stdout).group(1)
    assert proc.stdout.splitlines()[-1] == "before"
    assert f"1 byte past the end of the {size}-byte block" in proc.stderr


def test_prot_none_stops_at_max_map_count_and_says_so(cases):
    from sparsemm.native.mapping import max_map_count

    proc = run_case(cases, "live", "100000", opts=("--mode", "prot_none"))
    assert proc.returncode == 1
    failed_at = int(re.search(r"malloc failed after (\d+) blocks", proc.stdout).group(1))
    assert failed_at <= max_map_count() // 2
    assert "warning: --mode prot_none" in proc.stderr
    assert f"vm.max_map_count ({max_map_count()}) reached" in proc.stderr


def test_exit_status_is_the_programs_and_nothing_is_printed(cases):
    proc = run_case(cases, "exit", "7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "", "")
    proc = run_case(cases, "exit", "0")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_killed_program_gives_128_plus_signal(cases):
    proc = run_case(cases, "kill", "15")
    assert proc.returncode == 128 + 15 and proc.stderr == ""


def test_missing_command_and_bad_options(tmp_path):
    _library_or_skip()
    proc = efence("--", str(tmp_path / "nonexistent"))
    assert proc.returncode == 127
    assert proc.stderr.startswith("sparsemm efence: cannot run") and proc.stderr.count("\n") == 1
    for bad in (("--align", "3"), ("--sample", "0"), ("--backtrace", "999"),
                ("--quarantine", "9" * 30), ("--align", "8192")):
        proc = efence(*bad, "--", "true")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, bad
        assert proc.stderr.startswith("sparsemm efence: " + bad[0])
    proc = efence()
    assert proc.returncode == 2 and "no command given" in proc.stderr


def test_print_env_gives_what_ld_preload_needs(cases):
    proc = efence("--underflow", "--print-env")
    assert proc.returncode == 0
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert env["SPARSEMM_EFENCE_UNDERFLOW"] == "1" and Path(env["LD_PRELOAD"]).is_file()
    direct = subprocess.run([cases, "underflow"], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert direct.returncode == -11 and "heap underflow" in direct.stderr


def test_bad_environment_value_is_reported_by_the_library(cases):
    env = {**os.environ, **driver.environment(driver.Options()), "SPARSEMM_EFENCE_ALIGN": "3"}
    proc = subprocess.run([cases, "exit", "0"], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0
    assert proc.stderr.startswith("sparsemm efence: ignoring SPARSEMM_EFENCE_ALIGN=3")


def test_python_runs_a_workload_with_every_object_guarded():
    _library_or_skip()
    code = ("import json, collections\n"
            "d = {str(i): [i, str(i) * 3] for i in range(3000)}\n"
            "e = json.loads(json.dumps(d))\n"
            "c = collections.Counter(len(v[1]) for v in e.values())\n"
            "print(len(e), sorted(c.items())[:2], sum(v[0] for v in e.values()))\n"
            "print(any('libsparsemm_efence' in line for line in open('/proc/self/maps')))\n")
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=TIMEOUT)
    proc = efence("--align", "16", "--", sys.executable, "-c", code, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == plain.stdout.splitlines()[0]
    assert proc.stdout.splitlines()[1] == "True" and plain.stdout.splitlines()[1] == "False"


def test_python_overflow_in_a_c_extension_buffer_is_caught():
    """ctypes.memmove one byte past a malloc'd buffer: the write faults inside CPython."""
    _library_or_skip()
    code = ("import ctypes\n"
            "libc = ctypes.CDLL(None)\n"
            "libc.malloc.restype = ctypes.c_void_p\n"
            "p = libc.malloc(24)\n"
            "ctypes.memmove(p, b'x' * 24, 24)\n"
            "print('in bounds ok', flush=True)\n"
            "ctypes.memmove(p, b'x' * 25, 25)\n"
            "print('after')\n")
    proc = efence("--align", "16", "--", sys.executable, "-c", code,
                  env={**os.environ, "PYTHONMALLOC": "malloc"})
    # 24 bytes at alignment 16 end 8 bytes short of the guard: 25 fit, so use 8-aligned blocks.
    assert proc.returncode == 0
    proc = efence("--align", "8", "--", sys.executable, "-c", code,
                  env={**os.environ, "PYTHONMALLOC": "malloc"})
    assert proc.returncode == 139 and proc.stdout.strip() == "in bounds ok"
    assert "1 byte past the end of the 24-byte block" in proc.stderr


EARLY_LIB = r"""
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
char *early_block;
int early_owned = -1;
__attribute__((constructor(101))) static void early(void) {
    early_block = malloc(40);
    strcpy(early_block, "allocated in a library constructor");
    int (*owns)(const void *) = (int (*)(const void *))dlsym(RTLD_DEFAULT, "sparsemm_efence_owns");
    early_owned = owns ? owns(early_block) : -1;
}
"""
EARLY_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
extern char *early_block;
extern int early_owned;
int main(void) { printf("%s owned=%d\n", early_block, early_owned); free(early_block); return 0; }
"""


def test_allocation_in_another_librarys_constructor_is_guarded(cases, tmp_path):
    """A constructor of a library the program links against may run before ours."""
    cc = shutil.which("gcc") or shutil.which("cc")
    (tmp_path / "early.c").write_text(EARLY_LIB)
    (tmp_path / "main.c").write_text(EARLY_MAIN)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libearly.so"),
                    str(tmp_path / "early.c")], check=True, timeout=TIMEOUT)
    subprocess.run([cc, "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), f"-L{tmp_path}",
                    "-learly", f"-Wl,-rpath,{tmp_path}"], check=True, timeout=TIMEOUT)
    proc = efence("--", str(tmp_path / "main"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "allocated in a library constructor owned=1"


def test_docs_shell_examples_run_as_written(tmp_path):
    """The shell blocks of docs/efence.md (their ``$ `` commands), in order, in one directory;
    their stated output. (tests/test_doc_examples*.py run them too, for their exit status.)"""
    _library_or_skip()
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler for the documented example")
    text = (ROOT / "docs" / "efence.md").read_text()
    from doc_examples import commands

    sh_blocks = ["\n".join(commands(body)) + "\n"
                 for body in re.findall(r"^```console\n(.*?)^```", text, re.S | re.M)]
    assert len(sh_blocks) == 2
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    outs = [subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT) for block in sh_blocks]
    quick, direct = outs
    stated = re.search(r"prints\n\n```\n(.*?)```", text, re.S).group(1).splitlines()
    assert quick.stdout.strip() == stated[-1] == "exit 139"
    expect = re.sub(r"0x[0-9a-f]+", "ADDR", stated[0])
    assert re.sub(r"0x[0-9a-f]+", "ADDR", quick.stderr.strip().splitlines()[-1]) == expect
    assert direct.stdout.strip() == "exit 0" and direct.stderr == ""
