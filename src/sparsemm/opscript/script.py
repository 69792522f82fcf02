"""Op scripts: parse and validate the JSON documents of docs/opscript.md into records.

Owns the ``Script``/``Op`` records, every validation error message, and the limits a script
must keep (sizes, nesting, the arena, the values the kernel ABI can carry, dangerous advice).
Knows nothing of either backend; both consume the same ``Script``, so both refuse the same
scripts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sparsemm import abi

DEFAULT_ARENA_PAGES = 1024

# --- limits (docs/opscript.md, "Limits") --------------------------------------------------
#: The arena the kernel backend's child can give: from ARENA_BASE (16 TiB) up to
#: 0x5000_0000_0000 (80 TiB), below where a PIE interpreter and its heap are loaded
#: (0x55..-0x56..) and the top-down mmap area. The model takes the same limit, so both
#: backends refuse the same scripts.
ARENA_LIMIT = 0x5000_0000_0000
MAX_ARENA_PAGES = (ARENA_LIMIT - abi.ARENA_BASE) // abi.PAGE_SIZE  # 2^34 pages, 64 TiB
MAX_SCRIPT_BYTES = 64 << 20  # a script file or stdin
MAX_NESTING = 64  # JSON arrays and objects inside each other
MAX_OPS = 1 << 20  # ops in all, fork children included
MAX_FORK_DEPTH = 8  # forks inside forks
MAX_FORKS = 256  # fork ops in all (each is a process on the kernel)
MAX_FILES = 16384  # each is an open memfd on the kernel (a process may map thousands of files)
MAX_FILE_PAGES = 1 << 20  # each page of a script file is written at creation
MAX_TOTAL_FILE_PAGES = 1 << 21  # 8 GiB of written file pages in all
MAX_TOUCH_PAGES = 1 << 20  # one touch op reports one value per page
#: Pages that ops may populate in all (touch, mmap populate/locked, mlock, populate and
#: collapse advice, and mremap growth in a script that locks memory): 4 GiB.
MAX_POPULATE_PAGES = 1 << 20
MAX_SNAPSHOT_PAGES = 1 << 22  # a snapshot's page string covers up to the whole arena
MAX_SNAPSHOT_CHARS = 1 << 24  # snapshots x arena pages, in all
MAX_RANGES = 1024  # process_madvise iovecs (UIO_MAXIOV; the kernel refuses more)
MAX_NAME_BYTES = 200  # a file name (a memfd name may have 249)
MAX_TEXT_CHARS = 1 << 16  # a note or tag
MAX_COPY_PAGES = 1 << 16  # one uffd_copy's source buffer is written whole: 256 MiB
MAX_SCAN_VEC = 4096
MAX_HUGETLB_PAGES = 64  # 2 MiB huge pages a script may ask the machine to set aside (128 MiB)  # regions one pagemap_scan may return (its record holds each)

#: Advice refused unless the caller asks for it (``parse_script(allow_dangerous=True)``,
#: ``--allow-dangerous``): on the kernel they damage the machine, not the script's process.
DANGEROUS_ADVICE = {
    int(abi.Madv.HWPOISON): "hwpoison (MADV_HWPOISON) marks the pages' physical memory as "
                            "hardware-corrupted (root only): the memory is lost until reboot and "
                            "any process touching it is killed",
    int(abi.Madv.SOFT_OFFLINE): "soft_offline (MADV_SOFT_OFFLINE) takes the pages' physical "
                                "memory out of service until reboot (root only)",
}
#: Advice that allocates memory for the whole range (MADV_COLLAPSE even for holes).
_POPULATING_ADVICE = frozenset({int(abi.Madv.POPULATE_READ), int(abi.Madv.POPULATE_WRITE),
                                int(abi.Madv.COLLAPSE)})

_U64 = 1 << 64
_MASK64 = _U64 - 1
_I63 = 1 << 63
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
PAGE = abi.PAGE_SIZE
_HPAGE = 512 * PAGE  # a 2 MiB huge page (MAP_HUGETLB rounds lengths up to it)

#: Top-level keys a script may carry besides ``ops``. ``note`` says what the script pins;
#: ``expect`` holds the records the kernel gave (the corpus); ``outside_arena`` allows
#: ranges outside the arena (error-path tests).
TOP_LEVEL_KEYS = {"arena_pages", "files", "ops", "note", "expect", "tags", "variant", "design",
                  "outside_arena", "hugetlb_pages", "map_count_headroom"}
#: The largest ``map_count_headroom``: vm.max_map_count's default.
MAX_MAP_COUNT_HEADROOM = abi.DEFAULT_MAX_MAP_COUNT
#: The VMAs of its own (interpreter, libraries, heap, stack, fillers) a process running a
#: script is taken to have when the script gives no ``map_count_headroom``: such a script
#: runs as if it gave ``DEFAULT_MAP_COUNT_HEADROOM`` (docs/opscript.md), on both backends.
OWN_VMAS = 256
DEFAULT_MAP_COUNT_HEADROOM = MAX_MAP_COUNT_HEADROOM - OWN_VMAS

#: For each op: its allowed fields (besides ``op``) and the required ones.
#: Address fields come in a page form and a byte form (one of each pair).
_ADDR_PAIRS = {"at": "at_bytes", "len": "len_bytes", "new_len": "new_len_bytes", "to": "to_bytes"}

OP_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # op: (allowed, required)
    "mmap": (frozenset({"at", "len", "prot", "flags", "file", "pgoff", "pgoff_bytes", "readonly"}),
             frozenset({"at", "prot"})),
    "munmap": (frozenset({"at", "len"}), frozenset({"at"})),
    "mprotect": (frozenset({"at", "len", "prot"}), frozenset({"at", "prot"})),
    "madvise": (frozenset({"at", "len", "advice"}), frozenset({"at", "advice"})),
    "mremap": (frozenset({"at", "len", "new_len", "flags", "to"}), frozenset({"at", "new_len"})),
    "mlock": (frozenset({"at", "len", "flags"}), frozenset({"at"})),
    "munlock": (frozenset({"at", "len"}), frozenset({"at"})),
    "touch": (frozenset({"at", "len", "access", "value", "cpu"}), frozenset({"at", "access"})),
    "fork": (frozenset({"child"}), frozenset({"child"})),
    "snapshot": (frozenset(), frozenset()),
    # Extensions (docs/opscript.md): file operations on a script file.
    "ftruncate": (frozenset({"file", "pages", "bytes"}), frozenset({"file"})),
    "fallocate_punch": (frozenset({"file", "at", "len"}), frozenset({"file", "at"})),
    "seal": (frozenset({"file", "seals"}), frozenset({"file", "seals"})),
    "process_madvise": (frozenset({"ranges", "advice", "target", "flags"}), frozenset({"ranges", "advice"})),
    "mseal": (frozenset({"at", "len", "flags"}), frozenset({"at"})),
    "special_madvise": (frozenset({"mapping", "advice"}), frozenset({"mapping", "advice"})),
    "uffd_register": (frozenset({"at", "len"}), frozenset({"at"})),
    "uffd_unregister": (frozenset({"at", "len"}), frozenset({"at"})),
    "uffd_copy": (frozenset({"at", "len", "value"}), frozenset({"at"})),
    "pagemap_scan": (frozenset({"at", "len", "require", "anyof", "inverted", "return", "max_pages",
                                "vec_len"}), frozenset({"at"})),
}
OP_NAMES = tuple(OP_FIELDS)
#: Ops whose (addr, length) is one range of the address space.
_RANGE_OPS = frozenset({"mmap", "munmap", "mprotect", "madvise", "mlock", "munlock", "pagemap_scan",
                        "mseal", "uffd_register", "uffd_unregister", "uffd_copy"})
# plain-int MAP_ bits (IntFlag operators are Python-level enum calls)
_MAP_DEFAULT = int(abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
_MAP_FIXED, _MAP_FIXED_NOREPLACE = int(abi.MAP_FIXED), int(abi.MAP_FIXED_NOREPLACE)
_MAP_POPULATE_LOCKED = int(abi.MapFlag.POPULATE | abi.MapFlag.LOCKED)
_MAP_HUGETLB = int(abi.MapFlag.HUGETLB)
#: The page forms that are lengths (never negative; the _bytes forms take raw values).
_LENGTH_KEYS = ("len", "new_len")

SEAL_BY_NAME = {
    "seal": abi.F_SEAL_SEAL,
    "shrink": abi.F_SEAL_SHRINK,
    "grow": abi.F_SEAL_GROW,
    "write": abi.F_SEAL_WRITE,
    "future_write": abi.F_SEAL_FUTURE_WRITE,
}
MLOCK_BY_NAME = {"onfault": abi.MLOCK_ONFAULT}
#: The special mappings ``special_madvise`` may name: their /proc/PID/maps names.
SPECIAL_MAPPINGS = ("vdso", "vvar", "vvar_vclock", "vsyscall")


class ScriptError(ValueError):
    """A malformed script. ``str()`` is one line naming the op (index and name) and field:
    ``op 3 (mmap) field 'prot': bad prot 'rwz': ...``."""

    def __init__(self, message: str, *, index: int | None = None, field_name: str | None = None,
                 path: str = "", op_name: str | None = None):
        where = path
        if index is not None:
            where += (" " if where else "") + f"op {index}" + (f" ({op_name})" if op_name else "")
        if field_name is not None:
            where += f" field {field_name!r}"
        text = f"{where}: {message}" if where else message
        super().__init__(" ".join(text.split()))  # one line, whatever the script held
        self.message = message
        self.index = index
        self.field_name = field_name
        self.op_name = op_name


def _show(value: Any) -> str:
    """A value for an error message: short, one line, printable whatever the script held."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 80:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(slots=True)
