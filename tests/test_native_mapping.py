"""``sparsemm.Mapping`` on the running kernel, in both guard modes.

Scenario tests pin one kernel behaviour each (named in a comment); the fuzz
test drives random, often invalid, operations through the checked API on a
marker mapping and a fallback mapping side by side and requires identical
outcomes. Native out-of-bounds accesses only ever happen in forked children.
"""

from __future__ import annotations

import errno
import os
import re
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
from native_child import in_child_with_timeout, run_in_child

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
    assert m.write_at(P - 2, b"abcd") == 4
    assert m.read_at(P - 2, 4) == b"abcd"
    assert m.read_at(0, 0) == b"" and m.write_at(0, b"") == 0
    assert m.unchecked_view()[P - 2:P + 2].tobytes() == b"abcd"
    view = m.unchecked_view(P, P)
    with pytest.raises(BufferError):
        m.close()
    assert not m.closed and m.read_at(P - 2, 4) == b"abcd"  # all or nothing: still usable
    view.release()
    m.close()
    m.close()  # idempotent
    for call in (lambda: m.read_at(0, 1), lambda: m.write_at(0, b"x"), lambda: m.guard(0, P),
                 lambda: m.guards(), lambda: m.protect(0, P, "r"), lambda: m.resident(),
                 lambda: m.unchecked_view(), lambda: m.commit(0, P), lambda: m.is_guarded(0)):
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
    (lambda m: m.read_at(4 * P - 1, 2), ["past the end"]),
    (lambda m: m.read_at(0, -1), ["length must be >= 0"]),
    (lambda m: m.write_at(1 << 70, b"x"), ["past the end"]),
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


def test_not_an_mmap_and_no_unchecked_method_is_exposed():
    # Issue 16: a subclass that changed read/write broke the mmap contract, and the
    # inherited methods (find, m[i], seek + read_byte) faulted on guard pages.
    import mmap

    with Mapping(2 * P) as m:
        assert not isinstance(m, mmap.mmap)
        for name in ("read", "write", "find", "rfind", "seek", "tell", "read_byte", "write_byte",
                     "readline", "move", "flush", "resize", "madvise", "size", "__getitem__",
                     "__setitem__", "__buffer__"):
            assert not hasattr(m, name), name
        with pytest.raises(TypeError):
            m[0]  # noqa: B018
        with pytest.raises(TypeError):
            memoryview(m)
        with pytest.raises(TypeError):
            bytes(m)
        public = {n for n in dir(m) if not n.startswith("_")}
        assert public == {"address", "length", "mode", "shared", "closed", "close", "reserve",
                          "guard", "unguard", "guards", "is_guarded", "protect", "protections",
                          "commit", "decommit", "resident", "read_at", "write_at",
                          "unchecked_view"}


def test_help_shows_no_private_state():
    import pydoc

    text = pydoc.render_doc(Mapping, renderer=pydoc.plaintext)
    for word in ("_prot", "_guarded", "_lock", "_mm", "RangeMap", "invariant", "_check"):
        assert not re.search(rf"\b{word}\b", text), word
    for word in ("read_at", "write_at", "unchecked_view", "GuardFault"):
        assert word in text


def test_a_mapping_cannot_be_copied_or_pickled():
    import copy
    import pickle

    with Mapping(P) as m:
        for fn in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError):
                fn(m)


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
        m.write_at(0, b"x" * (3 * P))
        m.guard(P, P)
        m.unguard(P, P)
        assert m.read_at(0, 3 * P) == b"x" * P + bytes(P) + b"x" * P


def test_guard_keeps_shared_contents_in_the_file(mode):
    # Markers on a shared mapping replace only this mapping's PTEs: the data stays
    # in shmem and reads back after unguard. The fallback zaps PTEs the same way.
    if mode == "markers" and not features().file_guards:
        pytest.skip("this kernel has no guard markers on file-backed mappings (Linux >= 6.15)")
    fd = libc.memfd_create("sparsemm-test")
    try:
        libc.ftruncate(fd, 2 * P)
        with Mapping(2 * P, shared=True, file=fd, guard_mode=mode) as m:
            m.write_at(0, b"y" * (2 * P))
            m.guard(0, P)
            assert os.pread(fd, 4, 0) == b"yyyy"
            m.unguard(0, P)
            assert m.read_at(0, 4) == b"yyyy"
    finally:
        os.close(fd)


def test_private_file_mapping_reverts_to_the_file(mode, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"f" * 2 * P)
    with open(path, "rb") as fh, Mapping(2 * P, file=fh, guard_mode=mode) as m:
        m.write_at(0, b"private!")
        m.guard(0, P)
        m.unguard(0, P)
        assert m.read_at(0, 8) == b"ffffffff"


