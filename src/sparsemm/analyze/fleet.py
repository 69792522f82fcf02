"""Many files on local processes or a Dask cluster: ``sparsemm analyze DIR|GLOB|TARBALL``.

Owns the per-file function every mode runs (``analyze_file``: ``report.analyze_source`` on
the file's bytes, then the fleet table's rows), the task around a batch of files, the
engine (``dask.distributed``: a ``LocalCluster`` of worker processes, or a scheduler given
by address), the checks before a run (workers present, package versions, the same
sparsemm code) and the bounded, ordered submission loop. Workers never read the client's
files: each task carries its files' bytes. Inputs are ``analyze.fleet_inputs``; rows and
the summary are ``analyze.fleet_table``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sparsemm.analyze.fleet_inputs import Item
from sparsemm.analyze.fleet_table import Row, error_row, report_rows
from sparsemm.analyze.guards import GuardPolicy

__all__ = ["FleetOptions", "FleetError", "BatchResult", "RunStats", "analyze_file", "analyze_batch",
           "code_digest", "local_client", "remote_client", "run_fleet", "batches", "STAGES",
           "DEFAULT_BATCH_FILES", "DEFAULT_BATCH_BYTES", "DEFAULT_CONNECT_TIMEOUT"]

#: Files per task: enough to amortise the scheduler's per-task cost over small maps (one
#: file per task took 2.4x the wall time of 16, bench/results_fleet.md), few enough to
#: balance the end of a run.
DEFAULT_BATCH_FILES = 16
#: A batch also closes at this many bytes of input.
DEFAULT_BATCH_BYTES = 16 << 20
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Where a worker's time goes, by the stage ``analyze`` reports (``on_stage``).
STAGES = ("parse", "rebuild", "model", "other")
_STAGE_OF = {"reading": "parse", "finding": "rebuild", "rebuilding": "rebuild", "parsing": "model",
             "running": "model"}
#: Packages whose versions must match between the client, the scheduler and the workers:
#: the ones ``distributed`` requires to match (Python by major.minor: the pickle format).
#: sparsemm itself is checked by ``code_digest``.
_MUST_MATCH = ("python", "dask", "distributed", "msgpack", "cloudpickle", "tornado", "toolz")


class FleetError(RuntimeError):
    """The run cannot go on (no scheduler, a version mismatch, the cluster lost): one line."""


@dataclass(slots=True)
class FleetOptions:
    """What every file is analyzed with (the single-file options)."""

    policy: GuardPolicy = field(default_factory=GuardPolicy)
    touch: str = "auto"


@dataclass(slots=True)
class BatchResult:
    """What a task returns: the rows of its files in order, and where its time went
    (wall seconds by ``STAGES``; ``busy``: the whole task's wall time on the worker,
    ``cpu``: its thread's CPU time, less than ``busy`` when the cores are shared)."""

    rows: list[Row]
    files: int
    seconds: dict[str, float]
    busy: float
    cpu: float
    worker: str


def analyze_file(source: str, data: bytes | None, error: str | None, options: FleetOptions,
                 clock: dict[str, float] | None = None) -> list[Row]:
    """The per-file function of every mode: the rows of one file. ``data`` is its content
    (or None, and ``error`` says why it could not be read). A file that fails is one
    error row; nothing raises. ``clock``, if given, accumulates seconds by ``STAGES``."""
    from sparsemm.analyze.report import analyze_source

    if data is None:
        return [error_row(source, error or "could not be read")]
    stage, t = "other", time.perf_counter()

    def on_stage(text: str) -> None:
        nonlocal stage, t
        now = time.perf_counter()
        if clock is not None:
            clock[stage] = clock.get(stage, 0.0) + now - t
        stage, t = _STAGE_OF.get(text.split(" ", 1)[0], "other"), now

    try:
        # workers=1: the designs run one after another here; the engine already uses every core.
        report = analyze_source(source, options.policy, options.touch, data=data, on_stage=on_stage, workers=1)
        rows = report_rows(source, report)
    except Exception as exc:  # noqa: BLE001 - any failure of one file is its row, the others go on
        rows = [error_row(source, " ".join(str(exc).split()) or type(exc).__name__)]
    on_stage("done")
    return rows


def analyze_batch(items: list[tuple[str, bytes | None, str | None]], options: FleetOptions) -> BatchResult:
    """The task: ``analyze_file`` over ``items`` (source, data, error), in order."""
    t0, c0 = time.perf_counter(), time.thread_time()
    clock: dict[str, float] = {}
    rows: list[Row] = []
    for source, data, error in items:
        rows.extend(analyze_file(source, data, error, options, clock))
    return BatchResult(rows, len(items), clock, time.perf_counter() - t0, time.thread_time() - c0,
                       f"{os.uname().nodename}:{os.getpid()}")


_DIGEST_SUFFIXES = (".py", ".json", ".maps")


def code_digest() -> str:
    """A digest of the installed sparsemm's code and data (paths and bytes): equal digests
    mean the same per-file function. O(package size), a few milliseconds."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in _DIGEST_SUFFIXES and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# --- batching ---------------------------------------------------------------------------------

def batches(items: Iterable[Item], max_files: int, max_bytes: int) -> Iterator[list[tuple]]:
    """Group ``items`` into task arguments of at most ``max_files`` files and, unless a
    single file is larger, ``max_bytes`` bytes. Lazy: one batch in memory at a time."""
    batch: list[tuple] = []
    size = 0
    for it in items:
        n = len(it.data) if it.data is not None else 0
        if batch and (len(batch) >= max_files or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((it.source, it.data, it.error))
        size += n
    if batch:
        yield batch


# --- engines ----------------------------------------------------------------------------------

def _quiet_dask() -> None:
    # Dask logs worker restarts and lost connections as multi-line warnings and tracebacks;
    # the CLI reports what matters itself, in one line. Dask's logging config gives some
    # child loggers their own level, so each is set, and the handler it installs too.
    import distributed  # noqa: F401 - installs Dask's logging config first

    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    for name in ("distributed", "tornado"):
        for handler in logging.getLogger(name).handlers:
            handler.setLevel(logging.CRITICAL)


@contextmanager
def local_client(workers: int):
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes on 127.0.0.1 (every
    port, the scheduler's HTTP one included, chosen by the kernel), and a client on it;
    both closed on exit. Start-up: seconds (5-11 s on a busy 2-vCPU machine,
    bench/results_fleet.md)."""
    import dask
    from distributed import Client, LocalCluster

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    _quiet_dask()
    # One thread per worker: the model is pure Python, processes give the parallelism.
    with dask.config.set({"logging.distributed": "critical"}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@contextmanager
def remote_client(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A client on the Dask scheduler at ``address``, checked before use: at least one
    worker within ``timeout`` seconds, the same versions of the packages of
    ``_MUST_MATCH``, and on every worker the same sparsemm code (``code_digest``).
    Raises ``FleetError`` with one line otherwise."""
    from distributed import Client

    _quiet_dask()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the version-mismatch warning: checked below, in one line
            client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise FleetError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                         f"({_one_line(exc)})") from None
    except ValueError as exc:  # a malformed address
        raise FleetError(f"--scheduler {address}: {_one_line(exc)}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise FleetError(f"the Dask scheduler at {address} has no workers (waited {timeout:g} s); "
                             f"start some with: dask worker {address}") from None
        check_versions(client.get_versions(), address)
        check_code(client, address)
        yield client
    finally:
        client.close()


def check_versions(versions: dict, address: str) -> None:
    """``FleetError`` naming the first package of ``_MUST_MATCH`` whose version differs
    between this client and the scheduler or a worker (``Client.get_versions()``)."""
    def key(pkg: str, v):
        return ".".join(str(v).split(".")[:2]) if pkg == "python" and v else v

    mine = versions["client"]["packages"]
    others = [("the scheduler", versions["scheduler"])]
    others += sorted((f"worker {w}", v) for w, v in (versions.get("workers") or {}).items())
    for where, info in others:
        theirs = (info or {}).get("packages", {})
        for pkg in _MUST_MATCH:
            if pkg in mine and pkg in theirs and key(pkg, mine[pkg]) != key(pkg, theirs[pkg]):
                raise FleetError(f"version mismatch with the Dask cluster at {address}: {pkg} {mine[pkg]} here, "
                                 f"{theirs[pkg]} on {where}; install the same versions everywhere")


def check_code(client, address: str) -> None:
    """``FleetError`` if a worker lacks sparsemm or runs other code than this client."""
    from importlib.metadata import version

    found = client.run(version, "sparsemm", on_error="return")
    for worker, v in sorted(found.items()):
        if isinstance(v, BaseException):
            raise FleetError(f"worker {worker} of {address} has no sparsemm installed "
                             f"({_one_line(v)}); install the same sparsemm on every worker")
    digests = client.run(code_digest, on_error="return")
    here = code_digest()
    for worker, d in sorted(digests.items()):
        if isinstance(d, BaseException):
            raise FleetError(f"worker {worker} of {address} cannot run sparsemm: {_one_line(d)}")
        if d != here:
            raise FleetError(f"worker {worker} of {address} runs different sparsemm code "
                             f"(sparsemm {found[worker]}, code digest {d}; here {here}); "
                             "install the same sparsemm on every worker")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the run ----------------------------------------------------------------------------------

@dataclass(slots=True)
class RunStats:
    """How a run went: files and batches, wall and worker time (seconds by ``STAGES``,
    ``busy`` = all task wall time on workers, ``cpu`` = their CPU time), retried batches
    (a worker died)."""

    files: int = 0
    batches: int = 0
    wall: float = 0.0
    busy: float = 0.0
    cpu: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    workers_seen: set[str] = field(default_factory=set)
    retried_batches: int = 0
    max_threads: int = 0
    max_inflight: int = 0  # most tasks in flight at once (their bytes are the memory a run holds)
    batch_files: int = 0  # files per task used


def _lost(address: str, stats: RunStats, exc: BaseException) -> str:
    why = ("the client lost its connection to the scheduler" if "connection" in str(exc).lower()
           else _one_line(exc)[:200])
    return f"lost {address} after {stats.files:,} file(s): {why}"


def _threads(client) -> int:
    info = client.scheduler_info()  # refreshed by the client every few seconds
    return sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())


def run_fleet(client, items: Iterable[Item], options: FleetOptions, on_rows: Callable[[list[Row]], None], *,
              batch_files: int = DEFAULT_BATCH_FILES, batch_bytes: int = DEFAULT_BATCH_BYTES,
              total: int | None = None, on_file: Callable[[str], None] | None = None,
              warn: Callable[[str], None] | None = None, address: str = "the Dask cluster",
              lost_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> RunStats:
    """Analyze ``items`` on ``client``'s workers; call ``on_rows`` with each file's rows in
    input order. Tasks carry up to ``batch_files`` files, fewer when ``total`` (the number
    of items, if known) would give a worker thread under four tasks, so that a small run
    still spreads. At most two tasks per worker thread are in flight (their bytes are the
    memory a run holds), and completed batches wait for earlier ones in a buffer of at
    most ``64 x`` that many. A batch whose worker died (``KilledWorker``, after Dask's own
    retries) is resubmitted one file per task, so only a file that kills its worker each
    time becomes an error row. Raises ``FleetError`` if the cluster is lost or has no
    workers for ``lost_timeout`` seconds. O(files) task submissions / ``batch_files``."""
    from distributed import KilledWorker, wait

    t0 = time.perf_counter()
    stats = RunStats()
    stats.max_threads = max(_threads(client), 1)
    if total is not None:
        batch_files = min(batch_files, -(-total // (4 * stats.max_threads)))
    stats.batch_files = batch_files = max(1, batch_files)
    source = batches(items, batch_files, max(1, batch_bytes))
    inflight: dict = {}  # future -> (batch index, part index or None, its arguments: kept for a retry)
    parts: dict[int, list] = {}  # batch index -> results of its one-file retries (None until done)
    done: dict[int, list[Row]] = {}  # completed, waiting for earlier batches
    next_out = next_in = 0
    exhausted = False
    idle_since: float | None = None
    say = warn or (lambda _line: None)

    def submit(args: list[tuple], key: tuple) -> None:
        with warnings.catch_warnings():
            # "Sending large graph": a task carries its files' bytes by design (a large smaps is
            # tens of MiB); the window bounds how many are in flight.
            warnings.simplefilter("ignore", UserWarning)
            fut = client.submit(analyze_batch, args, options, pure=False)
        inflight[fut] = (*key, args)

    def emit() -> None:
        nonlocal next_out
        while next_out in done:
            rows = done.pop(next_out)
            on_rows(rows)
            if on_file:
                last = None
                for r in rows:
                    if r[0] != last:
                        last = r[0]
                        on_file(last)
            next_out += 1

    def finished(index: int, rows: list[Row]) -> None:
        done[index] = rows
        emit()

    while True:
        threads = max(_threads(client), 1)
        stats.max_threads = max(stats.max_threads, threads)
        window = 2 * threads
        while not exhausted and len(inflight) < window and len(done) < 64 * window:
            try:
                args = next(source)
            except StopIteration:
                exhausted = True
                break
            submit(args, (next_in, None))
            stats.batches += 1
            next_in += 1
        stats.max_inflight = max(stats.max_inflight, len(inflight))
        if not inflight:
            break
        try:
            finished_set, _ = wait(list(inflight), timeout=1.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            finished_set = set()
        except (OSError, CancelledError) as exc:
            raise FleetError(_lost(address, stats, exc)) from None
        if not finished_set:
            if _threads(client) == 0:
                idle_since = idle_since or time.perf_counter()
                if time.perf_counter() - idle_since > lost_timeout:
                    raise FleetError(f"{address} has had no workers for {lost_timeout:g} s "
                                     f"({stats.files:,} file(s) done)")
            else:
                idle_since = None
            continue
        idle_since = None
        for fut in finished_set:
            index, part, args = inflight.pop(fut)
            names = [a[0] for a in args]
            try:
                res: BatchResult = fut.result()
            except CancelledError as exc:
                raise FleetError(_lost(address, stats, exc)) from None
            except KilledWorker as exc:
                if part is None and len(names) > 1:
                    stats.retried_batches += 1
                    say(f"a Dask worker died while analyzing {len(names)} file(s) ({names[0]} ...); "
                        "retrying them one per task")
                    parts[index] = [None] * len(args)
                    for j, one in enumerate(args):
                        submit([one], (index, j))
                    continue
                rows = [error_row(n, f"a Dask worker died analyzing this file ({_one_line(exc)})") for n in names]
                res = BatchResult(rows, len(names), {}, 0.0, 0.0, "")
            except Exception as exc:  # noqa: BLE001 - analyze_batch catches per file: this is the task itself
                raise FleetError(f"a task failed on {address} ({names[0]} ...): {_one_line(exc)}") from None
            stats.files += res.files
            stats.busy += res.busy
            stats.cpu += res.cpu
            for k, v in res.seconds.items():
                stats.seconds[k] = stats.seconds.get(k, 0.0) + v
            if res.worker:
                stats.workers_seen.add(res.worker)
            if part is None:
                finished(index, res.rows)
            else:
                parts[index][part] = res.rows
                if all(p is not None for p in parts[index]):
                    finished(index, [r for p in parts.pop(index) for r in p])
        del fut, finished_set  # the scheduler forgets a task once no future holds it
    emit()
    stats.wall = time.perf_counter() - t0
    return stats
