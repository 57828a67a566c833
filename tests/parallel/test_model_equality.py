"""Parallel layouts compute the same function and the same gradients as one process.

The single-process reference model is built and saved here (with ``checkpoint.save``); one
``torchrun --nproc-per-node 2`` run of ``_equality_worker.py`` then loads each checkpoint under
another layout and computes the same batch. Every job compares:
- the loss: the SUM of per-token losses (over the data-parallel ranks for EP, whose data-parallel
  size is 2: each rank takes half the sequences with their images);
- the logits (gathered over TP, concatenated over data-parallel ranks);
- every parameter's gradient: non-expert gradients summed over the data-parallel ranks; each expert's
  gradient from the rank that owns it (it has seen both ranks' tokens through the all-to-all);
  TP shards gathered along their ``partition_dim``.

Jobs: EP=2 vs EP=1 for a randomly initialised MoE model and for an upcycled one; TP=2 vs TP=1 for the
dense multimodal model with every registered connector. The EP jobs set the aux-loss coefficients
to 0: megatron computes the load-balancing loss from the current micro-batch's routing counts
(``router.py::_apply_aux_loss``, reduced over TP x CP only), so splitting a batch over
data-parallel ranks changes that loss by definition; tests/models/test_moe.py covers it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _equality_worker import forward_backward

from mm1.config import ModelConfig, ParallelConfig, load
from mm1.models.connector import CONNECTORS
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, upcycle
from tinykit import MICRO

pytestmark = pytest.mark.multiprocess

WORKER = Path(__file__).with_name("_equality_worker.py")
# Logits: max abs difference <= TOL. Gradients of the summed loss reach ~150 (a bias that sees every
# image token), where float32 rounding alone is ~3e-5: each gradient tensor must agree to
# TOL * max(1, its largest |value|), i.e. 1e-5 absolute for gradients up to 1, 1e-5 relative above.
TOL = 1e-5
LOSS_RTOL = 1e-6  # the summed loss is ~470, float32 rounding alone is ~3e-5 absolute
TINY = MICRO  # the 16 px ViT under a 2 x 32 decoder
NO_AUX = ["model.moe.aux_loss_coeff=0", "model.moe.z_loss_coeff=0"]
MOE = ["model.moe.num_experts=4", "model.moe.layer_freq=1", "model.moe.top_k=2", *NO_AUX]
UPCYCLED = ["model.moe.num_experts=4", "model.moe.layer_freq=2", "model.moe.top_k=2", *NO_AUX]
VOCAB, IMAGE_ID = 50, 3
# Images per sequence: two, one, none (text only), one. EP's rank 0 gets 3 images, rank 1 gets 1.
IMAGES_PER_SEQUENCE = [2, 1, 0, 1]
SLOTS = [[1, 12], [3], [], [15]]  # first <image> position of each image


def config(*overrides: str) -> ModelConfig:
    return load(None, [*TINY, *overrides]).model


def make_batch(cfg: ModelConfig) -> dict:
    g = torch.Generator().manual_seed(0)
    n, size = cfg.connector.num_tokens, cfg.encoder.image_size
    tokens = torch.randint(IMAGE_ID + 1, VOCAB, (len(SLOTS), cfg.decoder.seq_length), generator=g)
    for row, starts in enumerate(SLOTS):
        for s in starts:
            tokens[row, s : s + n] = IMAGE_ID
    return {
        "tokens": tokens,
        "labels": torch.randint(IMAGE_ID + 1, VOCAB, tokens.shape, generator=g),
        "images": torch.randn(sum(IMAGES_PER_SEQUENCE), 3, size, size, generator=g),
        "images_per_sequence": IMAGES_PER_SEQUENCE,
    }


def meta(cfg: ModelConfig) -> dict:
    return {"model": cfg.model_dump(mode="json"), "vocab_size": VOCAB, "image_token_id": IMAGE_ID}


def reference(ckpt: Path, batch: dict) -> dict:
    """Loss, logits and gradients of the checkpoint's model in one process (EP=1, TP=1)."""
    with distributed(ParallelConfig(), seed=0):
        m = checkpoint.read_meta(ckpt)
        model = MM1Model(m["model"], vocab_size=m["vocab_size"], image_token_id=m["image_token_id"])
        checkpoint.load_into(model, ckpt)
        out = forward_backward(model, batch)
        out["grads"] = {name: p.grad for name, p in model.named_parameters()}
    return out


def save_initial(cfg: ModelConfig, seed: int, ckpt: Path) -> Path:
    with distributed(ParallelConfig(), seed=seed):
        return checkpoint.save(MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID), meta(cfg), ckpt)