def test_guard_survives_protect_and_unguard_restores_the_new_protection(mode):
    with Mapping(3 * P, guard_mode=mode) as m:
        m.guard(P, P)
        m.protect(0, 3 * P, "r")
        assert m.guards() == [(P, P)]
        with pytest.raises(GuardFault) as info:
            m.read_at(P, 1)
        assert info.value.reason == "guard"
        m.unguard(P, P)
        assert m.read_at(P, 1) == b"\0"
        with pytest.raises(GuardFault) as info:
            m.write_at(P, b"z")
        assert info.value.reason == "protection"
        assert m.protections() == [(0, 3 * P, "r--")]


def test_guard_survives_decommit(mode):
    with Mapping(2 * P, guard_mode=mode) as m:
        m.write_at(0, b"a")
        m.guard(P, P)
        m.decommit(0, 2 * P)
        assert m.guards() == [(P, P)] and m.read_at(0, 1) == b"\0"


@pytest.mark.parametrize("mode_", MODES)
def test_guard_refused_on_mlocked_mapping(mode_):
    # mm/madvise.c: markers are refused on VM_LOCKED; the fallback's DONTNEED too.
    with Mapping(2 * P, guard_mode=mode_) as m:
        libc.mlock(m.address, 2 * P)
        with pytest.raises(OSError) as info:
            m.guard(0, P)
        assert info.value.errno == errno.EINVAL and "mlock" in str(info.value)
        assert m.guards() == []
        m.write_at(0, b"still writable")
        libc.munlock(m.address, 2 * P)
        m.guard(0, P)
        assert m.guards() == [(0, P)]


# -- checked access --------------------------------------------------------------


def test_checked_access_raises_guardfault_with_the_right_reason(mode):
    with Mapping(4 * P, guard_mode=mode) as m:
        m.guard(2 * P, P)
        m.protect(3 * P, P, "r")
        with pytest.raises(GuardFault) as info:
            m.write_at(2 * P - 3, b"123456")  # crosses into the guard: partial write
        fault = info.value
        assert (fault.errno, fault.reason, fault.offset) == (errno.EFAULT, "guard", 2 * P)
        assert fault.address == m.address + 2 * P and isinstance(fault, OSError)
        assert m.read_at(2 * P - 3, 3) == b"123"  # the bytes before the fault were written
        with pytest.raises(GuardFault) as info:
            m.write_at(3 * P + 10, b"x")
        assert (info.value.reason, info.value.offset) == ("protection", 3 * P + 10)
        assert m.read_at(3 * P + 10, 1) == b"\0"
        m.protect(0, P, "none")
        with pytest.raises(GuardFault) as info:
            m.read_at(0, 10)
        assert info.value.reason == "protection" and info.value.access == "read"


def test_reserve_is_prot_none_until_protected(mode):
    with Mapping.reserve(1 << 36, guard_mode=mode) as m:  # 64 GiB of address space
        assert m.protections() == [(0, 1 << 36, "---")]
        with pytest.raises(GuardFault) as info:
            m.read_at(5 * P, 1)
        assert info.value.reason == "protection"
        m.protect(4 * P, 2 * P, "rw")
        m.write_at(4 * P, b"ok")
        assert m.read_at(4 * P, 2) == b"ok" and m.resident() == P
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
                m.read_at(P - 1, 2)
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
            m.write_at(P - 8, b"A" * 16)
        assert info.value.reason == "guard"


def test_fork_child_inherits_guards(mode):
    # Markers are copied on fork (mm/memory.c: copy_pte_range keeps PTE markers);
    # the fallback's PROT_NONE VMAs are copied like any VMA.
    with Mapping(4 * P, guard_mode=mode) as m:
        m.write_at(0, b"parent")
        m.guard(2 * P, P)

        def child():
            assert m.guards() == [(2 * P, P)]
            assert m.read_at(0, 6) == b"parent"
            try:
                m.read_at(2 * P, 1)
            except GuardFault as exc:
                assert exc.reason == "guard"
            else:
                return 3
            m.unguard(2 * P, P)  # the child's own address space only
            m.write_at(2 * P, b"c")
            return 0

        assert in_child(child) == 0
        assert m.guards() == [(2 * P, P)]
        assert died_of_sigsegv(in_child(lambda: libc.memset(m.address + 2 * P, 0, 1)))


