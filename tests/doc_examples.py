"""The examples of README.md and docs/*.md: how they are found in the text and how one is run.

One definition for the tests that run them: ``test_doc_examples.py`` (with the checkout's
editable install) and ``test_doc_examples_installed.py`` (from a wheel in a fresh venv).

Shell examples are the ``$ ``-prefixed lines of ```console`` and ```sh`` blocks (a line
ending in ``\\`` continues on the next; a ``<<'EOF'`` here-document takes the lines up to
its terminator); the other lines of such a block are the output the doc shows. The commands
of one block run in one ``bash`` (so ``&`` and ``$!`` work across lines), with the chosen
install's ``sparsemm`` and ``python3`` first on ``PATH``, in a scratch directory outside the
checkout that all blocks of the same document share, in order (a later block may use a file
an earlier one wrote). Each command must exit 0, or the status its trailing comment states
as ``(exit N)``. ``python`` blocks run in a fresh interpreter of the same install and must
exit 0.

A block that cannot run on a fresh machine says so on the line before its fence:
``<!-- example: skip: REASON -->``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*example:\s*skip:\s*(.+?)\s*-->\s*$")
SHELLS = {"console", "sh", "shell", "bash"}
EXIT = re.compile(r"#.*\(exit (\d+)\)")
SYNOPSIS = re.compile(r"sparsemm [a-z][\w-]*(?: |$)")
HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_]\w*)['\"]?\s*$")  # at the line's end (not "1 << 20")
TIMEOUT = 900  # one block: a reproduce of the 1,400-VMA renderer takes tens of seconds on a busy machine


@dataclass(slots=True, frozen=True)
class Example:
    kind: str  # "shell" or "python"
    code: str | list[str]  # python source, or the shell commands
    skip: str | None  # the reason of its skip marker, or None
    line: int  # the line of its opening fence


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path):
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


def examples(path: Path, skip_python=lambda rel, line: False) -> list[Example]:
    """Every example of ``path``; ``skip_python(rel, line)`` leaves out python blocks another
    test runs (``rel``: the path relative to the checkout)."""
    rel = str(path.relative_to(ROOT))
    out = []
    for lang, body, skip, line in blocks(path):
        if lang in SHELLS or lang == "":
            cmds = commands(body)
            if cmds:
                out.append(Example("shell", cmds, skip, line))
        elif lang == "python" and not skip_python(rel, line):
            out.append(Example("python", body, skip, line))
    return out


def _inside(path: Path, top: Path) -> bool:
    try:
        return path.resolve().is_relative_to(top.resolve())
    except OSError:
        return False


def run_block(example: Example, cwd: Path, bindir: Path) -> subprocess.CompletedProcess:
    """Run one example in ``cwd`` with ``bindir`` (a venv's bin) first on PATH."""
    env = dict(os.environ)
    # the install's bin first; no entry inside the checkout (an activated .venv of it)
    rest = [d for d in env.get("PATH", "").split(os.pathsep) if d and not _inside(Path(d), ROOT)]
    env["PATH"] = os.pathsep.join([str(bindir), *rest])
    env["VIRTUAL_ENV"] = str(bindir.parent)
    for name in ("COLUMNS", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    python = str(bindir / "python")
    argv = (["bash", "-c", shell_script(example.code)] if example.kind == "shell"
            else [python, "-c", example.code])
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


def run_document(path: Path, todo: list[Example], bindir: Path) -> tuple[list[str], list[str]]:
    """Run ``todo`` (the examples of ``path``) in order in one scratch directory outside the
    checkout; return (failures, skips), each a list of descriptions."""
    rel = path.relative_to(ROOT)
    failures, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="sparsemm-doc-") as tmp:
        for ex in todo:
            if ex.skip:
                skipped.append(f"line {ex.line}: {ex.skip}")
                continue
            t0 = time.monotonic()
            out = run_block(ex, Path(tmp), bindir)
            print(f"{rel}:{ex.line} ({ex.kind}): exit {out.returncode}, "
                  f"{time.monotonic() - t0:.1f} s")  # shown with -s or on failure
            if out.returncode != 0:
                failures.append(f"{rel}:{ex.line} ({ex.kind}) exit {out.returncode}\n"
                                f"--- stdout (tail)\n{out.stdout[-1500:]}\n--- stderr (tail)\n{out.stderr[-1500:]}")
    return failures, skipped
