"""``gc_paused()``: the cyclic collector off for a stage that builds many objects and frees none.

Parsing a 65k-line map, classifying it, building its layout and replaying it on the model
each allocate one or more objects per VMA; the collector would run hundreds of generation
scans over them (25-40 % of those stages) and find nothing to free. Reference counting
still frees everything acyclic; cycles made meanwhile wait for the next collection.
"""

from __future__ import annotations

import contextlib
import gc

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused():
    """Disable the cyclic garbage collector inside the block; restore its state after. Nests."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
