"""Snapshots of live processes (``sparsemm.snapshot/1``) and the one way analyze reads its inputs.

Owns ``Snapshot`` (maps, smaps and guard-marker runs of one process, read close together,
with how they were read), its JSON file format, ``take`` (one live process), ``take_all``
(every process of this host that may be read, into a directory or a tarball),
``load_source`` (a pid, a snapshot, a maps or smaps file, or stdin, as entries plus marker
runs) and the ``sparsemm snapshot`` subcommand. Never interprets the layout: that is
``analyze.guards`` and ``analyze.report``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sparsemm.analyze.maps import (MAX_INPUT_BYTES, MapEntry, MapsParseError, parse_auto, parse_maps,
                                   parse_smaps, proc_pid, read_text)
from sparsemm.native import guards as native_guards
from sparsemm.native import probe

__all__ = ["SCHEMA", "Snapshot", "SnapshotError", "NoAddressSpace", "Source", "take", "take_all",
           "load_snapshot", "is_snapshot_text", "load_source", "add_parser", "READ_ATTEMPTS"]

SCHEMA = "sparsemm.snapshot/1"
#: Times ``take`` reads smaps, the markers and maps before it settles for an unstable read.
READ_ATTEMPTS = 3
PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread


class SnapshotError(ValueError):
    """A snapshot file that is not a valid ``sparsemm.snapshot/1`` document. One-line ``str``."""


class NoAddressSpace(ValueError):
    """The process has no user address space (a kernel thread, or a zombie). One-line ``str``."""

    def __init__(self, pid: int, comm: str, why: str):
        self.pid, self.comm, self.why = pid, comm, why
        super().__init__(f"pid {pid} ({comm}) {why}")


@dataclass(slots=True)
class Snapshot:
    """One process's memory map and guard markers at one moment (schema in docs/analyze.md).

    ``guards`` are the marker runs, byte ranges ``(start, end)`` (end exclusive), split at
    VMA boundaries and in address order; None when they could not be read (``guard_method``
    and ``notes`` say why). ``read`` says how maps, smaps and the markers were read.
    """

    pid: int
    comm: str
    cmdline: list[str]
    taken_at: str  # UTC, ISO 8601
    uptime_s: float | None  # seconds the process had been running
    kernel: str  # uname -r
    maps: str
    smaps: str | None
    guards: list[tuple[int, int]] | None
    guard_method: str  # "pagemap_scan", "pagemap_bit58", "none" (no guard regions), "unavailable"
    host: str = ""
    read: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The ``sparsemm.snapshot/1`` document."""
        return {
            "schema": SCHEMA, "pid": self.pid, "comm": self.comm, "cmdline": self.cmdline,
            "taken_at": self.taken_at, "uptime_s": self.uptime_s, "kernel": self.kernel, "host": self.host,
            "guard_method": self.guard_method,
            "guards": None if self.guards is None else [{"start": s, "end": e} for s, e in self.guards],
            "read": self.read, "features": self.features, "notes": self.notes,
            "maps": self.maps, "smaps": self.smaps,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"

    def entries(self, source: str = "") -> list[MapEntry]:
        """The VMAs: parsed from ``smaps`` when present, else from ``maps``."""
        name = source or f"snapshot of pid {self.pid}"
        if self.smaps is not None:
            return parse_smaps(self.smaps, name)
        return parse_maps(self.maps, name)

    @classmethod
    def from_json(cls, doc, source: str = "<snapshot>") -> Snapshot:
        """Validate a decoded document. Raises ``SnapshotError`` naming the first bad field."""
        def bad(what: str) -> SnapshotError:
            return SnapshotError(f"{source}: {what}")

        if not isinstance(doc, dict):
            raise bad("a snapshot is a JSON object")
        if doc.get("schema") != SCHEMA:
            raise bad(f"schema {doc.get('schema')!r} is not {SCHEMA!r}")

        def get(key, types, *, null=False):
            if key not in doc:
                raise bad(f"missing field {key!r}")
            v = doc[key]
            if v is None and null:
                return None
            if isinstance(v, bool) and bool not in types or not isinstance(v, types):
                raise bad(f"field {key!r} has type {type(v).__name__}")
            return v

        pid = get("pid", (int,))
        maps = get("maps", (str,))
        smaps = get("smaps", (str,), null=True)
        cmdline = get("cmdline", (list,))
        if not all(isinstance(a, str) for a in cmdline):
            raise bad("cmdline must be a list of strings")
        raw = get("guards", (list,), null=True)
        guards = None
        if raw is not None:
            guards = []
            for k, g in enumerate(raw):
                if (not isinstance(g, dict) or not isinstance(g.get("start"), int)
                        or not isinstance(g.get("end"), int) or isinstance(g.get("start"), bool)
                        or isinstance(g.get("end"), bool)):
                    raise bad(f"guards[{k}] must be an object with integer start and end")
                guards.append((g["start"], g["end"]))
        uptime = get("uptime_s", (int, float), null=True)
        return cls(pid=pid, comm=get("comm", (str,)), cmdline=cmdline, taken_at=get("taken_at", (str,)),
                   uptime_s=None if uptime is None else float(uptime), kernel=get("kernel", (str,)),
                   maps=maps, smaps=smaps, guards=guards, guard_method=get("guard_method", (str,)),
                   host=doc.get("host") or "", read=doc.get("read") or {},
                   features=doc.get("features") or {}, notes=list(doc.get("notes") or []))


def is_snapshot_text(text: str) -> bool:
    """A snapshot is a JSON object; maps and smaps text never start with ``{``."""
    return text.lstrip()[:1] == "{"


def load_snapshot(text: str, source: str = "<snapshot>") -> Snapshot:
    """Parse and validate snapshot text. Raises ``SnapshotError``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{source}: not a valid snapshot (JSON error at line {exc.lineno}: {exc.msg})") from None
    return Snapshot.from_json(doc, source)


# --- reading a live process ----------------------------------------------------------------

def _read(pid: int, name: str, binary: bool = False):
    """``/proc/PID/NAME`` within the input limits and the read timeout (``_input.read_input``)."""
    from sparsemm._input import InputError, read_input

    path = f"/proc/{pid}/{name}"
    try:
        data = read_input(path, max_bytes=MAX_INPUT_BYTES)
    except InputError as exc:
        if exc.errno is None:
            raise
        raise native_guards.proc_error(pid, path, OSError(exc.errno, os.strerror(exc.errno), path)) from None
    return data if binary else data.decode("utf-8", "surrogateescape")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on: the comm in parentheses may hold anything."""
    text = _read(pid, "stat")
    return text[text.rindex(")") + 2:].split()


def _uptime_s(stat: list[str]) -> float | None:
    try:
        with open("/proc/uptime", encoding="ascii") as fh:
            up = float(fh.read().split()[0])
        return round(up - int(stat[19]) / os.sysconf("SC_CLK_TCK"), 2)  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def _no_address_space(pid: int, comm: str, stat: list[str]) -> NoAddressSpace:
    if int(stat[6]) & PF_KTHREAD:  # field 9: flags
        return NoAddressSpace(pid, comm, "is a kernel thread: it has no user address space, so no "
                                         "mappings and no guard markers")
    if stat[0] in ("Z", "X"):
        return NoAddressSpace(pid, comm, "is a zombie: it has exited and its address space is gone")
    return NoAddressSpace(pid, comm, "has no mappings")


_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ [^\n]*\n?", re.MULTILINE)


def _headers(smaps: str) -> str:
    """The maps text an smaps text describes: its header lines (show_smap() prints each
    VMA's maps line first)."""
    return "".join(m if m.endswith("\n") else m + "\n" for m in _HEADER.findall(smaps))


def _features() -> dict:
    f = probe.features()
    return {"guard_regions": f.guard_regions, "pagemap_guard_bit": f.pagemap_guard_bit,
            "smaps_gu": f.smaps_gu}


def take(pid: int | str, *, method: str | None = None, attempts: int = READ_ATTEMPTS,
         scan_all: bool = False) -> Snapshot:
    """Read process ``pid`` (or ``"self"``): smaps, then the guard markers of its VMAs,
    then maps again; repeated (up to ``attempts`` times) until maps equals the layout smaps
    showed, so that the three describe one layout. ``read`` records the order, the
    attempts and whether they agreed. The scan covers only VMAs whose smaps VmFlags have
    ``gu`` when this kernel prints that flag, every VMA otherwise (or with ``scan_all``).

    ``method``: a ``native.guards.METHODS`` name, or None for the best this kernel has.
    Raises ``ProcAccessError`` / ``NoSuchProcess`` (one line, with a hint),
    ``NoAddressSpace`` for a kernel thread or zombie, ``GuardReadUnavailable`` only when a
    ``method`` was asked for and is missing. O(VMAs + populated page tables).
    """
    pid = os.getpid() if pid == "self" else int(pid)
    t0 = time.perf_counter()
    comm = _read(pid, "comm").rstrip("\n")
    raw_cmd = _read(pid, "cmdline", binary=True)
    cmdline = [a.decode("utf-8", "surrogateescape") for a in raw_cmd.split(b"\0")[:-1]] if raw_cmd else []
    stat = _stat_fields(pid)
    if int(stat[6]) & PF_KTHREAD or stat[0] in ("Z", "X"):
        raise _no_address_space(pid, comm, stat)
    notes: list[str] = []
    try:
        gm = native_guards.guard_method(method)
    except native_guards.GuardReadUnavailable as exc:
        if method is not None:
            raise
        gm, unavailable = None, str(exc)
    features = _features()
    scope = "gu" if features["smaps_gu"] and not scan_all else "all"
    reader = native_guards.PagemapReader(pid, gm) if gm is not None else None
    try:
        for attempt in range(1, max(1, attempts) + 1):
            taken = datetime.now(timezone.utc)
            smaps = _read(pid, "smaps")
            entries = parse_smaps(smaps, f"/proc/{pid}/smaps")
            if not entries:
                raise _no_address_space(pid, comm, _stat_fields(pid))
            vmas = [e for e in entries if e.is_vma]
            if scope == "gu":
                scanned = [(e.start, e.end) for e in vmas if e.vmflags is not None and "gu" in e.vmflags]
            else:
                scanned = [(e.start, e.end) for e in vmas]
            runs = reader.runs(scanned) if reader is not None else None
            maps = _read(pid, "maps")
            stable = maps == _headers(smaps)
            if stable:
                break
    finally:
        if reader is not None:
            reader.close()
    if gm is None:
        method_name = "unavailable"
        notes.append(f"guard markers not read: {unavailable}")
    else:
        method_name = gm.name
        if not gm.markers_possible:
            notes.append(gm.description)
    if not stable:
        notes.append(f"the process changed its mappings during each of {attempt} reads: maps, smaps "
                     "and the markers may describe slightly different moments")
    read = {"order": ["smaps", "pagemap", "maps"], "attempts": attempt, "stable": stable,
            "seconds": round(time.perf_counter() - t0, 4),
            "scope": scope if runs is not None else None,
            "scanned_vmas": len(scanned) if runs is not None else 0,
            "method": gm.description if gm is not None else None,
            "note": "stable: maps read after the scan equals the layout smaps showed before it "
                    "(guard markers installed or removed meanwhile would not show)"}
    return Snapshot(pid=pid, comm=comm, cmdline=cmdline, taken_at=_iso(taken),
                    uptime_s=_uptime_s(stat), kernel=native_guards.kernel_release(), maps=maps, smaps=smaps,
                    guards=runs, guard_method=method_name, host=socket.gethostname(), read=read,
                    features=features, notes=notes)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- every process ---------------------------------------------------------------------------

@dataclass(slots=True)
class AllResult:
    """What ``take_all`` did: counts per outcome, and the first error of each other kind."""

    saved: int = 0
    bytes: int = 0
    denied: int = 0  # not permitted (ptrace read access)
    no_address_space: int = 0  # kernel threads and zombies
    exited: int = 0  # gone before or while being read
    failed: dict[str, int] = field(default_factory=dict)  # other errors: one line -> count
    seconds: float = 0.0

    def summary(self, dest: str) -> str:
        parts = [f"{self.saved} process(es) saved to {dest} ({self.bytes / 1048576:,.1f} MiB)"]
        skipped = []
        if self.denied:
            skipped.append(f"{self.denied} not permitted (ptrace read access)")
        if self.no_address_space:
            skipped.append(f"{self.no_address_space} kernel threads or zombies (no mappings)")
        if self.exited:
            skipped.append(f"{self.exited} exited meanwhile")
        for what, n in self.failed.items():
            skipped.append(f"{n} failed ({what})")
        if skipped:
            parts.append("skipped " + ", ".join(skipped))
        parts.append(f"{self.seconds:.1f} s")
        return "; ".join(parts)


_NAME_BAD = re.compile(r"[^A-Za-z0-9._+-]")


def _member_name(snap: Snapshot) -> str:
    return f"{snap.pid}-{_NAME_BAD.sub('_', snap.comm)[:32] or 'process'}.snapshot.json"


def _is_tarball(path: str) -> str | None:
    low = path.lower()
    if low.endswith((".tar.gz", ".tgz")):
        return "w:gz"
    if low.endswith(".tar"):
        return "w"
    return None


def take_all(dest: str, *, method: str | None = None, progress=None, scan_all: bool = False) -> AllResult:
    """Snapshot every process of this host this user may read (this one excluded) into the
    directory ``dest`` (created if needed) or the tarball ``dest`` (``.tar``, ``.tar.gz``,
    ``.tgz``; written to a temporary file, renamed when complete). One file per process,
    ``PID-COMM.snapshot.json``. ``progress(done, total, pid)`` is called after each.
    Processes it may not read, kernel threads, zombies and processes that exit meanwhile
    are skipped and counted. O(processes x their VMAs)."""
    t0 = time.perf_counter()
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid())
    result = AllResult()
    mode = _is_tarball(dest)
    tar = tmp = None
    if mode:
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise FileNotFoundError(2, "no such directory", parent)
        fd, tmp = tempfile.mkstemp(prefix=".sparsemm-snapshots-", dir=parent)
        os.close(fd)
        tar = tarfile.open(tmp, mode)
    else:
        os.makedirs(dest, exist_ok=True)
    try:
        for k, pid in enumerate(pids, 1):
            try:
                snap = take(pid, method=method, scan_all=scan_all)
            except native_guards.ProcAccessError:
                result.denied += 1
            except NoAddressSpace:
                result.no_address_space += 1
            except native_guards.NoSuchProcess:
                result.exited += 1
            except (OSError, MapsParseError) as exc:  # e.g. a read cut short by exit
                what = " ".join(str(exc).split())[:120]
                result.failed[what] = result.failed.get(what, 0) + 1
            else:
                data = snap.dumps().encode("utf-8", "surrogateescape")
                name = _member_name(snap)
                if tar is not None:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                    tar.addfile(info, io.BytesIO(data))
                else:
                    _write_atomic(os.path.join(dest, name), data)
                result.saved += 1
                result.bytes += len(data)
            if progress is not None:
                progress(k, len(pids), pid)
        if tar is not None:
            tar.close()
            tar = None
            os.replace(tmp, dest)
            tmp = None
    finally:
        if tar is not None:
            tar.close()
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    result.seconds = time.perf_counter() - t0
    return result


