"""Op scripts: parse and validate the JSON documents of OPSCRIPT.md into records.

Owns the ``Script``/``Op`` records and every validation error message. Knows
nothing of either backend; both consume the same ``Script``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sparsemm import abi

DEFAULT_ARENA_PAGES = 1024
MAX_TOUCH_PAGES = 1 << 20  # one touch op reports one value per page
MAX_FILE_PAGES = 1 << 20  # each page of a script file is written at creation
#: The arena may reach up to the top of the user address space (TASK_SIZE):
#: reproduced real layouts hold TiB-sized reservations.
MAX_ARENA_PAGES = (abi.TASK_SIZE - abi.ARENA_BASE) // abi.PAGE_SIZE

#: Top-level keys a script may carry besides ``ops``. ``note`` says what the
#: script pins; ``expect`` holds the records the kernel gave (the corpus).
TOP_LEVEL_KEYS = {"arena_pages", "files", "ops", "note", "expect", "tags", "variant", "design"}

#: For each op: its allowed fields (besides ``op``) and the required ones.
#: Address fields come in a page form and a byte form (one of each pair).
_ADDR_PAIRS = {"at": "at_bytes", "len": "len_bytes", "new_len": "new_len_bytes", "to": "to_bytes"}

OP_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # op: (allowed, required)
    "mmap": (frozenset({"at", "len", "prot", "flags", "file", "pgoff", "pgoff_bytes"}), frozenset({"at", "prot"})),
    "munmap": (frozenset({"at", "len"}), frozenset({"at"})),
    "mprotect": (frozenset({"at", "len", "prot"}), frozenset({"at", "prot"})),
    "madvise": (frozenset({"at", "len", "advice"}), frozenset({"at", "advice"})),
    "mremap": (frozenset({"at", "len", "new_len", "flags", "to"}), frozenset({"at", "new_len"})),
    "mlock": (frozenset({"at", "len", "flags"}), frozenset({"at"})),
    "munlock": (frozenset({"at", "len"}), frozenset({"at"})),
    "touch": (frozenset({"at", "len", "access", "value"}), frozenset({"at", "access"})),
    "fork": (frozenset({"child"}), frozenset({"child"})),
    "snapshot": (frozenset(), frozenset()),
    # Extensions (docs/opscript.md): file operations on a script file.
    "ftruncate": (frozenset({"file", "pages", "bytes"}), frozenset({"file"})),
    "fallocate_punch": (frozenset({"file", "at", "len"}), frozenset({"file", "at"})),
    "seal": (frozenset({"file", "seals"}), frozenset({"file", "seals"})),
    "process_madvise": (frozenset({"ranges", "advice"}), frozenset({"ranges", "advice"})),
}
OP_NAMES = tuple(OP_FIELDS)

SEAL_BY_NAME = {
    "seal": abi.F_SEAL_SEAL,
    "shrink": abi.F_SEAL_SHRINK,
    "grow": abi.F_SEAL_GROW,
    "write": abi.F_SEAL_WRITE,
    "future_write": abi.F_SEAL_FUTURE_WRITE,
}
MLOCK_BY_NAME = {"onfault": abi.MLOCK_ONFAULT}


class ScriptError(ValueError):
    """A malformed script. ``str()`` is one line naming the op index and field."""

    def __init__(self, message: str, *, index: int | None = None, field_name: str | None = None,
                 path: str = ""):
        where = path
        if index is not None:
            where += f"op {index}" if not where else f" op {index}"
        if field_name is not None:
            where += f" field {field_name!r}"
        super().__init__(f"{where}: {message}" if where else message)
        self.index = index
        self.field_name = field_name


@dataclass(slots=True)
class Op:
    """One validated op. Addresses and lengths are bytes, absolute (arena base added).

    Read-only by convention: not ``frozen``, because a frozen dataclass's ``__init__``
    costs six times as much, and a 65k-op layout script builds 65k of them.

    ``addr``/``length``/``new_length``/``to_addr`` are ``None`` when the op has
    no such field. ``flags`` holds the syscall's flag word (MAP_, MREMAP_ or
    MLOCK_ bits, as the op takes); ``raw`` is the op as written.
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
    value: int = 1
    child: tuple["Op", ...] = ()
    seals: int = 0
    ranges: tuple[tuple[int, int], ...] = ()  # process_madvise iovecs: (addr, length) in bytes
    file_length: int | None = None  # ftruncate size in bytes
    raw: dict = field(default_factory=dict, compare=False)


@dataclass(slots=True, frozen=True)
class Script:
    """A validated op script: arena size, named files, ops."""

    arena_pages: int
    files: dict[str, int]  # name -> pages
    ops: tuple[Op, ...]
    note: str = ""
    base: int = abi.ARENA_BASE
    expect: list | None = None
    doc: dict = field(default_factory=dict, compare=False, repr=False)  # the document as written

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
    return isinstance(value, int) and not isinstance(value, bool)


