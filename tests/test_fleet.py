"""Fleet mode (``sparsemm analyze DIR|GLOB|TARBALL``) on a real ``dask.distributed``.

Hundreds of real maps/smaps files (cut from the bundled samples and live processes of
this run, tests/fleet_maps.py) are analyzed one by one with the single-file entry point,
then through the CLI on local worker processes (a ``LocalCluster``), on a scheduler and
workers started here as processes, and through the API on a ``LocalCluster`` fixture:
every mode must give the same table, row for row. Errors are rows; tarballs are read in
place; a worker killed mid-run loses nothing; a bad cluster is one line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from sparsemm.analyze.fleet import FleetOptions, batches, code_digest, run_fleet
from sparsemm.analyze.fleet_inputs import Item, plan_inputs
from sparsemm.analyze.fleet_table import COLUMN_NAMES, Summary, error_row, report_rows
from sparsemm.analyze.report import analyze_source

from fleet_maps import SAMPLES, ThreadedChild, derive, sources_texts, write_files

ROOT = Path(__file__).resolve().parent.parent
N_DERIVED = 200
_I = {n: i for i, n in enumerate(COLUMN_NAMES)}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def single_rows(path: Path, source: str) -> list[tuple]:
    """One file through the single-file entry point, reading the file itself."""
    try:
        return report_rows(source, analyze_source(str(path)))
    except Exception as exc:  # noqa: BLE001 - what a failing file becomes
        return [error_row(source, one_line(exc))]


def comparable(rows, rename=lambda s: s):
    """Rows with ``source`` mapped by ``rename``; an error names its file as the base name
    (single-file analyze names the file by base name, fleet mode by its path)."""
    out = []
    for r in rows:
        r = list(r)
        src = r[_I["source"]]
        r[_I["source"]] = rename(src)
        if r[_I["error"]] is not None:
            r[_I["error"]] = r[_I["error"]].replace(src, os.path.basename(r[_I["source"]]))
        out.append(tuple(r))
    return out


def table_rows(path: Path) -> list[tuple]:
    if path.suffix == ".csv":
        opts = pcsv.ConvertOptions(column_types=pq.read_schema(path.with_suffix(".parquet")),
                                   strings_can_be_null=True)
        table = pcsv.read_csv(path, convert_options=opts)
    else:
        table = pq.read_table(path)
    assert tuple(table.column_names) == COLUMN_NAMES
    return [tuple(d[n] for n in COLUMN_NAMES) for d in table.to_pylist()]


def cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsemm", "analyze", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


# --- inputs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    """N_DERIVED derived files, the samples, full live maps/smaps named PID.maps/PID.smaps,
    and three files that must fail (garbage, empty, binary)."""
    d = tmp_path_factory.mktemp("fleet") / "captures"
    with ThreadedChild(64) as child:
        texts = sources_texts([child.pid])
        write_files(d / "live", [(f"{child.pid}.maps", texts[f"live-{child.pid}.maps"]),
                                 (f"{child.pid}.smaps", texts[f"live-{child.pid}.smaps"])])
    write_files(d, derive(texts, N_DERIVED, max_vmas=200))
    for p in SAMPLES:
        shutil.copy(p, d / p.name)
    (d / "broken.maps").write_text("00400000-00401000 r-xp 00000000 08:01 1 /bin/x\nthis is not a maps line\n")
    (d / "empty.maps").write_text("")
    (d / "binary.maps").write_bytes(bytes(range(256)) * 4)
    (d / ".hidden.maps").write_text("hidden files are skipped\n")
    return d


@pytest.fixture(scope="module")
def files(fleet_dir):
    return [Path(it.source) for it in plan_inputs([str(fleet_dir)])]


@pytest.fixture(scope="module")
def baseline(files):
    """Every file analyzed one by one by the single-file path, in the fleet's order."""
    rows = []
    for p in files:
        rows.extend(single_rows(p, str(p)))
    return rows


def rows_of(rows, sources):
    keep = {str(s) for s in sources}
    return [r for r in rows if r[_I["source"]] in keep]


@pytest.fixture(scope="module")
def subset(files):
    """Every sixth file and the three that fail: for the tests of other input forms."""
    return [p for i, p in enumerate(files) if i % 6 == 0 or p.name in ("broken.maps", "empty.maps", "binary.maps")]