def _write_atomic(path: str, data: bytes) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sparsemm-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- analyze's inputs ------------------------------------------------------------------------

@dataclass(slots=True)
class Source:
    """One analyze input, read: its VMAs and the marker runs it holds (None: unknown)."""

    name: str  # "pid N", a file's base name, "<stdin>"
    kind: str  # "pid", "snapshot", "smaps", "maps"
    entries: list[MapEntry]
    markers: list[tuple[int, int]] | None
    warnings: list[str] = field(default_factory=list)
    snapshot: Snapshot | None = None




def _gu_warning(entries: list[MapEntry], what: str) -> list[str]:
    gu = sum(1 for e in entries if e.vmflags is not None and "gu" in e.vmflags)
    if not gu:
        return []
    return [f"{gu} VMA(s) have VmFlags gu (they may hold guard markers) but {what} has no marker "
            "runs: existing markers are unknown and not counted (save the process with "
            "'sparsemm snapshot PID -o FILE' to count them)"]


def _from_snapshot(snap: Snapshot, name: str, kind: str) -> Source:
    entries = snap.entries(name)
    warnings = []
    if snap.guards is None:
        warnings.append(f"{name}: guard markers were not read ({snap.guard_method}): existing "
                        "markers are unknown and not counted")
    return Source(name, kind, entries, snap.guards, warnings, snap)


