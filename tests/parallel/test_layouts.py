"""Parallel layouts train the same model.

Every layout draws the same initial weights (mm1.models.init), so each 2-process layout reproduces
its 1-process loss curve step by step: TP=2, DP=2 with the distributed optimizer (ZeRO-1 sharded
Adam state), PP=2, and EP=2 for the MoE decoder. Model checkpoints reshard both ways: TP=2, PP=2
and EP=2 checkpoints caption in one process like their 1-process twins, and a 1-process checkpoint
loaded into TP=2 and PP=2 models gives the 1-process loss on a batch.

This file is also the checkpoint-load worker (``python test_layouts.py CKPT PACKED TP PP OUT``,
under torchrun for 2 processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest
import torch

from mm1.config import ParallelConfig
from mm1.data.batches import PackedData, micro_batches
from mm1.models.megatron_config import MegatronLayout
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint
from tinykit import TESTS, TINY, tiny

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

pytestmark = pytest.mark.multiprocess

STEPS = tiny().train.steps
# MoE's load-balancing and z losses are computed per micro-batch (megatron router.py::_apply_aux_loss),
# so EP=2, which splits the batch over data-parallel ranks, changes them by definition; at 0 the
# gradients of EP=2 and one process are the same function of the same tokens.
MOE = ["model.moe.num_experts=4", "model.moe.layer_freq=1", "model.moe.aux_loss_coeff=0", "model.moe.z_loss_coeff=0"]
LAYOUTS = {
    "tp1": [],
    "tp1_again": [],  # the same config once more: the loss curve must repeat exactly
    "tp2": ["parallel.world_size=2", "parallel.tp=2"],
    # Each rank holds and updates half of the fp32 Adam state; gradients reduce-scatter, weights all-gather.
    "dp2": ["parallel.world_size=2", "parallel.distributed_optimizer=true"],
    # Two pipeline stages: the ViT, connector and layer 1 on rank 0, layer 2 and the LM head on rank 1.
    "pp2": ["parallel.world_size=2", "parallel.pp=2"],
    "moe": MOE,
    # Experts 0-1 on rank 0, 2-3 on rank 1: the all-to-all token dispatcher on gloo (compat patches 4-6).
    "ep2": ["parallel.world_size=2", "parallel.ep=2", *MOE],
}
BASELINE = {"tp2": "tp1", "dp2": "tp1", "pp2": "tp1", "ep2": "moe"}  # layout -> its 1-process run
# Relative loss difference allowed per step: float32 sums in another order (TP's split matmuls,
# DP's all-reduce, EP's all-to-all) differ by ~1e-7 relative per op; 1e-4 leaves room over 6 steps.
RTOL = 1e-4
LOAD_RTOL = 1e-5  # a forward pass with the same weights: no optimizer steps to amplify rounding


def mm1(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the mm1 CLI; a hang (e.g. a collective never matched) fails after ``timeout`` s."""
    return run(["mm1", *args], timeout)


def run(cmd: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-3000:], (e.stderr or b"")[-3000:]
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (a collective never matched?):\n{out}")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory) -> dict[str, Path]:
    """The shared tiny world (its packed sequences: the 6 x 8 every layout trains on), and a folder
    of this module's own for the runs' outputs (``root``)."""
    return {**tiny_world, "root": tmp_path_factory.mktemp("layouts")}


@pytest.fixture(scope="module")
def runs(world) -> dict[str, Path]:
    """Train every layout of LAYOUTS on the same data; {layout: its output folder}."""
    out = {}
    for name, layout in LAYOUTS.items():
        out[name] = world["root"] / name
        sets = [arg for s in TINY + layout for arg in ("--set", s)]
        mm1(
            [
                "train",
                "--packed",
                str(world["packed"]),
                "--tokenizer",
                str(world["tokenizer"]),
                "--out",
                str(out[name]),
                *sets,
            ]
        )
    return out


def losses(run: Path) -> list[float]:
    return pl.read_csv(run / "metrics.csv")["loss"].to_list()


def test_same_config_gives_the_same_loss_curve(runs):
    first = pl.read_csv(runs["tp1"] / "metrics.csv")
    again = pl.read_csv(runs["tp1_again"] / "metrics.csv")
    assert first["loss"].to_list() == again["loss"].to_list()
    assert first["grad_norm"].to_list() == again["grad_norm"].to_list()


@pytest.mark.parametrize("layout", ["tp2", "dp2", "pp2", "ep2"])
def test_layout_reproduces_single_process_losses(runs, layout):
    base, other = losses(runs[BASELINE[layout]]), losses(runs[layout])
    assert len(base) == len(other) == STEPS
    assert base[-1] < base[0]
    for step, (a, b) in enumerate(zip(base, other, strict=True), start=1):
        assert abs(a - b) <= RTOL * abs(a), f"step {step}: {BASELINE[layout]} loss {a} vs {layout} loss {b}"
    prov = json.loads((runs[layout] / "provenance.json").read_text())
    assert prov["layout"]["world_size"] == 2
    meta = json.loads((runs[layout] / "checkpoint" / "model.json").read_text())
    sizes = {"tp": 1, "pp": 1, "ep": 1}
    assert meta["trained_layout"] == (sizes if layout == "dp2" else {**sizes, layout[:2]: 2})


