"""Hostile maps/smaps inputs and targets: ``analyze`` and ``reproduce`` refuse them in one
line (never quoting the input), within their limits, and never hang or run out of memory.

The issue-10 reproducers are the hand-made cases; hypothesis adds mutated maps and smaps
texts (``SPARSEMM_HOSTILE_EXAMPLES`` scales them; tests/hostile.py has the contract).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsemm import _input
from sparsemm.analyze.maps import MAX_VMAS, MapsParseError, parse_auto, parse_maps, parse_smaps

from conftest import ROOT
from hostile import EXAMPLES, check, refused, run_case

SMALL_MAPS = ROOT / "tests" / "data" / "maps" / "python311_glibc236_200threads.maps"
HDR = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 "


def smaps_block(start: int, size: int, **counters) -> str:
    kib = size >> 10
    lines = [f"{start:x}-{start + size:x} rw-p 00000000 00:00 0 ", f"Size: {counters.pop('Size', kib)} kB"]
    lines += [f"{k}: {v} kB" for k, v in counters.items()]
    lines.append("VmFlags: rd wr mr mw me ac")
    return "\n".join(lines) + "\n"


# --- smaps values ------------------------------------------------------------------------------

@pytest.mark.parametrize("counters, needle", [
    ({"Rss": 8}, "'Rss: 8 kB', more than its 4 kB"),
    ({"Rss": 99999999999999999999}, "more than its 4 kB"),
    ({"Rss": "9" * 300}, "at most 20 digits"),
    ({"Anonymous": 5}, "'Anonymous: 5 kB'"),
    ({"Swap": 1 << 40}, "'Swap:"),
    ({"Size": 8}, "says 'Size: 8 kB'; its range is 4 kB"),
    ({"Rss": "٣"}, "bad value"),  # a Unicode digit is not a kB count
])
def test_smaps_values_beyond_the_vma_are_refused(tmp_path, counters, needle):
    f = tmp_path / "p.smaps"
    f.write_text(smaps_block(0x7f0000000000, 4096, **counters))
    refused(run_case(["analyze", str(f)]), needle)
    refused(run_case(["reproduce", str(f)]), needle)


def test_a_huge_resident_vma_falls_back_to_first_page_touches(tmp_path):
    # 1 TiB resident is a valid smaps; touching it would take 268M pages: auto falls back
    size = 1 << 40
    f = tmp_path / "huge.smaps"
    f.write_text(smaps_block(0x7f0000000000 - size, size, Rss=size >> 10, Anonymous=size >> 10))
    t0 = time.monotonic()
    r = check(run_case(["analyze", str(f), "--json"]), allowed=(0,))
    assert time.monotonic() - t0 < 60
    assert "it touched the first page of each mapping instead" in r.stdout
    refused(run_case(["analyze", str(f), "--touch", "rss"]), "at most 1,048,576", "--touch first")
    refused(run_case(["reproduce", str(f), "--touch", "rss"]), "at most 1,048,576")


def _file_windows(n: int, offset: int, size: int) -> str:
    lines, addr = [], 0x7f0000000000
    for i in range(n):
        lines.append(f"{addr:x}-{addr + size:x} r--s {offset:08x} 08:01 {100 + i} /data/part{i}.db")
        addr += size + 4096
    return "\n".join(lines) + "\n"


def test_file_windows_far_into_big_files_are_renumbered_to_fit(tmp_path):
    # 12 files, each mapped one page 2 GiB in: 6M pages at their offsets, 12 pages renumbered
    f = tmp_path / "db.maps"
    f.write_text(_file_windows(12, 2 << 30, 4096))
    check(run_case(["analyze", str(f)]), allowed=(0,))
    # 12 windows of 1 GiB each are 3M pages even renumbered: refused in one line
    f.write_text(_file_windows(12, 0, 1 << 30))
    refused(run_case(["analyze", str(f)]), "mapped files need", "in all")


# --- targets ------------------------------------------------------------------------------------

def test_proc_self_and_proc_pid_are_pids_not_directories():
    for target in ("/proc/self", "/proc/self/", f"/proc/{os.getpid()}", f"/proc/{os.getpid()}/"):
        r = check(run_case(["analyze", target, "--json"]), allowed=(0,))
        assert '"source": "pid ' in r.stdout, target
    refused(run_case(["analyze", "/proc/999999999"]), "no process with pid 999999999")


SECRET = "hunter2-sparsemm-secret"


def test_errors_never_echo_the_input(tmp_path):
    env_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={**os.environ, "SPARSEMM_TEST_SECRET": SECRET})
    try:
        r = refused(run_case(["analyze", f"/proc/{env_child.pid}/environ"]), "environ:1")
        assert SECRET not in r.stderr
    finally:
        env_child.kill()
        env_child.wait()
    for text in (f"{SECRET}\n", f"4000-5000 {SECRET} 0 0:0 0\n", f"{HDR}\nSize: 4 kB\n{SECRET}: 1 kB\n",
                 f"{HDR}\nSize: 4 kB\nRss: {SECRET} kB\nVmFlags: rd\n", f"{SECRET}-{SECRET} rw-p 0 0:0 0\n",
                 f"{HDR}\nSize: 4 kB\n{SECRET}\n"):
        f = tmp_path / "secret.maps"
        f.write_text(text)
        r = refused(run_case(["analyze", str(f)]))
        assert SECRET not in r.stderr, r


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(run_case(["analyze", str(fifo)], timeout=30), "is a FIFO")
    refused(run_case(["reproduce", str(fifo)], timeout=30), "is a FIFO")
    refused(run_case(["run", str(fifo)], timeout=30), "is a FIFO")
    # an endless device ended in MemoryError: refused before a byte is read
    refused(run_case(["analyze", "/dev/zero"], timeout=30), "character device")
    refused(run_case(["analyze", "/dev/urandom"], timeout=30), "character device")
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        refused(run_case(["analyze", str(sock_path)], timeout=30), "socket")


@pytest.mark.parametrize("text, needle", [
    ('{"schema": "sparsemm.snapshot/1", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    ('{"schema": "sparsemm.snapshot/1", "pid": "x", "maps": 3}', "field 'pid'"),
])
def test_hostile_snapshot_files_are_one_line(tmp_path, text, needle):
    f = tmp_path / "p.snap"
    f.write_text(text)
    refused(run_case(["analyze", str(f)]), needle)


def test_stdin_is_still_accepted():
    r = check(run_case(["analyze", "-", "--json"], stdin=SMALL_MAPS.read_text()), allowed=(0,))
    assert '"source": "<stdin>"' in r.stdout


def test_a_million_line_maps_is_refused_quickly(tmp_path):
    f = tmp_path / "big.maps"
    with open(f, "w") as fh:
        addr = 0x100000000000
        for _ in range(1_000_000):
            fh.write(f"{addr:x}-{addr + 4096:x} rw-p 00000000 00:00 0 \n")
            addr += 8192
    t0 = time.monotonic()
    refused(run_case(["analyze", str(f)]), f"at most {MAX_VMAS:,} VMAs")
    assert time.monotonic() - t0 < 60


def test_a_huge_sparse_file_is_refused_by_size(tmp_path):
    f = tmp_path / "sparse.maps"
    with open(f, "wb") as fh:
        fh.truncate(1 << 40)
    refused(run_case(["analyze", str(f)], timeout=60), "larger than")


def test_a_huge_proc_file_is_refused_by_size():
    # /proc/self/pagemap is a regular file of 8 bytes per page of the address space
    refused(run_case(["analyze", "/proc/self/pagemap"], timeout=60), "larger than")


def test_a_directory_of_only_bad_files_reports_each_and_exits_2(tmp_path):
    (tmp_path / "a.maps").write_text("junk\n")
    (tmp_path / "b.maps").write_text(f"{HDR}\nnot a line\n")
    (tmp_path / "c.maps").write_text("")
    r = run_case(["analyze", str(tmp_path)])
    assert r.returncode == 2 and "Traceback" not in r.stderr and not r.leftovers, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, r
    assert all(line.startswith("sparsemm analyze: ") for line in lines)
    assert any("a.maps:1: not a maps line" in line for line in lines)
    assert any("b.maps:2:" in line for line in lines)
    assert any("c.maps: no mappings" in line for line in lines)


def test_a_blocked_proc_read_times_out():
    # the helper thread's read never returns (a pipe nobody writes): abandoned after the timeout
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        with pytest.raises(_input.InputError, match="took more than 0.5 s"):
            _input._read_in_thread(r, "/proc/1/smaps", 1 << 20, None, time.monotonic() + 0.5, 0.5)
        assert time.monotonic() - t0 < 10
    finally:
        os.close(w)
        os.close(r)


def test_read_timeout_option_is_checked(tmp_path):
    refused(run_case(["analyze", str(SMALL_MAPS)], env={"SPARSEMM_READ_TIMEOUT": "nan"}),
            "SPARSEMM_READ_TIMEOUT")


# --- generated texts ----------------------------------------------------------------------------

LINES = [
    HDR, "7f0000001000-7f0000002000 ---p 00000000 00:00 0 ",
    "7f0000002000-7f0000005000 r-xp 00001000 08:01 1234 /usr/lib/libc.so.6",
    "Size: 4 kB", "Rss: 4 kB", "VmFlags: rd wr mr mw me ac", "THPeligible: 0",
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]",
]
NOISE = ["", " ", "\t", "\x00", "\r", "\x0b", "é", "\udcff", "٣", "0x", "-", ":", "kB", "9" * 40,
         "ffffffffffffffffff", "[heap]", " (deleted)", "rwxs", "Rss:", "\\012"]


@st.composite
def hostile_maps_text(draw):
    lines = draw(st.lists(st.sampled_from(LINES), min_size=1, max_size=12))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        pos = draw(st.integers(0, len(line)))
        cut = draw(st.integers(0, 6))
        lines[i] = line[:pos] + draw(st.sampled_from(NOISE)) + line[pos + cut:]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@settings(max_examples=EXAMPLES * 25, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_maps_text())
def test_generated_texts_parse_or_fail_in_one_line(text):
    for parse in (parse_maps, parse_smaps, parse_auto):
        try:
            parse(text, "x")
        except MapsParseError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("x:")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_maps_text())
def test_generated_texts_keep_the_cli_contract(text):
    data = text.encode("utf-8", "surrogateescape")
    check(run_case(["analyze", "-"], stdin=data))
