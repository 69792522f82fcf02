"""Parser for ``/proc/PID/maps`` and ``/proc/PID/smaps`` text: saved files, stdin or a live pid.

Owns ``MapEntry`` (one VMA as the kernel prints it, fs/proc/task_mmu.c:
show_map_vma() and show_smap()), its ``MapKind`` classification and
``MapsParseError``. It validates what the kernel guarantees (sorted, non-overlapping,
page-aligned, non-empty ranges; smaps counters within their VMA) and reports the first
violation by line, without quoting the input (it may be any file). It refuses inputs
beyond ``MAX_VMAS`` and ``MAX_INPUT_BYTES``. It does not interpret the layout (that is
``analyze.guards``) and never writes to /proc.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sparsemm import abi
from sparsemm._gc import gc_paused

__all__ = [
    "MapKind",
    "MapEntry",
    "MapsParseError",
    "parse_maps",
    "parse_smaps",
    "parse_auto",
    "looks_like_smaps",
    "read_pid",
    "load",
    "MAX_VMAS",
    "MAX_INPUT_BYTES",
    "proc_pid",
    "read_text",
    "read_bytes",
]

#: The most VMAs one input may have: 4x the default vm.max_map_count (65530), and the
#: raised setting some servers use (262144). 262,144 VMAs analyze in ~10 s and ~400 MiB.
MAX_VMAS = 1 << 18
#: The most bytes read from one input (an smaps of MAX_VMAS VMAs is ~210 MiB).
MAX_INPUT_BYTES = 256 << 20
#: smaps lines per VMA accepted (Linux 6.18 prints 26).
MAX_SMAPS_LINES_PER_VMA = 64
#: Digits of an smaps counter (a 64-bit kB value has at most 20).
_MAX_DIGITS = 20
#: smaps counters that cannot exceed the VMA's size (kB).
_BOUNDED_BY_SIZE = frozenset({
    "Rss", "Pss", "Pss_Dirty", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Shared_Dirty",
    "Private_Clean", "Private_Dirty", "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages",
    "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss",
    "Locked"})
#: smaps keys the kernel prints: named in errors (any other key is the input's, not quoted).
_SMAPS_KEYS = _BOUNDED_BY_SIZE | {"Size", "KernelPageSize", "MMUPageSize", "THPeligible",
                                  "ProtectionKey", "VmFlags"}


class MapKind(enum.StrEnum):
    """What backs a VMA, as far as its maps line tells (the path column)."""

    ANON = "anon"  # private anonymous: no path, or "[anon:NAME]" (anon_name set)
    HEAP = "heap"  # "[heap]": the brk area (anonymous, private)
    STACK = "stack"  # "[stack]" (or "[stack:TID]" on kernels before 4.5): VM_GROWSDOWN
    VDSO = "vdso"  # "[vdso]"
    VVAR = "vvar"  # "[vvar]", "[vvar_vclock]"
    VSYSCALL = "vsyscall"  # "[vsyscall]": the gate area, not a VMA (not in map_count)
    SPECIAL = "special"  # any other "[...]" the kernel names (e.g. "[uprobes]")
    FILE = "file"  # a file path (including anon_inode:..., /dev/shm/...)
    SHARED_ANON = "shared-anon"  # MAP_SHARED|MAP_ANONYMOUS ("/dev/zero (deleted)"), SysV shm, "[anon_shmem:NAME]"
    MEMFD = "memfd"  # "/memfd:NAME (deleted)"


#: Kinds that are private anonymous memory a guard could merge with (given equal attributes).
ANON_PRIVATE_KINDS = frozenset({MapKind.ANON, MapKind.HEAP})


@dataclass(slots=True)
class MapEntry:
    """One VMA: a maps line, plus the smaps block under it when parsed from smaps.

    Invariants (checked by the parser): ``start < end``, both multiples of
    ``abi.PAGE_SIZE``; entries of one parse are sorted and do not overlap.
    """

    start: int  # bytes: vm_start
    end: int  # bytes: vm_end (exclusive)
    perms: str  # the maps column, e.g. "rw-p"
    prot: int  # abi.PROT_* bits derived from perms[0:3]
    shared: bool  # perms[3] == "s" (VM_MAYSHARE)
    offset: int  # bytes: vm_pgoff << PAGE_SHIFT (0 for anonymous memory)
    dev_major: int
    dev_minor: int
    inode: int
    path: str  # "" for anonymous memory; without the " (deleted)" suffix
    deleted: bool  # the kernel appended " (deleted)" to the path
    kind: MapKind
    anon_name: str | None = None  # NAME of "[anon:NAME]" / "[anon_shmem:NAME]" (prctl PR_SET_VMA_ANON_NAME)
    lineno: int = 0  # 1-based line of the header in the parsed text
    # smaps only (None when parsed from maps):
    counters: dict[str, int] | None = None  # "Size", "Rss", "Pss", "Swap", ... in KiB
    vmflags: frozenset[str] | None = None  # VmFlags mnemonics, e.g. {"rd", "wr", "mr", "mw", "me", "ac"}
    vmflags_bits: int | None = None  # the abi.VmFlag bits of the known mnemonics
    thp_eligible: int | None = None  # "THPeligible:" (0 or 1)
    protection_key: int | None = None  # "ProtectionKey:" (only with memory protection keys)

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    @property
    def is_vma(self) -> bool:
        """False for ``[vsyscall]``: printed by maps but not a VMA (not counted in map_count)."""
        return self.kind is not MapKind.VSYSCALL

    @property
    def is_anon_private(self) -> bool:
        """Private anonymous memory (plain, named or the brk heap)."""
        return not self.shared and self.kind in ANON_PRIVATE_KINDS

    def maps_line(self) -> str:
        """The entry as the kernel would print it in maps (column-padded like show_map_vma())."""
        head = (f"{self.start:08x}-{self.end:08x} {self.perms} {self.offset:08x} "
                f"{self.dev_major:02x}:{self.dev_minor:02x} {self.inode} ")
        name = self.path + (" (deleted)" if self.deleted else "")
        if not name:
            return head
        return head.ljust(73) + name


class MapsParseError(ValueError):
    """A malformed or inconsistent maps/smaps text: ``str()`` is one line, ``SOURCE:LINE: what``."""

    def __init__(self, source: str, lineno: int, reason: str):
        self.source = source
        self.lineno = lineno
        self.reason = " ".join(reason.split())  # one line, whatever the input held
        super().__init__(f"{source}:{lineno}: {self.reason}")


# --- tables the hot loop looks up instead of recomputing ----------------------------------

def _perms_table() -> dict[str, tuple[int, bool]]:
    table = {}
    for r in "r-":
        for w in "w-":
            for x in "x-":
                for s in "ps":
                    prot = ((abi.PROT_READ if r == "r" else 0) | (abi.PROT_WRITE if w == "w" else 0)
                            | (abi.PROT_EXEC if x == "x" else 0))
                    table[r + w + x + s] = (prot, s == "s")
    return table


_PERMS = _perms_table()

# The fixed columns exactly as show_map_vma() prints them: "%08lx-%08lx %c%c%c%c %08llx %02x:%02x %lu ".
# Matching the prefix once is cheaper than validating each field, and rejects what int(x, 16)
# would wrongly accept ("0x10", "1_0", "+1"). Majors go up to 12 bits (3 hex digits), minors 20.
_PREFIX = re.compile(
    r"[0-9a-f]{1,16}-[0-9a-f]{1,16} [r-][w-][x-][ps] [0-9a-f]{1,16} [0-9a-f]{1,3}:[0-9a-f]{1,5} [0-9]{1,20}(?: |\Z)"
).match
_HEX = re.compile(r"[0-9a-f]{1,16}\Z").match
_DEV = re.compile(r"([0-9a-f]{1,3}):([0-9a-f]{1,5})\Z").match

_SPECIAL_KINDS = {
    "[heap]": MapKind.HEAP,
    "[stack]": MapKind.STACK,
    "[vdso]": MapKind.VDSO,
    "[vvar]": MapKind.VVAR,
    "[vvar_vclock]": MapKind.VVAR,
    "[vsyscall]": MapKind.VSYSCALL,
}
_DELETED = " (deleted)"


def _classify(raw: str, shared: bool) -> tuple[str, bool, MapKind, str | None]:
    """(path, deleted, kind, anon_name) for the raw path column of a maps line."""
    if not raw:
        # A shared anonymous mapping always shows "/dev/zero (deleted)"; no path means private.
        return "", False, (MapKind.SHARED_ANON if shared else MapKind.ANON), None
    if raw[0] == "[" and raw[-1] == "]":
        if raw.startswith("[anon:"):
            return raw, False, MapKind.ANON, raw[6:-1]
        if raw.startswith("[anon_shmem:"):
            return raw, False, MapKind.SHARED_ANON, raw[12:-1]
        if raw.startswith("[stack:"):
            return raw, False, MapKind.STACK, None
        return raw, False, _SPECIAL_KINDS.get(raw, MapKind.SPECIAL), None
    deleted = raw.endswith(_DELETED)
    path = raw[: -len(_DELETED)] if deleted else raw
    if path.startswith("/memfd:"):
        kind = MapKind.MEMFD
    elif (path == "/dev/zero" and deleted) or path.startswith("/SYSV"):
        kind = MapKind.SHARED_ANON
    else:
        kind = MapKind.FILE
    return path, deleted, kind, None


# --- diagnosis (slow path: only runs on a line the fast path rejected) ---------------------

def _diagnose_header(line: str) -> str:
    """What is wrong with a maps line that failed the fast prefix match (its fields are
    named by position, never quoted: the input may be any file)."""
    parts = line.split()
    if len(parts) < 5:
        return (f"not a maps line: {len(parts)} field(s), a maps line needs at least 5 "
                "(range perms offset dev inode)")
    rng, perms, off, dev, ino = parts[:5]
    start_s, dash, end_s = rng.partition("-")
    if not dash:
        return "bad address range (field 1): want START-END in hex"
    if not _HEX(start_s) or not _HEX(end_s):
        return "bad hex in the address range (field 1)"
    if perms not in _PERMS:
        return "bad permissions (field 2): want [r-][w-][x-][ps]"
    if not _HEX(off):
        return "bad hex offset (field 3)"
    if not _DEV(dev):
        return "bad device (field 4): want MAJOR:MINOR in hex"
    if not ino.isdigit() or not ino.isascii():
        return "bad inode (field 5): want a decimal number"
    return "malformed line (the fixed columns must be separated by single spaces)"


def _key_name(key: str) -> str:
    """An smaps key for a message: the kernel's names quoted, anything else not."""
    name = key[:-1]
    return f"{key!r} line" if name in _SMAPS_KEYS else "attribute line"


