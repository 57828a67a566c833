"""Likelihood scores: the shared-prefix scorer against row-by-row scoring, and the VQA ranking and
captioning NLL on cases worked by hand (a fake scorer with known log-probabilities)."""

from __future__ import annotations

import math

import pytest
import torch
from evalkit import config

from mm1.config import ParallelConfig
from mm1.config.eval import BenchmarkSpec
from mm1.data.tokenizer import TextTokenizer
from mm1.eval import harness, ll_scores
from mm1.eval.benchmarks import Benchmark, Item
from mm1.eval.likelihood import Candidate, continuation_logprobs, prefix_logprobs
from mm1.eval.prompts import Template
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint


@pytest.fixture(scope="module")
def ctx(tiny_run) -> harness._Context:
    tok = TextTokenizer(tiny_run["tokenizer"])
    mc = checkpoint.read_meta(tiny_run["ckpt"])["model"]
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, tiny_run["ckpt"])
        yield harness._Context(config().eval, None, model.eval(), mc, tok, torch.device("cpu"))


def test_prefix_scoring_both_ways_equals_scoring_each_continuation_on_its_own(ctx) -> None:
    tok = ctx.tok
    n = ctx.mc.connector.num_tokens
    context = [tok.bos_id] + [tok.image_id] * n + tok.encode("Question: what colour? Answer: red\n")
    context += [tok.image_id] * n + tok.encode("Question: what shape? Answer:")
    conts = [tok.encode(" circle\n"), [tok.eoc_id], tok.encode(" a very big blue square\n"), tok.encode(" no\n")]
    images = torch.rand(2, 3, ctx.image_size, ctx.image_size, generator=torch.Generator().manual_seed(0))
    alone = continuation_logprobs(ctx.model, tok, [Candidate(context, c, []) for c in conts],
                                  torch.cat([images] * len(conts)), ctx.max_length)  # fmt: skip
    for method in ("cache", "rows"):
        got = prefix_logprobs(ctx.model, tok, context, images, conts, ctx.max_length, method=method)
        assert [len(g) for g in got] == [len(c) for c in conts]
        assert [sum(g) for g in got] == pytest.approx(alone, rel=1e-4)
        assert all(lp < 0 for g in got for lp in g)


def _image(tiny_run) -> bytes:
    return next((tiny_run["data"] / "benchmarks/vqav2/images/val").iterdir()).read_bytes()


def _vqa(item_id: int, kind: str, answers: list[str], image: bytes) -> Item:
    return Item(item_id, item_id, image, f"question {item_id}?", tuple(answers), "other", kind)


class FakeScorer:
    """Each continuation's tokens share the total log-probability given for its token ids (a
    continuation not listed fails the test); records what it was asked."""

    def __init__(self, totals: dict[tuple[int, ...], float]) -> None:
        self.totals, self.calls = totals, []

    def __call__(self, model, tok, context, images, continuations, max_length):
        self.calls.append((list(context), [list(c) for c in continuations]))
        return [[self.totals[tuple(c)] / len(c)] * len(c) for c in continuations]


def _answers(tok: TextTokenizer, totals: dict[str, float]) -> dict[tuple[int, ...], float]:
    """The ids of each answer as a demonstration holds it: a space, the answer, the terminator."""
    return {tuple(tok.encode(f" {a}\n")): v for a, v in totals.items()}


def test_vqa_ranks_the_kinds_candidates_and_scores_the_best_with_the_vqa_formula(ctx, tiny_run, monkeypatch) -> None:
    img = _image(tiny_run)
    items = [
        _vqa(1, "colour", ["blue"] * 6 + ["red"] * 2 + ["green"] * 2, img),  # canonical blue; red given by 2 humans
        _vqa(2, "colour", ["red"] * 10, img),
        _vqa(3, "count", ["2"] * 10, img),
    ]
    pool = [_vqa(11, "colour", ["green"] * 10, img), _vqa(12, "count", ["3"] * 9 + ["2"], img)]
    spec = BenchmarkSpec(name="fake", task="vqa", val="v.json", train="t.json")
    bench = Benchmark(spec, items, pool, {})
    assert ll_scores.answer_candidates(bench) == {"colour": ("blue", "green", "red"), "count": ("2", "3")}
    # log-probabilities of " <answer>\n" after any prompt: red > blue > green, 3 > 2
    fake = FakeScorer(_answers(ctx.tok, {"red": -1.0, "blue": -2.0, "green": -3.0, "3": -0.5, "2": -0.7}))
    monkeypatch.setattr(ll_scores, "prefix_logprobs", fake)
    rows, picks = ll_scores.vqa_likelihood(ctx, bench, [[0, 1]] * 3, 0)
    assert picks == {1: "red", 2: "red", 3: "3"}
    # by hand: "red" given by 2 of 10 humans -> 0.6 (module vqa_metric); unanimous "red" -> 1; "3" vs ten "2" -> 0
    assert rows[0]["metric"] == "ll_accuracy" and rows[0]["value"] == pytest.approx(100 * (0.6 + 1 + 0) / 3)
    assert (rows[0]["n_examples"], rows[0]["shots"], rows[0]["demos_dropped"]) == (3, 0, 0)
    template = Template(ctx.cfg.vqa.template, "vqa", ctx.tok, ctx.mc.connector.num_tokens)
    context, conts = fake.calls[2]
    assert context == [ctx.tok.bos_id] + template.query(items[2].example())  # 0-shot: <bos> and the query
    assert conts == [ctx.tok.encode(" 2\n"), ctx.tok.encode(" 3\n")]  # the kind's answers, each with its "\n"