def test_fork_while_another_thread_is_inside_a_method(mode):
    # os.register_at_fork: the fork waits for the other thread's call to finish, so the
    # child gets consistent records and a free lock (no deadlock, no half-done guard).
    with Mapping(64 * P, guard_mode=mode) as m:
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                for page in range(0, 64, 2):
                    m.guard(page * P, P)
                m.unguard(0, 64 * P)

        t = threading.Thread(target=churn)
        t.start()
        try:
            for _ in range(20):
                def child():
                    m._check()
                    runs = m.guards()
                    m.unguard(0, 64 * P)
                    m.guard(0, P)
                    return 0 if m.guards() == [(0, P)] and runs is not None else 1

                assert in_child_with_timeout(child, 20) == 0
        finally:
            stop.set()
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
        arr = np.frombuffer(m.unchecked_view(), dtype=np.uint8)
        arr[:3] = [1, 2, 3]
        assert m.read_at(0, 3) == b"\x01\x02\x03" and arr.size == 2 * P
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
    st.tuples(st.just("read_at"), _byte_offset, st.one_of(st.integers(0, 64), _any_int)),
    st.tuples(st.just("write_at"), _byte_offset, st.binary(min_size=1, max_size=64)),
    st.tuples(st.sampled_from(["guards", "resident", "protections", "export", "release"] * 3
                              + ["close"])),
)
_ALLOWED = (ValueError, OSError, BufferError)


def _outcome(m: Mapping, exports: list, op: tuple):
    name, *args = op
    try:
        if name == "export":
            exports.append(m.unchecked_view())
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
        m.write_at(5 * P, b"x")
        m.write_at(20 * P, b"y" * (2 * P))
        for cat in (abi.PAGE_IS_GUARD, abi.PAGE_IS_PRESENT):
            assert _scan._scan_ioctl(m.address, 64 * P, cat) == _scan._scan_words(
                m.address, 64 * P, cat)
        assert m.resident() == 3 * P


def test_write_wants_bytes_like_data():
    with Mapping(P) as m, pytest.raises(TypeError):
        m.write_at(0, 5)
    with Mapping(P) as m:
        assert m.write_at(0, bytearray(b"ab")) == 2 and m.read_at(0, 2) == b"ab"


# -- checked copies from hostile sources ---------------------------------------------


@pytest.mark.parametrize("src_mode", MODES)
def test_write_at_from_a_buffer_over_another_mappings_guard_is_a_guardfault(mode, src_mode):
    # Issue 10: write_at copied `data` in user space first; a source buffer covering a
    # guard page of another mapping killed the interpreter. Run in a child: a crash is
    # then a signal the parent sees, not the end of the test run.
    def child(report):
        with Mapping(4 * P, guard_mode=src_mode) as src, Mapping(4 * P, guard_mode=mode) as dst:
            src.write_at(P - 4, b"abcd")
            src.guard(P, P)
            view = src.unchecked_view(P - 4, 8)  # 4 readable bytes, then the guard page
            try:
                dst.write_at(100, view)
            except GuardFault as exc:
                report(f"{exc.access} {exc.reason} {exc.offset} {exc.address == src.address + P}")
            else:
                report("no fault")
            report(repr(dst.read_at(100, 8)))
            view.release()
            for data in (src.unchecked_view(P, P), memoryview(src.unchecked_view())[P:]):
                try:
                    dst.write_at(0, data)
                except GuardFault as exc:
                    report(f"{exc.access} {exc.reason} {exc.offset}")
                data.release()
        return 0

    result = run_in_child(child, 60)
    assert result.exit_code == 0, result.describe()
    lines = result.output.decode().splitlines()
    assert lines == ["source guard 4 True", repr(b"abcd\0\0\0\0"), "source guard 0",
                     "source guard 0"], lines


def test_write_at_source_rules():
    with Mapping(2 * P) as m:
        with pytest.raises(TypeError):
            m.write_at(0, "text")
        with pytest.raises(TypeError):
            m.write_at(0, 5)
        with pytest.raises(BufferError):  # a strided view: no single source range to copy
            m.write_at(0, memoryview(bytearray(16))[::2])
        src = m.unchecked_view(0, 8)
        src.release()
        with pytest.raises(ValueError):  # a released view
            m.write_at(0, src)
        # The destination check comes first and nothing is copied.
        with pytest.raises(ValueError, match="past the end"):
            m.write_at(2 * P - 1, b"xy")
        assert m.read_at(2 * P - 1, 1) == b"\0"
        # A source that is the mapping itself, overlapping the destination: the
        # kernel copies page by page (like memcpy, not memmove).
        m.write_at(0, b"0123456789")
        assert m.write_at(P, m.unchecked_view(0, 10)) == 10
        assert m.read_at(P, 10) == b"0123456789"


