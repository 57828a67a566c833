"""0-shot captioning of held-out images, scored with CIDEr-D; results as a polars table."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mm1 import atomic, provenance
from mm1.config import EvalConfig, ParallelConfig
from mm1.data.images import stack_images
from mm1.data.records import CaptionBenchmark
from mm1.data.sequence import prompt_ids
from mm1.data.tokenizer import TextTokenizer
from mm1.eval.cider import cider_d
from mm1.eval.generate import greedy
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.progress import progress
from mm1.train import checkpoint

SECTIONS = ("eval",)


@dataclass(frozen=True)
class EvalResult:
    scores: pl.DataFrame  # one row per (task, shots, metric)
    captions: pl.DataFrame  # id, candidate, references


def evaluate_captioning(
    cfg: EvalConfig,
    run_name: str,
    bench: CaptionBenchmark,
    bench_path: Path,
    tokenizer_path: Path,
    ckpt: Path,
    out_dir: Path,
) -> EvalResult:
    """Caption every image of a captioning benchmark split greedily, score against its references."""
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer_path)
    meta = checkpoint.read_meta(ckpt)
    mc = meta["model"]
    if meta["vocab_size"] != tok.vocab_size:
        raise ValueError(
            f"checkpoint {ckpt} was trained with a {meta['vocab_size']}-token vocabulary, "
            f"tokenizer {tokenizer_path} has {tok.vocab_size}; evaluate with the run's own tokenizer"
        )
    ids = sorted(bench.images)
    if cfg.num_examples:
        ids = ids[: cfg.num_examples]
    prompt = prompt_ids(tok, mc.connector.num_tokens, cfg.caption_prompt)
    candidates: dict[str, str] = {}
    with distributed(ParallelConfig(), seed=0) as rank:
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id).to(rank.device)
        checkpoint.load_into(model, ckpt)
        model.eval()
        for start in progress(range(0, len(ids), cfg.micro_batch_size), desc=f"caption {bench.name}", unit="batch"):
            chunk = ids[start : start + cfg.micro_batch_size]
            images = stack_images([bench.images[i] for i in chunk], mc.encoder.image_size).to(rank.device)
            outs = greedy(model, tok, [prompt] * images.shape[0], images, mc.decoder.seq_length, cfg.max_new_tokens)
            candidates.update({str(i): tok.decode(o) for i, o in zip(chunk, outs, strict=True)})
    references = {str(i): bench.references[i] for i in ids}
    score, per_image = cider_d(candidates, references)
    captions = pl.DataFrame(
        {
            "id": list(candidates),
            "candidate": list(candidates.values()),
            "references": [references[i] for i in candidates],
            "cider": [per_image[i] for i in candidates],
        }
    )
    scores = pl.DataFrame(
        {
            "run": [run_name],
            "task": [f"captioning/{bench.name}"],
            "shots": [0],
            "metric": ["CIDEr"],
            "value": [score],
            "n_examples": [len(candidates)],
            "train_steps": [meta["steps"]],
        }
    )
    if rank.is_main:
        atomic.write_text(out_dir / "scores.csv", scores.write_csv())
        summary = {f"{bench.name}_0shot_cider": score, "n_examples": len(candidates)}
        atomic.write_text(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        atomic.write_text(
            out_dir / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in captions.iter_rows(named=True))
        )
        provenance.record(
            out_dir,
            stage="eval",
            config={"eval": cfg.model_dump(mode="json")},
            seed=None,
            inputs={"benchmark": Path(bench_path), "tokenizer": Path(tokenizer_path), "checkpoint": Path(ckpt)},
            extra={"cider": score, "prompt_template": cfg.caption_prompt},
        )
    if score == 0.0:
        warnings.warn("CIDEr is 0: the model wrote nothing that matches the references", stacklevel=2)
    return EvalResult(scores=scores, captions=captions)