def test_vqa_demonstrations_end_their_answers_with_the_terminator(ctx, tiny_run, monkeypatch) -> None:
    img = _image(tiny_run)
    items = [_vqa(1, "colour", ["red"] * 10, img)]
    pool = [_vqa(11, "colour", ["green"] * 10, img), _vqa(12, "colour", ["blue"] * 10, img)]
    bench = Benchmark(BenchmarkSpec(name="fake", task="vqa", val="v.json", train="t.json"), items, pool, {})
    fake = FakeScorer(_answers(ctx.tok, {"red": -1.0, "blue": -2.0, "green": -3.0}))
    monkeypatch.setattr(ll_scores, "prefix_logprobs", fake)
    rows, _ = ll_scores.vqa_likelihood(ctx, bench, [[1, 0]], 2)
    context = ctx.tok._tok.decode(fake.calls[0][0], skip_special_tokens=True)
    assert "Question: question 12? Answer: blue\n" in context and "Question: question 11? Answer: green\n" in context
    assert context.rstrip().endswith("Question: question 1? Answer:")  # the query, cut before its answer
    assert (rows[0]["shots"], rows[0]["mean_shots"]) == (2, 2.0)


def test_captioning_nll_is_the_mean_over_references_then_images(ctx, tiny_run, monkeypatch) -> None:
    img = _image(tiny_run)
    items = [
        Item(1, 1, img, None, ("a red circle", "two blue squares")),
        Item(2, 2, img, None, ("a green star", "a green star")),
    ]
    bench = Benchmark(BenchmarkSpec(name="fake", task="captioning", val="c.json"), items, [], {})
    tok = ctx.tok
    totals = {"a red circle": -1.0, "two blue squares": -3.0, "a green star": -0.5}
    ids = {t: tuple(tok.encode(t)) + (tok.eoc_id,) for t in totals}  # the caption and its <eoc>
    per_token = {t: v / len(ids[t]) for t, v in totals.items()}  # the mean log-prob of each reference's tokens
    fake = FakeScorer({ids[t]: v for t, v in totals.items()})
    monkeypatch.setattr(ll_scores, "prefix_logprobs", fake)
    rows, per_image = ll_scores.caption_likelihood(ctx, bench, [[], []], 0)
    image_1 = (-per_token["a red circle"] - per_token["two blue squares"]) / 2
    image_2 = -per_token["a green star"]
    assert per_image == pytest.approx({1: image_1, 2: image_2})
    nll = {r["metric"]: r["value"] for r in rows}
    assert nll["ref_nll"] == pytest.approx((image_1 + image_2) / 2)
    assert nll["ref_prob"] == pytest.approx(100 * math.exp(-(image_1 + image_2) / 2))
    assert len(fake.calls) == 2 and all(len(conts) == 2 for _, conts in fake.calls)  # one pass per image


def test_candidates_are_grouped_by_answer_type_without_a_question_type(tiny_run) -> None:
    img = _image(tiny_run)
    items = [Item(1, 1, img, "q?", ("yes",) * 3, "yes/no"), Item(2, 2, img, "q?", ("no", "no", "yes"), "yes/no"),
             Item(3, 3, img, "q?", ("4",) * 3, "number")]  # fmt: skip
    bench = Benchmark(BenchmarkSpec(name="real", task="vqa", val="v.json"), items, [], {})
    assert ll_scores.answer_candidates(bench) == {"yes/no": ("no", "yes"), "number": ("4",)}


def test_the_vqa_json_gives_each_item_its_question_kind(tiny_run) -> None:
    from mm1.eval.benchmarks import load_benchmark

    bench = load_benchmark(config().eval.benchmarks[3], tiny_run["data"], with_pool=True)  # vqav2
    assert all(it.question_type for it in [*bench.items, *bench.pool])
    kinds = ll_scores.answer_candidates(bench)
    assert set(kinds) == {it.question_type for it in [*bench.items, *bench.pool]}
    assert all(ll_scores.canonical_answer(it) in kinds[it.question_type] for it in bench.items)
