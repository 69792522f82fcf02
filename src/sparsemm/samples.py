"""The bundled samples: maps files, op scripts and example programs shipped as package data.

Owns the table of samples (``SAMPLES``) and ``resolve``, which turns ``sample:NAME`` (the
spelling every command accepts where it takes a file) into the file's path. Reads only
``sparsemm/data``; knows no command.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["KINDS", "PREFIX", "Sample", "SAMPLES", "SampleError", "export", "file_name", "names", "path",
           "resolve"]

#: ``sample:renderer`` names the bundled renderer map wherever a file is expected.
PREFIX = "sample:"


class SampleError(ValueError):
    """An unknown sample name: the message lists the known ones."""


@dataclass(slots=True, frozen=True)
class Sample:
    name: str  # the short name after ``sample:``
    kind: str  # "maps" (analyze/reproduce), "script" (run/designs/measure/compare), "program" (trace)
    resource: str  # path inside the sparsemm.data package
    about: str  # one line for people


SAMPLES: tuple[Sample, ...] = (
    Sample("renderer", "maps", "maps/chromium150_renderer_heavy_default.maps",
           "Chromium 150 renderer, allocation-heavy page: 1,400 VMAs, PartitionAlloc and V8 guards"),
    Sample("browser", "maps", "maps/chromium150_browser_default.maps",
           "Chromium 150 browser process of the same run: 815 VMAs"),
    Sample("python-threads", "maps", "maps/python311_glibc236_200threads.maps",
           "Python 3.11 on glibc 2.36 with 200 threads, one guard page per stack: 535 VMAs"),
    Sample("guard", "script", "scripts/guard.json",
           "op script: a guard page faults, its neighbours don't (5 ops)"),
    Sample("ladders", "program", "example-programs/ladders.py",
           "Python program: N PROT_NONE guards in one thread, N guard markers in another"),
    Sample("threads", "program", "example-programs/threads.py",
           "Python program: 64 threads allocating and freeing big and small objects"),
    Sample("markers", "program", "example-programs/markers.py",
           "Python program: a sparsemm.Mapping with 128 guard pages and a GuardedHeap"),
    Sample("sysv", "program", "example-programs/sysv.py",
           "Python program: System V shared memory, which a trace cannot replay"),
    Sample("heavy-page", "program", "example-programs/heavy.html",
           "web page that grows a Chromium renderer's heaps (DOM nodes, arrays, strings, buffers)"),
)
KINDS = ("maps", "script", "program")
_BY_NAME = {s.name: s for s in SAMPLES}


def names() -> list[str]:
    """Every sample's name, in table order. O(1)."""
    return [s.name for s in SAMPLES]


def path(name: str) -> Path:
    """The file of sample ``name`` (``SampleError`` if there is none). O(1).

    The package is installed as plain files (setuptools, editable or not), so the path is a
    real file any command can open.
    """
    sample = _BY_NAME.get(name)
    if sample is None:
        raise SampleError(f"no sample {name!r}: the samples are {', '.join(names())} "
                          "(sparsemm samples lists them)")
    return Path(str(resources.files("sparsemm.data").joinpath(sample.resource)))


def file_name(name: str) -> str:
    """The file name sample ``name`` is exported under (its bundled file's name). O(1)."""
    return path(name).name


def export(directory: Path, selected: list[str]) -> list[Path]:
    """Copy the samples named in ``selected`` into ``directory`` (created if missing) under
    their file names; return the files written. O(total bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in selected:
        src = path(name)
        dst = directory / src.name
        dst.write_bytes(src.read_bytes())
        written.append(dst)
    return written


#: Each kind in words, for the message when a sample of another kind is given.
_KIND_TEXT = {"maps": "a maps sample (for analyze and reproduce)",
              "script": "an op-script sample (for run, compare, designs and measure)",
              "program": "an example program (to run or trace, write it out: sparsemm samples {name} > FILE)"}


def resolve(target: str, kind: str | None = None) -> str:
    """``sample:NAME`` -> the path of that sample; any other string unchanged. O(1).

    With ``kind``, a sample of another kind is a ``SampleError`` saying which samples fit
    (``sample:guard`` given to analyze is an op script, not a maps file)."""
    if not target.startswith(PREFIX):
        return target
    name = target[len(PREFIX):]
    found = path(name)
    sample = _BY_NAME[name]
    if kind is not None and sample.kind != kind:
        fit = ", ".join(PREFIX + s.name for s in SAMPLES if s.kind == kind)
        raise SampleError(f"{target} is {_KIND_TEXT[sample.kind].format(name=name)}; "
                          f"this command takes {_KIND_TEXT[kind].split(' (')[0]}: {fit}")
    return str(found)
