"""Greedy decoding: the KV-cached path writes exactly what re-running the whole prefix writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from evalkit import config, make_checkpoint

from mm1.config import ParallelConfig
from mm1.data.images import stack_images
from mm1.data.tokenizer import TextTokenizer
from mm1.eval.benchmarks import load_benchmark
from mm1.eval.generate import greedy
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint

WORKER = Path(__file__).with_name("_generate_worker.py")


def prompts_and_images(run: dict[str, Path]) -> tuple[list[list[int]], list[bytes]]:
    """Six prompts of 1-3 images and different lengths, from the world's coco benchmark."""
    tok = TextTokenizer(run["tokenizer"])
    cfg = config()
    bench = load_benchmark(cfg.eval.benchmarks[0], run["data"], with_pool=True)
    n = cfg.model.connector.num_tokens
    prompts, images = [], []
    for i in range(6):
        ids = [tok.bos_id]
        for j in range(i % 3 + 1):
            item = bench.pool[(i + j) % len(bench.pool)]
            ids += [tok.image_id] * n + (tok.encode(item.targets[0]) + [tok.eoc_id] if j < i % 3 else [])
            images.append(item.image)
        prompts.append(ids)
    return prompts, images


def generate(run: dict[str, Path], *, cache: bool, max_new_tokens: int = 20) -> list[list[int]]:
    tok = TextTokenizer(run["tokenizer"])
    meta = checkpoint.read_meta(run["ckpt"])
    prompts, images = prompts_and_images(run)
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(meta["model"], vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, run["ckpt"])
        model.eval()
        x = stack_images(images, meta["model"].encoder.image_size)
        return greedy(model, tok, prompts, x, meta["model"].decoder.seq_length, max_new_tokens, cache=cache)


def test_kv_cache_writes_what_full_recomputation_writes(tiny_run) -> None:
    cached = generate(tiny_run, cache=True)
    full = generate(tiny_run, cache=False)
    assert cached == full
    assert any(len(o) > 3 for o in cached)  # a real comparison: the model writes several tokens
    assert len({tuple(o) for o in cached}) > 1  # and not the same thing for every prompt


def test_kv_cache_with_an_moe_decoder(tiny_run, tmp_path: Path) -> None:
    moe = ("model.moe.num_experts=4", "model.moe.layer_freq=1")
    run = tiny_run | {"ckpt": make_checkpoint(tiny_run, tmp_path / "moe", *moe)}
    cached = generate(run, cache=True)
    assert cached == generate(run, cache=False)
    assert any(len(o) > 3 for o in cached)


def test_generation_respects_stops_bans_and_limits(tiny_run) -> None:
    tok = TextTokenizer(tiny_run["tokenizer"])
    outs = generate(tiny_run, cache=True, max_new_tokens=7)
    banned = {tok.pad_id, tok.bos_id, tok.image_id, tok.eos_id, tok.eoc_id}
    for o in outs:
        assert len(o) <= 7
        assert not banned & set(o)


def test_a_prompt_that_fills_the_context_is_refused(tiny_run) -> None:
    tok = TextTokenizer(tiny_run["tokenizer"])
    with pytest.raises(ValueError, match="leaves no room to generate within max_length=10"):
        greedy(torch.nn.Identity(), tok, [[tok.bos_id] * 10], torch.zeros(0, 3, 8, 8), 10, 5)


@pytest.mark.multiprocess
def test_a_tp2_model_generates_what_one_process_generates(tiny_run, tmp_path: Path) -> None:
    """TP=2 (2 gloo processes, each caching its own heads) loads the 1-process checkpoint and writes the same."""
    out = tmp_path / "tp2.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
           str(tiny_run["root"]), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text()) == generate(tiny_run, cache=True)
