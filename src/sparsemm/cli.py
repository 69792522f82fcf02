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
from pathlib import Path

from sparsemm._input import SettingError
from sparsemm._options import Formatter, Parser, Terminated, count, install_signal_handlers
from sparsemm.model import designs
from sparsemm.opscript import records as rec
from sparsemm.opscript.runner import BACKENDS, BackendUnavailable, run_script
from sparsemm.opscript.script import ScriptError, load_script
from sparsemm.samples import KINDS as SAMPLE_KINDS
from sparsemm.samples import SampleError

EXIT_USAGE = 2
#: ``measure --repeat``/``reproduce --repeat``: each run is a fresh child and its own median input.
MAX_REPEAT = 100
#: Both commands take the median of this many fresh runs unless told otherwise.
DEFAULT_REPEAT = 3


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _load(args: argparse.Namespace):
    """``args.script`` parsed; dangerous ops allowed by ``--allow-dangerous`` are explained."""
    from sparsemm.samples import resolve

    script = load_script(resolve(args.script, "script"), allow_dangerous=getattr(args, "allow_dangerous", False))
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
    from sparsemm.opscript.designs import render_report, report_json, run_designs

    script = _load(args)
    results = run_designs(script, tuple(args.design) if args.design else None)
    if args.json:
        print(report_json(results))
    else:
        from sparsemm._term import console

        out = console()
        if script.note:
            out.print(f"[bold]{args.script}[/bold]: {script.note}")
        out.print(render_report(results))
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


def _samples(args: argparse.Namespace) -> int:
    from sparsemm import samples

    chosen = [s.name for s in samples.SAMPLES if args.kind in (None, s.kind)]
    if args.name is not None:
        samples.path(args.name)  # SampleError names the known samples
        if args.kind is not None and args.name not in chosen:
            raise CliError(f"--kind {args.kind}: sample {args.name!r} is not of that kind")
        chosen = [args.name]
    if args.export is not None:
        for written in samples.export(Path(args.export), chosen):
            print(written)
        return 0
    if args.name is None:
        for s in samples.SAMPLES:
            if s.name in chosen:
                print(f"{samples.PREFIX}{s.name:<16} {s.kind:<7} {s.about}")
        return 0
    path = samples.path(args.name)
    if args.path:
        print(path)
    else:
        sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def _allow_dangerous(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-dangerous", action="store_true",
                   help="run hwpoison/soft_offline advice (refused otherwise: on the kernel, as root, "
                        "they take real memory out of service until reboot)")


#: The top-level help lists the commands in these groups, in this order (main ones first).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Look at a process (what would guard markers save it?)",
     ("analyze", "reproduce", "demo", "trace", "guards", "snapshot", "samples")),
    ("Guard regions in your own programs",
     ("probe", "efence")),
    ("Op scripts (one format for the model and the kernel)",
     ("run", "compare", "designs", "measure", "record", "fuzz")),
)