def torchrun(jobs: Path, timeout: int = 300) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER), str(jobs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:  # its stdout/stderr are bytes even with text=True
        out, errs = (x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (err.stdout, err.stderr))
        pytest.fail(
            f"equality worker hung for {timeout} s (a collective never matched?):\n{out[-3000:]}\n{errs[-3000:]}"
        )
    assert proc.returncode == 0, f"equality worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[dict, list[dict]]]:
    """name -> (single-process reference, [rank 0 output, rank 1 output]) for every job."""
    root = tmp_path_factory.mktemp("equality")
    moe_cfg = config(*MOE)
    batch = make_batch(moe_cfg)
    torch.save(batch, root / "batch.pt")
    ckpts = {"ep_moe": save_initial(moe_cfg, 1, root / "moe")}
    save_initial(config(), 2, root / "dense")
    ckpts["ep_upcycled"] = upcycle.upcycle_checkpoint(root / "dense", config(*UPCYCLED), root / "upcycled", seed=3)
    for kind in CONNECTORS:
        ckpts[f"tp_{kind}"] = save_initial(config(f"model.connector.kind={kind}"), 4, root / kind)
    jobs = [
        {
            "name": name,
            "ckpt": str(ckpt),
            "batch": str(root / "batch.pt"),
            "tp": 2 if name.startswith("tp_") else 1,
            "ep": 2 if name.startswith("ep_") else 1,
            "out": str(root / "out" / name),
        }
        for name, ckpt in ckpts.items()
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    refs = {name: reference(ckpt, batch) for name, ckpt in ckpts.items()}
    assert not torch.distributed.is_initialized()  # this process leaves no process group behind
    torchrun(root / "jobs.json")
    return {
        job["name"]: (refs[job["name"]], [torch.load(Path(job["out"]) / f"rank{r}.pt") for r in (0, 1)]) for job in jobs
    }


def max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    assert (a is None) == (b is None)
    return 0.0 if a is None else (a - b).abs().max().item()


def check(name: str, ref: dict, loss: torch.Tensor, logits: torch.Tensor, grads: dict) -> None:
    assert set(grads) == set(ref["grads"]), f"{name}: parameter names differ"
    assert abs(loss - ref["loss"]) <= LOSS_RTOL * abs(ref["loss"]), f"{name}: loss {loss} vs {ref['loss']}"
    assert logits.shape == ref["logits"].shape
    assert all(g is not None and g.abs().sum() > 0 for g in ref["grads"].values()), f"{name}: a zero gradient"
    diffs = {k: max_diff(grads[k], g) for k, g in ref["grads"].items()}
    scaled = {k: d / max(1.0, ref["grads"][k].abs().max().item()) for k, d in diffs.items()}
    worst, worst_scaled = max(diffs, key=diffs.get), max(scaled, key=scaled.get)
    logit_diff = max_diff(logits, ref["logits"])
    print(
        f"\n{name}: loss {loss.item():.6f} vs {ref['loss'].item():.6f} (diff {abs(loss - ref['loss']).item():.3g}); "
        f"max |logit diff| {logit_diff:.3g}; max |grad diff| {diffs[worst]:.3g} ({worst}); "
        f"max scaled grad diff {scaled[worst_scaled]:.3g} ({worst_scaled})"
    )
    assert logit_diff <= TOL, f"{name}: logits differ by {logit_diff:.3g}"
    assert scaled[worst_scaled] <= TOL, (
        f"{name}: gradient of {worst_scaled} differs by {diffs[worst_scaled]:.3g} "
        f"(largest |value| {ref['grads'][worst_scaled].abs().max().item():.3g})"
    )


@pytest.mark.parametrize("job", ["ep_moe", "ep_upcycled"])
def test_expert_parallel_matches_one_process(results, job) -> None:
    ref, ranks = results[job]
    owned = [set(r["experts"]) for r in ranks]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == {k for k in ref["grads"] if ".experts." in k}
    grads = {}
    for k in ref["grads"]:
        mine = [r["grads"][k] for r, names in zip(ranks, owned, strict=True) if k in names]
        grads[k] = mine[0] if mine else ranks[0]["grads"][k] + ranks[1]["grads"][k]
    loss = ranks[0]["loss"] + ranks[1]["loss"]
    check(job, ref, loss, torch.cat([ranks[0]["logits"], ranks[1]["logits"]]), grads)


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
def test_tensor_parallel_matches_one_process(results, kind) -> None:
    ref, ranks = results[f"tp_{kind}"]
    for r in ranks:  # both TP ranks hold the whole batch and, gathered, the same full gradients
        check(f"tp_{kind}", ref, r["loss"], r["logits"], r["grads"])