def captions_of(world, ckpt: Path, out: Path) -> list[str]:
    """Greedy 0-shot captions of the test images by a checkpoint, evaluated in one process."""
    only_coco = {
        "benchmarks": [{"name": "coco", "task": "captioning", "val": str(world["benchmark"])}],
        "shots": [0],
        "textcore": None,
        "captioning": {"template": "<image>{caption}<eoc>", "max_new_tokens": 6},
    }
    mm1(
        ["eval", "run", "--data", str(world["benchmark"].parent), "--tokenizer", str(world["tokenizer"])]
        + ["--checkpoint", str(ckpt), "--out", str(out), "--config-json", json.dumps({"eval": only_coco})]
    )
    return [p["caption"] for p in json.loads((out / "predictions" / "coco_0shot.json").read_text())]


@pytest.fixture(scope="module")
def captions(world, runs):
    """captions(run name) -> its checkpoint's captions, each run evaluated once."""
    cache: dict[str, list[str]] = {}

    def of(name: str) -> list[str]:
        if name not in cache:
            cache[name] = captions_of(world, runs[name] / "checkpoint", world["root"] / f"eval-{name}")
        return cache[name]

    return of


@pytest.mark.parametrize("layout", ["tp2", "pp2", "ep2"])
def test_checkpoint_reshards_to_one_process_for_eval(captions, layout):
    """A 2-process checkpoint captions in one process like the 1-process run's checkpoint."""
    ref = captions(BASELINE[layout])
    assert len(ref) == 8
    assert captions(layout) == ref


# --- a 1-process checkpoint loaded into 2-process models ------------------------------------------


def _forward_step(data_iterator, model):
    batch = next(data_iterator)

    def loss_func(per_token: torch.Tensor):
        mask = batch["loss_mask"]
        total = (per_token.float() * mask).sum()
        return total, mask.sum().to(torch.int), {"sum": torch.stack([total.detach(), mask.sum()])}

    return model(batch["tokens"], batch["images"], batch["labels"]), loss_func


def load_and_evaluate(ckpt: Path, packed: Path, tp: int, pp: int, out: Path) -> None:
    """Load ``ckpt`` into the model of a TP x PP layout; write the mean caption-token loss of the
    first optimizer step's 8 sequences (2 micro-batches through megatron's schedule) to ``out``."""
    meta = checkpoint.read_meta(ckpt)
    mc = meta["model"]
    with distributed(ParallelConfig(world_size=tp * pp, tp=tp, pp=pp), seed=0) as rank:
        model = MM1Model(
            mc,
            vocab_size=meta["vocab_size"],
            image_token_id=meta["image_token_id"],
            layout=MegatronLayout(tp=tp, pp=pp),
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        checkpoint.load_into(model, ckpt)
        model.eval()
        data = PackedData.load(packed, mc.decoder.seq_length, mc.encoder.image_size)
        reports = get_forward_backward_func()(
            forward_step_func=_forward_step,
            data_iterator=micro_batches(data, 0, 8, 4, rank.dp_rank, rank.dp_size),
            model=[model],
            num_microbatches=2,
            seq_length=mc.decoder.seq_length,
            micro_batch_size=4,
            forward_only=True,
        )
        stats = sum((r["sum"].double() for r in reports), torch.zeros(2, dtype=torch.float64))
        torch.distributed.all_reduce(stats)  # the last stage's sums; its TP ranks all hold them
        stats /= tp
        if rank.is_main:
            out.write_text(json.dumps({"loss": (stats[0] / stats[1]).item()}))


def loss_under(world, ckpt: Path, tp: int, pp: int) -> float:
    """The worker's loss for ``ckpt`` under TP x PP (one plain process, or torchrun)."""
    out = world["root"] / f"load-tp{tp}-pp{pp}.json"
    n = tp * pp
    launch = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += [f"--nproc-per-node={n}"] if n > 1 else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}  # tinykit
    run([*launch, __file__, str(ckpt), str(world["packed"]), str(tp), str(pp), str(out)], timeout=300, env=env)
    return json.loads(out.read_text())["loss"]


@pytest.fixture(scope="module")
def one_process_loss(world, runs) -> float:
    return loss_under(world, runs["tp1"] / "checkpoint", 1, 1)


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_one_process_checkpoint_loads_into_two_process_layouts(world, runs, one_process_loss, tp, pp):
    other = loss_under(world, runs["tp1"] / "checkpoint", tp, pp)
    ref = one_process_loss
    assert abs(other - ref) <= LOAD_RTOL * ref, f"TP={tp} PP={pp} loss {other} vs one process {ref}"


if __name__ == "__main__":  # the load worker; megatron's checkpoint code re-imports __main__
    ckpt_, packed_, tp_, pp_, out_ = sys.argv[1:]
    load_and_evaluate(Path(ckpt_), Path(packed_), int(tp_), int(pp_), Path(out_))
