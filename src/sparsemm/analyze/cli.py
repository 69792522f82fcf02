"""The ``analyze``, ``reproduce`` and ``demo`` commands: argument parsing and output only.

``add_parsers(subparsers)`` registers the three commands on the ``sparsemm`` parser. Every
user error (bad file, bad pid, malformed maps, layout too large, bad option) is one line on
stderr and exit status 2; the work itself lives in ``analyze.report``/``reproduce``/``plot``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources

from sparsemm._options import count, number, number_or_none, perms
from sparsemm.samples import resolve

__all__ = ["add_parsers", "analyze_main", "reproduce_main", "demo_main", "DEMO_MAPS", "EXIT_USAGE"]

EXIT_USAGE = 2
DEMO_MAPS = "chromium150_renderer_heavy_default.maps"
MAX_REPEAT = 100  # --repeat: fresh measuring children, each up to four attempts
DEFAULT_REPEAT = 3  # the same default as ``sparsemm measure --repeat``
MAX_KIB = float(1 << 37)  # the 128 TiB user address space, in KiB
_UNSET = object()  # --max-borderline-mib not given (None means "no bound")


class UsageError(Exception):
    """A user-facing failure: one line, exit status 2."""


# --- helpers ----------------------------------------------------------------------------------

def _console(stderr: bool = False):
    from sparsemm._term import console

    return console(stderr)


def _policy(args):
    from sparsemm.analyze.guards import GuardPolicy

    if getattr(args, "table_7_1", False):  # the deprecated spelling of --strict-guards
        print(f"sparsemm {args.command}: --table-7-1 is deprecated; use --strict-guards", file=sys.stderr)
        args.strict_guards = True
    if getattr(args, "strict_guards", False):
        return GuardPolicy.strict()
    kw = {}
    if args.max_guard_kib is not None:
        kw["max_guard_bytes"] = int(args.max_guard_kib * 1024)
    if args.max_borderline_mib is not _UNSET:
        kw["max_borderline_bytes"] = (None if args.max_borderline_mib is None
                                      else int(args.max_borderline_mib * 1024 * 1024))
    if args.cost_ratio is not None:
        kw["cost_ratio"] = args.cost_ratio
    if args.neighbour_perms is not None:
        kw["neighbour_perms"] = args.neighbour_perms
    try:
        return GuardPolicy(**kw)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _fail(command: str, exc: BaseException) -> int:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    print(f"sparsemm {command}: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _guarded(command: str, fn, args) -> int:
    """Run ``fn(args)``; turn every user-caused failure into one line and exit status 2."""
    from sparsemm.analyze.maps import MapsParseError
    from sparsemm.opscript.script import ScriptError

    from sparsemm.native.guards import GuardReadUnavailable, NoSuchProcess, ProcAccessError

    try:
        return fn(args)
    except (UsageError, MapsParseError, ScriptError, ValueError) as exc:
        return _fail(command, exc)
    except (ProcAccessError, NoSuchProcess, GuardReadUnavailable) as exc:  # their str() is the line
        return _fail(command, exc)
    except MemoryError:
        print(f"sparsemm {command}: out of memory (docs/analyze.md lists the input limits)",
              file=sys.stderr)
        return 1
    except RecursionError:
        return _fail(command, "input nested too deeply")
    except FileNotFoundError as exc:
        return _fail(command, f"{exc.filename}: no such file or process")
    except PermissionError as exc:
        return _fail(command, f"{exc.filename}: permission denied")
    except IsADirectoryError as exc:
        return _fail(command, f"{exc.filename}: is a directory")
    except UnicodeDecodeError:
        return _fail(command, "input is not text")
    except BrokenPipeError:  # the reader went away (| head): not an error; before OSError, its base
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as exc:
        return _fail(command, f"{getattr(exc, 'filename', '') or ''} {exc.strerror or exc}".strip())
    except RuntimeError as exc:  # a measuring child failed
        print(f"sparsemm {command}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _check_target(target: str) -> None:
    """Reject what ``maps.load`` would misread, with a one-line reason. A pid may be given
    as ``1234``, ``/proc/1234`` or ``/proc/self``; anything else must exist."""
    from sparsemm.analyze.maps import proc_pid

    if target == "-":
        return
    pid = proc_pid(target)
    if pid is not None:
        if not os.path.isdir(f"/proc/{pid}"):
            raise UsageError(f"no process with pid {pid}")
        return
    if not os.path.exists(target):
        raise UsageError(f"{target}: no such file, directory or pid")


def _is_dir_target(target: str) -> bool:
    """Directory mode: a directory that is not a /proc/PID (those are pids)."""
    from sparsemm.analyze.maps import proc_pid

    return target != "-" and proc_pid(target) is None and os.path.isdir(target)


def _analyze_one(target: str, policy, touch: str, on_stage=None, workers: int | None = None):
    from sparsemm.analyze.report import analyze_source

    return analyze_source(target, policy, touch, on_stage=on_stage, workers=workers)


def _analyze(args) -> int:
    from sparsemm.analyze.fleet_inputs import is_many

    policy = _policy(args)
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.out:
        from sparsemm.analyze.fleet_table import check_out_path

        check_out_path(args.out)
    targets = args.target
    if len(targets) > 1 or is_many(targets[0]):
        return _analyze_many(args, policy)
    if args.scheduler:
        raise UsageError("--scheduler analyzes many files: give a directory, a glob or a tarball")
    return _analyze_single(args, policy, targets[0])


def _analyze_single(args, policy, target: str) -> int:
    from sparsemm.analyze.report import render_report

    target = resolve(target, "maps")  # sample:NAME -> the bundled file
    _check_target(target)
    if args.plot:
        _check_plot_path(args.plot)
    if args.html:
        _check_html_path(args.html)
    err = _console(stderr=True)
    mappings = getattr(args, "mappings", False)
    with err.status("analyzing…") as status:
        report = _analyze_one(target, policy, args.touch, on_stage=lambda s: status.update(s + "…"),
                              workers=args.workers)
        if args.plot:
            from sparsemm.analyze.plot import plot_report

            status.update("plotting…")
            plot_report(report, args.plot)
        if args.html:
            from sparsemm.analyze.html import write_html

            status.update("writing the HTML report…")
            write_html(report, args.html)
    out = None
    if args.out:
        from sparsemm.analyze.fleet_table import TableWriter, report_rows

        writer = TableWriter(args.out)
        writer.write(report_rows(report.source, report))
        out = writer.close(ok=True)
    if args.json:
        doc = report.to_json(with_mappings=mappings)
        if args.plot:
            doc["plot"] = os.path.abspath(args.plot)
        if args.html:
            doc["html"] = os.path.abspath(args.html)
        if out:
            doc["out"] = os.path.abspath(out)
        for w in report.warnings:
            print(f"sparsemm analyze: warning: {w}", file=sys.stderr)
        print(json.dumps(doc, indent=1))
    else:
        from sparsemm.analyze.report import render_mappings

        con = _console()
        con.print(render_report(report))
        if mappings:
            print(file=con.file)
            print(render_mappings(report), file=con.file)
        if args.plot:
            con.print(f"plot written to {os.path.abspath(args.plot)}")
        if out:
            con.print(f"rows written to {os.path.abspath(out)}")
        if args.html:
            con.print(f"HTML report written to {os.path.abspath(args.html)}")
    return 0


def _analyze_many(args, policy) -> int:
    """Many files (directories, globs, tarballs): ``analyze.fleet`` on local worker
    processes or on the Dask scheduler ``--scheduler``; rows to ``--out``; a summary."""
    from sparsemm.analyze import fleet
    from sparsemm.analyze.fleet_inputs import plan_inputs
    from sparsemm.analyze.fleet_table import COLUMN_NAMES, Summary, TableWriter

    if args.plot:
        raise UsageError("--plot draws one process: give a file or pid, not many files")
    if args.mappings:
        raise UsageError("--mappings lists one process: give a file or pid, not many files")
    if args.html:
        raise UsageError("--html reports one process: give a file or pid, not many files")
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    if args.connect_timeout <= 0:
        raise UsageError("--connect-timeout must be positive")
    inputs = plan_inputs(args.target)
    from sparsemm.analyze.report import usable_cpus

    workers = args.workers or usable_cpus()  # the CPUs this process may use (taskset, cgroups)
    if inputs.total is not None:  # a small run starts fewer local workers
        workers = min(workers, inputs.total)
    summary = Summary(top=args.top)
    design_col, error_col = COLUMN_NAMES.index("design"), COLUMN_NAMES.index("error")
    writer = TableWriter(args.out) if args.out else None
    err = _console(stderr=True)
    where = f"the Dask scheduler at {args.scheduler}" if args.scheduler else f"{workers} local worker process(es)"
    progress = _progress(err) if sys.stderr.isatty() else None
    ok = False
    t0 = time.perf_counter()
    try:
        task = None
        if progress:
            progress.start()
            task = progress.add_task("starting " + ("the Dask client" if args.scheduler else "the workers"),
                                     total=inputs.total)

        def on_rows(rows):
            if writer:
                writer.write(rows)
            for r in rows:
                summary.add(r)
                if r[design_col] is None:  # a file that could not be analyzed: its line, as the run reaches it
                    warn(_file_error_line(r[0], r[error_col]))

        def on_file(source):
            if progress:
                progress.update(task, advance=1, description=os.path.basename(source))

        def warn(line):
            (progress.console if progress else err).print(f"sparsemm analyze: {line}", highlight=False,
                                                          soft_wrap=True, markup=False)

        engine = (fleet.remote_client(args.scheduler, args.connect_timeout) if args.scheduler
                  else fleet.local_client(workers))
        with engine as client:
            if progress:
                progress.update(task, description="")
            stats = fleet.run_fleet(client, inputs, fleet.FleetOptions(policy, args.touch), on_rows,
                                    batch_files=args.batch, total=inputs.total, on_file=on_file, warn=warn,
                                    address=where,
                                    lost_timeout=args.connect_timeout)
        ok = True
    except fleet.FleetError as exc:
        raise UsageError(str(exc) + _partial_note(writer, ok)) from None
    except KeyboardInterrupt:
        if writer:
            print(f"sparsemm analyze: interrupted{_partial_note(writer, ok)}", file=sys.stderr)
        raise
    finally:
        if progress:
            progress.stop()
        out = writer.close(ok) if writer else None
    seconds = time.perf_counter() - t0
    if summary.analyzed == 0:  # nothing to summarise; each file's error is on stderr already
        return EXIT_USAGE
    run = {"files": stats.files, "seconds": round(seconds, 3), "engine": "dask.distributed",
           "scheduler": args.scheduler, "workers": stats.max_threads, "batch_files": stats.batch_files,
           "batches": stats.batches, "retried_batches": stats.retried_batches,
           "out": os.path.abspath(out) if out else None}
    if args.json:
        doc = summary.to_json()
        doc["run"] = run
        print(json.dumps(doc, indent=1))
    else:
        con = _console()
        con.print(summary.render())
        con.print(f"[dim]{stats.files:,} file(s) in {seconds:.1f} s on {where} "
                  f"({stats.max_threads} worker thread(s), {stats.batches:,} task(s) of up to {stats.batch_files} file(s))"
                  + (f"; rows written to {os.path.abspath(out)}" if out else "") + "[/dim]")
    return 0


def _file_error_line(source: str, error: str) -> str:
    """A failed file's one stderr line (without the ``sparsemm analyze: `` prefix): most
    errors name their file already (``FILE:LINE: ...``)."""
    return error if error.startswith(source) else f"{source}: {error}"


def _partial_note(writer, ok: bool) -> str:
    if writer is None or ok:
        return ""
    return f"; the rows so far are in {writer.partial_path}"


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("analyzing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.description}"), console=console, transient=True)


def _check_plot_path(path: str) -> None:
    low = path.lower()
    if not (low.endswith(".png") or low.endswith(".svg")):
        raise UsageError(f"--plot {path}: the file name must end in .png or .svg")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--plot {path}: no directory {parent}")


def _check_html_path(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--html {path}: no directory {parent}")
    if os.path.isdir(path):
        raise UsageError(f"--html {path}: is a directory")


def _reproduce(args) -> int:
    from sparsemm.analyze.reproduce import render_reproduction, reproduce

    policy = _policy(args)
    args.target = resolve(args.target, "maps")
    _check_target(args.target)
    if _is_dir_target(args.target):
        raise UsageError(f"{args.target}: reproduce takes one maps/smaps file or pid, not a directory")
    from sparsemm.model.designs import reproducible

    designs = args.design or list(reproducible())
    if args.html:
        _check_html_path(args.html)
    err = _console(stderr=True)
    reps = []
    with err.status("analyzing…") as status:
        report = _analyze_one(args.target, policy, args.touch, on_stage=lambda s: status.update(s + "…"))
        layout = report.layout_payload_obj if getattr(args, "with_payload", False) else report.layout_obj
        for d in designs:
            status.update(f"building the layout on the kernel, design {d}…")
            reps.append(reproduce(layout, d, repeat=args.repeat, source=report.source))
        if args.html:
            from sparsemm.analyze.html import write_html

            status.update("writing the HTML report…")
            write_html(report, args.html, reps, with_payload=getattr(args, "with_payload", False))
    if args.json:
        print(json.dumps({"schema": "sparsemm.reproduce/1", "source": report.source,
                          "original_vmas": report.vmas,
                          "reproductions": [r.as_dict() for r in reps]}, indent=1))
    else:
        con = _console()
        said: set[str] = set()  # each note once over the designs
        for r in reps:
            con.print(render_reproduction(r, said))
            con.print()
    exact = all(r.exact_vmas for r in reps)
    return 0 if exact else 1


def _demo(args) -> int:
    from rich.panel import Panel

    from sparsemm.analyze.guards import GuardPolicy
    from sparsemm.analyze.maps import parse_maps
    from sparsemm.analyze.plot import plot_report
    from sparsemm.analyze.report import analyze, render_report
    from sparsemm.analyze.reproduce import render_reproduction, reproduce

    if args.plot:
        _check_plot_path(args.plot)
    t0 = time.perf_counter()
    con = _console()
    text = resources.files("sparsemm.data").joinpath("maps", DEMO_MAPS).read_text(encoding="utf-8")
    entries = parse_maps(text, DEMO_MAPS)
    con.print(Panel.fit(
        "[bold]What you are looking at[/bold]\n"
        f"{DEMO_MAPS}: /proc/PID/maps of a Chromium 150 renderer,\n"
        "10 s into an allocation-heavy page (bundled with sparsemm). PartitionAlloc and V8\n"
        "fence their memory with guard pages; today each guard is a PROT_NONE VMA ('---p').\n"
        "sparsemm finds the guards, rebuilds the layout in its model of the kernel under three\n"
        "designs and counts VMAs and kernel memory for each:\n"
        "  [bold]vma[/bold]   status quo: every guard is a VMA (the map as it is)\n"
        "  [bold]pte[/bold]   Linux 6.13+ MADV_GUARD_INSTALL: guards are page-table markers and the\n"
        "        memory around them stays one VMA\n"
        "  [bold]tree[/bold]  proposal: guards are maple-tree entries without a vm_area_struct\n"
        "Then it builds the same layout on this machine's kernel (vma and pte designs) and\n"
        "measures it: the predicted VMA counts and page tables should match exactly, and the\n"
        "kernel bytes charged to a memory cgroup around the rebuild within a page or two.", border_style="blue"))
    report = analyze(entries, GuardPolicy(), source=DEMO_MAPS)
    con.print(render_report(report))
    con.print()
    from sparsemm.model.designs import baseline, kernel_design, reproducible

    if not args.no_reproduce:
        said: set[str] = set()  # each note once over the designs
        for d in reproducible():
            with _console(stderr=True).status(f"building the layout on the kernel, design {d}…"):
                rep = reproduce(report.layout_obj, d, repeat=1, source=DEMO_MAPS)
            con.print(render_reproduction(rep, said))
            con.print()
    if args.plot:
        path = plot_report(report, args.plot)
        con.print(f"plot: {os.path.abspath(path)}  (one band per design: green anonymous memory, red "
                  "guards, grey reservations, blue files; white lines are VMA boundaries)")
    vma, pte = report.designs[baseline()], report.designs[kernel_design()]
    pte_p = report.designs_with_payload.get(kernel_design())
    if not vma.error and not pte.error:
        more = ""
        if report.payload and pte_p is not None and not pte_p.error:
            more = (f" With PartitionAlloc's {report.payload:,} ranges of decommitted payload as markers "
                    f"too: {pte_p.map_count:,} VMAs, {pte_p.saved_bytes / 1024:,.0f} KiB saved.")
        con.print(f"[bold]In short:[/bold] guard markers take this renderer from {vma.map_count:,} to "
                  f"{pte.map_count:,} VMAs ({pte.saved_vmas:,} fewer) and save "
                  f"{pte.saved_bytes / 1024:,.0f} KiB of kernel memory by the model.{more}")
    con.print(f"[dim]demo took {time.perf_counter() - t0:.1f} s[/dim]")
    return 0


# --- entry points -----------------------------------------------------------------------------

def analyze_main(args: argparse.Namespace) -> int:
    """``sparsemm analyze TARGET... [--json] [--plot FILE] [--out FILE] [--workers N]
    [--scheduler ADDRESS] [policy options] [--touch MODE]``."""
    return _guarded("analyze", _analyze, args)


def reproduce_main(args: argparse.Namespace) -> int:
    """``sparsemm reproduce TARGET [--design D]... [--repeat N] [--json]`` (D: a design the
    kernel can build, ``designs.reproducible()``)."""
    return _guarded("reproduce", _reproduce, args)


def demo_main(args: argparse.Namespace) -> int:
    """``sparsemm demo [--plot PATH] [--no-reproduce]``."""
    return _guarded("demo", _demo, args)


def _add_policy(p: argparse.ArgumentParser) -> None:
    from sparsemm.analyze.rebuild import TOUCH_MODES

    _add_policy_options(p)
    p.add_argument("--touch", choices=TOUCH_MODES, default="auto",
                   help="pages the rebuild touches: rss (smaps Rss per VMA), first (first page of each "
                        "accessible anonymous VMA), none; auto = rss for smaps, first for maps")


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    """The guard policy's options (``_policy(args)`` reads them)."""
    g = p.add_argument_group("guard policy (what counts as a guard)")
    g.add_argument("--max-guard-kib", type=number("max-guard-kib", 0, MAX_KIB), metavar="KIB",
                   help="PROT_NONE VMAs up to this size next to mergeable memory are guards (default 64)")
    g.add_argument("--max-borderline-mib", type=number_or_none("max-borderline-mib", 0, MAX_KIB / 1024),
                   default=_UNSET, metavar="MIB|none",
                   help="never a guard nor decommitted payload above this size (default 1024); between "
                        "the two, a PROT_NONE range cheaper as markers than as a VMA is decommitted payload")
    g.add_argument("--cost-ratio", type=number("cost-ratio", 0, 1e6), metavar="RATIO",
                   help=">1 favours markers in that test (default 1)")
    g.add_argument("--neighbour-perms", type=perms, metavar="PERMS",
                   help="neighbours must have exactly these perms, e.g. rw-p (default: any accessible private "
                        "anonymous VMA)")
    g.add_argument("--strict-guards", action="store_true",
                   help="the strict rule: a guard is a ---p of at most 64 KiB next to rw-p; no decommitted "
                        "payload (overrides the four options above)")
    g.add_argument("--table-7-1", action="store_true", help=argparse.SUPPRESS)  # old name, deprecated


