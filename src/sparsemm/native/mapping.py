"""``Mapping``: one mmap of this process, with guard pages and checked access.

Owns a single mapping and everything done to it: guard install/remove (kernel
guard markers, or a ``PROT_NONE`` fallback with the same observable result),
protection, commit/decommit, checked copies that raise ``GuardFault`` instead of
SIGSEGV, and explicit unchecked views. Builds on ``libc`` and ``procfs``; it
must not touch memory it did not map. The model behind it: ``docs/native.md``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap as _mmap
import operator
import os
import threading
import weakref

from sparsemm import abi
from sparsemm._invariant import InvariantError
from sparsemm._ranges import RangeMap
from sparsemm.native import _scan, libc, procfs

PAGE = abi.PAGE_SIZE
_RW = abi.PROT_READ | abi.PROT_WRITE
_PROT_ALL = abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC
_OFF_MAX = 1 << 63  # off_t
_FD_MAX = 1 << 31  # int

MODES = ("markers", "prot_none")
FAULT_REASONS = ("guard", "protection", "outside")


class GuardFault(OSError):
    """A checked access (or ``commit``) touched a page it may not: errno ``EFAULT``.

    ``access`` is ``"read"``, ``"write"`` or ``"commit"`` for the mapping's own
    pages: ``address`` is the first faulting byte, ``offset`` the same byte
    relative to the mapping. ``access="source"`` means ``write_at``'s ``data``
    buffer could not be read: ``address`` is its first unreadable byte and
    ``offset`` that byte's index in ``data``. ``reason`` is ``"guard"`` (a guard
    page), ``"protection"`` (the page's protection forbids the access) or
    ``"outside"`` (no memory behind the address: unmapped, or past the end of a
    mapped file).
    """

    def __init__(self, address: int, offset: int, reason: str, access: str) -> None:
        if access == "source":
            what = f"source buffer unreadable at its byte {offset:#x}"
        else:
            what = f"{access} fault at offset {offset:#x}"
        super().__init__(errno.EFAULT, f"{what} (address {address:#x}): {_WHY[reason]}")
        self.address = address
        self.offset = offset
        self.reason = reason
        self.access = access

    def __reduce__(self):
        return (type(self), (self.address, self.offset, self.reason, self.access))


_WHY = {
    "guard": "guard page",
    "protection": "the page's protection forbids this access",
    "outside": "no memory behind this address (unmapped, or past the end of the file)",
}


class VmaLimitError(OSError, MemoryError):
    """The process reached ``vm.max_map_count``: the kernel refused another VMA.

    Raised by the ``prot_none`` fallback (each guard in the middle of a mapping
    costs two VMAs), by ``Mapping()`` when the kernel refuses a new mapping at
    the limit, and by ``GuardedHeap`` when it predicts the wall. Both an
    ``OSError`` (errno ``ENOMEM``) and a ``MemoryError``.
    """

    def __init__(self, message: str, *, guards: int = 0, map_count: int = 0,
                 max_map_count: int = 0) -> None:
        super().__init__(errno.ENOMEM, message)
        self.guards = guards
        self.map_count = map_count
        self.max_map_count = max_map_count


def max_map_count() -> int:
    """``/proc/sys/vm/max_map_count`` (``abi.DEFAULT_MAX_MAP_COUNT`` if unreadable)."""
    try:
        return procfs.read_int("/proc/sys/vm/max_map_count")
    except (OSError, ValueError):
        return abi.DEFAULT_MAX_MAP_COUNT


def map_count() -> int:
    """This process's VMA count (``mm_struct::map_count``). O(VMAs) time, O(1) memory:
    safe to call at ``vm.max_map_count``."""
    return procfs.count_vmas()


def vma_limit_message(guards: int, count: int, limit: int, what: str = "this mapping") -> str:
    return (f"VMA limit reached: the process has {count} VMAs and vm.max_map_count is {limit}; "
            f"the prot_none fallback spends up to two VMAs per guard ({what} holds {guards} "
            f"guards). Use guard markers (guard_mode='markers', Linux >= 6.13: any number of "
            f"guards in one VMA) or raise the limit (sysctl -w vm.max_map_count=N).")


def _at_vma_limit() -> tuple[int, int] | None:
    """``(count, limit)`` if the process is at ``vm.max_map_count`` (within a few VMAs
    the interpreter may have freed since the kernel said ENOMEM), else None."""
    count, limit = map_count(), max_map_count()
    return (count, limit) if count + 8 >= limit else None


def _markers_available(file_backed: bool) -> bool:
    from sparsemm.native.probe import features

    feats = features()
    return feats.guard_regions and (feats.file_guards or not file_backed)


def _resolve_mode(guard_mode: str, file_backed: bool) -> str:
    """The guard mode a mapping (or heap) asking for ``guard_mode`` gets on this kernel."""
    if guard_mode == "prot_none":
        return "prot_none"
    if guard_mode not in ("auto", "markers"):
        raise ValueError(f"guard_mode must be 'auto', 'markers' or 'prot_none', got {guard_mode!r}")
    if _markers_available(file_backed):
        return "markers"
    if guard_mode == "markers":
        what = "shared/file-backed mappings (Linux >= 6.15)" if file_backed else "Linux >= 6.13"
        raise OSError(errno.EOPNOTSUPP,
                      f"guard_mode='markers' needs MADV_GUARD_INSTALL on {what}; this kernel "
                      f"lacks it. Use guard_mode='auto' or 'prot_none' (one VMA per guard).")
    return "prot_none"


def _parse_prot(prot: str | int) -> int:
    if isinstance(prot, str):
        return abi.parse_prot(prot)
    value = operator.index(prot)
    if value & ~_PROT_ALL or value < 0:
        raise ValueError(f"bad prot {prot!r}: use PROT_READ|PROT_WRITE|PROT_EXEC bits or 'rwx' letters")
    return value


def _prot_str(prot: int) -> str:
    return abi.prot_to_perms(prot, False)[:3]


def _file_descriptor(file: object) -> int:
    """-1 for anonymous memory, else the descriptor of ``file`` (an int or ``fileno()``)."""
    if file is None:
        return -1
    if isinstance(file, bool):
        raise TypeError("file must be a file object or a descriptor, got bool")
    if isinstance(file, int):
        fd = operator.index(file)
    else:
        fileno = getattr(file, "fileno", None)
        if fileno is None:
            raise TypeError(f"file must be a file object or a descriptor, got {type(file).__name__}")
        fd = operator.index(fileno())
    if not 0 <= fd < _FD_MAX:
        raise ValueError(f"bad file descriptor {fd}")
    return fd


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_GetBuffer.restype = ctypes.c_int
_ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
_ReleaseBuffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_ReleaseBuffer.restype = None
_PyBUF_SIMPLE = 0


def buffer_address(obj: object) -> int:
    """The address of ``obj``'s buffer (read-only buffers too), released again at once."""
    view = _PyBuffer()
    _GetBuffer(obj, ctypes.byref(view), _PyBUF_SIMPLE)  # raises on failure
    try:
        return view.buf or 0
    finally:
        _ReleaseBuffer(ctypes.byref(view))


@functools.lru_cache(maxsize=64)
def _readonly_bytes_type(n: int) -> type:
    """A ctypes byte array type that can hold a reference (for read-only mappings,
    which ``from_buffer`` refuses)."""
    return type("_ReadOnlyBytes", (ctypes.c_ubyte * n,), {"__slots__": ("_keep",)})


# -- fork ------------------------------------------------------------------------------
# A fork waits until no other thread is inside a Mapping method (each holds its
# _lock), so the child gets consistent records and unlocked locks, as glibc does
# for malloc. GuardedHeap's handlers (registered later, so run earlier) take the
# heap locks first: a heap holds its lock while it calls its chunks' methods.
_LIVE: "weakref.WeakSet[Mapping]" = weakref.WeakSet()
_live_lock = threading.Lock()
_held_at_fork: list = []


def _live_snapshot() -> list:
    """The live mappings, without ``_live_lock`` (a concurrent add may interrupt a copy)."""
    for _ in range(8):
        try:
            return list(_LIVE)
        except RuntimeError:
            continue
    return []


def _before_fork() -> None:
    _live_lock.acquire()
    for m in list(_LIVE):
        m._lock.acquire()
        _held_at_fork.append(m)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop()._lock.release()
    _live_lock.release()


def _after_fork_in_child() -> None:
    global _live_lock
    for m in _held_at_fork:
        m._lock = threading.RLock()
    _held_at_fork.clear()
    _live_lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class Mapping:
    """One memory mapping of this process, with guard pages and checked access.

    ``Mapping(length, prot="rw", *, shared=False, file=None, offset=0,
    guard_mode="auto")`` maps ``length`` bytes (a page multiple): private
    anonymous memory by default, ``MAP_SHARED`` with ``shared=True``, a file
    (object or descriptor, from byte ``offset``) with ``file=``.
    ``Mapping.reserve(length)`` maps address space only.

    Not an ``mmap.mmap``: no file position, no indexing, no raw methods. Every
    method checks its arguments (``ValueError``/``TypeError`` before any system
    call; ``ValueError`` after ``close()``) and never crashes the interpreter:
    ``read_at``/``write_at`` copy through the kernel and raise ``GuardFault``.
    ``unchecked_view()`` is the one way to the raw memory (buffer protocol,
    numpy), where touching a guard page is a real SIGSEGV.

    Offsets and lengths are bytes from the start of the mapping; page
    operations (``guard``, ``unguard``, ``protect``, ``commit``, ``decommit``)
    want page multiples. Methods are thread-safe.
    """

    # State, changed only under _lock (checked by _check()):
    #   _mm       the stdlib mmap that owns the pages: it unmaps them when closed or
    #             collected, and refuses to close while an unchecked view exports them.
    #   _base     None, or a cached memoryview of _mm that exports are made from.
    #   _prot     RangeMap page -> protection set by protect(), covering every page;
    #             with prot_none guards, the protection unguard() restores.
    #   _guarded  RangeMap page -> True: the fallback's guard record (always empty with
    #             markers, where the page tables are the record).
    __slots__ = ("_mm", "_base", "_writable", "_addr", "_length", "_shared", "_file_backed", "_mode",
                 "_prot", "_guarded", "_lock", "__weakref__")

    def __init__(self, length: int, prot: str | int = "rw", *, shared: bool = False,
                 file: object = None, offset: int = 0, guard_mode: str = "auto") -> None:
        self._map(length, prot, shared, file, offset, guard_mode, noreserve=False)

    @classmethod
    def reserve(cls, length: int, *, guard_mode: str = "auto") -> "Mapping":
        """Address space only: ``PROT_NONE``, ``MAP_NORESERVE``, no commit charge.

        ``protect()`` makes parts usable; pages are only allocated when touched
        (or ``commit()``-ed).
        """
        self = cls.__new__(cls)
        self._map(length, "none", False, None, 0, guard_mode, noreserve=True)
        return self

    def _map(self, length, prot, shared, file, offset, guard_mode, *, noreserve) -> None:
        if hasattr(self, "_mm"):
            raise TypeError("this Mapping is already mapped")
        length = operator.index(length)
        offset = operator.index(offset)
        if not 0 < length <= abi.TASK_SIZE:
            raise ValueError(f"length must be between 1 and {abi.TASK_SIZE:#x} bytes, got {length}")
        if length % PAGE:
            raise ValueError(f"length {length:#x} is not a multiple of the page size ({PAGE} bytes)")
        if not 0 <= offset < _OFF_MAX or offset % PAGE:
            raise ValueError(f"offset {offset:#x} must be >= 0, below 2**63 and a multiple of the "
                             f"page size ({PAGE} bytes)")
        if offset and file is None:
            raise ValueError("offset is only meaningful with file=")
        prot_bits = _parse_prot(prot)
        fd = _file_descriptor(file)
        file_backed = fd >= 0
        shared = bool(shared)
        mode = _resolve_mode(guard_mode, file_backed or shared)
        flags = _mmap.MAP_SHARED if shared else _mmap.MAP_PRIVATE
        if noreserve:
            flags |= abi.MapFlag.NORESERVE
        # Mapped read-write so the stdlib mmap exports a writable buffer (it derives
        # that from the creation prot); the real prot is set right after.
        created = _RW
        try:
            try:
                mm = _mmap.mmap(fd, length, flags=flags, prot=_RW, offset=offset)
            except PermissionError:
                if not file_backed or prot_bits & abi.PROT_WRITE:
                    raise
                created = abi.PROT_READ  # a read-only file: map it read-only
                mm = _mmap.mmap(fd, length, flags=flags, prot=created, offset=offset)
        except OSError as exc:
            if exc.errno == errno.ENOMEM and (wall := _at_vma_limit()):
                raise VmaLimitError(f"cannot map {length} bytes: " + vma_limit_message(
                    0, *wall, what="the new mapping"), map_count=wall[0],
                    max_map_count=wall[1]) from exc
            raise
        self._mm = mm
        self._base = None
        self._writable = created == _RW
        self._addr = buffer_address(mm)
        self._length = length
        self._shared = shared
        self._file_backed = file_backed
        self._mode = mode
        self._prot = RangeMap()
        self._prot.assign(0, length // PAGE, created)
        self._guarded = RangeMap()
        self._lock = threading.RLock()
        if prot_bits != created:
            try:
                libc.mprotect(self._addr, length, prot_bits)
            except BaseException:
                mm.close()
                raise
            self._prot.assign(0, length // PAGE, prot_bits)
        with _live_lock:
            _LIVE.add(self)

    # -- properties -------------------------------------------------------

    @property
    def address(self) -> int:
        """Start address (bytes); stays readable after close for error messages."""
        return self._addr

    @property
    def length(self) -> int:
        """Length in bytes (a page multiple)."""
        return self._length

    def __len__(self) -> int:
        return self._length

    @property
    def mode(self) -> str:
        """``"markers"`` (MADV_GUARD_INSTALL) or ``"prot_none"`` (the fallback)."""
        return self._mode

    @property
    def shared(self) -> bool:
        return self._shared

    @property
    def closed(self) -> bool:
        return self._mm.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._addr:#x}"
        return (f"<Mapping {state} {self._length // PAGE} pages "
                f"{'shared' if self._shared else 'private'} guards={self._mode}>")

    def __enter__(self) -> "Mapping":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError("a Mapping cannot be copied or pickled: it is this process's memory")

    def close(self) -> None:
        """Unmap. Idempotent. All or nothing: ``BufferError`` (and the mapping stays
        open and usable) while an unchecked view, or a slice or array over one, lives."""
        with self._lock:
            if self._base is not None:
                self._base.release()  # our cache; the views made from it still export _mm
                self._base = None
            try:
                self._mm.close()  # no-op when closed
            except BufferError:
                raise BufferError("cannot close the mapping: an unchecked view (or a slice or "
                                  "array over one) still uses it; release or drop it first") from None
            self._guarded = RangeMap()
        with _live_lock:
            _LIVE.discard(self)

    # -- argument checks (all before any system call) ---------------------

    def _open(self) -> None:
        if self._mm.closed:
            raise ValueError("mapping is closed")

    def _range(self, offset: int, length: int, *, pages: bool = True) -> tuple[int, int]:
        """Validate a byte range; for page operations return it as pages."""
        self._open()
        offset = operator.index(offset)
        length = operator.index(length)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if length < 0 or (pages and length == 0):
            raise ValueError(f"length must be {'> 0' if pages else '>= 0'}, got {length}")
        if pages:
            if offset % PAGE:
                raise ValueError(f"offset {offset:#x} is not a multiple of the page size ({PAGE} bytes)")
            if length % PAGE:
                raise ValueError(f"length {length:#x} is not a multiple of the page size ({PAGE} bytes)")
        if offset + length > self._length:
            raise ValueError(f"range offset {offset:#x} + length {length:#x} extends past the end "
                             f"of the mapping ({self._length:#x} bytes)")
        return offset // PAGE, (offset + length) // PAGE

    # -- guards -----------------------------------------------------------

    def guard(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` guard pages: any access faults.

        Discards the contents exactly like the kernel's ``MADV_GUARD_INSTALL``
        (which zaps the range): private pages read back as zeros (anonymous) or
        as the file (private file) after ``unguard``; shared pages keep their
        data in the file/shmem object. The fallback does the same with
        ``mprotect(PROT_NONE)`` + ``MADV_DONTNEED``. Both refuse (EINVAL) on
        mlocked mappings. O(1) syscalls with markers (which fill page tables
        over the range: 8 bytes per page); O(runs in range) with the fallback.
        """
        lo, hi = self._range(offset, length)
        with self._lock:
            self._open()
            addr, nbytes = self._addr + lo * PAGE, (hi - lo) * PAGE
            if self._mode == "markers":
                try:
                    libc.madvise(addr, nbytes, abi.MADV_GUARD_INSTALL)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        raise OSError(errno.EINVAL, "MADV_GUARD_INSTALL refused: guard markers cannot "
                                      "be installed on mlocked (VM_LOCKED), hugetlb or PFN/IO "
                                      "mappings") from exc
                    raise
                return
            # mm/mprotect.c: do_mprotect_pkey() then mm/madvise.c: madvise_dontneed_free()
            try:
                self._mprotect(lo, hi, abi.PROT_NONE)
            except OSError:
                self._apply_effective(lo, hi, quiet=True)  # a multi-VMA range may be half done
                raise
            try:
                libc.madvise(addr, nbytes, abi.Madv.DONTNEED)
            except OSError as exc:
                self._apply_effective(lo, hi, quiet=True)  # put back what we changed
                if exc.errno == errno.EINVAL:
                    raise OSError(errno.EINVAL, "guard refused: the prot_none fallback discards the "
                                  "range with MADV_DONTNEED, which the kernel refuses on mlocked "
                                  "mappings (the same rule as guard markers)") from exc
                raise
            self._guarded.assign(lo, hi, True)

    def unguard(self, offset: int, length: int) -> None:
        """Remove guards in the range (``MADV_GUARD_REMOVE``); other pages are untouched.

        Fallback: restores each page's protection as ``protect()`` last set it.
        Contents are not restored (``guard`` discarded them).
        """
        lo, hi = self._range(offset, length)
        with self._lock:
            self._open()
            if self._mode == "markers":
                libc.madvise(self._addr + lo * PAGE, (hi - lo) * PAGE, abi.MADV_GUARD_REMOVE)
                return
            guarded = [(s, e) for s, e, _ in self._guarded.items(lo, hi)]
            for s, e in guarded:
                self._guarded.clear(s, e)
                try:
                    self._apply_effective(s, e)
                except OSError:
                    self._guarded.assign(s, e, True)
                    self._mprotect(s, e, abi.PROT_NONE, quiet=True)
                    raise

    def guards(self) -> list[tuple[int, int]]:
        """Guarded ``(offset, length)`` byte ranges, touching ones merged, in order.

        Markers: from the page tables (PAGEMAP_SCAN ``PAGE_IS_GUARD``, or pagemap
        bit 58). Fallback: from the record. O(guard runs) (+ populated tables).
        """
        with self._lock:
            self._open()
            if self._mode == "markers":
                return [(s - self._addr, e - s) for s, e in
                        _scan.ranges_with(self._addr, self._length, abi.PAGE_IS_GUARD)]
            return [(s * PAGE, (e - s) * PAGE) for s, e in self._guarded.spans()]

    def is_guarded(self, offset: int) -> bool:
        """Whether the page holding byte ``offset`` is a guard page. O(log runs)."""
        self._range(offset, 1, pages=False)
        with self._lock:
            self._open()
            return self._page_guarded(offset // PAGE)

    def _page_guarded(self, page: int) -> bool:
        if self._mode == "markers":
            return bool(_scan.ranges_with(self._addr + page * PAGE, PAGE, abi.PAGE_IS_GUARD))
        return self._guarded.get(page) is not None

    # -- protection, commit ---------------------------------------------------

    def protect(self, offset: int, length: int, prot: str | int) -> None:
        """``mprotect`` the range. Guards stay guards (as markers do); the fallback
        records ``prot`` for its guard pages and applies it on ``unguard``."""
        lo, hi = self._range(offset, length)
        bits = _parse_prot(prot)
        with self._lock:
            self._open()
            if self._mode == "markers" or not len(self._guarded):
                self._mprotect(lo, hi, bits)
            else:
                for s, e in self._unguarded_spans(lo, hi):
                    self._mprotect(s, e, bits)
                    self._prot.assign(s, e, bits)  # keep the record true if a later span fails
            self._prot.assign(lo, hi, bits)

    def protections(self) -> list[tuple[int, int, str]]:
        """``(offset, length, "rw-")`` runs of the protection set by ``protect()``
        (the one guard pages return to on ``unguard``)."""
        with self._lock:
            self._open()
            return [(s * PAGE, (e - s) * PAGE, _prot_str(v))  # type: ignore[arg-type]
                    for s, e, v in self._prot.items(0, self._length // PAGE)]

    def decommit(self, offset: int, length: int) -> None:
        """``MADV_DONTNEED``: drop the pages (private anonymous ones read back as zeros).
        Guards survive it in both modes."""
        lo, hi = self._range(offset, length)
        with self._lock:
            self._open()
            libc.madvise(self._addr + lo * PAGE, (hi - lo) * PAGE, abi.Madv.DONTNEED)

    def commit(self, offset: int, length: int) -> None:
        """``MADV_POPULATE_WRITE``: allocate the pages now (they must be writable).

        Raises ``GuardFault`` at the first guard page (``reason="guard"``) or
        non-writable page (``"protection"``); pages before it are populated.
        """
        lo, hi = self._range(offset, length)
        with self._lock:
            self._open()
            if self._mode == "prot_none":
                # Our PROT_NONE guards would make the kernel say EINVAL; find them first.
                bad = self._first_problem(lo, hi)
                if bad is not None:
                    if bad[0] > lo:
                        libc.madvise(self._addr + lo * PAGE, (bad[0] - lo) * PAGE,
                                     abi.Madv.POPULATE_WRITE)
                    raise GuardFault(self._addr + bad[0] * PAGE, bad[0] * PAGE, bad[1], "commit")
            try:
                libc.madvise(self._addr + lo * PAGE, (hi - lo) * PAGE, abi.Madv.POPULATE_WRITE)
            except OSError as exc:
                if exc.errno not in (errno.EFAULT, errno.EINVAL):
                    raise
                bad = self._first_problem(lo, hi)
                if bad is None:
                    raise
                raise GuardFault(self._addr + bad[0] * PAGE, bad[0] * PAGE, bad[1], "commit") from exc

    def _first_problem(self, lo: int, hi: int) -> tuple[int, str] | None:
        """The first page in ``[lo, hi)`` that commit cannot populate, and why."""
        first_guard = None
        if self._mode == "markers":
            runs = _scan.ranges_with(self._addr + lo * PAGE, (hi - lo) * PAGE, abi.PAGE_IS_GUARD)
            if runs:
                first_guard = (runs[0][0] - self._addr) // PAGE
        else:
            for s, _, _ in self._guarded.items(lo, hi):
                first_guard = s
                break
        first_ro = None
        for s, _, v in self._prot.items(lo, hi):
            if not v & abi.PROT_WRITE:  # type: ignore[operator]
                first_ro = s
                break
        if first_guard is not None and (first_ro is None or first_guard <= first_ro):
            return first_guard, "guard"
        if first_ro is not None:
            return first_ro, "protection"
        return None

    def resident(self) -> int:
        """Bytes of the mapping present in this process's page tables (pagemap bit 63)."""
        with self._lock:
            self._open()
            return sum(e - s for s, e in
                       _scan.ranges_with(self._addr, self._length, abi.PAGE_IS_PRESENT))

    # -- checked access ---------------------------------------------------

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset``, copied by the kernel (``process_vm_readv`` on ourselves).

        Never faults the interpreter: raises ``GuardFault`` naming the first
        byte that could not be read. Allocates ``n`` bytes for the result. O(n).
        """
        self._range(offset, n, pages=False)
        with self._lock:
            self._open()
            if n == 0:
                return b""
            addr = self._addr + offset
            try:
                data = libc.process_vm_readv(os.getpid(), addr, n)
            except OSError as exc:
                if exc.errno != errno.EFAULT:
                    raise
                data = b""
            if len(data) < n:
                raise self._fault(addr + len(data), write=False)
            return data

    def write_at(self, offset: int, data) -> int:
        """Write the bytes-like ``data`` at ``offset``; returns ``len(data)`` in bytes.

        The kernel copies straight from ``data``'s buffer (``process_vm_writev``),
        so neither side can fault the interpreter: ``GuardFault`` names the
        first byte that could not be written (the bytes before it were written,
        as a CPU store loop would have), or with ``access="source"`` the first
        byte of ``data`` that could not be read (``data`` may itself be an
        unchecked view over a guard page). ``data`` must be C-contiguous. O(n).
        """
        src = _PyBuffer()
        _GetBuffer(data, ctypes.byref(src), _PyBUF_SIMPLE)  # TypeError/BufferError; pins data
        try:
            n = src.len
            self._range(offset, n, pages=False)
            with self._lock:
                self._open()
                if n == 0:
                    return 0
                addr = self._addr + offset
                try:
                    done = libc.process_vm_writev_from(os.getpid(), addr, src.buf, n)
                except OSError as exc:
                    if exc.errno != errno.EFAULT:
                        raise
                    done = 0
                if done < n:
                    if not _readable(src.buf + done):
                        raise GuardFault(src.buf + done, done, _classify_foreign(src.buf + done),
                                         "source")
                    raise self._fault(addr + done, write=True)
                return done
        finally:
            _ReleaseBuffer(ctypes.byref(src))

    def _fault(self, addr: int, *, write: bool) -> GuardFault:
        """Classify the fault at byte ``addr``: guard, protection, or outside."""
        access = "write" if write else "read"
        offset = addr - self._addr
        if not 0 <= offset < self._length:
            return GuardFault(addr, offset, "outside", access)
        page = offset // PAGE
        if self._page_guarded(page):
            return GuardFault(addr, offset, "guard", access)
        need = abi.PROT_WRITE if write else abi.PROT_READ
        if not self._prot.get(page, 0) & need:  # type: ignore[operator]
            return GuardFault(addr, offset, "protection", access)
        # Our record allows it: ask the kernel's view (someone may have changed it behind us).
        vma = procfs.vma_at(addr)
        if vma is not None and vma[2][1 if write else 0] == "-":
            return GuardFault(addr, offset, "protection", access)
        return GuardFault(addr, offset, "outside", access)

    # -- unchecked access ---------------------------------------------------

    def unchecked_view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A ``memoryview`` (format ``"B"``) of ``[offset, offset+length)``: the raw memory.

        **Unchecked**: reading or writing a guard page or a forbidden page
        through it (or through ``numpy.frombuffer`` over it) is a real SIGSEGV
        that kills the interpreter, as in C. Writable unless the mapping is a
        read-only file. While it (or any slice or array over it) lives,
        ``close()`` raises ``BufferError``. O(1).
        """
        if length is None:
            self._range(offset, 0, pages=False)
            length = self._length - offset
        self._range(offset, length, pages=False)
        with self._lock:
            self._open()
            view = memoryview(self._export(offset, length))
            return (view if self._writable else view.toreadonly()).cast("B")

    def _export(self, offset: int, n: int):
        """A ctypes byte array over ``n`` bytes at ``offset`` that holds an export of
        the mapping: the mapping cannot be unmapped while it (or a view of it)
        lives. Weak-referenceable, so owners can tell when every view is gone.
        Caller holds ``_lock``, or owns the mapping outright (GuardedHeap's chunks,
        used only under the heap's lock)."""
        if self._writable:
            if self._base is None:
                self._base = memoryview(self._mm)
            return (ctypes.c_ubyte * n).from_buffer(self._base, offset)
        arr = _readonly_bytes_type(n).from_address(self._addr + offset)
        arr._keep = memoryview(self._mm)  # the export (read-only mmaps refuse from_buffer)
        return arr

    # -- fallback internals (caller holds _lock) ----------------------------

    def _mprotect(self, lo: int, hi: int, prot: int, *, quiet: bool = False) -> None:
        try:
            libc.mprotect(self._addr + lo * PAGE, (hi - lo) * PAGE, prot)
        except OSError as exc:
            if quiet:
                return
            # ENOMEM on our own, fully mapped range: the kernel refused a VMA split.
            # Counting must not allocate: at the limit the interpreter cannot map more.
            if exc.errno == errno.ENOMEM and (wall := _at_vma_limit()):
                guards = len(self._guarded)  # runs; touching guard runs are merged
                raise VmaLimitError(vma_limit_message(guards, *wall), guards=guards,
                                    map_count=wall[0], max_map_count=wall[1]) from exc
            raise

    def _unguarded_spans(self, lo: int, hi: int) -> list[tuple[int, int]]:
        out, pos = [], lo
        for s, e, _ in self._guarded.items(lo, hi):
            if s > pos:
                out.append((pos, s))
            pos = e
        if pos < hi:
            out.append((pos, hi))
        return out

    def _apply_effective(self, lo: int, hi: int, *, quiet: bool = False) -> None:
        """mprotect ``[lo, hi)`` to what it should be: PROT_NONE on guards, else ``_prot``."""
        for s, e in self._unguarded_spans(lo, hi):
            for ps, pe, v in self._prot.items(s, e):
                self._mprotect(ps, pe, v, quiet=quiet)  # type: ignore[arg-type]
        for s, e, _ in self._guarded.items(lo, hi):
            self._mprotect(s, e, abi.PROT_NONE, quiet=quiet)

    def _check(self) -> None:
        """Invariants (tests call this after every step); ``InvariantError`` if broken."""
        self._prot.check()
        self._guarded.check()
        if not self.closed:
            covered = sum(e - s for s, e, _ in self._prot.items(0, self._length // PAGE))
            if covered != self._length // PAGE:
                raise InvariantError(f"Mapping: protection record covers {covered} of "
                                     f"{self._length // PAGE} pages")
        if self._mode == "markers" and len(self._guarded):
            raise InvariantError("Mapping: marker mode keeps no guard record")


def _readable(addr: int) -> bool:
    """Whether one byte at ``addr`` of this process can be read (checked, no fault)."""
    try:
        return len(libc.process_vm_readv(os.getpid(), addr, 1)) == 1
    except OSError:
        return False


def _classify_foreign(addr: int) -> str:
    """Why byte ``addr`` (not necessarily ours) cannot be read: guard, protection, outside."""
    page = addr - addr % PAGE
    try:
        if _scan.ranges_with(page, PAGE, abi.PAGE_IS_GUARD):
            return "guard"
    except OSError:
        pass
    # A fallback guard of another Mapping? Read without locks (taking them could
    # deadlock against a copy in the other direction, or a fork); a racing change
    # only changes the reason given.
    for m in _live_snapshot():
        if m._mode == "prot_none" and m._addr <= addr < m._addr + m._length:
            if m._guarded.get((addr - m._addr) // PAGE) is not None:
                return "guard"
    vma = procfs.vma_at(addr)
    if vma is None:
        return "outside"
    return "protection" if vma[2][0] == "-" else "outside"