class Op:
    """One validated op. Addresses and lengths are bytes, absolute (arena base added).

    Read-only by convention: not ``frozen``, because a frozen dataclass's ``__init__``
    costs six times as much, and a 65k-op layout script builds 65k of them.

    ``addr``/``length``/``new_length``/``to_addr`` are the unsigned 64-bit words the
    kernel sees (0..2^64-1), ``None`` when the op has no such field. ``flags`` holds the
    syscall's flag word (MAP_, MREMAP_ or MLOCK_ bits, as the op takes); ``raw`` is the op
    as written.
    """

    index: int
    name: str
    addr: int | None = None
    length: int | None = None
    new_length: int | None = None
    to_addr: int | None = None
    prot: int | None = None
    flags: int = 0
    advice: int | None = None
    file: str | None = None
    offset: int = 0  # bytes into ``file`` (mmap pgoff)
    access: str | None = None  # "read" | "write"
    readonly: bool = False  # mmap: through a descriptor of ``file`` opened O_RDONLY
    mapping: str | None = None  # special_madvise: "vdso", "vvar", "vvar_vclock" or "vsyscall"
    target: str = "self"  # process_madvise: "self" or "child" (a fork made for the call)
    cpu: bool = False  # touch: a real load/store in a forked child, not process_vm_readv/writev
    value: int = 1
    child: tuple["Op", ...] = ()
    seals: int = 0
    ranges: tuple[tuple[int, int], ...] = ()  # process_madvise iovecs: (addr, length) in bytes
    file_length: int | None = None  # ftruncate size in bytes
    #: pagemap_scan: (category_mask, anyof_mask, inverted, return_mask, max_pages, vec_len)
    scan: tuple[int, int, int, int, int, int] | None = None
    raw: dict = field(default_factory=dict, compare=False)


@dataclass(slots=True, frozen=True)
class Script:
    """A validated op script: arena size, named files, ops.

    ``outside_arena``: the script may name ranges outside the arena (error-path tests; the
    kernel backend still refuses any that holds its own process's memory). ``warnings``:
    one line per dangerous op the caller allowed, saying what it does.
    """

    arena_pages: int
    files: dict[str, int]  # name -> pages
    ops: tuple[Op, ...]
    disk_files: frozenset[str] = frozenset()  # files on a disk filesystem, not memfds
    hugetlb_pages: int = 0  # free 2 MiB huge pages the script needs (the kernel backend reserves them)
    note: str = ""
    base: int = abi.ARENA_BASE
    expect: list | None = None
    doc: dict = field(default_factory=dict, compare=False, repr=False)  # the document as written
    outside_arena: bool = False
    warnings: tuple[str, ...] = ()
    map_count_headroom: int | None = None  # VMAs the script may add before vm.max_map_count

    @property
    def arena_bytes(self) -> int:
        return self.arena_pages * abi.PAGE_SIZE


