"""The conformance corpus: op scripts stored with the records the kernel gave.

Owns the corpus file layout (a script document plus an ``expect`` list) and
``sparsemm record``: re-run scripts on the kernel, write or check the records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.script import load_script

#: Key order of a corpus file, for stable diffs.
KEY_ORDER = ("note", "tags", "variant", "outside_arena", "arena_pages", "files", "ops", "expect")


def corpus_files(paths) -> list[Path]:
    """Every ``*.json`` under the given files and directories, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.json")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such script or directory: {p}")
    return out


def dump_corpus_doc(doc: dict) -> str:
    """A script document as JSON with one op and one record per line."""
    lines = ["{"]
    keys = [k for k in KEY_ORDER if k in doc] + [k for k in doc if k not in KEY_ORDER]
    for n, key in enumerate(keys):
        value = doc[key]
        comma = "," if n < len(keys) - 1 else ""
        if key in ("ops", "expect") and isinstance(value, list) and value:
            lines.append(f'  "{key}": [')
            for m, item in enumerate(value):
                lines.append("    " + json.dumps(item) + ("," if m < len(value) - 1 else ""))
            lines.append("  ]" + comma)
        else:
            lines.append(f'  "{key}": {json.dumps(value)}{comma}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def record_files(paths, *, check: bool = False, progress: bool = True) -> list[str]:
    """Run each corpus script on the kernel; write its ``expect`` (or only compare).

    Returns the paths whose stored records differ from the kernel's.
    """
    changed: list[str] = []
    files = corpus_files(paths)
    for n, path in enumerate(files, 1):
        script = load_script(str(path))
        records = run_kernel(script)
        if script.expect != records:
            changed.append(str(path))
            if not check:
                doc = dict(script.doc)
                doc["expect"] = records
                path.write_text(dump_corpus_doc(doc), encoding="utf-8")
        if progress:
            state = "same" if script.expect == records else ("DIFFERS" if check else "recorded")
            print(f"[{n}/{len(files)}] {path}: {state}", file=sys.stderr)
    return changed
