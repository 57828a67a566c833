"""Likelihood scores of the few-shot benchmarks: every val item, no decoding.

Each item's k-shot prompt is the one generation uses (same demonstrations, same template, the
query cut before the answer field); what is scored is ``Template.continuation``: the answer or
caption followed by the template's terminator ("\\n" after a VQA answer, <eoc> after a caption), so
a candidate that merely starts like the right answer is not rewarded, and length is handled by the
model itself (a longer answer must also predict its end).

* VQA (metric ``ll_accuracy``): the candidates of a question are the answers of its kind, read
  from the benchmark's own annotations: the most frequent human answer (VQAv2's
  ``multiple_choice_answer``) of every train and val question with the same ``question_type``
  (the question's ``answer_type`` when it has none). Each candidate's score is the sum of its
  tokens' log-probabilities; the best one is the item's answer, scored with the official VQA
  accuracy (min(#humans / 3, 1), :mod:`mm1.eval.vqa_metric`; GQA: exact match), in %. A closed answer set built from
  the benchmark's answers is how VQA classifiers define their outputs; the paper decodes freely
  and is silent on likelihood scoring.
* Captioning (metrics ``ref_nll`` and ``ref_prob``): the mean token negative log-likelihood (nats)
  of each reference caption (its tokens and <eoc>), averaged over the references of an image, then
  over images; ``ref_prob`` = 100 * exp(-ref_nll), the per-token geometric-mean probability in %,
  a 0-100 higher-is-better score.

The prompt is fitted to the context with room for its longest continuation (at least the task's
``max_new_tokens``, so it is the generation prompt whenever the continuations fit that budget).
**The shuffled-image control** (metrics ``ll_accuracy_shuffled``, ``ref_nll_shuffled``, ``ref_prob_shuffled``,
0-shot only): the same 0-shot prompts with each query image replaced by another item's image (the
benchmark's distinct query images in order of first use, each given the next one's: no item keeps its
own image). A model that reads its image scores lower there; the gap is the "image gain" of the
summary. A likelihood score that does not move when the images are swapped measures priors and text
alone, so no lesson about encoders, resolution or connectors can show in it.

All shot counts of a benchmark are scored in one call: each item's continuations are tokenized
once, each distinct image (queries and demonstrations recur across shot counts) is encoded once,
and each prompt is computed once for all its continuations, many prompts per forward pass
(:func:`mm1.eval.likelihood.prefix_logprobs`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from mm1.config.eval import LIKELIHOOD_METRIC
from mm1.data.images import stack_images
from mm1.eval.benchmarks import Benchmark, Item, demo_example
from mm1.eval.context import EvalContext
from mm1.eval.likelihood import Prefixed, prefix_logprobs
from mm1.eval.prompts import Prompt, Template, build_prompt
from mm1.eval.vqa_metric import answer_scores


def canonical_answer(item: Item) -> str:
    """The most frequent human answer (the first given among ties), VQAv2's multiple_choice_answer."""
    return Counter(item.targets).most_common(1)[0][0]


def answer_kind(item: Item) -> str:
    return item.question_type or item.answer_type


def answer_candidates(bench: Benchmark) -> dict[str, tuple[str, ...]]:
    """Question kind -> the distinct canonical answers of the kind's train and val questions, sorted."""
    out: dict[str, set[str]] = {}
    for item in [*bench.pool, *bench.items]:
        out.setdefault(answer_kind(item), set()).add(canonical_answer(item))
    return {kind: tuple(sorted(answers)) for kind, answers in out.items()}


SHUFFLED = "shuffled"
"""The key of the shuffled-image control in the result of :func:`_score` (its prompts are 0-shot)."""


def shuffled_images(prompts: list[Prompt]) -> list[Prompt] | None:
    """The prompts with every image replaced by the next distinct image in order of first use (a
    derangement of the distinct images: no prompt keeps any image of its own); None with fewer than
    two distinct images, where no control exists (its rows are then left out, and the summary's
    image gain is empty)."""
    distinct = list(dict.fromkeys(png for p in prompts for png in p.images))
    if len(distinct) < 2:
        return None
    swap = {png: distinct[(i + 1) % len(distinct)] for i, png in enumerate(distinct)}
    return [replace(p, images=[swap[png] for png in p.images]) for p in prompts]


