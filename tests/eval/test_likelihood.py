"""Likelihood scores: the shared-prefix scorer against row-by-row scoring, and the VQA ranking and
captioning NLL on cases worked by hand (a fake scorer with known log-probabilities)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from evalkit import config, make_checkpoint

from mm1.config import ParallelConfig
from mm1.config.eval import BenchmarkSpec
from mm1.data.tokenizer import TextTokenizer
from mm1.eval import ll_scores
from mm1.eval.benchmarks import Benchmark, Item
from mm1.eval.context import EvalContext
from mm1.eval.demos import demo_order
from mm1.eval.likelihood import Candidate, Prefixed, continuation_logprobs, prefix_logprobs
from mm1.eval.prompts import Prompt, Template
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint


@pytest.fixture(scope="module")
def learned_ckpt(tiny_run, tmp_path_factory) -> Path:
    """The tiny checkpoint with learned absolute positions in place of rotary ones."""
    override = "model.decoder.position_embedding=learned_absolute"
    return make_checkpoint(tiny_run, tmp_path_factory.mktemp("learned") / "ckpt", override)


@pytest.fixture(scope="module")
def ctx(tiny_run, learned_ckpt) -> EvalContext:  # learned_ckpt first: saving opens its own process group
    tok = TextTokenizer(tiny_run["tokenizer"])
    mc = checkpoint.read_meta(tiny_run["ckpt"])["model"]
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, tiny_run["ckpt"])
        yield EvalContext(config().eval, None, model.eval(), mc, tok, torch.device("cpu"))


def _prompt(tok: TextTokenizer, n: int, images: int, question: str) -> list[int]:
    """<bos>, ``images`` demonstrations (their slots and a caption) and a question, cut before its answer."""
    ids = [tok.bos_id]
    for i in range(images):
        ids += [tok.image_id] * n + tok.encode(f"Question: {i}? Answer: {i}\n")
    return ids + tok.encode(f"Question: {question} Answer:")


@pytest.mark.parametrize("position", ["rope", "learned_absolute"])
def test_packed_prefix_scoring_equals_scoring_each_continuation_on_its_own(ctx, learned_ckpt, position) -> None:
    """Prompts of different lengths and image counts (0, 1, 3: one image twice), 1 to 5 continuations
    of 1 to 7 tokens, scored in one micro-batch and in several, against one padded row per pair;
    rotary and learned positions (each continuation token must get its own true position)."""
    tok, n, model = ctx.tok, ctx.mc.connector.num_tokens, ctx.model
    if position != ctx.mc.decoder.position_embedding:
        mc = checkpoint.read_meta(learned_ckpt)["model"]
        assert mc.decoder.position_embedding == position
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, learned_ckpt)
        model.eval()
    table = torch.rand(3, 3, ctx.image_size, ctx.image_size, generator=torch.Generator().manual_seed(0))
    shapes = [tok.encode(" circle\n"), [tok.eoc_id], tok.encode(" a blue square\n")]
    counts = [tok.encode(f" {w}\n") for w in ("2", "three", "no", "7 or 8", "many")]
    prompts = [
        Prefixed(_prompt(tok, n, 1, "what shape?"), shapes, [2]),
        Prefixed(_prompt(tok, n, 0, "what colour is the big square on the left?"), [tok.encode(" red\n")], []),
        Prefixed(_prompt(tok, n, 3, "how many?"), counts, [0, 2, 0]),  # image 0 twice
    ]
    alone = [
        [
            continuation_logprobs(model, tok, [Candidate(p.context, c, [])], table[p.images], ctx.max_length)[0]
            for c in p.continuations
        ]
        for p in prompts
    ]
    image_tokens = model.encode_images(table)
    widest = max(len(p.context) + sum(map(len, p.continuations)) for p in prompts)
    for batch_tokens in (1, 3 * widest):  # one prompt per pass; all three in one pass
        got = prefix_logprobs(model, tok, prompts, image_tokens, ctx.max_length, batch_tokens=batch_tokens)
        assert [[len(lp) for lp in g] for g in got] == [[len(c) for c in p.continuations] for p in prompts]
        for g, ref in zip(got, alone, strict=True):
            assert [sum(lp) for lp in g] == pytest.approx(ref, rel=1e-4, abs=1e-4)
        assert all(lp < 0 for g in got for lps in g for lp in lps)


def test_prefix_scoring_refuses_empty_and_too_long_continuations(ctx) -> None:
    tok = ctx.tok
    none = torch.zeros(0, ctx.mc.connector.num_tokens, ctx.mc.decoder.hidden_size)
    with pytest.raises(ValueError, match="at least one token"):
        prefix_logprobs(ctx.model, tok, [Prefixed([tok.bos_id], [[5], []], [])], none, ctx.max_length)
    with pytest.raises(ValueError, match="exceeds"):
        prefix_logprobs(ctx.model, tok, [Prefixed([tok.bos_id] * 10, [[5] * ctx.max_length], [])], none, ctx.max_length)


def _image(tiny_run) -> bytes:
    return next((tiny_run["data"] / "benchmarks/vqav2/images/val").iterdir()).read_bytes()


def _vqa(item_id: int, kind: str, answers: list[str], image: bytes) -> Item:
    return Item(item_id, item_id, image, f"question {item_id}?", tuple(answers), "other", kind)


class FakeScorer:
    """Each continuation's tokens share the total log-probability given for its token ids (a
    continuation not listed fails the test); records each prompt it was asked about, in order."""

    def __init__(self, totals: dict[tuple[int, ...], float]) -> None:
        self.totals, self.calls = totals, []

    def __call__(self, model, tok, prompts, image_tokens, max_length, **kwargs):
        self.calls += [(list(p.context), [list(c) for c in p.continuations]) for p in prompts]
        return [[[self.totals[tuple(c)] / len(c)] * len(c) for c in p.continuations] for p in prompts]


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
    rows, picks = ll_scores.vqa_likelihood(ctx, bench, [[0, 1]] * 3, [0])
    assert picks[0] == {1: "red", 2: "red", 3: "3"}
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
    rows, _ = ll_scores.vqa_likelihood(ctx, bench, [[1, 0]], [2])
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
    rows, per_image = ll_scores.caption_likelihood(ctx, bench, [[], []], [0])
    image_1 = (-per_token["a red circle"] - per_token["two blue squares"]) / 2
    image_2 = -per_token["a green star"]
    assert per_image[0] == pytest.approx({1: image_1, 2: image_2})
    nll = {r["metric"]: r["value"] for r in rows}
    assert nll["ref_nll"] == pytest.approx((image_1 + image_2) / 2)
    assert nll["ref_prob"] == pytest.approx(100 * math.exp(-(image_1 + image_2) / 2))
    assert len(fake.calls) == 2 and all(len(conts) == 2 for _, conts in fake.calls)  # one prompt per image


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


def test_scoring_every_shot_count_at_once_equals_one_call_per_shot_count(ctx, tiny_run) -> None:
    from mm1.eval.benchmarks import load_benchmark

    for spec, score in ((config().eval.benchmarks[0], ll_scores.caption_likelihood),
                        (config().eval.benchmarks[3], ll_scores.vqa_likelihood)):  # fmt: skip
        bench = load_benchmark(spec, tiny_run["data"], with_pool=True)
        order = demo_order(ctx, bench, 2)
        rows, per_item = score(ctx, bench, order, [0, 2])
        for k in (0, 2):
            alone, alone_items = score(ctx, bench, order, [k])
            assert [r for r in rows if r["shots"] == k] == [
                r | {"value": pytest.approx(r["value"], rel=1e-5)} for r in alone
            ]
            assert per_item[k] == (
                pytest.approx(alone_items[k], rel=1e-5) if spec.task == "captioning" else alone_items[k]
            )
        assert rows[0]["shots"] == 0 and {r["shots"] for r in rows} == {0, 2}


def test_shuffled_images_give_every_prompt_another_items_image() -> None:
    a, b, c = b"png-a", b"png-b", b"png-c"
    prompts = [Prompt([1], [a], 0, 0), Prompt([2], [b], 0, 0), Prompt([3], [a], 0, 0), Prompt([4], [c], 0, 0)]
    got = ll_scores.shuffled_images(prompts)
    assert [p.images for p in got] == [[b], [c], [b], [a]]  # a -> b -> c -> a, in order of first use
    assert all(g.images != p.images for g, p in zip(got, prompts, strict=True))
    assert [p.ids for p in got] == [p.ids for p in prompts]  # the text is unchanged
    assert ll_scores.shuffled_images([Prompt([1], [a], 0, 0), Prompt([2], [a], 0, 0)]) is None  # one image: no control


class ImageScorer(FakeScorer):
    """FakeScorer that also records each prompt's image rows (indices into the encoded images)."""

    def __call__(self, model, tok, prompts, image_tokens, max_length, **kwargs):
        self.images = [list(p.images) for p in prompts]
        return super().__call__(model, tok, prompts, image_tokens, max_length, **kwargs)