def _op_keys(allowed, required) -> tuple[frozenset[str], tuple[str, ...]]:
    keys = set(allowed) | {"op", "note"}
    keys.update(_ADDR_PAIRS[k] for k in allowed if k in _ADDR_PAIRS)
    return frozenset(keys), tuple(required)


#: op name -> (every key it may have, incl. the byte forms and "note"; the keys it needs)
_OP_KEYS = {name: _op_keys(*spec) for name, spec in OP_FIELDS.items()}


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def page_align(length: int) -> int:
    """``PAGE_ALIGN(length)`` as the kernel computes it on an unsigned long (wraps to 0)."""
    return (length + PAGE - 1) & ~(PAGE - 1) & _MASK64


class _Ctx:
    """What parsing one script accumulates: the arena, the files, and the budgets spent."""

    __slots__ = ("base", "end", "arena_pages", "files", "outside", "allow_dangerous", "ops",
                 "forks", "populate", "snapshots", "locking", "regrow", "warnings")

    def __init__(self, arena_pages: int, files: dict[str, int], outside: bool, allow_dangerous: bool):
        self.base = abi.ARENA_BASE
        self.end = abi.ARENA_BASE + arena_pages * PAGE
        self.arena_pages = arena_pages
        self.files = files
        self.outside = outside
        self.allow_dangerous = allow_dangerous
        self.ops = 0
        self.forks = 0
        self.populate = 0  # pages
        self.snapshots = 0
        self.locking = False  # an op locks memory (mremap growth then populates)
        self.regrow = 0  # pages of mremap growth
        self.warnings: list[str] = []

    def spend_populate(self, pages: int, index: int | None, field_name: str | None) -> None:
        self.populate += pages
        if self.populate > MAX_POPULATE_PAGES:
            reached = (f"this op reaches {self.populate}" if index is not None else
                       f"with mremap growth in a script that locks memory, {self.populate}")
            raise ScriptError(f"the script's ops would populate more than {MAX_POPULATE_PAGES} pages "
                              f"({MAX_POPULATE_PAGES * PAGE >> 30} GiB) in all; {reached}",
                              index=index, field_name=field_name)


def _populated(length: int) -> int:
    """Pages a populating call over ``length`` bytes may fault in (0 if the kernel refuses the
    length outright: it rounds to 0 or exceeds TASK_SIZE)."""
    aligned = page_align(length)
    return aligned // PAGE if aligned <= abi.TASK_SIZE else 0


def _address(op: dict, key: str, index: int, base: int, *, relative: bool = True,
             default: int | None = None) -> int | None:
    """Resolve a page-form/byte-form pair (``at``/``at_bytes``) to bytes, as the unsigned
    64-bit word the kernel sees. Page forms must resolve to 0..2^64-1 (lengths: not
    negative); byte forms to -2^63..2^64-1 (a negative value is its two's complement)."""
    byte_key = _ADDR_PAIRS[key]
    value = op.get(key)
    if type(value) is int and byte_key not in op:  # the common case, a page form in range
        resolved = (base + value * PAGE) if relative else value * PAGE
        if 0 <= resolved < _U64 and (value >= 0 or key not in _LENGTH_KEYS):
            return resolved
    has_pages, has_bytes = key in op, byte_key in op
    if has_pages and has_bytes:
        raise ScriptError(f"give {key!r} or {byte_key!r}, not both", index=index, field_name=key)
    if has_bytes:
        value = op[byte_key]
        if not _is_int(value):
            raise ScriptError(f"must be an integer, not {_show(value)}", index=index,
                              field_name=byte_key)
        resolved = base + value if relative else value
        if not -_I63 <= resolved < _U64:
            what = "resolves to an address that" if relative else "is a value that"
            raise ScriptError(f"{what} does not fit 64 bits (-2^63..2^64-1)", index=index,
                              field_name=byte_key)
        return resolved & _MASK64
    if has_pages:
        value = op[key]
        if not _is_int(value):
            raise ScriptError(f"must be an integer number of pages, not {_show(value)}", index=index,
                              field_name=key)
        if key in _LENGTH_KEYS and value < 0:
            raise ScriptError("must not be negative (use the _bytes form for raw values)",
                              index=index, field_name=key)
        resolved = (base + value * PAGE) if relative else value * PAGE
        if not 0 <= resolved < _U64:
            raise ScriptError(f"{_show(value)} pages {'resolves to an address that ' if relative else ''}"
                              "does not fit 64 bits (the kernel would see it wrapped)", index=index,
                              field_name=key)
        return resolved
    return default


def _offset(op: dict, key: str, scale: int, index: int, *, signed: bool = False) -> int:
    """A file offset or size (``off_t``, signed 64-bit): ``op[key] * scale``, not negative
    unless ``signed`` (a byte form that tests the kernel's EINVAL)."""
    value = op[key]
    lo = -_I63 if signed else 0
    if not _is_int(value) or not lo <= value * scale < _I63:
        want = "an integer" if signed else "a non-negative integer"
        raise ScriptError(f"must be {want} whose byte value fits a signed 64-bit off_t, not "
                          f"{_show(value)}", index=index, field_name=key)
    return value * scale


def _names(op: dict, key: str, table: dict[str, int], index: int, *, raw: bool = False) -> int:
    """The OR of a list of flag names from ``table``; with ``raw``, the list may also hold
    integers 0..2^31-1 (bits the names do not cover, unknown bits), OR-ed in as written."""
    value = op.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) or (raw and _is_int(v)) for v in value):
        want = "a list of names and raw integers" if raw else "a list of names"
        raise ScriptError(f"must be {want}, not {_show(value)}", index=index, field_name=key)
    word = 0
    for name in value:
        if _is_int(name):
            if not 0 <= name <= _INT_MAX:
                raise ScriptError(f"raw flag bits {_show(name)} do not fit the kernel's int argument "
                                  f"(0..{_INT_MAX})", index=index, field_name=key)
            word |= name
            continue
        if name not in table:
            raise ScriptError(f"unknown flag {_show(name)} (known: {', '.join(sorted(table))})",
                              index=index, field_name=key)
        word |= int(table[name])  # plain int: IntFlag | is a Python-level enum call
    return word


