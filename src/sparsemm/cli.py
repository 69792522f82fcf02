"""The ``sparsemm`` command: thin wrappers over the layers below.

Every failure a user can cause (a malformed script, a missing file, a backend
that cannot run, a bad option) is one line on stderr and exit status 2; never a
traceback. SIGTERM and SIGHUP unwind like Ctrl-C, so kernel-side children are
stopped before the command exits.
"""

from __future__ import annotations

import argparse
import signal
import sys

from sparsemm._input import SettingError
from sparsemm._options import Parser, Terminated, count, install_signal_handlers
from sparsemm.model import designs
from sparsemm.opscript import records as rec
from sparsemm.opscript.runner import BACKENDS, BackendUnavailable, run_script
from sparsemm.opscript.script import ScriptError, load_script

EXIT_USAGE = 2
#: ``measure --repeat``/``reproduce --repeat``: each run is a fresh child and its own median input.
MAX_REPEAT = 100


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _load(args: argparse.Namespace):
    """``args.script`` parsed; dangerous ops allowed by ``--allow-dangerous`` are explained."""
    script = load_script(args.script, allow_dangerous=getattr(args, "allow_dangerous", False))
    for warning in script.warnings:
        print(f"sparsemm {args.command}: warning: {warning}; running it as --allow-dangerous asks",
              file=sys.stderr)
    return script


