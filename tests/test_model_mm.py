"""Unit tier for ``sparsemm.model``: AddressSpace calls, faults, page tables, views, invariants.

Every test drives the model directly and calls ``check()`` after each step; a
randomised stress test runs many generated scripts through the model alone.
Kernel facts these pin are the ones docs/model.md cites (Linux 6.18 here).
"""

from __future__ import annotations

import errno
import random

import pytest

from sparsemm import abi
from sparsemm.abi import Madv, VmFlag
from sparsemm.model import AddressSpace, MemFile, SegFault, procfs
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.runner import BackendUnavailable
from sparsemm.opscript.script import parse_script

B = abi.ARENA_BASE
P = abi.PAGE_SIZE
ANON = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED
RW = abi.PROT_READ | abi.PROT_WRITE


def pg(n: int) -> int:
    return B + n * P


@pytest.fixture
def mm():
    return AddressSpace()


def checked(mm, fn, *args):
    try:
        return fn(*args)
    finally:
        mm.check()


def test_mmap_merge_and_split(mm):
    checked(mm, mm.mmap, pg(0), 4 * P, RW, ANON)
    checked(mm, mm.mmap, pg(4), 4 * P, RW, ANON)
    assert mm.map_count == 1
    checked(mm, mm.mprotect, pg(2), 2 * P, abi.PROT_READ)
    assert [v.perms for v in mm] == ["rw-p", "r--p", "rw-p"]
    checked(mm, mm.mprotect, pg(2), 2 * P, RW)
    assert mm.map_count == 1


def test_guard_install_zaps_and_faults(mm):
    checked(mm, mm.mmap, pg(0), 4 * P, RW, ANON)
    checked(mm, mm.access, pg(1), True, 7)
    checked(mm, mm.madvise, pg(1), P, Madv.GUARD_INSTALL)
    with pytest.raises(SegFault) as exc:
        mm.access(pg(1))
    assert exc.value.si_code == abi.SEGV_MAPERR
    assert procfs.pagemap_word(mm, pg(1)) == abi.PM_GUARD_REGION | abi.PM_SWAP
    checked(mm, mm.madvise, pg(0), 4 * P, Madv.GUARD_REMOVE)
    assert mm.access(pg(1)) == 0  # docs/rules.md R-D2: zero-fill again
    assert "gu" in procfs.smaps(mm)  # R-G3: sticky


def test_access_si_codes(mm):
    checked(mm, mm.mmap, pg(0), 2 * P, abi.PROT_READ, ANON)
    checked(mm, mm.madvise, pg(0), P, Madv.GUARD_INSTALL)
    with pytest.raises(SegFault) as exc:
        mm.access(pg(0), write=True)
    assert exc.value.si_code == abi.SEGV_ACCERR  # R-E2: VMA permission first
    with pytest.raises(SegFault) as exc:
        mm.access(pg(5))
    assert exc.value.si_code == abi.SEGV_MAPERR


def test_sigbus_beyond_eof(mm):
    f = MemFile("f", P)
    checked(mm, mm.mmap, pg(0), 2 * P, abi.PROT_READ, abi.MAP_SHARED | abi.MAP_FIXED, f)
    assert mm.access(pg(0)) == 1
    with pytest.raises(SegFault) as exc:
        mm.access(pg(1))
    assert exc.value.signal == "SIGBUS"


def test_guard_install_locked_is_einval(mm):
    checked(mm, mm.mmap, pg(0), 2 * P, RW, ANON)
    checked(mm, mm.mlock, pg(0), 2 * P)
    with pytest.raises(OSError) as exc:
        mm.madvise(pg(0), P, Madv.GUARD_INSTALL)
    assert exc.value.errno == errno.EINVAL


def test_mlock_over_guard_enomem_keeps_lock(mm):
    checked(mm, mm.mmap, pg(0), 4 * P, RW, ANON)
    checked(mm, mm.madvise, pg(2), P, Madv.GUARD_INSTALL)
    with pytest.raises(OSError) as exc:
        mm.mlock(pg(0), 4 * P)
    mm.check()
    assert exc.value.errno == errno.ENOMEM
    assert all(v.vm_flags & VmFlag.LOCKED for v in mm)
    assert procfs.pagemap_word(mm, pg(1)) & abi.PM_PRESENT
    assert not procfs.pagemap_word(mm, pg(3)) & abi.PM_PRESENT