def _check_counters(entry: MapEntry, source: str) -> None:
    """The kernel's bounds on one smaps block: ``Size`` is the range, and no resident,
    swapped or locked amount exceeds it."""
    size_kib = (entry.end - entry.start) >> 10
    counters = entry.counters or {}
    given = counters.get("Size")
    if given is not None and given != size_kib:
        raise MapsParseError(source, entry.lineno, f"the block of {entry.start:x}-{entry.end:x} "
                             f"says 'Size: {given} kB'; its range is {size_kib} kB")
    for name, value in counters.items():
        if value > size_kib and name in _BOUNDED_BY_SIZE:
            raise MapsParseError(source, entry.lineno, f"the block of {entry.start:x}-{entry.end:x} "
                                 f"says '{name}: {value} kB', more than its {size_kib} kB")


def _too_many(source: str, lineno: int) -> MapsParseError:
    return MapsParseError(source, lineno, f"more than {MAX_VMAS:,} VMAs: sparsemm analyzes at most "
                          "that many (docs/analyze.md, input limits)")


def _check_range(start: int, end: int, prev: MapEntry | None) -> str | None:
    """The kernel's invariants on one range and its predecessor, or None if they hold."""
    if start >= end:
        if start == end:
            return f"range {start:x}-{end:x} is empty"
        return f"range {start:x}-{end:x} ends before it starts"
    if (start | end) & (abi.PAGE_SIZE - 1):
        return f"range {start:x}-{end:x} is not page-aligned ({abi.PAGE_SIZE // 1024} KiB)"
    if prev is not None and start < prev.end:
        if start < prev.start:
            return (f"range {start:x}-{end:x} is out of order: it starts below the previous "
                    f"entry {prev.start:x}-{prev.end:x} (line {prev.lineno})")
        return (f"range {start:x}-{end:x} overlaps the previous entry "
                f"{prev.start:x}-{prev.end:x} (line {prev.lineno})")
    return None


