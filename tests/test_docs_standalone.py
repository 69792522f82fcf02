"""The repository stands alone: what the code, tests and docs cite is in the repository.

Every guard-region rule ID (``R-A1`` ...) cited anywhere is stated in docs/rules.md, every
corpus script or test docs/rules.md names as its check exists, no text points at documents
outside the repository, and docs/opscript.md spells every op-script name ``sparsemm.abi`` knows.
"""

from __future__ import annotations

import re

from conftest import ROOT

from sparsemm import abi

RULE = re.compile(r"\bR-([A-G])(\d+)(?:\.\.R-([A-G])(\d+))?")
SCANNED = ("src", "tests", "docs", "bench")
TOP = ("README.md", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".json", ".c", ".toml", ".txt", ".js", ".css", ""}
# Documents of the project's private design notes, never shipped: nothing may cite them.
OUTSIDE = re.compile(r"costs-and-workloads|OPSCRIPT\.md|guard-regions-semantics|ARCHITECTURE\.md"
                     r"|\.\./shared|/work/shared|§\s*\d")


def texts():
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if (path.is_file() and path.suffix in TEXT_SUFFIXES and ".venv" not in path.parts
                    and "__pycache__" not in path.parts and path.name != "test_docs_standalone.py"):
                yield path
    for name in TOP:
        yield ROOT / name


def defined_rules() -> dict[str, str]:
    """rule ID -> its section text in docs/rules.md."""
    text = (ROOT / "docs" / "rules.md").read_text()
    parts = re.split(r"^### (R-[A-G]\d+):", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_cited_rule_is_stated_in_docs_rules():
    rules = defined_rules()
    missing = []
    for path in texts():
        for m in RULE.finditer(path.read_text(errors="replace")):
            group, first = m.group(1), int(m.group(2))
            last = int(m.group(4)) if m.group(4) else first
            for n in range(first, last + 1):
                if f"R-{group}{n}" not in rules and (m.group(4) is None or n in (first, last)):
                    missing.append(f"{path.relative_to(ROOT)}: R-{group}{n}")
    assert not missing, missing


def test_every_rule_names_a_check_that_exists():
    rules = defined_rules()
    assert len(rules) >= 30
    for rule, body in rules.items():
        checked = re.search(r"Checked by:(.*?)(?:\n\n|\Z)", body, re.S)
        if checked is None:
            assert "(Not" in body, f"{rule} names no check and does not say why"
            continue
        names = re.findall(r"`([^`]+)`", checked.group(1))
        assert names, rule
        for name in names:
            if name.startswith("tests/"):
                assert (ROOT / name).is_file(), f"{rule}: {name}"
            elif name.endswith(".json"):
                assert (ROOT / "tests" / "conformance" / name).is_file(), f"{rule}: {name}"
            elif name.endswith("_*"):
                stem = name[:-1]
                assert list((ROOT / "tests" / "conformance").glob(stem + "*.json")), f"{rule}: {name}"


def test_nothing_points_outside_the_repository():
    bad = []
    for path in texts():
        for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()[:100]}")
    assert not bad, bad


def test_docs_opscript_spells_every_name_abi_knows():
    text = (ROOT / "docs" / "opscript.md").read_text()
    for name in (*abi.MAP_BY_NAME, *abi.MADV_BY_NAME, *abi.MREMAP_BY_NAME):
        assert f"`{name}`" in text, name