def _address(op: dict, key: str, index: int, base: int, *, relative: bool = True,
             default: int | None = None) -> int | None:
    """Resolve a page-form/byte-form pair (``at``/``at_bytes``) to bytes."""
    byte_key = _ADDR_PAIRS[key]
    has_pages, has_bytes = key in op, byte_key in op
    if has_pages and has_bytes:
        raise ScriptError(f"give {key!r} or {byte_key!r}, not both", index=index, field_name=key)
    if has_bytes:
        value = op[byte_key]
        if not _is_int(value):
            raise ScriptError(f"must be an integer, not {value!r}", index=index, field_name=byte_key)
        return (base + value) if relative else value
    if has_pages:
        value = op[key]
        if not _is_int(value):
            raise ScriptError(f"must be an integer number of pages, not {value!r}", index=index,
                              field_name=key)
        if key in ("len", "new_len") and value < 0:
            raise ScriptError("must not be negative (use the _bytes form for raw values)",
                              index=index, field_name=key)
        return (base + value * abi.PAGE_SIZE) if relative else value * abi.PAGE_SIZE
    return default


def _names(op: dict, key: str, table: dict[str, int], index: int) -> int:
    value = op.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScriptError(f"must be a list of names, not {value!r}", index=index, field_name=key)
    word = 0
    for name in value:
        if name not in table:
            raise ScriptError(f"unknown flag {name!r} (known: {', '.join(sorted(table))})",
                              index=index, field_name=key)
        word |= table[name]
    return word