#: Two or three real examples per command, shown under its --help (they run as written).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "analyze": ("sparsemm analyze sample:renderer",
                "sparsemm analyze $$ --mappings",
                "sparsemm analyze sample:python-threads --json --plot threads.png"),
    "reproduce": ("sparsemm reproduce sample:python-threads",
                  "sparsemm reproduce sample:renderer --design pte --repeat 5",
                  "sparsemm reproduce $$ --json"),
    "demo": ("sparsemm demo",
             "sparsemm demo --no-reproduce --plot renderer.svg"),
    "trace": ("sparsemm trace -- python3 -c 'import threading; threading.Thread(target=print).start()'",
              "sparsemm trace --json --plot trace.png -- sort /etc/passwd",
              "sparsemm trace --pid $$ --duration 2"),
    "guards": ("sparsemm guards $$",
               "sparsemm guards self --json"),
    "snapshot": ("sparsemm snapshot $$ -o shell.snapshot.json",
                 "sparsemm snapshot --all -o snaps.tar.gz"),
    "samples": ("sparsemm samples",
                "sparsemm samples guard > guard.json",
                "sparsemm samples --kind maps --export maps/"),
    "probe": ("sparsemm probe",
              "sparsemm probe --json"),
    "efence": ("sparsemm efence -- sort /etc/passwd",
               "sparsemm efence --underflow --backtrace -- ls /",
               "PYTHONMALLOC=malloc sparsemm efence --align 16 -- python3 -c 'print(1)'"),
    "run": ("sparsemm run sample:guard --format text",
            "sparsemm run sample:guard --backend model --design tree",
            "sparsemm samples guard | sparsemm run - --backend kernel"),
    "compare": ("sparsemm compare sample:guard",
                "sparsemm compare sample:guard --design pte"),
    "designs": ("sparsemm designs sample:guard",
                "sparsemm designs sample:guard --design vma --design pte --json"),
    "measure": ("sparsemm measure sample:guard",
                "sparsemm measure sample:guard --repeat 5 --json"),
    "fuzz": ("sparsemm fuzz --time 60",
             "sparsemm fuzz --time 600 --seed 1 --profile guards thp --findings findings/",
             "sparsemm fuzz --recheck findings/"),
    "record": ("sparsemm record tests/conformance/merge",
               "sparsemm record --check tests/conformance"),
}

DESCRIPTION = """\
sparsemm makes Linux guard regions and sparse memory mappings usable and measurable: it
reads a process's memory map and shows what each way of making guard pages would cost it
(PROT_NONE VMAs today, page-table guard markers since Linux 6.13, maple-tree entries as
proposed), proves the prediction on the running kernel, and gives Python and native
programs real guard regions."""

EPILOG = """\
examples:
  sparsemm demo                        a real Chromium renderer's map, analyzed, rebuilt, plotted
  sparsemm analyze $$                  your shell, read live
  sparsemm samples                     the bundled sample maps, scripts and programs
  sparsemm run sample:guard --format text

'sparsemm COMMAND --help' shows a command's options and examples. Documentation: README.md
and docs/*.md of the sparsemm source (docs/analyze.md, docs/opscript.md, docs/native.md)."""


def version_text() -> str:
    """``sparsemm --version``: the package version, Python and kernel, which model core is in
    use (mypyc-compiled or pure Python), and whether the efence C library is built."""
    import os
    import platform

    from sparsemm import __version__

    try:
        from sparsemm.efence.driver import LibraryNotBuilt, library_path

        try:
            library = f"built ({library_path().name})"
        except LibraryNotBuilt:
            library = "not built (sparsemm efence unavailable)"
    except ImportError:  # pragma: no cover - the efence package ships with sparsemm
        library = "absent"
    from sparsemm import _compiled

    return (f"sparsemm {__version__} (Python {platform.python_version()}, {os.uname().sysname} "
            f"{os.uname().release}); {_compiled.describe()}; efence C library: {library}")


