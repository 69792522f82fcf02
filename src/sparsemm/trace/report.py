"""What ``sparsemm trace`` prints: the per-design table, the as-run check, the JSON document and the plot.

Owns the wording of the as-run verdict (matches the measured count, or where the
replay and the process diverged), the JSON schema ``sparsemm.trace/1`` and the figure.
Reads ``Recording`` and ``ReplayResult``; computes nothing the replay did not.
"""

from __future__ import annotations

import json

from sparsemm.model.designs import GuardShape, design_class
from sparsemm.trace.costs import costs, estimate
from sparsemm.trace.designs import AS_RUN
from sparsemm.trace.record import Recording
from sparsemm.trace.replay import Comparison, MmResult, ReplayResult

__all__ = ["root_of", "verdict", "to_json", "format_text", "plot", "SCHEMA"]

SCHEMA = "sparsemm.trace/1"
_KiB = 1024


def root_of(res: ReplayResult) -> MmResult | None:
    """The root process's last replayed address space (the command after its execs, or the pid)."""
    return res.mms[res.root] if res.root is not None else None


def _measurement(mm: MmResult | None) -> Comparison | None:
    if mm is None or not mm.comparisons:
        return None
    return mm.comparisons[-1]


def verdict(rec: Recording, res: ReplayResult) -> tuple[bool | None, str]:
    """(as-run matches the measurement, or None when nothing was measured; one paragraph)."""
    root = root_of(res)
    cmp = _measurement(root)
    asrun = res.designs.get(AS_RUN)
    if root is None:
        return None, "no address space of the root process was replayed (see the notes)"
    if cmp is None:
        how = {"exit": "exited", "killed by SIGKILL": "was killed"}.get(root.end, root.end)
        return None, (f"the process's map was not read at its end (it {how} without a held exit_group), "
                      "so the as-run count is not checked")
    where = f"at its {'exit_group' if cmp.kind == 'exit' else 'detach'} (line {cmp.lineno})"
    if cmp.matches:
        text = (f"as-run replay ends with {cmp.model_vmas} VMAs, the process had {cmp.measured_vmas} {where}: "
                "every VMA matches")
        if not cmp.held:
            text += f" (but the map was read while the process ran: {cmp.note})"
        return True, text
    text = (f"as-run replay DIVERGED: it ends with {cmp.model_vmas} VMAs, the process had {cmp.measured_vmas} "
            f"{where}; the first difference: {cmp.first_difference}")
    if cmp.last_call_line is not None:
        text += f"; the last traced call on that range is at line {cmp.last_call_line} of the trace"
    if asrun is not None and asrun.mismatch_count:
        m = asrun.mismatches[0]
        text += (f"; {asrun.mismatch_count} call(s) got another result on the model than on the kernel, "
                 f"the first at line {m.lineno}: {m.call} -> kernel {m.kernel}, model {m.model}")
    if not cmp.held:
        text += f" (the map was read while the process ran: {cmp.note})"
    return False, text


def _design_doc(res: ReplayResult, name: str, root: MmResult | None, series: bool) -> dict:
    d = res.designs[name]
    est = estimate(d.calls, d.fork_vmas)
    doc = {
        "final_vmas": root.final.get(name) if root else None,
        "peak_vmas": root.peak.get(name) if root else None,
        "final_kernel_bytes": root.final_kernel_bytes.get(name) if root else None,
        "final_page_table_bytes": root.final_table_bytes.get(name) if root else None,
        "peak_kernel_bytes_sampled": d.peak_root_kernel_bytes,
        "calls": d.calls,
        "calls_total": sum(d.calls.values()),
        "forks": d.forks,
        "kernel_time_estimate_ms": round(est.total_ns / 1e6, 3),
        "kernel_time_by_kind_ms": {k: round(v / 1e6, 3) for k, v in sorted(est.by_kind_ns.items())},
        "failed_calls": d.failed,
        "first_failure": d.first_failure,
        "all_processes": {"peak_vmas": d.peak_vmas, "peak_kernel_bytes_sampled": d.peak_kernel_bytes,
                          "peak_page_table_bytes_sampled": d.peak_table_bytes},
    }
    if series:
        doc["series"] = [{"t": round(s.t, 6), "event": s.event, "vmas": s.vmas, "vmas_max": s.vmas_max,
                          "root_vmas": s.root_vmas, "map_count": s.map_count, "kernel_bytes": s.kernel_bytes,
                          "root_kernel_bytes": s.root_kernel_bytes, "page_table_bytes": s.table_bytes,
                          "calls": s.calls} for s in d.samples]
    return doc


