"""ctypes bindings to the memory-management system calls, raising ``OSError``.

Owns the raw calls (mmap, munmap, mprotect, madvise, mremap, mlock/mlock2,
munlock, mseal, userfaultfd and its ioctls, process_vm_readv/writev, memfd_create, process_madvise, pidfd_open,
ftruncate, fallocate, fcntl seals, ioctl). Addresses are ints; nothing is checked here
beyond what the kernel checks: these are the unchecked primitives the checked
API (``sparsemm.native.mapping``) and the op-script kernel backend build on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from sparsemm import abi

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

c_void_p, c_size_t, c_int, c_long, c_ulong = (
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_long, ctypes.c_ulong)


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]


def _fn(name: str, restype, *argtypes):
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_mmap = _fn("mmap", c_void_p, c_void_p, c_size_t, c_int, c_int, c_int, c_long)
_munmap = _fn("munmap", c_int, c_void_p, c_size_t)
_mprotect = _fn("mprotect", c_int, c_void_p, c_size_t, c_int)
_madvise = _fn("madvise", c_int, c_void_p, c_size_t, c_int)
_mremap = _fn("mremap", c_void_p, c_void_p, c_size_t, c_size_t, c_int, c_void_p)
_mlock = _fn("mlock", c_int, c_void_p, c_size_t)
_munlock = _fn("munlock", c_int, c_void_p, c_size_t)
_syscall = _fn("syscall", c_long, c_long)  # variadic: argtypes for the number only
_syscall.argtypes = None  # let ctypes pass each argument by its own ctypes type
_ftruncate = _fn("ftruncate", c_int, c_int, ctypes.c_int64)
_fallocate = _fn("fallocate", c_int, c_int, c_int, ctypes.c_int64, ctypes.c_int64)
_memset = _fn("memset", c_void_p, c_void_p, c_int, c_size_t)
_ioctl = _fn("ioctl", c_int, c_int, c_ulong, c_void_p)

def _word(value: int) -> int:
    """An address or length as the unsigned machine word the kernel sees."""
    return value & abi.ULONG_MAX


def _raise(name: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{name}: {os.strerror(err)}")


def _check(ret: int, name: str) -> int:
    if ret == -1:
        _raise(name)
    return ret


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """``mmap(2)``; returns the mapped address. ``offset`` is in bytes."""
    ret = _mmap(_word(addr) or None, _word(length), prot, flags, fd, offset)
    if ret == abi.MAP_FAILED:
        _raise("mmap")
    return ret or 0  # ctypes gives None for address 0 (MAP_FIXED at 0, root only)


def munmap(addr: int, length: int) -> None:
    _check(_munmap(_word(addr), _word(length)), "munmap")


def mprotect(addr: int, length: int, prot: int) -> None:
    _check(_mprotect(_word(addr), _word(length), prot), "mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_madvise(_word(addr), _word(length), advice), "madvise")


def mremap(old_addr: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
    """``mremap(2)``; returns the (possibly new) address."""
    ret = _mremap(_word(old_addr), _word(old_len), _word(new_len), flags, _word(new_addr))
    if ret == abi.MAP_FAILED:
        _raise("mremap")
    return ret or 0


def mlock(addr: int, length: int, flags: int = 0) -> None:
    """``mlock(2)``, or ``mlock2(2)`` when ``flags`` (``MLOCK_ONFAULT``) is given."""
    if flags:
        _check(_syscall(c_long(abi.SYS_mlock2), c_ulong(_word(addr)), c_size_t(_word(length)),
                        c_int(flags)), "mlock2")
    else:
        _check(_mlock(_word(addr), _word(length)), "mlock")


def munlock(addr: int, length: int) -> None:
    _check(_munlock(_word(addr), _word(length)), "munlock")


def _vm_rw(number: int, name: str, pid: int, local: int, remote: int, length: int) -> int:
    liov = iovec(local, length)
    riov = iovec(_word(remote), length)
    ret = _syscall(c_long(number), c_int(pid), ctypes.byref(liov), c_ulong(1), ctypes.byref(riov),
                   c_ulong(1), c_ulong(0))
    return _check(ret, name)


def process_vm_readv(pid: int, remote_addr: int, length: int) -> bytes:
    """Read ``length`` bytes at ``remote_addr`` of ``pid``; fewer on a partial read.

    Raises ``OSError(EFAULT)`` when nothing could be read (a hole, a
    protection, a guard). Reading one's own pid faults pages in as the CPU
    would, but reports a fault instead of raising SIGSEGV.
    """
    buf = ctypes.create_string_buffer(length)
    n = _vm_rw(abi.SYS_process_vm_readv, "process_vm_readv", pid, ctypes.addressof(buf),
               remote_addr, length)
    return buf.raw[:n]


def process_vm_writev(pid: int, remote_addr: int, data: bytes) -> int:
    """Write ``data`` at ``remote_addr`` of ``pid``; returns the bytes written."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    return _vm_rw(abi.SYS_process_vm_writev, "process_vm_writev", pid, ctypes.addressof(buf),
                  remote_addr, len(data))


def process_vm_writev_from(pid: int, remote_addr: int, local_addr: int, length: int) -> int:
    """Copy ``length`` bytes from our ``local_addr`` to ``remote_addr`` of ``pid``.

    No user-space copy of the source: the kernel reads it, so a source that
    faults ends the copy (a partial count, or ``OSError(EFAULT)`` when nothing
    was copied) instead of raising SIGSEGV. Returns the bytes written.
    """
    return _vm_rw(abi.SYS_process_vm_writev, "process_vm_writev", pid, local_addr, remote_addr,
                  length)


