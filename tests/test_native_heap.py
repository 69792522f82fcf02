"""``sparsemm.GuardedHeap``: overflow and use-after-free fault, VMA costs per mode.

Native out-of-bounds accesses run in forked children that must die of SIGSEGV.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest

import sparsemm
from sparsemm import abi
from sparsemm.native import libc
from sparsemm.native.heap import GuardedHeap, HeapStats
from sparsemm.native.mapping import VmaLimitError, map_count

from conftest import ROOT, died_of_sigsegv, in_child, needs_guards
from native_child import run_in_child

P = abi.PAGE_SIZE
MODES = [pytest.param("markers", marks=needs_guards), "prot_none"]


@pytest.fixture(params=MODES)
def heap(request):
    h = GuardedHeap(guard_mode=request.param, quarantine=4)
    yield h
    h.close()


def test_exported_lazily():
    assert sparsemm.GuardedHeap is GuardedHeap and sparsemm.HeapStats is HeapStats


def test_alloc_gives_exactly_n_writable_bytes_ending_at_the_guard(heap):
    for n in (1, 13, P - 1, P, P + 1, 3 * P + 5):
        view = heap.alloc(n)
        assert len(view) == n and not view.readonly
        view[:] = b"\xab" * n
        addr = heap.address(view)
        assert (addr + n) % P == 0  # right-aligned: the next byte is the guard page
        assert view.tobytes() == b"\xab" * n


def test_one_byte_overflow_through_native_code_is_sigsegv(heap):
    view = heap.alloc(100)
    addr = heap.address(view)
    assert in_child(lambda: libc.memset(addr, 0x41, 100)) == 0
    assert died_of_sigsegv(in_child(lambda: libc.memset(addr, 0x41, 101)))


def test_use_after_free_through_native_code_is_sigsegv(heap):
    view = heap.alloc(64)
    addr = heap.address(view)
    heap.free(view)
    assert died_of_sigsegv(in_child(lambda: libc.memset(addr, 0, 1)))
    with pytest.raises(ValueError):
        view[0]  # the view itself was released: no Python-level use-after-free


def test_underflow_faults_with_guard_before_and_left_alignment():
    for mode in ("markers", "prot_none") if libc.guard_regions_supported() else ("prot_none",):
        with GuardedHeap(guard_mode=mode, guard_before=True, right_align=False) as h:
            first, second = h.alloc(10), h.alloc(10)
            for view in (first, second):
                addr = h.address(view)
                assert addr % P == 0
                assert died_of_sigsegv(in_child(lambda: libc.memset(addr - 1, 0, 1)))
                assert in_child(lambda: libc.memset(addr, 0, 10)) == 0
            h.free(first)
            h.free(second)


def test_alignment_option(heap):
    h = GuardedHeap(guard_mode=heap.mode, alignment=16)
    try:
        view = h.alloc(13)
        addr = h.address(view)
        assert addr % 16 == 0 and len(view) == 13
        assert P - 16 <= (addr % P) and (addr + 13) % P == P - 3  # 3 bytes of slack
        h.free(view)
    finally:
        h.close()
    with pytest.raises(ValueError):
        GuardedHeap(alignment=3)


def test_double_free_and_foreign_views_are_valueerrors(heap):
    view = heap.alloc(32)
    with pytest.raises(ValueError, match="not a live allocation"):
        heap.free(view[1:])
    with pytest.raises(ValueError, match="not a live allocation"):
        heap.free(memoryview(bytearray(32)))
    heap.free(view)
    with pytest.raises(ValueError, match="double free"):
        heap.free(view)
    for bad in (0, -1, 1 << 62):
        with pytest.raises(ValueError):
            heap.alloc(bad)


def test_quarantine_is_fifo_and_slots_are_reused_after_it(heap):
    views = [heap.alloc(10) for _ in range(6)]
    addrs = [heap.address(v) for v in views]
    for v in views[:5]:
        heap.free(v)  # quarantine=4: the first freed slot leaves quarantine
    s = heap.stats()
    assert (s.live, s.quarantined, s.free_slots) == (1, 4, 1)
    again = heap.alloc(10)
    assert heap.address(again) == addrs[0]  # reused, unguarded, zeroed
    assert again.tobytes() == bytes(10)
    again[:] = b"x" * 10
    newer = heap.alloc(10)
    assert heap.address(newer) not in addrs  # nothing else out of quarantine yet


def test_stats_track_guards_bytes_and_vmas(heap):
    before = heap.stats()
    assert (before.live, before.guards, before.chunks, before.bytes_reserved) == (0, 0, 0, 0)
    views = [heap.alloc(P + 1) for _ in range(10)]
    views[0][:] = b"y" * (P + 1)
    s = heap.stats()
    assert (s.live, s.live_bytes, s.guards, s.chunks) == (10, 10 * (P + 1), 10, 1)
    assert s.bytes_committed == 10 * 2 * P and s.bytes_reserved >= 10 * 3 * P
    assert s.bytes_resident == 2 * P  # only the slot we touched
    heap.free(views.pop())
    s = heap.stats()
    assert (s.live, s.quarantined, s.guards) == (9, 1, 11)
    # prot_none: rw G rw G ... rw [G freed G] rest: 9 live slots, 9 guards, the rest.
    # markers: the chunk stays one VMA.
    assert s.heap_vmas == (9 + 9 + 1 if heap.mode == "prot_none" else 1)


def test_grows_by_reserving_new_chunks():
    with GuardedHeap(guard_mode="prot_none", chunk_size=8 * P) as h:
        views = [h.alloc(P) for _ in range(9)]  # 2 pages each: 4 per chunk
        assert h.stats().chunks == 3
        big = h.alloc(20 * P)  # larger than a chunk: a chunk of its own
        assert len(big) == 20 * P and h.stats().chunks == 4
        for v in views + [big]:
            h.free(v)


def test_close_is_all_or_nothing(heap):
    # Issue 10: close() with a live slice released the live views, then raised
    # BufferError and left the heap half-closed.
    np = pytest.importorskip("numpy")
    view, other = heap.alloc(8), heap.alloc(20)
    arr = np.frombuffer(view, dtype=np.uint8)
    arr[:] = 7
    stale = other[2:4]
    heap.free(other)
    for _ in range(2):
        with pytest.raises(BufferError, match="still used"):
            heap.close()
        assert view.tobytes() == b"\x07" * 8  # nothing was released
        extra = heap.alloc(3)
        extra[:] = b"abc"
        heap.free(extra)
    del stale
    with pytest.raises(BufferError):  # the live allocation's own view and array
        heap.close()
    del arr
    heap.free(view)
    heap.close()
    heap.close()  # idempotent
    for call in (lambda: heap.alloc(1), lambda: heap.stats(), lambda: heap.free(view)):
        with pytest.raises(ValueError):
            call()


def test_close_after_views_are_dropped_without_free():
    with GuardedHeap(guard_mode="prot_none") as h:
        views = [h.alloc(64) for _ in range(10)]
        views[3][:] = b"q" * 64
        del views  # leaked allocations nobody can reach: the heap may unmap them
    with pytest.raises(ValueError):
        h.alloc(1)


def test_a_slot_is_never_reused_while_a_slice_of_its_old_view_lives(heap):
    # Issue 10: a slice taken before free outlived the quarantine and silently read
    # and wrote the next owner's data once the slot was reused.
    view = heap.alloc(100)
    addr = heap.address(view)
    stale = view[10:20]
    heap.free(view)
    assert died_of_sigsegv(in_child(lambda: stale[0]))  # guarded: use-after-free faults
    for _ in range(50):  # quarantine=4: the slot leaves it after 4 more frees
        other = heap.alloc(100)
        assert heap.address(other) != addr
        heap.free(other)
    s = heap.stats()
    assert s.held == 1 and s.live == 0
    assert died_of_sigsegv(in_child(lambda: stale[0]))  # still guarded, still not reused
    del stale
    for _ in range(50):
        other = heap.alloc(100)
        if heap.address(other) == addr:
            assert other.tobytes() == bytes(100)  # reused, unguarded, zeroed
            break
        heap.free(other)
    else:
        pytest.fail("the slot was never reused after its last slice died")
    assert heap.stats().held == 0


def test_a_numpy_array_kept_after_free_holds_the_slot_too(heap):
    np = pytest.importorskip("numpy")
    view = heap.alloc(64)
    addr = heap.address(view)
    arr = np.frombuffer(view, dtype=np.uint8)
    heap.free(view)  # the view cannot be released (the array exports it)
    with pytest.raises(ValueError, match="double free"):
        heap.free(view)
    for _ in range(30):
        other = heap.alloc(64)
        assert heap.address(other) != addr
        heap.free(other)
    assert heap.stats().held == 1
    del arr, view
    assert heap.stats().held == 0 and heap.stats().free_slots >= 1


@needs_guards
def test_ten_thousand_marker_guards_add_at_most_three_vmas():
    before = map_count()
    with GuardedHeap(guard_mode="markers") as h:
        views = [h.alloc(48) for _ in range(10_000)]
        s = h.stats()
        assert s.live == 10_000 and s.guards == 10_000
        assert s.heap_vmas <= 3
        # The process-wide count also holds the interpreter's own arenas for the
        # 10,000 memoryview objects (they cannot merge with a MAP_NORESERVE chunk).
        assert s.vmas_added - s.heap_vmas <= 6 and map_count() - before <= 9
        del views


def test_fallback_reports_the_vma_limit_clearly():
    # A budget 300 VMAs above today's count: the wall comes after ~150 guards.
    budget = map_count() + 300
    with GuardedHeap(guard_mode="prot_none", max_map_count=budget) as h:
        views = []
        with pytest.raises(VmaLimitError) as info:
            for _ in range(1000):
                views.append(h.alloc(16))
        err = info.value
        assert isinstance(err, MemoryError) and isinstance(err, OSError)
        assert 140 <= len(views) <= 151 and err.guards == len(views)
        message = str(err)
        for word in ("VMA limit", f"{len(views)} guards", "max_map_count", "markers", "sysctl"):
            assert word in message
        # The heap's own splits stop at the budget; the interpreter may add a VMA or two.
        assert map_count() <= budget + 2
        views[0][:] = b"z" * 16  # the heap is still usable
        h.free(views.pop())
        del views


@pytest.mark.slow
def test_fallback_hits_the_real_vm_max_map_count_wall_cleanly():
    # The real limit, in a child interpreter (at the wall even the interpreter's
    # own mmaps would fail).
    code = textwrap.dedent("""
        from sparsemm import GuardedHeap, VmaLimitError
        h = GuardedHeap(guard_mode="prot_none")
        views = []
        try:
            while True:
                views.append(h.alloc(16))
        except VmaLimitError as exc:
            print(len(views), exc.max_map_count)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    guards, budget = map(int, out.stdout.split())
    with open("/proc/sys/vm/max_map_count") as fh:
        assert budget == int(fh.read()) - 64
    assert guards > 30_000