def test_unchecked_view_of_a_read_only_file_is_read_only(tmp_path, mode):
    if mode == "markers" and not features().file_guards:
        pytest.skip("needs guard markers on file-backed mappings (Linux >= 6.15)")
    path = tmp_path / "ro"
    path.write_bytes(b"r" * 2 * P)
    with open(path, "rb") as fh:
        m = Mapping(2 * P, "r", shared=True, file=fh, guard_mode=mode)
    view = m.unchecked_view(P)
    assert view.readonly and len(view) == P and view[:2].tobytes() == b"rr"
    with pytest.raises(GuardFault) as info:
        m.write_at(0, b"w")
    assert info.value.reason == "protection"
    with pytest.raises(BufferError):
        m.close()
    del view
    m.close()


def test_close_is_all_or_nothing_with_an_array_over_a_view(mode):
    np = pytest.importorskip("numpy")
    m = Mapping(2 * P, guard_mode=mode)
    arr = np.frombuffer(m.unchecked_view()[P:], dtype=np.uint8)
    arr[:2] = [7, 8]
    with pytest.raises(BufferError):
        m.close()
    assert not m.closed and m.read_at(P, 2) == b"\x07\x08"
    m.guard(0, P)
    assert m.guards() == [(0, P)]
    del arr
    m.close()
    assert m.closed


@pytest.mark.parametrize("bad, exc", [
    (dict(file=object()), TypeError), (dict(file=True), TypeError), (dict(file=-1), ValueError),
    (dict(file=1 << 40), ValueError), (dict(file=2.0), TypeError),
    (dict(offset=1 << 70, file=0), ValueError), (dict(length=4096.0), TypeError),
    (dict(prot=1.5), TypeError), (dict(prot=None), TypeError), (dict(guard_mode=["auto"]), ValueError),
])
def test_hostile_constructor_arguments(bad, exc):
    with pytest.raises(exc):
        Mapping(**{"length": P, **bad})


# -- the vm.max_map_count wall ---------------------------------------------------------


@pytest.mark.parametrize("rounds", [25])
def test_prot_none_raises_vmalimiterror_at_the_wall_every_time(rounds):
    # Issue 15: at the wall the error path read all of /proc/self/maps and died of
    # MemoryError. In a child, the wall is brought near with raw PROT_NONE splits
    # (never by changing the sysctl), then a fallback Mapping is driven into it again
    # and again: every refused split must be a VmaLimitError, and a checked read of a
    # guard page must still be a GuardFault.
    RW = abi.PROT_READ | abi.PROT_WRITE

    def child(report):
        limit = mapping_mod.max_map_count()
        k = (limit - map_count() - 300) // 2  # each raw split adds two VMAs
        fill = libc.mmap(0, (2 * k + 1) * P, RW,
                         abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MapFlag.NORESERVE)
        for i in range(k):
            libc._mprotect(fill + (2 * i + 1) * P, P, abi.PROT_NONE)
        m = Mapping(2048 * P, guard_mode="prot_none")
        outcomes = [None] * (4 * rounds)  # preallocated: little to allocate at the wall
        page, guarded = 1, []
        while True:  # to the wall
            try:
                m.guard(page * P, P)
            except VmaLimitError:
                break
            guarded.append(page)
            page += 2
        near = map_count()
        for r in range(rounds):
            for j, call in enumerate((lambda: m.guard(page * P, P),
                                      lambda: m.protect((page + 2) * P, P, "r"),
                                      lambda: m.read_at(guarded[-1] * P, 1))):
                try:
                    call()
                    outcomes[4 * r + j] = "ok"
                except VmaLimitError as exc:
                    outcomes[4 * r + j] = "VmaLimitError" if exc.max_map_count == limit else "bad"
                except GuardFault as exc:
                    outcomes[4 * r + j] = "GuardFault:" + exc.reason
                except BaseException as exc:  # noqa: BLE001 - the point is to catch anything
                    outcomes[4 * r + j] = type(exc).__name__
            # Step back from the wall and into it again.
            try:
                m.unguard(guarded[-1] * P, P)
                m.guard(guarded[-1] * P, P)
                outcomes[4 * r + 3] = "ok"
            except BaseException as exc:  # noqa: BLE001
                outcomes[4 * r + 3] = type(exc).__name__
        m._check()
        libc.munmap(fill, (2 * k + 1) * P)
        report(f"{len(guarded)} {near} {limit}")
        for o in outcomes:
            report(str(o))
        return 0

    result = run_in_child(child, 240)
    assert result.exit_code == 0, result.describe()
    head, *outcomes = result.output.decode().splitlines()
    guards, near, limit = map(int, head.split())
    assert guards >= 100 and near >= limit - 4
    assert outcomes == ["VmaLimitError", "VmaLimitError", "GuardFault:guard", "ok"] * rounds
