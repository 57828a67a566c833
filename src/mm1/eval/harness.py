"""The evaluation stage: few-shot captioning and VQA, TextCore, and the SFT benchmarks.

Pre-trained checkpoints (MM1 Table 3, Figs 3-5): every benchmark of ``eval.benchmarks`` at every
count of ``eval.shots``, demonstrations from the benchmark's train split written with the task's
template, two kinds of score per (benchmark, shots):
  * generation: greedy decoding with a KV cache, scored with CIDEr-D / VQA accuracy, on the first
    ``eval.num_examples`` val items (0: all);
  * likelihood (``eval.likelihood``): every val item, no decoding (:mod:`mm1.eval.ll_scores`): VQA
    by ranking the answer candidates of the question's kind, captioning by the references' NLL.
TextCore by choice likelihood.
SFT checkpoints (Table 4, Figs 7-8; ``sft=True``): every benchmark 0-shot, the question asked in
the chat template of the ``sft`` section, and the multiple-choice items by choice likelihood
(no likelihood scores of the benchmarks); Table 4's benchmarks (:mod:`mm1.eval.table4_run`) too.

Outputs in ``out_dir``:
    predictions/<benchmark>_<k>shot.json     official result formats: [{"image_id", "caption"}] /
                                             [{"question_id", "answer"}] (score them with
                                             ``mm1 eval score-captions`` / ``score-vqa``)
    predictions/<vqa>_<k>shot_ll.json        the top-ranked candidates, [{"question_id", "answer"}]
    predictions/<captioning>_<k>shot_nll.json  [{"image_id", "nll"}]: each image's mean reference NLL
    scores.csv     one row per (benchmark, shots, metric), with the template, demos dropped, n, and
                   for CIDEr the tokenizer ("ptb-java" / "ptb-python", mm1.eval.cider);
                   metric: "CIDEr" (x 100) / "accuracy" (%) from generation; "ll_accuracy" (%, VQA),
                   "ref_nll" (nats per token) and "ref_prob" (100 exp(-ref_nll), captioning) from
                   likelihood; "accuracy" of TextCore / multiple choice (and per kind "<name>/<kind>");
                   NoCaps' CIDEr per domain: benchmark "<name>/in-domain" (near-, out-), task
                   "captioning_domain"; VQA "accuracy" is exact match for GQA (its official metric)
    summary.csv    per shots: captioning_avg, vqa_avg, average (generation: the averages the paper
                   plots), captioning_ll, vqa_ll, average_ll (the same means of the 0-100 likelihood
                   scores: ref_prob, ll_accuracy; empty without them), n_benchmarks, demos_dropped
                   (generation), textcore, multiple_choice
    metrics.json   the summary and every benchmark's scores, for DVC
    provenance.json, config.yaml
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from mm1 import atomic, provenance
from mm1.config import EvalConfig, ModelConfig, ParallelConfig, SFTConfig
from mm1.config.eval import GENERATION_METRIC, TABLE4_TASKS
from mm1.data.formats import read_multiple_choice, read_text_tasks
from mm1.data.image_split import images_per_picture, split_image_bytes
from mm1.data.images import stack_images
from mm1.data.packing import PackLayout, encode_text
from mm1.data.sft import user_turn
from mm1.data.tokenizer import TextTokenizer
from mm1.eval.benchmarks import Benchmark, demo_example, load_benchmark
from mm1.eval.cider import cider_d, resolve_tokenizer, tokenize_runs
from mm1.eval.context import EvalContext
from mm1.eval.demos import demo_order, load_fixed_encoder
from mm1.eval.generate import greedy
from mm1.eval.likelihood import Candidate, continuation_logprobs
from mm1.eval.ll_scores import caption_likelihood, vqa_likelihood
from mm1.eval.official import NOCAPS_DOMAINS
from mm1.eval.prompts import Prompt, Template, build_prompt, cut_at_stops
from mm1.eval.scoring import write_caption_predictions, write_vqa_predictions
from mm1.eval.shard import map_batches
from mm1.eval.table4_run import run_table4
from mm1.eval.tables import metrics_json, summarise
from mm1.eval.vqa_metric import answer_scores
from mm1.models.megatron_config import MegatronLayout
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.progress import progress
from mm1.stages import STAGES
from mm1.train import checkpoint

DOMAIN_TASK = "captioning_domain"
"""scores.csv task of NoCaps' per-domain CIDEr rows (not averaged with the benchmarks)."""
SECTIONS = STAGES["eval"].reads  # the config sections the evaluation stages read (mm1.stages)
"""Config sections the stage reads (sft: the chat template of SFT checkpoints)."""