class _Version(argparse.Action):
    """``--version``: computed only when asked (it imports the model core to say which build)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _command_list(sub) -> str:
    helps = {a.dest: a.help for a in sub._choices_actions}
    width = max(map(len, helps)) + 2
    out = []
    for title, names in GROUPS:
        out.append(f"{title}:")
        out.extend(f"  {n:<{width}}{helps.pop(n)}" for n in names if n in helps)
        out.append("")
    if helps:  # a command no group names: still listed
        out.append("Other commands:")
        out.extend(f"  {n:<{width}}{h}" for n, h in helps.items())
        out.append("")
    return "\n".join(out).rstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sparsemm", formatter_class=Formatter, epilog=EPILOG,
                    usage="sparsemm [-h] [--version] COMMAND [options]")
    parser.add_argument("--version", action=_Version,
                        help="print the version, whether the compiled model core is in use and whether "
                             "the efence C library is built, and exit")
    # The commands are listed, grouped, in the description (_command_list); not twice.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS,
                                prog="sparsemm")
    design_names, native = designs.names(), designs.kernel_design()  # the registry, read now

    p = sub.add_parser("run", help="run an op script and print its records")
    p.add_argument("script", help="op script: a JSON file, sample:NAME, or - for standard input")
    p.add_argument("--backend", choices=BACKENDS, default="kernel",
                   help="where to run it: the running kernel, or sparsemm's model of it")
    p.add_argument("--design", choices=design_names, default=native,
                   help=f"guard design (model only; the kernel's own is {native!r}, the default)")
    p.add_argument("--format", choices=("json", "text"), default="json",
                   help="json: the records (docs/opscript.md); text: one line per op, for people")
    _allow_dangerous(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("record", help="re-run corpus scripts on the kernel and store the records")
    p.add_argument("scripts", nargs="+", help="script files or directories")
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 if any recorded records differ")
    p.add_argument("--quiet", action="store_true", help="no progress line per script")
    p.set_defaults(func=_record)

    p = sub.add_parser("compare", help="run a script on both backends; show the first difference")
    p.add_argument("script", help="op script: a JSON file, sample:NAME, or - for standard input")
    p.add_argument("--design", choices=design_names, default=native,
                   help="the model's guard design to set beside the kernel")
    _allow_dangerous(p)
    p.set_defaults(func=_compare)

    p = sub.add_parser("designs", help="run a script under each guard design; VMAs and kernel bytes")
    p.add_argument("script", help="op script: a JSON file, sample:NAME, or - for standard input")
    p.add_argument("--design", action="append", choices=design_names,
                   help="only this design (repeatable; default: all of them)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _allow_dangerous(p)
    p.set_defaults(func=_designs)

    p = sub.add_parser("measure",
                       help="build a script's layout on the kernel; measure VMAs, VmPTE, kernel bytes")
    p.add_argument("script", help="op script: a JSON file, sample:NAME, or - for standard input")
    p.add_argument("--repeat", type=count("repeat", 1, MAX_REPEAT), default=DEFAULT_REPEAT,
                   help=f"fresh runs to take the median of, 1..{MAX_REPEAT} (default {DEFAULT_REPEAT})")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.add_argument("--no-predict", action="store_true",
                   help="measure only; do not run the model for a prediction")
    p.set_defaults(func=_measure)

    p = sub.add_parser(
        "probe", help="which guard-region features this kernel has",
        description="Ask the running kernel which guard-region features it has (the same "
                    "answer every time).",
        epilog="exit status: 0 guard markers work, 1 not available (Mapping and GuardedHeap "
               "use the PROT_NONE fallback), 2 the probe could not run.")
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

    p = sub.add_parser(
        "samples", help="list the bundled sample maps, scripts and programs, print one, or copy them",
        description="The samples shipped with sparsemm (docs/samples.md). Every command that "
                    "takes a maps file or an op script also takes sample:NAME.")
    p.add_argument("name", nargs="?", help="a sample's name: print its contents (default: list them all)")
    p.add_argument("--path", action="store_true", help="print the sample's file path instead of its contents")
    p.add_argument("--kind", choices=SAMPLE_KINDS,
                   help="only the samples of this kind: maps (for analyze), script (op scripts), "
                        "program (programs to trace)")
    p.add_argument("--export", metavar="DIR",
                   help="copy the samples (NAME, or every one of --kind, or all) into DIR under their "
                        "file names, creating it; print each file written")
    p.set_defaults(func=_samples)

    for name, command in sub.choices.items():  # one look for every command's --help
        command.formatter_class = Formatter
        examples = EXAMPLES.get(name)
        if examples:
            text = "examples:\n" + "\n".join(f"  {e}" for e in examples)
            command.epilog = f"{command.epilog}\n\n{text}" if command.epilog else text
    parser.description = DESCRIPTION + "\n\n" + _command_list(sub)
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
    except (ScriptError, CliError, BackendUnavailable, SettingError, SampleError) as exc:
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
