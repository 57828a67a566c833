"""What the checkpoint checksums cost: save and load of the default study's checkpoints with the sha256
manifest (``mm1.train.checksums``) against the same save and load without it, in one process.

The model is the study's ablation scale (config/study.yaml ``study.common`` over the defaults,
vocabulary 1024, the study tokenizer's), built as ``mm1.train.trainer.build`` builds it, one process,
gloo, world size 1. Two checkpoints, the two that training writes and reads:

- the model checkpoint (``checkpoint.save`` / ``checkpoint.load_into``: the stage output that
  ``--init``, eval and SFT load);
- the resumable checkpoint (``state.save`` / ``state.load``: model + AdamW state + RNG + metrics,
  written every ``train.save_interval`` steps).

And the packed training file (``packed_io.read_packed``, which checks its content hash), 4000
sequences as the study's pack stage writes them, with the time spent in ``content_sha256``.

"without" is the same call with ``checksums.seal`` (save) and ``checksums.check`` (load) replaced by
no-ops: everything else (megatron's write and read, the unpickling checks) is in both. Rounds alternate
the two (AB, BA, ...) so machine noise hits both; medians. On a shared machine the end-to-end
difference drowns in noise, so the time spent inside ``seal`` / ``check`` is clocked too and is the
headline, against the save (load) without. Also reported: the checkpoint's bytes and the sha256 rate
of one pass over them (page cache). Writes bench/results/checksum_cost.json.

    python bench/checksum_cost.py            # 15 rounds (about 40 s on 2 cores)
    python bench/checksum_cost.py --quick    # 3 rounds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from run import ROOT, report, row, write  # bench/run.py: the harness's report format

from mm1.config import RunConfig, load
from mm1.config.load import read_yaml
from mm1.data import packed_io
from mm1.data.packing import PackedSequence
from mm1.models.size import optimizer_hparams
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, checksums, state
from mm1.train.optim import build_optimizer, wrap_ddp
from mm1.train.trainer import build

VOCAB = 1024  # the study's tokenizer.vocab_size
IMAGE_ID = 3


@dataclass
class _Vocab:  # what ``trainer.build`` reads of a tokenizer
    vocab_size: int = VOCAB
    image_id: int = IMAGE_ID


def study_config() -> RunConfig:
    """The defaults with the study's ablation scale (the ``model.*`` keys of study.common)."""
    common = read_yaml(ROOT / "config" / "study.yaml")["study"]["common"]
    scale = [f"{k}={v}" for k, v in common.items() if k.startswith("model.")]
    return load(None, [*scale, f"tokenizer.vocab_size={VOCAB}", "train.resume=false"])


