"""Progress bars for long work: live on a terminal, a line every few seconds in a log file."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.2 if interactive else 10.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    kwargs.setdefault("ascii", not interactive)
    return tqdm(iterable, file=sys.stderr, **kwargs)
