"""The inputs of the many-files mode: directories, globs and tarballs, as a stream of files.

Owns ``Item`` (one file's name and bytes, or why it could not be read), ``plan_inputs``
(targets -> ``Inputs``, an ordered, lazily read stream of items) and ``is_many``. A file's
bytes are read only when the stream reaches it; tarball members are read in place, never
extracted, and absolute or ``..`` member names are refused. It does not parse maps (that
is ``analyze.maps``, through ``report.analyze_source``).
"""

from __future__ import annotations

import glob
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from sparsemm.analyze.maps import MAX_INPUT_BYTES, proc_pid, read_bytes

__all__ = ["Item", "Inputs", "InputError", "plan_inputs", "is_many", "is_tarball", "MAX_FILE_BYTES",
           "TAR_SUFFIXES"]

#: A file larger than this is an error row, not read: the single-file input limit.
MAX_FILE_BYTES = MAX_INPUT_BYTES
#: Names read as tarballs ("r|*": gzip, bzip2 and xz compression are recognised by content).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """A target that names nothing to analyze: one line for the CLI (exit status 2)."""


@dataclass(slots=True)
class Item:
    """One input file. ``data`` is its content (None when it could not be read, and then
    ``error`` says why in one line). ``source`` names it: the path as found under the
    target (``DIR/sub/name``) or ``TARBALL:member`` for a tarball member."""

    source: str
    data: bytes | None
    error: str | None = None


def is_tarball(path: str) -> bool:
    """By name: the suffixes of ``TAR_SUFFIXES``."""
    return path.lower().endswith(TAR_SUFFIXES)


def is_many(target: str) -> bool:
    """``target`` names many files: a directory, a tarball, or a glob matching nothing
    literally (a pid, ``/proc/PID``, ``-`` or one plain file is the single-file mode)."""
    if target == "-" or proc_pid(target) is not None:
        return False
    if os.path.isdir(target):
        return True
    if os.path.exists(target):
        return is_tarball(target)
    return bool(_GLOB_CHARS & set(target))


@dataclass(slots=True)
class _Part:
    kind: str  # "file" or "tar"
    path: str
    source: str


class Inputs:
    """The files of a set of targets, in order: each target in the order given; in a
    directory, sorted relative paths (hidden names skipped); in a glob, sorted matches; in
    a tarball, member order. ``total`` is the number of files when known before reading
    (no tarball among them), else None. Iterating reads each file as it is reached: the
    memory held is one file's bytes at a time. O(files) to plan, names only."""

    def __init__(self, parts: list[_Part]):
        self._parts = parts
        self.total: int | None = None if any(p.kind == "tar" for p in parts) else len(parts)

    def __iter__(self) -> Iterator[Item]:
        for part in self._parts:
            if part.kind == "tar":
                yield from _tar_items(part.path)
            else:
                yield _file_item(part.path, part.source)


def plan_inputs(targets: list[str]) -> Inputs:
    """List the files of ``targets`` (directories, globs, tarballs, plain files). Raises
    ``InputError`` for a target that does not exist, a glob that matches nothing, or when
    there is no file at all."""
    parts: list[_Part] = []
    for target in targets:
        if os.path.isdir(target):
            found = _walk(target)
            if not found:
                raise InputError(f"{target}: no files to analyze")
            parts.extend(found)
        elif os.path.exists(target):
            parts.append(_part(target))
        elif _GLOB_CHARS & set(target):
            matches = sorted(glob.glob(target, recursive=True))
            if not matches:
                raise InputError(f"{target}: no file matches")
            for m in matches:
                parts.extend(_walk(m) if os.path.isdir(m) else [_part(m)])
        else:
            raise InputError(f"{target}: no such file, directory or pid")
    if not parts:
        raise InputError("no files to analyze")
    return Inputs(parts)


def _part(path: str) -> _Part:
    return _Part("tar" if is_tarball(path) else "file", path, path)


def _walk(top: str) -> list[_Part]:
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            # Only regular files (a FIFO or socket would block or fail the read).
            if not name.startswith(".") and os.path.isfile(path):
                found.append(_part(path))
    return found


def _file_item(path: str, source: str) -> Item:
    from sparsemm._input import InputError

    try:  # the single-file reader: its limits, its one-line errors
        return Item(source, read_bytes(path))
    except InputError as exc:
        return Item(source, None, " ".join(str(exc).split()))


def _too_large(size: int) -> str:
    return f"file too large ({size:,} bytes; the limit is {MAX_FILE_BYTES:,})"


def _refused(name: str) -> str | None:
    if name.startswith("/"):
        return "refused: absolute member name"
    if ".." in PurePosixPath(name).parts:
        return "refused: '..' in member name"
    return None


def _tar_items(path: str) -> Iterator[Item]:
    """The regular members of the tarball ``path``, read in place in one pass ("r|*":
    sequential, so a compressed tarball is decompressed once and never seeked)."""
    try:
        tf = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        yield Item(path, None, f"not a readable tar archive: {' '.join(str(exc).split())}")
        return
    done = 0
    with tf:
        try:
            for member in tf:
                # A TarFile keeps every member header it has seen; a 100k-member stream would pile them up.
                tf.members.clear()
                source = f"{path}:{member.name}"
                if member.isdir():
                    continue
                refused = _refused(member.name)
                if refused:
                    yield Item(source, None, refused)
                elif not member.isreg():
                    yield Item(source, None, "not a regular file (link or device member)")
                elif PurePosixPath(member.name).name.startswith("."):
                    continue
                elif member.size > MAX_FILE_BYTES:
                    yield Item(source, None, _too_large(member.size))
                else:
                    yield Item(source, tf.extractfile(member).read())
                done += 1
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            yield Item(path, None, f"corrupt or truncated tar archive after {done} member(s): "
                                   f"{' '.join(str(exc).split()) or type(exc).__name__}")
