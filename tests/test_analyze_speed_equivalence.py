"""Differential tests of the fast analyze stages against simple references.

``parse_maps`` has a whole-text fast path (``maps._parse_maps_text``), ``find_guards`` counts
merges without a union-find and ``build_layout`` works on per-VMA columns. Each must give
exactly what the straightforward version gives: the line parser, and the references below
(the plain per-VMA loops these stages were before they were tuned). No timing here: the
benchmarks are in bench/.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from sparsemm import abi
from sparsemm.analyze import maps as maps_mod
from sparsemm.analyze import rebuild as rb
from sparsemm.analyze.guards import (GuardCost, GuardPolicy, GuardSide, GuardSummary, Role, VmaRole,
                                     _merge_compatible, find_guards, guard_cost)
from sparsemm.analyze.maps import MapKind, MapsParseError, parse_maps, parse_smaps

DATA = Path(__file__).resolve().parent / "data" / "maps"
SAMPLES = sorted(DATA.glob("*.maps"))
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = abi.PAGE_SIZE

POLICIES = [GuardPolicy(), GuardPolicy.strict(), GuardPolicy(cost_ratio=0.5, max_borderline_bytes=None),
            GuardPolicy(neighbour_perms="rw-p", assume_anon_vma=False, assume_neighbour_tables=False,
                        cost_ratio=3.0),
            GuardPolicy(max_guard_bytes=0, max_borderline_bytes=8 * MiB)]


# --- inputs ----------------------------------------------------------------------------------

PATHS = ["", "", "", "", "[anon:partition_alloc]", "[anon:v8]", "[heap]", "[stack]", "[vdso]", "[vvar]",
         "[vsyscall]", "[uprobes]", "/usr/lib/libc.so.6", "/usr/lib/libbig.so", "/dev/zero (deleted)",
         "/memfd:jit (deleted)", "/SYSV00000000 (deleted)", "/tmp/gone (deleted)", "[anon_shmem:x]",
         "/usr/lib/weird name.so", "anon_inode:[perf_event]"]
PERMS = ["rw-p", "r--p", "r-xp", "rwxp", "---p", "rw-s", "---s", "-w-p"]


def random_map(rng: random.Random, n: int, smaps: bool) -> str:
    """``n`` VMAs: guard-shaped runs (rw-p / ---p alternating, anonymous, small or huge) mixed
    with files, specials, shared memory, holes of every size and, in smaps, random counters
    and VmFlags."""
    out, addr, vsyscall = [], 0x10000, False
    for i in range(n):
        addr += rng.choice([0, 0, 0, 0, 0, 0, 1, 3, 512, 1024, 1 << 18, 1 << 19, 1 << 22]) * PAGE
        path = rng.choice(PATHS)
        size = rng.choice([1, 1, 2, 4, 15, 16, 64, 509, 512, 4096, 262144]) * PAGE
        perms = rng.choice(PERMS)
        if rng.random() < 0.5:  # guard-shaped
            path = rng.choice(["", "", "", "[anon:partition_alloc]", "[heap]"])
            perms = "---p" if i % 2 else "rw-p"
        if path == "[vsyscall]":
            path, vsyscall = ("" if vsyscall else path), True
        off, dev, ino = 0, "00:00", 0
        if path.startswith(("/", "anon_inode")):
            size = rng.choice([1, 2, 16, 64]) * PAGE
            dev, ino = "fe:01", 1000 + PATHS.index(path)
            off = rng.choice([0, 16 * PAGE, 1 << 33, (1 << 33) + size]) if "big" in path else 0
        head = f"{addr:08x}-{addr + size:08x} {perms} {off:08x} {dev} {ino} "
        out.append(head.ljust(73) + path if path else head)
        if smaps:
            rss = rng.choice([0, 0, 4, size // KiB, size // (2 * KiB)])
            for key, value in (("Size", size // KiB), ("Rss", rss), ("Anonymous", rng.choice([0, rss])),
                               ("Swap", rng.choice([0, 0, 4]))):
                if rng.random() < 0.95:
                    out.append(f"{key + ':':<16}{value:>8} kB")
            flags = [f for f, c in zip(("rd", "wr", "ex"), perms) if c != "-"] + ["mr", "mw", "me"]
            flags += [f for f in ("ac", "nr", "sd", "gu", "dd", "zz") if rng.random() < 0.15]
            out.append("VmFlags: " + " ".join(flags) + " ")
        addr += size
    return "\n".join(out) + "\n"


def ladder(n: int) -> str:
    """``rw-p 60K | ---p 4K`` repeated: page-sized guards, every one a sandwich."""
    out, addr = [], 0x100000000000
    for i in range(n):
        size = 4 * KiB if i % 2 else 60 * KiB
        out.append(f"{addr:x}-{addr + size:x} {'---p' if i % 2 else 'rw-p'} 00000000 00:00 0 ")
        addr += size
    return "\n".join(out) + "\n"


def inputs():
    """(name, entries) for every map the differential tests run on."""
    out = [(p.name, parse_maps(p.read_text(), p.name)) for p in SAMPLES]
    out.append(("ladder", parse_maps(ladder(2000))))
    for seed in range(3):
        out.append((f"random{seed}.maps", parse_maps(random_map(random.Random(seed), 800, smaps=False))))
        out.append((f"random{seed}.smaps", parse_smaps(random_map(random.Random(seed), 800, smaps=True))))
    return out


INPUTS = inputs()


# --- parse: the whole-text fast path against the line parser -----------------------------------

def mutate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.choice([1, 1, 2])):
        i = rng.randrange(len(lines))
        line, how = lines[i], rng.randrange(8)
        if how == 0 and line:
            j = rng.randrange(len(line))
            line = line[:j] + line[j + 1:]
        elif how == 1:
            j = rng.randrange(len(line) + 1)
            line = line[:j] + rng.choice(" -:0fgx\tZ\r\x1c\xa0[]/(") + line[j:]
        elif how == 2:
            lines.insert(i, line)
        elif how == 3:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            continue
        elif how == 4:
            parts = line.split(" ")
            parts[rng.randrange(len(parts))] = rng.choice(["", "0x10", "1_0", "+1", "rw-x", "f" * 17, "Rss:"])
            line = " ".join(parts)
        elif how == 5:
            lines.insert(i, rng.choice(["", "   ", "\t", "Rss: 4 kB", "VmFlags: rd"]))
        elif how == 6:
            line = line.replace(" ", "  ", 1)
        else:
            line = line.upper()
        lines[i] = line
    return "\n".join(lines)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_fast_parse_takes_well_formed_text(path):
    text = path.read_text()
    fast = maps_mod._parse_maps_text(text)
    assert fast is not None
    assert fast == maps_mod._parse_lines(text, path.name, False)


def test_fast_parse_matches_line_parser_on_broken_text():
    rng = random.Random(7)
    bases = [SAMPLES[-1].read_text().split("\n")[:40], random_map(random.Random(1), 40, False).split("\n"),
             ["1000-2000 rw-p 00000000 00:00 0", "2000-3000 ---p 00000000 00:00 0 \x1c",
              "3000-4000 r--p 00000000 fe:00 12      \t /a path\twith tabs \r", ""]]
    accepted = 0
    for _ in range(3000):
        text = mutate(rng, "\n".join(rng.choice(bases)))
        fast = maps_mod._parse_maps_text(text)
        try:
            slow = maps_mod._parse_lines(text, "t", False)
        except MapsParseError:
            assert fast is None, text
            continue
        if fast is not None:
            accepted += 1
            assert fast == slow, text
        assert parse_maps(text) == slow
    assert accepted > 100  # the fast path did take the well-formed mutants (blank lines, paths...)


# --- find_guards: against a union-find over the original per-entry rules -------------------------

def ref_guard_cost(entry, below, above, policy) -> GuardCost:
    k = policy.constants

    def has_anon_vma(e):
        c = e.counters
        return policy.assume_anon_vma if c is None else bool(c.get("Anonymous", 0) or c.get("Swap", 0)
                                                             or c.get("Rss", 0))

    def has_tables(e):
        if e is None:
            return False
        return policy.assume_neighbour_tables if e.counters is None else bool(e.counters.get("Rss", 0))

    both = (below is not None and above is not None and below.perms == above.perms
            and _merge_compatible(below, above))
    vmas_saved = 2 if both else 1
    avc = k.anon_vma_chain if any(has_anon_vma(n) for n in (below, above) if n is not None) else 0

    def tables(span):
        first, last = entry.start // span, (entry.end - 1) // span
        n = last - first + 1
        if has_tables(below) and (entry.start - 1) // span == first:
            n -= 1
        if n > 0 and has_tables(above) and entry.end // span == last:
            n -= 1
        return max(n, 0)

    pte, pmd = tables(k.pte_table_span), tables(k.pmd_table_span)
    return GuardCost(vmas_saved, vmas_saved * (k.vma_bytes + avc), pte, pmd, (pte + pmd) * k.page_table)


def ref_find_guards(entries, policy):
    n = len(entries)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    def union(i, j):
        ri, rj = find(i), find(j)
        parent[rj] = ri
        return ri != rj

    def neighbour(cand, guard, touching):
        return (cand is not None and touching and cand.prot != 0 and cand.is_vma
                and (policy.neighbour_perms is None or cand.perms == policy.neighbour_perms)
                and cand.is_anon_private and guard.is_anon_private and _merge_compatible(cand, guard))

    roles, merges = [], 0
    count = dict.fromkeys(("guards", "sandwiches", "reservations", "isolated", "guard_bytes", "vma_bytes",
                           "marker_bytes", "payload", "payload_bytes"), 0)
    payload_joins = set()  # (i, i + 1) pairs joined when the payload becomes markers too
    for i, e in enumerate(entries):
        if e.prot != 0 or not e.is_anon_private:
            roles.append(VmaRole(e, Role.MAPPING))
            continue
        prev = entries[i - 1] if i > 0 else None
        nxt = entries[i + 1] if i + 1 < n else None
        below = prev if neighbour(prev, e, prev is not None and prev.end == e.start) else None
        above = nxt if neighbour(nxt, e, nxt is not None and nxt.start == e.end) else None
        if below is None and above is None:
            big = e.size > policy.max_guard_bytes
            roles.append(VmaRole(e, Role.RESERVATION if big else Role.MAPPING, reason="isolated"))
            count["reservations" if big else "isolated"] += 1
            continue
        cost = ref_guard_cost(e, below, above, policy)
        if cost.vmas_saved == 2:
            side = GuardSide.BOTH
        elif below is not None:
            side, above = GuardSide.BELOW, None
        else:
            side = GuardSide.ABOVE
        if e.size <= policy.max_guard_bytes:
            role, reason = Role.GUARD, "small"
        elif policy.max_borderline_bytes is not None and e.size > policy.max_borderline_bytes:
            role, reason = Role.RESERVATION, "too large"
        elif cost.marker_bytes <= policy.cost_ratio * cost.vma_bytes:
            role, reason = Role.DECOMMITTED, "cheaper as markers"
        else:
            role, reason = Role.RESERVATION, "markers cost more"
        roles.append(VmaRole(e, role, side, cost, reason))
        if role is Role.RESERVATION:
            count["reservations"] += 1
            continue
        if below is not None:
            payload_joins.add(i - 1)
        if above is not None:
            payload_joins.add(i)
        if role is Role.DECOMMITTED:
            count["payload"] += 1
            count["payload_bytes"] += e.size
            continue
        count["guards"] += 1
        count["sandwiches"] += side is GuardSide.BOTH
        count["guard_bytes"] += e.size
        count["vma_bytes"] += cost.vma_bytes
        count["marker_bytes"] += cost.marker_bytes
        if below is not None:
            merges += union(i - 1, i)
        if above is not None:
            merges += union(i, i + 1)
    vmas = sum(e.is_vma for e in entries)
    summary = GuardSummary(vmas, count["guards"], count["sandwiches"], count["guards"] - count["sandwiches"],
                           count["reservations"], count["isolated"], vmas - merges, vmas - count["guards"],
                           count["guard_bytes"], count["vma_bytes"], count["marker_bytes"],
                           count["payload"], count["payload_bytes"], vmas - len(payload_joins),
                           vmas - count["guards"] - count["payload"])
    return roles, summary


@pytest.mark.parametrize("policy", POLICIES, ids=range(len(POLICIES)))
@pytest.mark.parametrize("name, entries", INPUTS, ids=[name for name, _ in INPUTS])
def test_find_guards_matches_reference(name, entries, policy):
    c = find_guards(entries, policy)
    roles, summary = ref_find_guards(entries, policy)
    assert c.summary == summary
    assert len(c.roles) == len(entries)
    for got, want, e in zip(c.roles, roles, entries):
        assert got.entry is e
        assert (got.role, got.side, got.cost, got.reason) == (want.role, want.side, want.cost, want.reason)


def test_guard_cost_matches_reference():
    rng = random.Random(3)
    entries = INPUTS[-1][1]  # smaps: counters and VmFlags
    for _ in range(2000):
        i = rng.randrange(1, len(entries) - 1)
        below = entries[i - 1] if rng.random() < 0.7 else None
        above = entries[i + 1] if rng.random() < 0.7 else None
        policy = rng.choice(POLICIES)
        assert guard_cost(entries[i], below, above, policy) == ref_guard_cost(entries[i], below, above, policy)


# --- build_layout: against the per-VMA loops --------------------------------------------------------

def ref_backing(e) -> str:
    return rb._backing_of(e.kind, e.shared)


def ref_category(e, role) -> str:
    if role is Role.GUARD:
        return "guard"
    if role is Role.DECOMMITTED:
        return "payload"
    if role is Role.RESERVATION or (e.prot == 0 and ref_backing(e) == "anon"):
        return "reservation"
    if ref_backing(e) == "file":
        return "file"
    return "rw" if e.kind in (MapKind.ANON, MapKind.HEAP) and not e.shared else "other"


def ref_units(roles):
    n = len(roles)
    join_next = [False] * n
    for i, r in enumerate(roles):
        if r.role in (Role.GUARD, Role.DECOMMITTED):  # payload spans its neighbours too
            if r.side in (GuardSide.BELOW, GuardSide.BOTH):
                join_next[i - 1] = True
            if r.side in (GuardSide.ABOVE, GuardSide.BOTH):
                join_next[i] = True
    out, i = [], 0
    while i < n:
        j = i
        while j < n - 1 and join_next[j]:
            j += 1
        out.append((i, j))
        i = j + 1
    return out


def ref_place(vmas, shrinkable, granule, shrink):
    pos, starts, sizes, shrunk, prev_end = vmas[0].start % granule, [], [], 0, None
    for e, can in zip(vmas, shrinkable):
        if prev_end is not None:
            gap = e.start - prev_end
            pos += granule + gap % granule if gap >= 2 * granule else gap
        size = e.size
        if shrink and can and size >= 2 * granule:
            size, shrunk = granule + size % granule, shrunk + 1
        starts.append(pos)
        sizes.append(size)
        pos += size
        prev_end = e.end
    return starts, sizes, pos, shrunk


def ref_layout(entries, classification, touch="auto", arena_limit=rb.REPRODUCIBLE_ARENA_BYTES):
    """(placed, units, ops, granule, shrunk, separated, touched) as the per-VMA loops build them."""
    pairs = [(e, r) for e, r in zip(entries, classification.roles) if e.is_vma]
    vmas, roles = [e for e, _ in pairs], [r for _, r in pairs]
    mode = rb._resolve_touch(touch, vmas)
    unit_ranges = ref_units(roles)
    shrinkable = [i == j and vmas[i].prot == 0 for i, j in unit_ranges for _ in range(j - i + 1)]
    for granule, shrink in rb._LEVELS:
        starts, sizes, arena_bytes, shrunk = ref_place(vmas, shrinkable, granule, shrink)
        if arena_bytes <= arena_limit:
            break
    else:
        return None
    file_idx = [i for i, e in enumerate(vmas) if ref_backing(e) == "file"]
    names = rb._file_names(vmas, file_idx)
    pgoffs, _ = rb._file_pgoffs(vmas, file_idx, names)
    placed = [rb.Placed(e, r.role, s // PAGE, z // PAGE, 0, ref_category(e, r.role), r.role is Role.GUARD)
              for e, r, s, z in zip(vmas, roles, starts, sizes)]
    units = []
    for u, (i, j) in enumerate(unit_ranges):
        members = placed[i:j + 1]
        for p in members:
            p.unit = u
        base = next((p.entry for p in members if p.role not in (Role.GUARD, Role.DECOMMITTED)),
                    members[0].entry)
        backing = ref_backing(base)
        units.append(rb.Unit(first=i, last=j, at=members[0].at,
                             npages=members[-1].at + members[-1].npages - members[0].at,
                             prot=rb._prot(base.prot), backing=backing,
                             file=names.get(base.path) if backing == "file" else None,
                             pgoff=pgoffs.get(i, 0), shared=base.shared,
                             guards=sum(p.role is Role.GUARD for p in members)))
        units[-1].noreserve = rb._base_noreserve(units[-1], base)
    separated = 0
    for prev, u in zip(units, units[1:]):
        if rb._could_merge(prev, u, placed):
            separated += 1
            u.noreserve = not u.noreserve if prev.noreserve == u.noreserve else u.noreserve
    ops = [t for p in placed for t in rb._touch_ops(p, units[p.unit].backing, mode)]
    touched = sum(t["len"] for t in ops)
    if touched > rb.MAX_TOUCHED_PAGES and touch == "auto":  # too much Rss: first pages instead
        ops = [t for p in placed for t in rb._touch_ops(p, units[p.unit].backing, "first")]
        touched = sum(t["len"] for t in ops)
    ops += [{"op": "madvise", "at": p.at, "len": p.npages, "advice": "guard_install"} if p.role is Role.GUARD
            else {"op": "mprotect", "at": p.at, "len": p.npages, "prot": "none"}
            for p in placed if p.role in (Role.GUARD, Role.DECOMMITTED)]
    return placed, units, ops, granule, shrunk, separated, touched


@pytest.mark.parametrize("touch", ["auto", "first", "none"])
@pytest.mark.parametrize("name, entries", INPUTS, ids=[name for name, _ in INPUTS])
def test_build_layout_matches_reference(name, entries, touch):
    for policy in POLICIES[:2]:
        c = find_guards(entries, policy)
        limits = [rb.REPRODUCIBLE_ARENA_BYTES]
        while True:  # walk down every compression level: each limit just below the last arena
            try:
                want = ref_layout(entries, c, touch, limits[-1])
            except rb.LayoutError as err:  # a file too large for a script
                with pytest.raises(rb.LayoutError, match="may have") as got:
                    rb.build_layout(entries, c, touch=touch, arena_limit=limits[-1])
                assert str(got.value) == str(err)
                break
            if want is None:
                with pytest.raises(rb.LayoutError, match="of arena even compressed"):
                    rb.build_layout(entries, c, touch=touch, arena_limit=limits[-1])
                break
            lay = rb.build_layout(entries, c, touch=touch, arena_limit=limits[-1])
            placed, units, ops, granule, shrunk, separated, touched = want
            assert [dataclasses.astuple(p) for p in lay.placed] == [dataclasses.astuple(p) for p in placed]
            assert all(p.entry is q.entry for p, q in zip(lay.placed, placed))
            assert lay.units == units
            assert lay.script["ops"][len(units):] == ops
            assert [(op["at"], op["len"], "noreserve" in op["flags"]) for op in lay.script["ops"][:len(units)]] \
                == [(u.at, u.npages, u.noreserve) for u in units]
            assert (lay.granule, lay.shrunk_reservations, lay.separated, lay.touched_pages) == \
                (granule, shrunk, separated, touched)
            limits.append(lay.arena_pages * PAGE - PAGE)
