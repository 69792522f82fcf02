"""The ``sparsemm`` command as a newcomer meets it: help, version, examples, samples, plain words.

Every option has help and says its default; every command shows real examples that parse;
the top-level help lists every command, main ones first; ``--version`` names the package
version; ``sample:NAME`` reaches the bundled files; piped output keeps sentences and file
names whole and says how figures were made in words rather than internal names.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from importlib import metadata

import pytest

from conftest import run_cli

from sparsemm import cli, samples


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_says_its_default():
    missing = []
    for name, p in subcommands().items():
        text = p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
            elif action.option_strings and action.default not in (None, False) and \
                    isinstance(action.default, (str, int, float)) and \
                    "default" not in p._get_formatter()._get_help_string(action):
                missing.append(f"{name} {action.option_strings[0]}: default not shown")
        for opt in ("--repeat",):
            if any(opt in a.option_strings for a in p._actions):
                assert f"(default {cli.DEFAULT_REPEAT}" in " ".join(text.split()), name
    assert not missing, missing


def test_every_command_has_examples_that_parse():
    parser = cli.build_parser()
    for name, p in subcommands().items():
        assert p.epilog and "examples:" in p.epilog, name
        examples = cli.EXAMPLES[name]
        assert 2 <= len(examples) <= 3, name
        for example in examples:
            argv = shlex.split(example.split("|")[-1].split(">")[0].replace("$$", str(os.getpid())))
            argv = argv[argv.index("sparsemm") + 1:]
            assert argv[0] == name, example
            parser.parse_args(argv)  # exits (SystemExit) on an example that does not parse


def test_top_level_help_lists_every_command_main_ones_first():
    cp = run_cli("--help")
    assert cp.returncode == 0
    grouped = [n for _title, names in cli.GROUPS for n in names]
    assert sorted(grouped) == sorted(subcommands())
    positions = [cp.stdout.index(f"\n  {n} ") for n in grouped]
    assert positions == sorted(positions)
    assert grouped[0] == "analyze" and "examples:" in cp.stdout
    assert "thin wrappers" not in cp.stdout  # the developer docstring is not the help


def test_bare_command_is_one_line_pointing_at_the_help():
    cp = run_cli()
    assert cp.returncode == 2 and cp.stdout == ""
    assert len(cp.stderr.splitlines()) == 1 and "sparsemm --help" in cp.stderr


def test_version():
    cp = run_cli("--version")
    assert cp.returncode == 0
    assert cp.stdout.startswith(f"sparsemm {metadata.version('sparsemm')} ")
    assert "efence C library: " in cp.stdout


def test_repeat_defaults_agree():
    p = subcommands()
    repeat = {n: next(a.default for a in p[n]._actions if "--repeat" in a.option_strings)
              for n in ("measure", "reproduce")}
    assert repeat == {"measure": cli.DEFAULT_REPEAT, "reproduce": cli.DEFAULT_REPEAT}


def test_option_errors_name_the_option():
    cp = run_cli("analyze", "sample:python-threads", "--max-borderline-mib", "abc")
    assert cp.returncode == 2
    assert cp.stderr.startswith("sparsemm analyze: argument --max-borderline-mib: ") and "'abc'" in cp.stderr
    assert len(cp.stderr.splitlines()) == 1


def test_samples_list_print_and_resolve(tmp_path):
    cp = run_cli("samples")
    assert cp.returncode == 0
    assert [line.split()[0] for line in cp.stdout.splitlines()] == [f"sample:{n}" for n in samples.names()]
    cp = run_cli("samples", "guard")
    assert cp.returncode == 0 and json.loads(cp.stdout)["ops"]
    for name in samples.names():
        assert samples.path(name).is_file(), name
    cp = run_cli("run", "sample:guard", "--backend", "model")
    assert cp.returncode == 0 and json.loads(cp.stdout)[-1]["op"] == "snapshot"
    cp = run_cli("analyze", "sample:python-threads", "--json")
    assert cp.returncode == 0 and json.loads(cp.stdout)["vmas"] == 535
    cp = run_cli("analyze", "sample:nope")
    assert cp.returncode == 2 and "no sample 'nope'" in cp.stderr and "renderer" in cp.stderr
    cp = run_cli("samples", "nope")
    assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1


def test_samples_export_and_kind(tmp_path):
    cp = run_cli("samples", "--kind", "maps", "--export", str(tmp_path / "maps"))
    assert cp.returncode == 0, cp.stderr
    maps = [s for s in samples.SAMPLES if s.kind == "maps"]
    assert sorted(cp.stdout.split()) == sorted(str(tmp_path / "maps" / samples.file_name(s.name)) for s in maps)
    for s in maps:
        assert (tmp_path / "maps" / samples.file_name(s.name)).read_bytes() == samples.path(s.name).read_bytes()
    cp = run_cli("samples", "--kind", "program")
    assert [line.split()[0] for line in cp.stdout.splitlines()] == [
        f"sample:{s.name}" for s in samples.SAMPLES if s.kind == "program"]
    cp = run_cli("samples", "ladders", "--export", str(tmp_path))
    assert cp.returncode == 0 and (tmp_path / "ladders.py").read_text().startswith('"""')
    cp = run_cli("samples", "guard", "--kind", "maps")
    assert cp.returncode == 2 and "--kind maps" in cp.stderr and len(cp.stderr.splitlines()) == 1
    (tmp_path / "file").write_text("")
    cp = run_cli("samples", "--export", str(tmp_path / "file" / "sub"))
    assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1 and "Traceback" not in cp.stderr


