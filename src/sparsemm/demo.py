"""``sparsemm demo`` (what ``make demo`` runs): a bundled script on both backends.

Until the analysis tools land, the main job shows the conformance contract at
work: one op script, the kernel's records and the model's, side by side.
"""

from __future__ import annotations

import argparse
from importlib import resources

from sparsemm.native.probe import features
from sparsemm.opscript import records as rec
from sparsemm.opscript.compare import first_difference
from sparsemm.opscript.runner import BackendUnavailable, run_script
from sparsemm.opscript.script import load_script

DEMO_SCRIPT = "demo_guard_ladder.json"


def _flat(records: list[dict], ops: list[dict], depth: int = 0):
    """(depth, record, op) for every record, fork children after their fork."""
    for r in records:
        yield depth, r, ops[r["i"]]
        if r["op"] == "fork" and isinstance(r.get("value"), list):
            yield from _flat(r["value"], ops[r["i"]]["child"], depth + 1)


def _summary(r: dict) -> str:
    out = r["ret"]
    if r["op"] == "touch":
        out += " [" + " ".join("F" if v == rec.FAULT else str(v) for v in r["value"]) + "]"
    if r["op"] == "snapshot":
        out += f" {len(r['value']['vmas'])} VMAs"
    return out


def main(args: argparse.Namespace | None = None) -> int:
    path = resources.files("sparsemm.data").joinpath(DEMO_SCRIPT)
    script = load_script(str(path))
    print(f"sparsemm demo: {features().describe()}")
    print(f"script: {DEMO_SCRIPT}\n  {script.note}\n")
    kernel = run_script(script, "kernel")
    try:
        model = run_script(script, "model")
    except BackendUnavailable as exc:
        model = None
        print(f"(model backend: {exc}; showing the kernel alone)\n")
    ops = script.doc["ops"]
    width = 46
    print(f"{'op':<44} {'kernel':<{width}} {'model' if model else ''}")
    rows_k = list(_flat(kernel, ops))
    rows_m = list(_flat(model, ops)) if model else [None] * len(rows_k)
    for (depth, rk, op), row_m in zip(rows_k, rows_m):
        label = ("  " * depth + ("child " if depth else "") + rec._describe_op(op))[:43]
        mk = _summary(row_m[1]) if row_m else ""
        mark = "" if not row_m else ("  " if row_m[1] == rk else "≠ ")
        print(f"{label:<44} {_summary(rk)[:width - 1]:<{width}} {mark}{mk[:width]}")
        if rk["op"] == "snapshot":
            print(f"{'':<4}kernel pages {rec.draw_pages(rk['value'])}")
            if row_m:
                print(f"{'':<4}model  pages {rec.draw_pages(row_m[1]['value'])}")
    print()
    if model is not None:
        diff = first_difference(model, kernel)
        print("model and kernel agree on every record" if diff is None
              else f"model and kernel differ first at {diff[0]}")
    print("Legend: | VMA boundary, G guard marker, P present page, . mapped but not present, - no VMA")
    return 0