def memfd_create(name: str, flags: int = abi.MFD_CLOEXEC) -> int:
    """``memfd_create(2)``; returns the file descriptor."""
    return _check(_syscall(c_long(abi.SYS_memfd_create), ctypes.c_char_p(name.encode()),
                           ctypes.c_uint(flags)), "memfd_create")


def membarrier(cmd: int, flags: int = 0) -> int:
    """``membarrier(2)``; ``abi.MEMBARRIER_CMD_GLOBAL`` returns after an RCU grace period."""
    return _check(_syscall(c_long(abi.SYS_membarrier), c_int(cmd), ctypes.c_uint(flags), c_int(0)),
                  "membarrier")


def pidfd_open(pid: int, flags: int = 0) -> int:
    return _check(_syscall(c_long(abi.SYS_pidfd_open), c_int(pid), ctypes.c_uint(flags)),
                  "pidfd_open")


def process_madvise(pidfd: int, ranges: list[tuple[int, int]], advice: int, flags: int = 0) -> int:
    """``process_madvise(2)`` over ``(addr, length)`` ranges; returns bytes advised."""
    vec = (iovec * len(ranges))(*[iovec(_word(a), _word(n)) for a, n in ranges])
    return _check(_syscall(c_long(abi.SYS_process_madvise), c_int(pidfd), vec,
                           c_size_t(len(ranges)), c_int(advice), ctypes.c_uint(flags)),
                  "process_madvise")


class _CapHeader(ctypes.Structure):  # struct __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", c_int)]


class _CapData(ctypes.Structure):  # struct __user_cap_data_struct (two of them: 64 bits)
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def drop_capability(cap: int) -> None:
    """Remove capability ``cap`` (a CAP_ number) from this thread's effective and permitted
    sets (``capget``/``capset``): for good, in this process and the children it forks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    word, bit = divmod(cap, 32)
    data[word].effective &= ~(1 << bit)
    data[word].permitted &= ~(1 << bit)
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def mseal(addr: int, length: int, flags: int = 0) -> None:
    """``mseal(2)`` (Linux 6.10+): seal the VMAs of the range against unmapping and changes."""
    _check(_syscall(c_long(abi.SYS_mseal), c_ulong(_word(addr)), c_ulong(_word(length)),
                    c_ulong(_word(flags))), "mseal")


def userfaultfd(features: int) -> int:
    """``userfaultfd(O_CLOEXEC | O_NONBLOCK)`` and its ``UFFDIO_API`` handshake asking for
    ``features``; returns the descriptor."""
    fd = _check(_syscall(c_long(abi.SYS_userfaultfd), c_long(os.O_CLOEXEC | os.O_NONBLOCK)),
                "userfaultfd")
    api = (ctypes.c_uint64 * 3)(abi.UFFD_API, features, 0)
    if _ioctl(fd, abi.UFFDIO_API, ctypes.byref(api)) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"UFFDIO_API: {os.strerror(err)}")
    return fd


def uffd_register(fd: int, start: int, length: int, mode: int) -> None:
    """``UFFDIO_REGISTER`` of ``[start, start + length)`` with ``mode``."""
    arg = (ctypes.c_uint64 * 4)(_word(start), _word(length), mode, 0)
    _check(_ioctl(fd, abi.UFFDIO_REGISTER, ctypes.byref(arg)), "UFFDIO_REGISTER")


def uffd_unregister(fd: int, start: int, length: int) -> None:
    """``UFFDIO_UNREGISTER`` of ``[start, start + length)``."""
    arg = (ctypes.c_uint64 * 2)(_word(start), _word(length))
    _check(_ioctl(fd, abi.UFFDIO_UNREGISTER, ctypes.byref(arg)), "UFFDIO_UNREGISTER")


def uffd_copy(fd: int, dst: int, src: int, length: int) -> tuple[int, int]:
    """``UFFDIO_COPY`` of ``length`` bytes from ``src`` to ``dst``: ``(bytes copied, errno or
    0)``, the ioctl's ``copy`` field and its error (a partial copy is EAGAIN)."""
    arg = (ctypes.c_uint64 * 5)(_word(dst), _word(src), _word(length), 0, 0)
    ret = _ioctl(fd, abi.UFFDIO_COPY, ctypes.byref(arg))
    err = ctypes.get_errno() if ret < 0 else 0
    return max(0, ctypes.c_int64(arg[4]).value), err


def ftruncate(fd: int, length: int) -> None:
    _check(_ftruncate(fd, length), "ftruncate")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_fallocate(fd, mode, offset, length), "fallocate")


def add_seals(fd: int, seals: int) -> None:
    import fcntl

    fcntl.fcntl(fd, abi.F_ADD_SEALS, seals)


def ioctl(fd: int, request: int, arg: int) -> int:
    """``ioctl(2)`` with a pointer argument (``arg`` is an address); returns its result."""
    return _check(_ioctl(fd, request, arg), "ioctl")


def memset(addr: int, byte: int, length: int) -> None:
    """Unchecked ``memset``: a fault here kills the process (tests use it in children)."""
    _memset(addr, byte, length)


def guard_regions_supported() -> bool:
    """``madvise(0, 0, MADV_GUARD_INSTALL) == 0`` exactly when the kernel knows the advice."""
    try:
        madvise(0, 0, abi.MADV_GUARD_INSTALL)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True
