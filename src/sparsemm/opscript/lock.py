"""The measurement lock: one measuring child at a time, in a place only its owner can create.

Owns ``measure_lock()``, which ``measure`` and ``reproduce`` hold while a measuring child
runs (slab counts are machine-wide: two measurements at once would count each other). The
lock file lives in a directory that belongs to the user and is closed to others
(``$XDG_RUNTIME_DIR/sparsemm`` or ``/tmp/sparsemm-UID``, both checked), is opened without
following symbolic links, and is waited for with a timeout that names the holder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager

__all__ = ["LockError", "lock_path", "measure_lock", "LOCK_TIMEOUT"]

#: Seconds to wait for another measurement (``SPARSEMM_LOCK_TIMEOUT`` overrides it).
LOCK_TIMEOUT = 1800.0
LOCK_NAME = "measure.lock"
_POLL = 0.1


class LockError(RuntimeError):
    """The lock cannot be used safely, or another measurement held it too long. One line."""


def _private_dir(path: str, *, create: bool) -> str:
    """``path`` as a directory of this user closed to others (created 0700 if ``create``)."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise LockError(f"cannot create the lock directory {path}: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LockError(f"lock directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise LockError(f"lock directory {path} is not a directory (a symbolic link?): refusing it")
    if st.st_uid != os.geteuid():
        raise LockError(f"lock directory {path} belongs to uid {st.st_uid}, not to you "
                        f"(uid {os.geteuid()}): refusing it")
    if st.st_mode & 0o077:
        raise LockError(f"lock directory {path} is open to others (mode {st.st_mode & 0o777:o}, "
                        "want 700): refusing it")
    return path


def lock_path() -> str:
    """Where the lock file is: ``$SPARSEMM_MEASURE_LOCK`` (its directory must be the
    user's and closed to others), else ``$XDG_RUNTIME_DIR/sparsemm/measure.lock`` when
    that directory is the user's, else ``/tmp/sparsemm-UID/measure.lock`` (made 0700)."""
    override = os.environ.get("SPARSEMM_MEASURE_LOCK")
    if override:
        _private_dir(os.path.dirname(os.path.abspath(override)) or "/", create=False)
        return override
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            _private_dir(runtime, create=False)
        except LockError:
            runtime = None
        else:
            return os.path.join(_private_dir(os.path.join(runtime, "sparsemm"), create=True), LOCK_NAME)
    base = os.path.join("/tmp", f"sparsemm-{os.geteuid()}")
    return os.path.join(_private_dir(base, create=True), LOCK_NAME)


def _timeout() -> float:
    from sparsemm._input import SettingError, env_seconds

    try:
        return env_seconds("SPARSEMM_LOCK_TIMEOUT", LOCK_TIMEOUT)
    except SettingError as exc:
        raise LockError(str(exc)) from None


def _holder(fd: int) -> str:
    """Who holds the lock, as far as the pid it wrote tells: ``pid N (command line)``."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "another process"
    if not text.isdigit():
        return "another process"
    try:
        with open(f"/proc/{text}/cmdline", "rb") as fh:
            cmd = fh.read(200).replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = ""
    cmd = "".join(c if c.isprintable() else "?" for c in cmd)[:80]
    return f"pid {text}" + (f" ({cmd})" if cmd else "")


@contextmanager
def measure_lock(timeout: float | None = None):
    """Hold the measurement lock (``flock``) for the ``with`` block.

    Waits up to ``timeout`` seconds (default ``SPARSEMM_LOCK_TIMEOUT`` or ``LOCK_TIMEOUT``)
    for another holder, then raises ``LockError`` naming it. Refuses (``LockError``) a lock
    file that is a symbolic link, not a regular file, or not the user's.
    """
    if timeout is None:
        timeout = _timeout()
    path = lock_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"lock file {path} is a symbolic link: refusing it") from None
        raise LockError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise LockError(f"lock file {path} is not a regular file of yours: refusing it")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(f"waited {timeout:g} s for the measurement lock {path}, held by "
                                    f"{_holder(fd)}; try again when it is done") from None
                time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock
