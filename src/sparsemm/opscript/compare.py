"""``sparsemm compare``: run a script on both backends and show the first difference.

Owns ``first_difference`` (the one way to find where two record lists part: the tests
use it too) and the side-by-side report: the differing record, and for snapshots the
model's and the kernel's VMAs and page rows one above the other.
"""

from __future__ import annotations

from sparsemm.opscript import records as rec
from sparsemm.opscript.runner import run_script
from sparsemm.opscript.script import Script


def first_difference(got: list[dict], want: list[dict], path: str = ""):
    """``(path, got_record, want_record)`` of the first differing record of two record
    lists (a missing record is None), or ``None`` when they are equal. O(records).

    Descends into fork children; ``path`` names the record (``op 3 > child op 1``).
    """
    for n in range(max(len(got), len(want))):
        m = got[n] if n < len(got) else None
        k = want[n] if n < len(want) else None
        here = f"{path}op {n}"
        if m == k:
            continue
        if (m and k and m.get("op") == "fork" == k.get("op") and m.get("ret") == k.get("ret")
                and isinstance(m.get("value"), list) and isinstance(k.get("value"), list)):
            inner = first_difference(m["value"], k["value"], here + " > child ")
            if inner:
                return inner
        return here, m, k
    return None


def _side_by_side(m: dict | None, k: dict | None) -> list[str]:
    lines = []
    if m and k and m.get("op") == "snapshot" and "value" in m and "value" in k:
        lines.append(f"  model  pages: {rec.draw_pages(m['value'])}")
        lines.append(f"  kernel pages: {rec.draw_pages(k['value'])}")
        mv = [tuple(v) for v in m["value"]["vmas"]]
        kv = [tuple(v) for v in k["value"]["vmas"]]
        width = max((len(str(list(v))) for v in mv), default=10)
        lines.append(f"  {'model VMAs':<{width}}   kernel VMAs")
        for n in range(max(len(mv), len(kv))):
            a = str(list(mv[n])) if n < len(mv) else ""
            b = str(list(kv[n])) if n < len(kv) else ""
            mark = "   " if a == b else " ≠ "
            lines.append(f"  {a:<{width}}{mark}{b}")
    else:
        lines.append(f"  model : {m}")
        lines.append(f"  kernel: {k}")
    return lines


def describe_difference(got: list[dict], want: list[dict], got_name: str = "model",
                        want_name: str = "kernel", limit: int = 2000) -> str:
    """One paragraph naming the first difference (``first_difference``): where, and both
    records as JSON (each cut at ``limit`` characters); "" when the lists are equal."""
    import json

    diff = first_difference(got, want)
    if diff is None:
        return ""
    where, a, b = diff
    width = max(len(got_name), len(want_name))
    return (f"first difference at {where}:\n{got_name:<{width}}: {json.dumps(a)[:limit]}\n"
            f"{want_name:<{width}}: {json.dumps(b)[:limit]}")


def compare_script(script: Script, *, design: str | None = None) -> tuple[bool, str]:
    """Run on both backends (the model under ``design``, default the kernel's own);
    ``(same, report)``."""
    kernel = run_script(script, "kernel")
    model = run_script(script, "model", design=design)
    return difference_report(model, kernel)


def difference_report(model: list[dict], kernel: list[dict]) -> tuple[bool, str]:
    """``(same, report)`` for two record lists: the first difference side by side."""
    diff = first_difference(model, kernel)
    if diff is None:
        return True, f"same: {len(kernel)} records agree"
    where, m, k = diff
    return False, "\n".join([f"first difference at {where}:"] + _side_by_side(m, k))