@dataclass(frozen=True)
class EvalResult:
    scores: pl.DataFrame
    """One row per (benchmark, shots, metric)."""
    summary: pl.DataFrame
    """Per shots: captioning, VQA and overall averages, TextCore / multiple choice."""


def evaluate(
    cfg: EvalConfig,
    run_name: str,
    data_root: Path,
    tokenizer_path: Path,
    ckpt: Path,
    out_dir: Path,
    *,
    sft: SFTConfig | None = None,
    parallel: ParallelConfig | None = None,
) -> EvalResult:
    """Evaluate the checkpoint on every configured benchmark; ``sft`` given: as an SFT model.

    ``parallel``: the processes' layout (default: one process). Under torchrun with world_size N
    and tp T the decoding and choice-scoring batches are shared among the N / T data-parallel ranks
    (:mod:`mm1.eval.shard`); rank 0 writes the same files one process writes."""
    out_dir, data_root = Path(out_dir), Path(data_root)
    tok = TextTokenizer(tokenizer_path)
    meta = checkpoint.read_meta(ckpt)
    mc: ModelConfig = meta["model"]
    if meta["vocab_size"] != tok.vocab_size:
        raise ValueError(
            f"checkpoint {ckpt} was trained with a {meta['vocab_size']}-token vocabulary, "
            f"tokenizer {tokenizer_path} has {tok.vocab_size}; evaluate with the run's own tokenizer"
        )
    shots = (0,) if sft is not None else cfg.shots
    likelihood = cfg.likelihood and sft is None
    table4 = [spec for spec in cfg.benchmarks if spec.task in TABLE4_TASKS]  # SFT only (Table 4)
    benches = [load_benchmark(spec, data_root, with_pool=max(shots) > 0 or likelihood)
               for spec in cfg.benchmarks if spec not in table4]  # fmt: skip
    n_gen = cfg.num_examples or None
    rows: list[dict] = []
    inputs: dict[str, Path] = {"tokenizer": Path(tokenizer_path), "checkpoint": Path(ckpt)}
    with distributed(parallel or ParallelConfig(), seed=0) as rank:
        layout = MegatronLayout(tp=parallel.tp if parallel else 1)  # fp32: the plan's mm1.plan.infer.BYTES
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id, layout=layout).to(rank.device)
        checkpoint.load_into(model, ckpt)
        model.eval()
        ctx = EvalContext(cfg, sft, model, mc, tok, rank.device)
        fixed = None
        if cfg.demos == "rices" and cfg.rices_encoder and sft is None and max(shots) > 0:
            fixed = load_fixed_encoder(Path(cfg.rices_encoder), rank.device, layout)
            inputs["rices_encoder"] = Path(cfg.rices_encoder)
        captioning: list[tuple[dict, Benchmark, dict[int, str]]] = []  # CIDEr rows, scored together below
        for bench in benches:
            inputs |= {f"{bench.name}/{k}": p for k, p in bench.files.items()}
            order = demo_order(ctx, bench, max(shots), fixed)  # every val item; generation reads the first n_gen
            generated = replace(bench, items=bench.items[:n_gen])
            for k in shots:
                predictions, dropped, kept = _run_task(ctx, generated, order[:n_gen], k)
                if rank.is_main:
                    _write_predictions(out_dir, generated, k, predictions)
                rows += _score_task(generated, k, predictions, dropped, kept, _template_text(ctx, bench.task))
                if bench.task == "captioning":
                    captioning.append((rows[-1], generated, predictions))
            if likelihood:  # every shot count at once: the images and continuations are shared
                rows += _likelihood_task(ctx, bench, order, shots, out_dir if rank.is_main else None)
        rows += _score_captioning(captioning)
        if sft is None and cfg.textcore is not None:
            path = _resolve(data_root, cfg.textcore)
            inputs["textcore"] = path
            rows += _textcore(ctx, path)
        if sft is not None and cfg.sft.multiple_choice is not None:
            path = _resolve(data_root, cfg.sft.multiple_choice)
            inputs["multiple_choice"] = path
            rows += _multiple_choice(ctx, path)
        for spec in table4 if sft is not None else ():
            more, files = run_table4(ctx, spec, data_root, out_dir if rank.is_main else None,
                                     lambda turn, image: _sft_prompt(ctx, turn, image),
                                     lambda groups, desc: _choose(ctx, groups, desc),
                                     lambda text: _answer_text(ctx, "vqa", text))  # fmt: skip
            rows, inputs = rows + more, inputs | files
    for r in rows:
        r |= {"run": run_name, "mode": "sft" if sft is not None else "pretrained", "train_steps": meta["steps"],
              "tokenizer": r.get("tokenizer", "")}  # fmt: skip
    scores = pl.DataFrame(rows).select(
        "run", "mode", "benchmark", "task", "shots", "metric", "value", "n_examples", "demos_dropped",
        "mean_shots", "template", "train_steps", "tokenizer",
    )  # fmt: skip
    summary = summarise(scores)
    if rank.is_main:
        atomic.write_text(out_dir / "scores.csv", scores.write_csv())
        atomic.write_text(out_dir / "summary.csv", summary.write_csv())
        atomic.write_text(out_dir / "metrics.json", json.dumps(metrics_json(scores, summary), indent=2) + "\n")
        config = {"eval": cfg.model_dump(mode="json")} | ({"sft": sft.model_dump(mode="json")} if sft else {})
        provenance.record(out_dir, stage="eval", config=config, seed=cfg.seed, inputs=inputs,
                          extra={"mode": "sft" if sft else "pretrained", "shots": list(shots)})  # fmt: skip
    return EvalResult(scores=scores, summary=summary)


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    return p


