"""bench/gpu_mfu.py and bench/gpu_check.sh: the GPU MFU benchmark and the GPU checks it runs with.

On CPU (seconds): ``gpu_mfu.py --dry-run`` writes the results contract with the full-size FLOPs,
parameters and planned micro-batches, and runs a tiny model through the same code; MFU arithmetic;
the peak table; ``bash -n bench/gpu_check.sh``.

On a GPU (marked ``gpu``, skipped without CUDA; ``bash bench/gpu_check.sh`` runs them): the model
the benchmark times computes, with megatron unpatched (mm1.parallel.compat off) on CUDA, what the
CPU-tested model computes, and TP=2 / EP=2 on CUDA tensors give the one-process result. On a
machine with ONE GPU the two ranks share it: NCCL refuses two ranks on one device ("Duplicate GPU
detected"), so those two run their collectives over gloo (which stages CUDA tensors through host
memory), with both ranks on cuda:0. PP=2 is not covered on one GPU: megatron's batched p2p needs
NCCL, and gloo would need the CPU-only flags of mm1.models.megatron_config.required_flags. The one-process check runs
NCCL (a group of one).

This file is also the GPU workers: ``python test_gpu_mfu.py one OUT`` (one process on whatever
device torch sees) and ``torchrun --nproc-per-node 2 test_gpu_mfu.py two tp2|ep2 OUT``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm1.config import ParallelConfig
from mm1.plan.estimate import DEFAULT_MFU, LEVERS, measured_mfu, read_mfu_results

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_mfu.py"
CHECK = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "tests" / "parallel"))  # _equality_worker, test_model_equality: shared helpers

CHEAP_LEVERS = ("recompute", "fusions", "attention_backend")  # the dry run's: compile_layers costs a CPU compile
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_mfu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_mfu") / "gpu_mfu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--levers", ",".join(CHEAP_LEVERS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


# --- CPU ---------------------------------------------------------------------------------------


def test_dry_run_writes_the_results_contract(dry_run):
    assert dry_run["benchmark"] == "gpu_mfu" and dry_run["dry_run"] is True
    for key in ("created", "machine", "packages", "results", "headline"):
        assert key in dry_run
    assert dry_run["packages"]["megatron-core"] == "0.16.1"
    assert dry_run["setup"]["layer_spec"]["decoder"] == "local"  # no CUDA: never Transformer Engine
    for row in dry_run["headline"]:
        assert set(row) == {"name", "value", "unit", "baseline", "ratio", "goal", "met"}
        assert row["value"] is None and row["met"] is None  # nothing measured on a GPU
    assert dry_run["headline"][0]["goal"] == "≥ 50%"
    assert dry_run["results"]["status"] == "done"


def test_dry_run_counts_the_full_model(dry_run):
    target = dry_run["results"]["target"]
    assert (target["seq_length"], target["image_tokens"], target["images_per_sequence"]) == (4096, 144, 16)
    params = target["parameters"]
    assert params["total"] == 1_554_644_480 == params["encoder"] + params["connector"] + params["decoder"]
    for scope in ("per_sequence", "per_step"):
        f = target["flops"][scope]
        assert f["encoder"] + f["connector"] + f["decoder"] == pytest.approx(f["forward"], rel=1e-12)
        assert f["total"] == pytest.approx(3 * f["forward"], rel=1e-12)
    assert target["flops"]["per_step"]["total"] == pytest.approx(16 * target["flops"]["per_sequence"]["total"])
    # 1.2B decoder: ~6 N per token of 4096 plus attention; ViT-L per image ~2 x 0.3B x 577 forward
    assert 5.0e13 < target["flops"]["per_sequence"]["total"] < 6.0e13  # the preset: 2.81e16 per 512
    # mm1.plan (H100 measurement: micro-batch 2 fits, 4 does not)
    h100 = target["planned_micro_batches"]["h100-80gb"]
    assert h100["none"]["largest"] == h100["selective"]["largest"] == 2
    assert target["planned_micro_batches"]["h200-141gb"]["none"]["largest"] >= 1


def test_dry_run_runs_the_tiny_model_through_the_search(dry_run):
    run = dry_run["results"]["run"]
    assert run["scale"].startswith("tiny")
    assert [t["micro_batch"] for t in run["search"]] == [1, 2] and all(t["fits"] for t in run["search"])
    levers_off = {"fusions": False, "attention_backend": "auto", "compile_layers": False}  # the defaults
    assert run["chosen"] == {"recompute": "none", "micro_batch": 2, "accumulation": 8, **levers_off}
    assert run["step_time_s"] > 0 and all(map(lambda x: x == x, run["losses"]))  # finite, not NaN
    f = run["flops"]["per_step"]
    assert f["encoder"] + f["connector"] + f["decoder"] == pytest.approx(f["forward"])
    assert run["tflops"] == pytest.approx(f["total"] / run["step_time_s"] / 1e12)
    assert run["mfu"] is None  # a CPU has no BF16 tensor-core peak


def test_mfu_arithmetic(bench):
    assert bench.mfu(989e12, 2.0, 989.0) == pytest.approx(0.5)
    cfg = bench.bench_config()
    total = bench.flops(cfg)["per_step"]["total"]

    class Args:
        dry_run, warmup, steps = False, 2, 5

    seconds = total / 520e12  # 520 TFLOP/s achieved
    data = bench.report(Args, {}, (cfg, {"step_time_s": seconds}), "done", 790.0, 989.0)
    assert data["results"]["run"]["tflops"] == pytest.approx(520.0)
    assert data["results"]["run"]["mfu"] == pytest.approx(520 / 989)
    mfu_row, tflops_row = data["headline"]
    assert mfu_row["value"] == pytest.approx(100 * 520 / 989) and mfu_row["met"] is True
    assert mfu_row["ratio"] == pytest.approx(520 / 989 / DEFAULT_MFU)  # against the planner's assumed MFU
    assert tflops_row["ratio"] == pytest.approx(520 / 790) and tflops_row["met"] is True
    slow = bench.report(Args, {}, (cfg, {"step_time_s": 2 * seconds}), "done", 790.0, 989.0)
    assert slow["headline"][0]["met"] is False


def test_dry_run_times_the_levers_at_the_same_shapes(dry_run):
    rows = {row["lever"]: row for row in dry_run["results"]["levers"]}
    assert list(rows) == list(CHEAP_LEVERS)
    base = dry_run["results"]["run"]["chosen"]
    for row in rows.values():
        for side in ("off", "on"):
            chosen = row[side]["chosen"]
            assert (chosen["micro_batch"], chosen["accumulation"]) == (base["micro_batch"], base["accumulation"])
            assert row[side]["step_time_s"] > 0 and row[side]["mfu"] is None  # no peak on a CPU
        assert row["speedup"] == pytest.approx(row["off"]["step_time_s"] / row["on"]["step_time_s"])
    assert rows["recompute"]["off"]["chosen"]["recompute"] == "selective" and rows["recompute"]["on"]["reused"]
    assert rows["fusions"]["on"]["chosen"]["fusions"] is True and rows["fusions"]["off"]["reused"]
    assert rows["attention_backend"]["on"]["chosen"]["attention_backend"] == "cudnn"
    # a lever changes speed, never the numbers: the freshly built sides (the timed run's model has taken
    # the search's steps first) give the same losses; on CPU fusions and cuDNN are ignored
    fresh = [rows["recompute"]["off"], rows["fusions"]["on"], rows["attention_backend"]["on"]]
    for other in fresh[1:]:
        assert other["losses"] == pytest.approx(fresh[0]["losses"], rel=1e-6)


def test_lever_flags_parse(bench):
    assert bench.parse_levers("all") == ["recompute", "fusions", "attention_backend", "compile_layers", "all"]
    assert bench.parse_levers("") == []
    assert bench.parse_levers("fusions, compile_layers") == ["fusions", "compile_layers"]
    with pytest.raises(SystemExit, match=r"unknown \['tf32'\]"):
        bench.parse_levers("fusions,tf32")
    for name in LEVERS:  # every lever of parallel.*: measured alone and in the all-on row
        assert name in bench.LEVERS and any(name in flag for flag in bench.LEVERS["all"][1])


def test_every_lever_reaches_the_json_and_the_planner(bench):
    cfg = bench.bench_config(2)
    total = bench.flops(cfg)["per_step"]["total"]

    class Args:
        dry_run, warmup, steps = False, 2, 5

    def side(extra, tflops):
        return {"chosen": bench.chosen(bench.lever_config(cfg, extra, [])), "step_time_s": total / (tflops * 1e12)}

    run = side([], 400.0)
    rows = [
        {"lever": name, "off": side(off, 400.0), "on": side(on, 400.0 + 10 * (i + 1))}
        for i, (name, (off, on)) in enumerate(bench.LEVERS.items())
    ]
    rows[3]["on"] = {"chosen": rows[3]["on"]["chosen"], "not_measured": "the time budget is spent"}
    data = bench.report(Args, {}, (cfg, run, rows), "done", 790.0, 989.0)
    levers = {row["lever"]: row for row in data["results"]["levers"]}
    assert list(levers) == list(bench.LEVERS)
    assert levers["fusions"]["on"]["mfu"] == pytest.approx(420 / 989)
    assert levers["fusions"]["speedup"] == pytest.approx(420 / 400)
    assert levers["compile_layers"]["on"]["mfu"] is None and levers["compile_layers"]["speedup"] is None
    rows_out = data["headline"][2:]
    assert len(rows_out) == len(bench.LEVERS) and rows_out[1]["ratio"] == pytest.approx(420 / 400)
    assert rows_out[1]["met"] is True and rows_out[3]["met"] is None
    # the planner reads it back: the MFU measured with the levers (and recompute) a config states
    data["machine"]["device"] = {"name": "NVIDIA H100 80GB HBM3"}
    assert measured_mfu([data], ParallelConfig()) == pytest.approx(400 / 989)
    assert measured_mfu([data], ParallelConfig(fusions=True)) == pytest.approx(420 / 989)
    every = ParallelConfig(fusions=True, attention_backend="cudnn", compile_layers=True)
    assert measured_mfu([data], every) == pytest.approx(450 / 989)
    assert measured_mfu([data], ParallelConfig(compile_layers=True)) is None  # not measured
    assert measured_mfu([data], ParallelConfig(), device="A100") is None


def test_the_planner_reads_the_committed_h100_measurements():
    results = read_mfu_results(ROOT / "bench" / "results")  # runs from before --levers: every lever off
    none = measured_mfu(results, ParallelConfig())
    assert none == pytest.approx(ParallelConfig().plan_mfu, abs=0.005)  # the planner's default is that run
    selective = measured_mfu(results, ParallelConfig(recompute="selective"))
    assert selective > none  # micro-batch 2 under selective recomputation beat micro-batch 1 without


def test_peak_table(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("Tesla T4") is None


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- GPU: the timed model is the tested model --------------------------------------------------

TOL_DEVICES = 1e-4  # CUDA vs CPU float32 (TF32 off): other kernels, other summation orders


def worker(*args: str, env: dict | None = None, nproc: int = 1, timeout: int = 300) -> None:
    launch = [sys.executable]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*launch, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict]:
    """{"cpu"|"cuda": {model: outputs}}: the CPU run with CUDA hidden (compat on, gloo), the CUDA run
    with megatron unpatched (NCCL, a group of one)."""
    root = tmp_path_factory.mktemp("gpu_equality")
    worker("one", str(root / "cpu.pt"), env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    worker("one", str(root / "cuda.pt"), env=dict(os.environ))
    return {d: torch.load(root / f"{d}.pt") for d in ("cpu", "cuda")}


@gpu
@needs_cuda
@pytest.mark.parametrize("model", ["dense", "moe"])
def test_cuda_model_matches_the_cpu_model(one_process, model):
    ref, got = one_process["cpu"][model], one_process["cuda"][model]
    assert got["device"].startswith("cuda") and ref["device"] == "cpu"
    assert abs(got["loss"] - ref["loss"]) <= TOL_DEVICES * abs(ref["loss"])
    assert (got["logits"] - ref["logits"]).abs().max() <= TOL_DEVICES * max(1.0, ref["logits"].abs().max())
    for name, g in ref["grads"].items():
        diff = (got["grads"][name] - g).abs().max().item()
        assert diff <= TOL_DEVICES * max(1.0, g.abs().max().item()), f"{model}: {name} differs by {diff:.3g}"


@gpu
@needs_cuda
@pytest.mark.parametrize("job", ["tp2", "ep2"])
def test_two_ranks_on_cuda_match_one_process(one_process, tmp_path, job):
    from test_model_equality import check

    worker("two", job, str(tmp_path), nproc=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    ref = one_process["cuda"]["dense" if job == "tp2" else "moe"]
    assert all(r["device"].startswith("cuda") for r in ranks)
    if job == "tp2":  # both TP ranks hold the whole batch and, gathered, the full gradients
        for r in ranks:
            check(job, ref, r["loss"], r["logits"], r["grads"])
        return
    owned = [set(r["experts"]) for r in ranks]  # EP: each rank's experts saw both ranks' tokens
    grads = {}
    for k in ref["grads"]:
        mine = [r["grads"][k] for r, names in zip(ranks, owned, strict=True) if k in names]
        grads[k] = mine[0] if mine else ranks[0]["grads"][k] + ranks[1]["grads"][k]
    check(job, ref, ranks[0]["loss"] + ranks[1]["loss"], torch.cat([r["logits"] for r in ranks]), grads)


# --- the workers ---------------------------------------------------------------------------------

SEED = 5


def _models() -> dict:
    from test_model_equality import MOE, config

    return {"dense": config("model.connector.kind=c_abstractor"), "moe": config(*MOE)}


def _outputs(model, batch: dict, device: torch.device) -> dict:
    from _equality_worker import forward_backward

    out = forward_backward(model.to(device), {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
    return {**out, "device": str(device)}


def _cpu(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    return value


def run_one(out: Path) -> None:
    """Both tiny models in one process on the device torch sees, float32 without TF32."""
    from test_model_equality import IMAGE_ID, VOCAB, make_batch

    from mm1.config import ParallelConfig
    from mm1.models.init import init_weights
    from mm1.models.mm1_model import MM1Model
    from mm1.parallel.setup import distributed

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    results = {}
    with distributed(ParallelConfig(), seed=0) as rank:
        for name, cfg in _models().items():
            model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID)
            init_weights(model, SEED)
            results[name] = _outputs(model, make_batch(cfg), rank.device)
            results[name]["grads"] = {n: p.grad for n, p in model.named_parameters()}
    torch.save(_cpu(results), out)


def run_two(job: str, out: Path) -> None:
    """TP=2 (dense) or EP=2 (MoE) over two ranks on the ONE GPU: collectives over gloo."""
    from _equality_worker import _gather_tp, full_grads, share
    from test_model_equality import IMAGE_ID, VOCAB, make_batch

    from mm1.config import ParallelConfig
    from mm1.models.init import init_weights
    from mm1.models.megatron_config import MegatronLayout
    from mm1.models.mm1_model import MM1Model
    from mm1.parallel.setup import distributed

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    os.environ["LOCAL_RANK"] = "0"  # both ranks on cuda:0 (mm1.parallel.setup sets the device from it)
    tp, ep = (2, 1) if job == "tp2" else (1, 2)
    cfg = _models()["dense" if job == "tp2" else "moe"]
    parallel = ParallelConfig(world_size=2, tp=tp, ep=ep, backend="gloo")
    with distributed(parallel, seed=0) as rank:
        model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID, layout=MegatronLayout(tp=tp, ep=ep))
        init_weights(model, SEED)  # the full tensors do not depend on the layout
        result = _outputs(model, share(make_batch(cfg), rank.dp_rank, rank.dp_size), rank.device)
        result["logits"] = torch.cat(_gather_tp(result["logits"], -1), dim=-1)
        result["grads"], result["experts"] = full_grads(model)
        torch.save(_cpu(result), out / f"rank{rank.rank}.pt")


if __name__ == "__main__":  # the workers; megatron re-imports __main__
    if sys.argv[1] == "one":
        run_one(Path(sys.argv[2]))
    else:
        run_two(sys.argv[2], Path(sys.argv[3]))
