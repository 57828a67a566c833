"""Held-out evaluation of a pre-trained encoder: does it know more than chance?

The held-out set is the captioning benchmark's val split that the manifest lists (``coco-val``;
:func:`heldout_captions`): images no encoder stage trains on (the caption pairs are separate draws),
the very images the multimodal model is later scored on, each with its first reference caption.
The references are written in the benchmark's style, not the alt-text or synthetic style the
encoder trains on, so this is zero-shot retrieval in CLIP's sense (COCO retrieval in the CLIP paper).

* CLIP: image -> caption retrieval (:func:`retrieval_accuracy`). Each image ranks the set's distinct
  caption texts by cosine similarity; top-k is a hit when its own caption text is among the k best.
  Captions are compared as text, so two images with the same caption share one candidate (the
  world repeats short captions): retrieving that text is a hit for both, and chance is k / M over
  the M distinct texts. A tie with the own text counts against the image (a collapsed encoder
  that scores every text alike gets 0, not 100).
* AIM: the next-patch loss on the held-out images at fixed prefix lengths, beside the loss of the
  best constant predictor (:func:`mean_predictor_loss`): the mean target patch of those same
  targets, which needs no image at all. An encoder that learns something beats it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mm1.data.encoder_batches import caption_tensors, caption_token_ids, cut_caption
from mm1.data.formats import read_coco_captions
from mm1.data.images import stack_images
from mm1.data.sources import read_manifest, verify
from mm1.data.tokenizer import TextTokenizer
from mm1.models.aim import AimModel, aim_loss, patchify
from mm1.models.clip import ClipModel

HELDOUT = "coco-val"  # the manifest entry whose images and first references are held out
TOP_K = (1, 5)


@dataclass(frozen=True)
class Heldout:
    name: str
    images: list[bytes]
    captions: list[str]


def heldout_captions(manifest: Path, name: str = HELDOUT) -> Heldout | None:
    """The val images of the manifest's ``name`` captioning benchmark, each with its first reference;
    None when the manifest lists none (an acquire manifest lists pre-training data only)."""
    df = read_manifest(manifest).filter(pl.col("format") == "coco")
    row = df.filter(pl.col("name") == name)
    if row.is_empty():
        return None
    path = Path(manifest).parent / row["path"][0]
    verify(manifest, path, row["sha256"][0])
    bench = read_coco_captions(path)
    keys = sorted(bench.images)
    return Heldout(name, [bench.images[k] for k in keys], [bench.references[k][0] for k in keys])


def retrieval_accuracy(
    image_emb: torch.Tensor, text_emb: torch.Tensor, texts: Sequence[str], ks: Sequence[int] = TOP_K
) -> dict[str, float]:
    """Image -> caption retrieval over distinct caption texts, in %.

    image_emb (N, E), text_emb (N, E): row i is image i and its caption ``texts[i]``; rows need not
    be normalised (cosine similarity is used). Returns ``top{k}`` and ``top{k}_chance`` = 100 min(k, M) / M
    for each k, plus ``images`` = N and ``captions`` = M, the number of distinct texts.
    """
    if not (len(image_emb) == len(text_emb) == len(texts)) or not len(texts):
        raise ValueError(
            f"need as many images as captions, at least one: {len(image_emb)}, {len(text_emb)}, {len(texts)}"
        )
    distinct = list(dict.fromkeys(texts))  # first occurrence of each text stands for it
    index = {t: j for j, t in enumerate(distinct)}
    first = [texts.index(t) for t in distinct]
    own = torch.tensor([index[t] for t in texts])  # (N,) each image's candidate
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    cand = torch.nn.functional.normalize(text_emb.float()[first], dim=-1)
    sim = img @ cand.T  # (N, M)
    own_sim = sim.gather(1, own[:, None])  # (N, 1)
    rank = (sim >= own_sim).sum(dim=1)  # 1 + the other texts that score at least as high (ties count against)
    m = len(distinct)
    out: dict[str, float] = {"images": float(len(texts)), "captions": float(m)}
    for k in ks:
        out[f"top{k}"] = 100.0 * (rank <= k).float().mean().item()
        out[f"top{k}_chance"] = 100.0 * min(k, m) / m
    return out


def mean_predictor_loss(targets: torch.Tensor) -> float:
    """MSE of the best constant prediction (the mean target vector) of ``targets`` (..., D)."""
    flat = targets.reshape(-1, targets.shape[-1]).float()
    return float(((flat - flat.mean(dim=0)) ** 2).mean())


def aim_targets(patches: torch.Tensor, prefix: int, normalize: bool) -> torch.Tensor:
    """The targets :func:`~mm1.models.aim.aim_loss` compares with, (B, P - prefix, D)."""
    targets = patches[:, prefix:]
    if normalize:
        mean, var = targets.mean(dim=-1, keepdim=True), targets.var(dim=-1, keepdim=True, unbiased=False)
        targets = (targets - mean) / (var + 1e-6).sqrt()
    return targets


def aim_prefixes(num_patches: int, n: int = 8) -> list[int]:
    """``n`` prefix lengths spread evenly over [1, P-1] (fixed, so runs compare)."""
    return sorted({int(round(x)) for x in np.linspace(1, num_patches - 1, n)})


@torch.no_grad()
def evaluate_aim(model: AimModel, images: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Held-out next-patch loss at :func:`aim_prefixes`, and the mean predictor's loss on the same targets."""
    model.eval()
    cfg = model.cfg
    losses, baselines, weights = [], [], []
    for prefix in aim_prefixes(model.num_patches):
        preds, targets = [], []
        for chunk in images.split(batch):
            preds.append(model.predict(chunk, prefix))
            targets.append(patchify(chunk, cfg.patch_size))
        pred, patches = torch.cat(preds), torch.cat(targets)
        losses.append(float(aim_loss(pred, patches, prefix, cfg.aim.normalize_pixels)))
        baselines.append(mean_predictor_loss(aim_targets(patches, prefix, cfg.aim.normalize_pixels)))
        weights.append(model.num_patches - prefix)
    w = np.asarray(weights, dtype=float) / sum(weights)  # every predicted patch counts once
    loss, base = float(np.dot(w, losses)), float(np.dot(w, baselines))
    return {"images": float(len(images)), "loss": loss, "mean_predictor_loss": base}