def _prot(prot: Any, index: int) -> int:
    """A ``prot`` field: letters (``"rw"``, ``"none"``), a list of ``abi.PROT_BY_NAME`` names
    (``["r", "sem", "growsdown"]``), or a raw integer 0..2^31-1 (unknown bits included)."""
    if isinstance(prot, str):
        try:
            return abi.parse_prot(prot)
        except ValueError:
            raise ScriptError(f"bad prot {_show(prot)}: use a combination of r, w, x, or 'none'",
                              index=index, field_name="prot") from None
    if _is_int(prot):
        if not 0 <= prot <= _INT_MAX:
            raise ScriptError(f"raw prot {_show(prot)} does not fit the kernel's int argument "
                              f"(0..{_INT_MAX})", index=index, field_name="prot")
        return prot
    if isinstance(prot, list):
        return _names({"prot": prot}, "prot", abi.PROT_BY_NAME, index)
    raise ScriptError(f"must be a string such as 'rw' or 'none', a list of prot names or a raw "
                      f"integer, not {_show(prot)}", index=index, field_name="prot")


def _category_mask(op: dict, key: str, index: int, default: int) -> int:
    """A PAGEMAP_SCAN category mask: a list of ``abi.PAGE_IS_BY_NAME`` names, or a raw u64
    (unknown bits included, for the kernel's EINVAL)."""
    if key not in op:
        return default
    value = op[key]
    if _is_int(value):
        if not 0 <= value < _U64:
            raise ScriptError(f"a raw category mask is a u64 (0..2^64-1), not {_show(value)}",
                              index=index, field_name=key)
        return value
    return _names(op, key, abi.PAGE_IS_BY_NAME, index)


