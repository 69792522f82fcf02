"""Hostile input for the native API: random call sequences must never crash the interpreter.

A generator drives ``Mapping`` and ``GuardedHeap`` (both guard modes) with
random sequences of calls and hostile arguments: negative, huge, float and
string offsets and lengths, unaligned and overlapping ranges, ``write_at``
sources that cover guard pages, ``PROT_NONE`` pages, truncated file pages or
stale heap slices, views released or kept alive across ``close()``, double
frees, foreign views and every call after ``close()``. It never touches memory
itself: only the checked API does.

Each batch of sequences runs in a forked child, so a crash is a signal the
parent sees (with the seed and the call that caused it), and a hang a timeout.
Allowed outcomes are a result or ``ValueError``/``TypeError``/``OSError``
(``GuardFault``, ``VmaLimitError``)/``BufferError``; anything else is
reported. After each sequence every view is dropped and every close must
succeed. Bounded by default (240 sequences of 40 calls: a few seconds);
``SPARSEMM_HOSTILE_NATIVE=N`` runs N sequences (``SPARSEMM_HOSTILE_NATIVE_SEED``
picks the first seed).
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import tempfile

import pytest

from sparsemm import abi
from sparsemm.native import libc
from sparsemm.native.heap import GuardedHeap
from sparsemm.native.mapping import Mapping

from conftest import HAS_GUARDS
from native_child import run_in_child

P = abi.PAGE_SIZE
SEQUENCES = int(os.environ.get("SPARSEMM_HOSTILE_NATIVE", "240"))
FIRST_SEED = int(os.environ.get("SPARSEMM_HOSTILE_NATIVE_SEED", "0"))
OPS_PER_SEQUENCE = 40
BATCH = 40  # sequences per child
MODES = ["markers", "prot_none"] if HAS_GUARDS else ["prot_none"]
ALLOWED = (ValueError, TypeError, OSError, BufferError)
BIG_SOURCE = 1 << 20  # views larger than this are never used as write_at sources

HOSTILE_INTS = [-1, -P, 1 << 63, -(1 << 63), 1 << 64, 1 << 200, P - 1, P + 1, 3 * P + 7,
                abi.TASK_SIZE, abi.TASK_SIZE + P]
HOSTILE_OTHER = [1.0, 4096.0, float("nan"), float("inf"), "4096", b"\x00", None, [P], True, object()]


class Fuzzer:
    """One sequence of random native calls; ``step()`` runs one call."""

    def __init__(self, rng: random.Random, files: dict) -> None:
        self.rng = rng
        self.files = files
        self.mappings: list[Mapping] = []
        self.heaps: list[GuardedHeap] = []
        self.views: list[memoryview] = []  # unchecked views and slices (never touched)
        self.allocs: list[tuple[GuardedHeap, memoryview]] = []  # views alloc() returned
        self.stale: list[memoryview] = []  # slices of allocations that were freed

    # -- argument generators ------------------------------------------------------

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def hostile(self):
        return self.pick(HOSTILE_INTS + HOSTILE_OTHER)

    def page_range(self, m: Mapping | None) -> tuple:
        """Mostly valid page ranges in the first 64 pages, sometimes anything."""
        r = self.rng.random()
        npages = len(m) // P if m is not None and not m.closed else 8
        if r < 0.7:
            first = self.rng.randrange(min(npages, 64))
            count = self.rng.randint(1, max(1, min(npages - first, 64 - first, 8)))
            return first * P, count * P
        if r < 0.8 and npages <= 64:
            return 0, npages * P
        return self.pick([self.hostile(), 0, P, 5]), self.pick([self.hostile(), 0, P, 2 * P])

    def byte_range(self, m: Mapping | None) -> tuple:
        if self.rng.random() < 0.75:
            npages = len(m) // P if m is not None and not m.closed else 8
            limit = min(npages, 64) * P
            offset = self.rng.randrange(limit)
            return offset, self.rng.randint(0, min(limit - offset, 3 * P))
        return self.pick([self.hostile(), 0, 100]), self.pick([self.hostile(), 0, 1, P])

    def source(self):
        r = self.rng.random()
        small_views = [v for v in self.views + self.stale if _nbytes(v) <= BIG_SOURCE]
        live = [v for _, v in self.allocs if _nbytes(v) <= BIG_SOURCE]
        if r < 0.4 and small_views:  # unchecked views and stale slices: maybe over guards
            return self.pick(small_views)
        if 0.4 <= r < 0.55 and live:
            return self.pick(live)
        if 0.55 <= r < 0.6:
            return memoryview(bytearray(64))[::2]  # not contiguous
        if 0.6 <= r < 0.7:
            return self.pick(HOSTILE_OTHER + [5, "text"])
        return self.rng.randbytes(self.rng.choice([0, 1, 7, P, P + 3]))

    # -- calls ---------------------------------------------------------------------

    def step(self):
        """Pick a call; return ``(text, thunk)``."""
        rng = self.rng
        choices = ["new_mapping"] * 3 + ["new_heap"] * 2
        if self.mappings:
            choices += ["page_op"] * 8 + ["read_at"] * 4 + ["write_at"] * 6 + ["view"] * 4 + \
                       ["query"] * 3 + ["close"] * 2 + ["copy"] + ["truncate"]
        if self.views or self.stale:
            choices += ["release"] * 2
        if self.heaps:
            choices += ["alloc"] * 6 + ["free"] * 5 + ["address"] * 2 + ["stats"] + ["heap_close"]
        op = self.pick(choices)
        return getattr(self, "op_" + op)()

    def op_new_mapping(self):
        rng = self.rng
        mode = self.pick(MODES + (["auto", "pte"] if rng.random() < 0.1 else []))
        if rng.random() < 0.2:
            length = self.pick([P, 64 * P, 1 << 30, self.hostile()])
            return (f"Mapping.reserve({length!r}, guard_mode={mode!r})",
                    lambda: self._keep(Mapping.reserve(length, guard_mode=mode)))
        length = self.pick([P, 2 * P, 8 * P, 16 * P, 64 * P]) if rng.random() < 0.8 else self.hostile()
        prot = self.pick(["rw", "rw", "r", "none", "rwx", "", 3, 0]) if rng.random() < 0.9 \
            else self.pick(["rq", -1, 8, 1.5, None, "rrw"])
        kwargs = {"guard_mode": mode}
        r = rng.random()
        if r < 0.15:
            kwargs.update(shared=True)
        elif r < 0.3:
            kwargs.update(shared=rng.random() < 0.7, file=self.files["memfd"])
            length = self.pick([P, 2 * P, 4 * P]) if rng.random() < 0.8 else length
        elif r < 0.38:
            kwargs.update(shared=True, file=self.files["ro"])
        elif r < 0.45:
            kwargs.update(file=self.pick(self.files["bad"] + HOSTILE_OTHER + [-1, 1 << 40]),
                          offset=self.pick([0, P, self.hostile()]))
        return (f"Mapping({length!r}, {prot!r}, **{kwargs!r})",
                lambda: self._keep(Mapping(length, prot, **kwargs)))

    def _keep(self, m: Mapping) -> None:
        self.mappings.append(m)

    def op_page_op(self):
        m = self.pick(self.mappings)
        name = self.pick(["guard", "guard", "unguard", "protect", "commit", "decommit"])
        offset, length = self.page_range(m)
        if name == "protect":
            prot = self.pick(["r", "rw", "none", "", "rwx", 7, 0, "x", "bad", 1.0, -3])
            return f"{m!r}.protect({offset!r}, {length!r}, {prot!r})", lambda: m.protect(offset, length, prot)
        return f"{m!r}.{name}({offset!r}, {length!r})", lambda: getattr(m, name)(offset, length)

    def op_read_at(self):
        m = self.pick(self.mappings)
        offset, n = self.byte_range(m)
        return f"{m!r}.read_at({offset!r}, {n!r})", lambda: m.read_at(offset, n)

    def op_write_at(self):
        m = self.pick(self.mappings)
        offset, _ = self.byte_range(m)
        data = self.source()
        return (f"{m!r}.write_at({offset!r}, <{type(data).__name__} of {_nbytes(data)}>)",
                lambda: m.write_at(offset, data))

    def op_view(self):
        m = self.pick(self.mappings)
        offset, length = self.byte_range(m)
        if self.rng.random() < 0.3:
            length = None
        if self.rng.random() < 0.5:
            return (f"{m!r}.unchecked_view({offset!r}, {length!r})",
                    lambda: self.views.append(m.unchecked_view(offset, length)))

        def sliced():
            view = m.unchecked_view(offset, length)
            lo = self.rng.randrange(len(view) + 1)
            self.views.append(view[lo:])
            view.release()
        return f"{m!r}.unchecked_view({offset!r}, {length!r})[slice]", sliced

    def op_query(self):
        m = self.pick(self.mappings)
        name = self.pick(["guards", "protections", "resident", "is_guarded", "len", "repr"])
        if name == "is_guarded":
            offset = self.pick([0, P, self.hostile(), len(m) - 1 if len(m) else 0])
            return f"{m!r}.is_guarded({offset!r})", lambda: m.is_guarded(offset)
        if name == "len":
            return f"len({m!r})", lambda: len(m)
        if name == "repr":
            return "repr(m)", lambda: repr(m)
        return f"{m!r}.{name}()", lambda: getattr(m, name)()

    def op_close(self):
        m = self.pick(self.mappings)
        return f"{m!r}.close()", m.close

    def op_copy(self):
        m = self.pick(self.mappings)
        fn = self.pick([copy.copy, copy.deepcopy, pickle.dumps])
        return f"{fn.__name__}({m!r})", lambda: fn(m)

    def op_truncate(self):
        size = self.pick([0, P, 2 * P, 4 * P])
        return f"ftruncate(memfd, {size})", lambda: os.ftruncate(self.files["memfd"], size)

    def op_release(self):
        pool = self.pick([p for p in (self.views, self.stale) if p])
        view = pool.pop(self.rng.randrange(len(pool)))
        return "view.release()", view.release

    def op_new_heap(self):
        rng = self.rng
        kwargs = {"guard_mode": self.pick(MODES)}
        for key, good, bad in (("quarantine", [0, 1, 4, 16], [-1, 1.5, "4"]),
                               ("alignment", [1, 16, P], [0, 3, P * 2, -16]),
                               ("chunk_size", [2 * P, 16 * P, 1 << 30], [P, P + 1, 1 << 62, 0.5]),
                               ("guard_before", [True, False], [None]),
                               ("right_align", [True, False], [0]),
                               ("max_map_count", [None, 10 ** 6], [-5, 2 ** 70])):
            if rng.random() < 0.4:
                kwargs[key] = self.pick(good) if rng.random() < 0.85 else self.pick(bad)
        return f"GuardedHeap(**{kwargs!r})", lambda: self.heaps.append(GuardedHeap(**kwargs))

    def op_alloc(self):
        heap = self.pick(self.heaps)
        r = self.rng.random()
        n = (self.rng.randint(1, 3 * P) if r < 0.8 else
             self.pick([1 << 30, 0, -1, 1 << 62, 2.5, "10", None]))

        def alloc():
            view = heap.alloc(n)
            self.allocs.append((heap, view))
            if self.rng.random() < 0.3 and len(view) > 1:
                self.views.append(view[1:])  # a slice that may outlive the free
        return f"heap.alloc({n!r})", alloc

    def op_free(self):
        heap = self.pick(self.heaps)
        r = self.rng.random()
        if r < 0.7 and self.allocs:
            index = self.rng.randrange(len(self.allocs))
            owner, view = self.allocs[index]

            def free():
                nbytes = _nbytes(view)
                keep = view[:] if self.rng.random() < 0.3 and nbytes else None
                try:
                    heap.free(view)
                except BaseException:
                    if keep is not None:
                        keep.release()
                    raise
                self.allocs.pop(index)
                if keep is not None:
                    self.stale.append(keep)  # a stale slice: only ever a write_at source
                self.allocs.append((owner, view)) if self.rng.random() < 0.2 else None  # double free later
            return f"heap.free(<alloc {index}>) (owner is {'this' if owner is heap else 'another'} heap)", free
        target = self.pick([memoryview(bytearray(8)), None, 5, b"xx"] +
                           ([self.pick(self.views)] if self.views else []))
        return f"heap.free({type(target).__name__})", lambda: heap.free(target)

    def op_address(self):
        heap = self.pick(self.heaps)
        target = self.pick([v for _, v in self.allocs] or [None])
        return "heap.address(view)", lambda: heap.address(target)

    def op_stats(self):
        heap = self.pick(self.heaps)
        return "heap.stats()", heap.stats

    def op_heap_close(self):
        heap = self.pick(self.heaps)
        return "heap.close()", heap.close

    # -- end of a sequence ------------------------------------------------------------

    def finish(self) -> list[str]:
        """Drop every view; then every close must succeed. Returns problems found."""
        problems = []
        for m in self.mappings:
            if not m.closed:
                try:
                    m._check()
                except AssertionError as exc:
                    problems.append(f"invariant broken on {m!r}: {exc}")
        for view in self.views + self.stale:
            view.release()
        self.views.clear()
        self.stale.clear()
        self.allocs.clear()
        for thing in self.heaps + self.mappings:
            try:
                thing.close()
            except BufferError as exc:
                problems.append(f"close() still refused after every view was dropped: {exc}")
        return problems


def _nbytes(obj) -> int:
    try:
        return memoryview(obj).nbytes
    except (TypeError, ValueError):
        return -1


def _run_batch(seeds: range, report) -> int:
    """Run the sequences for ``seeds``; report each call before making it. Returns
    the number of unexpected outcomes."""
    tmp = tempfile.mkdtemp(prefix="sparsemm-hostile-")
    ro_path = os.path.join(tmp, "ro")
    with open(ro_path, "wb") as fh:
        fh.write(b"r" * 4 * P)
    memfd = libc.memfd_create("sparsemm-hostile")
    os.ftruncate(memfd, 4 * P)
    pipe_r, pipe_w = os.pipe()
    dir_fd = os.open(tmp, os.O_RDONLY)
    closed_fd = os.dup(memfd)
    os.close(closed_fd)
    ro = open(ro_path, "rb")  # noqa: SIM115 - closed below
    files = {"memfd": memfd, "ro": ro, "bad": [pipe_r, dir_fd, closed_fd]}
    bad = 0
    try:
        for seed in seeds:
            fuzz = Fuzzer(random.Random(seed), files)
            for k in range(OPS_PER_SEQUENCE):
                try:
                    text, thunk = fuzz.step()
                except IndexError:
                    continue  # nothing of that kind left to pick
                report(f"seed {seed} call {k}: {text}")
                try:
                    thunk()
                except ALLOWED:
                    pass
                except BaseException as exc:  # noqa: BLE001 - the point is to see anything
                    bad += 1
                    report(f"UNEXPECTED seed {seed} call {k}: {type(exc).__name__}: {exc}")
                thunk = None  # its closure may hold a view
            for problem in fuzz.finish():
                bad += 1
                report(f"UNEXPECTED seed {seed} at the end: {problem}")
    finally:
        ro.close()
        for fd in (memfd, pipe_r, pipe_w, dir_fd):
            os.close(fd)
        os.unlink(ro_path)
        os.rmdir(tmp)
    return min(bad, 100)


@pytest.mark.parametrize("start", range(FIRST_SEED, FIRST_SEED + SEQUENCES, BATCH))
def test_random_native_calls_never_crash(start):
    seeds = range(start, min(start + BATCH, FIRST_SEED + SEQUENCES))
    result = run_in_child(lambda report: _run_batch(seeds, report), timeout=300)
    lines = result.output.decode(errors="replace").splitlines()
    unexpected = [line for line in lines if line.startswith("UNEXPECTED")]
    assert result.exit_code == 0 and not unexpected, (
        f"seeds {seeds.start}..{seeds.stop - 1}: {result.describe()}\n"
        + "\n".join(unexpected[:20]))
    assert sum(line.startswith("seed ") for line in lines) >= 0.8 * len(seeds) * OPS_PER_SEQUENCE


@pytest.mark.parametrize("mode", MODES)
def test_regressions_from_the_issue_are_errors_not_crashes(mode):
    # Issue 10's reproducers, each in a child: find over a guard, m[i] on a guard
    # page and seek + read_byte are no longer there to call; write_at from a buffer
    # over another mapping's guard is a GuardFault; a stale heap slice is never
    # handed out again; close() is all or nothing.
    def child(report):
        with Mapping(4 * P, guard_mode=mode) as m, Mapping(2 * P, guard_mode=mode) as other:
            m.guard(P, P)
            for name in ("find", "__getitem__", "seek", "read_byte"):
                report(f"{name} {hasattr(m, name)}")
            other.guard(P, P)
            src = other.unchecked_view()
            try:
                m.write_at(0, src)
            except OSError as exc:
                report(f"write_at {type(exc).__name__} {exc.reason} {exc.access}")
            src.release()
        heap = GuardedHeap(guard_mode=mode, quarantine=1)
        view = heap.alloc(32)
        addr = heap.address(view)
        stale = view[4:8]
        heap.free(view)
        reused = 0
        for _ in range(20):
            v = heap.alloc(32)
            reused += heap.address(v) == addr
            heap.free(v)
        report(f"reused {reused}")
        try:
            heap.close()
        except BufferError:
            report("close refused")
        heap.alloc(1)  # still open
        del stale, v
        heap.close()
        report("closed")
        return 0

    result = run_in_child(child, 60)
    assert result.exit_code == 0, result.describe()
    assert result.output.decode().splitlines() == [
        "find False", "__getitem__ False", "seek False", "read_byte False",
        "write_at GuardFault guard source", "reused 0", "close refused", "closed"]