@contextmanager
def hashing(on: bool, spent: list[float]):
    """With ``on`` False, the manifest is neither written nor checked (the baseline); with it True, the
    seconds spent in ``checksums.seal`` / ``checksums.check`` are added to ``spent[0]``."""
    seal, check = checksums.seal, checksums.check

    def clocked(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        return run

    checksums.seal, checksums.check = (clocked(seal), clocked(check)) if on else (lambda *a, **k: None,) * 2
    try:
        yield
    finally:
        checksums.seal, checksums.check = seal, check


def timed(fn: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(rounds: int, scratch: Path) -> dict:
    cfg = study_config()
    times: dict[str, list[float]] = {}
    facts = {"layout": {"tp": 1, "pp": 1, "dp": 1}, "bench": "checksum_cost"}
    with distributed(cfg.parallel, cfg.train.seed):
        model = wrap_ddp(build(cfg, _Vocab()), cfg.parallel)
        optimizer, scheduler = build_optimizer(model, cfg.train, *optimizer_hparams(cfg, vocab_size=VOCAB))
        optimizer.step()  # zero gradients: AdamW's state exists (as in any checkpoint after a step)
        meta = {"model": cfg.model.model_dump(mode="json"), "vocab_size": VOCAB, "image_token_id": IMAGE_ID}
        cases = {
            "model": (
                lambda out: checkpoint.save(model.module, meta, out),
                lambda out: checkpoint.load_into(model.module, out),
            ),
            "resume": (
                lambda out: state.save(
                    out, 1, model.module, optimizer, scheduler, facts, [{"step": 1, "loss": 1.0}], keep_last=1
                ),
                lambda out: state.load(state.step_dir(out, 1), model.module, optimizer, scheduler, facts),
            ),
        }
        for r in range(rounds + 1):  # round 0 warms up (imports, first allocations): not counted
            for on in (True, False) if r % 2 else (False, True):
                for name, (save, load_) in cases.items():
                    out = scratch / f"{name}-{int(on)}"
                    shutil.rmtree(out, ignore_errors=True)
                    in_save, in_load = [0.0], [0.0]
                    with hashing(on, in_save):
                        t_save = timed(save, out)
                    with hashing(on, in_load):
                        t_load = timed(load_, out)
                    if not r:
                        continue
                    how = "with" if on else "without"
                    for key, value in [(f"save {how}", t_save), (f"load {how}", t_load)]:
                        times.setdefault(f"{name} {key}", []).append(value)
                    if on:
                        times.setdefault(f"{name} save: in seal", []).append(in_save[0])
                        times.setdefault(f"{name} load: in check", []).append(in_load[0])
    sizes = {"model": folder_bytes(scratch / "model-1"), "resume": folder_bytes(scratch / "resume-1")}
    files = checksums.recorded_files(scratch / "resume-1" / "step_000001")
    sha = timed(lambda: [checksums.sha256_file(scratch / "resume-1" / "step_000001" / f) for f in files])
    return {"times_s": times, "bytes": sizes, "sha256_pass_s": sha}


def measure_packed(rounds: int, scratch: Path, seq_length: int) -> dict:
    """The packed training file: ``read_packed`` (which checks the content hash) and the time spent in
    ``content_sha256`` within it; 4000 sequences as the study's pack stage writes (4 images of 1.25 KiB
    each: about its 20 MB file)."""
    rng = np.random.default_rng(0)
    seqs = [
        PackedSequence(
            tokens=rng.integers(0, VOCAB, seq_length + 1, dtype=np.int32),
            loss_mask=rng.integers(0, 2, seq_length, dtype=np.uint8),
            images=[rng.bytes(1280) for _ in range(4)],
            source="caption",
        )
        for _ in range(4000)
    ]
    path = packed_io.write_packed(seqs, scratch / "train.parquet")
    real, read_s, hash_s = packed_io.content_sha256, [], []
    try:
        for _ in range(rounds):
            spent = [0.0]

            def clocked(rows, spent=spent):
                t0 = time.perf_counter()
                try:
                    return real(rows)
                finally:
                    spent[0] += time.perf_counter() - t0

            packed_io.content_sha256 = clocked
            read_s.append(timed(packed_io.read_packed, path))
            hash_s.append(spent[0])
    finally:
        packed_io.content_sha256 = real
    return {"bytes": path.stat().st_size, "read_s": read_s, "in_content_sha256_s": hash_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 15")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "checksum_cost.json")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 15
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="checksum-cost-") as tmp:
        got = measure(rounds, Path(tmp))
        packed = measure_packed(rounds, Path(tmp), study_config().model.decoder.seq_length)
    med = {k: statistics.median(v) for k, v in got["times_s"].items()}
    headline = []
    for name in ("model", "resume"):
        mib = got["bytes"][name] / 2**20
        for op, part in (("save", "seal"), ("load", "check")):
            with_, without, hashing_s = (
                med[f"{name} {op} with"],
                med[f"{name} {op} without"],
                med[f"{name} {op}: in {part}"],
            )
            headline.append(
                row(
                    f"{name} checkpoint ({mib:.1f} MiB) {op}: time in checksums.{part}, vs the {op} without",
                    round(hashing_s, 4),
                    "s",
                    baseline=round(without, 4),
                    goal="a small fraction of a save: <= 0.25x",
                    met=hashing_s <= 0.25 * without,
                )
            )
            headline.append(
                row(
                    f"{name} checkpoint ({mib:.1f} MiB) {op}, with the manifest vs without (end to end)",
                    round(with_, 4),
                    "s",
                    baseline=round(without, 4),
                )  # fmt: skip
            )
    read_s, hash_s = statistics.median(packed["read_s"]), statistics.median(packed["in_content_sha256_s"])
    headline.append(
        row(
            f"packed file ({packed['bytes'] / 2**20:.1f} MiB, 4000 sequences) read: time in content_sha256, "
            "vs the read without it",
            round(hash_s, 4),
            "s",
            baseline=round(read_s - hash_s, 4),
            goal="a small fraction of a read: <= 0.25x",
            met=hash_s <= 0.25 * (read_s - hash_s),
        )
    )
    resume_mib = got["bytes"]["resume"] / 2**20
    results = {
        "rounds": rounds,
        "median_s": med,
        "all_s": got["times_s"],
        "bytes": got["bytes"],
        "sha256_MiB_per_s": round(resume_mib / got["sha256_pass_s"], 1),
        "packed": packed,
    }
    write(args.out, report("checksum_cost", args.quick, results, headline))
    for h in headline:
        print(f"{h['name']}: {h['value']:.4f} s vs {h['baseline']:.4f} s ({h['ratio']:.2f}x)")
    print(f"sha256: {results['sha256_MiB_per_s']} MiB/s; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
