"""The eval stage end to end on a tiny world: official prediction files, scores, averages, demos, SFT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from evalkit import config

from mm1.cli import main
from mm1.config import ParallelConfig, SFTConfig
from mm1.data.tokenizer import TextTokenizer
from mm1.eval import harness
from mm1.eval.benchmarks import Benchmark, load_benchmark
from mm1.eval.context import EvalContext
from mm1.eval.demos import demo_order
from mm1.eval.likelihood import Candidate, continuation_logprobs
from mm1.eval.scoring import score_captions, score_vqa
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint


@pytest.fixture(scope="module")
def pretrained(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-out")
    cfg = config("eval.shots=[0,2]")
    harness.evaluate(cfg.eval, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], out)
    return out


def test_predictions_are_official_files_that_rescore_to_the_table(tiny_run, pretrained: Path) -> None:
    scores = pl.read_csv(pretrained / "scores.csv")
    cfg = config()
    for spec in cfg.eval.benchmarks:
        for k in (0, 2):
            pred = pretrained / "predictions" / f"{spec.name}_{k}shot.json"
            entries = json.loads(pred.read_text())
            val = tiny_run["data"] / spec.val
            if spec.task == "captioning":
                assert set(entries[0]) == {"image_id", "caption"}
                again = score_captions(pred, val)["CIDEr"]
            else:
                assert set(entries[0]) == {"question_id", "answer"}
                again = score_vqa(pred, val, Path(str(val).replace("_questions", "_annotations")))["accuracy"]
            at = scores.filter((pl.col("benchmark") == spec.name) & (pl.col("shots") == k))
            row = at.filter(pl.col("metric") == ("CIDEr" if spec.task == "captioning" else "accuracy"))
            assert row["value"].item() == pytest.approx(again, abs=1e-9)
            assert row["n_examples"].item() == len(entries)
            assert row["template"].item() == getattr(cfg.eval, spec.task).template
            assert row["mean_shots"].item() + row["demos_dropped"].item() / len(entries) == pytest.approx(k)


def test_likelihood_scores_cover_every_val_item_and_their_files_rescore_to_the_table(tiny_run, pretrained) -> None:
    scores = pl.read_csv(pretrained / "scores.csv")
    for spec in config().eval.benchmarks:
        val = tiny_run["data"] / spec.val
        for k in (0, 2):
            at = {r["metric"]: r for r in scores.filter((pl.col("benchmark") == spec.name) & (pl.col("shots") == k))
                  .iter_rows(named=True)}  # fmt: skip
            control = (
                {"ref_nll_shuffled", "ref_prob_shuffled"} if spec.task == "captioning" else {"ll_accuracy_shuffled"}
            )
            assert set(at) & control == (control if k == 0 else set())  # the shuffled-image control: 0-shot only
            at = {m: r for m, r in at.items() if m not in control}
            if spec.task == "captioning":
                assert set(at) == {"CIDEr", "ref_nll", "ref_prob"}
                nll = json.loads((pretrained / "predictions" / f"{spec.name}_{k}shot_nll.json").read_text())
                assert len(nll) == at["ref_nll"]["n_examples"] == 6  # every val image
                assert np.mean([e["nll"] for e in nll]) == pytest.approx(at["ref_nll"]["value"])
                assert at["ref_prob"]["value"] == pytest.approx(100 * math.exp(-at["ref_nll"]["value"]))
            else:
                assert set(at) == {"accuracy", "ll_accuracy"}
                ranked = pretrained / "predictions" / f"{spec.name}_{k}shot_ll.json"
                again = score_vqa(ranked, val, Path(str(val).replace("_questions", "_annotations")))
                assert (
                    at["ll_accuracy"]["n_examples"]
                    == again["n_questions"]
                    == len(json.loads(val.read_text())["questions"])
                )
                assert at["ll_accuracy"]["value"] == pytest.approx(again["accuracy"], abs=1e-9)


def test_num_examples_limits_generation_only(tiny_run, tmp_path: Path) -> None:
    cfg = config("eval.shots=[0]", "eval.num_examples=4", "eval.textcore=null")
    cfg = cfg.eval.model_copy(update={"benchmarks": cfg.eval.benchmarks[3:4]})  # vqav2: 18 questions
    s = harness.evaluate(cfg, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path).scores
    assert dict(zip(s["metric"], s["n_examples"], strict=True)) == {"accuracy": 4, "ll_accuracy": 18,
                                                                     "ll_accuracy_shuffled": 18}  # fmt: skip
    assert len(json.loads((tmp_path / "predictions" / "vqav2_0shot.json").read_text())) == 4
    off = cfg.model_copy(update={"likelihood": False})
    r = harness.evaluate(off, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path / "off")
    assert r.scores["metric"].to_list() == ["accuracy"] and r.summary["vqa_ll"].is_null().all()
    assert not (tmp_path / "off" / "predictions" / "vqav2_0shot_ll.json").exists()


def test_summary_holds_the_paper_averages(pretrained: Path) -> None:
    scores = pl.read_csv(pretrained / "scores.csv")
    summary = pl.read_csv(pretrained / "summary.csv")
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert summary["shots"].to_list() == [0, 2]
    for row in summary.iter_rows(named=True):
        at = scores.filter(pl.col("shots") == row["shots"])
        cap = at.filter(pl.col("metric") == "CIDEr")["value"].to_list()
        vqa = at.filter((pl.col("task") == "vqa") & (pl.col("metric") == "accuracy"))["value"].to_list()
        assert (len(cap), len(vqa), row["n_benchmarks"]) == (3, 5, 8)
        assert row["captioning_avg"] == pytest.approx(np.mean(cap))
        assert row["vqa_avg"] == pytest.approx(np.mean(vqa))
        assert row["average"] == pytest.approx(np.mean(cap + vqa))
        cap_ll = at.filter(pl.col("metric") == "ref_prob")["value"].to_list()
        vqa_ll = at.filter(pl.col("metric") == "ll_accuracy")["value"].to_list()
        assert (len(cap_ll), len(vqa_ll)) == (3, 5)
        assert row["captioning_ll"] == pytest.approx(np.mean(cap_ll))
        assert row["vqa_ll"] == pytest.approx(np.mean(vqa_ll))
        assert row["average_ll"] == pytest.approx(np.mean(cap_ll + vqa_ll))
        shot = metrics[f"{row['shots']}shot"]
        assert shot["average"] == pytest.approx(row["average"])
        assert shot["average_ll"] == pytest.approx(row["average_ll"])
        assert shot["vqav2 ll"] == pytest.approx(vqa_ll[0]) and shot["coco ll"] == pytest.approx(cap_ll[0])
    textcore = scores.filter(pl.col("benchmark") == "textcore")
    assert textcore["n_examples"].item() == 12
    assert summary["textcore"][0] == pytest.approx(textcore["value"].item())
    kinds = scores.filter(pl.col("benchmark").str.starts_with("textcore/"))
    assert kinds["n_examples"].sum() == 12
    weighted = (kinds["value"] * kinds["n_examples"]).sum() / 12
    assert weighted == pytest.approx(textcore["value"].item())


def _context(run: dict[str, Path], **eval_overrides) -> EvalContext:
    cfg = config(*[f"eval.{k}={v}" for k, v in eval_overrides.items()])
    tok = TextTokenizer(run["tokenizer"])
    mc = checkpoint.read_meta(run["ckpt"])["model"]
    model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    checkpoint.load_into(model, run["ckpt"])
    return EvalContext(cfg.eval, None, model.eval(), mc, tok, torch.device("cpu"))


def test_random_demonstrations_are_seeded_distinct_and_shared_across_shot_counts(tiny_run) -> None:
    bench = load_benchmark(config().eval.benchmarks[3], tiny_run["data"], with_pool=True)  # vqav2
    with distributed(ParallelConfig(), seed=0):
        a = demo_order(_context(tiny_run, seed=0), bench, 4)
        b = demo_order(_context(tiny_run, seed=0), bench, 4)
        c = demo_order(_context(tiny_run, seed=1), bench, 4)
    assert a == b and a != c
    assert all(len(set(row)) == 4 for row in a)
    assert len({tuple(row) for row in a}) > 1  # each example draws its own


def test_rices_puts_the_most_similar_train_image_next_to_the_query(tiny_run) -> None:
    bench = load_benchmark(config().eval.benchmarks[0], tiny_run["data"], with_pool=True)  # coco
    planted = 3
    pool = list(bench.pool)
    pool[planted] = bench.items[0]  # the first query's own image is in the pool
    bench = Benchmark(bench.spec, bench.items, pool, bench.files)
    with distributed(ParallelConfig(), seed=0):
        order = demo_order(_context(tiny_run, demos="rices"), bench, 4)
    assert order[0][-1] == planted
    assert all(len(set(row)) == 4 for row in order)


def test_continuation_logprobs_equal_token_by_token_scoring(tiny_run) -> None:
    tok = TextTokenizer(tiny_run["tokenizer"])
    with distributed(ParallelConfig(), seed=0), torch.no_grad():
        ctx = _context(tiny_run)
        context, cont = [tok.bos_id] + tok.encode("Is 53 even or odd? 53 is"), tok.encode(" odd number")
        got = continuation_logprobs(ctx.model, tok, [Candidate(context, cont, [])], torch.zeros(0, 3, 32, 32), 160)[0]
        expected, seq = 0.0, list(context)
        for t in cont:  # one growing prefix at a time
            logits = ctx.model(torch.tensor([seq]), torch.zeros(0, 3, 32, 32))[0, -1, : tok.vocab_size].double()
            expected += float(torch.log_softmax(logits, -1)[t])
            seq.append(t)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got < 0


def test_sft_mode_is_zero_shot_with_multiple_choice(tiny_run, tmp_path: Path) -> None:
    cfg = config("eval.shots=[0,2]")
    result = harness.evaluate(cfg.eval, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path,
                              sft=SFTConfig(image_grid=2))  # fmt: skip
    s = result.scores
    assert set(s["shots"].to_list()) == {0}
    assert set(s["mode"].to_list()) == {"sft"}
    mc = s.filter(pl.col("benchmark") == "multiple_choice")
    assert mc["n_examples"].item() == 6 and 0 <= mc["value"].item() <= 100
    assert "textcore" not in s["benchmark"].to_list()
    assert "User: <image>" in s.filter(pl.col("benchmark") == "vqav2")["template"].item()
    assert (tmp_path / "predictions" / "okvqa_0shot.json").is_file()
    assert not math.isnan(result.summary["average"][0])
    assert set(s["metric"]) == {"CIDEr", "accuracy"}  # no likelihood scores of SFT checkpoints
    assert result.summary["average_ll"].is_null().all()


def test_a_benchmark_file_with_a_wrong_schema_is_named(tiny_run, tmp_path: Path) -> None:
    bad = tmp_path / "captions_val.json"
    bad.write_text(json.dumps({"images": [], "captions": []}))
    spec = {"name": "broken", "task": "captioning", "val": str(bad)}
    cfg = config().eval.model_validate({"benchmarks": [spec], "shots": [0]})
    with pytest.raises(ValueError, match=rf"{bad}: not a COCO caption file"):
        harness.evaluate(cfg, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path / "o")
    missing = {"name": "gone", "task": "vqa", "val": "benchmarks/none/q.json"}
    cfg = config().eval.model_validate({"benchmarks": [missing], "shots": [0]})
    with pytest.raises(FileNotFoundError, match=r"eval.benchmarks\[gone\].val: .*q.json does not exist"):
        harness.evaluate(cfg, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path / "o")


def test_score_commands_print_json_and_name_missing_ids(tiny_run, pretrained: Path, tmp_path: Path, capsys) -> None:
    refs = tiny_run["data"] / "benchmarks/coco/captions_val.json"
    pred = pretrained / "predictions" / "coco_0shot.json"
    assert main(["eval", "score-captions", "--pred", str(pred), "--refs", str(refs)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_images"] == 6 and "per_image" not in printed
    q = tiny_run["data"] / "benchmarks/gqa/gqa_val_questions.json"
    a = tiny_run["data"] / "benchmarks/gqa/gqa_val_annotations.json"
    short = tmp_path / "short.json"
    short.write_text(json.dumps(json.loads((pretrained / "predictions" / "gqa_0shot.json").read_text())[1:]))
    assert main(["eval", "score-vqa", "--pred", str(short), "--questions", str(q), "--annotations", str(a)]) == 1
    err = capsys.readouterr().err
    assert str(short) in err and "missing" in err
