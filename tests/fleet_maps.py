"""Many distinct, real maps/smaps files for the fleet tests and bench/bench_fleet.py.

Each derived file is a run of consecutive VMAs (maps lines, or smaps blocks) cut from a
real map: the bundled samples and live processes of this run, so every file is text the
kernel printed, in its order. Some VMAs of a run are dropped at random (what remains is
still sorted and disjoint). Not a test module.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

MAPS = Path(__file__).resolve().parent / "data" / "maps"
SAMPLES = sorted(MAPS.glob("*.maps"))
_HEADER = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")


def vma_units(text: str) -> list[str]:
    """The text split per VMA: a maps line, with its smaps lines when it is smaps."""
    units: list[str] = []
    for line in text.splitlines(keepends=True):
        if _HEADER.match(line) or not units:
            units.append(line)
        else:
            units[-1] += line
    return units


def live_maps(pids) -> dict[str, str]:
    """``{"live-PID.maps": text, "live-PID.smaps": text}`` of the given processes (those still readable)."""
    out = {}
    for pid in pids:
        for kind in ("maps", "smaps"):
            try:
                out[f"live-{pid}.{kind}"] = Path(f"/proc/{pid}/{kind}").read_text(errors="surrogateescape")
            except OSError:
                pass
    return out


def derive(texts: dict[str, str], n: int, seed: int = 17, max_vmas: int = 400) -> list[tuple[str, str]]:
    """``n`` distinct ``(name, text)`` pairs cut from ``texts`` (name -> maps or smaps
    text): runs of 1 to ``max_vmas`` consecutive VMAs, half of them thinned. None equals a
    whole source text, since callers put the sources themselves beside the derived files."""
    rng = random.Random(seed)
    pools = {name: vma_units(text) for name, text in sorted(texts.items()) if text.strip()}
    names = sorted(pools)
    seen: set[str] = set(texts.values())
    out: list[tuple[str, str]] = []
    while len(out) < n:
        origin = rng.choice(names)
        units = pools[origin]
        k = rng.randint(1, min(len(units), max_vmas))
        start = rng.randrange(len(units) - k + 1)
        run = units[start:start + k]
        if rng.random() < 0.5 and len(run) > 2:
            run = [u for u in run if rng.random() < 0.8] or run[:1]
        text = "".join(run)
        if text in seen:
            continue
        seen.add(text)
        suffix = "smaps" if origin.endswith(".smaps") else "maps"
        stem = origin.rsplit(".", 1)[0]
        out.append((f"{len(out):05d}-{stem}.{suffix}", text))
    return out


class ThreadedChild:
    """A live Python process with ``threads`` sleeping threads (glibc gives each stack a
    guard VMA): a real map with guards, read while it runs. Context manager."""

    def __init__(self, threads: int = 64):
        code = ("import threading, sys, time\n"
                f"ts = [threading.Thread(target=time.sleep, args=(600,), daemon=True) for _ in range({threads})]\n"
                "[t.start() for t in ts]\nprint('ready', flush=True)\nsys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the threaded child did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sources_texts(extra_pids=()) -> dict[str, str]:
    """The bundled samples and the maps/smaps of this process and ``extra_pids``."""
    texts = {p.name: p.read_text() for p in SAMPLES}
    texts.update(live_maps([os.getpid(), *extra_pids]))
    return texts


def write_files(directory: Path, pairs: list[tuple[str, str]]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in pairs:
        p = directory / name
        p.write_text(text, errors="surrogateescape")
        paths.append(p)
    return paths