def load_source(target: str | int | os.PathLike, *, method: str | None = None,
                data: str | bytes | None = None) -> Source:
    """Read one analyze input: a live pid (``N``, ``/proc/N``; taken as a ``Snapshot``, so
    its markers count), a snapshot file, a maps or smaps file, or ``-`` (stdin; any of
    the three texts). With ``data`` (a file's content, as fleet workers receive it),
    nothing is read: ``target`` only names it (the ``Source``'s name, as given). Raises
    ``OSError`` (ENOENT, ``ProcAccessError``), ``MapsParseError``, ``SnapshotError``,
    ``NoAddressSpace``."""
    if isinstance(target, int):
        target = str(target)
    text_target = os.fspath(target)
    pid = proc_pid(text_target)
    if data is not None:
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        name = text_target
    elif pid is not None:
        snap = take(pid, method=method)
        return _from_snapshot(snap, f"pid {snap.pid}", "pid")
    else:
        text = read_text(text_target)  # a regular file or stdin, within the input limits
        name = "<stdin>" if text_target == "-" else (Path(text_target).name or text_target)
    if is_snapshot_text(text):
        return _from_snapshot(load_snapshot(text, name), name, "snapshot")
    entries = parse_auto(text, name)
    if entries and entries[0].counters is not None:
        return Source(name, "smaps", entries, None, _gu_warning(entries, "a saved smaps"))
    return Source(name, "maps", entries, None)


