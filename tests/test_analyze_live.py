"""sparsemm analyze on a live process: a Python child with 1,000 threads.

glibc before 2.42 (2.36 here) makes each thread stack with mmap(PROT_NONE) + mprotect, so
every stack has a one-page ``---p`` guard VMA below it. The test analyzes the child by pid
(smaps, touch=rss), then builds its layout on the kernel under the vma and pte designs and
checks that the measured VMA counts are exactly the predicted ones.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sparsemm.analyze.maps import load
from sparsemm.analyze.report import analyze

from conftest import needs_guards

THREADS = 1000

CHILD = textwrap.dedent(f"""
    import sys, threading
    threading.stack_size(256 * 1024)
    done = threading.Event()
    threads = [threading.Thread(target=done.wait, daemon=True) for _ in range({THREADS})]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.readline()  # the test's newline (or EOF) ends the child
""")


@pytest.fixture(scope="module")
def live_report():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        entries = load(child.pid)  # smaps of the live process
        report = analyze(entries, source=f"pid {child.pid}")
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    return report


def test_live_has_a_guard_per_stack(live_report):
    assert live_report.guards >= THREADS
    assert live_report.vmas > 2 * THREADS
    assert live_report.layout["touch"] == "rss"


def test_live_rebuild_matches(live_report):
    vma, pte = live_report.designs["vma"], live_report.designs["pte"]
    assert vma.vmas == live_report.vmas
    assert pte.vmas == live_report.formula["pte"]
    assert live_report.vmas - pte.vmas >= THREADS  # at least one VMA saved per guard


@needs_guards
@pytest.mark.kernel
@pytest.mark.parametrize("design", ["vma", "pte"])
def test_live_reproduce_exact(live_report, design):
    from sparsemm.analyze.reproduce import reproduce

    r = reproduce(live_report.layout_obj, design, repeat=1)
    assert r.measured.failed_ops == 0
    assert r.exact_vmas, r.rows
    expected = live_report.vmas if design == "vma" else live_report.designs["pte"].vmas
    assert r.measured.values["arena_vmas"] == expected
