"""The measured-vs-predicted table as people read it, for ``measure``, ``reproduce`` and the demo.

Owns the layout (rich): rows grouped by whose memory they count (this process, its memory
cgroup, the whole machine), each verdict in words, and the notes saying how every figure was
obtained. The rows, verdicts and dropped rows come from ``opscript.measure.compare``; this
module decides nothing about them and prints nothing itself.
"""

from __future__ import annotations

from sparsemm.opscript.measure import SLAB_AGREEMENT, SLAB_MIN_RUNS, Measurement, Row

__all__ = ["render_measurement", "how_notes", "SECTIONS"]

#: Section titles, by ``Row.scope``, in table order.
SECTIONS = {"process": "this process",
            "cgroup": "its memory cgroup",
            "machine": "whole machine (breakdown)"}


def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def verdict_label(r: Row) -> tuple[str, str]:
    """A comparison row's verdict as (text, tone): tone is "ok", "bad", "drop", "dim" or ""
    (the terminal table and the HTML page colour it their own way)."""
    if r.verdict == "exact":
        return "exact", "ok"
    if r.verdict == "within":
        return f"within ±{r.slack:,} B", "ok"
    if r.verdict == "MISMATCH":
        return "MISMATCH", "bad"
    if r.verdict == "dropped":
        return "dropped", "drop"
    if r.verdict == "breakdown" and r.diff_pct is not None:
        return f"{r.diff_pct:+.1f}%", "dim"
    return ("not measured", "dim") if r.measured is None else ("", "")


_RICH = {"ok": "green", "bad": "red", "drop": "yellow", "dim": "dim"}


def _verdict(r: Row) -> str:
    text, tone = verdict_label(r)
    return f"[{_RICH[tone]}]{text}[/{_RICH[tone]}]" if tone and text else text


def how_notes(m: Measurement) -> list[str]:
    """How each group of figures was obtained, one line per group that has figures."""
    out = []
    if any(k in m.values for k in ("arena_vmas", "map_count", "vmpte_bytes")):
        out.append("how: VMAs, map_count and VmPTE are the measuring process's own "
                   "(/proc/self/maps and /proc/self/status), after the layout minus before it")
    if m.memcg:
        out.append(f"how: kernel bytes are {m.memcg} of a memory cgroup holding only the measuring "
                   f"process, after minus before; the kernel charges whole pages, so a figure is "
                   f"within ±{m.memcg_slack:,} B of the exact charge")
    elif m.memcg_unavailable:
        out.append(f"kernel bytes not measured: no memory cgroup ({m.memcg_unavailable})")
    if any(m.methods.get(k) and "slabinfo" in m.methods[k] for k in m.methods):
        objects, frac = SLAB_AGREEMENT
        out.append("how: objects are /proc/slabinfo counts for the whole machine, other processes' "
                   f"objects included (caches shrunk first); a row is shown only where {SLAB_MIN_RUNS}+ "
                   f"quiet runs (no task started or ended) agree within max({objects}, {frac:.0%}); "
                   "maple_node is in no cgroup's charge")
    return out


def render_measurement(m: Measurement, rows: list[Row], *, title: str, extra_notes=(),
                       shared_notes: set[str] | None = None):
    """A rich renderable: the table of ``rows`` under ``title``, then the notes.

    ``extra_notes`` go first; a note already in ``shared_notes`` is not repeated (a caller
    showing several measurements passes one set so that each note is said once)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, header_style="bold", title_justify="left")
    for col in ("quantity", "predicted", "measured", "runs min..max", "diff", ""):
        t.add_column(col, justify="left" if col == "quantity" else "right")
    predicted = any(r.predicted is not None for r in rows)
    last_scope = None
    for r in rows:
        if r.scope != last_scope:
            if last_scope is not None:
                t.rows[-1].end_section = True
            t.add_row(f"[bold]{SECTIONS[r.scope]}[/bold]", "", "", "", "", "")
            last_scope = r.scope
        lo_hi = "" if r.spread is None else (
            _num(r.spread[0]) if r.spread[0] == r.spread[1] else f"{_num(r.spread[0])}..{_num(r.spread[1])}")
        t.add_row("  " + r.label, _num(r.predicted) if predicted else "",
                  "-" if r.measured is None else _num(r.measured), lo_hi,
                  "" if r.diff is None else f"{r.diff:+,}", _verdict(r))
    notes = list(extra_notes)
    n = len(m.runs)
    runs = (f"each figure is the median of {n} runs, each in a fresh process" if n > 1 else
            "each figure is from one run in a fresh process (--repeat N takes the median of N)")
    if m.attempts > n:
        runs += f"; {m.attempts} runs were made (disturbed ones were dropped)"
    notes.append(runs + (f"; {m.failed_ops} op(s) of the script failed on the kernel" if m.failed_ops else ""))
    notes.extend(how_notes(m))
    why: dict[str, list[str]] = {}
    for r in rows:
        if r.verdict == "dropped":
            why.setdefault(r.note, []).append(r.label)
    notes.extend(f"dropped {', '.join(labels)}: {reason}" for reason, labels in why.items())
    notes.extend(m.notes)
    notes.extend(f"skipped: {s}" for s in m.skipped)
    if shared_notes is not None:
        fresh = [n for n in notes if n not in shared_notes]
        shared_notes.update(notes)
        notes = fresh
    return Group(t, Text("\n".join(notes), style="dim"))