@torch.no_grad()
def evaluate_clip(
    model: ClipModel, images: torch.Tensor, captions: Sequence[str], tok: TextTokenizer, batch: int = 64
) -> dict[str, float]:
    """Image -> caption retrieval (:func:`retrieval_accuracy`) of ``captions[i]`` for ``images[i]``."""
    model.eval()
    seq = model.cfg.clip.text_seq_length
    image_emb = torch.cat([model.embed_images(chunk) for chunk in images.split(batch)])
    text_emb = []
    for start in range(0, len(captions), batch):
        ids = [cut_caption(tok, caption_token_ids(tok, c), seq) for c in captions[start : start + batch]]
        t = caption_tensors(tok, ids, seq)
        text_emb.append(model.embed_texts(t["text"].to(images.device), t["text_lengths"].to(images.device)))
    return retrieval_accuracy(image_emb, torch.cat(text_emb), captions)


def evaluate_encoder(
    model: ClipModel | AimModel, heldout: Heldout, image_size: int, tok: TextTokenizer, device: torch.device
) -> dict[str, float]:
    """The held-out metrics of the trained ``model`` (CLIP: retrieval; AIM: loss vs mean predictor)."""
    images = stack_images(heldout.images, image_size).to(device)
    if isinstance(model, ClipModel):
        return evaluate_clip(model, images, heldout.captions, tok)
    return evaluate_aim(model, images)


def clip_chance_loss(micro_batch: int) -> float:
    """The InfoNCE loss of an encoder that knows nothing: ln of the candidates per row (the micro-batch)."""
    return math.log(micro_batch)


def summarize(objective: str, curve: Sequence[float], micro_batch: int, heldout: dict[str, float] | None) -> dict:
    """The stage's metrics.json: the final training loss (mean of the last tenth of the steps) beside
    its chance level (CLIP), and the held-out metrics (``heldout_*``)."""
    tail = list(curve)[-max(1, len(curve) // 10) :]
    out: dict = {"objective": objective, "final_loss": float(np.mean(tail)), "final_loss_steps": len(tail)}
    if objective == "clip":
        out["chance_loss"] = clip_chance_loss(micro_batch)
    out["heldout_set"] = HELDOUT if heldout is not None else None
    out |= {f"heldout_{k}": v for k, v in (heldout or {}).items()}
    return out


def plot_encoder(steps: Sequence[int], losses: Sequence[float], summary: dict) -> bytes:
    """PNG: the training loss against its chance level, and the held-out metrics against theirs."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg only, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.plot(steps, losses, lw=0.8, label="training loss")
    if "chance_loss" in summary:
        left.axhline(summary["chance_loss"], color="gray", ls="--", label="chance (ln micro-batch)")
    left.set(xlabel="step", ylabel="loss", title=f"encoder ({summary['objective']})")
    left.legend(fontsize=7)
    if summary["heldout_set"] is None:
        right.text(0.5, 0.5, "no held-out set in the manifest", ha="center", va="center")
        right.set_axis_off()
    elif summary["objective"] == "clip":
        ks = [k for k in TOP_K if f"heldout_top{k}" in summary]
        x = np.arange(len(ks))
        right.bar(x - 0.2, [summary[f"heldout_top{k}"] for k in ks], 0.4, label="encoder")
        right.bar(x + 0.2, [summary[f"heldout_top{k}_chance"] for k in ks], 0.4, color="gray", label="chance")
        right.set_xticks(x, [f"top-{k}" for k in ks])
        n, m = int(summary["heldout_images"]), int(summary["heldout_captions"])
        right.set(ylabel="%", title=f"{summary['heldout_set']}: image->caption, {n} images / {m} captions")
        right.legend(fontsize=7)
    else:
        vals = [summary["heldout_loss"], summary["heldout_mean_predictor_loss"]]
        right.bar([0, 1], vals, color=["C0", "gray"])
        right.set_xticks([0, 1], ["encoder", "mean predictor"])
        right.set(ylabel="next-patch MSE", title=f"{summary['heldout_set']}: held-out reconstruction")
    right.title.set_fontsize(8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