# --- the parser ------------------------------------------------------------------------------

def _lines(text_or_lines: str | bytes | Iterable[str]) -> Iterable[str]:
    # Split on "\n" only: the kernel escapes "\n" in paths (seq_path) but not other control
    # characters, so str.splitlines() (which splits on \r, \x1c, ...) could cut a path.
    if isinstance(text_or_lines, bytes):
        text_or_lines = text_or_lines.decode("utf-8", "surrogateescape")
    if isinstance(text_or_lines, str):
        return text_or_lines.split("\n")
    return (line[:-1] if line[-1:] == "\n" else line for line in text_or_lines)


def _parse(text_or_lines, source: str, smaps: bool) -> list[MapEntry]:
    with gc_paused():
        if isinstance(text_or_lines, bytes):
            text_or_lines = text_or_lines.decode("utf-8", "surrogateescape")
        if isinstance(text_or_lines, str):
            lines = text_or_lines.count("\n")
            if lines > MAX_VMAS * (MAX_SMAPS_LINES_PER_VMA if smaps else 1) + 1:
                raise MapsParseError(source, lines, f"more than {MAX_VMAS:,} VMAs' worth of lines: "
                                     f"sparsemm analyzes at most {MAX_VMAS:,} VMAs (docs/analyze.md, "
                                     "input limits)")
        if not smaps and isinstance(text_or_lines, str):
            entries = _parse_maps_text(text_or_lines)
            if entries is not None:
                return entries
        return _parse_lines(text_or_lines, source, smaps)