@pytest.mark.parametrize("argv, fits", [(("analyze", "sample:guard"), "sample:renderer"),
                                        (("reproduce", "sample:ladders"), "sample:python-threads"),
                                        (("run", "sample:renderer"), "sample:guard")])
def test_a_sample_of_the_wrong_kind_says_which_fit(argv, fits):
    cp = run_cli(*argv)
    assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1, cp.stderr
    assert f"{argv[1]} is " in cp.stderr and fits in cp.stderr


def test_samples_are_package_data():
    """A plain pip install has the samples: the package-data globs of pyproject.toml take them."""
    import fnmatch
    import tomllib

    from conftest import ROOT

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sparsemm"]
    for sample in samples.SAMPLES:
        resource = f"data/{sample.resource}"
        assert any(fnmatch.fnmatch(resource, g) for g in globs), resource


def test_the_old_strict_spelling_still_works_with_a_notice():
    new = run_cli("analyze", "sample:python-threads", "--json", "--strict-guards")
    old = run_cli("analyze", "sample:python-threads", "--json", "--table-7-1")
    assert new.returncode == old.returncode == 0
    assert old.stderr.strip() == "sparsemm analyze: --table-7-1 is deprecated; use --strict-guards"
    a, b = json.loads(new.stdout), json.loads(old.stdout)
    for doc in (a, b):
        doc.pop("seconds", None)
    assert a["designs"] == b["designs"] and a["guards"] == b["guards"]
    assert "--table-7-1" not in run_cli("analyze", "--help").stdout


def test_piped_output_keeps_lines_whole_and_speaks_plainly(tmp_path):
    long_dir = tmp_path / ("a-directory-with-a-long-name-" * 4)
    long_dir.mkdir()
    maps = long_dir / "python-threads-with-a-long-file-name.maps"
    maps.write_text(samples.path("python-threads").read_text())
    cp = run_cli("analyze", str(maps))
    assert cp.returncode == 0, cp.stderr
    assert str(maps.name) in cp.stdout
    how = next(line for line in cp.stdout.splitlines() if line.startswith("how: "))
    assert how.rstrip().endswith(" s")  # one line, not wrapped at the console width
    for jargon in ("formula pte=", "touch=", "compressed modulo", "run(s)"):
        assert jargon not in cp.stdout, jargon
    # directory mode: the tables keep each file name on one line, errors go to stderr
    broken = long_dir / "zz-not-a-maps-file-with-a-long-name.maps"
    broken.write_text("garbage\n")
    cp = run_cli("analyze", str(tmp_path), "--workers", "1")
    assert cp.returncode == 0, cp.stderr
    assert any(str(maps.relative_to(tmp_path)) in line for line in cp.stdout.splitlines()), cp.stdout
    assert [line for line in cp.stderr.splitlines() if broken.name in line], cp.stderr
    cp = run_cli("designs", "sample:guard")
    assert cp.returncode == 0
    assert not set("┏┃━│─┼") & set(cp.stdout)  # plain when piped, like analyze
    assert any(line.startswith("charged to its memory cgroup") for line in cp.stdout.splitlines())


@pytest.mark.parametrize("pid", ["2"])
def test_a_kernel_thread_gets_a_sentence(pid):
    cp = run_cli("analyze", pid)
    if cp.returncode == 0:
        pytest.skip("pid 2 is not a kernel thread here")
    assert cp.returncode == 2 and "kernel thread" in cp.stderr and "no user address space" in cp.stderr