# --- prompts and generation --------------------------------------------------------------------


def _template_text(ctx: EvalContext, task: str) -> str:
    if ctx.sft is None:
        return getattr(ctx.cfg, task).template
    instruction = ctx.cfg.sft.caption_instruction if task == "captioning" else ctx.cfg.sft.vqa_instruction
    return ctx.sft.system_prompt + ctx.sft.user_template.format(text="<image>\n" + instruction)


def _sft_prompt(ctx: EvalContext, human: str, image: bytes | None) -> Prompt:
    """<bos> system user-turn (the picture's slots where it says <image>), ready for the answer."""
    grid = ctx.sft.image_grid
    n_img = images_per_picture(grid) if image is not None else 0
    layout = PackLayout.from_tokenizer(ctx.tok, ctx.max_length, ctx.mc.connector.num_tokens, max(1, n_img))
    ids = [ctx.tok.bos_id] + (ctx.tok.encode(ctx.sft.system_prompt) if ctx.sft.system_prompt else [])
    slots = np.full(ctx.mc.connector.num_tokens * n_img, ctx.tok.image_id, dtype=np.int32) if image else None
    ids += user_turn(human, ctx.sft, ctx.tok, layout, slots).tolist()
    images = split_image_bytes(image, grid, ctx.image_size) if image is not None else []
    return Prompt(ids=ids, images=images, shots=0, dropped=0)


def _prompts(ctx: EvalContext, bench: Benchmark, order: list[list[int]], k: int) -> list[Prompt]:
    if ctx.sft is not None:
        if bench.task == "captioning":
            human = "<image>\n" + ctx.cfg.sft.caption_instruction
            return [_sft_prompt(ctx, human, it.image) for it in bench.items]
        return [
            _sft_prompt(ctx, "<image>\n" + ctx.cfg.sft.vqa_instruction.format(question=it.question), it.image)
            for it in bench.items
        ]
    pc = getattr(ctx.cfg, bench.task)
    template = Template(pc.template, bench.task, ctx.tok, ctx.mc.connector.num_tokens)
    out = []
    for item, chosen in zip(bench.items, order, strict=True):
        demos = [demo_example(bench.pool[j], bench.task) for j in (chosen[-k:] if k else [])]
        where = f"{bench.name} {'image' if bench.task == 'captioning' else 'question'} {item.key}, {k}-shot"
        out.append(
            build_prompt(template, demos, item.example(), max_length=ctx.max_length, max_new_tokens=pc.max_new_tokens,
                         max_images=ctx.cfg.max_images, overflow=ctx.cfg.overflow, where=where)
        )  # fmt: skip
    return out


def _answer_text(ctx: EvalContext, task: str, text: str) -> str:
    if ctx.sft is not None:
        head = ctx.sft.assistant_template.partition("{text}")[0].strip()
        text = text.strip()
        text = text[len(head) :] if head and text.startswith(head) else text
        return cut_at_stops(text, ("\n",) if task == "vqa" else ())
    return cut_at_stops(text, getattr(ctx.cfg, task).stop)


