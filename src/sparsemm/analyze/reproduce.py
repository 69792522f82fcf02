"""Prove a prediction: build a rebuilt layout on the real kernel and measure it.

Owns ``Reproduction`` and ``reproduce(layout, design)``: for a design the kernel can build
(``designs.reproducible()``), the layout script as is (``KernelForm.NATIVE``, ``pte``: the
kernel's own guard markers) or through ``to_vma_design`` (``KernelForm.MPROTECT``, ``vma``:
guards as PROT_NONE VMAs) runs in fresh children (``opscript.measure.measure_script``: VMAs and VmPTE of the
child, kernel bytes of its memory cgroup, whole-machine slab objects) and is set beside the
model's prediction (``prediction_from_counts``, ``compare``). Never edits the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsemm.analyze.rebuild import Layout
from sparsemm.model import designs
from sparsemm.model.designs import KernelForm
from sparsemm.opscript.measure import Measurement, Row, compare, measure_script, prediction_from_counts
from sparsemm.opscript.script import parse_script

__all__ = ["EXACT_KEYS", "Reproduction", "reproduce", "render_reproduction", "kernel_script"]

#: Quantities that must match exactly: they belong to this process alone.
EXACT_KEYS = ("arena_vmas", "map_count", "vmpte_bytes")
PROVENANCE = ("VMAs, map_count and VmPTE: the measuring process's own (/proc/self); kernel bytes: "
              "its memory cgroup's kernel-memory counter (page-granular); objects: /proc/slabinfo, "
              "whole machine, only where the runs agree")


@dataclass(slots=True)
class Reproduction:
    """One design built on the kernel: ``rows`` (``opscript.measure.Row``) set the measurement
    beside the prediction. ``exact_vmas``/``exact_vmpte``: those rows matched exactly;
    ``memcg_ok``: the kernel bytes matched within the charge granularity (``None`` when no
    memory cgroup could measure them)."""

    design: str
    source: str
    predicted: dict[str, int]  # KEYS -> predicted value
    measured: Measurement
    rows: list[Row] = field(default_factory=list)
    exact_vmas: bool = False
    exact_vmpte: bool = False
    memcg_ok: bool | None = None
    original_vmas: int | None = None  # the source's VMAs (what the vma design must give)
    existing_markers: int = 0  # marker runs the process held (each a PROT_NONE VMA under vma)

    def as_dict(self) -> dict:
        return {"design": self.design, "source": self.source, "original_vmas": self.original_vmas,
                "exact_vmas": self.exact_vmas, "exact_vmpte": self.exact_vmpte,
                "memcg_ok": self.memcg_ok, "rows": [r.as_dict() for r in self.rows],
                "measured": self.measured.as_dict(), "note": PROVENANCE}


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
    rows = compare(m, predicted)
    by = {r.key: r for r in rows}

    def exact(key: str) -> bool:
        return key in by and by[key].verdict == "exact"

    memcg = by.get("memcg_bytes")
    return Reproduction(design=design, source=source, predicted=predicted, measured=m, rows=rows,
                        exact_vmas=exact("arena_vmas") and exact("map_count"),
                        exact_vmpte=exact("vmpte_bytes"),
                        memcg_ok=None if memcg is None or memcg.measured is None
                        else memcg.verdict in ("exact", "within"),
                        original_vmas=layout.vmas, existing_markers=layout.existing_markers)


def render_reproduction(rep: Reproduction, shared_notes: set[str] | None = None):
    """A rich renderable: predicted vs measured with verdicts, and how each figure was got.
    Pass one ``shared_notes`` set to several calls to say each note once."""
    from sparsemm.measure_view import render_measurement

    m = rep.measured
    extra = []
    status_quo = rep.design == designs.baseline()  # the design the process itself uses
    if rep.existing_markers and status_quo:
        extra.append(f"the process holds {rep.existing_markers:,} guard-marker run(s): under the {rep.design} "
                     "design each is a PROT_NONE VMA, so the count differs from the original's on purpose")
    elif rep.original_vmas is not None and status_quo:
        ok = m.values.get("arena_vmas") == rep.original_vmas
        extra.append(f"original process: {rep.original_vmas:,} VMAs; the kernel rebuilt "
                     f"{'the same count' if ok else 'a different count'} under the {rep.design} design")
    return render_measurement(m, rep.rows, title=f"{rep.source}: design {rep.design} on the kernel",
                              extra_notes=extra, shared_notes=shared_notes)
