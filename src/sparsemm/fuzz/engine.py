"""The fuzz loop: generate a script, run it on both backends, and on a difference
confirm it on the kernel, deduplicate it, shrink it and write it as a finding.

Owns ``Fuzzer``, its ``Stats`` and ``Backends`` (the two runners, and the documented
test hooks ``SPARSEMM_FUZZ_MODEL`` / ``SPARSEMM_FUZZ_KERNEL`` that replace them).
Prints nothing: progress goes to the ``on_progress`` callback.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sparsemm import abi
from sparsemm.fuzz import findings
from sparsemm.fuzz.difference import MODEL_ERROR, Difference, classify, kernel_error, model_error
from sparsemm.fuzz.generate import (DEFAULT_PROFILES, MAXMAP_PREFIX_NOTE, PROFILES, count_ops,
                                    generate_script, script_rng)
from sparsemm.fuzz.shrink import Shrinker
from sparsemm.fuzz.suppress import Rule, find_rule
from sparsemm.opscript.dispatch import BackendUnavailable
from sparsemm.opscript.script import Script, ScriptError, parse_script

RunFn = Callable[[Script], list]
#: The model checks its invariants after every op (``AddressSpace.check()``) in
#: scripts up to this arena; the check is O(VMAs), too slow for the maxmap profile.
CHECK_ARENA_PAGES = 1 << 16
#: Kernel runs that must show a difference again before it counts (besides the first).
CONFIRM_RUNS = 2
#: Test runs and seconds one shrink may spend (it also stops at the run's deadline).
SHRINK_TESTS = 400
SHRINK_SECONDS = 300.0
MODEL_HOOK = "SPARSEMM_FUZZ_MODEL"
KERNEL_HOOK = "SPARSEMM_FUZZ_KERNEL"


class FuzzError(ValueError):
    """A bad fuzz setting (hook, profile, option): one line for the user."""


def _model(script: Script) -> list:
    from sparsemm.opscript.model_backend import run_model

    return run_model(script, check=script.arena_pages <= CHECK_ARENA_PAGES)


def _kernel(script: Script) -> list:
    from sparsemm.opscript.kernel import run_kernel

    return run_kernel(script)


@dataclass(slots=True, frozen=True)
class Backends:
    """``model``/``kernel``: ``fn(script) -> records``. A model that raises anything but
    a syscall's ``OSError`` is a finding; so is a kernel backend that fails."""

    model: RunFn = _model
    kernel: RunFn = _kernel
    hooked: tuple[str, ...] = ()  # which sides a test hook replaced


