"""``Mapping``: one mmap with guard pages, checked access and the buffer protocol.

Owns a single mapping of this process and everything done to it: guard
install/remove (kernel guard markers, or a ``PROT_NONE`` fallback with the same
observable result), protection, commit/decommit, checked reads and writes that
raise ``GuardFault`` instead of SIGSEGV. Builds on ``libc`` and ``procfs``; it
must not touch memory it did not map. The model behind it: ``docs/native.md``.
"""

from __future__ import annotations

import ctypes
import errno
import io
import mmap as _mmap
import operator
import os
import threading
import weakref

from sparsemm import abi
from sparsemm.native import _scan, libc
from sparsemm._invariant import InvariantError
from sparsemm._ranges import RangeMap

PAGE = abi.PAGE_SIZE
_RW = abi.PROT_READ | abi.PROT_WRITE
_PROT_ALL = abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC

MODES = ("markers", "prot_none")
FAULT_REASONS = ("guard", "protection", "outside")


class GuardFault(OSError):
    """A checked access (or ``commit``) touched a page it may not: errno ``EFAULT``.

    ``address`` is the first faulting byte address, ``offset`` the same byte
    relative to the mapping, ``reason`` one of ``"guard"`` (a guard page),
    ``"protection"`` (the page's protection forbids the access) or ``"outside"``
    (no memory behind the address: unmapped, or past the end of a mapped file).
    """

    def __init__(self, address: int, offset: int, reason: str, access: str) -> None:
        super().__init__(errno.EFAULT,
                         f"{access} fault at offset {offset:#x} (address {address:#x}): {_WHY[reason]}")
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
    """The process reached ``vm.max_map_count``: the kernel refused another VMA split.

    Raised by the ``prot_none`` fallback (each guard in the middle of a mapping
    costs two VMAs) and by ``GuardedHeap`` when it predicts the wall. Both an
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
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return abi.DEFAULT_MAX_MAP_COUNT


def map_count() -> int:
    """This process's VMA count (``mm_struct::map_count``): lines of ``/proc/self/maps``. O(VMAs)."""
    with open("/proc/self/maps", "rb") as fh:
        return fh.read().count(b"\n")


def vma_limit_message(guards: int, count: int, limit: int, what: str = "this mapping") -> str:
    return (f"VMA limit reached: the process has {count} VMAs and vm.max_map_count is {limit}; "
            f"the prot_none fallback spends up to two VMAs per guard ({what} holds {guards} "
            f"guards). Use guard markers (guard_mode='markers', Linux >= 6.13: any number of "
            f"guards in one VMA) or raise the limit (sysctl -w vm.max_map_count=N).")


def _markers_available(file_backed: bool) -> bool:
    from sparsemm.native.probe import features

    feats = features()
    return feats.guard_regions and (feats.file_guards or not file_backed)


def _parse_prot(prot: str | int) -> int:
    if isinstance(prot, str):
        return abi.parse_prot(prot)
    value = operator.index(prot)
    if value & ~_PROT_ALL or value < 0:
        raise ValueError(f"bad prot {prot!r}: use PROT_READ|PROT_WRITE|PROT_EXEC bits or 'rwx' letters")
    return value


def _prot_str(prot: int) -> str:
    return abi.prot_to_perms(prot, False)[:3]


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


def buffer_address(obj: object) -> int:
    """The address of ``obj``'s buffer (read-only buffers too), released again at once."""
    view = _PyBuffer()
    _GetBuffer(obj, ctypes.byref(view), 0)  # PyBUF_SIMPLE; raises on failure
    try:
        return view.buf or 0
    finally:
        _ReleaseBuffer(ctypes.byref(view))


# Locks held across os.fork() by another thread would stay locked in the child.
_LIVE: "weakref.WeakSet[Mapping]" = weakref.WeakSet()


def _reinit_locks_after_fork() -> None:
    for m in list(_LIVE):
        m._lock = threading.RLock()


os.register_at_fork(after_in_child=_reinit_locks_after_fork)


