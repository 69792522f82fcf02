"""Random op scripts for differential testing, drawn from a seeded ``random.Random``.

Owns the profiles (what a script looks like: arena, files, op count, which ops how
often) and ``OP_GENERATORS``, the one table of op generators with their weight in each
profile. To teach the fuzzer a new op, write ``def _x(g: ScriptGen) -> dict`` and
register it with ``@op_generator("x", mixed=2, errors=1)``. Every script it draws is
one the kernel backend may run safely (see ``ScriptGen`` on lengths); it never imports
the model or a backend.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from sparsemm import abi
from sparsemm.opscript.script import SPECIAL_MAPPINGS, TOP_LEVEL_KEYS

PAGE = abi.PAGE_SIZE
U64 = (1 << 64) - 1
#: Where the parser asks a script to declare ranges past the arena's end and other
#: edge arguments (``outside_arena``), generated scripts declare it.
_DECLARE_OUTSIDE = "outside_arena" in TOP_LEVEL_KEYS

PROTS = ("", "r", "rw", "rx", "rwx", "w", "x")
#: Every advice the op format names, except hwpoison/soft_offline: as root they take
#: real memory out of service.
ADVICE = ("dontneed", "free", "guard_install", "guard_remove", "wipeonfork", "keeponfork",
          "dontfork", "dofork", "populate_read", "populate_write", "willneed", "cold",
          "pageout", "normal", "random", "sequential", "dontdump", "dodump", "hugepage",
          "nohugepage", "remove", "dontneed_locked", "mergeable", "unmergeable", "collapse")
GUARD_ADVICE = ("guard_install", "guard_remove")
THP_ADVICE = ("hugepage", "hugepage", "nohugepage", "collapse", "collapse", "guard_install",
              "guard_remove", "dontneed", "dontneed_locked", "free", "populate_write",
              "populate_read", "pageout", "wipeonfork")
FILE_ADVICE = ("remove", "remove", "dontneed", "pageout", "cold", "willneed", "populate_read",
               "populate_write", "guard_install", "guard_remove", "collapse", "free",
               "dontneed_locked", "sequential", "hugepage", "nohugepage")
#: Advice that changes VMA flags, so that it splits a VMA: the maxmap profile's tools.
SPLIT_ADVICE = ("dontfork", "dofork", "wipeonfork", "keeponfork", "dontdump", "dodump",
                "hugepage", "nohugepage", "mergeable", "unmergeable", "random", "sequential",
                "normal")
#: Raw advice numbers for invalid-advice cases; never 100/101 (see ADVICE).
RAW_ADVICE = tuple(range(-1, 30)) + (26, 27, 99, 104, 105, 127, 128, 1 << 20, -(1 << 31))
MAP_KINDS = (("private", "anonymous"), ("shared", "anonymous"), ("private",), ("shared",))
MAP_EXTRA = ("fixed", "fixed", "populate", "noreserve", "locked", "growsdown")
SEALS = ("seal", "shrink", "grow", "write", "future_write")
#: Byte lengths at the edges. Each huge one is refused by the kernel on its arguments
#: (larger than TASK_SIZE - addr, or wrapping) except for mprotect/mlock/munlock, which
#: stop at the first hole after the arena; madvise walks across holes, so its huge
#: lengths are replaced (``ScriptGen.edge_length``).
EDGE_LENGTHS = (0, 1, 4095, 4097, -1, -4096, U64, 1 << 63, 1 << 47)
THP_LENS = (1, 3, 16, 256, 511, 512, 513, 1024)
#: A 2 MiB block in pages.
HPAGE = 512


@dataclass(frozen=True, slots=True)
class Profile:
    """The shape of a profile's scripts. ``weights`` come from ``OP_GENERATORS``."""

    name: str
    summary: str
    arenas: tuple[int, ...]  # arena sizes in pages, one drawn per script
    files: tuple[tuple[str, int], ...]  # (name, pages)
    ops: tuple[int, int]  # min and max top-level ops (a fork counts as one)
    max_len: int = 12  # longest page-form length of a range
    child_ops: int = 6  # most ops in a fork child (before its final snapshot)
    fork_depth: int = 1  # forks inside forks up to this depth
    advice: tuple[str, ...] = ADVICE
    thp: bool = False  # positions and lengths around 2 MiB blocks
    setup: float = 0.0  # chance that a script starts with mappings over most of the arena
    disk: tuple[str, ...] = ()  # which of ``files`` are regular files on disk ("disk": true)
    readonly: float = 0.0  # chance that a file mmap maps the file's O_RDONLY descriptor
    cpu: float = 0.0  # chance that a touch is a real CPU load/store ("cpu": true)
    hugetlb: int = 0  # most 2 MiB huge pages a script reserves ("hugetlb_pages"); 0: none


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("mixed", "every op, as the differential test always drew them: small arenas "
            "(16 or 48 pages) so that ops collide, forks with up to 6 child ops",
            arenas=(16, 48), files=(("f", 20), ("g", 6)), ops=(1, 24)),
    Profile("guards", "guard install/remove around everything that meets a marker: "
            "touches, forks (wipeonfork, CoW), mremap moves, mprotect, munmap/mmap over "
            "markers, mlock and populate, dontneed, process_madvise",
            arenas=(16, 48, 64), files=(("f", 20), ("g", 6)), ops=(1, 32), fork_depth=2,
            setup=0.7),
    Profile("thp", "2 MiB-scale ranges in a 4-8 MiB arena: MADV_HUGEPAGE/COLLAPSE, partial "
            "mprotect/munmap/dontneed of a huge page, PMD-aligned mremap moves, guards, "
            "shmem collapse",
            arenas=(2048, 4096), files=(("h", 1024),), ops=(1, 16), advice=THP_ADVICE, thp=True,
            setup=0.6),
    Profile("files", "memfd mappings shared and private, past EOF, at offsets; ftruncate, "
            "hole punch, seals, MADV_REMOVE, CoW, fault-around, pageout",
            arenas=(16, 48, 64), files=(("f", 20), ("g", 6), ("e", 0)), ops=(1, 24),
            advice=FILE_ADVICE, setup=0.6),
    Profile("errors", "argument checks: byte-form unaligned, zero, negative and huge "
            "lengths, raw advice numbers, odd mmap/mremap flag sets, bad offsets, seals "
            "then the calls they refuse, odd process_madvise ranges",
            arenas=(16, 48), files=(("f", 20), ("g", 6)), ops=(1, 20)),
    Profile("extensions", "the op format's extensions over guard markers: userfaultfd "
            "(register, UFFDIO_COPY onto markers), mseal, PAGEMAP_SCAN, guard advice on the "
            "vdso/vvar/vsyscall, real CPU touches (SIGSEGV/SIGBUS), process_madvise aimed at "
            "a child, raw prot and mmap flag bits",
            arenas=(16, 48, 64), files=(("f", 20), ("g", 6)), ops=(1, 24), fork_depth=1,
            setup=0.7, cpu=0.3),
    Profile("disk", "regular files on disk (written back, no seals) beside a memfd, mapped "
            "through read-only descriptors too (EACCES, no VM_MAYWRITE): shared and private "
            "mappings, mprotect, CoW, ftruncate, hole punch, MADV_REMOVE, pageout, guards, "
            "PAGEMAP_SCAN, CPU touches past EOF (SIGBUS)",
            arenas=(16, 48), files=(("d", 12), ("f", 20), ("z", 3)), disk=("d", "z"),
            ops=(1, 20), advice=FILE_ADVICE, setup=0.6, readonly=0.4, cpu=0.3),
    Profile("raw", "raw prot values (PROT_SEM, PROT_GROWSDOWN/UP, unknown bits; lists and "
            "integers) and raw mmap flag bits (MAP_STACK, MAP_DROPPABLE, MAP_NONBLOCK, "
            "MAP_SHARED_VALIDATE, unknown bits and map types) on growsdown, droppable and "
            "file mappings; process_madvise aimed at a child, up to 1,024 ranges",
            arenas=(16, 48), files=(("f", 20), ("g", 6)), ops=(1, 20), setup=0.5, cpu=0.2),
    Profile("hugetlb", "MAP_HUGETLB mappings (2 MiB pages from vm.nr_hugepages, which the "
            "kernel backend raises and restores; skipped where none can be reserved): "
            "unaligned and oversized maps, a pool that runs out, partial munmap/mprotect, "
            "guards (EINVAL), touches, mremap, fork, PAGEMAP_SCAN; not in the default set",
            arenas=(2048, 4096), files=(("f", 8),), ops=(1, 14), advice=ADVICE, thp=True,
            setup=0.6, cpu=0.2, hugetlb=4),
    Profile("maxmap", "a prefix that splits one mapping into close to vm.max_map_count VMAs "
            "with a few process_madvise calls (1,024 ranges each), then splitting ops at "
            "the limit: mprotect, mlock, munmap, mremap, madvise, mmap",
            arenas=(0,), files=(), ops=(1, 16), advice=SPLIT_ADVICE),
)}
#: The profiles a run cycles through by default; ``hugetlb`` (it changes
#: ``vm.nr_hugepages`` for each script) and ``maxmap`` (slow) only when named.
DEFAULT_PROFILES = ("mixed", "guards", "thp", "files", "errors", "extensions", "disk", "raw")


