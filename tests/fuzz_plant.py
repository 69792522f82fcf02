"""Backends with planted differences, for the fuzzer's own tests (docs/fuzzing.md,
"Testing the fuzzer"): load one with ``SPARSEMM_FUZZ_MODEL=fuzz_plant:NAME`` (this
directory on ``PYTHONPATH``) or pass it to ``engine.Backends``.

Most plants are the real model with its records changed afterwards (the model itself
is untouched), so the planted difference has a known minimal script. One,
``guard_remove_keeps_first_marker``, is a bug planted in the model itself (a monkeypatch
of ``AddressSpace.madvise`` for the run): its difference shows only in what later ops
observe, as a real model bug's would.
"""

from __future__ import annotations

import contextlib
import os

from sparsemm import abi
from sparsemm.model import AddressSpace
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import Script

PLANTED_MPROTECT = "mprotect ret EACCES!=ok"
PLANTED_CHILD_SNAPSHOT = "snapshot pages .!=P"
#: The signatures the guard_remove plant can show: a touch of the first page faults on
#: the model, or a snapshot shows its marker.
PLANTED_GUARD_REMOVE = ("touch value fault!=*", "snapshot pages G!=*")


def honest_model(script: Script) -> list:
    """The model as it is (used as the 'kernel' side of fast tests)."""
    return run_model(script, check=True)


def honest_model_announcing(script: Script) -> list:
    """``honest_model``, creating the file named by ``FUZZ_PLANT_STARTED`` on its first
    call: a test waits for it before it signals the fuzzer."""
    path = os.environ.get("FUZZ_PLANT_STARTED")
    if path and not os.path.exists(path):
        open(path, "w").close()
    return honest_model(script)


def _raw_ops(script: Script) -> list:
    return script.doc.get("ops", [])


def mprotect_x_eacces(script: Script) -> list:
    """The model, except that a successful ``mprotect`` to exactly ``"x"`` says EACCES.
    Minimal script: a one-page mmap, then that mprotect."""
    records = run_model(script, check=True)
    _perturb_mprotect(records, _raw_ops(script))
    return records


def _perturb_mprotect(records: list, ops: list) -> None:
    for rec in records:
        raw = ops[rec["i"]] if rec["i"] < len(ops) else {}
        if rec["op"] == "mprotect" and raw.get("prot") == "x" and rec["ret"] == "ok":
            rec["ret"] = "EACCES"
        if rec["op"] == "fork" and isinstance(rec.get("value"), list):
            _perturb_mprotect(rec["value"], raw.get("child", []))


def child_snapshot_loses_a_page(script: Script) -> list:
    """The model, except that in a fork child's snapshot the first present page shows
    as not present. Minimal script: memory made present, then a fork whose child only
    takes a snapshot."""
    records = run_model(script, check=True)
    for rec in records:
        if rec["op"] == "fork" and isinstance(rec.get("value"), list):
            for child in rec["value"]:
                if child["op"] == "snapshot" and "P" in child["value"]["pages"]:
                    pages = child["value"]["pages"]
                    n = pages.index("P")
                    child["value"]["pages"] = pages[:n] + "." + pages[n + 1:]
    return records


def both_plants(script: Script) -> list:
    records = child_snapshot_loses_a_page(script)
    _perturb_mprotect(records, _raw_ops(script))
    return records


class ModelCrash(RuntimeError):
    pass


def crashes_on_guard_remove_of_locked(script: Script) -> list:
    """Raises (as a model bug would) when ``guard_remove`` follows an ``mlock`` anywhere."""
    names = [(op.get("op"), op.get("advice")) for op in _raw_ops(script)]
    locked = False
    for name, advice in names:
        if name == "mlock":
            locked = True
        if locked and name == "madvise" and advice == "guard_remove":
            raise ModelCrash("planted: guard_remove after mlock at 0x100000000000")
    return run_model(script, check=True)


@contextlib.contextmanager
def _guard_remove_keeps_first_marker():
    """While active, the model's ``MADV_GUARD_REMOVE`` removes the markers of its range and
    then puts one back on the range's first page (an off-by-one a model could have)."""
    real = AddressSpace.madvise

    def madvise(self, addr, length, advice):
        real(self, addr, length, advice)
        if advice == abi.MADV_GUARD_REMOVE and length > 0:
            try:
                real(self, addr, abi.PAGE_SIZE, abi.MADV_GUARD_INSTALL)
            except OSError:
                pass  # e.g. a locked VMA takes no marker: the plant stays silent there

    AddressSpace.madvise = madvise
    try:
        yield
    finally:
        AddressSpace.madvise = real


def guard_remove_keeps_first_marker(script: Script) -> list:
    """The model with a planted bug: ``MADV_GUARD_REMOVE`` leaves the marker of its first
    page in place. Minimal script: a mapping, a guard install and remove over its first
    page, then an op that sees the marker (a touch faults, a snapshot shows ``G``)."""
    with _guard_remove_keeps_first_marker():
        return run_model(script, check=True)
