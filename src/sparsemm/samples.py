"""The bundled samples: maps files and op scripts shipped as package data, reachable by name.

Owns the table of samples (``SAMPLES``) and ``resolve``, which turns ``sample:NAME`` (the
spelling every command accepts where it takes a file) into the file's path. Reads only
``sparsemm/data``; knows no command.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["PREFIX", "Sample", "SAMPLES", "SampleError", "names", "path", "resolve"]

#: ``sample:renderer`` names the bundled renderer map wherever a file is expected.
PREFIX = "sample:"


class SampleError(ValueError):
    """An unknown sample name: the message lists the known ones."""


@dataclass(slots=True, frozen=True)
class Sample:
    name: str  # the short name after ``sample:``
    kind: str  # "maps" (for analyze/reproduce) or "script" (for run/designs/measure/compare)
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
)
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


def resolve(target: str) -> str:
    """``sample:NAME`` -> the path of that sample; any other string unchanged. O(1)."""
    if target.startswith(PREFIX):
        return str(path(target[len(PREFIX):]))
    return target
