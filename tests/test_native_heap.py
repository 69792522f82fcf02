"""``sparsemm.GuardedHeap``: overflow and use-after-free fault, VMA costs per mode.

Native out-of-bounds accesses run in forked children that must die of SIGSEGV.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import sparsemm
from sparsemm import abi
from sparsemm.native import libc
from sparsemm.native.heap import GuardedHeap, HeapStats
from sparsemm.native.mapping import VmaLimitError, map_count

from conftest import ROOT, died_of_sigsegv, in_child, needs_guards

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


def test_alignment_option(heap):
    h = GuardedHeap(guard_mode=heap.mode, alignment=16)
    try:
        view = h.alloc(13)
        addr = h.address(view)
        assert addr % 16 == 0 and len(view) == 13
        assert P - 16 <= (addr % P) and (addr + 13) % P == P - 3  # 3 bytes of slack
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


def test_close_with_an_exported_view_raises_buffererror():
    np = pytest.importorskip("numpy")
    h = GuardedHeap(guard_mode="prot_none")
    view = h.alloc(8)
    arr = np.frombuffer(view, dtype=np.uint8)
    arr[:] = 7
    assert view.tobytes() == b"\x07" * 8
    with pytest.raises(BufferError):
        h.close()
    del arr
    h.close()
    with pytest.raises(ValueError):
        h.alloc(1)


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
