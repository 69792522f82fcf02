"""Hypothesis strategies for random op scripts, shared by the differential tests.

``profile_script(profile)`` draws scripts from ``sparsemm fuzz``'s generator
(``sparsemm.fuzz.generate``): hypothesis draws only the seed, so a failing example is
reproduced by its seed and shrunk by the fuzzer's shrinker (the differential test).

``op_script()`` draws whole scripts on a small arena so that ops collide: mmap of every
kind, munmap, mprotect, madvise incl. guards, mremap in place / fixed / dontunmap,
mlock/munlock, touches, forks with small child lists, snapshots, file ops and, with
``edges``, byte-form edge arguments (``edge_op``: unaligned, zero, negative and huge
lengths, raw advice; model only, since a huge range on the kernel backend reaches the
runner's own mappings); tests/test_designs_random.py runs them through every design.
"""

from __future__ import annotations

from hypothesis import strategies as st

from sparsemm.fuzz.generate import PROFILES, generate_script, script_rng

seeds = st.integers(min_value=0, max_value=(1 << 64) - 1)


def profile_script(profile: str, min_ops: int | None = None, max_ops: int | None = None):
    """Scripts of ``profile`` as ``(seed, doc)`` pairs."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    return seeds.map(lambda seed: (seed, generate_script(profile, script_rng(seed),
                                                         min_ops=min_ops, max_ops=max_ops)))

ARENAS = (16, 48)
FILES = {"f": {"pages": 20}, "g": {"pages": 6}}

PROTS = ["", "r", "rw", "rx", "rwx", "w", "x"]
ADVICE = ["dontneed", "free", "guard_install", "guard_remove", "wipeonfork", "keeponfork",
          "dontfork", "dofork", "populate_read", "populate_write", "willneed", "cold",
          "pageout", "normal", "random", "sequential", "dontdump", "dodump", "hugepage",
          "nohugepage", "remove", "dontneed_locked", "mergeable", "unmergeable", "collapse"]
KINDS = [["private", "anonymous"], ["shared", "anonymous"], ["private"], ["shared"]]

npages = st.integers(1, 12)


@st.composite
def mmap_op(draw, arena):
    kind = list(draw(st.sampled_from(KINDS)))
    extra = draw(st.lists(st.sampled_from(["fixed", "fixed", "populate", "noreserve", "locked",
                                           "growsdown"]), max_size=2, unique=True))
    a = draw(st.integers(0, arena - 1))
    n = draw(st.integers(1, max(1, min(12, arena - a))))
    op = {"op": "mmap", "at": a, "len": n, "prot": draw(st.sampled_from(PROTS)), "flags": kind + extra}
    if "anonymous" not in kind:
        op["file"] = draw(st.sampled_from(["f", "f", "g"]))
        op["pgoff"] = draw(st.integers(0, 16))
    return op


@st.composite
def range_op(draw, name, arena):
    a = draw(st.integers(0, arena - 1))
    return {"op": name, "at": a, "len": draw(st.integers(1, max(1, min(12, arena - a + 2))))}


EDGE_LENGTHS = [0, 1, 4095, 4097, -1, -4096, (1 << 64) - 1, (1 << 63), 1 << 47]


@st.composite
def edge_op(draw, arena):
    """Byte-form arguments: unaligned starts, odd, zero, negative and huge lengths, raw advice."""
    name = draw(st.sampled_from(["mmap", "munmap", "mprotect", "madvise", "mlock", "munlock",
                                 "mremap"]))
    op = {"op": name, "at_bytes": draw(st.integers(0, arena - 1)) * 4096 + draw(st.sampled_from([0, 0, 1, 2048])),
          "len_bytes": draw(st.sampled_from(EDGE_LENGTHS + [4096 * draw(npages)]))}
    if name == "mmap":
        op.update(prot=draw(st.sampled_from(PROTS)),
                  flags=list(draw(st.sampled_from(KINDS[:2]))) + ["fixed"])
        if op["len_bytes"] < 0 or op["len_bytes"] > 1 << 20:
            op["len_bytes"] = 4096 * 3  # a huge fixed mapping would leave the arena
    elif name == "mprotect":
        op["prot"] = draw(st.sampled_from(PROTS))
    elif name == "madvise":
        if op["len_bytes"] in (1 << 47, 1 << 63):
            # madvise walks every VMA above the start, holes or not: it would reach the
            # runner's own interpreter mappings. Keep the range inside the arena.
            op["len_bytes"] = 4096 * 5
        # never 100/101 (MADV_HWPOISON/SOFT_OFFLINE): as root they would poison real pages
        op["advice"] = draw(st.one_of(st.sampled_from(ADVICE), st.integers(-1, 99),
                                      st.integers(102, 130)))
    elif name == "mremap":
        op["new_len_bytes"] = draw(st.sampled_from([0, 1, 4096, 8192, -4096]))
        op["flags"] = draw(st.sampled_from([[], ["fixed"], ["dontunmap"], ["maymove", "fixed"]]))
        if "fixed" in op["flags"]:
            op["to_bytes"] = draw(st.integers(0, arena - 1)) * 4096 + draw(st.sampled_from([0, 1]))
    return op


GUARD_ADVICE = ["guard_install", "guard_remove"]


@st.composite
def simple_op(draw, arena, guards: bool = False, edges: bool = False):
    """One op (not a fork). ``guards`` makes half the madvise ops guard advice (else 2 in 25);
    ``edges`` makes one op in eight an ``edge_op``."""
    if edges and draw(st.integers(0, 7)) == 0:
        return draw(edge_op(arena))
    choice = draw(st.sampled_from(["mmap", "mmap", "mmap", "munmap", "mprotect", "madvise",
                                   "madvise", "madvise", "mremap", "mlock", "munlock", "touch",
                                   "touch", "touch", "snapshot", "file"]))
    if choice == "mmap":
        return draw(mmap_op(arena))
    if choice == "file":
        kind = draw(st.sampled_from(["ftruncate", "fallocate_punch", "process_madvise"]))
        if kind == "ftruncate":
            if draw(st.booleans()):
                return {"op": "ftruncate", "file": draw(st.sampled_from(["f", "g"])),
                        "bytes": draw(st.integers(0, 24 * 4096))}
            return {"op": "ftruncate", "file": draw(st.sampled_from(["f", "g"])),
                    "pages": draw(st.integers(0, 24))}
        if kind == "fallocate_punch":
            if draw(st.booleans()):
                return {"op": "fallocate_punch", "file": draw(st.sampled_from(["f", "g"])),
                        "at_bytes": draw(st.integers(0, 20 * 4096)),
                        "len_bytes": draw(st.integers(0, 8 * 4096))}
            return {"op": "fallocate_punch", "file": draw(st.sampled_from(["f", "g"])),
                    "at": draw(st.integers(0, 20)), "len": draw(st.integers(1, 8))}
        ranges = draw(st.lists(st.tuples(st.integers(0, arena - 1), st.integers(1, 4)).map(list), min_size=1, max_size=3))
        return {"op": "process_madvise", "ranges": ranges,
                "advice": draw(st.sampled_from(["guard_install", "guard_remove", "dontneed",
                                                "cold", "pageout", "willneed"]))}
    if choice == "snapshot":
        return {"op": "snapshot"}
    op = draw(range_op(choice, arena))
    if choice == "mprotect":
        op["prot"] = draw(st.sampled_from(PROTS))
    elif choice == "madvise":
        pool = GUARD_ADVICE if guards and draw(st.booleans()) else ADVICE
        op["advice"] = draw(st.sampled_from(pool))
    elif choice == "mlock":
        if draw(st.booleans()):
            op["flags"] = ["onfault"]
    elif choice == "touch":
        op["access"] = draw(st.sampled_from(["read", "write"]))
        op["value"] = draw(st.integers(0, 255))
    elif choice == "mremap":
        mode = draw(st.sampled_from(["inplace", "fixed", "dontunmap"]))
        new_len = draw(st.integers(1, 12))
        if mode == "inplace":
            op["new_len"] = min(new_len, arena - op["at"]) or 1
            op["flags"] = []
        else:
            to = draw(st.integers(0, arena - 1))
            op["new_len"] = op["len"] if mode == "dontunmap" else new_len
            op["new_len"] = max(1, min(op["new_len"], arena - to))
            op["flags"] = ["maymove", "fixed"] + (["dontunmap"] if mode == "dontunmap" else [])
            op["to"] = to
    return op


@st.composite
def op_script(draw, min_ops: int = 1, max_ops: int = 24, guards: bool = False, edges: bool = False):
    """A whole script: ``min_ops`` to ``max_ops`` top-level ops (a fork counts as one), then
    a snapshot. ``guards``, ``edges``: see ``simple_op``."""
    arena = draw(st.sampled_from(ARENAS))  # a dense arena makes ops collide more
    op = simple_op(arena, guards, edges)
    fork = st.builds(lambda child: {"op": "fork", "child": child + [{"op": "snapshot"}]},
                     st.lists(op, max_size=6))
    ops = draw(st.lists(st.one_of(op, op, op, op, fork), min_size=min_ops, max_size=max_ops))
    # ranges may cross the arena's end and edge ops test the kernel's argument checks
    return {"arena_pages": arena, "files": FILES, "outside_arena": True, "ops": ops + [{"op": "snapshot"}]}

