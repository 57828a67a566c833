"""The trainer on the streaming data path: loader worker processes give the uninterrupted loss
curve, also across a resume; training on 4x the sequences does not raise peak memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm1.data.packed_io import read_packed, write_packed
from mm1.data.packing import PackedSequence
from mm1.train.signals import Preempted
from mm1.train.trainer import train
from tinykit import TINY, tiny

CURVE = ["loss", "lr", "grad_norm"]  # the deterministic columns of metrics.csv
STEPS = ["train.steps=3"]


def _curve(result) -> list[list[float]]:
    return result.metrics.select(CURVE).rows()


@pytest.mark.slow
def test_loader_workers_repeat_the_in_process_curve_across_a_resume(tiny_world, tmp_path):
    """One spawned loader worker: a run stopped after step 2 and resumed (the worker restarted at
    step 3's batches) repeats the in-process loader's loss curve bit for bit."""
    cfg = tiny(*STEPS)
    paths = tiny_world["packed"], tiny_world["tokenizer"]
    reference = _curve(train(cfg, *paths, tmp_path / "in-process"))
    cfg = tiny(*STEPS, "parallel.loader_workers=1")
    with pytest.raises(Preempted):
        train(cfg, *paths, tmp_path / "resumed", stop_after=2)
    resumed = train(cfg, *paths, tmp_path / "resumed")
    assert resumed.resumed_from == 2 and _curve(resumed) == reference


TRAIN = """
import json, sys
from pathlib import Path
from mm1.config import load
from mm1.train.trainer import train

def kib(field):  # VmRSS (now) or VmHWM (peak since the last reset), KiB
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])

overrides, packed, tokenizer, out = json.loads(sys.argv[1]), *sys.argv[2:]
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts here: imports are not counted
before = kib("VmRSS")
train(load(None, overrides), Path(packed), Path(tokenizer), Path(out))
print(json.dumps({"growth_kib": kib("VmHWM") - before}))
"""


def _train_growth(packed: Path, tokenizer: Path, out: Path) -> int:
    """Peak RSS growth (KiB) of a fresh process that trains the tiny model 3 steps on ``packed``."""
    args = [json.dumps([*TINY, *STEPS, "train.resume=false"]), str(packed), str(tokenizer), str(out)]
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"]


@pytest.mark.slow
def test_training_peak_memory_is_flat_in_the_number_of_sequences(tiny_world, tmp_path):
    """The tiny world's 48 sequences with every image replaced by a 256 px noise PNG (~190 KiB; the
    encoder resizes it), and the same 4 times over (4N): 3 training steps read the same 24
    sequences from either, and the peak RSS of the training process grows by the same amount
    (within 1.2x, and by far less than the 4N file's extra size, which loading it whole would cost)."""
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, format="PNG")
        pool.append(buf.getvalue())
    seqs = read_packed(tiny_world["packed"])
    big = [
        PackedSequence(s.tokens, s.loss_mask, [pool[(i * 5 + j) % 16] for j in range(len(s.images))], s.source)
        for i, s in enumerate(seqs * 4)
    ]
    small = write_packed(big[: len(seqs)], tmp_path / "n.parquet", block_rows=4)
    large = write_packed(big, tmp_path / "4n.parquet", block_rows=4)
    extra_kib = (large.stat().st_size - small.stat().st_size) / 1024
    assert extra_kib > 1.5 * small.stat().st_size / 1024 > 1.5 * 8192  # parquet shares some repeated images
    n = _train_growth(small, tiny_world["tokenizer"], tmp_path / "n")
    four_n = _train_growth(large, tiny_world["tokenizer"], tmp_path / "4n")
    assert four_n < 1.2 * n, (n, four_n)
    assert four_n - n < 0.25 * extra_kib, (n, four_n, extra_kib)
