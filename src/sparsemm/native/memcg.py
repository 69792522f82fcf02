"""Memory cgroups that measure one process's kernel memory: create, join, read, remove.

Owns ``MemoryCgroup`` (a uniquely named child of this process's own memory cgroup, v1 or v2,
removed when its ``with`` block ends, on error and Ctrl-C too), ``join`` (a process moves itself
in) and ``KernelBytes`` (the cgroup's kernel-memory counter, read without allocating).
Knows nothing of op scripts; never touches a cgroup without this module's name pattern.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from dataclasses import dataclass

from sparsemm import abi
from sparsemm.native import libc

__all__ = ["ENV_VAR", "NAME_PREFIX", "MemcgUnavailable", "Hierarchy", "MemoryCgroup", "KernelBytes",
           "find_hierarchy", "join", "join_from_env", "remove_stale", "charge_slack_bytes"]

#: The environment variable a measuring child finds its cgroup in (``"v1:/sys/fs/cgroup/..."``).
ENV_VAR = "SPARSEMM_MEMCG"
#: Every cgroup this module creates is named ``sparsemm-<creator pid>-<8 hex digits>``.
NAME_PREFIX = "sparsemm-"
_NAME = re.compile(r"^sparsemm-(\d+)-[0-9a-f]{8}$")

# What each hierarchy's counter is. v1: the kmem page counter (slab objects, page tables, kernel
# stacks...); v2: the "kernel" line of memory.stat (the same MEMCG_KMEM pages, flushed lazily).
_V1_COUNTER = "memory.kmem.usage_in_bytes"
_V2_COUNTER = "memory.stat"
_REMOVE_WAIT_S = 5.0  # a child that just exited leaves its cgroup only once it is reaped


class MemcgUnavailable(OSError):
    """No memory cgroup that accounts kernel memory can be made here; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where this process's memory cgroup is: ``version`` 1 or 2, ``path`` its directory."""

    version: int
    path: str

    @property
    def counter(self) -> str:
        return _V1_COUNTER if self.version == 1 else _V2_COUNTER

    @property
    def method(self) -> str:
        """How the kernel bytes are read, in words for a report."""
        if self.version == 1:
            return f"cgroup v1 {_V1_COUNTER}"
        return "cgroup v2 memory.stat kernel"


def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, root within the hierarchy, fstype, super options) of cgroup mounts."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5 and len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                out.append((_unescape(fields[4]), _unescape(fields[3]), rfields[0], rfields[2]))
    return out


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _own_cgroups() -> dict[str, str]:
    """Controller list (``"memory"``, ``""`` for v2) -> this process's path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                out[parts[1]] = parts[2]
    return out


def _under(mount: str, root: str, path: str) -> str | None:
    """The directory of cgroup ``path`` in a hierarchy mounted at ``mount`` from ``root``."""
    root = root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None  # our cgroup is outside what this mount shows (a container's view)
    return os.path.join(mount, path[len(root):].lstrip("/"))


def find_hierarchy() -> Hierarchy:
    """This process's memory cgroup, where kernel memory is accounted. O(mounts).

    Raises ``MemcgUnavailable`` naming the reason: no memory controller mounted, kernel-memory
    accounting off (``cgroup.memory=nokmem``), or (v2) the memory controller not enabled for
    the children of our cgroup (``cgroup.subtree_control``; enabling it is a global change this
    module does not make).
    """
    try:
        with open("/proc/cmdline", encoding="utf-8") as fh:
            cmdline = fh.read().split()
        mounts, own = _mounts(), _own_cgroups()
    except OSError as exc:
        raise MemcgUnavailable(f"cannot read /proc ({exc.strerror})") from exc
    if "cgroup.memory=nokmem" in cmdline:
        raise MemcgUnavailable("kernel memory accounting is off (cgroup.memory=nokmem)")
    for mount, root, fstype, opts in mounts:
        if fstype == "cgroup" and "memory" in opts.split(","):
            key = next((k for k in own if "memory" in k.split(",")), None)
            path = _under(mount, root, own[key]) if key is not None else None
            if path is None or not os.path.isdir(path):
                raise MemcgUnavailable(f"this process's memory cgroup is not visible under {mount}")
            if not os.path.exists(os.path.join(path, _V1_COUNTER)):
                raise MemcgUnavailable(f"{path} has no {_V1_COUNTER} (kernel memory not accounted)")
            return Hierarchy(1, path)
    for mount, root, fstype, _opts in mounts:
        if fstype == "cgroup2" and "" in own:
            path = _under(mount, root, own[""])
            if path is None:
                continue
            try:
                with open(os.path.join(path, "cgroup.subtree_control"), encoding="ascii") as fh:
                    enabled = fh.read().split()
            except OSError:
                continue
            if "memory" in enabled:
                return Hierarchy(2, path)
            raise MemcgUnavailable(f"the memory controller is not enabled for children of {path} "
                                   "(cgroup.subtree_control)")
    raise MemcgUnavailable("no cgroup hierarchy with the memory controller is mounted")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def remove_stale(parent: str) -> list[str]:
    """Remove this module's cgroups under ``parent`` whose creator has died and that hold no
    process (left by a killed run); return the names removed. Anything else is left alone:
    a live creator's cgroup, a cgroup with tasks, a name this module does not make. O(entries).
    """
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = os.path.join(parent, name)
        if _procs(path):
            continue
        try:
            os.rmdir(path)
        except OSError:
            continue  # in use, or not ours to remove after all: ignore safely
        removed.append(name)
    return removed


class MemoryCgroup:
    """A new, uniquely named child memory cgroup of this process's own; a context manager.

    ``create()`` makes it (cleaning up stale ones first); leaving the ``with`` block removes it,
    waiting up to a few seconds for exited children to be reaped. A cgroup that still holds a
    process then is left for ``remove_stale`` of a later run, and ``removed`` stays false.
    Charges left in it when removed (RCU-delayed frees) move to the parent, as the kernel does.
    """

    def __init__(self, hierarchy: Hierarchy, path: str):
        self.hierarchy = hierarchy
        self.path = path
        self.removed = False

    @classmethod
    def create(cls, hierarchy: Hierarchy | None = None) -> "MemoryCgroup":
        """Make the cgroup. Raises ``MemcgUnavailable`` (no hierarchy, no permission)."""
        h = hierarchy or find_hierarchy()
        remove_stale(h.path)
        path = os.path.join(h.path, f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            raise MemcgUnavailable(f"cannot create a memory cgroup under {h.path} "
                                   f"({exc.strerror})") from exc
        cg = cls(Hierarchy(h.version, path), path)
        if not os.path.exists(os.path.join(path, h.counter)):
            cg.remove()
            raise MemcgUnavailable(f"a new cgroup under {h.path} has no {h.counter}")
        return cg

    @property
    def env(self) -> dict[str, str]:
        """The environment entry a child passes to ``join_from_env``."""
        return {ENV_VAR: f"v{self.hierarchy.version}:{self.path}"}

    def procs(self) -> list[int]:
        """The pids in the cgroup now."""
        return _procs(self.path)

    def remove(self, wait: float = _REMOVE_WAIT_S) -> bool:
        """rmdir the cgroup; retry while it is busy (a child being reaped). True when gone."""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.rmdir(self.path)
            except FileNotFoundError:
                self.removed = True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
                continue
            else:
                self.removed = True
            return True

    def __enter__(self) -> "MemoryCgroup":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def join(path: str) -> None:
    """Move the calling process into the cgroup at ``path``. Its kernel objects are charged
    there from now on; what it allocated before stays charged where it was."""
    with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as fh:
        fh.write(str(os.getpid()))


def join_from_env() -> Hierarchy | None:
    """``join`` the cgroup named by ``ENV_VAR``, if set; return it (``None`` if unset).
    Raises ``OSError`` if the cgroup cannot be joined."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return None
    version, _, path = spec.partition(":")
    h = Hierarchy(int(version.lstrip("v")), path)
    join(h.path)
    return h


