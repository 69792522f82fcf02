"""Unit tests of ``sparsemm.analyze.maps``: every field of maps and smaps, the one-line errors,
live reads of this process, and a 100k-line file (correctness only; timing is in bench/)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from sparsemm._input import InputError

from sparsemm import abi
from sparsemm.analyze.maps import (MapKind, MapsParseError, load, looks_like_smaps, parse_auto,
                                   parse_maps, parse_smaps, read_pid)

DATA = Path(__file__).resolve().parent / "data" / "maps"
SAMPLES = sorted(DATA.glob("*.maps"))

# One line per kind the parser knows; columns padded as show_map_vma() pads them.
FIXTURE = """\
5604f3401000-5604f3402000 r--p 00000000 fe:00 26723                      /usr/local/bin/python3.11
5605082b1000-560508482000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 ---p 00000000 00:00 0 
7f0000001000-7f0000003000 rw-p 00000000 00:00 0                          [anon:partition_alloc]
7f0000003000-7f0000004000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)
7f0000004000-7f0000005000 rw-s 00000000 00:01 5                          /SYSV00000000 (deleted)
7f0000005000-7f0000006000 rw-s 00000000 00:01 77                         /memfd:wayland-shm (deleted)
7f0000006000-7f0000007000 rw-s 00000000 00:01 78                         [anon_shmem:js heap]
7f0000007000-7f0000009000 r-xp 0001a000 103:02 4194306                   /home/u/My Documents/lib a b.so
7f0000009000-7f000000a000 r--p 00003000 103:02 4194307                   /tmp/old lib.so (deleted)
7ffe40a89000-7ffe40aaa000 rw-p 00000000 00:00 0                          [stack]
7ffe40b9d000-7ffe40ba1000 r--p 00000000 00:00 0                          [vvar]
7ffe40ba1000-7ffe40ba3000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_every_maps_field():
    es = parse_maps(FIXTURE, "fixture.maps")
    assert len(es) == 14
    exe, heap, guard, named, devzero, sysv, memfd, shmem, spaced, deleted, stack, vvar, vdso, vsys = es

    assert (exe.start, exe.end, exe.perms, exe.offset) == (0x5604F3401000, 0x5604F3402000, "r--p", 0)
    assert (exe.prot, exe.shared, exe.dev_major, exe.dev_minor, exe.inode) == (abi.PROT_READ, False, 0xFE, 0, 26723)
    assert (exe.path, exe.deleted, exe.kind, exe.anon_name, exe.lineno) == (
        "/usr/local/bin/python3.11", False, MapKind.FILE, None, 1)
    assert exe.counters is None and exe.vmflags is None and exe.vmflags_bits is None
    assert exe.size == 0x1000 and exe.is_vma and not exe.is_anon_private

    assert heap.kind is MapKind.HEAP and heap.path == "[heap]" and heap.is_anon_private
    assert heap.prot == abi.PROT_READ | abi.PROT_WRITE
    assert guard.kind is MapKind.ANON and guard.path == "" and guard.prot == abi.PROT_NONE
    assert guard.is_anon_private and guard.inode == 0 and (guard.dev_major, guard.dev_minor) == (0, 0)
    assert named.kind is MapKind.ANON and named.anon_name == "partition_alloc" and named.is_anon_private
    assert named.path == "[anon:partition_alloc]"

    assert devzero.kind is MapKind.SHARED_ANON and devzero.path == "/dev/zero" and devzero.deleted
    assert devzero.shared and not devzero.is_anon_private
    assert sysv.kind is MapKind.SHARED_ANON and sysv.path == "/SYSV00000000" and sysv.deleted
    assert memfd.kind is MapKind.MEMFD and memfd.path == "/memfd:wayland-shm" and memfd.deleted
    assert shmem.kind is MapKind.SHARED_ANON and shmem.anon_name == "js heap"

    assert spaced.path == "/home/u/My Documents/lib a b.so" and not spaced.deleted
    assert (spaced.dev_major, spaced.dev_minor) == (0x103, 0x02)
    assert spaced.offset == 0x1A000 and spaced.prot == abi.PROT_READ | abi.PROT_EXEC
    assert deleted.path == "/tmp/old lib.so" and deleted.deleted and deleted.kind is MapKind.FILE

    assert stack.kind is MapKind.STACK and not stack.is_anon_private
    assert (vvar.kind, vdso.kind) == (MapKind.VVAR, MapKind.VDSO)
    assert vsys.kind is MapKind.VSYSCALL and not vsys.is_vma
    assert (vsys.start, vsys.end, vsys.perms, vsys.prot) == (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp",
                                                             abi.PROT_EXEC)
    # The records print back to the kernel's text, byte for byte.
    assert "\n".join(e.maps_line() for e in es) + "\n" == FIXTURE


def test_lines_iterable_and_bytes_and_blank_lines():
    from_lines = parse_maps(io.StringIO(FIXTURE))
    assert [e.start for e in from_lines] == [e.start for e in parse_maps(FIXTURE)]
    assert len(parse_maps(FIXTURE.encode())) == 14
    assert len(parse_maps("\n" + FIXTURE + "\n\n")) == 14
    assert parse_maps("") == []


SMAPS = """\
7f0000000000-7f0000001000 ---p 00000000 00:00 0 
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Swap:                  0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: mr mw me sd 
7f0000001000-7f0000201000 rw-p 00000000 00:00 0 
Size:               2048 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                 132 kB
Pss:                 132 kB
Anonymous:           132 kB
AnonHugePages:         0 kB
Swap:                  8 kB
THPeligible:           1
ProtectionKey:         0
VmFlags: rd wr mr mw me ac sd gu zz 
"""


def test_every_smaps_field():
    guard, rw = parse_smaps(SMAPS, "fixture.smaps")
    assert guard.counters == {"Size": 4, "KernelPageSize": 4, "MMUPageSize": 4, "Rss": 0, "Pss": 0,
                              "Swap": 0, "Locked": 0}
    assert guard.vmflags == {"mr", "mw", "me", "sd"}
    assert guard.vmflags_bits == abi.VmFlag.MAYREAD | abi.VmFlag.MAYWRITE | abi.VmFlag.MAYEXEC | abi.VmFlag.SOFTDIRTY
    assert guard.thp_eligible == 0 and guard.protection_key is None
    assert rw.lineno == 11 and rw.counters["Rss"] == 132 and rw.counters["Swap"] == 8
    assert rw.counters["Anonymous"] == 132 and len(rw.counters) == 8
    assert rw.thp_eligible == 1 and rw.protection_key == 0
    # Unknown mnemonics ("zz": a newer kernel, another arch) are kept as words without a bit.
    assert rw.vmflags == {"rd", "wr", "mr", "mw", "me", "ac", "sd", "gu", "zz"}
    assert rw.vmflags_bits == (abi.VmFlag.READ | abi.VmFlag.WRITE | abi.VmFlag.MAYREAD | abi.VmFlag.MAYWRITE
                               | abi.VmFlag.MAYEXEC | abi.VmFlag.ACCOUNT | abi.VmFlag.SOFTDIRTY
                               | abi.VmFlag.MAYBE_GUARD)
    assert type(rw.vmflags_bits) is int


def test_auto_detection():
    assert looks_like_smaps(SMAPS) and not looks_like_smaps(FIXTURE) and not looks_like_smaps("")
    assert parse_auto(SMAPS)[1].counters is not None
    assert parse_auto(FIXTURE)[0].counters is None


HDR = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 "


