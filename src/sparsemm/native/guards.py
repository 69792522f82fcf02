"""Guard markers of a live process, read from its page tables through ``/proc/PID/pagemap``.

Owns how this kernel lets markers be read (``guard_method``: ``PAGEMAP_SCAN`` with
``PAGE_IS_GUARD``, else pagemap bit 58, else why not), ``PagemapReader`` (one open pagemap,
the marker runs inside given ranges) and the one-line diagnosis of a refused /proc read
(``ProcAccessError``: ptrace read access). It scans only the ranges it is given: which
VMAs to scan is the caller's choice (``analyze.snapshot``). It parses no maps.
"""

from __future__ import annotations

import bisect
import errno
import functools
import os
import platform
import pwd
from dataclasses import dataclass

from sparsemm import abi
from sparsemm.native import _scan, libc, probe

__all__ = ["METHODS", "GuardMethod", "GuardReadUnavailable", "ProcAccessError", "NoSuchProcess",
           "PagemapReader", "guard_method", "proc_error", "access_hint"]

#: Method names, as snapshots and ``sparsemm guards --method`` spell them.
SCAN, BIT58, NONE = "pagemap_scan", "pagemap_bit58", "none"
METHODS = (SCAN, BIT58)
_DESCRIBE = {SCAN: "PAGEMAP_SCAN ioctl, category PAGE_IS_GUARD",
             BIT58: "pagemap words, bit 58 (PM_GUARD_REGION)"}


class GuardReadUnavailable(RuntimeError):
    """This kernel has guard markers but no way to read them (or not the one asked for).
    ``str()`` is one line."""


class ProcAccessError(PermissionError):
    """The kernel refused to show a process's memory map. ``str()`` is one line with a hint."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class NoSuchProcess(FileNotFoundError):
    """No process with that pid (or it exited while being read). ``str()`` is one line."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclass(slots=True, frozen=True)
class GuardMethod:
    """How markers are read here. ``name`` is ``"pagemap_scan"``, ``"pagemap_bit58"`` or
    ``"none"`` (the kernel has no guard regions at all, so no process holds a marker)."""

    name: str
    description: str

    @property
    def markers_possible(self) -> bool:
        return self.name != NONE


