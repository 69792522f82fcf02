"""Shrink an op script to a minimal one that still shows the same kind of difference.

Owns ``Shrinker``: delta debugging over the top-level ops, each fork child's ops and
each ``process_madvise`` range list, unwrapping forks, then simpler arguments (shorter
lengths, fewer flags, plainer prots, page forms for byte forms, no touch value, smaller
files and arena). A step is kept only when ``test(doc)`` still holds; the caller's test
decides what "the same kind" means. Documents are never modified in place.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterator

from sparsemm import abi

PAGE = abi.PAGE_SIZE
#: Plainer first: a prot is replaced only by one earlier in this list.
PROT_ORDER = ("rw", "r", "", "none", "rwx", "rx", "x", "w", "wx")
_ADDR_KEYS = (("at", "at_bytes"), ("len", "len_bytes"), ("new_len", "new_len_bytes"),
              ("to", "to_bytes"))


class _Stop(Exception):
    """The shrink budget (tests or time) is spent."""


class Shrinker:
    """Reduce a script document while ``test(doc)`` holds.

    ``pinned(op)`` marks ops never removed or changed (the maxmap prefix). The budget is
    ``max_tests`` calls of ``test`` and the monotonic ``deadline``; when it runs out, or
    on Ctrl-C, ``shrink`` returns the smallest script found so far and ``complete`` is
    false. Each pass costs O(n log n) tests for n items at best, O(n^2) at worst.
    """

    def __init__(self, test: Callable[[dict], bool], *, max_tests: int = 400,
                 deadline: float | None = None, pinned: Callable[[dict], bool] | None = None,
                 on_step: Callable[["Shrinker"], None] | None = None):
        self._test = test
        self.max_tests = max_tests
        self.deadline = deadline
        self.pinned = pinned or (lambda op: False)
        self.on_step = on_step
        self.tests = 0
        self.accepted = 0
        self.complete = True
        self.interrupted = False
        self.best: dict = {}
        self._seen: dict[str, bool] = {}

    # -- the test, with a cache and the budget --------------------------------

    def _try(self, doc: dict) -> bool:
        key = json.dumps(doc, sort_keys=True)
        if key in self._seen:
            return self._seen[key]
        if self.tests >= self.max_tests or (self.deadline is not None
                                             and time.monotonic() >= self.deadline):
            raise _Stop
        self.tests += 1
        ok = bool(self._test(doc))
        self._seen[key] = ok
        if ok:
            self.accepted += 1
            self.best = doc
        if self.on_step is not None:
            self.on_step(self)
        return ok

    def shrink(self, doc: dict, *, last_index: int | None = None) -> dict:
        """The smallest document found. ``last_index``: the top-level op the difference
        shows in (later ops cannot matter, so they go first, in one test)."""
        self.best = doc
        try:
            if last_index is not None and last_index + 1 < len(doc["ops"]):
                self._try({**doc, "ops": doc["ops"][: last_index + 1]})
            changed = True
            while changed:
                before = self.accepted
                for step in (self._shrink_op_lists, self._unwrap_forks, self._simplify_ops,
                             self._shrink_files, self._shrink_arena):
                    step()
                changed = self.accepted != before
        except _Stop:
            self.complete = False
        except KeyboardInterrupt:
            self.complete = False
            self.interrupted = True
        return self.best

    # -- lists of ops (top level, fork children) and of ranges ------------------

    def _lists(self, ops: list, path: tuple = ()) -> Iterator[tuple]:
        """Paths of every op list: () the top level, (i, j) ops[i].child[j].child ..."""
        yield path
        for i, op in enumerate(ops):
            if isinstance(op, dict) and isinstance(op.get("child"), list):
                yield from self._lists(op["child"], path + (i,))

    def _shrink_op_lists(self) -> None:
        for path in list(self._lists(self.best["ops"])):
            try:
                items = _get_list(self.best["ops"], path)
            except (IndexError, KeyError, TypeError):
                continue  # the list went away with an earlier removal
            self._remove_items(items, lambda new, p=path: {
                **self.best, "ops": _set_list(self.best["ops"], p, new)})

    def _remove_items(self, items: list, rebuild: Callable[[list], dict]) -> list:
        """Delta debugging by complements: drop chunks of unpinned items, halving the
        chunk size down to 1; ends 1-minimal (no single item can go)."""
        free = [i for i, it in enumerate(items) if not self.pinned(it)]
        chunk = max(1, len(free) // 2)
        while free:
            chunk = min(chunk, len(free))
            progress = False
            end = len(free)
            while end > 0:
                start = max(0, end - chunk)
                drop = set(free[start:end])
                cand = [it for i, it in enumerate(items) if i not in drop]
                if self._try(rebuild(cand)):
                    items = cand
                    progress = True
                    free = [i for i, it in enumerate(items) if not self.pinned(it)]
                end = start
            if not progress:
                if chunk == 1:
                    break
                chunk //= 2
        return items

    def _unwrap_forks(self) -> None:
        """Replace a fork by its child's ops, run in the parent (less nesting)."""
        for path in list(self._lists(self.best["ops"])):
            i = 0
            while True:
                try:
                    items = _get_list(self.best["ops"], path)
                except (IndexError, KeyError, TypeError):
                    break
                if i >= len(items):
                    break
                op = items[i]
                if isinstance(op, dict) and op.get("op") == "fork" and not self.pinned(op):
                    child = [c for c in op.get("child", [])]
                    cand = items[:i] + child + items[i + 1:]
                    if self._try({**self.best, "ops": _set_list(self.best["ops"], path, cand)}):
                        continue  # look at the same position again
                i += 1

    # -- op fields -------------------------------------------------------------

    def _simplify_ops(self) -> None:
        for path in list(self._lists(self.best["ops"])):
            i = 0
            while True:
                try:
                    items = _get_list(self.best["ops"], path)
                except (IndexError, KeyError, TypeError):
                    break
                if i >= len(items):
                    break
                if not self.pinned(items[i]):
                    self._simplify_one(path, i)
                i += 1

    def _simplify_one(self, path: tuple, i: int) -> None:
        progress = True
        while progress:
            progress = False
            op = _get_list(self.best["ops"], path)[i]
            if op.get("op") == "process_madvise" and isinstance(op.get("ranges"), list):
                ranges = op["ranges"]
                kept = self._remove_items(ranges, lambda new: self._with_op(
                    path, i, {**_get_list(self.best["ops"], path)[i], "ranges": new}))
                if len(kept) != len(ranges):
                    progress = True
                    continue
            for cand in simpler_ops(op, _page_starts(self.best["ops"])):
                if self._try(self._with_op(path, i, cand)):
                    progress = True
                    break

    def _with_op(self, path: tuple, i: int, op: dict) -> dict:
        items = list(_get_list(self.best["ops"], path))
        items[i] = op
        return {**self.best, "ops": _set_list(self.best["ops"], path, items)}

    # -- files and arena ----------------------------------------------------------

    def _shrink_files(self) -> None:
        files = self.best.get("files")
        if not isinstance(files, dict) or not files:
            return
        used = _files_used(self.best["ops"])
        unused = [name for name in files if name not in used]
        if unused:
            kept = {k: v for k, v in files.items() if k in used}
            cand = {**self.best, "files": kept} if kept else {
                k: v for k, v in self.best.items() if k != "files"}
            self._try(cand)
        if isinstance(self.best.get("files"), dict):
            for name, spec in list(self.best["files"].items()):
                if isinstance(spec, dict) and spec.get("disk"):  # a memfd, if it shows as well
                    self._try({**self.best, "files": {**self.best["files"], name: {
                        k: v for k, v in spec.items() if k != "disk"}}})
        for name in list(self.best.get("files", {})):
            pages = self.best["files"][name].get("pages", 0)
            for smaller in smaller_ints(pages, 0):
                spec = self.best["files"][name]  # keeps "disk"
                cand = {**self.best, "files": {**self.best["files"], name: {**spec, "pages": smaller}}}
                if self._try(cand):
                    break

    def _shrink_arena(self) -> None:
        pool = self.best.get("hugetlb_pages")
        if isinstance(pool, int) and pool > 0:  # fewer huge pages set aside, or none
            for smaller in smaller_ints(pool, 0):
                if self._try({k: v for k, v in self.best.items() if k != "hugetlb_pages"}
                             if smaller == 0 else {**self.best, "hugetlb_pages": smaller}):
                    break
        arena = self.best.get("arena_pages")
        if not isinstance(arena, int):
            return
        need = max(1, _extent(self.best["ops"]))
        if need < arena:
            self._try({**self.best, "arena_pages": need})
        if "outside_arena" in self.best:  # a declaration the parser may not need any more
            self._try({k: v for k, v in self.best.items() if k != "outside_arena"})