def test_page_tables_kept_on_zap_freed_on_munmap(mm):
    checked(mm, mm.mmap, pg(0), 4 * P, RW, ANON)
    checked(mm, mm.access, pg(0), True)
    tables = mm.pt.table_pages()
    assert tables == 3  # one PTE, one PMD, one PUD table
    checked(mm, mm.madvise, pg(0), 4 * P, Madv.DONTNEED)
    checked(mm, mm.madvise, pg(0), 4 * P, Madv.GUARD_INSTALL)
    checked(mm, mm.madvise, pg(0), 4 * P, Madv.GUARD_REMOVE)
    assert mm.pt.table_pages() == tables
    checked(mm, mm.munmap, pg(0), 4 * P)
    assert mm.pt.table_pages() == 0


def test_free_pgtables_respects_neighbours(mm):
    checked(mm, mm.mmap, pg(0), 2 * P, RW, ANON)
    checked(mm, mm.mmap, pg(4), 2 * P, RW, ANON)
    checked(mm, mm.access, pg(4), True)
    checked(mm, mm.munmap, pg(4), 2 * P)
    assert mm.pt.table_pages() == 3  # the PTE table still spans the VMA at page 0


def test_fork_cow_and_guards(mm):
    checked(mm, mm.mmap, pg(0), 4 * P, RW, ANON)
    checked(mm, mm.access, pg(0), True, 5)
    checked(mm, mm.madvise, pg(3), P, Madv.GUARD_INSTALL)
    child = mm.fork()
    child.check()
    assert child.access(pg(0)) == 5
    with pytest.raises(SegFault):
        child.access(pg(3))  # R-F10: markers copied
    child.access(pg(0), True, 9)
    child.check()
    assert mm.access(pg(0)) == 5
    assert child.map_count == 1 and next(iter(child)).anon_vma is not next(iter(mm)).anon_vma
    child.exit()
    mm.check()


def test_max_map_count(mm):
    small = AddressSpace(max_map_count=3)
    for i in range(4):
        small.mmap(pg(2 * i), P, RW, ANON)
        small.check()
    with pytest.raises(OSError) as exc:
        small.mmap(pg(20), P, RW, ANON)
    assert exc.value.errno == errno.ENOMEM


def test_maps_text_format(mm):
    f = MemFile("data", 4 * P)
    checked(mm, mm.mmap, pg(0), 2 * P, RW, ANON)
    checked(mm, mm.mmap, pg(4), 2 * P, abi.PROT_READ, abi.MAP_SHARED | abi.MAP_FIXED, f, P)
    lines = procfs.maps(mm).splitlines()
    assert lines[0] == f"{pg(0):08x}-{pg(2):08x} rw-p 00000000 00:00 0 "
    assert lines[1].startswith(f"{pg(4):08x}-{pg(6):08x} r--s 00001000 ")
    assert lines[1].index("/memfd:data (deleted)") == 73


def test_unknown_designs_are_refused():
    with pytest.raises(ValueError):
        AddressSpace(guard_design="markers")
    script = parse_script({"ops": [{"op": "snapshot"}]})
    with pytest.raises(BackendUnavailable):
        run_model(script, design="markers")


def _random_script(rng: random.Random) -> dict:
    prots = ["", "r", "rw", "rx", "w"]
    advice = ["dontneed", "free", "guard_install", "guard_remove", "wipeonfork", "dontfork",
              "dofork", "populate_read", "populate_write", "pageout", "hugepage", "remove",
              "dontdump", "collapse"]
    kinds = [["private", "anonymous"], ["shared", "anonymous"], ["private"], ["shared"]]
    ops = []
    for _ in range(rng.randint(1, 30)):
        at, n = rng.randrange(0, 60), rng.randint(1, 10)
        kind = rng.choice(["mmap", "mmap", "munmap", "mprotect", "madvise", "mremap", "mlock",
                           "munlock", "touch", "fork", "ftruncate"])
        if kind == "mmap":
            flags = list(rng.choice(kinds)) + rng.sample(["fixed", "populate", "locked"], rng.randint(0, 1))
            op = {"op": "mmap", "at": at, "len": n, "prot": rng.choice(prots), "flags": flags}
            if "anonymous" not in flags:
                op.update(file="f", pgoff=rng.randrange(0, 12))
        elif kind == "mprotect":
            op = {"op": kind, "at": at, "len": n, "prot": rng.choice(prots)}
        elif kind == "madvise":
            op = {"op": kind, "at": at, "len": n, "advice": rng.choice(advice)}
        elif kind == "mremap":
            op = {"op": kind, "at": at, "len": n, "new_len": rng.randint(1, 10),
                  "flags": ["maymove", "fixed"], "to": rng.randrange(0, 60)}
            if rng.random() < 0.3:
                op.update(flags=[], new_len=max(1, n + rng.randint(-2, 4)))
                del op["to"]
        elif kind == "touch":
            op = {"op": kind, "at": at, "len": n, "access": rng.choice(["read", "write"])}
        elif kind == "fork":
            op = {"op": "fork", "child": [{"op": "touch", "at": at, "len": n, "access": "write"},
                                          {"op": "munmap", "at": at + 1, "len": 2}, {"op": "snapshot"}]}
        elif kind == "ftruncate":
            op = {"op": "ftruncate", "file": "f", "pages": rng.randrange(0, 20)}
        else:
            op = {"op": kind, "at": at, "len": n}
        ops.append(op)
    ops.append({"op": "snapshot"})
    return {"arena_pages": 80, "files": {"f": {"pages": 16}}, "ops": ops}