# Every line of a maps text that starts with a well-formed range, in one C-level scan
# (MULTILINE: ^ and $ at each "\n"; "." never crosses one): (start, end, the rest of the line).
_MAPS_RANGE_LINE = re.compile(r"^([0-9a-f]{1,16})-([0-9a-f]{1,16}) (.*)$", re.MULTILINE)
# The rest of a well-formed maps line: _PREFIX without the range.
_MAPS_TAIL = re.compile(r"[r-][w-][x-][ps] [0-9a-f]{1,16} [0-9a-f]{1,3}:[0-9a-f]{1,5} [0-9]{1,20}(?: |\Z)").match


def _parse_maps_text(text: str) -> list[MapEntry] | None:
    """The fast path of ``parse_maps`` for a whole text: the entries ``_parse_lines`` would
    return, or None if any line is not a well-formed maps line (blank lines included, but
    for the one after the final newline) or breaks the range invariants; the caller then
    runs ``_parse_lines``, which skips blank lines and reports the first error. O(lines).

    Most lines of a real map differ only in their range ("rw-p 00000000 00:00 0" thousands
    of times), so everything after the range is validated and decoded once per distinct text.
    """
    rows = _MAPS_RANGE_LINE.findall(text)
    if len(rows) != text.count("\n") + (not text.endswith("\n")):
        return None  # some line did not match: let the line parser say which and why
    if len(rows) > MAX_VMAS:
        return None  # the line parser stops at the limit
    entries: list[MapEntry] = []
    append = entries.append
    # the rest of a line -> the MapEntry fields from perms to anon_name
    tails: dict[str, tuple[str, int, bool, int, int, int, int, str, bool, MapKind, str | None]] = {}
    paths: dict[tuple[str, bool], tuple[str, bool, MapKind, str | None]] = {}  # as in _parse_lines
    page_mask = abi.PAGE_SIZE - 1
    prev_end = -1
    for lineno, (start_s, end_s, tail) in enumerate(rows, 1):
        start = int(start_s, 16)
        end = int(end_s, 16)
        if start >= end or (start | end) & page_mask or start < prev_end:
            return None  # _parse_lines words the error
        prev_end = end
        fields = tails.get(tail)
        if fields is None:
            if _MAPS_TAIL(tail) is None:
                return None
            parts = tail.split(None, 4)  # as line.split(None, 5) without the range
            perms, dev = parts[0], parts[2]
            prot, shared = _PERMS[perms]
            major, _, minor = dev.partition(":")
            raw = parts[4] if len(parts) == 5 else ""
            cls = paths.get((raw, shared))
            if cls is None:
                cls = paths[raw, shared] = _classify(raw, shared)
            path, deleted, kind, anon_name = cls
            fields = tails[tail] = (perms, prot, shared, int(parts[1], 16), int(major, 16), int(minor, 16),
                                    int(parts[3]), path, deleted, kind, anon_name)
        append(MapEntry(start, end, *fields, lineno))
    return entries


