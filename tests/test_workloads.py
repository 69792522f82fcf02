"""Workload generators: the scripts parse, scale, and build the expected layouts on the kernel.

Pictures: one character per page, ``G`` a guard, ``r`` RW, ``N`` a PROT_NONE VMA.
"""

from __future__ import annotations

import pytest

from sparsemm import workloads as w
from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.script import MAX_ARENA_PAGES, parse_script

from conftest import needs_guards


def run(doc):
    recs = run_kernel(parse_script(doc))
    assert [r for r in recs if r["ret"] != "ok"] == []
    return recs


def final(doc):
    return run(doc)[-1]["value"]


def guard_pages_pte(snap) -> set[int]:
    return {i for i, ch in enumerate(snap["pages"]) if ch == "G"}


def none_pages_vma(snap) -> set[int]:
    return {p for s, e, perms, *_ in snap["vmas"] if perms == "---p" for p in range(s, e)}


GENERATORS = {
    "partition_alloc": lambda n, **kw: w.partition_alloc(n, **kw),
    "thread_stacks_236": lambda n, **kw: w.thread_stacks(n, "2.36", 160, **kw),
    "thread_stacks_242": lambda n, **kw: w.thread_stacks(n, "2.42", 160, **kw),
    "wasm_memories": lambda n, **kw: w.wasm_memories(n, **kw),
    "random_guards": lambda n, **kw: w.random_guards(n, 7, **kw),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_small_scripts_parse_and_snapshot_only_when_asked(name):
    doc = GENERATORS[name](20)
    parse_script(doc)
    assert doc["note"] and doc["ops"][-1]["op"] != "snapshot"
    assert GENERATORS[name](20, snapshot=True)["ops"][-1] == {"op": "snapshot"}
    parse_script(w.to_vma_design(doc))


@pytest.mark.parametrize("name", GENERATORS)
def test_100k_guards_fit_the_arena(name):
    doc = GENERATORS[name](100_000)
    assert doc["arena_pages"] <= min(MAX_ARENA_PAGES, 1 << 24)  # the old limit too
    if name != "thread_stacks_236":  # 2.36 makes its guards with mprotect, not madvise
        assert w.guard_count(doc) == 100_000


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATORS)
def test_100k_scripts_parse(name):
    parse_script(GENERATORS[name](100_000))