class KernelBytes:
    """Reads one cgroup's kernel-memory counter in bytes. Opens the file once; a read allocates
    only small objects (the measured process must not grow while it measures itself)."""

    def __init__(self, hierarchy: Hierarchy):
        self.hierarchy = hierarchy
        self.fd = os.open(os.path.join(hierarchy.path, hierarchy.counter), os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> int:
        """The counter now, in bytes. O(1) (v1) or O(stat lines) (v2)."""
        data = os.pread(self.fd, 8192, 0)
        if self.hierarchy.version == 1:
            return int(data)
        return _stat_kernel(data)

    def settled(self, interval: float = 0.02, stable: int = 3, tries: int = 100) -> tuple[int, bool]:
        """(value, settled): the counter once frees the kernel defers past an RCU grace period
        (page tables under ``MMU_GATHER_RCU_TABLE_FREE``, task structs) have landed. Waits for
        a grace period (``membarrier(MEMBARRIER_CMD_GLOBAL)`` runs ``synchronize_rcu``), then
        reads every ``interval`` s until ``stable`` reads in a row agree, at most ``tries``
        reads; ``settled`` is false if the counter never stood still. Allocates nothing that
        stays."""
        try:
            libc.membarrier(abi.MEMBARRIER_CMD_GLOBAL)
        except OSError:
            pass  # membarrier unavailable: the stable reads alone
        last, same = self.read(), 1
        for _ in range(tries):
            time.sleep(interval)
            now = self.read()
            same = same + 1 if now == last else 1
            last = now
            if same >= stable:
                return now, True
        return last, False

    def close(self) -> None:
        os.close(self.fd)


def _stat_kernel(data: bytes) -> int:
    """The ``kernel`` line of a v2 ``memory.stat``; where a kernel lacks it, the sum of the
    kernel-memory lines it has (slab, page tables, kernel stacks, percpu)."""
    fields = {}
    for line in data.split(b"\n"):
        name, _, value = line.partition(b" ")
        if value:
            fields[name] = int(value)
    if b"kernel" in fields:
        return fields[b"kernel"]
    return sum(fields.get(k, 0) for k in (b"slab", b"pagetables", b"sec_pagetables",
                                          b"kernel_stack", b"percpu"))


def charge_slack_bytes(page_size: int = 4096, cpus: int | None = None) -> int:
    """How far a kernel-bytes delta may sit from the exact charge, in bytes. O(1).

    The kernel charges slab objects to the cgroup's page counter a page at a time and keeps the
    prepaid rest (under two pages) in a per-CPU stock, and a remainder under one page on the
    cgroup: so a reading is the exact charge plus less than ``2 x CPUs + 1`` pages, and a delta
    of two readings is within that of the exact delta.
    """
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return (2 * n + 1) * page_size