def _parse_lines(text_or_lines, source: str, smaps: bool) -> list[MapEntry]:
    entries: list[MapEntry] = []
    append = entries.append
    prefix = _PREFIX
    perms_table = _PERMS
    dev_cache: dict[str, tuple[int, int]] = {}
    path_cache: dict[tuple[str, bool], tuple[str, bool, MapKind, str | None]] = {}
    flags_cache: dict[str, tuple[frozenset[str], int]] = {}
    mnemonic_bits = abi.MNEMONIC_TO_VMFLAG
    prev: MapEntry | None = None
    prev_end = -1
    cur: MapEntry | None = None  # smaps: the entry whose block we are in
    counters: dict[str, int] = {}
    have_vmflags = True
    lineno = 0
    page_mask = abi.PAGE_SIZE - 1

    for lineno, line in enumerate(_lines(text_or_lines), 1):
        parts = line.split(None, 5)
        if not parts:
            continue  # blank lines (a trailing newline, a hand-edited file) carry nothing
        key = parts[0]
        if key[-1] == ":":
            # An smaps attribute line under the current header.
            if not smaps:
                raise MapsParseError(source, lineno, f"unexpected smaps {_key_name(key)} in maps text "
                                     "(parse it as smaps)")
            if cur is None:
                raise MapsParseError(source, lineno, f"{_key_name(key)} before any mapping header")
            if have_vmflags:
                raise MapsParseError(source, lineno, f"{_key_name(key)} after the VmFlags line that "
                                     f"ends the block of {cur.start:x}-{cur.end:x}")
            if len(parts) == 3 and parts[2] == "kB":
                value = parts[1]
                if not (value.isascii() and value.isdigit()) or len(value) > _MAX_DIGITS:
                    raise MapsParseError(source, lineno, f"bad value in {_key_name(key)}: want a "
                                         f"decimal number of kB of at most {_MAX_DIGITS} digits")
                name = key[:-1]
                if name in counters:
                    raise MapsParseError(source, lineno, f"duplicate {_key_name(key)} in the block of "
                                         f"{cur.start:x}-{cur.end:x}")
                counters[name] = int(value)
            elif key == "VmFlags:":
                raw = line[line.index(":") + 1:]
                got = flags_cache.get(raw)
                if got is None:
                    words = raw.split()
                    bits = 0
                    for word in words:
                        bits |= int(mnemonic_bits.get(word, 0))  # unknown (newer, other arch): kept, no bit
                    got = flags_cache[raw] = (frozenset(words), bits)
                cur.vmflags, cur.vmflags_bits = got
                have_vmflags = True
                _check_counters(cur, source)
            elif (key in ("THPeligible:", "ProtectionKey:") and len(parts) == 2 and parts[1].isascii()
                  and parts[1].isdigit() and len(parts[1]) <= _MAX_DIGITS):
                if key == "THPeligible:":
                    cur.thp_eligible = int(parts[1])
                else:
                    cur.protection_key = int(parts[1])
            else:
                raise MapsParseError(source, lineno, f"unknown smaps line format ({_key_name(key)})")
            continue

        # A maps line (or an smaps header).
        if len(parts) < 5 or prefix(line) is None:
            if smaps and not have_vmflags:
                raise MapsParseError(source, lineno, "unknown smaps line format (neither 'Key: value' "
                                     "nor a mapping header)")
            raise MapsParseError(source, lineno, _diagnose_header(line))
        if smaps and not have_vmflags and cur is not None:  # have_vmflags is False only after a header
            raise MapsParseError(source, cur.lineno, f"truncated smaps block: {cur.start:x}-{cur.end:x} "
                                 f"has no VmFlags line before the next header (line {lineno})")
        start_s, _, end_s = key.partition("-")
        start = int(start_s, 16)
        end = int(end_s, 16)
        if start >= end or (start | end) & page_mask or start < prev_end:
            raise MapsParseError(source, lineno, _check_range(start, end, prev) or "bad range")
        perms = parts[1]
        prot, shared = perms_table[perms]
        dev = parts[3]
        majmin = dev_cache.get(dev)
        if majmin is None:
            major, _, minor = dev.partition(":")
            majmin = dev_cache[dev] = (int(major, 16), int(minor, 16))
        raw = parts[5] if len(parts) == 6 else ""
        cls = path_cache.get((raw, shared))
        if cls is None:
            cls = path_cache[raw, shared] = _classify(raw, shared)
        prev = cur = MapEntry(start, end, perms, prot, shared, int(parts[2], 16), majmin[0], majmin[1],
                              int(parts[4]), cls[0], cls[1], cls[2], cls[3], lineno)
        prev_end = end
        if len(entries) >= MAX_VMAS:
            raise _too_many(source, lineno)
        append(cur)
        if smaps:
            counters = cur.counters = {}
            have_vmflags = False

    if smaps and not have_vmflags and cur is not None:
        raise MapsParseError(source, cur.lineno, f"truncated smaps block: {cur.start:x}-{cur.end:x} "
                             f"has no VmFlags line (the text ends at line {lineno})")
    return entries


