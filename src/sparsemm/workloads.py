"""Workload generators: op scripts (docs/opscript.md documents) for the guard patterns of real programs.

Owns the layouts of PartitionAlloc super pages, glibc thread stacks (before and after 2.42),
Wasm linear memories and a random mix, all written with ``madvise guard_install`` (the ``pte``
design), plus ``to_vma_design`` which rewrites any script's guards as ``PROT_NONE`` VMAs.
Builds plain dicts only: parsing, running and costing belong to ``opscript`` and ``model``.

Scale: the arena may not exceed ``opscript.script.MAX_ARENA_PAGES``. The defaults were sized
for the old limit of 1 << 24 pages (64 GiB) and fit it at 100k guards, except 8 MiB thread
stacks (2048 pages: 8192 threads); the limit is now the top of the user address space, so they
fit either way. Each generator raises ``ValueError`` before building a script beyond the limit.
"""

from __future__ import annotations

import random

from sparsemm._ranges import RangeMap
from sparsemm.opscript.script import MAX_ARENA_PAGES

__all__ = ["SUPER_PAGE_PAGES", "partition_alloc", "thread_stacks", "wasm_memories",
           "random_guards", "to_vma_design", "guard_count"]

SUPER_PAGE_PAGES = 512  # PartitionAlloc kSuperPageSize = 2 MiB
PARTITION_PAGE_PAGES = 4  # PartitionAlloc partition page = 16 KiB


def _check_arena(arena_pages: int) -> None:
    if arena_pages > MAX_ARENA_PAGES:
        raise ValueError(f"workload needs {arena_pages} arena pages, more than the "
                         f"{MAX_ARENA_PAGES} an op script may have; lower the scale or the sizes")


def _script(note: str, arena_pages: int, ops: list[dict], snapshot: bool) -> dict:
    _check_arena(arena_pages)
    if snapshot:
        ops.append({"op": "snapshot"})
    return {"note": note, "arena_pages": max(arena_pages, 1), "ops": ops}


def _guard(at: int, npages: int) -> dict:
    return {"op": "madvise", "at": at, "len": npages, "advice": "guard_install"}


def guard_count(script: dict) -> int:
    """How many ``guard_install`` madvise ops ``script`` makes (fork children included). O(ops)."""
    n = 0
    for op in script["ops"]:
        if op["op"] == "madvise" and op.get("advice") == "guard_install":
            n += 1
        elif op["op"] == "fork":
            n += guard_count({"ops": op["child"]})
    return n


