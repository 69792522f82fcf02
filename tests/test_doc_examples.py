"""Every example in README.md and docs/*.md runs as written, with the checkout's install.

How examples are found and run: tests/doc_examples.py. Here they run with this test run's
interpreter (the editable install of ``make test``), in a scratch directory outside the
checkout: an example may use only what sparsemm bundles (``sample:NAME``,
``sparsemm samples``) or what an earlier example wrote. ``python`` blocks of docs/native.md
and of the README's Python section are left to test_native_docs.py, which also compares
their output; test_doc_examples_installed.py runs all of them from a wheel.

A line that starts with ``sparsemm `` but has no ``$ `` is refused: every example must be
runnable, and a synopsis belongs in a table or in prose.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from doc_examples import ROOT, SHELLS, SYNOPSIS, blocks, documents, examples, run_document

pytestmark = pytest.mark.slow

# Covered, with their printed output compared, by test_native_docs.py.
NATIVE_DOCS = ("docs/native.md",)
README_PYTHON_SECTION = "## Guard regions from Python"


def _readme_python_lines() -> tuple[int, int]:
    text = (ROOT / "README.md").read_text()
    start = text.index(README_PYTHON_SECTION)
    end = text.find("\n## ", start + 1)
    return text.count("\n", 0, start) + 1, (text.count("\n", 0, end) + 1 if end != -1 else 1 << 30)


def covered_elsewhere(rel: str, line: int) -> bool:
    """A python block test_native_docs.py runs and checks."""
    if rel in NATIVE_DOCS:
        return True
    first, last = _readme_python_lines()
    return rel == "README.md" and first <= line < last


DOCS = documents()
RUNNABLE = [p for p in DOCS if examples(p, covered_elsewhere)]


def test_no_example_is_a_bare_synopsis():
    """A shell block line starting with ``sparsemm `` must be a ``$ `` command."""
    bad = []
    for path in DOCS:
        for lang, body, _skip, line in blocks(path):
            if lang in SHELLS:
                for n, text in enumerate(body.splitlines(), 1):
                    if SYNOPSIS.match(text):  # not output such as "sparsemm run: ..."
                        bad.append(f"{path.relative_to(ROOT)}:{line + n}: {text[:70]}")
    assert not bad, "write these as '$ sparsemm ...' examples that run: " + "; ".join(bad)


def test_skips_are_few_and_say_why():
    """A skipped block names what a fresh machine lacks (a cluster, Chromium, a fuzz run's
    findings) in a sentence; almost every example runs."""
    runs = skips = 0
    for path in DOCS:
        for ex in examples(path):
            if ex.skip:
                skips += 1
                assert len(ex.skip.split()) >= 3, f"{path.relative_to(ROOT)}:{ex.line}: say why: {ex.skip!r}"
            else:
                runs += 1
    assert skips <= 10 and runs >= 4 * skips, (runs, skips)


def test_the_docs_have_examples():
    count = sum(1 for path in DOCS for ex in examples(path) if ex.kind == "shell")
    assert count >= 10


# Paths only a checkout has, and a pid that is nobody's: the runs below cannot catch a
# "1234" that happens to be a live process.
CHECKOUT_ONLY = re.compile(r"(?<![\w/.-])(?:tests|docs|src|bench)/|\b1234\b")


def test_no_example_reads_the_checkout():
    """Examples use bundled inputs: nothing a plain ``pip install`` lacks (tests/, docs/, src/)."""
    bad = []
    for path in DOCS:
        for ex in examples(path):
            if ex.skip:
                continue
            for line in (ex.code if ex.kind == "python" else "\n".join(ex.code)).splitlines():
                m = CHECKOUT_ONLY.search(line.split("#")[0])
                if m:
                    bad.append(f"{path.relative_to(ROOT)}:{ex.line}: {m.group(0)!r} in {line.strip()[:80]}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_every_example_runs(path):
    todo = examples(path, covered_elsewhere)
    failures, skipped = run_document(path, todo, Path(sys.executable).parent)
    assert not failures, "\n\n".join(failures)
    if skipped and len(skipped) == len(todo):
        pytest.skip("; ".join(skipped))