@dataclass(frozen=True, slots=True)
class OpGenerator:
    """One entry of ``OP_GENERATORS``: draws an op dict; its weight in each profile."""

    name: str
    draw: Callable[["ScriptGen"], dict]
    weights: dict[str, float]
    forks: bool = False  # draws child ops (only below the profile's fork depth)


#: name -> generator. The one table: add an op here (``op_generator``) and give it a
#: weight in the profiles that should draw it (a profile not named draws it never).
OP_GENERATORS: dict[str, OpGenerator] = {}


def op_generator(name: str, *, forks: bool = False, **weights: float):
    """Register ``fn(g) -> op dict`` under ``name`` with a weight per profile name."""
    unknown = set(weights) - set(PROFILES)
    if unknown:
        raise ValueError(f"op generator {name!r}: unknown profile(s) {sorted(unknown)}")

    def register(fn):
        if name in OP_GENERATORS:
            raise ValueError(f"op generator {name!r} registered twice")
        OP_GENERATORS[name] = OpGenerator(name, fn, dict(weights), forks)
        return fn
    return register


class ScriptGen:
    """Draws ops for one script of one profile.

    Addresses are pages in ``[lo, hi)`` (the arena, or the maxmap profile's window near
    the limit). Lengths stay in the arena zone or are ones the kernel refuses on their
    arguments alone, so no op can reach the running interpreter's own mappings.
    """

    def __init__(self, rng: random.Random, profile: Profile, arena: int,
                 files: dict[str, int], lo: int = 0, hi: int | None = None,
                 hugetlb_pages: int = 0):
        self.rng = rng
        self.hugetlb_pages = hugetlb_pages  # the script's huge-page pool
        self.profile = profile
        self.arena = arena
        self.files = files
        self.lo = lo
        self.hi = arena if hi is None else hi
        self.depth = 0  # fork nesting of the ops being drawn
        self._table = [(g, g.weights.get(profile.name, 0.0)) for g in OP_GENERATORS.values()]

    # -- small draws ---------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def prot(self) -> str:
        return self.pick(PROTS)

    def file(self) -> str:
        names = list(self.files)
        # the first file half the time, as the differential test drew "f"
        return names[0] if self.chance(0.5) else self.pick(names)

    def at(self) -> int:
        """A page address: uniform in the window, or near a 2 MiB block in THP mode."""
        if self.profile.thp:
            base = self.rng.randrange(0, max(1, self.arena // HPAGE)) * HPAGE
            return min(self.arena - 1, base + self.pick((0, 0, 0, 1, 100, 300, 511)))
        return self.rng.randrange(self.lo, self.hi)

    def length(self, at: int, past_end: int = 0) -> int:
        """A page length from ``at``: up to ``max_len`` (THP: 1..1024), ``past_end``
        pages beyond the window allowed."""
        room = self.hi - at + past_end
        if self.profile.thp:
            return max(1, min(self.pick(THP_LENS), room))
        return self.rng.randint(1, max(1, min(self.profile.max_len, room)))

    def span(self, past_end: int = 0) -> tuple[int, int]:
        at = self.at()
        return at, self.length(at, past_end)

    def edge_length(self, name: str) -> int:
        """A byte length for an edge op; huge ones only where the kernel refuses them."""
        n = self.pick(EDGE_LENGTHS + (PAGE * self.rng.randint(1, 12),) * 2)
        if name == "madvise" and n in (1 << 47, 1 << 63):
            n = PAGE * 5  # madvise walks every VMA above its start, holes or not
        return n

    # -- ops -----------------------------------------------------------------

    def op(self) -> dict:
        """One op, drawn by the profile's weights (forks only below the fork depth)."""
        table = [(g, w) for g, w in self._table
                 if w > 0 and (not g.forks or self.depth < self.profile.fork_depth)]
        total = sum(w for _, w in table)
        x = self.rng.random() * total
        for g, w in table:
            x -= w
            if x < 0:
                return g.draw(self)
        return table[-1][0].draw(self)

    def ops(self, n: int) -> list[dict]:
        return [self.op() for _ in range(n)]


# ---------------------------------------------------------------------------
# The op generators. Weights: "mixed" is the differential test's mix as it always was
# (per 80 draws: 16 forks, 12 mmap, 12 madvise, 12 touch, 4 each of munmap, mprotect,
# mremap, mlock, munlock and snapshot, 4 file ops); the other profiles add the rest.


@op_generator("mmap", mixed=12, guards=8, extensions=6, thp=8, files=14, errors=6, maxmap=2,
              disk=14, raw=8, hugetlb=10)
def _mmap(g: ScriptGen) -> dict:
    if not g.files:
        kind = list(g.pick(MAP_KINDS[:2]))
    elif g.profile.name in ("files", "disk"):
        kind = list(g.pick(MAP_KINDS[2:] * 3 + MAP_KINDS[:2]))
    elif g.profile.thp:
        kind = list(g.pick((MAP_KINDS[0],) * 4 + MAP_KINDS[1:]))
    else:
        kind = list(g.pick(MAP_KINDS))
    extra = []
    for _ in range(g.rng.randint(0, 2)):
        flag = g.pick(MAP_EXTRA)
        if flag not in extra:
            extra.append(flag)
    at, n = g.span()
    prot = g.pick(("rw", "r", "rw")) if g.profile.thp else g.prot()
    op = {"op": "mmap", "at": at, "len": n, "prot": prot, "flags": kind + extra}
    if g.profile.hugetlb:
        _hugetlb_flags(g, op)
    if "anonymous" not in kind:
        op["file"] = g.file()
        pages = g.files[op["file"]]
        if g.profile.thp:
            op["pgoff"] = g.pick((0, 0, HPAGE, 1, 7))
        elif g.profile.name in ("files", "disk"):
            op["pgoff"] = g.rng.randint(0, pages + 4)
        else:
            op["pgoff"] = g.rng.randint(0, 16)
        if g.profile.readonly and g.chance(g.profile.readonly):
            op["readonly"] = True  # through the file's O_RDONLY descriptor
    return op


#: MAP_HUGE_2MB and MAP_HUGE_1GB: a huge page size in bits 26..31 of the flags.
MAP_HUGE_2MB, MAP_HUGE_1GB = 21 << 26, 30 << 26


def _hugetlb_flags(g: ScriptGen, op: dict) -> None:
    """Make most anonymous mmaps of the hugetlb profile MAP_HUGETLB (a file one
    sometimes: EINVAL), now and then with a page size in the flags (2 MiB, or 1 GiB,
    of which the script reserves none)."""
    flags = op["flags"]
    if not g.chance(0.75 if "anonymous" in flags else 0.1):
        return
    flags.append("hugetlb")
    if g.chance(0.15):
        flags.append(g.pick((MAP_HUGE_2MB, MAP_HUGE_2MB, MAP_HUGE_1GB)))
    if g.chance(0.5):  # a length in whole huge pages, more often than THP_LENS gives it
        op["len"] = max(1, min(g.pick((HPAGE, HPAGE, 2 * HPAGE, 3 * HPAGE)), g.arena - op["at"]))


def _range(g: ScriptGen, name: str) -> dict:
    at, n = g.span(past_end=2)
    return {"op": name, "at": at, "len": n}


@op_generator("munmap", mixed=4, guards=4, extensions=2, thp=4, files=4, errors=3, maxmap=3, disk=4,
              raw=3, hugetlb=5)
def _munmap(g: ScriptGen) -> dict:
    return _range(g, "munmap")


@op_generator("mprotect", mixed=4, guards=6, extensions=2, thp=5, files=4, errors=3, maxmap=5,
              disk=5, raw=3, hugetlb=4)
def _mprotect(g: ScriptGen) -> dict:
    op = _range(g, "mprotect")
    op["prot"] = g.pick(("r", "rw", "", "rw")) if g.profile.thp else g.prot()
    return op


@op_generator("madvise", mixed=12, guards=6, extensions=3, thp=14, files=12, errors=5, maxmap=5,
              disk=10, raw=4, hugetlb=8)
def _madvise(g: ScriptGen) -> dict:
    op = _range(g, "madvise")
    op["advice"] = g.pick(g.profile.advice)
    return op


@op_generator("guard", guards=18, extensions=10, thp=4, files=4, errors=1, maxmap=2, disk=4, raw=3,
              hugetlb=3)
def _guard(g: ScriptGen) -> dict:
    """MADV_GUARD_INSTALL (twice as often) or MADV_GUARD_REMOVE."""
    op = _range(g, "madvise")
    op["advice"] = g.pick(GUARD_ADVICE[:1] * 2 + GUARD_ADVICE[1:])
    return op


@op_generator("mremap", mixed=4, guards=5, extensions=3, thp=5, files=4, errors=2, maxmap=3, disk=3,
              raw=2, hugetlb=4)
def _mremap(g: ScriptGen) -> dict:
    """In place, or a fixed move (with dontunmap: same length). Never a move the
    kernel places itself (its address differs on the model; docs/divergences.md)."""
    at, n = g.span(past_end=2)
    op = {"op": "mremap", "at": at, "len": n}
    mode = g.pick(("inplace", "fixed", "dontunmap"))
    if g.profile.thp:
        to = min(g.arena - 1, g.rng.randrange(0, max(1, g.arena // HPAGE)) * HPAGE
                 + g.pick((0, 0, 7)))
    else:
        to = g.rng.randrange(g.lo, g.hi)
    if mode == "inplace":
        op["new_len"] = max(1, min(g.length(at), g.hi - at))
        op["flags"] = []
    else:
        new_len = n if (mode == "dontunmap" or g.profile.thp) else g.length(to)
        op["new_len"] = max(1, min(new_len, g.hi - to))
        op["flags"] = ["maymove", "fixed"] + (["dontunmap"] if mode == "dontunmap" else [])
        op["to"] = to
    return op


@op_generator("mlock", mixed=4, guards=4, thp=1, files=2, errors=2, maxmap=4, disk=2, raw=3,
              hugetlb=2)
def _mlock(g: ScriptGen) -> dict:
    op = _range(g, "mlock")
    if g.chance(0.5):
        op["flags"] = ["onfault"]
    return op


@op_generator("munlock", mixed=4, guards=2, thp=1, files=2, errors=2, maxmap=2, disk=1, raw=1,
              hugetlb=1)
def _munlock(g: ScriptGen) -> dict:
    return _range(g, "munlock")


@op_generator("touch", mixed=12, guards=14, extensions=8, thp=10, files=14, errors=3, maxmap=1,
              disk=14, raw=8, hugetlb=10)
def _touch(g: ScriptGen) -> dict:
    if g.profile.thp:
        at = g.at()
        op = {"op": "touch", "at": at, "len": max(1, min(g.rng.randint(1, 3), g.arena - at))}
    else:
        op = _range(g, "touch")
    op["access"] = g.pick(("read", "write"))
    op["value"] = g.rng.randint(0, 255)
    if g.profile.cpu and g.chance(g.profile.cpu):
        op["cpu"] = True  # a real load/store in a forked child: SIGSEGV or SIGBUS
    return op


@op_generator("snapshot", mixed=4, guards=4, extensions=3, thp=3, files=4, errors=2, disk=4, raw=3,
              hugetlb=3)
def _snapshot(g: ScriptGen) -> dict:
    return {"op": "snapshot"}


@op_generator("fork", forks=True, mixed=16, guards=10, extensions=4, thp=4, files=8, errors=3,
              disk=6, raw=3, hugetlb=3)
def _fork(g: ScriptGen) -> dict:
    """A fork whose child runs up to ``child_ops`` ops, then a snapshot."""
    g.depth += 1
    try:
        child = g.ops(g.rng.randint(0, g.profile.child_ops))
    finally:
        g.depth -= 1
    return {"op": "fork", "child": child + [{"op": "snapshot"}]}


@op_generator("ftruncate", mixed=4 / 3, guards=0.5, thp=1, files=6, errors=2, disk=6)
def _ftruncate(g: ScriptGen) -> dict:
    name = g.file()
    top = max(g.files[name], 20) + 4
    if g.chance(0.5):
        return {"op": "ftruncate", "file": name, "bytes": g.rng.randint(0, top * PAGE)}
    return {"op": "ftruncate", "file": name, "pages": g.rng.randint(0, top)}


@op_generator("fallocate_punch", mixed=4 / 3, guards=0.5, thp=1, files=6, errors=2, disk=6)
def _punch(g: ScriptGen) -> dict:
    name = g.file()
    top = max(g.files[name], 20)
    if g.chance(0.5):
        return {"op": "fallocate_punch", "file": name, "at_bytes": g.rng.randint(0, top * PAGE),
                "len_bytes": g.rng.randint(0, 8 * PAGE)}
    return {"op": "fallocate_punch", "file": name, "at": g.rng.randint(0, top),
            "len": g.rng.randint(1, 8)}


@op_generator("process_madvise", mixed=4 / 3, guards=4, extensions=1, thp=1, files=2, errors=2,
              maxmap=1, disk=2, raw=1, hugetlb=1)
def _process_madvise(g: ScriptGen) -> dict:
    ranges = []
    for _ in range(g.rng.randint(1, 3)):
        at = g.rng.randrange(g.lo, g.hi)
        ranges.append([at, g.rng.randint(1, 4)])
    pool = ("guard_install", "guard_remove", "dontneed", "cold", "pageout", "willneed")
    if g.profile.name == "guards":
        pool = GUARD_ADVICE * 3 + pool
    elif g.profile.name == "maxmap":
        pool = SPLIT_ADVICE
    return {"op": "process_madvise", "ranges": ranges, "advice": g.pick(pool)}


@op_generator("seal", files=3, errors=2, disk=3)
def _seal(g: ScriptGen) -> dict:
    seals = g.rng.sample(SEALS, g.rng.randint(1, 2))
    return {"op": "seal", "file": g.file(), "seals": seals}


# -- userfaultfd, mseal, PAGEMAP_SCAN, special mappings ----------------------

#: PAGEMAP_SCAN categories (``PAGE_IS_*``) by their op-format names.
SCAN_CATEGORIES = ("wpallowed", "written", "file", "present", "swapped", "pfnzero", "huge",
                   "soft_dirty", "guard")


def _categories(g: ScriptGen, raw: bool) -> list[str] | int:
    if raw and g.chance(0.3):
        return g.pick((0, 1 << 9, 1 << 63, (1 << 9) - 1))  # unknown bits: EINVAL
    return g.rng.sample(SCAN_CATEGORIES, g.rng.randint(0, 2))


@op_generator("pagemap_scan", extensions=6, disk=3, hugetlb=2)
def _pagemap_scan(g: ScriptGen) -> dict:
    """``PAGEMAP_SCAN`` over a range: markers (``guard``) most often, odd masks, a short
    vector or a page limit that stops the walk early."""
    at, n = g.span(past_end=2)
    raw = g.chance(0.2)
    op = {"op": "pagemap_scan", "at": at, "len": n}
    if g.chance(0.5):
        op["require"] = ["guard"] if g.chance(0.5) else _categories(g, raw)
    if g.chance(0.3):
        op["anyof"] = _categories(g, raw)
    if g.chance(0.2):
        op["inverted"] = _categories(g, raw)
    if g.chance(0.5):
        op["return"] = _categories(g, raw)
    if g.chance(0.3):
        op["max_pages"] = g.rng.randint(0, 4)
    if g.chance(0.3):
        op["vec_len"] = g.rng.randint(0, 3) if not raw else g.pick((0, 1, 4096))
    return op


@op_generator("uffd_register", extensions=4, disk=1, raw=1)
def _uffd_register(g: ScriptGen) -> dict:
    return _range(g, "uffd_register")


@op_generator("uffd_unregister", extensions=1.5)
def _uffd_unregister(g: ScriptGen) -> dict:
    return _range(g, "uffd_unregister")


@op_generator("uffd_copy", extensions=4)
def _uffd_copy(g: ScriptGen) -> dict:
    """``UFFDIO_COPY``, onto holes, present pages and guard markers alike."""
    at, n = g.span()
    return {"op": "uffd_copy", "at": at, "len": min(n, 4), "value": g.rng.randint(0, 255)}


@op_generator("mseal", extensions=2, raw=1)
def _mseal(g: ScriptGen) -> dict:
    """``mseal``: later discards, guard installs, munmap, mprotect and mremap meet it."""
    op = _range(g, "mseal")
    if g.chance(0.1):
        op["flags"] = g.pick((1, 2, 1 << 31))
    return op


@op_generator("special_madvise", extensions=1)
def _special_madvise(g: ScriptGen) -> dict:
    """Guard advice on the process's own vdso/vvar/vsyscall (EINVAL, ENOMEM)."""
    return {"op": "special_madvise", "mapping": g.pick(SPECIAL_MAPPINGS),
            "advice": g.pick(GUARD_ADVICE)}


# -- raw prot and flag bits, process_madvise aimed at a child ----------------

#: ``prot`` bits beyond r/w/x: the named ones, unknown ones, and both grows bits at once.
RAW_PROT_BITS = (abi.PROT_SEM, abi.PROT_GROWSDOWN, abi.PROT_GROWSUP,
                 abi.PROT_GROWSDOWN | abi.PROT_GROWSUP, 0x10, 0x20, 0x80, 1 << 20, 1 << 30)
#: Map types the kernel does not know (``flags & 0xf``; 0x8 is MAP_DROPPABLE).
RAW_MAP_TYPES = (0x0, 0x4, 0x6, 0x7, 0xF)
#: Flag bits with no name in the op format, each ignored or refused by some rule:
#: MAP_32BIT (0x40, no effect at a fixed address), unused bits, MAP_DENYWRITE and
#: MAP_EXECUTABLE (legacy, ignored), MAP_SYNC (DAX only), MAP_UNINITIALIZED, a huge
#: page size without MAP_HUGETLB. Never MAP_HUGETLB itself: its result would depend
#: on the machine's huge-page pool (the hugetlb profile reserves one).
RAW_MAP_BITS = (0x40, 0x80, 0x200, 0x400, 0x800, 0x1000, 0x80000, 0x200000, 0x400000,
                0x800000, 0x4000000, MAP_HUGE_2MB)
RAW_MAP_NAMES = ("stack", "stack", "nonblock", "populate", "locked", "growsdown", "noreserve",
                 "fixed", "fixed")
#: Advice another process may be given (cold, pageout, willneed, collapse), twice as
#: often as a few it may not (EINVAL).
REMOTE_ADVICE = ("cold", "pageout", "willneed", "collapse") * 2 + (
    "guard_install", "dontneed", "free", "populate_read", "hugepage", "remove")


def raw_prot(g: ScriptGen) -> list | int:
    """A ``prot`` as a list of names with one or two bits beyond r/w/x, or a raw int."""
    rwx = [c for c in "rwx" if g.chance(0.5)]
    if g.chance(0.5):
        extra = g.rng.sample(("sem", "growsdown", "growsup"), g.rng.randint(1, 2))
        return rwx + extra
    word = sum(abi.PROT_BY_NAME[c] for c in rwx)
    return word | (g.pick(RAW_PROT_BITS) if g.chance(0.8) else 0)


@op_generator("mmap_raw", extensions=3, raw=14)
def _mmap_raw(g: ScriptGen) -> dict:
    """mmap with raw bits: MAP_STACK, MAP_DROPPABLE, MAP_SHARED_VALIDATE, MAP_NONBLOCK,
    unknown bits and map types, a raw ``prot``; anonymous and file mappings."""
    at, n = g.span()
    kind = g.pick((("private", "anonymous"), ("droppable", "anonymous"),
                   ("droppable", "anonymous"), ("shared_validate", "anonymous"),
                   ("shared", "anonymous"), ("private",), ("shared",), ("shared_validate",),
                   ("droppable",), ("raw_type", "anonymous"), ("raw_type",)))
    flags: list = [g.pick(RAW_MAP_TYPES) if k == "raw_type" else k for k in kind]
    for _ in range(g.rng.randint(0, 2)):
        flag = g.pick(RAW_MAP_NAMES) if g.chance(0.5) else g.pick(RAW_MAP_BITS)
        if flag not in flags:
            flags.append(flag)
    prot = raw_prot(g) if g.chance(0.3) else g.prot()
    op = {"op": "mmap", "at": at, "len": n, "prot": prot, "flags": flags}
    if "anonymous" not in kind:
        op["file"] = g.file()
        op["pgoff"] = g.rng.randint(0, 8)
    return op


@op_generator("mprotect_raw", extensions=2, raw=8)
def _mprotect_raw(g: ScriptGen) -> dict:
    """mprotect with PROT_SEM, PROT_GROWSDOWN (down to a growsdown VMA's start),
    PROT_GROWSUP and unknown bits; now and then from an unaligned start."""
    op = _range(g, "mprotect")
    if g.chance(0.15):
        op = {"op": "mprotect", "at_bytes": op["at"] * PAGE + g.pick((1, 2048)), "len": op["len"]}
    op["prot"] = raw_prot(g)
    return op


@op_generator("process_madvise_child", extensions=2, raw=3, disk=1, hugetlb=1)
def _process_madvise_child(g: ScriptGen) -> dict:
    """process_madvise of a child forked for the call (its snapshot in the record):
    the advice another process may be given, some it may not, flags other than 0."""
    ranges = []
    for _ in range(g.rng.randint(1, 3)):
        at = g.rng.randrange(g.lo, g.hi)
        ranges.append([at, max(1, min(g.rng.randint(1, 6), g.hi - at))])
    op = {"op": "process_madvise", "ranges": ranges, "advice": g.pick(REMOTE_ADVICE),
          "target": "child"}
    if g.chance(0.1):
        op["flags"] = g.pick((1, 1 << 31))
    return op


@op_generator("process_madvise_many", extensions=0.5, raw=1.5)
def _process_madvise_many(g: ScriptGen) -> dict:
    """process_madvise with many ranges, up to the 1,024 the op format takes
    (UIO_MAXIOV): single pages across the window, repeats and holes, in or out of order."""
    n = g.pick((8, 64, 255, 256, 1023, 1024))
    ranges = [[g.rng.randrange(g.lo, g.hi), 1] for _ in range(n)]
    if g.chance(0.5):
        ranges.sort()
    advice = g.pick(("guard_install", "guard_remove", "dontneed", "cold", "pageout",
                     "willneed", "dontfork", "wipeonfork", "populate_write"))
    op = {"op": "process_madvise", "ranges": ranges, "advice": advice}
    if g.chance(0.2) and advice in REMOTE_ADVICE[:4]:
        op["target"] = "child"
    return op


# -- error paths -------------------------------------------------------------


@op_generator("edge", guards=0.5, files=1, errors=20, maxmap=1, raw=2)
def _edge(g: ScriptGen) -> dict:
    """Byte-form arguments: unaligned starts; odd, zero, negative and huge lengths; raw advice."""
    name = g.pick(("mmap", "munmap", "mprotect", "madvise", "mlock", "munlock", "mremap"))
    op = {"op": name, "at_bytes": g.rng.randrange(g.lo, g.hi) * PAGE + g.pick((0, 0, 1, 2048)),
          "len_bytes": g.edge_length(name)}
    if name == "mmap":
        op["prot"] = g.prot()
        op["flags"] = list(g.pick(MAP_KINDS[:2])) + ["fixed"]
    elif name == "mprotect":
        op["prot"] = g.prot()
    elif name == "madvise":
        op["advice"] = g.pick(ADVICE) if g.chance(0.5) else g.pick(RAW_ADVICE)
    elif name == "mremap":
        op["new_len_bytes"] = g.pick((0, 1, PAGE, 2 * PAGE, -PAGE))
        op["flags"] = list(g.pick(([], ["fixed"], ["dontunmap"], ["maymove", "fixed"],
                                   ["maymove", "fixed", "dontunmap"])))
        if "fixed" in op["flags"] or "dontunmap" in op["flags"]:
            op["to_bytes"] = g.rng.randrange(g.lo, g.hi) * PAGE + g.pick((0, 0, 1))
    return op


@op_generator("mmap_edge", files=1, errors=6, disk=1)
def _mmap_edge(g: ScriptGen) -> dict:
    """mmap flag sets and offsets the kernel refuses (or surprisingly accepts)."""
    at, n = g.span()
    flags = list(g.pick((
        ("anonymous",), ("private", "shared", "anonymous"), ("private", "shared"),
        ("shared", "anonymous", "growsdown"), ("private", "anonymous", "fixed_noreplace"),
        ("private", "anonymous", "fixed", "fixed_noreplace"), ("shared", "fixed"),
        ("private", "fixed", "populate"), ("private", "anonymous", "locked", "populate"),
        ("shared", "anonymous", "noreserve", "fixed"), ())))
    op = {"op": "mmap", "at": at, "len": n, "prot": g.prot(), "flags": flags}
    if "anonymous" not in flags or g.chance(0.2):
        op["file"] = g.file()
        if g.chance(0.5):
            op["pgoff_bytes"] = g.pick((1, 2048, PAGE, (1 << 63) - PAGE, (1 << 62), 1 << 44))
        else:
            op["pgoff"] = g.rng.randint(0, g.files[op["file"]] + 4)
    return op


@op_generator("mremap_edge", guards=0.5, files=1, errors=5)
def _mremap_edge(g: ScriptGen) -> dict:
    """mremap with an old length of 0 (duplicate a shared mapping), shrinking to odd
    lengths, overlapping fixed targets, dontunmap with a resize."""
    at, n = g.span(past_end=2)
    to = g.rng.randrange(g.lo, g.hi)
    form = g.pick(("dup", "overlap", "resize_dontunmap", "grow_into", "fixed_nomove"))
    if form == "dup":
        return {"op": "mremap", "at": at, "len": 0, "new_len": g.length(to),
                "flags": ["maymove", "fixed"], "to": to}
    if form == "overlap":
        return {"op": "mremap", "at": at, "len": n, "new_len": n, "flags": ["maymove", "fixed"],
                "to": max(g.lo, min(g.hi - 1, at + g.rng.randint(-n, n)))}
    if form == "resize_dontunmap":
        return {"op": "mremap", "at": at, "len": n, "new_len": n + g.pick((-1, 1)) or 1,
                "flags": ["maymove", "fixed", "dontunmap"], "to": to}
    if form == "grow_into":
        return {"op": "mremap", "at": at, "len": n, "new_len": n + g.rng.randint(1, 8), "flags": []}
    return {"op": "mremap", "at": at, "len": n, "new_len": n, "flags": ["fixed"], "to": to}


@op_generator("madvise_raw", errors=3, raw=1)
def _madvise_raw(g: ScriptGen) -> dict:
    op = _range(g, "madvise")
    op["advice"] = g.pick(RAW_ADVICE)
    return op


@op_generator("process_madvise_edge", errors=2, guards=0.5, raw=2)
def _process_madvise_edge(g: ScriptGen) -> dict:
    """Empty, overlapping, unsorted and out-of-arena ranges; raw advice."""
    ranges = []
    for _ in range(g.rng.randint(1, 6)):
        at = g.rng.randrange(g.lo, g.hi + 2)
        ranges.append([at, g.pick((0, 0, 1, 2, 4, g.hi - at + 1 if g.hi > at else 1))])
    advice = g.pick(ADVICE) if g.chance(0.7) else g.pick(RAW_ADVICE)
    return {"op": "process_madvise", "ranges": ranges, "advice": advice}


# ---------------------------------------------------------------------------
# Scripts.


def script_rng(seed: int | str, index: int = 0) -> random.Random:
    """The generator of script ``index`` of a run seeded ``seed`` (stable across runs
    and Python versions: string seeds hash with SHA-512)."""
    return random.Random(f"sparsemm-fuzz/{seed}/{index}")


def generate_script(profile: str | Profile, rng: random.Random, *, min_ops: int | None = None,
                    max_ops: int | None = None, max_map_count: int = abi.DEFAULT_MAX_MAP_COUNT
                    ) -> dict:
    """One script document of ``profile`` (top-level ops, forks counted as one, then a
    snapshot). ``min_ops``/``max_ops`` override the profile's range. ``max_map_count``
    is the limit the maxmap profile approaches (the kernel's ``vm.max_map_count``)."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    lo_ops = prof.ops[0] if min_ops is None else min_ops
    hi_ops = max(lo_ops, prof.ops[1] if max_ops is None else max_ops)
    if prof.name == "maxmap":
        doc = _maxmap_script(prof, rng, lo_ops, hi_ops, max_map_count)
    else:
        doc = _script(prof, rng, lo_ops, hi_ops)
    if _DECLARE_OUTSIDE:
        doc["outside_arena"] = True
    return doc


def _script(prof: Profile, rng: random.Random, lo_ops: int, hi_ops: int) -> dict:
    arena = rng.choice(prof.arenas)
    files = dict(prof.files)
    hugetlb = rng.randint(1, prof.hugetlb) if prof.hugetlb else 0
    g = ScriptGen(rng, prof, arena, files, hugetlb_pages=hugetlb)
    ops = _setup(g) if rng.random() < prof.setup else []
    ops += g.ops(rng.randint(lo_ops, hi_ops))
    doc: dict = {"arena_pages": arena}
    if hugetlb:
        doc["hugetlb_pages"] = hugetlb
    if files:
        doc["files"] = {name: ({"pages": pages, "disk": True} if name in prof.disk
                               else {"pages": pages}) for name, pages in files.items()}
    doc["ops"] = ops + [{"op": "snapshot"}]
    return doc


def _setup(g: ScriptGen) -> list[dict]:
    """One or two fixed mappings over most of the arena, so that later ops meet memory
    more often than holes (THP: 2 MiB-aligned, often MADV_HUGEPAGE)."""
    p = g.profile
    if p.hugetlb:  # what the pool holds, or less: the mapping reserves it
        at = g.rng.randrange(0, max(1, g.arena // HPAGE - 1)) * HPAGE
        n = min(g.arena - at, g.rng.randint(1, g.hugetlb_pages) * HPAGE)
        return [{"op": "mmap", "at": at, "len": n, "prot": "rw",
                 "flags": [g.pick(("private", "shared")), "anonymous", "fixed", "hugetlb"]}]
    if p.thp:
        at = g.rng.randrange(0, max(1, g.arena // HPAGE - 1)) * HPAGE
        n = min(g.arena - at, g.pick((HPAGE, 2 * HPAGE, 3 * HPAGE)))
        ops = [{"op": "mmap", "at": at, "len": n, "prot": "rw",
                "flags": ["private", "anonymous", "fixed"]}]
        if g.chance(0.7):
            ops.append({"op": "madvise", "at": at, "len": n, "advice": "hugepage"})
        return ops
    at = g.rng.randrange(0, max(1, g.arena // 4))
    n = g.rng.randint(max(1, g.arena // 2), g.arena - at)
    kind = g.pick(MAP_KINDS[2:] if p.name == "files" else MAP_KINDS)
    op = {"op": "mmap", "at": at, "len": n, "prot": g.pick(("rw", "rw", "r")),
          "flags": list(kind) + ["fixed"]}
    if "anonymous" not in kind:
        op["file"] = g.file()
        op["pgoff"] = 0
    return [op]


#: The note that marks the maxmap prefix: the shrinker keeps such ops as they are.
MAXMAP_PREFIX_NOTE = "maxmap prefix"
#: Ranges per process_madvise call (UIO_MAXIOV).
_IOV_MAX = 1024


def _maxmap_script(prof: Profile, rng: random.Random, lo_ops: int, hi_ops: int,
                   max_map_count: int) -> dict:
    """Split one mapping into about ``max_map_count - margin`` VMAs cheaply, then draw
    ops near the split frontier. The margin straddles the kernel backend's own VMAs
    (a Python process has one to two hundred), so some scripts cross the limit early."""
    margin = rng.choice((-40, 0, 60, 120, 160, 200, 260, 320, 400, 600))
    target = max(3, max_map_count - margin)
    singles = (target - 1) // 2  # page 2i+1 split off: 2 * singles + 1 VMAs
    tail = 512
    arena = 2 * singles + 1 + tail
    ops: list[dict] = [{"op": "mmap", "at": 0, "len": arena, "prot": "rw",
                        "flags": ["private", "anonymous", "noreserve"],
                        "note": MAXMAP_PREFIX_NOTE + ": one mapping"}]
    advice = rng.choice(("dontfork", "wipeonfork", "dontdump", "mergeable"))
    done = 0
    while done < singles:
        batch = min(_IOV_MAX, singles - done)
        ops.append({"op": "process_madvise",
                    "ranges": [[2 * (done + k) + 1, 1] for k in range(batch)], "advice": advice,
                    "note": f"{MAXMAP_PREFIX_NOTE}: split off {batch} pages"})
        done += batch
    frontier = 2 * singles + 1
    g = ScriptGen(rng, prof, arena, {}, lo=max(0, frontier - 64), hi=arena)
    ops.extend(g.ops(rng.randint(lo_ops, hi_ops)))
    ops.append({"op": "snapshot"})
    return {"arena_pages": arena, "ops": ops}


def count_ops(ops: list) -> int:
    """Ops of a script, fork children included."""
    n = 0
    for op in ops:
        n += 1
        if isinstance(op, dict) and isinstance(op.get("child"), list):
            n += count_ops(op["child"])
    return n