@pytest.mark.parametrize("text, lineno, what", [
    (f"{HDR}\n7f00-7e00 rw-p 00000000 00:00 0 \n", 2, "range 7f00-7e00 ends before it starts"),
    ("7f000-7f000 rw-p 00000000 00:00 0 \n", 1, "range 7f000-7f000 is empty"),
    ("7f001-7f003 rw-p 00000000 00:00 0 \n", 1, "not page-aligned"),
    ("8000-9000 rw-p 00000000 00:00 0\n4000-5000 rw-p 00000000 00:00 0\n", 2,
     "out of order: it starts below the previous entry 8000-9000 (line 1)"),
    ("4000-9000 rw-p 00000000 00:00 0\n8000-a000 rw-p 00000000 00:00 0\n", 2,
     "overlaps the previous entry 4000-9000 (line 1)"),
    ("4000-5g00 rw-p 00000000 00:00 0\n", 1, "bad hex in the address range (field 1)"),
    ("0x4000-0x5000 rw-p 00000000 00:00 0\n", 1, "bad hex in the address range"),
    ("40005000 rw-p 00000000 00:00 0\n", 1, "bad address range (field 1)"),
    ("4000-5000 rw-q 00000000 00:00 0\n", 1, "bad permissions (field 2)"),
    ("4000-5000 rw-p 0000z000 00:00 0\n", 1, "bad hex offset (field 3)"),
    ("4000-5000 rw-p 00000000 0000 0\n", 1, "bad device (field 4)"),
    ("4000-5000 rw-p 00000000 00:00 x1\n", 1, "bad inode (field 5)"),
    (f"{HDR}\n8000-9000 rw-p 00000000 00:\n", 2, "not a maps line: 4 field(s)"),
    ("4000-5000\trw-p 00000000 00:00 0\n", 1, "single spaces"),
    ("Size: 4 kB\n", 1, "unexpected smaps 'Size:' line in maps text"),
])
def test_maps_errors_are_one_line_with_the_line_number(text, lineno, what):
    with pytest.raises(MapsParseError) as info:
        parse_maps(text, "renderer.maps")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"renderer.maps:{lineno}: "), msg
    assert what in msg, msg
    # the input is never quoted: the fields are named by position
    assert not any(tok in msg for tok in ("5g00", "40005000", "rw-q", "0000z000", "'0000'", "x1", "00:'"))
    assert info.value.lineno == lineno and info.value.source == "renderer.maps"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text, lineno, what", [
    ("VmFlags: rd wr\n", 1, "'VmFlags:' line before any mapping header"),
    ("Rss: 4 kB\n", 1, "'Rss:' line before any mapping header"),
    (f"{HDR}\nSize: 4 kB\nRss: four kB\nVmFlags: rd\n", 3, "bad value in 'Rss:' line"),
    (f"{HDR}\nSize: 4 kB\nRss: {'9' * 300} kB\nVmFlags: rd\n", 3, "at most 20 digits"),
    (f"{HDR}\nSize: 4 kB\nRss: 8 kB\nVmFlags: rd\n", 1, "'Rss: 8 kB', more than its 4 kB"),
    (f"{HDR}\nSize: 8 kB\nRss: 4 kB\nVmFlags: rd\n", 1, "says 'Size: 8 kB'; its range is 4 kB"),
    (f"{HDR}\nSize: 4 kB\nSwap: 99999999999 kB\nVmFlags: rd\n", 1, "more than its 4 kB"),
    (f"{HDR}\nSize: 4 kB\nWeird line here\nVmFlags: rd\n", 3, "unknown smaps line format"),
    (f"{HDR}\nSize: 4 kB\nRss: 4 MB\nVmFlags: rd\n", 3, "unknown smaps line format"),
    (f"{HDR}\nSize: 4 kB\nSize: 4 kB\nVmFlags: rd\n", 3, "duplicate 'Size:'"),
    (f"{HDR}\nSize: 4 kB\n7f0000001000-7f0000002000 rw-p 00000000 00:00 0\nVmFlags: rd\n", 1,
     "truncated smaps block: 7f0000000000-7f0000001000 has no VmFlags line before the next header (line 3)"),
    (f"{HDR}\nSize: 4 kB\nRss: 4 kB\n", 1, "has no VmFlags line (the text ends at line 4)"),
    (f"{HDR}\nSize: 4 kB\nVmFlags: rd\nRss: 4 kB\n", 4, "after the VmFlags line"),
])
def test_smaps_errors_are_one_line_with_the_line_number(text, lineno, what):
    with pytest.raises(MapsParseError) as info:
        parse_smaps(text, "p.smaps")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"p.smaps:{lineno}: "), msg
    assert what in msg, msg