def _run_task(ctx: EvalContext, bench: Benchmark, order: list[list[int]], k: int) -> tuple[dict[int, str], int, float]:
    """Predictions keyed by image id / question id, demonstrations dropped, mean shots kept."""
    prompts = _prompts(ctx, bench, order, k)
    max_new = getattr(ctx.cfg, bench.task).max_new_tokens
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))  # similar lengths batch together
    mb = ctx.cfg.micro_batch_size
    batches = [by_length[start : start + mb] for start in range(0, len(by_length), mb)]

    def decode(idx: list[int]) -> list[str]:
        images = stack_images([im for i in idx for im in prompts[i].images], ctx.image_size).to(ctx.device)
        outs = greedy(ctx.model, ctx.tok, [prompts[i].ids for i in idx], images, ctx.max_length, max_new)
        return [ctx.tok.decode(o) for o in outs]

    texts: dict[int, str] = {}
    for idx, out in zip(batches, map_batches(batches, decode, _bar(f"{bench.name} {k}-shot")), strict=True):
        texts |= dict(zip(idx, out, strict=True))
    predictions = {bench.items[i].key: _answer_text(ctx, bench.task, texts[i]) for i in range(len(prompts))}
    dropped = sum(p.dropped for p in prompts)
    return predictions, dropped, float(np.mean([p.shots for p in prompts]))


def _likelihood_task(
    ctx: EvalContext, bench: Benchmark, order: list[list[int]], shots: Sequence[int], out_dir: Path | None
) -> list[dict]:
    """The likelihood rows of one benchmark at every shot count; with ``out_dir`` its per-item files too."""
    score = caption_likelihood if bench.task == "captioning" else vqa_likelihood
    rows, per_item = score(ctx, bench, order, shots)
    if out_dir is not None:
        path = out_dir / "predictions"
        for k, items in per_item.items():
            if bench.task == "captioning":
                entries = [{"image_id": key, "nll": nll} for key, nll in items.items()]
                atomic.write_text(path / f"{bench.name}_{k}shot_nll.json", json.dumps(entries) + "\n")
            else:
                write_vqa_predictions(path / f"{bench.name}_{k}shot_ll.json", items)
    return rows


def _write_predictions(out_dir: Path, bench: Benchmark, k: int, predictions: dict[int, str]) -> None:
    path = out_dir / "predictions" / f"{bench.name}_{k}shot.json"
    write = write_caption_predictions if bench.task == "captioning" else write_vqa_predictions
    write(path, predictions)


def _score_task(
    bench: Benchmark, k: int, predictions: dict[int, str], dropped: int, kept: float, template: str
) -> list[dict]:
    """VQA accuracy (%; GQA: exact match, the spec's ``answer_metric``) of one benchmark at k shots; a
    captioning row's CIDEr-D is filled in by :func:`_score_captioning` once every captioning task has its
    predictions."""
    value = None
    if bench.task != "captioning":
        truth = {it.key: (it.targets, it.answer_type) for it in bench.items}
        value = answer_scores(predictions, truth, bench.spec.answer_metric)["accuracy"]
    return [
        {"benchmark": bench.name, "task": bench.task, "shots": k, "metric": GENERATION_METRIC[bench.task],
         "value": value, "n_examples": len(predictions), "demos_dropped": dropped, "mean_shots": kept,
         "template": template, "tokenizer": ""}
    ]  # fmt: skip


def _score_captioning(tasks: list[tuple[dict, Benchmark, dict[int, str]]]) -> list[dict]:
    """CIDEr-D (x 100, the paper's scale) of each captioning row, and the PTB tokenizer that scored it
    (mm1.eval.cider). Every task's references and predictions are tokenised in one call -- each set
    as the toolkit's own tokenizer run, but one Java start for all of them, not two per row.

    Returns NoCaps' per-domain rows: benchmark "<name>/<domain>" (in-domain, near-domain, out-domain),
    task ``DOMAIN_TASK``, each domain's images scored as a corpus of their own, tokenised apart, as the
    nocaps evaluation scores each domain (so the averages of summary.csv leave them out)."""
    jobs, domain_rows = [], []
    for row, bench, predictions in tasks:
        jobs.append((row, bench.items, predictions))
        present = {it.domain for it in bench.items}
        for domain in (d for d in NOCAPS_DOMAINS if d in present):
            items = [it for it in bench.items if it.domain == domain]
            domain_rows.append(
                row | {"benchmark": f"{bench.name}/{domain}", "task": DOMAIN_TASK, "n_examples": len(items)}
            )
            jobs.append((domain_rows[-1], items, predictions))
    if not jobs:
        return []
    tokenizer = resolve_tokenizer()
    runs = []
    for _, items, predictions in jobs:
        runs += [[t for it in items for t in it.targets], [predictions[it.key] for it in items]]
    tokens = iter(tokenize_runs(runs, tokenizer))
    for row, items, _ in jobs:
        refs, cands = iter(next(tokens)), next(tokens)
        score, _ = cider_d({str(it.key): c for it, c in zip(items, cands, strict=True)},
                           {str(it.key): [next(refs) for _ in it.targets] for it in items},
                           tokenize_text=False)  # fmt: skip
        row |= {"value": 100.0 * score, "tokenizer": tokenizer}
    return domain_rows


