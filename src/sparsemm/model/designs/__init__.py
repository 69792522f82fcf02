"""Guard designs: what MADV_GUARD_INSTALL / MADV_GUARD_REMOVE do in the model.

The contract and the registry are in ``registry`` (``GuardDesign``, ``register``,
``names``, ``make_design``); each built-in design is one module: ``vma`` (the status
quo, PROT_NONE VMAs), ``pte`` (upstream Linux, PTE markers), ``tree`` (the proposal,
guard entries in the maple tree; docs/tree-guards.md). Importing this package registers
them. ``AddressSpace`` owns one design object and calls its hooks.
"""

from sparsemm.model.designs.registry import (GUARD_ADVICE, GuardDesign, GuardShape, KernelForm,
                                             baseline, design_class, kernel_design, make_design,
                                             names, register, reproducible,
                                             unknown_design_message, unregister)
from sparsemm.model.designs import pte, tree, vma  # noqa: E402,F401  (registers the built-ins)
from sparsemm.model.designs.tree import GuardEntry, TreeDesign
from sparsemm.model.designs.pte import PteDesign
from sparsemm.model.designs.vma import VmaDesign

__all__ = ["GUARD_ADVICE", "GuardDesign", "GuardShape", "KernelForm", "register", "unregister",
           "design_class", "make_design", "names", "baseline", "kernel_design", "reproducible",
           "unknown_design_message", "GuardEntry", "PteDesign", "TreeDesign", "VmaDesign"]