class Mapping(_mmap.mmap):
    """One ``mmap`` of this process, with guard pages and checked access.

    A subclass of ``mmap.mmap`` for its buffer protocol: ``memoryview(m)``
    and ``numpy.frombuffer(m, dtype=np.uint8)`` see the mapping directly
    (unchecked: touching a guard through them is a real SIGSEGV), ``close()``
    with exported buffers raises ``BufferError``, use after close
    ``ValueError``. The inherited stream methods (``seek``, ``find``,
    ``read_byte``...) are unchecked too; ``read``/``write`` are replaced by the
    checked ``read(offset, n)``/``write(offset, data)``.

    All offsets and lengths are bytes relative to the start of the mapping; the
    page operations want page multiples. Every method that changes state holds
    ``_lock`` (an ``RLock``), as do the checked accessors, so a concurrent
    ``close()`` cannot unmap under them.

    State (invariants, checked by ``_check()``):
      ``_prot``: RangeMap page -> intended protection, covering every page. With
        ``prot_none`` guards it is the protection ``unguard`` restores.
      ``_guarded``: RangeMap page -> True, the fallback's guard record (always
        empty in ``markers`` mode, where the page tables are the record).
    """

    # mmap.mmap instances have no __dict__ unless a subclass asks for one.
    __slots__ = ("_addr", "_length", "_shared", "_file_backed", "_mode", "_prot", "_guarded",
                 "_lock")

    def __new__(cls, length: int, prot: str | int = "rw", *, shared: bool = False,
                file: object = None, offset: int = 0, guard_mode: str = "auto") -> "Mapping":
        return cls._create(length, prot, shared, file, offset, guard_mode, noreserve=False)

    @classmethod
    def reserve(cls, length: int, *, guard_mode: str = "auto") -> "Mapping":
        """Address space only: ``PROT_NONE``, ``MAP_NORESERVE``, no commit charge.

        ``protect()`` makes parts usable; pages are only allocated when touched
        (or ``commit()``-ed).
        """
        return cls._create(length, "none", False, None, 0, guard_mode, noreserve=True)

    @classmethod
    def _create(cls, length, prot, shared, file, offset, guard_mode, *, noreserve) -> "Mapping":
        length = operator.index(length)
        offset = operator.index(offset)
        if not 0 < length <= abi.TASK_SIZE:
            raise ValueError(f"length must be between 1 and {abi.TASK_SIZE:#x} bytes, got {length}")
        if length % PAGE:
            raise ValueError(f"length {length:#x} is not a multiple of the page size ({PAGE} bytes)")
        if offset < 0 or offset % PAGE:
            raise ValueError(f"offset {offset:#x} must be >= 0 and a multiple of the page size "
                             f"({PAGE} bytes)")
        if offset and file is None:
            raise ValueError("offset is only meaningful with file=")
        prot_bits = _parse_prot(prot)
        fd = -1
        if file is not None:
            fd = file if isinstance(file, int) else file.fileno()
            if fd < 0:
                raise ValueError(f"bad file descriptor {fd}")
        file_backed = fd >= 0
        mode = cls._resolve_mode(guard_mode, file_backed or shared)
        flags = (_mmap.MAP_SHARED if shared else _mmap.MAP_PRIVATE)
        if noreserve:
            flags |= abi.MapFlag.NORESERVE
        # Created read-write so the buffer is writable (stdlib mmap derives its
        # buffer's read-only flag from the creation prot); then set the real prot.
        try:
            self = super().__new__(cls, fd, length, flags=flags, prot=_RW, offset=offset)
        except PermissionError:
            if not file_backed or prot_bits & abi.PROT_WRITE:
                raise
            self = super().__new__(cls, fd, length, flags=flags, prot=prot_bits or abi.PROT_READ,
                                   offset=offset)
        self._addr = buffer_address(self)
        self._length = length
        self._shared = shared
        self._file_backed = file_backed
        self._mode = mode
        self._prot = RangeMap()
        self._prot.assign(0, length // PAGE, _RW)
        self._guarded = RangeMap()
        self._lock = threading.RLock()
        if prot_bits != _RW:
            try:
                libc.mprotect(self._addr, length, prot_bits)
            except BaseException:
                _mmap.mmap.close(self)
                raise
            self._prot.assign(0, length // PAGE, prot_bits)
        _LIVE.add(self)
        return self

    @staticmethod
    def _resolve_mode(guard_mode: str, file_backed: bool) -> str:
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

    # -- properties -------------------------------------------------------

    @property
    def address(self) -> int:
        """Start address (bytes); stays readable after close for error messages."""
        return self._addr

    @property
    def length(self) -> int:
        return self._length

    @property
    def mode(self) -> str:
        """``"markers"`` (MADV_GUARD_INSTALL) or ``"prot_none"`` (the fallback)."""
        return self._mode

    @property
    def shared(self) -> bool:
        return self._shared

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._addr:#x}"
        return (f"<Mapping {state} {self._length // PAGE} pages "
                f"{'shared' if self._shared else 'private'} guards={self._mode}>")

    def __enter__(self) -> "Mapping":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resize(self, newsize: int) -> None:
        raise io.UnsupportedOperation("a Mapping cannot be resized (its guard records are per page)")

    def close(self) -> None:
        """Unmap. ``BufferError`` while buffers (memoryviews, numpy arrays) are exported."""
        with self._lock:
            _mmap.mmap.close(self)  # raises BufferError with exports, no-op when closed
            self._guarded = RangeMap()
            _LIVE.discard(self)

    # -- argument checks (all before any system call) ---------------------

    def _open(self) -> None:
        if self.closed:
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
        mlocked mappings. O(1) syscalls with markers; O(runs in range) fallback.
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
                self._apply_effective(lo, hi)  # put back what we changed
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

    def read(self, offset: int, n: int) -> bytes:  # type: ignore[override]
        """``n`` bytes at ``offset`` via ``process_vm_readv`` on ourselves.

        Never faults the interpreter: raises ``GuardFault`` naming the first
        byte that could not be read. O(n).
        """
        lo, _ = self._range(offset, n, pages=False)
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

    def write(self, offset: int, data: bytes) -> int:  # type: ignore[override]
        """Write ``data`` at ``offset`` via ``process_vm_writev``; returns ``len(data)``.

        Raises ``GuardFault`` at the first byte that could not be written (the
        bytes before it were written, as a CPU store loop would have).
        """
        data = memoryview(data).tobytes()  # any bytes-like object; TypeError for an int
        self._range(offset, len(data), pages=False)
        with self._lock:
            self._open()
            if not data:
                return 0
            addr = self._addr + offset
            try:
                done = libc.process_vm_writev(os.getpid(), addr, data)
            except OSError as exc:
                if exc.errno != errno.EFAULT:
                    raise
                done = 0
            if done < len(data):
                raise self._fault(addr + done, write=True)
            return done

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
        page_addr = addr - addr % PAGE
        with open("/proc/self/maps", encoding="ascii", errors="replace") as fh:
            for line in fh:
                rng, perms = line.split(None, 2)[:2]
                start_s, _, end_s = rng.partition("-")
                if int(start_s, 16) <= page_addr < int(end_s, 16):
                    if perms[1 if write else 0] == "-":
                        return GuardFault(addr, offset, "protection", access)
                    break
        return GuardFault(addr, offset, "outside", access)

    # -- fallback internals (caller holds _lock) ----------------------------

    def _mprotect(self, lo: int, hi: int, prot: int, *, quiet: bool = False) -> None:
        try:
            libc.mprotect(self._addr + lo * PAGE, (hi - lo) * PAGE, prot)
        except OSError as exc:
            if quiet:
                return
            if exc.errno == errno.ENOMEM:
                limit, count = max_map_count(), map_count()
                if count >= limit - 2:
                    raise VmaLimitError(vma_limit_message(len(self._guarded.spans()), count, limit),
                                        guards=len(self._guarded.spans()), map_count=count,
                                        max_map_count=limit) from exc
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
        """Invariants (tests call this after every step)."""
        self._prot.check()
        self._guarded.check()
        if not self.closed:
            covered = sum(e - s for s, e, _ in self._prot.items(0, self._length // PAGE))
            if covered != self._length // PAGE:
                raise InvariantError(f"Mapping: protection records cover {covered} of "
                                     f"{self._length // PAGE} pages")
        if self._mode == "markers" and len(self._guarded):
            raise InvariantError("Mapping: fallback guard records in markers mode")