def _print_records(script, records: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(rec.to_json(records))
    else:
        if script.note:
            print(f"# {script.note}")
        print(rec.render_text(records, script.doc.get("ops")))


def _run(args: argparse.Namespace) -> int:
    from sparsemm.opscript.kernel import KernelBackendError

    script = _load(args)
    try:
        records = run_script(script, args.backend, design=args.design)
    except KernelBackendError as exc:
        if exc.records:  # what ran before the child died: kept, then the one-line error
            _print_records(script, exc.records, args.format)
            sys.stdout.flush()
        raise
    _print_records(script, records, args.format)
    return 0


def _record(args: argparse.Namespace) -> int:
    from sparsemm.opscript.corpus import record_files

    changed = record_files(args.scripts, check=args.check, progress=not args.quiet)
    if args.check and changed:
        print(f"{len(changed)} script(s) differ from their recorded kernel records: "
              + ", ".join(changed), file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    from sparsemm.opscript.compare import compare_script

    script = _load(args)
    same, report = compare_script(script, design=args.design)
    print(report)
    return 0 if same else 1


def _measure(args: argparse.Namespace) -> int:
    import json

    from sparsemm.opscript.measure import compare, measure_script, prediction_from_counts

    script = _load(args)
    prediction = None
    if not args.no_predict:
        from sparsemm.opscript.designs import run_design

        result = run_design(script, designs.kernel_design())
        if not result.error:
            prediction = prediction_from_counts(result.counts)
    m = measure_script(script, repeat=args.repeat)
    rows = compare(m, prediction)
    if args.json:
        doc = m.as_dict()
        doc["rows"] = [r.as_dict() for r in rows]
        if prediction is not None:
            doc["prediction"] = prediction
        print(json.dumps(doc, indent=1))
    else:
        from sparsemm._term import console
        from sparsemm.measure_view import render_measurement

        title = f"{script.note or args.script}: on the kernel" + (
            f", beside the model's prediction (design {designs.kernel_design()})" if prediction is not None else "")
        console().print(render_measurement(m, rows, title=title))
    return 0


def _designs(args: argparse.Namespace) -> int:
    from sparsemm.opscript.designs import format_report, report_json, run_designs

    script = _load(args)
    results = run_designs(script, tuple(args.design) if args.design else None)
    print(report_json(results) if args.json else format_report(results))
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json

    from sparsemm.native.probe import EXIT_ERROR, features

    try:
        feats = features()
    except OSError as exc:  # the probe's own mappings failed: say so, exit EXIT_ERROR
        print(f"sparsemm probe: could not probe the kernel: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from sparsemm import _compiled

    if args.json:  # the model core's build beside the kernel's features
        print(json.dumps({**feats.to_json(), "model_core": _compiled.status()["core"]}, indent=2))
    else:
        print(feats.describe())
        print(_compiled.describe())
    return feats.exit_status


def _allow_dangerous(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-dangerous", action="store_true",
                   help="run hwpoison/soft_offline advice (refused otherwise: on the kernel, as root, "
                        "they take real memory out of service until reboot)")


class _Version(argparse.Action):
    """``--version``: the version and the model core's build (imports the core only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from sparsemm import __version__, _compiled

        print(f"sparsemm {__version__}; {_compiled.describe()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sparsemm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version,
                        help="print the version and whether the compiled model core is in use")
    sub = parser.add_subparsers(dest="command", required=True)
    design_names, native = designs.names(), designs.kernel_design()  # the registry, read now

    p = sub.add_parser("run", help="run an op script and print its records")
    p.add_argument("script", help="op script (JSON file, or - for standard input)")
    p.add_argument("--backend", choices=BACKENDS, default="kernel")
    p.add_argument("--design", choices=design_names, default=native,
                   help=f"guard design (model only; the kernel is {native!r})")
    p.add_argument("--format", choices=("json", "text"), default="json")
    _allow_dangerous(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("record", help="re-run corpus scripts on the kernel and store the records")
    p.add_argument("scripts", nargs="+", help="script files or directories")
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 if any recorded records differ")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_record)

    p = sub.add_parser("compare", help="run a script on both backends; show the first difference")
    p.add_argument("script")
    p.add_argument("--design", choices=design_names, default=native)
    _allow_dangerous(p)
    p.set_defaults(func=_compare)

    p = sub.add_parser("designs", help="run a script under each guard design; VMAs and kernel bytes")
    p.add_argument("script")
    p.add_argument("--design", action="append", choices=design_names,
                   help="only this design (repeatable; default: all of them)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _allow_dangerous(p)
    p.set_defaults(func=_designs)

    p = sub.add_parser("measure",
                       help="build a script's layout on the kernel; measure VMAs, VmPTE, kernel bytes")
    p.add_argument("script", help="op script (JSON file, or - for standard input)")
    p.add_argument("--repeat", type=count("repeat", 1, MAX_REPEAT), default=3,
                   help=f"runs to take the median of, 1..{MAX_REPEAT} (default 3)")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.add_argument("--no-predict", action="store_true",
                   help="measure only; do not run the model for a prediction")
    p.set_defaults(func=_measure)

    p = sub.add_parser(
        "probe", help="which guard-region features this kernel has",
        description="Ask the running kernel which guard-region features it has (the same "
                    "answer every time).",
        epilog="exit status: 0 guard markers work, 1 not available (Mapping and GuardedHeap "
               "use the PROT_NONE fallback), 2 the probe could not run. "
               "Examples: sparsemm probe; sparsemm probe --json")
    p.add_argument("--json", action="store_true",
                   help="print the features as a JSON object (schema sparsemm.probe/1)")
    p.set_defaults(func=_probe)

    from sparsemm.fuzz.cli import add_parser as add_fuzz_parser

    add_fuzz_parser(sub)

    from sparsemm.analyze.cli import add_parsers as add_analyze_parsers

    add_analyze_parsers(sub)  # analyze, reproduce, demo (the main job)

    from sparsemm.trace.cli import add_parser as add_trace_parser

    add_trace_parser(sub)

    from sparsemm.efence.cli import add_parser as add_efence_parser

    add_efence_parser(sub)

    from sparsemm.analyze.live_guards import add_parser as add_guards_parser
    from sparsemm.analyze.snapshot import add_parser as add_snapshot_parser

    add_guards_parser(sub)  # guards PID: the guards a live process holds
    add_snapshot_parser(sub)  # snapshot PID|--all: maps, smaps and guard markers saved
    return parser


def _say(command: str, exc: BaseException | str) -> None:
    print(f"sparsemm {command}: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    install_signal_handlers()
    try:
        args = build_parser().parse_args(argv)
    except Terminated as exc:
        return 128 + exc.signum
    try:
        return args.func(args)
    except (ScriptError, CliError, BackendUnavailable, SettingError) as exc:
        _say(args.command, exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say(args.command, "interrupted")
        return 128 + signal.SIGINT
    except Terminated as exc:
        _say(args.command, exc)
        return 128 + exc.signum
    except BrokenPipeError:
        return 0
    except OSError as exc:
        _say(args.command, exc)
        return EXIT_USAGE
    except MemoryError:
        _say(args.command, "out of memory")
        return 1
    except RuntimeError as exc:  # e.g. the kernel backend child failed
        _say(args.command, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