# --- multiple choice by likelihood ---------------------------------------------------------------


def _choose(ctx: EvalContext, groups: list[list[Candidate]], desc: str) -> list[int]:
    """Per group of candidates (one per choice), the index of the most likely one."""
    flat = [c for cands in groups for c in cands]
    mb = ctx.cfg.micro_batch_size

    def score(batch: list[Candidate]) -> list[float]:
        images = stack_images([im for c in batch for im in c.images], ctx.image_size).to(ctx.device)
        return continuation_logprobs(ctx.model, ctx.tok, batch, images, ctx.max_length)

    batches = [flat[start : start + mb] for start in range(0, len(flat), mb)]
    scores = [s for part in map_batches(batches, score, _bar(desc)) for s in part]
    picks, at = [], 0
    for cands in groups:
        picks.append(int(np.argmax(scores[at : at + len(cands)])))
        at += len(cands)
    return picks


def _bar(desc: str):
    """A progress bar over this rank's batches."""
    return lambda batches: progress(batches, desc=desc, unit="batch")


def _accuracy_rows(name: str, kinds: Sequence[str], correct: Sequence[bool], template: str) -> list[dict]:
    """Overall accuracy (%) and one row per kind ("<name>/<kind>")."""
    base = {"task": "multiple_choice", "shots": 0, "metric": "accuracy", "demos_dropped": 0, "mean_shots": 0.0,
            "template": template}  # fmt: skip
    rows = [base | {"benchmark": name, "value": 100.0 * float(np.mean(correct)), "n_examples": len(correct)}]
    for kind in sorted(set(kinds)):
        hits = [c for c, k in zip(correct, kinds, strict=True) if k == kind]
        rows.append(
            base | {"benchmark": f"{name}/{kind}", "value": 100.0 * float(np.mean(hits)), "n_examples": len(hits)}
        )
    return rows


def _textcore(ctx: EvalContext, path: Path) -> list[dict]:
    """TextCore: each item's choices scored as continuations of its prompt (text only)."""
    tasks = read_text_tasks(path)
    missing = [t.id for t in tasks if not t.choices]
    if missing:
        raise ValueError(f"{path}: TextCore items need choices; {len(missing)} have none (first: {missing[0]})")
    groups = [
        [Candidate([ctx.tok.bos_id] + ctx.tok.encode(t.prompt), ctx.tok.encode(" " + c), []) for c in t.choices]
        for t in tasks
    ]
    picks = _choose(ctx, groups, "textcore")
    correct = [t.choices[p] == t.answer for t, p in zip(tasks, picks, strict=True)]
    return _accuracy_rows("textcore", [t.task for t in tasks], correct, "{prompt} {choice}")


def _multiple_choice(ctx: EvalContext, path: Path) -> list[dict]:
    """SFT multiple choice: each choice scored as the assistant's answer (with its <eos>)."""
    items = read_multiple_choice(path)
    if not items:
        raise ValueError(f"{path}: no multiple-choice item")
    layout = PackLayout.from_tokenizer(ctx.tok, ctx.max_length, ctx.mc.connector.num_tokens, 1)
    groups = []
    for it in items:
        human = ("<image>\n" if it.image is not None else "") + it.question
        prompt = _sft_prompt(ctx, human, it.image)
        groups.append([
            Candidate(prompt.ids,
                      encode_text(ctx.tok, ctx.sft.assistant_template.format(text=c), layout).tolist() + [ctx.tok.eos_id],
                      prompt.images)
            for c in it.choices
        ])  # fmt: skip
    picks = _choose(ctx, groups, "multiple choice")
    correct = [p == it.answer for it, p in zip(items, picks, strict=True)]
    return _accuracy_rows("multiple_choice", ["all"] * len(items), correct, ctx.sft.user_template)[:1]
