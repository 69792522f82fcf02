"""The native layer's documented examples run as written (docs/native.md, README).

Each ``python`` block of docs/native.md and of the README's "Guard regions from
Python" section runs in a fresh interpreter and must exit 0 with nothing on
stderr; where the text states what a block prints, the output is compared.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import HAS_GUARDS, ROOT

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(path, lang: str, section: str | None = None) -> list[str]:
    text = (ROOT / path).read_text()
    if section is not None:
        start = text.index(section)
        end = text.find("\n## ", start + len(section))
        text = text[start:end if end != -1 else None]
    return [body for kind, body in FENCE.findall(text) if kind == lang]


NATIVE = blocks("docs/native.md", "python")
README = blocks("README.md", "python", "## Guard regions from Python")

# What the text says these blocks print (first line of the block -> stdout).
PRINTS = {
    "with sparsemm.Mapping(4 * 4096) as m:\n    m.guard(2 * 4096, 4096)":
        "guard 0x2000\nb'123'\nprotection\n",
    "with sparsemm.Mapping(2 * 4096) as src":
        "source guard 2\nb'ok'\n",
    "with sparsemm.Mapping(10 * 4096) as m":
        "[(4096, 12288), (28672, 4096)]\n[(4096, 4096), (12288, 4096), (28672, 4096)]\nTrue\n",
    "m = sparsemm.Mapping(2 * 4096)\narr":
        "b'\\x01\\x02\\x03'\nstill exported\nFalse\n",
}


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_the_docs_have_the_examples():
    assert len(NATIVE) >= 10 and len(README) == 1


@pytest.mark.parametrize("code", NATIVE, ids=[f"native-{i}" for i in range(len(NATIVE))])
def test_docs_native_example_runs(code):
    out = run(code)
    assert out.returncode == 0 and not out.stderr, out.stderr
    for head, expected in PRINTS.items():
        if head in code:
            assert out.stdout == expected
    if "m.mode" in code:
        assert out.stdout.splitlines()[0] == ("markers" if HAS_GUARDS else "prot_none")


def test_readme_python_example_runs_and_does_not_crash():
    out = run(README[0])
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert out.stdout == "guard\n"


def test_docs_native_probe_commands_run():
    lines = [line[2:] for block in blocks("docs/native.md", "console") for line in block.splitlines()
             if line.startswith("$ sparsemm probe")]
    assert len(lines) == 2
    for line in lines:
        command = line.split("#")[0].split()
        out = subprocess.run([sys.executable, "-m", "sparsemm", *command[1:]],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == (0 if HAS_GUARDS else 1) and not out.stderr


def test_no_machine_paths_in_the_native_docs():
    for path in ("docs/native.md", "README.md", "bench/bench_native.py"):
        assert "/work/" not in (ROOT / path).read_text(), path


def test_every_stated_output_belongs_to_an_example():
    for head in PRINTS:
        assert sum(head in code for code in NATIVE) == 1, head
