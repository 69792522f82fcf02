"""Shared helpers of the model's syscall modules: units, errno construction, fault signals.

Owns the page units every syscall module needs (from ``abi``), ``kerr`` and the two
exceptions a fault can end in. Page-table geometry is ``pagetable``'s, 2**64 - 1 is
``abi.ULONG_MAX``. No state, no OS calls.
"""

from __future__ import annotations

import errno

from sparsemm import abi

PAGE_SHIFT = abi.PAGE_SHIFT
PAGE_SIZE = abi.PAGE_SIZE
TASK_SIZE = abi.TASK_SIZE


def kerr(code: int, msg: str) -> OSError:
    """The OSError a model syscall raises: ``errno`` as the kernel returns it, and a reason."""
    return OSError(code, f"{errno.errorcode.get(code, code)}: {msg}")


class SegFault(Exception):
    """A CPU access the kernel answers with SIGSEGV (``si_code`` SEGV_MAPERR/SEGV_ACCERR)
    or, with ``signal == "SIGBUS"``, SIGBUS (file page beyond EOF)."""

    def __init__(self, addr: int, si_code: int, signal: str = "SIGSEGV"):
        super().__init__(f"{signal} at {addr:#x} si_code={si_code}")
        self.addr = addr
        self.si_code = si_code
        self.signal = signal


class FaultError(Exception):
    """handle_mm_fault() failed: ``kind`` is "SIGSEGV" (guard marker) or "SIGBUS" (EOF)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind
