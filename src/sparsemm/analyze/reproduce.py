"""Prove a prediction: build a rebuilt layout on the real kernel and measure it.

Owns ``Reproduction`` and ``reproduce(layout, design)``: for a design the kernel can build
(``designs.reproducible()``), the layout script as is (``KernelForm.NATIVE``, ``pte``: the
kernel's own guard markers) or through ``to_vma_design`` (``KernelForm.MPROTECT``, ``vma``:
guards as PROT_NONE VMAs) runs in a fresh child (``opscript.measure.measure_script``) and
is set beside the model's prediction (``prediction_from_counts``). Never edits the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsemm.analyze.rebuild import Layout
from sparsemm.model import designs
from sparsemm.model.designs import KernelForm
from sparsemm.opscript.measure import KEYS, Measurement, measure_script, prediction_from_counts
from sparsemm.opscript.script import parse_script

__all__ = ["EXACT_KEYS", "Reproduction", "reproduce", "render_reproduction", "kernel_script"]
#: Quantities that must match exactly: they belong to this process alone.
EXACT_KEYS = ("arena_vmas", "map_count", "vmpte_bytes")
NOISE_NOTE = ("slab deltas are system-wide counts (shrunk, then read from /proc/slabinfo): other "
              "processes and per-CPU caches move them; only VMAs and VmPTE are expected exact")


@dataclass(slots=True)
class Reproduction:
    design: str
    source: str
    predicted: dict[str, int]  # KEYS -> predicted value
    measured: Measurement
    rows: list[dict] = field(default_factory=list)  # key, predicted, measured, diff, diff_pct, exact
    exact_vmas: bool = False
    exact_vmpte: bool = False
    original_vmas: int | None = None  # the source's VMAs (what the vma design must give)

    def as_dict(self) -> dict:
        return {"design": self.design, "source": self.source, "original_vmas": self.original_vmas,
                "exact_vmas": self.exact_vmas, "exact_vmpte": self.exact_vmpte, "rows": self.rows,
                "measured": self.measured.as_dict(), "note": NOISE_NOTE}


def kernel_script(layout: Layout, design: str) -> dict:
    """The script the kernel runs for ``design`` (its ``kernel_form``). ValueError for an
    unknown design or one no kernel implements."""
    form = designs.design_class(design).kernel_form
    if form is KernelForm.NATIVE:
        return layout.script
    if form is KernelForm.MPROTECT:
        from sparsemm.workloads import to_vma_design

        return to_vma_design(layout.script)
    raise ValueError(f"design {design!r} cannot run on the kernel: use one of "
                     f"{', '.join(designs.reproducible())}")


def reproduce(layout: Layout, design: str, *, repeat: int = 1, source: str = "") -> Reproduction:
    """Build ``layout`` on the kernel under ``design`` (``repeat`` fresh children, median) and
    compare with the model. Raises ``ValueError`` for a design the kernel lacks,
    ``MeasureError`` if the child fails."""
    from sparsemm.analyze.report import design_result

    doc = kernel_script(layout, design)
    result = design_result(layout.script, design)
    if result.error:
        raise RuntimeError(f"no prediction for design {design}: {result.error}")
    predicted = prediction_from_counts(result.counts)
    m = measure_script(parse_script(doc), repeat=repeat)
    rows = []
    for key in KEYS:
        p, v = predicted.get(key), m.values.get(key)
        diff = None if p is None or v is None else v - p
        rows.append({"key": key, "predicted": p, "measured": v, "diff": diff,
                     "diff_pct": None if diff is None or not p else round(100.0 * diff / p, 1),
                     "exact": diff == 0 if diff is not None else None})
    by = {r["key"]: r for r in rows}
    return Reproduction(design=design, source=source, predicted=predicted, measured=m, rows=rows,
                        exact_vmas=bool(by["arena_vmas"]["exact"] and by["map_count"]["exact"]),
                        exact_vmpte=bool(by["vmpte_bytes"]["exact"]), original_vmas=layout.vmas)


_LABELS = {"arena_vmas": "VMAs in the arena", "map_count": "map_count delta",
           "vmpte_bytes": "VmPTE delta (bytes)", "vm_area_struct": "vm_area_struct objects",
           "anon_vma": "anon_vma objects", "anon_vma_chain": "anon_vma_chain objects",
           "maple_node": "maple_node objects"}


def render_reproduction(rep: Reproduction):
    """A rich renderable: predicted vs measured, exact marks, the noise note."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    m = rep.measured
    t = Table(title=f"{rep.source}: design {rep.design} on the kernel "
                    f"(median of {len(m.runs)} run(s), {m.quiet_runs} quiet)",
              header_style="bold", title_justify="left")
    for col in ("quantity", "predicted", "measured", "diff", ""):
        t.add_column(col, justify="left" if col == "quantity" else "right")
    for r in rep.rows:
        if r["measured"] is None and r["predicted"] is None:
            continue
        exact_key = r["key"] in EXACT_KEYS
        if r["exact"]:
            mark = "[green]exact[/green]"
        elif exact_key:
            mark = "[red]MISMATCH[/red]"
        else:
            mark = "" if r["diff_pct"] is None else f"{r['diff_pct']:+.1f}%"
        t.add_row(_LABELS[r["key"]], "-" if r["predicted"] is None else f"{r['predicted']:,}",
                  "-" if r["measured"] is None else f"{r['measured']:,}",
                  "" if r["diff"] is None else f"{r['diff']:+,}", mark)
    notes = [NOISE_NOTE]
    if rep.original_vmas is not None and rep.design == designs.baseline():
        ok = rep.measured.values.get("arena_vmas") == rep.original_vmas
        notes.append(f"original process: {rep.original_vmas:,} VMAs; the kernel rebuilt "
                     f"{'the same count' if ok else 'a different count'} under the {rep.design} design")
    notes.extend(m.notes)
    notes.extend(f"skipped: {s}" for s in m.skipped)
    if m.failed_ops:
        notes.append(f"warning: {m.failed_ops} op(s) failed on the kernel")
    return Group(t, Text("\n".join(notes), style="dim"))