def test_the_zero_shot_control_scores_each_question_with_another_image(ctx, tiny_run, monkeypatch) -> None:
    folder = tiny_run["data"] / "benchmarks/vqav2/images/val"
    img1, img2 = (p.read_bytes() for p in sorted(folder.iterdir())[:2])
    assert img1 != img2
    items = [_vqa(1, "colour", ["red"] * 10, img1), _vqa(2, "colour", ["blue"] * 10, img2)]
    pool = [_vqa(11, "colour", ["green"] * 10, img1)]
    bench = Benchmark(BenchmarkSpec(name="fake", task="vqa", val="v.json", train="t.json"), items, pool, {})
    fake = ImageScorer(_answers(ctx.tok, {"red": -1.0, "blue": -1.0, "green": -5.0}))
    monkeypatch.setattr(ll_scores, "prefix_logprobs", fake)
    rows, picks = ll_scores.vqa_likelihood(ctx, bench, [[0], [0]], [0, 1])
    assert [(r["shots"], r["metric"]) for r in rows] == [(0, "ll_accuracy"), (1, "ll_accuracy"),
                                                         (0, "ll_accuracy_shuffled")]  # fmt: skip
    assert sorted(picks) == [0, 1]  # the control has no per-question file
    # 2 items x (0-shot, 1-shot, control): the control's prompts are the 0-shot ones with the images swapped
    real0, control = fake.images[0:2], fake.images[4:6]
    assert control == [real0[1], real0[0]]
    assert fake.calls[4] == fake.calls[0] and fake.calls[5] == fake.calls[1]  # same text, same continuations
