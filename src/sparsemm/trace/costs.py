"""The estimated kernel time of a replay's calls, from per-call costs measured on this kernel.

Owns loading ``sparsemm/data/syscall_costs.json`` (written by
``bench/bench_syscall_costs.py --store``, which says how it measured them) and
``estimate``: calls issued by kind times their measured cost, plus the per-VMA cost of
each fork. An estimate, never a measurement of the traced run: one constant per kind,
whatever the call's size or the address space's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["SyscallCosts", "costs", "estimate", "Estimate"]

#: Kinds priced as another measured kind (same kernel path, or none measured for them).
_STAND_INS = {"process_madvise": "madvise", "mseal": "mprotect", "mlockall": "mlock",
              "munlockall": "munlock"}


@dataclass(frozen=True, slots=True)
class SyscallCosts:
    ns_per_call: dict[str, float]
    fork_ns_per_vma: float
    kernel: str
    measured: str
    about: str


@lru_cache(maxsize=1)
def costs() -> SyscallCosts:
    """The packaged constants (read once)."""
    doc = json.loads(resources.files("sparsemm.data").joinpath("syscall_costs.json").read_text("utf-8"))
    return SyscallCosts(doc["ns_per_call"], doc["fork_ns_per_vma"], doc["kernel"], doc["measured"], doc["_about"])


@dataclass(frozen=True, slots=True)
class Estimate:
    total_ns: float
    by_kind_ns: dict[str, float]
    stand_ins: dict[str, str]  # kind -> the measured kind it was priced as
    unpriced: dict[str, int]  # kinds with no cost and no stand-in, and their counts


def estimate(calls: dict[str, int], fork_vmas: int = 0, table: SyscallCosts | None = None) -> Estimate:
    """Kernel time of ``calls`` (kind -> count) plus forks that copied ``fork_vmas`` VMAs. O(kinds)."""
    c = table or costs()
    by_kind: dict[str, float] = {}
    stand: dict[str, str] = {}
    unpriced: dict[str, int] = {}
    for kind, n in calls.items():
        ns = c.ns_per_call.get(kind)
        if ns is None and kind in _STAND_INS:
            ns = c.ns_per_call.get(_STAND_INS[kind])
            stand[kind] = _STAND_INS[kind]
        if ns is None:
            unpriced[kind] = n
            continue
        by_kind[kind] = ns * n
    if fork_vmas:
        by_kind["fork (per VMA)"] = c.fork_ns_per_vma * fork_vmas
    return Estimate(sum(by_kind.values()), by_kind, stand, unpriced)