def to_json(rec: Recording, res: ReplayResult, *, series: bool = True) -> str:
    """The JSON document (schema ``sparsemm.trace/1``)."""
    root = root_of(res)
    cmp = _measurement(root)
    ok, text = verdict(rec, res)
    asrun = res.designs.get(AS_RUN)
    c = costs()
    doc = {
        "schema": SCHEMA,
        "mode": rec.mode,
        "command": rec.command,
        "pid": rec.root_pid,
        "kernel": rec.kernel,
        "strace": rec.strace_version,
        "recording": {"lines": rec.lines, "duration_s": round(rec.duration_s, 3), "hold_s": rec.hold_seconds,
                      "exit_status": rec.exit_status, "untraced_syscalls": rec.untraced},
        "payload_as_guards": res.payload,
        "measured_final_vmas": cmp.measured_vmas if cmp else None,
        "measurement": None if cmp is None else {
            "line": cmp.lineno, "kind": cmp.kind, "held": cmp.held, "as_run_vmas": cmp.model_vmas,
            "matches": cmp.matches, "first_difference": cmp.first_difference,
            "last_call_line": cmp.last_call_line},
        "as_run_check": {"matches": ok, "message": text,
                         "mismatched_calls": asrun.mismatch_count if asrun else None,
                         "first_mismatches": [{"line": m.lineno, "pid": m.pid, "call": m.call,
                                               "kernel": m.kernel, "model": m.model}
                                              for m in (asrun.mismatches if asrun else [])]},
        "designs": {name: _design_doc(res, name, root, series) for name in res.designs},
        "processes": [{
            "pid": m.pid, "label": m.label, "role": m.role or None, "born": m.born, "born_line": m.born_line, "parent": m.parent,
            "end": m.end, "ended_line": m.ended_line, "replayed": m.seeded, "calls": m.calls,
            "peak_vmas": m.peak, "final_vmas": m.final,
            "measured_vmas": m.comparisons[-1].measured_vmas if m.comparisons else None,
            "matches": m.comparisons[-1].matches if m.comparisons else None,
            "first_difference": m.comparisons[-1].first_difference if m.comparisons else None,
        } for m in res.mms],
        "kernel_bytes": ("model.costs estimate of vm_area_structs, anon_vmas, anon_vma_chains and maple "
                         "nodes; page_table_bytes apart: only the tables the traced calls need (guard "
                         "markers, populate), an upper bound for markers, since a trace has no faults"),
        "kernel_time": {"estimate": True, "basis": c.about, "kernel": c.kernel,
                        "note": "tree-design guard entries are priced as MADV_GUARD_INSTALL calls "
                                "(the design was never built)"},
        "events": res.events, "calls": res.calls, "untracked_calls": res.untracked_calls,
        "unmodelled": res.unmodelled, "notes": res.notes + rec.notes,
        "replay_seconds": round(res.duration_s, 3),
    }
    return json.dumps(doc, indent=1)


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / _KiB:,.0f} KiB"


