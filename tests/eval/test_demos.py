"""RICES with a fixed encoder (issue 26 item 5): every evaluated model gets the same demonstrations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from evalkit import config, make_checkpoint

from mm1.config import ParallelConfig
from mm1.data.tokenizer import TextTokenizer
from mm1.eval import harness
from mm1.eval.benchmarks import Benchmark, load_benchmark
from mm1.eval.context import EvalContext
from mm1.eval.demos import demo_order, load_fixed_encoder
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint


@pytest.fixture(scope="module")
def other_ckpts(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """Two more tiny checkpoints: another init (seed 1), and one whose encoder reads 24 px images."""
    root = tmp_path_factory.mktemp("demos")
    return {
        "seed1": make_checkpoint(tiny_run, root / "seed1", seed=1),
        "px24": make_checkpoint(tiny_run, root / "px24", "model.encoder.image_size=24", seed=2),
    }


def _context(ckpt: Path, tokenizer: Path) -> EvalContext:
    cfg = config("eval.demos=rices")
    tok = TextTokenizer(tokenizer)
    mc = checkpoint.read_meta(ckpt)["model"]
    model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    checkpoint.load_into(model, ckpt)
    return EvalContext(cfg.eval, None, model.eval(), mc, tok, torch.device("cpu"))


def _coco(tiny_run) -> Benchmark:
    return load_benchmark(config().eval.benchmarks[0], tiny_run["data"], with_pool=True)


def test_a_fixed_encoder_gives_every_model_the_same_demonstrations(tiny_run, other_ckpts) -> None:
    bench = _coco(tiny_run)
    with distributed(ParallelConfig(), seed=0):
        a, b = _context(tiny_run["ckpt"], tiny_run["tokenizer"]), _context(other_ckpts["seed1"], tiny_run["tokenizer"])
        own_a, own_b = demo_order(a, bench, 4), demo_order(b, bench, 4)
        fixed = load_fixed_encoder(other_ckpts["px24"], torch.device("cpu"))
        fixed_a, fixed_b = demo_order(a, bench, 4, fixed), demo_order(b, bench, 4, fixed)
        # the fixed encoder is that checkpoint's own: ranking with it equals that model's own RICES
        c = _context(other_ckpts["px24"], tiny_run["tokenizer"])
        own_c = demo_order(c, bench, 4)
    assert own_a != own_b  # each model's own encoder picks its own demonstrations...
    assert fixed_a == fixed_b == own_c  # ...a fixed one gives both the same, the checkpoint's own
    assert fixed.cfg.image_size == 24  # features at the fixed encoder's own resolution
    assert all(len(set(row)) == 4 for row in fixed_a)


def test_the_fixed_encoder_puts_the_query_image_next_to_the_query(tiny_run, other_ckpts) -> None:
    bench = _coco(tiny_run)
    pool = list(bench.pool)
    pool[5] = bench.items[1]  # the second query's own image is in the pool
    bench = Benchmark(bench.spec, bench.items, pool, bench.files)
    with distributed(ParallelConfig(), seed=0):
        ctx = _context(tiny_run["ckpt"], tiny_run["tokenizer"])
        order = demo_order(ctx, bench, 3, load_fixed_encoder(other_ckpts["px24"], torch.device("cpu")))
    assert order[1][-1] == 5


def test_rices_encoder_errors_name_the_field(tiny_run, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval.rices_encoder is set .* eval.demos is 'random'"):
        config(f"eval.rices_encoder={tmp_path}")
    with pytest.raises(ValueError, match=r"eval.rices_encoder .*missing does not exist"):
        load_fixed_encoder(tmp_path / "missing", torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="not an mm1 checkpoint"):
        load_fixed_encoder(tmp_path, torch.device("cpu"))


def test_evaluation_with_a_fixed_encoder_records_it(tiny_run, other_ckpts, tmp_path: Path) -> None:
    coco = config().eval.benchmarks[0]
    cfg = config(
        "eval.demos=rices", f"eval.rices_encoder={other_ckpts['px24']}", "eval.shots=[0,2]", "eval.num_examples=2",
        "eval.likelihood=false", "eval.textcore=null",
    ).eval.model_copy(update={"benchmarks": (coco,)})  # fmt: skip
    harness.evaluate(cfg, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path)
    inputs = json.loads((tmp_path / "provenance.json").read_text())["inputs"]
    assert "rices_encoder" in inputs
    assert (tmp_path / "predictions" / "coco_2shot.json").is_file()
