"""How progress is shown: bars on a terminal, one line per epoch in a log file.

Keras's interactive progress bar rewrites its line with carriage returns many times a second;
in a file that is thousands of characters per epoch. Keras itself offers ``verbose=2`` (one
line per epoch) for that case, and tqdm bars of our own (preprocessing, prediction) are shown
only when standard error is a terminal. Both choices are made here, from the stream the output
goes to.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["is_terminal", "keras_verbose", "progress_bar"]


def is_terminal(stream: IO[Any] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and None)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def keras_verbose(enabled: bool, *, stream: IO[Any] | None = None) -> int:
    """The ``verbose`` argument of ``model.fit``: 1 (bar) on a terminal, 2 (a line per epoch)
    otherwise, 0 when progress is off.

    Args:
        enabled: Whether progress is wanted at all.
        stream: Where Keras prints (default: ``sys.stdout``).
    """
    if not enabled:
        return 0
    return 1 if is_terminal(sys.stdout if stream is None else stream) else 2


def progress_bar(items: Iterable, *, enabled: bool, desc: str, unit: str,
                 total: int | None = None, leave: bool = True, stream: IO[Any] | None = None):
    """``items`` wrapped in a tqdm bar shown only when enabled and ``stream`` is a terminal.

    Args:
        items: The iterable.
        enabled: Whether progress is wanted at all.
        desc: The bar's label.
        unit: What one item is ("scan", "case").
        total: Number of items when ``items`` has no length.
        leave: Keep the finished bar on screen.
        stream: Where the bar is drawn (default: ``sys.stderr``).
    """
    stream = sys.stderr if stream is None else stream
    return tqdm(items, desc=desc, unit=unit, total=total, leave=leave, file=stream,
                disable=not (enabled and is_terminal(stream)))