# -- threads and fork ------------------------------------------------------------------


def test_fork_while_another_thread_is_inside_alloc_or_free(heap):
    # Issue 10: os.fork() while another thread was inside alloc/free deadlocked the
    # child on the heap lock. The at-fork handlers make the fork wait for the call
    # in progress, so the child's heap is consistent and usable.
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn():
        try:
            views = []
            while not stop.is_set():
                views.append(heap.alloc(100 + len(views)))
                if len(views) > 8:
                    heap.free(views.pop(0))
            for v in views:
                heap.free(v)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(25):
            def child(report):
                views = [heap.alloc(n) for n in (1, P, 3 * P)]
                for v in views:
                    v[:] = b"c" * len(v)
                    heap.free(v)
                s = heap.stats()
                report(f"{s.live_bytes >= 0}")
                return 0

            result = run_in_child(child, 30)
            assert result.exit_code == 0, result.describe()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors


def _stress(mode: str, threads: int, ops: int, seed: int) -> HeapStats:
    """``threads`` threads each doing ``ops`` random allocs/frees on one heap; every
    byte handed out carries its owner's pattern, checked before each free."""
    heap = GuardedHeap(guard_mode=mode, quarantine=8)
    owner_lock = threading.Lock()
    owner: dict[int, int] = {}  # page address -> thread holding an allocation on it
    problems: list[str] = []

    def pages(addr: int, n: int) -> range:
        return range(addr - addr % P, addr + n, P)

    def worker(tid: int) -> None:
        rng = random.Random(seed * 100 + tid)
        mine: list[tuple[memoryview, int, bytes]] = []
        try:
            for i in range(ops):
                if mine and (len(mine) > 12 or rng.random() < 0.45):
                    view, addr, pattern = mine.pop(rng.randrange(len(mine)))
                    if view.tobytes() != pattern:
                        problems.append(f"thread {tid}: allocation at {addr:#x} was overwritten")
                    with owner_lock:
                        for page in pages(addr, len(view)):
                            if owner.pop(page, None) != tid:
                                problems.append(f"thread {tid}: page {page:#x} lost its owner")
                    heap.free(view)
                    continue
                n = rng.choice([1, 7, 64, 1000, P - 1, P, P + 1, 2 * P + 5])
                view = heap.alloc(n)
                addr = heap.address(view)
                with owner_lock:
                    for page in pages(addr, n):
                        if page in owner:
                            problems.append(f"thread {tid}: page {page:#x} handed out twice "
                                            f"(also held by thread {owner[page]})")
                        owner[page] = tid
                pattern = bytes([tid + 1, i % 251]) * (n // 2) + bytes([tid + 1]) * (n % 2)
                view[:] = pattern
                mine.append((view, addr, pattern))
            for view, addr, pattern in mine:
                if view.tobytes() != pattern:
                    problems.append(f"thread {tid}: allocation at {addr:#x} was overwritten")
                with owner_lock:
                    for page in pages(addr, len(view)):
                        owner.pop(page, None)
                heap.free(view)
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(f"thread {tid}: {exc!r}")

    pool = [threading.Thread(target=worker, args=(tid,)) for tid in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in pool), "a stress thread hung"
    assert not problems, problems[:10]
    stats = heap.stats()
    heap.close()
    return stats


@pytest.mark.parametrize("mode", MODES)
def test_eight_threads_never_share_a_block_or_corrupt_one(mode):
    ops = int(os.environ.get("SPARSEMM_STRESS_OPS", "300"))
    stats = _stress(mode, threads=8, ops=ops, seed=7)
    assert stats.live == 0 and stats.live_bytes == 0 and stats.bytes_committed == 0
    assert stats.quarantined == 8 and stats.guards >= 8


# -- the real vm.max_map_count wall ----------------------------------------------------


def test_heap_past_its_budget_meets_the_kernel_wall_as_vmalimiterror():
    # A budget above the real limit: the kernel refuses first. In a child, the wall
    # brought near with raw splits; every allocation past it is a VmaLimitError.
    RW = abi.PROT_READ | abi.PROT_WRITE

    def child(report):
        from sparsemm.native.mapping import max_map_count

        limit = max_map_count()
        k = (limit - map_count() - 400) // 2
        fill = libc.mmap(0, (2 * k + 1) * P, RW,
                         abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MapFlag.NORESERVE)
        for i in range(k):
            libc._mprotect(fill + (2 * i + 1) * P, P, abi.PROT_NONE)
        h = GuardedHeap(guard_mode="prot_none", max_map_count=limit + 100_000)
        views, outcomes = [], [None] * 20
        try:
            while True:
                views.append(h.alloc(16))
        except VmaLimitError:
            pass
        for i in range(20):
            try:
                views.append(h.alloc(16 + i))
                outcomes[i] = "ok"
            except VmaLimitError:
                outcomes[i] = "VmaLimitError"
            except BaseException as exc:  # noqa: BLE001
                outcomes[i] = type(exc).__name__
        n = len(views)
        for v in views:
            h.free(v)
        del views, v
        h.close()
        libc.munmap(fill, (2 * k + 1) * P)
        report(str(n))
        for o in outcomes:
            report(str(o))
        return 0

    result = run_in_child(child, 240)
    assert result.exit_code == 0, result.describe()
    count, *outcomes = result.output.decode().splitlines()
    assert int(count) >= 100
    assert outcomes == ["VmaLimitError"] * 20