def parse_maps(text_or_lines: str | bytes | Iterable[str], source: str = "<maps>") -> list[MapEntry]:
    """Parse ``/proc/PID/maps`` text (a string, bytes, or an iterable of lines).

    Returns the entries in file order (address order). Raises ``MapsParseError`` for the
    first malformed or inconsistent line. O(lines); blank lines are skipped.
    """
    return _parse(text_or_lines, source, smaps=False)


def parse_smaps(text_or_lines: str | bytes | Iterable[str], source: str = "<smaps>") -> list[MapEntry]:
    """Parse ``/proc/PID/smaps`` text: every header plus its counters, THPeligible,
    ProtectionKey and VmFlags. Each block must end with its VmFlags line (the kernel prints
    it last for every VMA since Linux 3.8); a block without one is reported as truncated.
    Not for ``smaps_rollup``. O(lines).
    """
    return _parse(text_or_lines, source, smaps=True)


def looks_like_smaps(text: str) -> bool:
    """True if the second non-blank line is an smaps ``Key:`` line (maps text has none)."""
    seen = 0
    for line in text.split("\n", 64)[:64]:
        head = line.split(None, 1)
        if not head:
            continue
        seen += 1
        if seen == 2:
            return head[0].endswith(":")
    return False


def parse_auto(text: str | bytes, source: str = "<maps>") -> list[MapEntry]:
    """Parse maps or smaps text, telling which by its second line (``looks_like_smaps``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return _parse(text, source, smaps=looks_like_smaps(text))


def read_text(path: str | os.PathLike) -> str:
    """A maps/smaps input as text, within ``MAX_INPUT_BYTES`` and the line caps: a regular
    file or ``-`` (``sparsemm._input.read_input``: FIFOs and devices refused, /proc read with
    a timeout). Undecodable path bytes are kept (surrogateescape)."""
    return read_bytes(path).decode("utf-8", "surrogateescape")


def read_bytes(path: str | os.PathLike) -> bytes:
    """``read_text`` undecoded (fleet mode sends a file's bytes to its workers)."""
    from sparsemm._input import read_input

    return read_input(os.fspath(path), max_bytes=MAX_INPUT_BYTES,
                      max_lines=MAX_VMAS * MAX_SMAPS_LINES_PER_VMA + 1)


def read_pid(pid: int | str, smaps: bool = True) -> list[MapEntry]:
    """The VMAs of a live process: ``/proc/PID/smaps`` (or ``maps`` if ``smaps`` is False,
    or if reading smaps is not permitted). ``pid`` may be a number or ``"self"``.

    Raises ``sparsemm._input.InputError`` (no such process, not permitted, too large, too
    slow) and ``MapsParseError`` (the kernel's text should always parse).
    """
    from sparsemm._input import InputError, InputPermissionError

    if not os.path.isdir(f"/proc/{pid}"):
        raise InputError(f"no process with pid {pid}")
    if smaps:
        source = f"/proc/{pid}/smaps"
        try:
            return parse_smaps(read_text(source), source)
        except (InputPermissionError, PermissionError):
            pass
    source = f"/proc/{pid}/maps"
    return parse_maps(read_text(source), source)


_PROC_PID = re.compile(r"/proc/(\d+|self|thread-self)/?\Z")


def proc_pid(what: str) -> str | None:
    """The pid a target names (``1234``, ``self``, ``/proc/1234``, ``/proc/self``), else None."""
    if (what.isascii() and what.isdigit()) or what == "self":
        return what
    m = _PROC_PID.match(what)
    return m.group(1) if m else None


def load(what: str | int | os.PathLike, smaps: bool = True) -> list[MapEntry]:
    """Entries from a saved maps/smaps file (kind auto-detected), a live pid (an int, a
    string of digits, ``/proc/N``, ``/proc/self``), or ``"-"`` for stdin. ``smaps`` only
    matters for live pids (read smaps rather than maps). Inputs are read within
    ``MAX_INPUT_BYTES`` and parsed within ``MAX_VMAS``.
    """
    if isinstance(what, int):
        return read_pid(what, smaps)
    text_what = os.fspath(what)
    if text_what == "-":
        return parse_auto(read_text("-"), "<stdin>")
    pid = proc_pid(text_what)
    if pid is not None:
        return read_pid(pid, smaps)
    return parse_auto(read_text(text_what), Path(text_what).name)