def simpler_ops(op: dict, starts: tuple[int, ...] = ()) -> Iterator[dict]:
    """Simpler variants of one op, plainest first: page forms for aligned byte forms,
    a lower start among ``starts`` (where other ops start, and 0), shorter lengths,
    plainer prots, one flag or seal fewer, no touch value, no offset."""
    for key, bkey in _ADDR_KEYS:
        v = op.get(bkey)
        if isinstance(v, int) and v >= 0 and v % PAGE == 0:
            yield _replace_key(op, bkey, key, v // PAGE)
    at = op.get("at")
    if isinstance(at, int) and op.get("op") not in ("fallocate_punch",):
        for lower in starts:
            if lower < at:
                yield {**op, "at": lower}
    for key in ("len", "new_len"):
        v = op.get(key)
        if isinstance(v, int) and v > 1:
            for c in smaller_ints(v, 1):
                yield {**op, key: c}
    for key in ("len_bytes", "new_len_bytes"):
        v = op.get(key)
        if isinstance(v, int) and v > PAGE and v % PAGE:
            yield {**op, key: PAGE + v % PAGE}  # same offset into the last page, one page
    prot = op.get("prot")
    if isinstance(prot, str) and prot in PROT_ORDER:
        for p in PROT_ORDER[: PROT_ORDER.index(prot)]:
            if p != "none":
                yield {**op, "prot": p}
    elif isinstance(prot, (list, int)) and not isinstance(prot, bool):
        yield {**op, "prot": _rwx_letters(prot)}  # a raw prot without its extra bits
        if isinstance(prot, list) and len(prot) > 1:
            for n in range(len(prot)):
                yield {**op, "prot": prot[:n] + prot[n + 1:]}
    for key in ("flags", "seals"):
        v = op.get(key)
        if isinstance(v, list) and len(v) > (1 if key == "seals" else 0):
            for n in range(len(v)):
                yield {**op, key: v[:n] + v[n + 1:]}
    if op.get("op") == "touch" and "value" in op:
        yield {k: v for k, v in op.items() if k != "value"}
    for key, plain in (("cpu", False), ("readonly", False), ("target", "self")):
        if key in op and op[key] != plain:  # the plainer form of each extension field
            yield {k: v for k, v in op.items() if k != key}
    if op.get("op") == "process_madvise" and isinstance(op.get("flags"), int):
        yield {k: v for k, v in op.items() if k != "flags"}
    for key in ("pgoff", "pgoff_bytes"):
        if op.get(key):
            yield {k: v for k, v in op.items() if k != key}
    if op.get("op") == "ftruncate":
        for key in ("pages", "bytes"):
            v = op.get(key)
            if isinstance(v, int) and v > 0:
                if key == "bytes" and v % PAGE == 0:
                    yield _replace_key(op, "bytes", "pages", v // PAGE)
                for c in smaller_ints(v, 0):
                    yield {**op, key: c}
    if op.get("op") == "process_madvise" and isinstance(op.get("ranges"), list):
        for n, r in enumerate(op["ranges"]):
            if isinstance(r, list) and len(r) == 2 and isinstance(r[1], int) and r[1] > 1:
                ranges = [list(x) for x in op["ranges"]]
                ranges[n] = [r[0], 1]
                yield {**op, "ranges": ranges}
    if "note" in op:
        yield {k: v for k, v in op.items() if k != "note"}


def _rwx_letters(prot) -> str:
    """The r/w/x part of a raw prot (a list of names or an int) as letters."""
    if isinstance(prot, list):
        return "".join(c for c in "rwx" if c in prot)
    return "".join(c for c, bit in (("r", abi.PROT_READ), ("w", abi.PROT_WRITE),
                                    ("x", abi.PROT_EXEC)) if prot & bit)


def smaller_ints(v: int, least: int) -> list[int]:
    """Candidates below ``v``, smallest first: ``least``, then v - v/2, v - v/4, ...,
    v - 1. The first that works is taken, so a length of n shrinks in O(log^2 n) tests."""
    out = [least] if least < v else []
    step = (v - least) // 2
    while step >= 1:
        c = v - step
        if least < c < v and c not in out:
            out.append(c)
        step //= 2
    if v - 1 > least and v - 1 not in out:
        out.append(v - 1)
    return out


def _page_starts(ops: list) -> tuple[int, ...]:
    """0 and every page-form ``at`` of an arena op, fork children included, ascending."""
    out = {0}
    for op in ops:
        if not isinstance(op, dict):
            continue
        if isinstance(op.get("at"), int) and op.get("op") != "fallocate_punch":
            out.add(op["at"])
        if isinstance(op.get("child"), list):
            out.update(_page_starts(op["child"]))
    return tuple(sorted(out))


def _replace_key(op: dict, old: str, new: str, value) -> dict:
    """``op`` with ``old`` replaced by ``new`` at the same place (stable JSON order)."""
    return {(new if k == old else k): (value if k == old else v) for k, v in op.items()}


def _get_list(ops: list, path: tuple) -> list:
    for i in path:
        ops = ops[i]["child"]
    return ops


def _set_list(ops: list, path: tuple, new: list) -> list:
    """A copy of ``ops`` with the list at ``path`` replaced (only the spine is copied)."""
    if not path:
        return list(new)
    i, rest = path[0], path[1:]
    out = list(ops)
    out[i] = {**ops[i], "child": _set_list(ops[i]["child"], rest, new)}
    return out


def _files_used(ops: list) -> set:
    used = set()
    for op in ops:
        if isinstance(op, dict):
            if isinstance(op.get("file"), str):
                used.add(op["file"])
            if isinstance(op.get("child"), list):
                used |= _files_used(op["child"])
    return used


_HPAGE_PAGES = 512  # a 2 MiB huge page, in pages


def _is_hugetlb(flags) -> bool:
    if not isinstance(flags, list):
        return False
    return any(f == "hugetlb" or (isinstance(f, int) and not isinstance(f, bool)
                                  and f & abi.MapFlag.HUGETLB) for f in flags)


def _pages_up(nbytes: int) -> int:
    return -(-nbytes // PAGE)


def _extent(ops: list) -> int:
    """Pages from the base that the ops name (at+len, to+new_len, ranges), at least."""
    top = 0
    for op in ops:
        if not isinstance(op, dict):
            continue
        if op.get("op") in ("ftruncate", "fallocate_punch", "seal"):
            continue  # file offsets, not arena addresses
        at = op.get("at", None)
        at = _pages_up(op["at_bytes"]) if at is None and isinstance(op.get("at_bytes"), int) else at
        length = op.get("len", None)
        if length is None and isinstance(op.get("len_bytes"), int):
            length = _pages_up(op["len_bytes"])
        if isinstance(at, int) and at >= 0:
            n = length if isinstance(length, int) and 0 <= length < 1 << 40 else 1
            if op.get("op") == "mmap" and _is_hugetlb(op.get("flags")):
                n = -(-max(n, 1) // _HPAGE_PAGES) * _HPAGE_PAGES  # the length rounds up to 2 MiB
            top = max(top, at + max(n, 1))
        nl = op.get("new_len", None)
        if nl is None and isinstance(op.get("new_len_bytes"), int):
            nl = _pages_up(op["new_len_bytes"])
        if isinstance(nl, int) and 0 <= nl < 1 << 40:
            to = op.get("to", None)
            if to is None and isinstance(op.get("to_bytes"), int):
                to = _pages_up(op["to_bytes"])
            start = to if isinstance(to, int) else at  # a fixed target, or growth in place
            if isinstance(start, int) and start >= 0:
                top = max(top, start + max(nl, 1))
        for r in op.get("ranges", []) if isinstance(op.get("ranges"), list) else []:
            if isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r):
                top = max(top, r[0] + max(r[1], 1))
        if isinstance(op.get("child"), list):
            top = max(top, _extent(op["child"]))
    return top
