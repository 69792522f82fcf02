"""``sparsemm.Mapping`` on the running kernel, in both guard modes.

Scenario tests pin one kernel behaviour each (named in a comment); the fuzz
test drives random, often invalid, operations through the checked API on a
marker mapping and a fallback mapping side by side and requires identical
outcomes. Native out-of-bounds accesses only ever happen in forked children.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparsemm
from sparsemm import abi
from sparsemm.native import libc, procfs
from sparsemm.native import mapping as mapping_mod
from sparsemm.native.probe import features
from sparsemm.native.mapping import GuardFault, Mapping, VmaLimitError, map_count

from conftest import HAS_GUARDS, died_of_sigsegv, in_child, needs_guards

P = abi.PAGE_SIZE
MODES = [pytest.param("markers", marks=needs_guards), "prot_none"]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


# -- basics ------------------------------------------------------------------


def test_exported_lazily_from_the_package():
    assert sparsemm.Mapping is Mapping
    assert sparsemm.GuardFault is GuardFault
    assert "Mapping" in dir(sparsemm)
    with pytest.raises(AttributeError):
        sparsemm.NoSuchThing  # noqa: B018


def test_auto_mode_follows_the_kernel():
    with Mapping(P) as m:
        assert m.mode == ("markers" if HAS_GUARDS else "prot_none")


def test_read_write_roundtrip_and_lifecycle(mode):
    m = Mapping(4 * P, guard_mode=mode)
    assert len(m) == 4 * P and m.mode == mode and m.address % P == 0
    assert m.write(P - 2, b"abcd") == 4
    assert m.read(P - 2, 4) == b"abcd"
    assert m.read(0, 0) == b"" and m.write(0, b"") == 0
    assert memoryview(m)[P - 2:P + 2].tobytes() == b"abcd"
    view = memoryview(m)
    with pytest.raises(BufferError):
        m.close()
    view.release()
    m.close()
    m.close()  # idempotent
    for call in (lambda: m.read(0, 1), lambda: m.write(0, b"x"), lambda: m.guard(0, P),
                 lambda: m.guards(), lambda: m.protect(0, P, "r"), lambda: m.resident(),
                 lambda: memoryview(m)):
        with pytest.raises(ValueError):
            call()


def test_context_manager_unmaps():
    with Mapping(2 * P) as m:
        addr = m.address
    assert m.closed
    assert not any(e.start <= addr < e.end for e in procfs.read_maps())


@pytest.mark.parametrize("call, words", [
    (lambda m: m.guard(1, P), ["offset 0x1", "page size (4096 bytes)"]),
    (lambda m: m.guard(0, P + 1), ["length 0x1001", "page size (4096 bytes)"]),
    (lambda m: m.protect(0, 100, "r"), ["length 0x64", "page size"]),
    (lambda m: m.guard(-P, P), ["offset must be >= 0"]),
    (lambda m: m.guard(0, 0), ["length must be > 0"]),
    (lambda m: m.guard(0, 5 * P), ["past the end"]),
    (lambda m: m.unguard(4 * P, P), ["past the end"]),
    (lambda m: m.read(4 * P - 1, 2), ["past the end"]),
    (lambda m: m.read(0, -1), ["length must be >= 0"]),
    (lambda m: m.write(1 << 70, b"x"), ["past the end"]),
    (lambda m: m.protect(0, P, "rq"), ["bad prot"]),
    (lambda m: m.protect(0, P, 0x100), ["bad prot"]),
])
def test_bad_arguments_raise_valueerror_before_any_syscall(call, words):
    with Mapping(4 * P, guard_mode="prot_none") as m:
        with pytest.raises(ValueError) as info:
            call(m)
        for word in words:
            assert word in str(info.value)
        assert m.guards() == [] and m.protections() == [(0, 4 * P, "rw-")]


@pytest.mark.parametrize("kwargs", [
    dict(length=0), dict(length=-P), dict(length=P + 1), dict(length=1 << 64),
    dict(length=P, offset=P), dict(length=P, guard_mode="pte"), dict(length=P, prot="z"),
])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        Mapping(**kwargs)


def test_markers_mode_on_a_kernel_without_them_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(mapping_mod, "_markers_available", lambda file_backed: False)
    with pytest.raises(OSError) as info:
        Mapping(P, guard_mode="markers")
    assert info.value.errno == errno.EOPNOTSUPP and "prot_none" in str(info.value)
    with Mapping(P) as m:
        assert m.mode == "prot_none"


def test_resize_is_refused():
    with Mapping(P) as m, pytest.raises(OSError):
        m.resize(2 * P)


# -- guards --------------------------------------------------------------------


def test_guards_merge_into_runs_and_unguard_splits_them(mode):
    #   0123456789
    #   .GGG..G...   after guard(1,2) guard(3,1) guard(6,1)
    #   .G.G..G...   after unguard(2,1)
    with Mapping(10 * P, guard_mode=mode) as m:
        m.guard(P, 2 * P)
        m.guard(3 * P, P)
        m.guard(6 * P, P)
        assert m.guards() == [(P, 3 * P), (6 * P, P)]
        m.unguard(2 * P, P)
        assert m.guards() == [(P, P), (3 * P, P), (6 * P, P)]
        assert m.is_guarded(3 * P + 5) and not m.is_guarded(2 * P)
        m.unguard(0, 10 * P)
        assert m.guards() == []
        m._check()


def test_guard_discards_private_contents(mode):
    # mm/madvise.c: guard install zaps the range; remove does not bring data back.
    with Mapping(3 * P, guard_mode=mode) as m:
        m.write(0, b"x" * (3 * P))
        m.guard(P, P)
        m.unguard(P, P)
        assert m.read(0, 3 * P) == b"x" * P + bytes(P) + b"x" * P


def test_guard_keeps_shared_contents_in_the_file(mode):
    # Markers on a shared mapping replace only this mapping's PTEs: the data stays
    # in shmem and reads back after unguard. The fallback zaps PTEs the same way.
    if mode == "markers" and not features().file_guards:
        pytest.skip("this kernel has no guard markers on file-backed mappings (Linux >= 6.15)")
    fd = libc.memfd_create("sparsemm-test")
    try:
        libc.ftruncate(fd, 2 * P)
        with Mapping(2 * P, shared=True, file=fd, guard_mode=mode) as m:
            m.write(0, b"y" * (2 * P))
            m.guard(0, P)
            assert os.pread(fd, 4, 0) == b"yyyy"
            m.unguard(0, P)
            assert m.read(0, 4) == b"yyyy"
    finally:
        os.close(fd)


def test_private_file_mapping_reverts_to_the_file(mode, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"f" * 2 * P)
    with open(path, "rb") as fh, Mapping(2 * P, file=fh, guard_mode=mode) as m:
        m.write(0, b"private!")
        m.guard(0, P)
        m.unguard(0, P)
        assert m.read(0, 8) == b"ffffffff"


def test_guard_survives_protect_and_unguard_restores_the_new_protection(mode):
    with Mapping(3 * P, guard_mode=mode) as m:
        m.guard(P, P)
        m.protect(0, 3 * P, "r")
        assert m.guards() == [(P, P)]
        with pytest.raises(GuardFault) as info:
            m.read(P, 1)
        assert info.value.reason == "guard"
        m.unguard(P, P)
        assert m.read(P, 1) == b"\0"
        with pytest.raises(GuardFault) as info:
            m.write(P, b"z")
        assert info.value.reason == "protection"
        assert m.protections() == [(0, 3 * P, "r--")]


def test_guard_survives_decommit(mode):
    with Mapping(2 * P, guard_mode=mode) as m:
        m.write(0, b"a")
        m.guard(P, P)
        m.decommit(0, 2 * P)
        assert m.guards() == [(P, P)] and m.read(0, 1) == b"\0"


@pytest.mark.parametrize("mode_", MODES)
def test_guard_refused_on_mlocked_mapping(mode_):
    # mm/madvise.c: markers are refused on VM_LOCKED; the fallback's DONTNEED too.
    with Mapping(2 * P, guard_mode=mode_) as m:
        libc.mlock(m.address, 2 * P)
        with pytest.raises(OSError) as info:
            m.guard(0, P)
        assert info.value.errno == errno.EINVAL and "mlock" in str(info.value)
        assert m.guards() == []
        m.write(0, b"still writable")
        libc.munlock(m.address, 2 * P)
        m.guard(0, P)
        assert m.guards() == [(0, P)]


# -- checked access --------------------------------------------------------------


def test_checked_access_raises_guardfault_with_the_right_reason(mode):
    with Mapping(4 * P, guard_mode=mode) as m:
        m.guard(2 * P, P)
        m.protect(3 * P, P, "r")
        with pytest.raises(GuardFault) as info:
            m.write(2 * P - 3, b"123456")  # crosses into the guard: partial write
        fault = info.value
        assert (fault.errno, fault.reason, fault.offset) == (errno.EFAULT, "guard", 2 * P)
        assert fault.address == m.address + 2 * P and isinstance(fault, OSError)
        assert m.read(2 * P - 3, 3) == b"123"  # the bytes before the fault were written
        with pytest.raises(GuardFault) as info:
            m.write(3 * P + 10, b"x")
        assert (info.value.reason, info.value.offset) == ("protection", 3 * P + 10)
        assert m.read(3 * P + 10, 1) == b"\0"
        m.protect(0, P, "none")
        with pytest.raises(GuardFault) as info:
            m.read(0, 10)
        assert info.value.reason == "protection" and info.value.access == "read"


def test_reserve_is_prot_none_until_protected(mode):
    with Mapping.reserve(1 << 36, guard_mode=mode) as m:  # 64 GiB of address space
        assert m.protections() == [(0, 1 << 36, "---")]
        with pytest.raises(GuardFault) as info:
            m.read(5 * P, 1)
        assert info.value.reason == "protection"
        m.protect(4 * P, 2 * P, "rw")
        m.write(4 * P, b"ok")
        assert m.read(4 * P, 2) == b"ok" and m.resident() == P
        entry = next(e for e in procfs.read_smaps() if e.start == m.address)
        assert "nr" in entry.vmflags  # MAP_NORESERVE: no commit charge


def test_outside_reason_past_the_end_of_the_file(mode):
    if mode == "markers" and not features().file_guards:
        pytest.skip("needs guard markers on file-backed mappings (Linux >= 6.15)")
    fd = libc.memfd_create("sparsemm-test")
    try:
        libc.ftruncate(fd, 2 * P)
        with Mapping(2 * P, shared=True, file=fd, guard_mode=mode) as m:
            libc.ftruncate(fd, P)  # page 1 is now past EOF: SIGBUS for the CPU
            with pytest.raises(GuardFault) as info:
                m.read(P - 1, 2)
            assert (info.value.reason, info.value.offset) == ("outside", P)
    finally:
        os.close(fd)


def test_commit_and_decommit(mode):
    with Mapping(8 * P, guard_mode=mode) as m:
        assert m.resident() == 0
        m.commit(0, 2 * P)
        assert m.resident() == 2 * P
        m.decommit(0, 8 * P)
        assert m.resident() == 0
        m.guard(5 * P, P)
        with pytest.raises(GuardFault) as info:
            m.commit(3 * P, 4 * P)
        assert (info.value.reason, info.value.offset) == ("guard", 5 * P)
        assert m.resident() == 2 * P  # pages 3 and 4, before the guard
        m.protect(7 * P, P, "r")
        with pytest.raises(GuardFault) as info:
            m.commit(6 * P, 2 * P)
        assert (info.value.reason, info.value.offset) == ("protection", 7 * P)


# -- native faults: the kernel's SIGSEGV, in a child -----------------------------


def test_native_overflow_into_a_guard_is_sigsegv(mode):
    with Mapping(2 * P, guard_mode=mode) as m:
        m.guard(P, P)
        libc.memset(m.address, 1, P)  # in bounds: fine here
        assert died_of_sigsegv(in_child(lambda: libc.memset(m.address + P - 8, 0x41, 16)))
        assert in_child(lambda: libc.memset(m.address, 0x41, P)) == 0
        with pytest.raises(GuardFault) as info:  # the checked path says the same, safely
            m.write(P - 8, b"A" * 16)
        assert info.value.reason == "guard"


def test_fork_child_inherits_guards(mode):
    # Markers are copied on fork (mm/memory.c: copy_pte_range keeps PTE markers);
    # the fallback's PROT_NONE VMAs are copied like any VMA.
    with Mapping(4 * P, guard_mode=mode) as m:
        m.write(0, b"parent")
        m.guard(2 * P, P)

        def child():
            assert m.guards() == [(2 * P, P)]
            assert m.read(0, 6) == b"parent"
            try:
                m.read(2 * P, 1)
            except GuardFault as exc:
                assert exc.reason == "guard"
            else:
                return 3
            m.unguard(2 * P, P)  # the child's own address space only
            m.write(2 * P, b"c")
            return 0

        assert in_child(child) == 0
        assert m.guards() == [(2 * P, P)]
        assert died_of_sigsegv(in_child(lambda: libc.memset(m.address + 2 * P, 0, 1)))


def test_fork_while_another_thread_holds_the_lock(mode):
    with Mapping(2 * P, guard_mode=mode) as m:
        held, release = threading.Event(), threading.Event()

        def holder():
            with m._lock:
                held.set()
                release.wait(10)

        t = threading.Thread(target=holder)
        t.start()
        held.wait(10)
        try:
            assert in_child(lambda: m.guard(0, P)) == 0  # no deadlock in the child
        finally:
            release.set()
            t.join()


def test_threads_guard_disjoint_pages(mode):
    with Mapping(64 * P, guard_mode=mode) as m:
        def worker(k):
            for _ in range(50):
                for page in range(k, 64, 4):
                    m.guard(page * P, P)
                for page in range(k, 64, 4):
                    m.unguard(page * P, P)
            for page in range(k, 64, 8):
                m.guard(page * P, P)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = sorted(page for k in range(4) for page in range(k, 64, 8))
        runs = [(s // P, n // P) for s, n in m.guards()]
        assert sum(n for _, n in runs) == len(expected)
        assert [p for s, n in runs for p in range(s, s + n)] == expected
        m._check()


# -- buffer protocol ----------------------------------------------------------------


def test_numpy_frombuffer_sees_the_mapping(mode):
    np = pytest.importorskip("numpy")
    with Mapping(2 * P, guard_mode=mode) as m:
        arr = np.frombuffer(m, dtype=np.uint8)
        arr[:3] = [1, 2, 3]
        assert m.read(0, 3) == b"\x01\x02\x03" and arr.size == 2 * P
        with pytest.raises(BufferError):
            m.close()
        del arr
        m.guard(P, P)
        assert m.guards() == [(P, P)]


# -- VMA cost ---------------------------------------------------------------------


@needs_guards
def test_markers_cost_no_vmas_and_the_fallback_two_per_guard():
    for mode, per_guard in (("markers", 0), ("prot_none", 2)):
        with Mapping(2048 * P, guard_mode=mode) as m:
            # Count inside the mapping: the interpreter maps and unmaps arenas meanwhile.
            def vmas() -> int:
                end = m.address + len(m)
                return sum(1 for e in procfs.read_maps() if e.start < end and e.end > m.address)

            assert vmas() == 1
            for page in range(1, 2001, 2):
                m.guard(page * P, P)
            assert vmas() - 1 == per_guard * 1000


def test_fallback_reports_the_vma_limit_clearly(monkeypatch):
    # Pretend the limit is just above the current count; the kernel's ENOMEM path.
    with Mapping(64 * P, guard_mode="prot_none") as m:
        monkeypatch.setattr(mapping_mod, "max_map_count", lambda: map_count() + 1)
        orig = libc.mprotect

        def mprotect(addr, length, prot):  # what the kernel says at the wall
            raise OSError(errno.ENOMEM, "mprotect: Cannot allocate memory")

        monkeypatch.setattr(libc, "mprotect", mprotect)
        with pytest.raises(VmaLimitError) as info:
            m.guard(P, P)
        monkeypatch.setattr(libc, "mprotect", orig)
        monkeypatch.setattr(mapping_mod, "max_map_count", lambda: abi.DEFAULT_MAX_MAP_COUNT)
        assert isinstance(info.value, MemoryError) and info.value.errno == errno.ENOMEM
        assert "max_map_count" in str(info.value) and "markers" in str(info.value)
        assert m.guards() == []
        m.guard(P, P)  # with the kernel back, the same call works
        assert m.guards() == [(P, P)]


# -- fuzz: random and invalid arguments, markers vs fallback in lockstep -------------

_weird = st.sampled_from([1 << 63, -(1 << 63), 1 << 80, -1, P - 1, 3 * P + 7])
_any_int = st.one_of(st.integers(-2 * P, 10 * P), _weird)
# Mostly valid page ranges inside 8 pages, sometimes anything at all.
_valid_range = st.tuples(st.integers(0, 7), st.integers(1, 2)).map(
    lambda t: (t[0] * P, min(t[1], 8 - t[0]) * P))
_range = st.one_of(*[_valid_range] * 4, st.tuples(_any_int, _any_int))
_byte_offset = st.one_of(st.integers(0, 8).map(lambda k: max(k * P - 8, 0)), _any_int)
_prots = st.sampled_from(["r", "rw", "rw", "none", "", "rwx", "w", "bad", 7, 0, 9])
_ops = st.one_of(
    st.tuples(st.sampled_from(["guard", "guard", "unguard", "decommit", "commit"]), _range).map(
        lambda t: (t[0], *t[1])),
    st.tuples(st.just("protect"), _range, _prots).map(lambda t: (t[0], *t[1], t[2])),
    st.tuples(st.just("read"), _byte_offset, st.one_of(st.integers(0, 64), _any_int)),
    st.tuples(st.just("write"), _byte_offset, st.binary(min_size=1, max_size=64)),
    st.tuples(st.sampled_from(["guards", "resident", "protections", "export", "release"] * 3
                              + ["close"])),
)
_ALLOWED = (ValueError, OSError, BufferError)


def _outcome(m: Mapping, exports: list, op: tuple):
    name, *args = op
    try:
        if name == "export":
            exports.append(memoryview(m))
            return "exported"
        if name == "release":
            for view in exports:
                view.release()
            exports.clear()
            return "released"
        result = getattr(m, name)(*args)
    except GuardFault as exc:
        assert exc.reason in mapping_mod.FAULT_REASONS
        return ("GuardFault", exc.reason, exc.offset)
    except _ALLOWED as exc:
        return (type(exc).__name__, getattr(exc, "errno", None))
    finally:
        if not m.closed:
            m._check()
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.sampled_from([8 * P, 8 * P, 8 * P, 4 * P, 3, 0, -P]), ops=st.lists(_ops, min_size=3, max_size=40))
def test_fuzz_checked_api_never_crashes_and_modes_agree(length, ops):
    modes = ["markers", "prot_none"] if HAS_GUARDS else ["prot_none"]
    maps = {}
    for mode in modes:
        try:
            maps[mode] = Mapping(length, guard_mode=mode)
        except _ALLOWED:
            maps[mode] = None
    if any(v is None for v in maps.values()):
        assert all(v is None for v in maps.values())
        return
    exports = {mode: [] for mode in modes}
    try:
        for op in ops:
            outcomes = {mode: _outcome(maps[mode], exports[mode], op) for mode in modes}
            assert len({repr(o) for o in outcomes.values()}) == 1, (op, outcomes)
    finally:
        for mode in modes:
            for view in exports[mode]:
                view.release()
            maps[mode].close()


def test_pagemap_word_reader_agrees_with_pagemap_scan(mode):
    from sparsemm.native import _scan

    with Mapping(64 * P, guard_mode=mode) as m:
        for page in (1, 2, 3, 10, 63):
            m.guard(page * P, P)
        m.write(5 * P, b"x")
        m.write(20 * P, b"y" * (2 * P))
        for cat in (abi.PAGE_IS_GUARD, abi.PAGE_IS_PRESENT):
            assert _scan._scan_ioctl(m.address, 64 * P, cat) == _scan._scan_words(
                m.address, 64 * P, cat)
        assert m.resident() == 3 * P


def test_write_wants_bytes_like_data():
    with Mapping(P) as m, pytest.raises(TypeError):
        m.write(0, 5)
    with Mapping(P) as m:
        assert m.write(0, bytearray(b"ab")) == 2 and m.read(0, 2) == b"ab"