@functools.cache
def _scan_knows_guard() -> bool:
    """Does PAGEMAP_SCAN accept PAGE_IS_GUARD here (6.15+)? Asked once, on a page of ours."""
    page = abi.PAGE_SIZE
    addr = libc.mmap(0, page, abi.PROT_READ, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    try:
        _scan._scan_ioctl(addr, page, abi.PAGE_IS_GUARD)
        return True
    except OSError as exc:
        if _scan.scan_refused(exc):
            return False
        raise
    finally:
        libc.munmap(addr, page)


def guard_method(preferred: str | None = None) -> GuardMethod:
    """The way to read markers on this kernel: ``preferred`` (one of ``METHODS``) if it
    works, else (None) PAGEMAP_SCAN, else pagemap bit 58. Raises ``GuardReadUnavailable``
    when the kernel has guard regions but the asked-for (or every) way is missing, and
    ``ValueError`` for an unknown name. Probed once per process (``probe.features``)."""
    if preferred not in (None, *METHODS):
        raise ValueError(f"unknown method {preferred!r}: use one of {', '.join(METHODS)}")
    f = probe.features()
    if not f.guard_regions:
        return GuardMethod(NONE, f"kernel {f.kernel} has no guard regions (MADV_GUARD_INSTALL, "
                                 "Linux 6.13+): no process can hold guard markers")
    have = {SCAN: _scan_knows_guard(), BIT58: f.pagemap_guard_bit}
    if preferred is not None:
        if not have[preferred]:
            raise GuardReadUnavailable(f"kernel {f.kernel} cannot read guard markers with {preferred} "
                                       f"({_DESCRIBE[preferred]} needs Linux 6.15+)")
        return GuardMethod(preferred, _DESCRIBE[preferred])
    for name in METHODS:
        if have[name]:
            return GuardMethod(name, _DESCRIBE[name])
    raise GuardReadUnavailable(f"kernel {f.kernel} has guard markers but neither PAGEMAP_SCAN's "
                               "PAGE_IS_GUARD nor pagemap bit 58 (both Linux 6.15+) to read them")


# --- access errors --------------------------------------------------------------------------

def _uid_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _yama() -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as fh:
            return f"; kernel.yama.ptrace_scope={fh.read().strip()} limits ptrace attach only, not this read"
    except OSError:
        return ""


def _status_field(pid: int | str, key: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return line.split()[1:]
    except OSError:
        pass
    return None


_CAP_SYS_PTRACE = 19  # include/uapi/linux/capability.h


def access_hint(pid: int) -> str:
    """Why reading ``pid``'s maps/smaps/pagemap was refused, and what would allow it, in
    words (the kernel's rule: ptrace access mode PTRACE_MODE_READ with the caller's
    filesystem uid and gid, kernel/ptrace.c __ptrace_may_access())."""
    me = os.geteuid()
    uids = _status_field(pid, "Uid")
    owner = [int(v) for v in uids[:3]] if uids else None  # real, effective, saved
    caps = _status_field("self", "CapEff")
    have_ptrace = bool(caps) and bool(int(caps[0], 16) >> _CAP_SYS_PTRACE & 1)
    need = "reading a process's memory map needs ptrace read access (PTRACE_MODE_READ)"
    if have_ptrace:
        who = ("you have CAP_SYS_PTRACE, so the process is outside your user namespace's reach "
               "(owned by an ancestor namespace) or a security module refused")
    elif owner is not None and any(u != me for u in owner):
        other = next(u for u in owner if u != me)
        who = (f"it runs as {_uid_name(other)} and you are {_uid_name(me)}: run as that user, "
               "or as root (CAP_SYS_PTRACE)")
    else:
        who = ("it runs as your uid but is not dumpable (a set-id program, or "
               "prctl(PR_SET_DUMPABLE, 0)): only CAP_SYS_PTRACE (root) may read it")
    return f"{need}; {who}{_yama()}"


def proc_error(pid: int, path: str, exc: OSError) -> OSError:
    """``exc`` (from opening or reading ``path`` of ``pid``) as a one-line
    ``ProcAccessError`` / ``NoSuchProcess``, or ``exc`` itself for anything else."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return ProcAccessError(errno.EACCES, f"cannot read {path}: permission denied: {access_hint(pid)}")
    if isinstance(exc, FileNotFoundError) or exc.errno in (errno.ENOENT, errno.ESRCH):
        return NoSuchProcess(errno.ESRCH, f"no process with pid {pid} (or it exited while being read)")
    return exc


# --- reading ---------------------------------------------------------------------------------

class PagemapReader:
    """``/proc/PID/pagemap`` held open: ``runs(ranges)`` gives the marker runs inside them.

    Opening checks access once (the kernel takes its reference to the process's mm at
    open, ptrace read access). Use as a context manager or call ``close()``.
    """

    __slots__ = ("pid", "method", "_fd")

    def __init__(self, pid: int, method: GuardMethod) -> None:
        self.pid = pid
        self.method = method
        self._fd = -1
        if method.markers_possible:
            path = f"/proc/{pid}/pagemap"
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise proc_error(pid, path, exc) from None

    def __enter__(self) -> PagemapReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def runs(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Marker runs ``(start, end)`` (bytes) inside ``ranges`` (sorted, disjoint byte
        ranges, e.g. VMAs), split at every range boundary. PAGEMAP_SCAN walks the span of
        all ranges in one pass (it skips unpopulated tables); pagemap words are read range
        by range. O(populated page tables), or O(pages in ranges) for bit 58."""
        if not self.method.markers_possible or not ranges:
            return []
        if self._fd < 0:
            raise ValueError("PagemapReader is closed")
        name = self.method.name
        raw: list[tuple[int, int]] = []
        try:
            if name == SCAN:
                # Adjacent ranges make one span; spans far apart are scanned separately
                # (a walk over a hole costs nothing, but one scan per span keeps vec small).
                for start, end in _spans(ranges):
                    raw += _scan.scan_ioctl(self._fd, start, end - start, abi.PAGE_IS_GUARD)
            else:
                for start, end in _spans(ranges):
                    raw += _scan.scan_words(self._fd, start, end - start, abi.PAGE_IS_GUARD)
        except OSError as exc:
            raise proc_error(self.pid, f"/proc/{self.pid}/pagemap", exc) from None
        return _clip(raw, ranges)


def _spans(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` with touching ones joined. O(n)."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _clip(runs: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``runs`` inside ``ranges``, cut at every range boundary. O((runs + cuts) log n)."""
    starts = [s for s, _ in ranges]
    out: list[tuple[int, int]] = []
    for start, end in runs:
        pos = start
        while pos < end:
            k = bisect.bisect_right(starts, pos) - 1
            if k < 0 or ranges[k][1] <= pos:
                # pos is between ranges: skip to the next range's start
                k += 1
                if k >= len(ranges) or ranges[k][0] >= end:
                    break
                pos = ranges[k][0]
            stop = min(end, ranges[k][1])
            out.append((pos, stop))
            pos = stop
    return out


def kernel_release() -> str:
    """The running kernel's release string (``uname -r``)."""
    return platform.release()
