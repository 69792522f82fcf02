"""A threaded Python program with a PROT_NONE ladder and a guard-marker ladder.

python3 ladders.py N: one thread makes N PROT_NONE guards in a writable mapping (each a VMA,
2 per guard with the split), another N guard markers (MADV_GUARD_INSTALL: no VMA), six more
threads just run. For `sparsemm trace` (docs/trace.md).
"""
import ctypes
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
P, N = 4096, int(sys.argv[1]) if len(sys.argv) > 1 else 300
PROT_NONE, PROT_RW, MAP_PRIVATE_ANON, MADV_GUARD_INSTALL = 0, 3, 0x22, 102


def ladder(markers: bool) -> None:
    base = libc.mmap(None, (2 * N + 1) * P, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    for i in range(N):
        at = ctypes.c_void_p(base + (2 * i + 1) * P)
        rc = libc.madvise(at, P, MADV_GUARD_INSTALL) if markers else libc.mprotect(at, P, PROT_NONE)
        if rc:
            raise OSError(ctypes.get_errno(), "guard")


threads = [threading.Thread(target=ladder, args=(False,)), threading.Thread(target=ladder, args=(True,))]
threads += [threading.Thread(target=lambda: bytearray(1 << 20)) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
