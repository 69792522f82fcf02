"""Command-line plumbing shared by every ``sparsemm`` command: option types, one-line usage
errors, and signals that end the command cleanly.

Owns ``Parser`` (an ``ArgumentParser`` whose errors are one line and exit status 2), the
checked option types (``count``, ``number``, ``number_or_none``, ``perms``) and
``Terminated`` with ``install_signal_handlers``. Knows no command.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys

__all__ = ["Parser", "Formatter", "count", "number", "number_or_none", "perms", "Terminated",
           "install_signal_handlers"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: {text} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help as written (descriptions and example epilogs keep their lines), and every option's
    default said where the help text does not say it already and the default means something
    (not ``None``, ``False`` or a private sentinel)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings or not isinstance(default, (str, int, float, list, tuple))):
            return text
        shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def _fmt(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def count(name: str, lo: int, hi: int):
    """An argparse ``type``: an integer ``lo..hi``; the error names the option ``name``."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"want an integer {lo}..{hi}, not {text[:40]!r}")
        return value

    parse.__name__ = name
    return parse


def number(name: str, lo: float, hi: float, *, lo_open: bool = False):
    """An argparse ``type``: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``);
    ``inf``, ``nan`` and ``1e308``-style values beyond ``hi`` are refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low_ok = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and low_ok and value <= hi):
            bracket = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"want a number in {bracket}{_fmt(lo)}, {_fmt(hi)}], "
                                             f"not {text[:40]!r}")
        return value

    parse.__name__ = name
    return parse


def number_or_none(name: str, lo: float, hi: float):
    """Like ``number``, or the word ``none`` (returned as ``None``)."""
    inner = number(name, lo, hi)

    def parse(text: str) -> float | None:
        if text.strip().lower() == "none":
            return None
        try:
            return inner(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"want a number in [{_fmt(lo)}, {_fmt(hi)}] or 'none', "
                                             f"not {text[:40]!r}") from None

    parse.__name__ = name
    return parse


def perms(text: str) -> str:
    """A private maps permission column such as ``rw-p``."""
    if len(text) != 4 or text[0] not in "r-" or text[1] not in "w-" or text[2] not in "x-" or text[3] != "p":
        raise argparse.ArgumentTypeError(f"want private maps permissions such as 'rw-p', not {text[:40]!r}")
    return text


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (so ``finally`` blocks stop children), then exit."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP raise ``Terminated`` in the main thread (SIGINT already raises
    ``KeyboardInterrupt``), and output encodes every character (lone surrogates escaped)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
