"""Every example in README.md and docs/*.md runs as written.

Shell examples are the ``$ ``-prefixed lines of ```console`` and ```sh`` blocks (a line
ending in ``\\`` continues on the next; a ``<<'EOF'`` here-document takes the lines up to
its terminator); the other lines of such a block are the output the doc shows. The commands
of one block run in one ``bash`` (so ``&`` and ``$!`` work across lines), with the package's
``sparsemm`` first on ``PATH``, in a scratch directory that all blocks of the same document
share, in order (it links the clone's ``docs/`` and ``tests/``, which some examples read) (a later block may use a file an earlier one wrote). Each command must exit
0, or the status its trailing comment states as ``(exit N)``. ``python`` blocks run in a
fresh interpreter and must exit 0 (docs/native.md and the README's Python section are run,
with their output compared, by test_native_docs.py).

A block that cannot run on a fresh machine says so on the line before its fence:
``<!-- example: skip: REASON -->``. A line that starts with ``sparsemm `` but has no ``$ ``
is refused: every example must be runnable, and a synopsis belongs in a table or in prose.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*example:\s*skip:\s*(.+?)\s*-->\s*$")
SHELLS = {"console", "sh", "shell", "bash"}
EXIT = re.compile(r"#.*\(exit (\d+)\)")
SYNOPSIS = re.compile(r"sparsemm [a-z][\w-]*(?: |$)")
HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_]\w*)['\"]?\s*$")  # at the line's end (not "1 << 20")
# Covered, with their printed output compared, by test_native_docs.py.
NATIVE_DOCS = ("docs/native.md",)
README_PYTHON_SECTION = "## Guard regions from Python"
TIMEOUT = 900  # one block: a reproduce of the 1,400-VMA renderer takes tens of seconds on a busy machine


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path: Path):
    """(language, body, skip reason or None, line number) of each fenced block."""
    text = path.read_text()
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        yield m.group(1), m.group(2), skip.group(1) if skip else None, text.count("\n", 0, m.start()) + 1


def commands(body: str) -> list[str]:
    """The ``$ `` commands of a console block, continuations and here-documents joined."""
    out: list[str] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            continue
        cmd = line[2:]
        while cmd.endswith("\\") and i < len(lines):
            cmd += "\n" + lines[i]
            i += 1
        heredoc = HEREDOC.search(cmd.split("#")[0].rstrip())
        if heredoc:
            end = heredoc.group(1)
            while i < len(lines):
                cmd += "\n" + lines[i]
                i += 1
                if lines[i - 1].strip() == end:
                    break
        out.append(cmd)
    return out


def expected_exit(cmd: str) -> int:
    m = EXIT.search(cmd.splitlines()[0])
    return int(m.group(1)) if m else 0


def shell_script(cmds: list[str]) -> str:
    """One bash script: each command, then a check of its exit status."""
    parts = []
    for n, cmd in enumerate(cmds):
        want = expected_exit(cmd)
        parts.append(f"{cmd}\n__rc=$?\nif [ $__rc -ne {want} ]; then echo \"example {n} exited $__rc, "
                     f"the doc says {want}\" >&2; exit 99; fi")
    return "\n".join(parts) + "\n"


def examples(path: Path):
    """(kind, code, skip reason, line) for every example of ``path``."""
    rel = str(path.relative_to(ROOT))
    text = path.read_text()
    readme_python = None
    if rel == "README.md" and README_PYTHON_SECTION in text:
        start = text.index(README_PYTHON_SECTION)
        end = text.find("\n## ", start + 1)
        readme_python = (text.count("\n", 0, start) + 1, text.count("\n", 0, end) + 1 if end != -1 else 1 << 30)
    for lang, body, skip, line in _blocks(path):
        if lang in SHELLS or lang == "":
            cmds = commands(body)
            if cmds:
                yield "shell", cmds, skip, line
        elif lang == "python":
            if rel in NATIVE_DOCS or (readme_python and readme_python[0] <= line < readme_python[1]):
                continue
            yield "python", body, skip, line


def run_block(kind: str, code, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("COLUMNS", None)
    argv = ["bash", "-c", shell_script(code)] if kind == "shell" else [sys.executable, "-c", code]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Files, not pipes: a background job of the block ('&') keeps its output open, and the
        # block is over when bash is, not when that job is.
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT)
        finally:  # the block's background jobs end with it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


DOCS = documents()
RUNNABLE = [p for p in DOCS if any(True for _ in examples(p))]


def test_no_example_is_a_bare_synopsis():
    """A shell block line starting with ``sparsemm `` must be a ``$ `` command."""
    bad = []
    for path in DOCS:
        for lang, body, _skip, line in _blocks(path):
            if lang in SHELLS:
                for n, text in enumerate(body.splitlines(), 1):
                    if SYNOPSIS.match(text):  # not output such as "sparsemm run: ..."
                        bad.append(f"{path.relative_to(ROOT)}:{line + n}: {text[:70]}")
    assert not bad, "write these as '$ sparsemm ...' examples that run: " + "; ".join(bad)


def test_the_docs_have_examples():
    count = sum(1 for path in DOCS for kind, *_ in examples(path) if kind == "shell")
    assert count >= 10


@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_every_example_runs(path):
    todo = list(examples(path))
    failures, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="sparsemm-doc-") as tmp:
        for name in ("docs", "tests"):  # examples run from a clone's top directory read these
            os.symlink(ROOT / name, Path(tmp) / name)
        for kind, code, skip, line in todo:
            if skip:
                skipped.append(f"line {line}: {skip}")
                continue
            t0 = time.monotonic()
            out = run_block(kind, code, Path(tmp))
            print(f"{path.relative_to(ROOT)}:{line} ({kind}): exit {out.returncode}, "
                  f"{time.monotonic() - t0:.1f} s")  # shown with -s or on failure
            if out.returncode != 0:
                failures.append(f"{path.relative_to(ROOT)}:{line} ({kind}) exit {out.returncode}\n"
                                f"--- stdout (tail)\n{out.stdout[-1500:]}\n--- stderr (tail)\n{out.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    if skipped and len(skipped) == len(todo):
        pytest.skip("; ".join(skipped))