def _text(value: Any, what: str, index: int | None = None, field_name: str | None = None,
          limit: int = MAX_TEXT_CHARS) -> str:
    """``value`` if it is a string that every output can encode (no lone surrogate)."""
    if not isinstance(value, str):
        raise ScriptError(f"{what} must be a string, not {_show(value)}", index=index,
                          field_name=field_name)
    if len(value) > limit:
        raise ScriptError(f"{what} is longer than {limit} characters", index=index,
                          field_name=field_name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ScriptError(f"{what} holds a lone surrogate ({value[exc.start]!r} at character "
                          f"{exc.start}): not valid Unicode text", index=index,
                          field_name=field_name) from None
    return value


def _file_name(name: Any) -> str:
    """A script file name: non-empty printable text without '/', at most MAX_NAME_BYTES bytes
    of UTF-8 (the kernel shows it in /proc/PID/maps as ``/memfd:NAME``)."""
    _text(name, f"file name {_show(name)}")
    if (not name or "/" in name or not name.isprintable()
            or len(name.encode("utf-8")) > MAX_NAME_BYTES):
        raise ScriptError(f"bad file name {_show(name)}: want 1..{MAX_NAME_BYTES} bytes of "
                          "printable text without '/'")
    return name


def _script_file(op: dict, index: int, files: dict[str, int]) -> str:
    file = op.get("file")
    if not isinstance(file, str) or file not in files:
        raise ScriptError(f"names no file of the script: {_show(file)}", index=index,
                          field_name="file")
    return file


def _advice(op: dict, index: int, ctx: _Ctx) -> int:
    advice = op.get("advice")
    if _is_int(advice):  # a raw number, for invalid-advice cases
        if not _INT_MIN <= advice <= _INT_MAX:
            raise ScriptError(f"raw advice {_show(advice)} does not fit the kernel's int argument "
                              f"({_INT_MIN}..{_INT_MAX})", index=index, field_name="advice")
        value = advice
    elif isinstance(advice, str) and advice in abi.MADV_BY_NAME:
        value = abi.MADV_BY_NAME[advice]
    else:
        raise ScriptError(f"unknown advice {_show(advice)}", index=index, field_name="advice")
    danger = DANGEROUS_ADVICE.get(value)
    if danger is not None:
        if not ctx.allow_dangerous:
            raise ScriptError(f"refused: {danger}; run it only on a machine you can reboot, with "
                              "--allow-dangerous", index=index, field_name="advice")
        ctx.warnings.append(f"op {index}: {danger}")
    return value


def _ranges_of(op: Op) -> list[tuple[int, int, str]]:
    """(start, end, field) of every address range ``op`` names; ``end`` may exceed 2^64
    (a range the kernel refuses as wrapping). Lengths are rounded up to pages."""
    name = op.name
    raw = op.raw
    at = "at_bytes" if "at_bytes" in raw else "at"
    if name == "mmap" and op.flags & abi.MapFlag.HUGETLB:  # the length rounds up to 2 MiB
        return [(op.addr, op.addr + ((op.length + _HPAGE - 1) & ~(_HPAGE - 1) & _MASK64), at)]
    if name in _RANGE_OPS:
        return [(op.addr, op.addr + page_align(op.length), at)]
    if name == "touch":
        return [(op.addr, op.addr + -(-op.length // PAGE) * PAGE, at)]
    if name == "mremap":
        out = [(op.addr, op.addr + page_align(op.length), at)]
        if not op.flags & abi.MremapFlag.FIXED:  # it may grow in place
            out.append((op.addr, op.addr + page_align(op.new_length), at))
        elif op.to_addr is not None:
            out.append((op.to_addr, op.to_addr + page_align(op.new_length),
                        "to_bytes" if "to_bytes" in raw else "to"))
        return out
    if name == "process_madvise":
        return [(addr, addr + page_align(length), "ranges") for addr, length in op.ranges]
    return []


def op_ranges(op: Op) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of the address space ``op`` may change or read, as
    the kernel computes them (lengths rounded up to pages modulo 2^64). ``end > 2^64`` is a
    range the kernel refuses for wrapping (EINVAL/ENOMEM); ``start == end`` is empty.
    Fork children are not included (see ``Op.child``). O(1), O(ranges) for process_madvise."""
    return [(s, e) for s, e, _ in _ranges_of(op)]


def effective_headroom(script: "Script") -> int:
    """The VMAs ``script`` may add before ``vm.max_map_count`` on either backend: its
    ``map_count_headroom``, else ``DEFAULT_MAP_COUNT_HEADROOM``. O(1)."""
    if script.map_count_headroom is not None:
        return script.map_count_headroom
    return DEFAULT_MAP_COUNT_HEADROOM


def vma_bound(ops) -> int:
    """An upper bound on the VMAs ``ops`` (fork children included) can add to a process: an
    op splits at most both ends of each range it reaches and places at most one new VMA per
    range, an mremap a target besides its source, so 4 per range is ample. Tells whether a
    script can come near ``vm.max_map_count`` at all. O(ops + ranges)."""
    n = 0
    for op in ops:
        n += 4 * max(1, len(_ranges_of(op))) + vma_bound(op.child)
    return n


def refused_by_arguments(name: str, start: int, end: int) -> bool:
    """True when the kernel rejects call ``name`` over ``[start, end)`` on its arguments alone,
    before it looks at any memory: an empty or wrapping range (``end > 2^64``), an unaligned
    start (but for mlock/munlock, which align it down, and our own touch), or, for mmap,
    munmap and mremap, a range past TASK_SIZE."""
    if start >= end or end > _U64:
        return True
    if start % PAGE and name not in ("mlock", "munlock", "touch"):
        return True
    return name in ("mmap", "munmap", "mremap", "pagemap_scan") and end > abi.TASK_SIZE


#: Calls that stop at the first unmapped page of their range (mprotect, mlock and munlock
#: fail with ENOMEM there), so a range that starts in the arena zone cannot reach beyond it.
_STOP_AT_HOLE = frozenset({"mprotect", "mlock", "munlock"})


def _outside_ok(name: str, start: int, end: int, fname: str) -> bool:
    """Whether a script with ``outside_arena`` may name ``[start, end)``: a range the kernel
    refuses on its arguments, one above TASK_SIZE (nothing is mapped there), one inside the
    arena zone ``[ARENA_BASE, ARENA_LIMIT)``, or one that starts in the zone for a call
    that cannot cross a hole (mprotect/mlock/munlock; mremap's old range, which must lie in
    one VMA). Everything else could reach the kernel backend's own interpreter."""
    if refused_by_arguments(name, start, end) or start >= abi.TASK_SIZE:
        return True
    starts_in_zone = abi.ARENA_BASE <= start < ARENA_LIMIT
    if name in _STOP_AT_HOLE or (name == "mremap" and fname.startswith("at")):
        return starts_in_zone
    return starts_in_zone and end <= ARENA_LIMIT


def _check_ranges(op: Op, ctx: _Ctx) -> None:
    name = op.name
    # one range, as _ranges_of computes it (a hugetlb mmap rounds to 2 MiB there): done here
    # when it lies in the arena
    if (name in _RANGE_OPS and not (name == "mmap" and op.flags & _MAP_HUGETLB)) or name == "touch":
        start = op.addr
        if name == "touch":
            end = start + -(-op.length // PAGE) * PAGE
        else:
            end = start + page_align(op.length)
        if ctx.base <= start and end <= ctx.end:
            return
    for start, end, fname in _ranges_of(op):
        if op.name == "touch" and end > _U64:
            raise ScriptError("the touched pages run past 2^64", index=op.index, field_name=fname)
        if ctx.base <= start and end <= ctx.end:
            continue
        what = (f"the range from {start:#x} wraps past 2^64" if end > _U64 else
                f"the range {start:#x}-{end:#x}")
        if not ctx.outside:
            raise ScriptError(f"{what} leaves the arena {ctx.base:#x}-{ctx.end:#x}; a script testing "
                              "error paths outside it says \"outside_arena\": true",
                              index=op.index, field_name=fname)
        if not _outside_ok(op.name, start, end, fname):
            raise ScriptError(f"{what} could reach memory that is not the script's: even with "
                              f"outside_arena, a range must stay in {abi.ARENA_BASE:#x}-{ARENA_LIMIT:#x}, "
                              "lie above TASK_SIZE, or be one the kernel refuses on its arguments "
                              "(unaligned, empty, wrapping)", index=op.index, field_name=fname)


def _parse_op(op: Any, index: int, ctx: _Ctx, depth: int = 0) -> Op:
    try:
        return _parse_op_fields(op, index, ctx, depth)
    except ScriptError as exc:
        name = op.get("op") if isinstance(op, dict) else None
        if exc.index != index or exc.op_name is not None or not isinstance(name, str) \
                or name not in OP_FIELDS:
            raise
        raise ScriptError(exc.message, index=index, field_name=exc.field_name, op_name=name) from None


def _parse_op_fields(op: Any, index: int, ctx: _Ctx, depth: int) -> Op:
    if not isinstance(op, dict):
        raise ScriptError(f"must be a JSON object, not {type(op).__name__}", index=index)
    name = op.get("op")
    if name is None:
        raise ScriptError("missing", index=index, field_name="op")
    if not isinstance(name, str) or name not in OP_FIELDS:
        raise ScriptError(f"unknown op {_show(name)} (known: {', '.join(OP_NAMES)})", index=index,
                          field_name="op")
    allowed_keys, required = _OP_KEYS[name]
    for key in op:
        if key not in allowed_keys:
            raise ScriptError(f"unknown field for {name}", index=index,
                              field_name=key[:40] if isinstance(key, str) else _show(key))
    for key in required:
        if key not in op and _ADDR_PAIRS.get(key) not in op:
            raise ScriptError("missing", index=index, field_name=key)
    if "note" in op:
        _text(op["note"], "a note", index, "note")

    base = ctx.base
    kw: dict[str, Any] = {"index": index, "name": name, "raw": op}
    if name in ("mmap", "munmap", "mprotect", "madvise", "mremap", "mlock", "munlock", "touch",
                "pagemap_scan", "mseal", "uffd_register", "uffd_unregister", "uffd_copy"):
        kw["addr"] = _address(op, "at", index, base)
        kw["length"] = _address(op, "len", index, base, relative=False, default=PAGE)
    if "prot" in allowed_keys:
        kw["prot"] = _prot(op.get("prot"), index)

    if name == "mmap":
        flags = _names(op, "flags", abi.MAP_BY_NAME, index, raw=True) if "flags" in op else _MAP_DEFAULT
        if not flags & _MAP_FIXED:
            flags |= _MAP_FIXED_NOREPLACE
        kw["flags"] = flags
        if op.get("file") is not None:
            kw["file"] = _script_file(op, index, ctx.files)
        readonly = op.get("readonly", False)
        if not isinstance(readonly, bool):
            raise ScriptError(f"must be true or false, not {_show(readonly)}", index=index,
                              field_name="readonly")
        if readonly and "file" not in kw:
            raise ScriptError("a read-only descriptor needs a 'file'", index=index, field_name="readonly")
        kw["readonly"] = readonly
        if "pgoff" in op and "pgoff_bytes" in op:
            raise ScriptError("give 'pgoff' or 'pgoff_bytes', not both", index=index, field_name="pgoff")
        for key, scale in (("pgoff", PAGE), ("pgoff_bytes", 1)):
            if key in op:
                kw["offset"] = _offset(op, key, scale, index)
        if flags & _MAP_POPULATE_LOCKED:
            ctx.spend_populate(_populated(kw["length"]), index, "flags")
            ctx.locking = ctx.locking or bool(flags & abi.MapFlag.LOCKED)
    elif name == "madvise":
        kw["advice"] = _advice(op, index, ctx)
        if kw["advice"] in _POPULATING_ADVICE:
            ctx.spend_populate(_populated(kw["length"]), index, "len")
    elif name == "process_madvise":
        kw["advice"] = _advice(op, index, ctx)
        ranges = op["ranges"]
        if not isinstance(ranges, list) or not ranges or not all(
                isinstance(r, list) and len(r) == 2 and all(_is_int(x) for x in r) for r in ranges):
            raise ScriptError("must be a non-empty list of [at, len] page pairs", index=index,
                              field_name="ranges")
        if len(ranges) > MAX_RANGES:
            raise ScriptError(f"more than {MAX_RANGES} ranges (UIO_MAXIOV)", index=index,
                              field_name="ranges")
        out = []
        for at, npages in ranges:
            addr = base + at * PAGE
            if npages < 0 or not 0 <= addr < _U64 or npages * PAGE >= _U64:
                raise ScriptError(f"range {_show([at, npages])}: 'at' must resolve to a 64-bit address "
                                  "and 'len' be a non-negative page count that fits 64 bits",
                                  index=index, field_name="ranges")
            out.append((addr, npages * PAGE))
            if kw["advice"] in _POPULATING_ADVICE:
                ctx.spend_populate(_populated(npages * PAGE), index, "ranges")
        kw["ranges"] = tuple(out)
        target = op.get("target", "self")
        if target not in ("self", "child"):
            raise ScriptError(f"must be 'self' or 'child', not {_show(target)}", index=index,
                              field_name="target")
        kw["target"] = target
        flags = op.get("flags", 0)
        if not _is_int(flags) or not 0 <= flags < 1 << 32:
            raise ScriptError(f"must be an unsigned int 0..2^32-1 (the kernel takes none: 0), not "
                              f"{_show(flags)}", index=index, field_name="flags")
        kw["flags"] = flags
    elif name == "mremap":
        kw["new_length"] = _address(op, "new_len", index, base, relative=False)
        kw["flags"] = _names(op, "flags", abi.MREMAP_BY_NAME, index)
        kw["to_addr"] = _address(op, "to", index, base)
        if kw["flags"] & abi.MremapFlag.FIXED and kw["to_addr"] is None:
            raise ScriptError("mremap with 'fixed' needs 'to'", index=index, field_name="to")
        ctx.regrow += _populated(kw["new_length"])
    elif name == "mlock":
        kw["flags"] = _names(op, "flags", MLOCK_BY_NAME, index)
        if not kw["flags"] & abi.MLOCK_ONFAULT:
            ctx.spend_populate(_populated(kw["length"]), index, "len")
            ctx.locking = True
    elif name == "touch":
        access = op.get("access")
        if access not in ("read", "write"):
            raise ScriptError(f"must be 'read' or 'write', not {_show(access)}", index=index,
                              field_name="access")
        kw["access"] = access
        value = op.get("value", 1)
        if not _is_int(value) or not 0 <= value <= 255:
            raise ScriptError(f"must be an integer 0..255, not {_show(value)}", index=index,
                              field_name="value")
        kw["value"] = value
        cpu = op.get("cpu", False)
        if not isinstance(cpu, bool):
            raise ScriptError(f"must be true or false, not {_show(cpu)}", index=index, field_name="cpu")
        kw["cpu"] = cpu
        if not 0 <= kw["length"] <= MAX_TOUCH_PAGES * PAGE:
            raise ScriptError(f"touch covers 0..{MAX_TOUCH_PAGES} pages", index=index,
                              field_name="len_bytes" if "len_bytes" in op else "len")
        ctx.spend_populate(-(-kw["length"] // PAGE), index, "len")
    elif name == "fork":
        child = op.get("child")
        if not isinstance(child, list):
            raise ScriptError("must be a list of ops", index=index, field_name="child")
        ctx.forks += 1
        if ctx.forks > MAX_FORKS:
            raise ScriptError(f"more than {MAX_FORKS} fork ops in the script", index=index,
                              field_name="op")
        if depth >= MAX_FORK_DEPTH:
            raise ScriptError(f"forks nest deeper than {MAX_FORK_DEPTH} levels", index=index,
                              field_name="child")
        _count_ops(ctx, len(child), index)
        try:
            kw["child"] = tuple(_parse_op(c, i, ctx, depth + 1) for i, c in enumerate(child))
        except ScriptError as exc:
            raise ScriptError(f"in child: {exc}", index=index, field_name="child") from None
    elif name == "snapshot":
        ctx.snapshots += 1
        if ctx.arena_pages > MAX_SNAPSHOT_PAGES:
            raise ScriptError(f"a snapshot of an arena of {ctx.arena_pages} pages would draw every "
                              f"page; snapshots take arenas of at most {MAX_SNAPSHOT_PAGES} pages",
                              index=index, field_name="op")
        if ctx.snapshots * ctx.arena_pages > MAX_SNAPSHOT_CHARS:
            raise ScriptError(f"the snapshots would draw more than {MAX_SNAPSHOT_CHARS} pages in all "
                              f"({ctx.snapshots} x {ctx.arena_pages}-page arena)", index=index,
                              field_name="op")
    elif name == "special_madvise":
        mapping = op.get("mapping")
        if mapping not in SPECIAL_MAPPINGS:
            raise ScriptError(f"must be one of {', '.join(SPECIAL_MAPPINGS)}, not {_show(mapping)}",
                              index=index, field_name="mapping")
        kw["mapping"] = mapping
        kw["advice"] = _advice(op, index, ctx)
        if kw["advice"] not in (abi.Madv.GUARD_INSTALL, abi.Madv.GUARD_REMOVE):
            raise ScriptError("only guard_install and guard_remove: other advice could change the "
                              "process's own special mappings", index=index, field_name="advice")
    elif name == "uffd_copy":
        value = op.get("value", 1)
        if not _is_int(value) or not 0 <= value <= 255:
            raise ScriptError(f"must be an integer 0..255, not {_show(value)}", index=index,
                              field_name="value")
        kw["value"] = value
        if not 0 <= kw["length"] <= MAX_COPY_PAGES * PAGE:
            raise ScriptError(f"uffd_copy covers 0..{MAX_COPY_PAGES} pages", index=index,
                              field_name="len_bytes" if "len_bytes" in op else "len")
        ctx.spend_populate(-(-kw["length"] // PAGE), index, "len")
    elif name == "mseal":
        flags = op.get("flags", 0)
        if not _is_int(flags) or not 0 <= flags < _U64:
            raise ScriptError(f"must be an integer 0..2^64-1 (the kernel takes none: 0), not {_show(flags)}",
                              index=index, field_name="flags")
        kw["flags"] = flags
    elif name == "pagemap_scan":
        masks = [_category_mask(op, key, index, default)
                 for key, default in (("require", 0), ("anyof", 0), ("inverted", 0),
                                      ("return", abi.PM_SCAN_CATEGORIES))]
        max_pages = op.get("max_pages", 0)
        if not _is_int(max_pages) or not 0 <= max_pages < _U64:
            raise ScriptError(f"must be an integer 0..2^64-1 (0: no limit), not {_show(max_pages)}",
                              index=index, field_name="max_pages")
        vec_len = op.get("vec_len", 512)
        if not _is_int(vec_len) or not 0 <= vec_len <= MAX_SCAN_VEC:
            raise ScriptError(f"must be an integer 0..{MAX_SCAN_VEC}, not {_show(vec_len)}",
                              index=index, field_name="vec_len")
        kw["scan"] = (*masks, max_pages, vec_len)
    elif name in ("ftruncate", "fallocate_punch", "seal"):
        kw["file"] = _script_file(op, index, ctx.files)
        if name == "ftruncate":
            if ("pages" in op) == ("bytes" in op):
                raise ScriptError("give exactly one of 'pages' or 'bytes'", index=index,
                                  field_name="pages")
            key = "pages" if "pages" in op else "bytes"
            kw["file_length"] = _offset(op, key, PAGE if key == "pages" else 1, index)
        elif name == "fallocate_punch":
            for key, default, attr in (("at", None, "addr"), ("len", PAGE, "length")):
                byte_key = _ADDR_PAIRS[key]
                if key in op and byte_key in op:
                    raise ScriptError(f"give {key!r} or {byte_key!r}, not both", index=index,
                                      field_name=key)
                if key in op:
                    kw[attr] = _offset(op, key, PAGE, index)
                elif byte_key in op:
                    kw[attr] = _offset(op, byte_key, 1, index, signed=True)
                else:
                    kw[attr] = default
        else:
            kw["seals"] = _names(op, "seals", SEAL_BY_NAME, index)
    parsed = Op(**kw)
    if name != "fork":
        _check_ranges(parsed, ctx)
    return parsed


def _count_ops(ctx: _Ctx, n: int, index: int | None) -> None:
    ctx.ops += n
    if ctx.ops > MAX_OPS:
        raise ScriptError(f"more than {MAX_OPS} ops in all (fork children included)", index=index,
                          field_name="child" if index is not None else None)


def _top_level(doc: dict) -> tuple[int, dict[str, int], bool, frozenset[str]]:
    """(arena_pages, files, outside_arena, disk_files) of a script document, checked."""
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise ScriptError(f"unknown top-level field {_show(key)}")
    arena_pages = doc.get("arena_pages", DEFAULT_ARENA_PAGES)
    if not _is_int(arena_pages) or not 1 <= arena_pages <= MAX_ARENA_PAGES:
        raise ScriptError(f"'arena_pages' must be an integer 1..{MAX_ARENA_PAGES} (the arena ends "
                          f"at most at {ARENA_LIMIT:#x}), not {_show(arena_pages)}")
    files_doc = doc.get("files", {})
    if not isinstance(files_doc, dict):
        raise ScriptError("'files' must be an object of name: {\"pages\": N}")
    if len(files_doc) > MAX_FILES:
        raise ScriptError(f"'files' names {len(files_doc)} files; a script may have at most {MAX_FILES}")
    files: dict[str, int] = {}
    disk: set[str] = set()
    total = 0
    for fname, spec in files_doc.items():
        _file_name(fname)
        if not isinstance(spec, dict) or "pages" not in spec or not set(spec) <= {"pages", "disk"}:
            raise ScriptError(f"file {_show(fname)}: want {{\"pages\": N}} or {{\"pages\": N, \"disk\": "
                              f"true}}, not {_show(spec)}")
        if not isinstance(spec.get("disk", False), bool):
            raise ScriptError(f"file {_show(fname)}: 'disk' must be true or false, not {_show(spec['disk'])}")
        if spec.get("disk"):
            disk.add(fname)
        pages = spec["pages"]
        if not _is_int(pages) or not 0 <= pages <= MAX_FILE_PAGES:
            raise ScriptError(f"file {_show(fname)}: 'pages' must be an integer 0..{MAX_FILE_PAGES}, "
                              f"not {_show(pages)}")
        total += pages
        if total > MAX_TOTAL_FILE_PAGES:
            raise ScriptError(f"the files have more than {MAX_TOTAL_FILE_PAGES} pages in all (each page "
                              "is written when the file is created)")
        files[fname] = pages
    hugetlb = doc.get("hugetlb_pages", 0)
    if not _is_int(hugetlb) or not 0 <= hugetlb <= MAX_HUGETLB_PAGES:
        raise ScriptError(f"'hugetlb_pages' must be an integer 0..{MAX_HUGETLB_PAGES}, not {_show(hugetlb)}")
    outside = doc.get("outside_arena", False)
    if not isinstance(outside, bool):
        raise ScriptError(f"'outside_arena' must be true or false, not {_show(outside)}")
    if "note" in doc:
        _text(doc["note"], "'note'")
    if "variant" in doc:
        _text(doc["variant"], "'variant'")
    if "design" in doc:
        _text(doc["design"], "'design'")
    tags = doc.get("tags", [])
    if not isinstance(tags, list):
        raise ScriptError(f"'tags' must be a list of strings, not {_show(tags)}")
    for tag in tags:
        _text(tag, "a tag")
    headroom = doc.get("map_count_headroom")
    if headroom is not None and (not _is_int(headroom) or not 1 <= headroom <= MAX_MAP_COUNT_HEADROOM):
        raise ScriptError(f"'map_count_headroom' must be an integer 1..{MAX_MAP_COUNT_HEADROOM}, "
                          f"not {_show(headroom)}")
    expect = doc.get("expect")
    if expect is not None and not isinstance(expect, list):
        raise ScriptError(f"'expect' must be a list of records, not {_show(expect)}")
    return arena_pages, files, outside, frozenset(disk)


def parse_script(doc: Any, *, path: str = "", allow_dangerous: bool = False) -> Script:
    """Validate a decoded JSON document; raise ``ScriptError`` naming the problem.

    Every field is checked for type and range (docs/opscript.md, "Limits"): values must fit
    what the kernel ABI carries, every range must lie in the arena unless the script says
    ``"outside_arena": true``, and ``DANGEROUS_ADVICE`` is refused unless
    ``allow_dangerous`` (then ``Script.warnings`` says what each such op does). O(ops).
    """
    try:
        if not isinstance(doc, dict):
            raise ScriptError("a script is a JSON object with an 'ops' list")
        arena_pages, files, outside, disk = _top_level(doc)
        hugetlb = doc.get("hugetlb_pages", 0)
        ops = doc.get("ops")
        if not isinstance(ops, list):
            raise ScriptError("'ops' must be a list")
        ctx = _Ctx(arena_pages, files, outside, allow_dangerous)
        _count_ops(ctx, len(ops), None)
        parsed = tuple(_parse_op(op, i, ctx) for i, op in enumerate(ops))
        if ctx.locking and ctx.regrow:
            ctx.spend_populate(ctx.regrow, None, None)  # mremap growth of a locked VMA populates
    except ScriptError as exc:
        if path:
            wrapped = ScriptError(f"{path}: {exc}")
            wrapped.index, wrapped.field_name, wrapped.op_name = exc.index, exc.field_name, exc.op_name
            raise wrapped from None
        raise
    return Script(arena_pages=arena_pages, files=files, ops=parsed, disk_files=disk, hugetlb_pages=hugetlb,
                  note=doc.get("note", ""),
                  expect=doc.get("expect"), doc=doc, outside_arena=outside,
                  warnings=tuple(ctx.warnings), map_count_headroom=doc.get("map_count_headroom"))


# --- reading a script file -------------------------------------------------------------------

#: Every byte but the four brackets (and the quote): what the nesting check deletes.
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_NOT_BRACKETS_OR_QUOTE = bytes(c for c in range(256) if c not in b'[]{}"')
_INNERMOST = re.compile(rb"\[\]|\{\}")


def _structural_brackets(data: bytes) -> bytes:
    """The brackets of JSON text ``data`` that are not inside strings, in order."""
    # Drop escaped backslashes, then escaped quotes: every '"' left opens or closes a string.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Fast path: with only brackets and quotes kept, strings without brackets are '""'. If
    # removing those leaves no quote, no string held a bracket: the pairs removed can only
    # have been each string's own two quotes (consecutive quotes pair up one way only).
    kept = unescaped.translate(None, _NOT_BRACKETS_OR_QUOTE).replace(b'""', b"")
    if b'"' not in kept:
        return kept
    return b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)


def nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON arrays and objects nest more than ``limit`` levels deep in ``data``
    (brackets in strings do not count). False for text whose brackets do not pair up:
    the decoder then reports it. O(len(data) x min(depth, limit)), in C-level passes.
    """
    brackets = _structural_brackets(data)
    # Each pass removes the innermost pairs: a document of depth d is empty after d passes.
    for _ in range(limit):
        inner = _INNERMOST.sub(b"", brackets)
        if len(inner) == len(brackets):
            return False  # empty, or brackets that do not pair up
        brackets = inner
    return len(_INNERMOST.sub(b"", brackets)) < len(brackets)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def decode_script_text(data: bytes, path: str = "") -> Any:
    """The JSON document in ``data``, or ``ScriptError``: not UTF-8, nested deeper than
    ``MAX_NESTING`` (checked before decoding, so the decoder cannot exhaust the stack), bad
    JSON, ``NaN``/``Infinity``, numbers of more digits than Python converts."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScriptError(f"not UTF-8 text (byte {exc.start})", path=path) from None
    if nested_deeper_than(data, MAX_NESTING):
        raise ScriptError(f"JSON nested deeper than {MAX_NESTING} levels", path=path)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ScriptError(f"bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                          path=path) from None
    except RecursionError:
        raise ScriptError(f"JSON nested deeper than {MAX_NESTING} levels", path=path) from None
    except ValueError as exc:  # a number of more than sys.get_int_max_str_digits() digits
        reason = ("a number has too many digits" if "digits" in str(exc) else
                  " ".join(str(exc).split())[:80])
        raise ScriptError(f"bad JSON: {reason}", path=path) from None


def load_script(path: str, *, allow_dangerous: bool = False) -> Script:
    """Read and validate a script file (``-`` is standard input): a regular file of at most
    ``MAX_SCRIPT_BYTES``; see ``decode_script_text`` and ``parse_script``."""
    from sparsemm._input import InputError, read_input

    try:
        data = read_input(path, max_bytes=MAX_SCRIPT_BYTES)
    except InputError as exc:
        raise ScriptError(str(exc)) from None
    shown = "<stdin>" if path == "-" else path
    return parse_script(decode_script_text(data, shown), path=shown, allow_dangerous=allow_dangerous)
