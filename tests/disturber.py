"""A load generator: other processes' memory churn, for checking measurements on a busy machine.

``python tests/disturber.py`` loops until killed: it maps and splits hundreds of VMAs (with
page tables, anon_vmas and chains), unmaps them, forks short-lived children and opens and
closes files, so the whole machine's slab counts move all the time. Standard library only.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import tempfile

PAGE = mmap.PAGESIZE


def churn(rounds: int | None = None) -> None:
    """Run ``rounds`` rounds (forever if None). Each round: 4 mappings of 128 pages, every
    other page made PROT_NONE (≈500 VMAs), written, unmapped; a fork; a few files."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    n = 0
    with tempfile.TemporaryDirectory(prefix="sparsemm-disturber-") as tmp:
        while rounds is None or n < rounds:
            maps = []
            for _ in range(4):
                m = mmap.mmap(-1, 128 * PAGE)
                addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
                for page in range(0, 128, 2):
                    m[page * PAGE] = 1  # fault in: page tables, anon_vma
                for page in range(1, 128, 2):
                    libc.mprotect(addr + page * PAGE, PAGE, 0)  # PROT_NONE
                maps.append((m, addr))
            for m, addr in maps:
                libc.mprotect(addr, 128 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)  # merge back
                m.close()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            for i in range(8):
                path = os.path.join(tmp, f"f{i}")
                with open(path, "wb") as fh:
                    fh.write(b"x")
                os.unlink(path)
            n += 1


if __name__ == "__main__":
    churn(int(sys.argv[1]) if len(sys.argv) > 1 else None)
