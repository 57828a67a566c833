"""Reading the CSV tables the figure commands take: every problem is one error naming the file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl


def read_table(path: Path, columns: Iterable[str], where: str, remake: str) -> pl.DataFrame:
    """The CSV at ``path`` with at least ``columns``; ``where`` starts each error ("--seeds x.csv",
    "cell 'a'"), ``remake`` ends it with the fix ("run mm1 compare for that figure first")."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{where}: {path} is a folder, not a CSV file; give the file's path")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist; {remake}")
    try:
        frame = pl.read_csv(path)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{where}: {path} is not a CSV table ({reason}); {remake}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: {path} lacks the columns {missing}; {remake}")
    return frame