def partition_alloc(guards: int, *, guards_per_super_page: int = 4, span_pages: int = PARTITION_PAGE_PAGES,
                    touch_metadata: bool = True, snapshot: bool = False) -> dict:
    """PartitionAlloc super pages with ``guards`` guard ranges in all. O(guards) ops.

    One anonymous RW ``noreserve`` mapping of ``ceil(guards / guards_per_super_page)``
    contiguous 2 MiB super pages (512 pages; a pool hands them out contiguously). Each
    super page, from partition_alloc_constants.h::

        page 0      guard (4 KiB)
        page 1      metadata, written (so the super page's PTE table exists before the guards)
        pages 2-3   guard (8 KiB)
        slot spans of ``span_pages`` pages, each followed by a 1-page guard
                    (``guards_per_super_page - 3`` of them: "guard pages around slot spans")
        pages 508-511  guard (16 KiB)

    The last super page stops when ``guards`` are placed. With mprotect guards (see
    ``to_vma_design``) this is the "rw-p 4K | ---p 4K | rw-p ..." ladder that Chromium's published maps show; the
    trailing guard of one super page and the leading guard of the next then merge into one
    ``---p`` VMA. At most 32768 super pages fit in an arena: ``guards <= 32768 *
    guards_per_super_page`` (131072 with the default 4; 100k guards -> 25000 super pages, 50 GiB)
    under the old 1 << 24 page limit; ``MAX_ARENA_PAGES // 512`` super pages now.
    """
    g = guards_per_super_page
    interior = g - 3
    if g < 3 or interior * (span_pages + 1) > SUPER_PAGE_PAGES - 4 - 4:
        raise ValueError(f"guards_per_super_page must be 3..{3 + (SUPER_PAGE_PAGES - 8) // (span_pages + 1)}")
    if guards < 0:
        raise ValueError("guards must be >= 0")
    supers = -(-guards // g)
    _check_arena(supers * SUPER_PAGE_PAGES)
    ops: list[dict] = [{"op": "mmap", "at": 0, "len": supers * SUPER_PAGE_PAGES, "prot": "rw",
                        "flags": ["private", "anonymous", "noreserve"]}] if supers else []
    left = guards
    for s in range(supers):
        base = s * SUPER_PAGE_PAGES
        if touch_metadata:
            ops.append({"op": "touch", "at": base + 1, "access": "write"})
        layout = [(base, 1), (base + 2, 2)]
        p = base + 4
        for _ in range(interior):
            layout.append((p + span_pages, 1))
            p += span_pages + 1
        layout.append((base + SUPER_PAGE_PAGES - 4, 4))
        for at, n in layout[:left]:
            ops.append(_guard(at, n))
        left -= min(left, len(layout))
    note = (f"PartitionAlloc: {supers} super pages of 2 MiB, {guards} guard ranges "
            f"({g} per super page) by MADV_GUARD_INSTALL")
    return _script(note, supers * SUPER_PAGE_PAGES, ops, snapshot)


def thread_stacks(threads: int, glibc: str = "2.36", stack_pages: int = 2048, *, guard_pages: int = 1,
                  touch: bool = True, snapshot: bool = False) -> dict:
    """``threads`` glibc thread stacks placed top-down and contiguous, as mmap hands them out. O(threads).

    Thread ``t``'s stack is pages ``[A - (t+1)*stack_pages, A - t*stack_pages)`` of an arena of
    ``A = threads * stack_pages`` pages; its guard is the lowest ``guard_pages`` pages.

    - ``glibc="2.36"`` (nptl/allocatestack.c before 2.42): ``mmap(PROT_NONE)`` of the whole
      stack, then ``mprotect(RW)`` of all but the guard: 2 VMAs per thread (the RW top of
      one stack meets the guard of the stack above, so nothing merges).
    - ``glibc="2.42"``: ``mmap(RW)``, then ``madvise(MADV_GUARD_INSTALL)`` on the guard: the
      stacks are adjacent RW anonymous VMAs and merge.

    ``touch`` writes the top page of each stack (where the thread's first frame and its
    ``struct pthread`` live). 100k default 8 MiB stacks need 800 GiB of arena (fine under
    today's limit; under the old 1 << 24 pages use ``stack_pages <= 167``, e.g. 160).
    """
    if glibc not in ("2.36", "2.42"):
        raise ValueError(f"glibc must be '2.36' or '2.42', not {glibc!r}")
    if not 0 < guard_pages < stack_pages:
        raise ValueError("need 0 < guard_pages < stack_pages")
    _check_arena(threads * stack_pages)
    top = threads * stack_pages
    ops: list[dict] = []
    for t in range(threads):
        at = top - (t + 1) * stack_pages
        if glibc == "2.36":
            ops.append({"op": "mmap", "at": at, "len": stack_pages, "prot": "none"})
            ops.append({"op": "mprotect", "at": at + guard_pages, "len": stack_pages - guard_pages,
                        "prot": "rw"})
        else:
            ops.append({"op": "mmap", "at": at, "len": stack_pages, "prot": "rw"})
            ops.append(_guard(at, guard_pages))
        if touch:
            ops.append({"op": "touch", "at": at + stack_pages - 1, "access": "write"})
    how = "PROT_NONE mmap + mprotect RW" if glibc == "2.36" else "RW mmap + MADV_GUARD_INSTALL"
    note = (f"glibc {glibc} thread stacks: {threads} x {stack_pages} pages, "
            f"{guard_pages}-page guard at the bottom ({how})")
    return _script(note, top, ops, snapshot)


def wasm_memories(instances: int, memory_pages: int = 16, guard_pages: int = 144, *,
                  touch_pages: int = 1, snapshot: bool = False) -> dict:
    """``instances`` Wasm linear memories, each a reservation with a trailing guard region. O(instances).

    Instance ``i`` owns ``memory_pages + guard_pages`` pages from ``i * (memory_pages +
    guard_pages)``: one RW ``noreserve`` mmap, the first ``touch_pages`` pages written (the
    committed heap in use), then ``MADV_GUARD_INSTALL`` over the whole tail. Real runtimes
    reserve 4 GiB + 2 GiB per memory (600 TiB for 100k: more than any arena), so the
    default is one 64 KiB Wasm page + 576 KiB of guard (160 pages per instance, 100k
    instances = 16M pages, under the old 1 << 24 limit too). The instances are contiguous, so
    under the ``pte`` design they merge into one VMA; under ``vma`` each is RW + ``---p``.
    """
    if memory_pages < 1 or guard_pages < 1 or not 0 <= touch_pages <= memory_pages:
        raise ValueError("need memory_pages >= 1, guard_pages >= 1, 0 <= touch_pages <= memory_pages")
    size = memory_pages + guard_pages
    _check_arena(instances * size)
    ops: list[dict] = []
    for i in range(instances):
        at = i * size
        ops.append({"op": "mmap", "at": at, "len": size, "prot": "rw",
                    "flags": ["private", "anonymous", "noreserve"]})
        if touch_pages:
            ops.append({"op": "touch", "at": at, "len": touch_pages, "access": "write"})
        ops.append(_guard(at + memory_pages, guard_pages))
    note = (f"Wasm: {instances} linear memories of {memory_pages} pages, "
            f"each with a {guard_pages}-page trailing guard")
    return _script(note, instances * size, ops, snapshot)


def random_guards(guards: int, seed: int = 0, *, pages_per_guard: int = 8, mapping_pages: int = 4096,
                  snapshot: bool = False) -> dict:
    """A random mix with ``guards`` guard installs, reproducible from ``seed``. O(guards log guards).

    The arena (``guards * pages_per_guard`` pages, 800k pages at 100k guards) is covered by
    RW mappings of ``mapping_pages`` pages with every 8th one left out (a hole). Then, in
    random order: guard installs of 1-3 pages at random slots of ``pages_per_guard`` pages
    (one guard per slot), ``mprotect`` to read-only of 1-3 pages in a slot whose guard comes
    later (so ``to_vma_design`` has protections to restore, and no mprotect lands on a guard),
    writes to random pages (some of which fault on guards), and ``guard_remove`` of about a
    tenth of the installed guards. Ops that hit a hole fail with ENOMEM on both designs.
    """
    if guards < 0 or pages_per_guard < 4:
        raise ValueError("need guards >= 0 and pages_per_guard >= 4")
    rng = random.Random(seed)
    arena = max(guards * pages_per_guard, pages_per_guard)
    _check_arena(arena)
    ops: list[dict] = []
    for k, at in enumerate(range(0, arena, mapping_pages)):
        if k % 8 != 7:
            ops.append({"op": "mmap", "at": at, "len": min(mapping_pages, arena - at), "prot": "rw",
                        "flags": ["private", "anonymous", "noreserve"]})
    slots = rng.sample(range(arena // pages_per_guard), guards)  # one guard per slot: no overlaps
    installed: list[tuple[int, int]] = []
    for k, slot in enumerate(slots):
        at = slot * pages_per_guard + rng.randrange(pages_per_guard - 3)
        n = rng.randint(1, 3)
        ops.append(_guard(at, n))
        installed.append((at, n))
        r = rng.random()
        if r < 0.15 and k + 1 < guards:
            # read-only pages in a slot whose guard comes later: an mprotect over a guard would
            # remove it under the vma design but not under markers, so it never lands on one
            later = slots[rng.randrange(k + 1, guards)] * pages_per_guard
            ops.append({"op": "mprotect", "at": later + rng.randrange(pages_per_guard - 3),
                        "len": rng.randint(1, 3), "prot": "r"})
        elif r < 0.35:
            ops.append({"op": "touch", "at": rng.randrange(arena), "access": "write"})
        elif r < 0.45 and installed:
            at, n = installed.pop(rng.randrange(len(installed)))
            ops.append({"op": "madvise", "at": at, "len": n, "advice": "guard_remove"})
    note = f"random mix: {guards} guard installs (seed {seed}), mprotects, writes, guard removes"
    return _script(note, arena, ops, snapshot)


# ---------------------------------------------------------------------------
# The vma design: guards as PROT_NONE VMAs.


def _pages(op: dict, key: str, default: int | None = None) -> int | None:
    if key + "_bytes" in op:
        value = op[key + "_bytes"]
        if value % 4096:
            raise ValueError(f"to_vma_design handles page-aligned ops only: {op}")
        return value // 4096
    return op.get(key, default)


def _translate(ops: list[dict], prots: RangeMap) -> list[dict]:
    """``prots``: page -> protection string of the script's own mmap/mprotect/munmap ops."""
    out: list[dict] = []
    for op in ops:
        name = op["op"]
        if name in ("mmap", "munmap", "mprotect", "madvise"):
            at, n = _pages(op, "at"), _pages(op, "len", 1)
        if name == "mmap":
            fixed = "fixed" in op.get("flags", [])
            if fixed or not prots.overlaps(at, at + n):
                prots.assign(at, at + n, op["prot"] or "none")
            out.append(op)
        elif name == "munmap":
            prots.clear(at, at + n)
            out.append(op)
        elif name == "mprotect":
            for s, e, _ in prots.items(at, at + n):  # holes stay holes
                prots.assign(s, e, op["prot"] or "none")
            out.append(op)
        elif name == "madvise" and op.get("advice") == "guard_install":
            out.append({"op": "mprotect", "at": at, "len": n, "prot": "none"})
        elif name == "madvise" and op.get("advice") == "guard_remove":
            # Back to what the script's own calls left there; holes stay holes.
            out.extend({"op": "mprotect", "at": s, "len": e - s, "prot": p}
                       for s, e, p in prots.items(at, at + n))
        elif name == "fork":
            out.append({**op, "child": _translate(op["child"], prots.copy())})
        elif name in ("mremap", "process_madvise") or (name == "madvise" and op.get("advice") == "remove"):
            raise ValueError(f"to_vma_design cannot follow protections through {name}: {op}")
        else:
            out.append(op)
    return out


def to_vma_design(script: dict) -> dict:
    """``script`` with every guard written as a ``PROT_NONE`` VMA: the ``vma`` design. O(ops x log ranges).

    ``madvise guard_install`` becomes ``mprotect none`` of the same range; ``madvise
    guard_remove`` becomes ``mprotect`` of each mapped piece of the range back to the
    protection the script's own ``mmap``/``mprotect`` ops gave it (holes are skipped).
    Known differences from markers, by design: an ``mprotect`` over a guard removes it here
    (markers survive it), and ``guard_remove`` of a page that had no guard is a no-op for
    markers but here re-applies the tracked protection (the same result). Raises
    ``ValueError`` for ``mremap`` and ``process_madvise``, whose effects it does not follow.
    """
    new = {k: v for k, v in script.items() if k not in ("ops", "expect")}
    new["ops"] = _translate(script["ops"], RangeMap())
    if "note" in new:
        new["note"] += " [vma design: guards as PROT_NONE VMAs]"
    return new
