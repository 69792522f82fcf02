"""The conformance corpus still describes this kernel: every script re-run, records compared.

A failure here means the running kernel behaves differently from the one the
corpus was recorded on: look at it with ``sparsemm run FILE --format text``,
and re-record with ``make record`` only once the change is understood.
"""

from __future__ import annotations

import pytest

from sparsemm.opscript.compare import first_difference
from sparsemm.opscript.corpus import corpus_files
from sparsemm.opscript.dispatch import BackendUnavailable
from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.script import load_script

from conftest import CORPUS, ROOT, needs_guards

FILES = corpus_files([CORPUS]) if CORPUS.is_dir() else []


def _id(path):
    return str(path.relative_to(CORPUS))


@needs_guards
@pytest.mark.kernel
@pytest.mark.parametrize("path", FILES, ids=_id)
def test_kernel_gives_the_recorded_records(path):
    script = load_script(str(path))
    assert script.note, f"{path.name}: every corpus script says what it pins in 'note'"
    assert script.expect is not None, f"{path.name} has no records: run `sparsemm record {path}`"
    try:
        records = run_kernel(script)
    except BackendUnavailable as exc:  # e.g. no huge pages can be set aside here
        pytest.skip(str(exc))
    diff = first_difference(records, script.expect)
    assert diff is None, f"{path.relative_to(ROOT)}: kernel now gives {diff[1]}, recorded {diff[2]} at {diff[0]}"


def test_corpus_has_the_promised_coverage():
    groups = {}
    for path in FILES:
        groups.setdefault(path.parent.name, []).append(path)
    assert len(groups.get("merge", [])) + len(groups.get("errors", [])) >= 40
    selftests = {p.stem.rsplit("_", 1)[0] for p in groups.get("guard_regions", [])}
    readme = (CORPUS / "README.md").read_text()
    # Every selftest is covered by a script or listed in the README with its reason.
    for name in ("basic", "multi_vma", "process_madvise", "munmap", "mprotect", "split_merge",
                 "dontneed", "mlock", "mremap_move", "mremap_expand", "mremap_shrink", "fork",
                 "fork_cow", "fork_wipeonfork", "lazyfree", "populate", "cold_pageout", "uffd",
                 "madvise_sequential", "map_private", "readonly_file", "fault_around", "truncation",
                 "hole_punch", "memfd_write_seal", "anon_zeropage", "pagemap", "pagemap_scan",
                 "collapse", "smaps"):
        assert name in selftests or f"`{name}`" in readme, f"selftest {name} neither scripted nor listed"