def _load_hook(spec: str, var: str) -> RunFn:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise FuzzError(f"{var}={spec!r}: expected MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise FuzzError(f"{var}={spec!r}: cannot load it: {exc}") from None
    if not callable(fn):
        raise FuzzError(f"{var}={spec!r}: not callable")
    return fn


def backends_from_env(env=None) -> Backends:
    """The real backends, or the test hooks named by ``SPARSEMM_FUZZ_MODEL`` and
    ``SPARSEMM_FUZZ_KERNEL`` (``module:function``, each ``fn(script) -> records``)."""
    env = os.environ if env is None else env
    kw: dict = {}
    hooked = []
    for var, key in ((MODEL_HOOK, "model"), (KERNEL_HOOK, "kernel")):
        if env.get(var):
            kw[key] = _load_hook(env[var], var)
            hooked.append(key)
    return Backends(**kw, hooked=tuple(hooked))


@dataclass(slots=True)
class Run:
    """One script on both sides: records (or error texts) and the first difference."""

    model: list | None = None
    kernel: list | None = None
    model_error: str | None = None
    kernel_error: str | None = None
    diff: Difference | None = None


@dataclass(slots=True)
class Stats:
    seed: str
    profiles: tuple[str, ...]
    scripts: int = 0
    ops: int = 0
    differences: int = 0  # scripts whose records differed (all of them)
    duplicates: int = 0  # ... of a finding already made (this run or in the directory)
    suppressed: Counter = field(default_factory=Counter)  # divergence -> differences
    flaky: Counter = field(default_factory=Counter)  # signature -> unconfirmed differences
    findings: list = field(default_factory=list)  # Finding, in the order found
    previous: Counter = field(default_factory=Counter)  # signature -> hits of older findings
    refused: int = 0  # generated scripts the parser refused (a generator bug)
    refused_example: str = ""
    skipped: dict = field(default_factory=dict)  # profile -> why it cannot run here
    unavailable: int = 0  # scripts the kernel backend could not run here (huge pages)
    unavailable_example: str = ""
    kernel_runs: int = 0
    shrink_runs: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    interrupted: bool = False
    activity: str = ""

    def summary(self) -> dict:
        return {
            "seed": self.seed, "profiles": list(self.profiles), "scripts": self.scripts,
            "ops": self.ops, "elapsed_s": round(self.elapsed, 1), "kernel_runs": self.kernel_runs,
            "differences": self.differences, "duplicates": self.duplicates,
            "suppressed": dict(self.suppressed), "flaky": dict(self.flaky),
            "interrupted": self.interrupted, "refused": self.refused,
            "skipped_profiles": dict(self.skipped), "unavailable": self.unavailable,
            "findings": [{"dir": str(f.path) if f.path else None, "signature": f.signature,
                          "hits": f.hits, "ops": count_ops(f.script.get("ops", [])),
                          "shrunk": f.shrink.get("complete", True), "profile": f.profile}
                         for f in self.findings],
            "previous_findings_seen": dict(self.previous),
        }


class Fuzzer:
    """Generates and checks scripts until ``time_limit`` seconds or ``examples`` scripts.

    Script ``i`` is drawn by profile ``profiles[i % len(profiles)]`` from
    ``script_rng(seed, i)``, so a run is reproducible from its seed. Findings go to
    ``findings_dir`` (created on the first one); signatures already there count as
    duplicates. ``run()`` returns the stats; Ctrl-C ends it early with what it has.

    A profile whose scripts reserve huge pages (``Profile.hugetlb``) is tried once
    before the run on the real kernel backend; where the pages cannot be had (not
    root, memory too fragmented) it is left out and ``stats.skipped`` says why. A
    script the kernel backend cannot run later for the same reason is counted in
    ``stats.unavailable``, never as a difference.
    """

    def __init__(self, *, seed: int | str, profiles=DEFAULT_PROFILES, time_limit: float | None = None,
                 examples: int | None = None, max_ops: int | None = None,
                 findings_dir: str | Path = "fuzz-findings", rules: list[Rule] | None = None,
                 backends: Backends | None = None,
                 on_progress: Callable[[Stats], None] | None = None,
                 max_map_count: int | None = None, confirm_runs: int = CONFIRM_RUNS,
                 shrink_tests: int = SHRINK_TESTS, shrink_seconds: float = SHRINK_SECONDS):
        profiles = tuple(profiles)
        for p in profiles:
            if p not in PROFILES:
                raise FuzzError(f"unknown profile {p!r} (known: {', '.join(PROFILES)})")
        if not profiles:
            raise FuzzError("no profile to run")
        if time_limit is None and examples is None:
            raise FuzzError("give a time limit or a number of examples")
        self.seed = str(seed)
        self.profiles = profiles
        self.time_limit = time_limit
        self.examples = examples
        self.max_ops = max_ops
        self.dir = Path(findings_dir)
        self.rules = list(rules or [])
        self.backends = backends or Backends()
        self.on_progress = on_progress
        self.max_map_count = max_map_count or _max_map_count()
        self.confirm_runs = confirm_runs
        self.shrink_tests = shrink_tests
        self.shrink_seconds = shrink_seconds
        skipped = {} if "kernel" in self.backends.hooked else {
            p: why for p in dict.fromkeys(profiles)
            if (why := hugetlb_unavailable(PROFILES[p].hugetlb)) is not None}
        if skipped and all(p in skipped for p in profiles):
            raise FuzzError("no profile to run: " + "; ".join(
                f"profile {p} skipped: {why}" for p, why in skipped.items()))
        self.profiles = profiles = tuple(p for p in profiles if p not in skipped)
        self.stats = Stats(self.seed, profiles)
        self.stats.skipped = skipped
        self.deadline = None if time_limit is None else self.stats.started + time_limit
        self._known: dict[str, object] = dict(findings.existing(self.dir))  # sig -> Finding | Path

    # -- running one script ---------------------------------------------------------

    def evaluate(self, doc: dict, *, model_only: bool = False) -> Run:
        """Run ``doc`` on both sides; with ``model_only`` (shrinking a model error)
        stop after the model."""
        script = parse_script(doc)
        run = Run()
        try:
            run.model = self.backends.model(script)
        except Exception as exc:  # noqa: BLE001 - any model failure is a finding
            index, name = self._locate_model_error(doc)
            run.diff = model_error(exc, name, index)
            run.model_error = run.diff.model
        if model_only:
            return run
        try:
            self.stats.kernel_runs += 1
            run.kernel = self.backends.kernel(script)
        except BackendUnavailable:
            raise  # the machine cannot run it (huge pages): not a difference
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            kdiff = kernel_error(exc)
            run.kernel_error = kdiff.kernel
            run.diff = run.diff or kdiff
        if run.diff is None and run.model is not None and run.kernel is not None:
            run.diff = classify(run.model, run.kernel)
        return run

    def _locate_model_error(self, doc: dict) -> tuple[int | None, str]:
        """The first top-level op whose prefix makes the model raise (binary search)."""
        ops = doc["ops"]

        def raises(k: int) -> bool:
            try:
                self.backends.model(parse_script({**doc, "ops": ops[:k]}))
            except ScriptError:
                return False
            except Exception:  # noqa: BLE001
                return True
            return False

        lo, hi = 1, len(ops)
        if not ops or not raises(hi):
            return None, ""
        while lo < hi:
            mid = (lo + hi) // 2
            if raises(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo - 1, str(ops[lo - 1].get("op", "?"))

    # -- the loop ---------------------------------------------------------------------

    def _done(self) -> bool:
        if self.examples is not None and self.stats.scripts >= self.examples:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _progress(self, activity: str | None = None) -> None:
        if activity is not None:
            self.stats.activity = activity
        self.stats.elapsed = time.monotonic() - self.stats.started
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def run(self) -> Stats:
        try:
            while not self._done():
                i = self.stats.scripts
                profile = self.profiles[i % len(self.profiles)]
                doc = generate_script(profile, script_rng(self.seed, i), max_ops=self.max_ops,
                                      max_map_count=self.max_map_count)
                self._progress(f"{profile} script {i}")
                try:
                    run = self.evaluate(doc)
                except ScriptError as exc:  # the generator drew what the parser refuses
                    self.stats.scripts += 1
                    self.stats.refused += 1
                    self.stats.refused_example = self.stats.refused_example or f"{profile} #{i}: {exc}"
                    continue
                except BackendUnavailable as exc:  # e.g. no huge pages free right now
                    self.stats.scripts += 1
                    self.stats.unavailable += 1
                    self.stats.unavailable_example = (self.stats.unavailable_example
                                                      or f"{profile} #{i}: {exc}")
                    continue
                self.stats.scripts += 1
                self.stats.ops += count_ops(doc["ops"])
                if run.diff is not None:
                    self._handle(doc, profile, i, run)
                self._progress()
        except KeyboardInterrupt:
            self.stats.interrupted = True
        finally:
            self._finish()
        return self.stats

    def _finish(self) -> None:
        self.stats.elapsed = time.monotonic() - self.stats.started
        for f in self.stats.findings:
            findings.save_metadata(f)
        for sig, hits in self.stats.previous.items():  # add this run's hits to older findings
            path = self._known.get(sig)
            if isinstance(path, Path):
                _add_hits(path / "finding.json", hits)
        self.stats.activity = "done"

    def _handle(self, doc: dict, profile: str, index: int, run: Run) -> None:
        self.stats.differences += 1
        sig = run.diff.signature
        rule = find_rule(self.rules, sig, profile, doc["ops"])
        if rule is not None:
            self.stats.suppressed[rule.divergence] += 1
            return
        known = self._known.get(sig)
        if known is not None:
            self.stats.duplicates += 1
            if isinstance(known, findings.Finding):
                known.hits += 1
                findings.add_example(known.path, doc)
            else:
                self.stats.previous[sig] += 1
                findings.add_example(known, doc)
            return
        confirmed = self._confirm(doc, run)
        if confirmed is None:
            self.stats.flaky[sig] += 1
            return
        minimal, shrinker, last = self._shrink(doc, run.diff)
        if minimal is doc:
            final = run
        elif shrinker.interrupted:
            final = last  # the records of the accepted step: no new run after Ctrl-C
        else:
            final = self.evaluate(minimal)  # once more: the minimal script must show it too
            if final.diff is None or final.diff.signature != sig:
                minimal, final = doc, run  # it did not: keep the script as generated
                shrinker.complete = False
        f = findings.Finding(
            difference=final.diff, profile=profile, seed=self.seed, index=index,
            script=minimal, original=doc, model=final.model, kernel=final.kernel,
            model_error=final.model_error, kernel_error=final.kernel_error,
            confirmed=confirmed,
            shrink={"tests": shrinker.tests, "complete": shrinker.complete,
                    "interrupted": shrinker.interrupted})
        findings.write(self.dir, f)
        self.stats.findings.append(f)
        self._known[sig] = f
        if shrinker.interrupted:
            raise KeyboardInterrupt

    def minimize(self, doc: dict) -> tuple[dict, Run, Shrinker | None]:
        """Shrink one script that shows a difference (no confirmation, no finding):
        ``(minimal script, its run, the shrinker)``; ``(doc, run, None)`` when the two
        sides agree. For tests that found a difference and want it small."""
        run = self.evaluate(doc)
        if run.diff is None:
            return doc, run, None
        minimal, shrinker, last = self._shrink(doc, run.diff)
        return minimal, (run if minimal is doc else last), shrinker

    def _confirm(self, doc: dict, run: Run) -> str | None:
        """``"n/n"`` when every extra kernel run shows the same difference, else ``None``.
        A model error needs no confirmation: the model is deterministic."""
        sig = run.diff.signature
        if run.diff.field == MODEL_ERROR:
            return "model"
        for n in range(self.confirm_runs):
            self._progress(f"confirming {sig} ({n + 2}/{self.confirm_runs + 1})")
            try:
                again = self.evaluate(doc)
            except BackendUnavailable:
                return None
            if again.diff is None or again.diff.signature != sig:
                return None
        return f"{self.confirm_runs + 1}/{self.confirm_runs + 1}"

    def _shrink(self, doc: dict, diff: Difference) -> tuple[dict, Shrinker, Run]:
        """``(minimal script, the shrinker, the run of its last accepted step)``."""
        sig = diff.signature
        ops0 = count_ops(doc["ops"])
        last: list[Run] = [Run(diff=diff)]

        def test(candidate: dict) -> bool:
            try:
                got = self.evaluate(candidate, model_only=diff.field == MODEL_ERROR)
            except (ScriptError, BackendUnavailable):
                return False
            if got.diff is not None and got.diff.signature == sig:
                last[0] = got
                return True
            return False

        def step(s: Shrinker) -> None:
            self.stats.shrink_runs += 1
            self._progress(f"shrinking {sig}: {count_ops(s.best['ops'])}/{ops0} ops, "
                           f"{s.tests} runs")

        deadline = time.monotonic() + self.shrink_seconds
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        shrinker = Shrinker(test, max_tests=self.shrink_tests, deadline=deadline,
                            pinned=_is_pinned, on_step=step)
        self._progress(f"shrinking {sig}")
        minimal = shrinker.shrink(doc, last_index=diff.index)
        return minimal, shrinker, last[0]


@dataclass(slots=True)
class Recheck:
    """One finding run again: its directory, the signature it was written with, and the
    run now (``run.diff is None``: model and kernel agree on it now)."""

    path: Path
    signature: str
    run: Run

    @property
    def state(self) -> str:
        if self.run.diff is None:
            return "agrees"
        return "differs" if self.run.diff.signature == self.signature else "changed"


def recheck(directory: str | Path, backends: Backends | None = None,
            on_each: Callable[[Recheck], None] | None = None) -> list[Recheck]:
    """Run every finding's ``script.json`` under ``directory`` on both sides again
    (after a model fix, or on a new kernel). Findings in path order."""
    fz = Fuzzer(seed=0, examples=0, findings_dir="/nonexistent", backends=backends)
    out = []
    for meta in sorted(Path(directory).glob("*/finding.json")):
        try:
            signature = json.loads(meta.read_text(encoding="utf-8"))["signature"]
            doc = json.loads((meta.parent / "script.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FuzzError(f"{meta.parent}: not a finding ({exc})") from None
        try:
            run = fz.evaluate(doc)
        except (ScriptError, BackendUnavailable) as exc:
            raise FuzzError(f"{meta.parent}/script.json: {exc}") from None
        out.append(Recheck(meta.parent, signature, run))
        if on_each is not None:
            on_each(out[-1])
    return out


def hugetlb_unavailable(pages: int) -> str | None:
    """Why the kernel backend cannot have ``pages`` free 2 MiB huge pages here (not
    root, memory too fragmented), or ``None`` when it can (or none are needed). Tries
    it: raises ``vm.nr_hugepages`` and puts it back. O(1) syscalls."""
    if pages <= 0:
        return None
    from sparsemm.opscript.kernel import hugetlb_pool

    try:
        with hugetlb_pool(pages):
            pass
    except BackendUnavailable as exc:
        return str(exc)
    return None


def _is_pinned(op: dict) -> bool:
    note = op.get("note") if isinstance(op, dict) else None
    return isinstance(note, str) and note.startswith(MAXMAP_PREFIX_NOTE)


def _add_hits(path: Path, hits: int) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["hits"] = int(doc.get("hits", 0)) + hits
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except (OSError, ValueError, TypeError):
        pass  # an older finding we cannot update keeps its count


def _max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return abi.DEFAULT_MAX_MAP_COUNT