def _parse_op(op: Any, index: int, base: int, files: dict[str, int]) -> Op:
    if not isinstance(op, dict):
        raise ScriptError(f"must be a JSON object, not {type(op).__name__}", index=index)
    name = op.get("op")
    if name is None:
        raise ScriptError("missing", index=index, field_name="op")
    if name not in OP_FIELDS:
        raise ScriptError(f"unknown op {name!r} (known: {', '.join(OP_NAMES)})", index=index,
                          field_name="op")
    allowed_keys, required = _OP_KEYS[name]
    for key in op:
        if key not in allowed_keys:
            raise ScriptError(f"unknown field for {name}", index=index, field_name=key)
    for key in required:
        if key not in op and _ADDR_PAIRS.get(key) not in op:
            raise ScriptError("missing", index=index, field_name=key)

    kw: dict[str, Any] = {"index": index, "name": name, "raw": op}
    if name in ("mmap", "munmap", "mprotect", "madvise", "mremap", "mlock", "munlock", "touch"):
        kw["addr"] = _address(op, "at", index, base)
        kw["length"] = _address(op, "len", index, base, relative=False, default=abi.PAGE_SIZE)
    if "prot" in allowed_keys:
        prot = op.get("prot")
        if not isinstance(prot, str):
            raise ScriptError(f"must be a string such as 'rw' or 'none', not {prot!r}", index=index,
                              field_name="prot")
        try:
            kw["prot"] = abi.parse_prot(prot)
        except ValueError as exc:
            raise ScriptError(str(exc), index=index, field_name="prot") from None

    if name == "mmap":
        flags = _names(op, "flags", abi.MAP_BY_NAME, index) if "flags" in op else (
            abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
        if not flags & abi.MAP_FIXED:
            flags |= abi.MAP_FIXED_NOREPLACE
        kw["flags"] = int(flags)
        file = op.get("file")
        if file is not None:
            if not isinstance(file, str) or file not in files:
                raise ScriptError(f"names no file of the script: {file!r}", index=index,
                                  field_name="file")
            kw["file"] = file
        if "pgoff" in op and "pgoff_bytes" in op:
            raise ScriptError("give 'pgoff' or 'pgoff_bytes', not both", index=index, field_name="pgoff")
        for key, scale in (("pgoff", abi.PAGE_SIZE), ("pgoff_bytes", 1)):
            if key in op:
                if not _is_int(op[key]) or op[key] < 0:
                    raise ScriptError(f"must be a non-negative integer, not {op[key]!r}", index=index,
                                      field_name=key)
                kw["offset"] = op[key] * scale
    elif name == "madvise":
        kw["advice"] = _advice(op, index)
    elif name == "process_madvise":
        kw["advice"] = _advice(op, index)
        ranges = op["ranges"]
        if not isinstance(ranges, list) or not ranges or not all(
                isinstance(r, list) and len(r) == 2 and all(_is_int(x) for x in r) for r in ranges):
            raise ScriptError("must be a non-empty list of [at, len] page pairs", index=index,
                              field_name="ranges")
        if any(r[1] < 0 for r in ranges):
            raise ScriptError("lengths must not be negative", index=index, field_name="ranges")
        kw["ranges"] = tuple((base + a * abi.PAGE_SIZE, n * abi.PAGE_SIZE) for a, n in ranges)
    elif name == "mremap":
        kw["new_length"] = _address(op, "new_len", index, base, relative=False)
        kw["flags"] = _names(op, "flags", abi.MREMAP_BY_NAME, index)
        kw["to_addr"] = _address(op, "to", index, base)
        if kw["flags"] & abi.MremapFlag.FIXED and kw["to_addr"] is None:
            raise ScriptError("mremap with 'fixed' needs 'to'", index=index, field_name="to")
    elif name == "mlock":
        kw["flags"] = _names(op, "flags", MLOCK_BY_NAME, index)
    elif name == "touch":
        access = op.get("access")
        if access not in ("read", "write"):
            raise ScriptError(f"must be 'read' or 'write', not {access!r}", index=index,
                              field_name="access")
        kw["access"] = access
        value = op.get("value", 1)
        if not _is_int(value) or not 0 <= value <= 255:
            raise ScriptError(f"must be an integer 0..255, not {value!r}", index=index,
                              field_name="value")
        kw["value"] = value
        if not 0 <= kw["length"] <= MAX_TOUCH_PAGES * abi.PAGE_SIZE:
            raise ScriptError(f"touch covers 0..{MAX_TOUCH_PAGES} pages", index=index,
                              field_name="len")
    elif name == "fork":
        child = op.get("child")
        if not isinstance(child, list):
            raise ScriptError("must be a list of ops", index=index, field_name="child")
        try:
            kw["child"] = tuple(_parse_op(c, i, base, files) for i, c in enumerate(child))
        except ScriptError as exc:
            raise ScriptError(f"in child: {exc}", index=index, field_name="child") from None
    elif name in ("ftruncate", "fallocate_punch", "seal"):
        file = op.get("file")
        if not isinstance(file, str) or file not in files:
            raise ScriptError(f"names no file of the script: {file!r}", index=index, field_name="file")
        kw["file"] = file
        if name == "ftruncate":
            if ("pages" in op) == ("bytes" in op):
                raise ScriptError("give exactly one of 'pages' or 'bytes'", index=index,
                                  field_name="pages")
            key = "pages" if "pages" in op else "bytes"
            if not _is_int(op[key]) or op[key] < 0:
                raise ScriptError(f"must be a non-negative integer, not {op[key]!r}", index=index,
                                  field_name=key)
            kw["file_length"] = op[key] * (abi.PAGE_SIZE if key == "pages" else 1)
        elif name == "fallocate_punch":
            kw["addr"] = _address(op, "at", index, 0, relative=False)
            kw["length"] = _address(op, "len", index, 0, relative=False, default=abi.PAGE_SIZE)
            if kw["addr"] < 0:
                raise ScriptError("must not be negative", index=index, field_name="at")
        else:
            kw["seals"] = _names(op, "seals", SEAL_BY_NAME, index)
    return Op(**kw)


def _advice(op: dict, index: int) -> int:
    advice = op.get("advice")
    if _is_int(advice):
        return advice  # a raw number, for invalid-advice cases
    if not isinstance(advice, str) or advice not in abi.MADV_BY_NAME:
        raise ScriptError(f"unknown advice {advice!r}", index=index, field_name="advice")
    return abi.MADV_BY_NAME[advice]


def parse_script(doc: Any, *, path: str = "") -> Script:
    """Validate a decoded JSON document; raise ``ScriptError`` naming the problem."""
    if not isinstance(doc, dict):
        raise ScriptError("a script is a JSON object with an 'ops' list", path=path)
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise ScriptError(f"unknown top-level field {key!r}", path=path)
    arena_pages = doc.get("arena_pages", DEFAULT_ARENA_PAGES)
    if not _is_int(arena_pages) or not 1 <= arena_pages <= MAX_ARENA_PAGES:
        raise ScriptError(f"'arena_pages' must be an integer 1..{MAX_ARENA_PAGES}, not {arena_pages!r}",
                          path=path)
    files_doc = doc.get("files", {})
    if not isinstance(files_doc, dict):
        raise ScriptError("'files' must be an object of name: {\"pages\": N}", path=path)
    files: dict[str, int] = {}
    for fname, spec in files_doc.items():
        if not fname or "/" in fname or len(fname) > 200:
            raise ScriptError(f"bad file name {fname!r}", path=path)
        pages = spec.get("pages") if isinstance(spec, dict) else None
        if not _is_int(pages) or not 0 <= pages <= MAX_FILE_PAGES:
            raise ScriptError(f"file {fname!r}: 'pages' must be an integer 0..{MAX_FILE_PAGES}",
                              path=path)
        files[fname] = pages
    ops = doc.get("ops")
    if not isinstance(ops, list):
        raise ScriptError("'ops' must be a list", path=path)
    note = doc.get("note", "")
    if not isinstance(note, str):
        raise ScriptError("'note' must be a string", path=path)
    try:
        parsed = tuple(_parse_op(op, i, abi.ARENA_BASE, files) for i, op in enumerate(ops))
    except ScriptError as exc:
        if path:
            wrapped = ScriptError(f"{path}: {exc}")
            wrapped.index, wrapped.field_name = exc.index, exc.field_name
            raise wrapped from None
        raise
    return Script(arena_pages=arena_pages, files=files, ops=parsed, note=note,
                  expect=doc.get("expect"), doc=doc)


def load_script(path: str) -> Script:
    """Read and validate a script file (``-`` is standard input)."""
    import sys

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise ScriptError(f"cannot read: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise ScriptError("not UTF-8 text", path=path) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScriptError(f"bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                          path=path) from None
    return parse_script(doc, path=path)