def test_error_message_stays_one_line_with_control_characters():
    with pytest.raises(MapsParseError) as info:
        parse_maps("4000-5000 rw-p 00000000\x0b00:00 0\n", "x")
    assert "\n" not in str(info.value) and str(info.value).startswith("x:1: ")


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_round_trip(path):
    text = path.read_text()
    es = load(path)
    assert len(es) == text.count("\n")
    assert "\n".join(e.maps_line() for e in es) + "\n" == text
    assert es[-1].kind is MapKind.VSYSCALL and sum(e.is_vma for e in es) == len(es) - 1


def _live_counts_agree(read) -> tuple[int, int]:
    # The interpreter may map memory between two reads; retry until two reads agree.
    for _ in range(10):
        with open("/proc/self/maps") as fh:
            before = sum(1 for line in fh if line.strip())
        got = len(read())
        with open("/proc/self/maps") as fh:
            after = sum(1 for line in fh if line.strip())
        if before == got == after:
            break
    return got, after


def test_live_read_of_this_process_matches_proc_self_maps():
    got, expected = _live_counts_agree(lambda: read_pid(os.getpid()))
    assert got == expected
    es = read_pid(os.getpid())
    assert all(e.vmflags is not None and e.counters is not None for e in es)  # smaps was readable
    assert all(e.counters["Size"] * 1024 == e.size for e in es if e.kind is not MapKind.VSYSCALL)
    got, expected = _live_counts_agree(lambda: read_pid("self", smaps=False))
    assert got == expected


def test_load_accepts_pid_forms_files_and_stdin(tmp_path, monkeypatch):
    pid = os.getpid()
    for what in (pid, str(pid), f"/proc/{pid}", f"/proc/{pid}/"):
        assert len(load(what)) > 10
    assert load(f"/proc/{pid}", smaps=False)[0].counters is None
    smaps_file = tmp_path / "p.smaps"
    smaps_file.write_text(SMAPS)
    assert load(smaps_file)[1].vmflags is not None
    assert load(str(smaps_file))[0].counters["Size"] == 4
    monkeypatch.setattr("sys.stdin", io.StringIO(FIXTURE))
    assert len(load("-")) == 14
    bad = tmp_path / "bad.maps"
    bad.write_text(FIXTURE + "1000-2000 rw-p 00000000 00:00 0\n")
    with pytest.raises(MapsParseError, match=r"^bad\.maps:15: range 1000-2000 is out of order"):
        load(bad)
    with pytest.raises(InputError, match="no process with pid 999999999"):
        load("/proc/999999999")
    assert any(e.path.endswith("python3.11") or "python" in e.path for e in load("/proc/self"))


def synthetic_maps(n: int) -> str:
    """``n`` contiguous one-page VMAs cycling guard / anon rw / file-backed lines."""
    lines = []
    addr = 0x100000000000
    for i in range(n):
        end = addr + abi.PAGE_SIZE
        if i % 3 == 0:
            lines.append(f"{addr:x}-{end:x} ---p 00000000 00:00 0 ")
        elif i % 3 == 1:
            lines.append(f"{addr:x}-{end:x} rw-p 00000000 00:00 0 ")
        else:
            lines.append(f"{addr:x}-{end:x} r-xp {i:08x} 103:02 {i}".ljust(73) + f"/usr/lib/lib {i}.so")
        addr = end
    return "\n".join(lines) + "\n"


def test_100k_line_file():
    es = parse_maps(synthetic_maps(100_000), "synthetic")
    assert len(es) == 100_000
    assert all(b.start == a.end for a, b in zip(es, es[1:]))
    assert [e.prot for e in es[:3]] == [abi.PROT_NONE, abi.PROT_READ | abi.PROT_WRITE,
                                        abi.PROT_READ | abi.PROT_EXEC]
    last_file = es[99_998]
    assert last_file.path == "/usr/lib/lib 99998.so" and last_file.offset == 99_998
    assert last_file.inode == 99_998 and last_file.dev_major == 0x103 and last_file.lineno == 99_999


def test_read_pid_falls_back_to_maps_when_smaps_is_not_permitted(monkeypatch):
    from sparsemm.analyze import maps as maps_mod
    real = maps_mod.read_text

    def deny_smaps(path):
        if str(path).endswith("/smaps"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(maps_mod, "read_text", deny_smaps)
    es = read_pid(os.getpid())
    assert es and all(e.counters is None and e.vmflags is None for e in es)