def test_inputs_are_hundreds_of_distinct_real_files(files, baseline):
    assert len(files) >= N_DERIVED + len(SAMPLES) + 5
    assert not any(p.name.startswith(".") for p in files)
    texts = {p.read_bytes() for p in files}
    assert len(texts) == len(files)  # distinct
    designs = {r[_I["design"]] for r in baseline}
    assert {"vma", "pte", "tree"} <= designs
    assert sum(1 for r in baseline if r[_I["design"]] is None) == 3  # broken, empty, binary
    assert any((r[_I["guards"]] or 0) > 0 for r in baseline)
    assert any(r[_I["touch"]] == "rss" for r in baseline)  # smaps among them
    assert any(r[_I["pid"]] is not None for r in baseline)  # PID.maps names
    assert all(r[_I["uptime_s"]] is None for r in baseline)  # a maps file does not tell


# --- local mode and Dask mode give the single-file table --------------------------------------

@pytest.fixture(scope="module")
def local_table(fleet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "local.parquet"
    cp = cli(str(fleet_dir), "--out", str(out), "--workers", "2", "--json")
    assert cp.returncode == 0, cp.stderr
    return out, json.loads(cp.stdout), cp


def test_local_mode_equals_single_file_analyze(local_table, baseline):
    out, doc, cp = local_table
    assert comparable(table_rows(out)) == comparable(baseline)
    assert doc["run"]["workers"] == 2 and doc["run"]["engine"] == "dask.distributed"
    assert_failed_files_on_stderr(cp, table_rows(out))  # piped: no progress bar, no Dask log


def assert_failed_files_on_stderr(cp, rows):
    """stderr is one line per file that failed, naming it, in input order; nothing else."""
    failed = [(r[_I["source"]], r[_I["error"]]) for r in rows if r[_I["design"]] is None]
    assert failed
    lines = cp.stderr.splitlines()
    assert len(lines) == len(failed), cp.stderr
    for line, (source, error) in zip(lines, failed):
        assert line.startswith(f"sparsemm analyze: {source}") and line.endswith(error), (line, source, error)


def test_error_rows(local_table, fleet_dir):
    rows = {r[_I["source"]]: r for r in table_rows(local_table[0]) if r[_I["design"]] is None}
    assert set(rows) == {str(fleet_dir / n) for n in ("broken.maps", "empty.maps", "binary.maps")}
    assert "broken.maps:2:" in rows[str(fleet_dir / "broken.maps")][_I["error"]]  # names the line
    assert "no mappings" in rows[str(fleet_dir / "empty.maps")][_I["error"]]
    for r in rows.values():
        assert all(r[_I[c]] is None for c in ("vmas", "map_count", "kernel_bytes", "pid"))


def test_summary_matches_the_table(local_table):
    out, doc, _ = local_table
    rows = table_rows(out)
    ok = [r for r in rows if r[_I["error"]] is None]
    files = {r[_I["source"]] for r in rows}
    assert doc["files"] == len(files) and doc["failed_files"] == 3
    assert doc["analyzed"] == len({r[_I["source"]] for r in ok})
    assert doc["max_map_count"] == [65530]
    from sparsemm.model import designs as registry

    assert set(doc["distributions"]) == {"original", *registry.names()}
    for design in registry.names():
        vals = sorted(r[_I["map_count"]] for r in ok if r[_I["design"]] == design)
        d = doc["distributions"][design]["map_count"]
        assert (d["min"], d["max"], d["total"]) == (vals[0], vals[-1], sum(vals))
        assert d["median"] == vals[(len(vals) + 1) // 2 - 1]  # nearest rank
        assert d["p90"] == vals[-(-9 * len(vals) // 10) - 1]
    pte = [r for r in ok if r[_I["design"]] == registry.kernel_design()]
    best = max(r[_I["saved_vmas"]] for r in pte)
    gain = doc["gain_most_vmas"]
    assert gain[0]["saved_vmas"] == best and len(gain) == 10
    assert [g["saved_vmas"] for g in gain] == sorted((g["saved_vmas"] for g in gain), reverse=True)
    assert all(g["saved_vmas"] > 0 for g in gain)
    vma = [r for r in ok if r[_I["design"]] == registry.baseline()]
    assert doc["nearest_wall"][0]["headroom"] == min(r[_I["headroom"]] for r in vma)


def test_human_summary(fleet_dir, tmp_path):
    cp = cli(str(fleet_dir / "live"), str(SAMPLES[0]), "--workers", "1")
    assert cp.returncode == 0, cp.stderr
    for needle in ("distributions", "median", "p90", "gain most from markers", "nearest the max_map_count wall",
                   "max_map_count 65,530", "1 local worker process"):
        assert needle in cp.stdout, needle


def test_csv_equals_parquet(subset, local_table, tmp_path):
    """Files named one by one (as a shell glob gives them), rows to CSV: the Parquet rows."""
    out = tmp_path / "local.csv"
    shutil.copy(local_table[0], tmp_path / "local.parquet")  # the schema to read the CSV with
    cp = cli(*map(str, subset), "--out", str(out), "--workers", "2", "--batch", "5")
    assert cp.returncode == 0, cp.stderr
    assert table_rows(out) == rows_of(table_rows(local_table[0]), subset)


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """A scheduler and two workers started as processes (the `dask` CLIs), on 127.0.0.1."""
    d = tmp_path_factory.mktemp("dask")
    with DaskProcesses(d, workers=2) as cluster:
        yield cluster


class DaskProcesses:
    """``dask scheduler`` on 127.0.0.1, port 0, and ``workers`` ``dask worker`` processes
    (nanny + one thread each): the commands docs/fleet.md gives, run as this
    interpreter's ``python -m dask``; stopped on exit."""

    def __init__(self, directory: Path, workers: int = 2, env: dict | None = None, scheduler_env: dict | None = None,
                 wait_workers: bool = True):
        self.dir = directory
        self.procs: list[subprocess.Popen] = []
        sched_file = directory / "scheduler.json"
        self._start([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                    "scheduler", scheduler_env)
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                self.close()
                raise RuntimeError("the Dask scheduler did not start: " + (directory / "scheduler.log").read_text())
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        for i in range(workers):
            self.add_worker(f"w{i}", env)
        if wait_workers and workers:
            self.wait_workers(workers)

    def _start(self, argv, name, env=None):
        log = open(self.dir / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                           start_new_session=True, env={**os.environ, **(env or {})}))
        log.close()

    def add_worker(self, name, env=None):
        self._start([sys.executable, "-m", "dask", "worker", self.address, "--nthreads", "1",
                     "--host", "127.0.0.1", "--no-dashboard", "--name", name, "--local-directory",
                     str(self.dir / name)], name, env)

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_workers(self, n):
        with self.client() as c:
            c.wait_for_workers(n, timeout=120)

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_dask_processes_equal_local_mode(dask_processes, fleet_dir, local_table, tmp_path):
    out = tmp_path / "dask.parquet"
    cp = cli(str(fleet_dir), "--scheduler", dask_processes.address, "--out", str(out), "--json")
    assert cp.returncode == 0, cp.stderr
    assert_failed_files_on_stderr(cp, table_rows(out))
    doc = json.loads(cp.stdout)
    assert doc["run"]["scheduler"] == dask_processes.address and doc["run"]["workers"] == 2
    assert pq.read_table(out).equals(pq.read_table(local_table[0]))  # the same table, row for row
    local_doc = local_table[1]
    for key in ("files", "analyzed", "distributions", "gain_most_vmas", "nearest_wall", "errors"):
        assert doc[key] == local_doc[key], key


def test_local_cluster_api_any_batching(subset, baseline):
    """The Python API on a LocalCluster on loopback: the same rows for any batch size,
    and the input is read lazily (a bounded window of batches in flight)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        expected = comparable(rows_of(baseline, subset))
        for batch in (1, 7):
            pulled = 0
            at_first_rows = []
            rows: list = []

            def items():
                nonlocal pulled
                for it in plan_inputs([str(p) for p in subset]):
                    pulled += 1
                    yield it

            def on_rows(rs):
                if not at_first_rows:
                    at_first_rows.append(pulled)
                rows.extend(rs)

            stats = run_fleet(client, items(), FleetOptions(), on_rows, batch_files=batch)
            assert comparable(rows) == expected, batch
            assert stats.batches == -(-len(subset) // batch)
            assert stats.max_threads == 2 and stats.max_inflight <= 4  # two batches per worker thread
            if batch == 1:
                assert at_first_rows[0] < len(subset)  # read as the run goes, not all first


def test_batches_close_on_bytes():
    items = [Item(f"f{i}", b"x" * 10) for i in range(10)] + [Item("big", b"y" * 100), Item("bad", None, "no")]
    got = [[a[0] for a in b] for b in batches(items, max_files=4, max_bytes=35)]
    assert got == [["f0", "f1", "f2"], ["f3", "f4", "f5"], ["f6", "f7", "f8"], ["f9"], ["big"], ["bad"]]


def test_a_registered_design_flows_through_the_fleet_table(tmp_path):
    """The designs of the table and the summary are the registry's: one more registered
    design is one more row per file, in the per-file function and in single-file --out
    (in this process: a design a test registers is not on the workers)."""
    from test_designs_registry import RefuseDesign

    from sparsemm import cli as sparsemm_cli
    from sparsemm.analyze.fleet import analyze_file
    from sparsemm.model import designs as registry

    registry.register(RefuseDesign)
    try:
        sample = SAMPLES[2]
        rows = analyze_file(str(sample), sample.read_bytes(), None, FleetOptions())
        assert [r[_I["design"]] for r in rows] == list(registry.names()) and "refuse" in registry.names()
        summary = Summary()
        for r in rows:
            summary.add(r)
        doc = summary.to_json()
        assert set(doc["distributions"]) == {"original", *registry.names()}
        assert summary.today == registry.baseline() and summary.markers == registry.kernel_design()
        out = tmp_path / "one.parquet"
        assert sparsemm_cli.main(["analyze", str(sample), "--out", str(out), "--json"]) == 0
        assert comparable(table_rows(out), lambda s: str(sample)) == comparable(rows)
    finally:
        registry.unregister("refuse")


# --- tarballs and globs -----------------------------------------------------------------------

def _add(tf, name, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in kw.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize("suffix,mode", [(".tgz", "w:gz"), (".tar", "w")])
def test_tarball_read_in_place(fleet_dir, subset, baseline, tmp_path, suffix, mode):
    tarball = tmp_path / f"fleet{suffix}"
    with tarfile.open(tarball, mode) as tf:
        for p in subset:
            tf.add(p, arcname=str(p.relative_to(fleet_dir)))
        _add(tf, "../escape.maps", SAMPLES[0].read_bytes())
        _add(tf, "/abs.maps", SAMPLES[0].read_bytes())
        _add(tf, "link.maps", type=tarfile.SYMTYPE, linkname="/etc/passwd")
    out = tmp_path / "tar.parquet"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cp = cli(str(tarball), "--out", str(out), "--workers", "2", cwd=cwd)
    assert cp.returncode == 0, cp.stderr
    rows = table_rows(out)
    assert list(cwd.iterdir()) == []  # nothing extracted
    prefix = f"{tarball}:"
    expected = comparable(rows_of(baseline, subset))
    n = len(expected)
    assert comparable(rows[:n], lambda s: str(fleet_dir / s.removeprefix(prefix))) == expected
    tail = {r[_I["source"]].removeprefix(prefix): r[_I["error"]] for r in rows[n:]}
    assert tail == {"../escape.maps": "refused: '..' in member name", "/abs.maps": "refused: absolute member name",
                    "link.maps": "not a regular file (link or device member)"}


def test_truncated_tarball_is_an_error_row(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in SAMPLES:
            tf.add(p, arcname=p.name)
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out = tmp_path / "cut.csv"
    cp = cli(str(bad), str(SAMPLES[1]), "--out", str(out), "--workers", "1")
    assert cp.returncode == 0, cp.stderr
    rows = pcsv.read_csv(out, convert_options=pcsv.ConvertOptions(strings_can_be_null=True)).to_pylist()
    errors = [r for r in rows if r["design"] is None]
    assert len(errors) == 1 and "corrupt or truncated tar archive" in errors[0]["error"]
    assert {r["source"] for r in rows if r["design"] == "pte"} >= {str(SAMPLES[1])}


def test_glob(fleet_dir, tmp_path):
    out = tmp_path / "g.parquet"
    cp = cli(str(fleet_dir / "live" / "*.smaps"), "--out", str(out), "--workers", "1")
    assert cp.returncode == 0, cp.stderr
    rows = table_rows(out)
    srcs = {r[_I["source"]] for r in rows}
    assert len(srcs) == 1 and srcs.pop().endswith(".smaps")
    assert {r[_I["touch"]] for r in rows} == {"rss"}
    assert {r[_I["pid"]] for r in rows} == {int(next((fleet_dir / "live").glob("*.smaps")).stem)}


# --- single file: the same rows, no dask --------------------------------------------------------

def test_single_file_out_and_no_dask(tmp_path, local_table):
    out = tmp_path / "one.parquet"
    code = ("import sys; from sparsemm.cli import main; rc = main(sys.argv[1:]); "
            "assert 'dask' not in sys.modules and 'distributed' not in sys.modules, 'dask imported'; sys.exit(rc)")
    cp = subprocess.run([sys.executable, "-c", code, "analyze", str(SAMPLES[0]), "--out", str(out), "--json"],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    one = comparable(table_rows(out))
    fleet = [r for r in comparable(table_rows(local_table[0]), os.path.basename) if r[0] == SAMPLES[0].name]
    assert one == fleet and len(one) == 3
    assert json.loads(cp.stdout)["out"] == str(out)


# --- progress: a bar on a terminal, nothing when piped ----------------------------------------

def test_progress_bar_on_a_terminal(fleet_dir):
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "sparsemm", "analyze", str(fleet_dir / "live"), "--workers", "1"],
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=300)
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"analyzing" in seen and b"\x1b[" in seen  # rich drew the bar
    assert "distributions" in out


# --- a bad cluster is one line ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(cp, needle):
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsemm analyze: "), cp.stderr
    assert needle in lines[0], lines[0]


def test_unreachable_scheduler(fleet_dir):
    t0 = time.monotonic()
    cp = cli(str(fleet_dir / "live"), "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--connect-timeout", "2")
    _one_line_error(cp, "cannot reach the Dask scheduler")
    assert time.monotonic() - t0 < 60


def test_scheduler_without_workers(fleet_dir, tmp_path):
    with DaskProcesses(tmp_path, workers=0) as c:
        cp = cli(str(fleet_dir / "live"), "--scheduler", c.address, "--connect-timeout", "2")
    _one_line_error(cp, "has no workers")


def test_worker_with_other_sparsemm_code(fleet_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ROOT / "src" / "sparsemm", other / "sparsemm", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "sparsemm" / "analyze" / "guards.py", "a") as fh:
        fh.write("\n# a different build\n")
    with DaskProcesses(tmp_path, workers=1, env={"PYTHONPATH": str(other)}) as c:
        with c.client() as client:
            assert set(client.run(code_digest).values()) != {code_digest()}  # the worker runs the copy
        cp = cli(str(fleet_dir / "live"), "--scheduler", c.address)
    _one_line_error(cp, "runs different sparsemm code")


def test_worker_with_other_package_versions(fleet_dir, tmp_path):
    """A worker whose toolz reports another version (a dist-info ahead on its path)."""
    import importlib.metadata as md

    dist = md.distribution("toolz")
    fake = tmp_path / "fake"
    info = fake / "toolz-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(dist.read_text("METADATA").replace(f"Version: {dist.version}", "Version: 0.0.1"))
    with DaskProcesses(tmp_path, workers=1, env={"PYTHONPATH": str(fake)}) as c:
        cp = cli(str(fleet_dir / "live"), "--scheduler", c.address)
    _one_line_error(cp, f"version mismatch with the Dask cluster at {c.address}: toolz {dist.version} here, 0.0.1 on worker")


def test_bad_options_are_one_line(fleet_dir, tmp_path):
    _one_line_error(cli(str(fleet_dir), "--out", str(tmp_path / "x.json")), ".parquet or .csv")
    _one_line_error(cli(str(fleet_dir), "--out", str(tmp_path / "no" / "x.csv")), "no directory")
    _one_line_error(cli(str(tmp_path / "nothing-*.maps")), "no file matches")
    _one_line_error(cli(str(fleet_dir), "--plot", str(tmp_path / "p.png")), "one process")
    _one_line_error(cli(str(fleet_dir), "--mappings"), "one process")
    _one_line_error(cli(str(fleet_dir), "--html", str(tmp_path / "r.html")), "one process")
    _one_line_error(cli(str(SAMPLES[0]), "--scheduler", "tcp://127.0.0.1:1"), "many files")
    _one_line_error(cli(str(fleet_dir), "--workers", "0"), "--workers")
    (tmp_path / "empty").mkdir()
    _one_line_error(cli(str(tmp_path / "empty")), "no files to analyze")


def test_all_files_failing_exits_2_with_the_rows(tmp_path):
    """More failing files than --top: every one is its line on stderr, and its row."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.maps").write_text("garbage\n")
    (d / "b.maps").write_text("")
    for i in range(10):
        (d / f"c{i}.maps").write_text(f"00400000-00401000 r-xp 00000000 08:01 1 /bin/x\nbad line {i}\n")
    out = tmp_path / "bad.csv"
    cp = cli(str(d), "--out", str(out), "--workers", "1", "--top", "3")
    assert cp.returncode == 2 and cp.stdout == ""
    lines = cp.stderr.strip().splitlines()  # one line per file (tests/test_hostile_maps.py too)
    assert len(lines) == 12 and all(line.startswith("sparsemm analyze: ") for line in lines), lines
    assert f"{d / 'a.maps'}:1:" in lines[0] and f"{d / 'b.maps'}: no mappings" in lines[1]
    assert all(f"{d / f'c{i}.maps'}:2:" in lines[2 + i] for i in range(10))
    assert len(pcsv.read_csv(out).to_pylist()) == 12


def test_some_files_failing_exit_0_with_their_lines(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(SAMPLES[2], d / "good.maps")
    (d / "bad.maps").write_text("garbage\n")
    cp = cli(str(d), "--workers", "1", "--json")
    assert cp.returncode == 0, cp.stderr
    (line,) = cp.stderr.splitlines()
    assert line.startswith(f"sparsemm analyze: {d / 'bad.maps'}:1: not a maps line"), line
    doc = json.loads(cp.stdout)
    assert (doc["analyzed"], doc["failed_files"]) == (1, 1)


# --- a worker dying mid-run loses nothing -------------------------------------------------------

def test_worker_killed_mid_run_loses_nothing(fleet_dir, tmp_path):
    """allowed-failures 0: the first death of a worker fails its tasks at once (KilledWorker);
    fleet mode retries their files one per task on the restarted worker."""
    work = tmp_path / "slow"
    work.mkdir()
    for i in range(2):  # the samples twice: two tasks of three files, about a second each
        for p in SAMPLES:
            shutil.copy(p, work / f"{i}-{p.name}")
    expected = []
    for p in sorted(work.iterdir()):
        expected.extend(single_rows(p, str(p)))
    out = tmp_path / "killed.parquet"
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    (tmp_path / "cl").mkdir()
    with DaskProcesses(tmp_path / "cl", workers=1, scheduler_env=env) as c:
        with c.client() as client:
            proc = subprocess.Popen([sys.executable, "-m", "sparsemm", "analyze", str(work), "--scheduler", c.address,
                                     "--out", str(out), "--batch", "3"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while not any(client.processing().values()):
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            time.sleep(0.3)  # inside the task
            (pid,) = client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)  # the worker process; its nanny starts a new one
            stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "a Dask worker died while analyzing" in stderr and "retrying them one per task" in stderr
    assert comparable(table_rows(out)) == comparable(expected)


def test_scheduler_lost_mid_run_is_one_line_and_keeps_the_rows(tmp_path):
    work = tmp_path / "slow"
    work.mkdir()
    for i in range(4):
        for p in SAMPLES:
            shutil.copy(p, work / f"{i}-{p.name}")
    out = tmp_path / "lost.parquet"
    (tmp_path / "cl").mkdir()
    with DaskProcesses(tmp_path / "cl", workers=1) as c:
        with c.client() as client:
            proc = subprocess.Popen([sys.executable, "-m", "sparsemm", "analyze", str(work), "--scheduler", c.address,
                                     "--out", str(out), "--batch", "2"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while not any(client.processing().values()):
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        os.killpg(c.procs[0].pid, signal.SIGKILL)  # the scheduler
        stdout, stderr = proc.communicate(timeout=300)
    _one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), "lost the Dask scheduler")
    assert "the rows so far are in" in stderr and not out.exists()
    partial = pq.read_table(str(out) + ".partial")  # a valid table, possibly empty
    assert tuple(partial.column_names) == COLUMN_NAMES


# --- snapshots (sparsemm snapshot) flow through fleet mode -------------------------------------

def test_snapshots_in_a_tarball_equal_single_file_analyze(tmp_path):
    """Snapshots of live processes (one holding guard markers), read from a tarball by the
    workers: the rows of single-file analyze of each snapshot file, with pid, comm, host."""
    from conftest import HAS_GUARDS

    from sparsemm.analyze.snapshot import take

    code = ("import sys, sparsemm\nm = sparsemm.Mapping(16 * 4096)\nm.guard(4 * 4096, 4096)\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    marked = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert marked.stdout.readline().strip() == "ready"
        with ThreadedChild(16) as threaded:
            snaps = {pid: take(pid) for pid in (marked.pid, threaded.pid)}
    finally:
        marked.stdin.close()
        marked.wait(timeout=60)
    d = tmp_path / "snaps"
    d.mkdir()
    for pid, snap in snaps.items():
        (d / f"{pid}-{snap.comm}.snapshot.json").write_text(snap.dumps(), errors="surrogateescape")
    expected = []
    for p in sorted(d.iterdir()):
        expected.extend(single_rows(p, str(p)))
    tarball = tmp_path / "snaps.tgz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(d, arcname="snaps")
    out = tmp_path / "snaps.parquet"
    cp = cli(str(tarball), "--out", str(out), "--workers", "2")
    assert cp.returncode == 0, cp.stderr
    rows = table_rows(out)
    prefix = f"{tarball}:snaps/"
    assert comparable(rows, lambda s: str(d / s.removeprefix(prefix))) == comparable(expected)
    assert {r[_I["input"]] for r in rows} == {"snapshot"}
    assert {r[_I["pid"]] for r in rows} == set(snaps)
    assert {r[_I["comm"]] for r in rows} == {s.comm for s in snaps.values()}
    assert {r[_I["host"]] for r in rows} == {socket.gethostname()}
    assert all(r[_I["uptime_s"]] > 0 for r in rows)  # the snapshot's uptime, carried through
    held = {r[_I["pid"]]: r[_I["existing_markers"]] for r in rows}
    assert held[threaded.pid] == 0
    if HAS_GUARDS:
        assert held[marked.pid] >= 1  # the guard page of the Mapping


# --- the documented examples run as written ----------------------------------------------------

def _sh_lines(path: str, heading: str) -> list[str]:
    """The commands of the first ``sh``/``console`` block after ``heading`` in ``path`` (comments
    dropped), except those that need a cluster of the reader's (``HOST``, an address)."""
    import re

    text = (ROOT / path).read_text()
    text = text[text.index(heading):]
    body = re.search(r"^```(?:sh|console)\n(.*?)^```", text, re.S | re.M).group(1)
    lines = [line.split("  #", 1)[0].strip().removeprefix("$ ") for line in body.splitlines()]
    return [line for line in lines if line and "HOST" not in line and "10.0.0.5" not in line]


def test_docs_examples_run_as_written(tmp_path):
    """docs/fleet.md's first block and the README's fleet block, in an empty directory:
    the samples exported, snapshot --all of this host, then the tarball, the directory and
    the glob analyzed; and docs/fleet.md's Python block."""
    import re

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    lines = _sh_lines("docs/fleet.md", "# Fleet mode") + _sh_lines("README.md", "## What a fleet would gain")
    assert any("snapshot --all" in line for line in lines) and any("--out fleet.parquet" in line for line in lines)
    for line in lines:
        cp = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert cp.returncode == 0, (line, cp.stderr)
        assert "Traceback" not in cp.stderr, line
    rows = table_rows(tmp_path / "fleet.parquet")
    assert {r[_I["input"]] for r in rows if r[_I["design"]]} == {"snapshot"}  # the README's last run: host1.tgz
    assert all(r[_I["pid"]] is not None for r in rows if r[_I["design"]])
    text = (ROOT / "docs/fleet.md").read_text()
    (code,) = re.findall(r"^```python\n(from sparsemm.analyze.fleet import.*?)^```", text, re.S | re.M)
    (tmp_path / "example.py").write_text(code)
    cp = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    assert re.fullmatch(r"9 rows in [0-9.]+ s\n", cp.stdout), cp.stdout  # 3 samples x 3 designs