def add_parsers(subparsers) -> None:
    """Register ``analyze``, ``reproduce`` and ``demo`` on ``subparsers`` (from
    ``ArgumentParser.add_subparsers``); each sets ``func`` to its ``*_main``."""
    p = subparsers.add_parser(
        "analyze", help="what each guard design makes of a process: VMAs, kernel bytes, max_map_count",
        description="Analyze a process (pid, read live with its guard markers), a snapshot file "
                    "(sparsemm snapshot), a saved /proc/PID/maps or smaps file or '-' (stdin); or many files "
                    "(directories, globs, tarballs) on local worker processes or a Dask cluster.",
        epilog="Exit status: 0 when a process was analyzed (many files: at least one; each file that failed is "
               "one line on stderr and a row with an error); 2 for bad input or options, an unusable Dask "
               "cluster, or when no file could be analyzed; 130 on Ctrl-C.")
    p.add_argument("target", nargs="+",
                   help="pid (or self), snapshot, maps/smaps file, sample:NAME (sparsemm samples) or - "
                        "(one process); or directories, globs, tarballs, files (many)")
    p.add_argument("--json", action="store_true", help="print JSON (schemas in docs/analyze.md, docs/fleet.md)")
    p.add_argument("--plot", metavar="FILE", help="draw the designs to FILE (.png or .svg; one process)")
    p.add_argument("--out", metavar="FILE",
                   help="write one row per process and design to FILE (.parquet or .csv; docs/fleet.md)")
    p.add_argument("--html", metavar="FILE",
                   help="write a self-contained HTML report to FILE: the design bands, the mappings table, "
                        "the guard policy and every number with how it was obtained (docs/analyze.md); one process")
    p.add_argument("--mappings", action="store_true",
                   help="also list every VMA with its role (guard, decommitted payload, reservation, kept, "
                        "existing markers) and what each design makes of it (JSON: a 'mappings' list; one process)")
    _add_policy(p)
    g = p.add_argument_group("many files (docs/fleet.md)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes (default: the number of CPUs); one process: designs in parallel")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is ADDRESS (e.g. tcp://host:8786)")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the scheduler and its workers (default 10)")
    g.add_argument("--batch", type=int, default=16, metavar="N", help="files per task (default 16)")
    g.add_argument("--top", type=int, default=10, metavar="N",
                   help="processes listed in each ranking of the summary (default 10)")
    p.set_defaults(func=analyze_main)

    p = subparsers.add_parser(
        "reproduce", help="build a process's layout on the kernel and compare with the prediction")
    p.add_argument("target", help="snapshot, maps/smaps file, pid (or self), sample:NAME, or - for "
                                  "standard input")
    from sparsemm.model.designs import reproducible

    p.add_argument("--design", action="append", choices=reproducible(),
                   help="design to build (repeatable; default: every one the kernel can build)")
    p.add_argument("--repeat", type=count("repeat", 1, MAX_REPEAT), default=DEFAULT_REPEAT,
                   help=f"fresh runs to take the median of, 1..{MAX_REPEAT} (default {DEFAULT_REPEAT}, "
                        "as for measure)")
    p.add_argument("--with-payload", action="store_true",
                   help="build the layout with the decommitted payload as guards too (the +payload counts)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--html", metavar="FILE",
                   help="write the analyze HTML report with these measurements beside the predictions to FILE")
    _add_policy(p)
    p.set_defaults(func=reproduce_main)

    p = subparsers.add_parser("demo", help="the bundled Chromium renderer: analyzed, reproduced, plotted")
    p.add_argument("--plot", default="sparsemm-demo.png", metavar="PATH",
                   help="where to write the plot (default sparsemm-demo.png)")
    p.add_argument("--no-reproduce", action="store_true", help="skip building the layout on the kernel")
    p.set_defaults(func=demo_main)
