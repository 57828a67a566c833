"""What recording a checkpoint input in provenance.json costs: the old rule (sha256 of every shard) against
the new one (sha256 of the folder's checksums.json, :func:`mm1.provenance.input_digest`).

A sealed checkpoint-like folder of ``--gib`` GiB of random shards (8 files, ``checksums.seal``), each
rule timed ``--repeat`` times after one warm-up pass (the page cache holds the shards: the old rule's
best case; from disk it is slower still). Writes bench/results/provenance_cost.json.

    python bench/provenance_cost.py              # 1 GiB, 3 repeats (~20 s on 2 cores)
    python bench/provenance_cost.py --quick      # 0.25 GiB, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from run import ROOT, report, row, write  # bench/run.py: the harness's report format

from mm1 import provenance
from mm1.train import checksums

SHARDS = 8


def make_checkpoint(folder: Path, gib: float) -> int:
    """A sealed folder of SHARDS random shards, ``gib`` GiB in all; returns its bytes."""
    (folder / "weights").mkdir(parents=True)
    size = int(gib * 2**30) // SHARDS
    for i in range(SHARDS):
        with (folder / "weights" / f"__0_{i}.distcp").open("wb") as f:
            for _ in range(0, size, 1 << 24):
                f.write(os.urandom(min(1 << 24, size)))
    checksums.seal(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def seconds(fn, repeat: int) -> float:
    fn()  # warm-up: the shards in the page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/provenance_cost.json")
    args = ap.parse_args()
    gib, repeat = (0.25, 1) if args.quick else (args.gib, args.repeat)
    with tempfile.TemporaryDirectory(prefix="provenance-cost-") as tmp:
        folder = Path(tmp) / "checkpoint"
        nbytes = make_checkpoint(folder, gib)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        old = seconds(lambda: provenance._sha256(files, folder), repeat)  # the rule before: every byte
        new = seconds(lambda: provenance.input_digest(folder), repeat)
        method = provenance.input_digest(folder)[1]
    per_60gb = old * 60e9 / nbytes
    results = {"bytes": nbytes, "shards": SHARDS, "repeat": repeat, "method": method,
               "old_sha256_all_s": old, "new_manifest_s": new, "old_gb_per_s": nbytes / old / 1e9,
               "old_s_per_60gb_checkpoint": per_60gb}  # fmt: skip
    headline = [
        row("provenance of a checkpoint input (manifest digest)", new, "s", baseline=old, goal="no shard read"),
        row("the old rule (sha256 of every shard), scaled to a 60 GB checkpoint", per_60gb, "s"),
    ]
    write(args.out, report("provenance_cost", args.quick, results, headline))
    print(f"{nbytes / 1e9:.2f} GB: sha256 of every shard {old:.2f} s ({nbytes / old / 1e9:.2f} GB/s), "
          f"manifest digest {new * 1e3:.2f} ms ({method}); a 60 GB checkpoint: {per_60gb:.0f} s before")  # fmt: skip


if __name__ == "__main__":
    main()