def _score(ctx: EvalContext, bench: Benchmark, order: list[list[int]], shots: Sequence[int], answers: list[list[str]]):
    """Per shot count k: each item's k-shot prompt and each answer's token log-probabilities after it;
    with 0 among the shots also the shuffled-image control's (key :data:`SHUFFLED`)."""
    pc = getattr(ctx.cfg, bench.task)
    template = Template(pc.template, bench.task, ctx.tok, ctx.mc.connector.num_tokens)
    conts = [
        [template.continuation(it.example(), a) for a in opts] for it, opts in zip(bench.items, answers, strict=True)
    ]
    prompts: dict[int, list[Prompt]] = {k: [] for k in shots}
    for k in shots:
        for item, chosen, cs in zip(bench.items, order, conts, strict=True):
            demos = [demo_example(bench.pool[j], bench.task) for j in (chosen[-k:] if k else [])]
            where = (
                f"{bench.name} {'image' if bench.task == 'captioning' else 'question'} {item.key}, {k}-shot likelihood"
            )
            budget = max(pc.max_new_tokens, max(len(c) for c in cs))
            prompts[k].append(build_prompt(template, demos, item.example(), max_length=ctx.max_length,
                                           max_new_tokens=budget, max_images=ctx.cfg.max_images,
                                           overflow=ctx.cfg.overflow, where=where))  # fmt: skip
    keys: list[int | str] = list(shots)
    control = shuffled_images(prompts[0]) if 0 in prompts else None
    if control is not None:
        prompts[SHUFFLED] = control
        keys.append(SHUFFLED)
    every = [p for k in keys for p in prompts[k]]
    row = {png: i for i, png in enumerate(dict.fromkeys(png for p in every for png in p.images))}
    prefixed = [
        Prefixed(p.ids, cs, [row[png] for png in p.images]) for p, cs in zip(every, conts * len(keys), strict=True)
    ]
    logprobs = prefix_logprobs(ctx.model, ctx.tok, prefixed, _encode(ctx, list(row)), ctx.max_length,
                               desc=f"{bench.name} likelihood")  # fmt: skip
    n = len(bench.items)
    return {k: (prompts[k], logprobs[i * n : (i + 1) * n]) for i, k in enumerate(keys)}


@torch.no_grad()
def _encode(ctx: EvalContext, images: list[bytes], chunk: int = 64) -> torch.Tensor:
    """(U, N, H) image tokens of each distinct image, in order (every image is encoded once)."""
    out = [torch.zeros(0, ctx.mc.connector.num_tokens, ctx.mc.decoder.hidden_size, device=ctx.device)]
    for start in range(0, len(images), chunk):
        x = stack_images(images[start : start + chunk], ctx.image_size).to(ctx.device)
        out.append(ctx.model.encode_images(x))
    return torch.cat(out)


def _row(bench: Benchmark, k: int, metric: str, value: float, prompts: list[Prompt], template: str) -> dict:
    return {"benchmark": bench.name, "task": bench.task, "shots": k, "metric": metric, "value": value,
            "n_examples": len(prompts), "demos_dropped": sum(p.dropped for p in prompts),
            "mean_shots": float(np.mean([p.shots for p in prompts])), "template": template}  # fmt: skip


def vqa_likelihood(
    ctx: EvalContext, bench: Benchmark, order: list[list[int]], shots: Sequence[int]
) -> tuple[list[dict], dict[int, dict]]:
    """Per shot count k: the ll_accuracy row and the ranked answers (k -> question id -> top candidate)."""
    domain = answer_candidates(bench)
    options = [list(domain[answer_kind(it)]) for it in bench.items]
    truth = {it.key: (it.targets, it.answer_type) for it in bench.items}
    rows, picks = [], {}
    for k, (prompts, logprobs) in _score(ctx, bench, order, shots, options).items():
        chosen = {
            it.key: opts[int(np.argmax([sum(lp) for lp in lps]))]
            for it, opts, lps in zip(bench.items, options, logprobs, strict=True)
        }
        value = answer_scores(chosen, truth, bench.spec.answer_metric)["accuracy"]
        metric, shots_k = _metric(LIKELIHOOD_METRIC["vqa"], k)
        rows.append(_row(bench, shots_k, metric, value, prompts, ctx.cfg.vqa.template))
        if k != SHUFFLED:
            picks[k] = chosen
    return rows, picks


def _metric(name: str, k: int | str) -> tuple[str, int]:
    """(metric name, shots) of a row: the shuffled-image control is a 0-shot row of ``<name>_shuffled``."""
    return (f"{name}_{SHUFFLED}", 0) if k == SHUFFLED else (name, int(k))


def caption_likelihood(
    ctx: EvalContext, bench: Benchmark, order: list[list[int]], shots: Sequence[int]
) -> tuple[list[dict], dict[int, dict]]:
    """Per shot count k: the ref_nll and ref_prob rows and each image's mean reference NLL
    (k -> image id -> nats per token)."""
    template = ctx.cfg.captioning.template
    rows, per_image = [], {}
    for k, (prompts, logprobs) in _score(ctx, bench, order, shots, [list(it.targets) for it in bench.items]).items():
        nlls = {
            it.key: float(np.mean([-np.mean(lp) for lp in lps])) for it, lps in zip(bench.items, logprobs, strict=True)
        }
        nll = float(np.mean(list(nlls.values())))
        for name, value in (("ref_nll", nll), (LIKELIHOOD_METRIC["captioning"], 100.0 * math.exp(-nll))):
            metric, shots_k = _metric(name, k)
            rows.append(_row(bench, shots_k, metric, value, prompts, template))
        if k != SHUFFLED:
            per_image[k] = nlls
    return rows, per_image
