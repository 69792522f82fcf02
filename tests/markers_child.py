"""A test process holding guard markers at random places only it knows.

Run as ``python markers_child.py TMPDIR``. It maps anonymous private memory, a shared
memfd, shared anonymous memory (shmem), and a real on-disk file in TMPDIR (shared read-only, and private writable), installs
``MADV_GUARD_INSTALL`` runs at places drawn from ``os.urandom``, and makes one
``mprotect(PROT_NONE)`` guard page between two anonymous pages (a guard VMA, not a marker).
It prints one JSON line, ``{"markers": [[start, end], ...], "prot_none": [[start, end]],
"mappings": {"anon": [start, end], ...}}`` (byte addresses, end exclusive), then waits for
a line on stdin (or EOF) and exits. Used by tests/test_guards_live.py.
"""

from __future__ import annotations

import json
import os
import random
import sys

from sparsemm import abi
from sparsemm.native import libc

P = abi.PAGE_SIZE
RW = abi.PROT_READ | abi.PROT_WRITE
rng = random.SystemRandom()  # places only this process knows


def install_runs(addr: int, npages: int, k: int) -> list[tuple[int, int]]:
    """``k`` marker runs of 1 to 3 pages at random pages of [addr, addr + npages pages),
    never touching one another (so each is one run for the kernel too)."""
    runs: list[tuple[int, int]] = []
    taken = [False] * (npages + 1)
    while len(runs) < k:
        first = rng.randrange(npages)
        n = rng.randint(1, 3)
        end = min(first + n, npages)
        if any(taken[max(first - 1, 0):end + 1]):
            continue  # would touch or overlap a run we have
        for p in range(first, end):
            taken[p] = True
        runs.append((first, end))
    out = []
    for first, end in sorted(runs):
        libc.madvise(addr + first * P, (end - first) * P, abi.MADV_GUARD_INSTALL)
        out.append((addr + first * P, addr + end * P))
    return out


def main() -> None:
    tmp = sys.argv[1]
    markers: list[tuple[int, int]] = []
    mappings = {}

    anon = libc.mmap(0, 256 * P, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    libc.memset(anon, 1, 256 * P)  # populated, as a heap would be
    markers += install_runs(anon, 256, rng.randint(3, 8))
    mappings["anon"] = (anon, anon + 256 * P)

    fd = libc.memfd_create("sparsemm-markers")
    libc.ftruncate(fd, 128 * P)
    memfd = libc.mmap(0, 128 * P, RW, abi.MAP_SHARED, fd, 0)
    libc.memset(memfd, 2, 16 * P)
    markers += install_runs(memfd, 128, rng.randint(2, 6))
    mappings["memfd"] = (memfd, memfd + 128 * P)

    shm = libc.mmap(0, 64 * P, RW, abi.MAP_SHARED | abi.MAP_ANONYMOUS)  # shmem, "/dev/zero (deleted)"
    libc.memset(shm, 5, 8 * P)
    markers += install_runs(shm, 64, rng.randint(1, 4))
    mappings["shmem"] = (shm, shm + 64 * P)

    path = os.path.join(tmp, "markers-backing.bin")
    with open(path, "wb") as fh:
        fh.write(os.urandom(64 * P))
    ffd = os.open(path, os.O_RDWR)
    shared = libc.mmap(0, 64 * P, abi.PROT_READ, abi.MAP_SHARED, ffd, 0)
    markers += install_runs(shared, 64, rng.randint(2, 5))
    mappings["file_shared"] = (shared, shared + 64 * P)
    private = libc.mmap(0, 32 * P, RW, abi.MAP_PRIVATE, ffd, 0)
    libc.memset(private, 3, 4 * P)
    markers += install_runs(private, 32, rng.randint(1, 3))
    mappings["file_private"] = (private, private + 32 * P)

    sandwich = libc.mmap(0, 3 * P, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    libc.memset(sandwich, 4, 3 * P)
    libc.mprotect(sandwich + P, P, abi.PROT_NONE)

    print(json.dumps({"markers": sorted(markers), "prot_none": [(sandwich + P, sandwich + 2 * P)],
                      "mappings": mappings, "path": path}), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
