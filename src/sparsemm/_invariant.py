"""The one exception every ``check()`` in sparsemm raises when an invariant does not hold.

Owns ``InvariantError``. A neutral module: the model, the native layer and the shared
structures (``sparsemm._ranges``) all raise it, and it imports nothing of theirs.
"""

from __future__ import annotations

__all__ = ["InvariantError"]


class InvariantError(AssertionError):
    """A data structure's stated invariant does not hold: a bug in sparsemm, never bad input.

    Raised by ``check()`` methods (``AddressSpace.check``, ``VmaTree.check``,
    ``PageTable.check``, ``RangeMap.check``, the guard designs' ``check``) in place of
    ``assert``, so the checks also run under ``python -O``. It subclasses
    ``AssertionError`` so that test runners report it as a failed check.
    """
