"""``console()``: the rich console the CLI prints with, on a terminal or into a pipe.

A pipe gets no colour, tables as wide as their contents (no cell is folded), and text lines
that are never wrapped (soft wrap), so a file name or a sentence is never broken. Owns
nothing else.
"""

from __future__ import annotations

import sys

__all__ = ["PIPE_WIDTH", "console"]

#: Columns a pipe is given: wider than any line sparsemm prints.
PIPE_WIDTH = 4096


def console(stderr: bool = False):
    """A ``rich.console.Console`` on stdout (or stderr)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # In a pipe the width is only a ceiling: a table takes its natural width (none expands),
    # so a long file name stays on one line for grep and scripts.
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=width is not None)
