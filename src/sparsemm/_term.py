"""``console()``: the rich console the CLI prints with, on a terminal or into a pipe.

A pipe gets no colour, tables at least 120 columns wide, and text lines that are never
wrapped (soft wrap), so a file name or a sentence is never broken. Owns nothing else.
"""

from __future__ import annotations

import shutil
import sys

__all__ = ["console"]


def console(stderr: bool = False):
    """A ``rich.console.Console`` on stdout (or stderr)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(shutil.get_terminal_size((120, 24)).columns, 120)
    return Console(file=stream, width=width, highlight=False, soft_wrap=width is not None)
