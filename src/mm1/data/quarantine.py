"""The quarantine: every sample a reader rejects is recorded here, never silently dropped.

Readers call ``accept(source)`` for each sample they yield and ``add(source, file, key, reason)``
for each one they reject. A stage then writes the records (``write``) and fails when a source's
rejected share is above the configured limit (``check``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mm1.atomic import write_with

SCHEMA = {"source": pl.Utf8, "file": pl.Utf8, "key": pl.Utf8, "reason": pl.Utf8}
SHOWN_REASONS = 3
"""How many rejection reasons an error message quotes per source."""


class QuarantineError(ValueError):
    """More samples of a source were rejected than ``max_bad_fraction`` allows."""


@dataclass(frozen=True)
class Rejection:
    source: str
    """The dataset the sample belongs to (a SourceSpec name, or the file name)."""
    file: str
    """The file that holds the sample."""
    key: str
    """The sample within the file: webdataset key, document id, ``line 12``, ``row 3``..."""
    reason: str
    """Why it was rejected, in words."""


class Quarantine:
    """Collects rejected samples and counts accepted ones, per source."""

    def __init__(self) -> None:
        self._records: list[Rejection] = []
        self._accepted: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    def add(self, source: str, file: str | Path, key: str, reason: str) -> None:
        """Record one rejected sample."""
        self._records.append(Rejection(source, str(file), str(key), reason))
        self._rejected[source] += 1

    def accept(self, source: str, n: int = 1) -> None:
        """Count ``n`` accepted samples of ``source``."""
        self._accepted[source] += n

    @property
    def records(self) -> tuple[Rejection, ...]:
        return tuple(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def sources(self) -> list[str]:
        """Every source seen, accepted or rejected, in first-seen order."""
        return list(dict.fromkeys([*self._accepted, *self._rejected]))

    def accepted(self, source: str) -> int:
        return self._accepted[source]

    def rejected(self, source: str) -> int:
        return self._rejected[source]

    def bad_fraction(self, source: str) -> float:
        """Rejected share of the samples of ``source`` (0 when it has none)."""
        total = self.accepted(source) + self.rejected(source)
        return self.rejected(source) / total if total else 0.0

    def frame(self) -> pl.DataFrame:
        """The records as a table with columns source, file, key, reason."""
        rows = [(r.source, r.file, r.key, r.reason) for r in self._records]
        return pl.DataFrame(rows, schema=SCHEMA, orient="row")

    def write(self, path: Path) -> Path:
        """Write the records to a parquet file (atomically); an empty quarantine writes an empty table."""
        df = self.frame()
        return write_with(Path(path), lambda tmp: df.write_parquet(tmp))

    def check(self, max_bad_fraction: float, sources: list[str] | None = None) -> None:
        """Raise QuarantineError naming every source (of ``sources``, default all) whose rejected
        share is above ``max_bad_fraction``, with its counts and its first rejection reasons."""
        problems = []
        for source in self.sources() if sources is None else sources:
            if self.bad_fraction(source) <= max_bad_fraction:
                continue
            shown = [r for r in self._records if r.source == source][:SHOWN_REASONS]
            reasons = "; ".join(f"{r.file} [{r.key}]: {r.reason}" for r in shown)
            problems.append(
                f"source {source!r}: {self.rejected(source)} of {self.accepted(source) + self.rejected(source)} "
                f"samples rejected ({self.bad_fraction(source):.1%} > max_bad_fraction {max_bad_fraction:.1%}); "
                f"first reasons: {reasons}"
            )
        if problems:
            raise QuarantineError(
                "too many bad samples (raise data.max_bad_fraction only if you accept them):\n  "
                + "\n  ".join(problems)
            )