# --- the subcommand -----------------------------------------------------------------------------

def _snapshot_main(args: argparse.Namespace) -> int:
    from sparsemm.analyze.cli import _guarded

    return _guarded("snapshot", _snapshot, args)


def _snapshot(args: argparse.Namespace) -> int:
    from sparsemm.analyze.cli import UsageError

    if args.all == (args.pid is not None):
        raise UsageError("give a PID (or self) or --all, not both")
    if not args.output:
        raise UsageError("-o/--output is required (a file; with --all a directory or .tar/.tar.gz)")
    if args.all:
        return _snapshot_all(args)
    if args.pid != "self" and not args.pid.isdigit():
        raise UsageError(f"{args.pid!r} is not a pid: give a number or self")
    snap = take(args.pid, method=args.method, scan_all=args.scan_all)
    data = snap.dumps()
    if args.output == "-":
        sys.stdout.write(data)
    else:
        if os.path.isdir(args.output):
            raise UsageError(f"-o {args.output}: is a directory (a snapshot of one process is one file)")
        _write_atomic(args.output, data.encode("utf-8", "surrogateescape"))
        runs = "unknown" if snap.guards is None else f"{len(snap.guards):,}"
        print(f"pid {snap.pid} ({snap.comm}): {snap.maps.count(chr(10)):,} mappings, {runs} guard "
              f"marker run(s) ({snap.guard_method}), read {snap.read['attempts']} time(s)"
              f"{'' if snap.read['stable'] else ' (unstable)'}; written to {args.output}", file=sys.stderr)
    return 0