@pytest.mark.parametrize("seed", range(200))
def test_random_scripts_keep_invariants(seed):
    """Stress: random scripts through the model alone, check() after every op."""
    run_model(parse_script(_random_script(random.Random(seed))), check=True)


# -- page tables at the edges (figures measured with `sparsemm measure` on Linux 6.18) --------

def test_thp_counts_its_deposited_table_and_dontneed_reclaims(mm):
    checked(mm, mm.mmap, pg(0), 1024 * P, RW, ANON)
    checked(mm, mm.madvise, pg(0), 1024 * P, Madv.HUGEPAGE)
    checked(mm, mm.touch, pg(3), True)                      # THP: PUD + PMD + deposited table
    assert mm.pgtables_bytes() == 3 * P
    checked(mm, mm.touch, pg(515), False)                   # huge zero page: another deposit
    assert mm.pgtables_bytes() == 4 * P
    checked(mm, mm.madvise, pg(10), 4 * P, Madv.DONTNEED)   # split: the deposit is the table
    assert mm.pgtables_bytes() == 4 * P
    checked(mm, mm.madvise, pg(0), 512 * P, Madv.DONTNEED)  # whole block emptied: freed
    assert mm.pgtables_bytes() == 3 * P
    checked(mm, mm.touch, pg(7), True)                      # so the next fault maps a THP
    assert mm.pt.is_huge(B // P)


def test_guard_marker_keeps_the_table_from_reclaim(mm):
    checked(mm, mm.mmap, pg(0), 512 * P, RW, ANON)
    checked(mm, mm.touch, pg(0), True)
    checked(mm, mm.madvise, pg(100), P, Madv.GUARD_INSTALL)
    checked(mm, mm.madvise, pg(0), 512 * P, Madv.DONTNEED)
    assert mm.pgtables_bytes() == 3 * P
    checked(mm, mm.madvise, pg(100), P, Madv.GUARD_REMOVE)
    checked(mm, mm.madvise, pg(0), 511 * P, Madv.DONTNEED)  # not the whole block: kept
    assert mm.pgtables_bytes() == 3 * P


def test_failed_fault_keeps_its_pud_and_pmd(mm):
    f = MemFile("f", 4 * P)
    checked(mm, mm.mmap, pg(20), 2 * P, abi.PROT_READ, abi.MAP_SHARED | abi.MAP_FIXED, f, 100 * P)
    with pytest.raises(OSError) as exc:
        mm.touch(pg(20), False)
    assert exc.value.errno == errno.EFAULT
    assert mm.pgtables_bytes() == 2 * P


def test_aligned_dontunmap_move_leaves_the_source_without_a_table(mm):
    checked(mm, mm.mmap, pg(0), 512 * P, RW, ANON)
    checked(mm, mm.touch, pg(0), True)
    checked(mm, mm.madvise, pg(0), 512 * P, Madv.HUGEPAGE)
    checked(mm, mm.mremap, pg(0), 512 * P, 512 * P,
            abi.MremapFlag.MAYMOVE | abi.MremapFlag.DONTUNMAP, pg(1024))
    assert mm.pt.pmd_none(B // P) and not mm.pt.pmd_none(B // P + 1024)
    checked(mm, mm.touch, pg(5), True)
    assert mm.pt.is_huge(B // P)


def test_overcommit_heuristic_limits_one_call():
    mm = AddressSpace(commit_limit=1000)
    with pytest.raises(OSError) as exc:
        mm.mmap(pg(0), 1001 * P, RW, ANON)
    assert exc.value.errno == errno.ENOMEM and not list(mm)
    checked(mm, mm.mmap, pg(0), 1001 * P, RW, ANON | abi.MapFlag.NORESERVE)
    checked(mm, mm.mmap, pg(2000), 1001 * P, abi.PROT_READ, ANON)
    with pytest.raises(OSError) as exc:
        mm.mprotect(pg(2000), 1001 * P, RW)
    assert exc.value.errno == errno.ENOMEM
    checked(mm, mm.mprotect, pg(2000), 1000 * P, RW)