def format_text(rec: Recording, res: ReplayResult) -> str:
    """The human report: one row per design, the as-run check, the processes, the notes."""
    root = root_of(res)
    out = []
    argv = " ".join(rec.command).replace("\n", "\\n")  # one line, even for python3 -c 'a\nb'
    what = argv if rec.mode == "command" else f"pid {rec.root_pid} ({argv})"
    out.append(f"sparsemm trace: {what}")
    out.append(f"  {rec.lines:,} trace lines, {res.calls:,} memory-management calls, "
               f"{sum(1 for m in res.mms if m.seeded)} address space(s) replayed, "
               f"recorded in {rec.duration_s:.1f} s, replayed in {res.duration_s:.1f} s")
    out.append("")
    if root is not None:
        out.append(f"  the process: pid {root.pid} {root.label}" + (f" ({root.role})" if root.role else "")
                   + f", from line {root.born_line} ({root.born}) to "
                   + (f"line {root.ended_line} ({root.end})" if root.ended_line else "the end of the trace"))
    head = (f"  {'design':<8}{'final VMAs':>11}{'peak VMAs':>11}{'kernel bytes':>14}{'+tables':>11}"
            f"{'calls, all':>12}{'kernel time*':>14}{'refused':>9}")
    out.append(head)
    for name in res.designs:
        d = res.designs[name]
        est = estimate(d.calls, d.fork_vmas)
        out.append(f"  {name:<8}{_n(root.final.get(name) if root else None):>11}"
                   f"{_n(root.peak.get(name) if root else None):>11}"
                   f"{_kib(root.final_kernel_bytes.get(name) if root else None):>14}"
                   f"{_kib(root.final_table_bytes.get(name) if root else None):>11}"
                   f"{sum(d.calls.values()):>12,}{est.total_ns / 1e6:>11.2f} ms{d.failed:>9,}")
    out.append("")
    ok, text = verdict(rec, res)
    out.append(("  " if ok is not False else "  ! ") + text)
    c = costs()
    out.append("  final/peak VMAs and kernel bytes: the process; calls, kernel time, refused: every traced process")
    out.append("  pte/tree: " + ("guards and decommitted payload (--with-payload)" if res.payload else
                                 "guard pages (--with-payload: decommitted payload too)")
               + " as markers / tree entries, by the guard policy of sparsemm analyze")
    out.append(f"  * estimated from per-call costs measured on Linux {c.kernel} ({c.measured}, "
               "bench/bench_syscall_costs.py), not measured in this run")
    out.append("  kernel bytes: vm_area_structs, anon_vmas and their chains, maple nodes (model.costs); +tables: "
               "the page tables the calls themselves need (guard markers, populate), an upper bound: the "
               "program's own faults, not in a trace, make many of them anyway")
    for name in res.designs:
        d = res.designs[name]
        if d.first_failure:
            out.append(f"  {name}: {d.failed:,} call(s) the kernel accepted would fail; first: {d.first_failure}")
    tracked = [m for m in res.mms if m.seeded]
    if len(tracked) > 1:
        out.append("")
        out.append(f"  {'pid':>7} {'process':<26}{'born':<7}" + "".join(f"{n + ' peak':>12}" for n in res.designs)
                   + f"{'measured':>10}  end")
        for m in tracked:
            meas = m.comparisons[-1] if m.comparisons else None
            mark = "" if meas is None else ("" if meas.matches else " !")
            name = f"{m.label} ({m.role})" if m.role else m.label
            out.append(f"  {m.pid:>7} {name[:25]:<26}{m.born:<7}"
                       + "".join(f"{_n(m.peak.get(n)):>12}" for n in res.designs)
                       + f"{_n(meas.measured_vmas) if meas else '-':>10}{mark}  {m.end}")
    notes = res.notes + rec.notes
    if res.unmodelled:
        notes.append("replayed as no change: " + ", ".join(f"{k} x{v}" for k, v in res.unmodelled.items()))
    for n in notes:
        out.append(f"  note: {n}")
    return "\n".join(out)


def _n(v) -> str:
    return "-" if v is None else f"{v:,}"


#: Line style and colour by what a guard is (the registry's ``GuardShape``), as run in black.
_LINES = {AS_RUN: ("-", "black"), GuardShape.VMA: ("--", "tab:red"), GuardShape.MARKER: ("-", "tab:blue"),
          GuardShape.ENTRY: (":", "tab:green")}


def plot(rec: Recording, res: ReplayResult, path: str) -> None:
    """Two panels over the trace's time for the reported process (the root one, or --focus):
    its VMAs and its VMA-side kernel bytes, one line per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name, d in res.designs.items():
        style, colour = _LINES[AS_RUN if name == AS_RUN else design_class(name).guard_shape]
        alive = [s for s in d.samples if s.root_vmas] or d.samples  # the process's lifetime
        t = [s.t for s in alive]
        ax1.plot(t, [s.root_vmas for s in alive], style, color=colour, label=name, linewidth=1.4)
        ax2.plot(t, [s.root_kernel_bytes / _KiB for s in alive], style, color=colour, label=name, linewidth=1.4)
    root = root_of(res)
    ax1.set_ylabel("VMAs")
    ax2.set_ylabel("VMA-side kernel memory, KiB\n(model estimate)")
    ax2.set_xlabel("seconds since the first traced call")
    ok, _ = verdict(rec, res)
    title = (root.label + (f" ({root.role})" if root.role else "") + f", pid {root.pid}") if root else "?"
    ax1.set_title(f"sparsemm trace: {title}" + ("" if ok is None else ("; as-run matches /proc" if ok
                                                                         else "; as-run DIVERGED")))
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

