"""System V shared memory: shmat maps a segment whose size the trace does not show.

`sparsemm trace` cannot replay it, and reports where the replay and the process diverge.
"""
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 64 * 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
if shmid < 0:
    raise OSError(ctypes.get_errno(), "shmget")
addr = libc.shmat(shmid, None, 0)
libc.shmctl(shmid, 0, None)  # IPC_RMID: freed once detached
print(hex(addr))