def _snapshot_all(args: argparse.Namespace) -> int:
    from sparsemm.analyze.cli import UsageError, _console

    if args.output == "-":
        raise UsageError("--all writes a directory or a tarball, not standard output")
    if not _is_tarball(args.output) and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"-o {args.output}: exists and is not a directory (name a directory, or a "
                         ".tar/.tar.gz/.tgz tarball)")
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("snapshot"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=_console(stderr=True), transient=True) as prog:
            task = prog.add_task("", total=None)
            result = take_all(args.output, method=args.method, scan_all=args.scan_all,
                              progress=lambda done, total, pid: prog.update(task, completed=done, total=total,
                                                                            description=f"pid {pid}"))
    else:
        result = take_all(args.output, method=args.method, scan_all=args.scan_all)
    print(f"sparsemm snapshot: {result.summary(args.output)}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Register ``sparsemm snapshot`` on ``subparsers``."""
    from sparsemm.native.guards import METHODS

    p = subparsers.add_parser(
        "snapshot", help="save a live process's maps, smaps and guard markers in one file (or every process)",
        description="Save a live process (maps, smaps and its guard-marker runs, read close together) "
                    "as one JSON file that analyze and reproduce read like a maps file; with --all, "
                    "every process this user may read, into a directory or a tarball.")
    p.add_argument("pid", nargs="?", help="pid, or self")
    p.add_argument("--all", action="store_true", help="every process of this host this user may read")
    p.add_argument("-o", "--output", metavar="FILE|DIR|TARBALL",
                   help="where to write ('-': standard output, one process only)")
    p.add_argument("--method", choices=METHODS, help="how to read guard markers (default: the best this "
                                                    "kernel has)")
    p.add_argument("--scan-all", action="store_true",
                   help="scan every VMA for markers, not only those whose smaps VmFlags have gu")
    p.set_defaults(func=_snapshot_main)
