"""``GuardedHeap``: a guarded allocator (PartitionAlloc / GWP-ASan style) on ``Mapping``.

Owns its chunks (``Mapping.reserve`` + one ``protect`` to read-write) and the
slots carved from them: every allocation gets its own page-rounded slot followed
by a guard page, and freed slots stay guarded in a FIFO quarantine; a slot is
never handed out again while any view of its previous owner lives. It must not
touch memory outside its chunks. Layout and costs: ``docs/native.md``.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import operator
import os
import threading
import weakref
from dataclasses import dataclass

from sparsemm import abi
from sparsemm.native import procfs
from sparsemm.native.mapping import Mapping, VmaLimitError, _resolve_mode, map_count
from sparsemm.native.mapping import max_map_count as _max_map_count

PAGE = abi.PAGE_SIZE
DEFAULT_CHUNK = 1 << 30  # bytes of address space per chunk (MAP_NORESERVE: costs nothing)


@dataclass(slots=True)
class HeapStats:
    """A snapshot of a ``GuardedHeap`` (``stats()``)."""

    mode: str  # "markers" | "prot_none"
    live: int  # live allocations
    live_bytes: int  # bytes the program asked for, live allocations
    quarantined: int  # freed slots in the FIFO quarantine (guarded)
    free_slots: int  # freed slots out of quarantine, guarded until reused
    held: int  # freed slots out of quarantine that a view still uses: guarded, never reused
    guards: int  # guard ranges the heap has installed and not removed
    vmas_added: int  # /proc/self/maps lines now minus at heap creation (whole process)
    heap_vmas: int  # VMAs inside the heap's chunks: the heap's own share of vmas_added
    chunks: int
    bytes_reserved: int  # address space of all chunks
    bytes_committed: int  # page-rounded slots of live allocations: what they may touch
    bytes_resident: int  # pages of the chunks present in the page tables (pagemap)


@dataclass(slots=True)
class _Slot:
    """One slot: pages ``[offset, offset + npages*PAGE)`` of chunk ``chunk``; the page
    after it is its guard. ``start``/``size``: the bytes handed out."""

    chunk: int
    offset: int  # bytes within the chunk
    npages: int
    start: int = 0  # bytes within the chunk
    size: int = 0
    # The ctypes array the allocation's view was made from (weak: the caller owns the
    # view). Every view, slice and array over the slot keeps it alive, so
    # `exporter() is None` means no Python object can reach the slot any more.
    exporter: weakref.ref | None = None

    def exported(self) -> bool:
        return self.exporter is not None and self.exporter() is not None


# -- fork ------------------------------------------------------------------------------
# A fork waits until no other thread is inside alloc/free (glibc does the same for
# malloc), so the child's heaps are consistent and their locks free. Registered
# after Mapping's handlers, so this "before" runs first: heap locks are always
# taken before the locks of their chunks.
_HEAPS: "weakref.WeakSet[GuardedHeap]" = weakref.WeakSet()
_heaps_lock = threading.Lock()
_held_at_fork: list = []


def _before_fork() -> None:
    _heaps_lock.acquire()
    for heap in list(_HEAPS):
        heap._lock.acquire()
        _held_at_fork.append(heap)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop()._lock.release()
    _heaps_lock.release()


def _after_fork_in_child() -> None:
    global _heaps_lock
    for heap in _held_at_fork:
        heap._lock = threading.RLock()
    _held_at_fork.clear()
    _heaps_lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class GuardedHeap:
    """Allocations that fault on overflow and, while quarantined, on use-after-free.

    Layout of a chunk (``G`` guard page, ``s`` slot page, ``g`` leading guard
    only with ``guard_before=True``), with a 1-page and a 2-page slot::

        g s G s s G . . . . . . . . (rest of the chunk, untouched)

    Each slot's trailing guard is the next slot's leading one. ``alloc(n)``
    returns a writable ``memoryview`` of exactly ``n`` bytes, by default ending
    at the guard page (``right_align``), its start rounded down to
    ``alignment``. ``free(view)`` guards the whole slot (which discards its
    contents, like MADV_DONTNEED), releases the view and queues the slot in a
    FIFO quarantine of ``quarantine`` slots. A slot leaving the quarantine is
    reused by a later allocation of the same page count, but only once no
    view, slice or array over its old allocation lives; until then it stays
    guarded ("held").

    The views are raw memory: touching a guard page through one (a slice kept
    after ``free``, say) is a real SIGSEGV, which is what the heap is for.
    ``close()`` is all or nothing: ``BufferError`` while any view lives.

    With ``prot_none`` guards every guard costs up to two VMAs. The heap keeps
    the process below ``max_map_count`` (default: ``vm.max_map_count`` minus
    ``vma_headroom``, left for the interpreter's own mappings) and raises
    ``VmaLimitError`` before the kernel would refuse. Methods are thread-safe.
    """

    def __init__(self, *, guard_mode: str = "auto", guard_before: bool = False,
                 right_align: bool = True, alignment: int = 1, quarantine: int = 16,
                 chunk_size: int = DEFAULT_CHUNK, max_map_count: int | None = None,
                 vma_headroom: int = 64) -> None:
        alignment = operator.index(alignment)
        if alignment < 1 or alignment > PAGE or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two from 1 to {PAGE}, got {alignment}")
        quarantine = operator.index(quarantine)
        if quarantine < 0:
            raise ValueError(f"quarantine must be >= 0 slots, got {quarantine}")
        chunk_size = operator.index(chunk_size)
        if not 2 * PAGE <= chunk_size <= abi.TASK_SIZE // 2 or chunk_size % PAGE:
            raise ValueError(f"chunk_size must be a multiple of the page size ({PAGE} bytes) "
                             f"from two pages to {abi.TASK_SIZE // 2:#x} bytes, got {chunk_size}")
        self.mode = _resolve_mode(guard_mode, False)
        self.guard_before = bool(guard_before)
        self.right_align = bool(right_align)
        self.alignment = alignment
        self.quarantine_slots = quarantine
        self.chunk_size = chunk_size
        if max_map_count is None:
            self.max_map_count = _max_map_count() - operator.index(vma_headroom)
        else:
            self.max_map_count = operator.index(max_map_count)
        self._lock = threading.RLock()
        self._chunks: list[Mapping] = []
        self._bump = 0  # bytes used in the last chunk
        self._live: dict[int, _Slot] = {}  # address of the first byte handed out -> slot
        self._quarantine: collections.deque[_Slot] = collections.deque()
        self._free: dict[int, collections.deque[_Slot]] = {}  # npages -> guarded reusable slots
        self._held: list[_Slot] = []  # out of quarantine, still exported: guarded, not reusable
        self._allocs_since_sweep = 0
        self._guards = 0
        self._live_bytes = 0
        self._committed = 0
        self._maps_at_start = map_count()
        # VMA budget (prot_none only): a known count and how many splits since.
        self._maps_known = self._maps_at_start
        self._vmas_since = 0
        self._closed = False
        with _heaps_lock:
            _HEAPS.add(self)

    # -- public API ---------------------------------------------------------

    def alloc(self, n: int) -> memoryview:
        """A writable view (format ``"B"``) of exactly ``n`` bytes in its own guarded slot.

        O(1) system calls: a guard install for a new slot, a guard remove for a
        reused one, a reserve for a new chunk; amortised O(1) bookkeeping.
        """
        n = operator.index(n)
        if not 1 <= n <= abi.TASK_SIZE // 2:
            raise ValueError(f"allocation size must be between 1 and {abi.TASK_SIZE // 2:#x}, got {n}")
        npages = -(-n // PAGE)
        with self._lock:
            self._check_open()
            free = self._reusable(npages)
            slot = free[0] if free else self._carve(npages)
            if self.right_align:
                start = slot.offset + npages * PAGE - n
                start -= start % self.alignment
            else:
                start = slot.offset
            chunk = self._chunks[slot.chunk]
            exporter = chunk._export(start, n)
            view = memoryview(exporter).cast("B")
            if free:  # only now: a failure above leaves the slot guarded and listed
                self._guarded_op(chunk.unguard, slot.offset, npages * PAGE)
                free.popleft()
                self._guards -= 1
            slot.start, slot.size = start, n
            slot.exporter = weakref.ref(exporter)
            self._live[chunk.address + start] = slot
            self._live_bytes += n
            self._committed += npages * PAGE
            return view

    def free(self, view: memoryview) -> None:
        """Return ``view``'s slot: guard it (its contents are discarded) and quarantine it.

        The view is released (``view.release()``) unless something still
        exports it (a numpy array, say); slices and arrays that outlive the
        free fault on use while the slot is guarded, and the slot is not
        reused while any of them lives. Double free and views this heap did
        not return raise ``ValueError`` (``TypeError`` for a non-view). O(1).
        """
        with self._lock:
            self._check_open()
            addr, slot = self._find(view)
            # The slot is a whole rw VMA between guards (or the chunk start): guarding
            # it merges VMAs, never splits, so it needs no budget.
            self._guarded_op(self._chunks[slot.chunk].guard, slot.offset, slot.npages * PAGE,
                             splits=0)
            self._guards += 1
            del self._live[addr]
            self._live_bytes -= slot.size
            self._committed -= slot.npages * PAGE
            try:
                view.release()
            except BufferError:
                pass  # exported (an array over it): the guard makes any use fault
            self._quarantine.append(slot)
            while len(self._quarantine) > self.quarantine_slots:
                self._retire(self._quarantine.popleft())

    def address(self, view: memoryview) -> int:
        """The address of a live allocation's first byte (for native code). O(1)."""
        with self._lock:
            self._check_open()
            return self._find(view)[0]

    def stats(self) -> HeapStats:
        """Counters, plus a read of /proc/self/maps and the chunks' pagemaps. O(VMAs + chunks)."""
        with self._lock:
            self._check_open()
            self._sweep()
            return HeapStats(
                mode=self.mode, live=len(self._live), live_bytes=self._live_bytes,
                quarantined=len(self._quarantine),
                free_slots=sum(len(d) for d in self._free.values()), held=len(self._held),
                guards=self._guards,
                vmas_added=map_count() - self._maps_at_start, heap_vmas=self._heap_vmas(),
                chunks=len(self._chunks),
                bytes_reserved=sum(len(c) for c in self._chunks),
                bytes_committed=self._committed,
                bytes_resident=sum(c.resident() for c in self._chunks))

    def __len__(self) -> int:
        return len(self._live)

    def close(self) -> None:
        """Unmap every chunk. Idempotent. All or nothing: while any view (a live
        allocation's, or a slice or array kept after ``free``) lives, raises
        ``BufferError`` and the heap stays open and usable. O(slots)."""
        with self._lock:
            if self._closed:
                return
            slots = [*self._live.values(), *self._quarantine, *self._held]
            busy = sum(1 for s in slots if s.exported())
            if busy:
                raise BufferError(
                    f"cannot close the heap: {busy} slot(s) are still used by a view, a slice of "
                    f"one or an array over one ({len(self._live)} live allocations); free them "
                    f"or drop every reference first")
            for chunk in self._chunks:
                chunk.close()  # nothing exports them any more: cannot fail
            self._live.clear()
            self._quarantine.clear()
            self._free.clear()
            self._held.clear()
            self._closed = True

    def __enter__(self) -> "GuardedHeap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals (caller holds _lock) -------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("heap is closed")

    def _find(self, view: memoryview) -> tuple[int, _Slot]:
        """The live slot of ``view``, the view ``alloc`` returned (or a full-length copy)."""
        if not isinstance(view, memoryview):
            raise TypeError(f"expected a memoryview returned by alloc(), got {type(view).__name__}")
        try:
            exporter = view.obj  # our views: the slot's ctypes array
        except ValueError:
            raise ValueError("double free, or a view released by its owner: this view is "
                             "released") from None
        try:
            addr = ctypes.addressof(exporter)
        except TypeError:  # not a ctypes object: not ours
            addr = None
        slot = self._live.get(addr) if addr is not None else None
        # The allocation's view, or one just like it (a full-length view of the same
        # exporter: accepting it is harmless, the slot stays held while others live).
        if slot is None or slot.exporter() is not exporter or view.nbytes != slot.size \
                or view.format != "B":
            if any(s.exporter is not None and s.exporter() is exporter
                   for s in (*self._quarantine, *self._held)):
                raise ValueError("double free: this view was already freed")
            raise ValueError("not a live allocation of this heap (double free, or a view "
                             "alloc() did not return: slices and copies are not accepted)")
        return addr, slot

    def _retire(self, slot: _Slot) -> None:
        """A slot leaving the quarantine: reusable, or held while still exported."""
        if slot.exported():
            self._held.append(slot)
        else:
            slot.exporter = None
            self._free.setdefault(slot.npages, collections.deque()).append(slot)

    def _sweep(self) -> None:
        """Move held slots no view uses any more to the free lists. O(held)."""
        self._allocs_since_sweep = 0
        if self._held:
            held, self._held = self._held, []
            for slot in held:
                self._retire(slot)

    def _reusable(self, npages: int) -> collections.deque[_Slot] | None:
        """The free list holding a slot of ``npages`` to reuse, or None (carve one).

        Held slots are swept once as many allocations as there are held slots
        have happened since the last sweep: amortised O(1) per allocation."""
        if self._held:
            self._allocs_since_sweep += 1
            if self._allocs_since_sweep >= len(self._held):
                self._sweep()
        return self._free.get(npages) or None

    def _carve(self, npages: int) -> _Slot:
        """A fresh slot of ``npages`` plus its trailing guard, from the bump pointer."""
        need = (npages + 1) * PAGE
        if not self._chunks or self._bump + need > len(self._chunks[-1]):
            self._new_chunk(need + (PAGE if self.guard_before else 0))
        index, offset = len(self._chunks) - 1, self._bump
        self._guarded_op(self._chunks[index].guard, offset + npages * PAGE, PAGE)
        self._guards += 1
        self._bump = offset + need
        return _Slot(index, offset, npages)

    def _new_chunk(self, need: int) -> None:
        size = max(self.chunk_size, abi.page_align(need))
        self._budget(1)
        try:
            chunk = Mapping.reserve(size, guard_mode=self.mode)
        except VmaLimitError as exc:
            raise self._limit_error(exc.map_count) from exc
        try:
            chunk.protect(0, size, "rw")  # one VMA; MAP_NORESERVE keeps it uncharged
            if self.guard_before:
                self._guarded_op(chunk.guard, 0, PAGE)
        except BaseException:
            chunk.close()
            raise
        if self.guard_before:
            self._guards += 1
        self._bump = PAGE if self.guard_before else 0
        self._chunks.append(chunk)

    def _guarded_op(self, op, offset: int, length: int, *, splits: int = 2) -> None:
        """Run a guard/unguard that may add ``splits`` VMAs (0 or 2), keeping the
        prot_none fallback inside the VMA budget."""
        self._budget(splits)
        try:
            op(offset, length)
        except VmaLimitError as exc:
            raise self._limit_error(exc.map_count) from exc

    def _budget(self, vmas: int) -> None:
        """prot_none only: raise ``VmaLimitError`` unless ``vmas`` more VMAs fit the budget.

        ``_vmas_since`` is an upper bound on VMAs added since the last real count;
        recount only when that bound reaches the budget: O(log) recounts to the wall.
        """
        if self.mode != "prot_none" or not vmas:
            return
        if self._maps_known + self._vmas_since + vmas > self.max_map_count:
            self._maps_known, self._vmas_since = map_count(), 0
            if self._maps_known + vmas > self.max_map_count:
                raise self._limit_error(self._maps_known)
        self._vmas_since += vmas

    def _limit_error(self, count: int) -> VmaLimitError:
        limit = self.max_map_count
        return VmaLimitError(
            f"GuardedHeap: VMA limit reached with {self._guards} guards and {len(self._live)} live "
            f"allocations: the process has {count} VMAs and the heap's budget is {limit} "
            f"(vm.max_map_count = {_max_map_count()}). The prot_none fallback spends up to two VMAs "
            f"per guard; use guard markers (guard_mode='markers', Linux >= 6.13: any number of "
            f"guards in one VMA) or raise vm.max_map_count (sysctl -w vm.max_map_count=N).",
            guards=self._guards, map_count=count, max_map_count=limit)

    def _heap_vmas(self) -> int:
        spans = sorted((c.address, c.address + len(c)) for c in self._chunks)
        if not spans:
            return 0
        count = 0
        for entry in procfs.read_maps():
            i = bisect.bisect_right(spans, (entry.start, 1 << 64)) - 1
            if (i >= 0 and entry.start < spans[i][1]) or (
                    i + 1 < len(spans) and spans[i + 1][0] < entry.end):
                count += 1
        return count
