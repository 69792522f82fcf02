"""``sparsemm efence``: run a native program with every heap block ending at a guard page.

The allocator is a small C library (``efence.c``, preloaded with ``LD_PRELOAD``)
built by the package's install (``setup.py``); this package finds it, turns
options into its ``SPARSEMM_EFENCE_*`` variables and runs programs under it.
Usage, options, report format and limits: ``docs/efence.md``.
"""

from sparsemm.efence.driver import (
    LibraryNotBuilt,
    Options,
    environment,
    exit_status,
    library_path,
    run,
)

__all__ = ["LibraryNotBuilt", "Options", "environment", "exit_status", "library_path", "run"]
