"""The ``sparsemm`` command: thin wrappers over the layers below.

Every failure a user can cause (a malformed script, a missing file, a backend
that cannot run) is one line on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from sparsemm.opscript import records as rec
from sparsemm.opscript.runner import BACKENDS, DESIGNS, BackendUnavailable, run_script
from sparsemm.opscript.script import ScriptError, load_script

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _run(args: argparse.Namespace) -> int:
    script = load_script(args.script)
    records = run_script(script, args.backend, design=args.design)
    if args.format == "json":
        print(rec.to_json(records))
    else:
        if script.note:
            print(f"# {script.note}")
        print(rec.render_text(records, script.doc.get("ops")))
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

    script = load_script(args.script)
    same, report = compare_script(script, design=args.design)
    print(report)
    return 0 if same else 1


def _measure(args: argparse.Namespace) -> int:
    from sparsemm.opscript.measure import measure_main

    if args.repeat < 1:
        raise CliError("--repeat must be at least 1")
    prediction = None
    if not args.no_predict:
        from sparsemm.opscript.designs import run_design
        from sparsemm.opscript.measure import prediction_from_counts

        result = run_design(load_script(args.script), "pte")
        if not result.error:
            prediction = prediction_from_counts(result.counts)
    return measure_main(args, prediction)


def _designs(args: argparse.Namespace) -> int:
    from sparsemm.opscript.designs import format_report, report_json, run_designs

    script = load_script(args.script)
    results = run_designs(script, *([tuple(args.design)] if args.design else []))
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
    print(json.dumps(feats.to_json(), indent=2) if args.json else feats.describe())
    return feats.exit_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsemm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an op script and print its records")
    p.add_argument("script", help="op script (JSON file, or - for standard input)")
    p.add_argument("--backend", choices=BACKENDS, default="kernel")
    p.add_argument("--design", choices=DESIGNS, default="pte",
                   help="guard design (model only; the kernel is 'pte')")
    p.add_argument("--format", choices=("json", "text"), default="json")
    p.set_defaults(func=_run)

    p = sub.add_parser("record", help="re-run corpus scripts on the kernel and store the records")
    p.add_argument("scripts", nargs="+", help="script files or directories")
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 if any recorded records differ")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_record)

    p = sub.add_parser("compare", help="run a script on both backends; show the first difference")
    p.add_argument("script")
    p.add_argument("--design", choices=DESIGNS, default="pte")
    p.set_defaults(func=_compare)

    p = sub.add_parser("designs", help="run a script under each guard design; VMAs and kernel bytes")
    p.add_argument("script")
    p.add_argument("--design", action="append", choices=DESIGNS,
                   help="only this design (repeatable; default: all three)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_designs)

    p = sub.add_parser("measure",
                       help="build a script's layout on the kernel; measure VMAs, VmPTE, slab objects")
    p.add_argument("script", help="op script (JSON file, or - for standard input)")
    p.add_argument("--repeat", type=int, default=3, help="runs to take the median of (default 3)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ScriptError, CliError, BackendUnavailable) as exc:
        print(f"sparsemm {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"sparsemm {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # e.g. the kernel backend child failed
        print(f"sparsemm {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