def test_scales_beyond_the_arena_are_refused():
    # refused before any op is generated (these would be billions of ops)
    with pytest.raises(ValueError, match="arena"):
        w.thread_stacks(10, "2.42", MAX_ARENA_PAGES // 10 + 1)
    with pytest.raises(ValueError, match="arena"):
        w.partition_alloc(4 * (MAX_ARENA_PAGES // 512 + 1))
    with pytest.raises(ValueError, match="arena"):
        w.wasm_memories(MAX_ARENA_PAGES // 160 + 1)
    with pytest.raises(ValueError, match="arena"):
        w.random_guards(MAX_ARENA_PAGES // 8 + 1)


@needs_guards
def test_ten_thread_stacks_before_and_after_glibc_242():
    # 2.36:  Nrrr|Nrrr|...  2 VMAs per stack;  2.42: Grrr Grrr ... one merged RW VMA.
    old = final(w.thread_stacks(10, "2.36", 16, snapshot=True))
    new = final(w.thread_stacks(10, "2.42", 16, snapshot=True))
    assert len(old["vmas"]) == 20
    assert [v[2] for v in old["vmas"][:2]] == ["---p", "rw-p"]
    assert new["vmas"] == [[0, 160, "rw-p", "anon", 0, "gu"]]
    assert new["pages"] == ("G" + "." * 14 + "P") * 10
    assert guard_pages_pte(new) == none_pages_vma(old)


@needs_guards
def test_partition_alloc_super_pages():
    doc = w.partition_alloc(10, snapshot=True)
    assert doc["arena_pages"] == 3 * 512
    snap = final(doc)
    assert len(snap["vmas"]) == 1
    # super page 0: G P GG rrrr G ... GGGG; metadata touched before the guards went in
    assert snap["pages"][:10] == "GPGG....G."
    assert snap["pages"][508:513] == "GGGGG"
    vma = final(w.to_vma_design(doc))
    # trailing 16 KiB guard of one super page merges with the leading guard of the next
    assert len(vma["vmas"]) == 16
    assert guard_pages_pte(snap) == none_pages_vma(vma)


@needs_guards
def test_wasm_memories():
    doc = w.wasm_memories(5, memory_pages=4, guard_pages=12, snapshot=True)
    snap = final(doc)
    assert len(snap["vmas"]) == 1
    assert snap["pages"] == ("P..." + "G" * 12) * 5
    vma = final(w.to_vma_design(doc))
    assert [v[2] for v in vma["vmas"]] == ["rw-p", "---p"] * 5


@needs_guards
def test_random_guards_fault_the_same_on_both_designs():
    doc = w.random_guards(200, seed=3, pages_per_guard=8, mapping_pages=64, snapshot=True)
    pte, vma = run_kernel(parse_script(doc)), run_kernel(parse_script(w.to_vma_design(doc)))
    touches = lambda recs: [r["value"] for r in recs if r["op"] == "touch"]  # noqa: E731
    assert touches(pte) == touches(vma)
    assert "fault" in str(touches(pte))
    assert guard_pages_pte(pte[-1]["value"]) == none_pages_vma(vma[-1]["value"])
    assert len(vma[-1]["value"]["vmas"]) > 2 * len(pte[-1]["value"]["vmas"])


def test_to_vma_design_restores_the_tracked_protection():
    #   0123456789
    #   rrrrrRRRRR   r = rw, R = read-only (mprotect)
    #      GGGG      guard_install 3..7, then guard_remove 2..8
    doc = {"note": "x", "arena_pages": 16, "ops": [
        {"op": "mmap", "at": 0, "len": 10, "prot": "rw"},
        {"op": "mprotect", "at": 5, "len": 5, "prot": "r"},
        {"op": "madvise", "at": 3, "len": 4, "advice": "guard_install"},
        {"op": "touch", "at": 4, "access": "read"},
        {"op": "madvise", "at": 2, "len": 6, "advice": "guard_remove"},
        {"op": "fork", "child": [{"op": "madvise", "at": 0, "len": 1, "advice": "guard_remove"}]},
        {"op": "snapshot"}]}
    out = w.to_vma_design(doc)
    assert out["ops"][2] == {"op": "mprotect", "at": 3, "len": 4, "prot": "none"}
    assert out["ops"][4:6] == [{"op": "mprotect", "at": 2, "len": 3, "prot": "rw"},
                               {"op": "mprotect", "at": 5, "len": 3, "prot": "r"}]
    assert out["ops"][6]["child"] == [{"op": "mprotect", "at": 0, "len": 1, "prot": "rw"}]
    assert doc["ops"][2]["op"] == "madvise"  # the input is not changed
    assert "vma design" in out["note"]


@needs_guards
def test_to_vma_design_matches_markers_on_the_kernel():
    doc = {"arena_pages": 16, "ops": [
        {"op": "mmap", "at": 0, "len": 10, "prot": "rw"},
        {"op": "mprotect", "at": 5, "len": 5, "prot": "r"},
        {"op": "madvise", "at": 3, "len": 4, "advice": "guard_install"},
        {"op": "touch", "at": 0, "len": 10, "access": "read"},
        {"op": "snapshot"},
        {"op": "madvise", "at": 2, "len": 6, "advice": "guard_remove"},
        {"op": "touch", "at": 0, "len": 10, "access": "read"},
        {"op": "snapshot"}]}
    pte, vma = run(doc), run(w.to_vma_design(doc))
    assert pte[3]["value"] == vma[3]["value"] == [0, 0, 0] + ["fault"] * 4 + [0, 0, 0]
    assert pte[-2]["value"] == vma[-2]["value"] == [0] * 10
    assert guard_pages_pte(pte[4]["value"]) == none_pages_vma(vma[4]["value"]) == {3, 4, 5, 6}
    # after the removal both designs leave rw 0..4 and r 5..9
    assert [v[:3] for v in pte[-1]["value"]["vmas"]] == [v[:3] for v in vma[-1]["value"]["vmas"]] == [
        [0, 5, "rw-p"], [5, 10, "r--p"]]


def test_to_vma_design_refuses_what_it_cannot_follow():
    with pytest.raises(ValueError, match="mremap"):
        w.to_vma_design({"ops": [{"op": "mremap", "at": 0, "len": 1, "new_len": 2}]})
