"""``mm1 export-hf`` and ``mm1 import-hf``: their arguments and handlers, and ``train.init_from``.

    mm1 export-hf --checkpoint CKPT [--tokenizer TOKENIZER.json] [--parts vision,llm] --out DIR
    mm1 import-hf [--vision DIR] [--llm DIR] [--preset/--config/--set ...] --out OUT

transformers is an optional extra (``pip install 'mm1[hf]'``): this module imports it (through
:mod:`mm1.models.hf`, which raises ``MissingExtraError`` naming the extra) only inside
:func:`export_checkpoint` and :func:`import_folders`, so ``mm1`` and every other command run without it.
``cfg`` of ``import-hf`` (its --preset/--config/--set, resolved by :mod:`mm1.cli`) gives what HF does not
describe: the connector, the encoder's objective, the decoder's training length.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mm1 import atomic, provenance
from mm1.config import ConfigError, DecoderConfig, EncoderConfig, ModelConfig, ParallelConfig, RunConfig
from mm1.data.tokenizer import IMAGE, SPECIALS, TextTokenizer

# --- arguments ------------------------------------------------------------------------------------


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(p not in ("vision", "llm") for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of parts; give vision, llm or vision,llm")
    return list(dict.fromkeys(parts))


def export_args(p: argparse.ArgumentParser) -> None:
    """``mm1 export-hf``."""
    p.add_argument("--checkpoint", type=Path, required=True, help="mm1 checkpoint folder (of a train/llm/encoder run)")
    p.add_argument("--tokenizer", type=Path, help="the run's tokenizer.json (needed to export the llm)")
    p.add_argument(
        "--parts",
        type=_parts,
        help="vision, llm or vision,llm (default: every part the checkpoint holds that HF can represent)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder: vision/, llm/, mm1.json")


def import_args(p: argparse.ArgumentParser) -> None:
    """``mm1 import-hf``."""
    p.add_argument("--vision", type=Path, help="a HF CLIPVisionModel folder (config.json + model.safetensors)")
    p.add_argument("--llm", type=Path, help="a HF LlamaForCausalLM folder with its tokenizer.json")
    p.add_argument("--out", type=Path, required=True, help="output folder: checkpoint/, tokenizer.json, config.yaml")


# --- the work (heavy imports inside: torch, megatron, transformers) ------------------------------


def export_checkpoint(ckpt: Path, tokenizer: Path | None, out: Path, parts: list[str] | None = None) -> dict:
    """Write ``ckpt``'s parts as HF folders under ``out`` (``vision/``, ``llm/`` with the tokenizer, and
    ``mm1.json``: where they came from, mm1's special token ids, what was not exported and why); see
    :mod:`mm1.models.hf_io`. Returns mm1.json's content."""
    from mm1.models import hf, hf_io  # transformers: the optional extra (MissingExtraError without it)
    from mm1.models.mm1_model import MM1Model
    from mm1.parallel.setup import distributed
    from mm1.train import checkpoint

    ckpt, out = Path(ckpt), Path(out)
    hf_io.quiet()
    meta = checkpoint.read_meta(ckpt)
    cfg: ModelConfig = meta["model"]
    chosen, skipped = hf_io.choose_parts(ckpt, checkpoint_parts(ckpt), cfg, parts)
    tok = None
    if "llm" in chosen:
        if tokenizer is None:
            raise ValueError("exporting the llm needs --tokenizer (the tokenizer.json the checkpoint was trained with)")
        tok = TextTokenizer(tokenizer)
        if tok.vocab_size != meta["vocab_size"]:
            raise ValueError(
                f"--tokenizer {tokenizer} has {tok.vocab_size} tokens, {ckpt} was trained with "
                f"{meta['vocab_size']}; give the tokenizer of the run that wrote it"
            )
    out.mkdir(parents=True, exist_ok=True)
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(cfg, vocab_size=meta["vocab_size"], image_token_id=meta["image_token_id"]).eval()
        checkpoint.load_into(model, ckpt, tuple(hf_io.PARTS[p] for p in chosen))
        for part in chosen:
            tmp = out / f"{part}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            if part == "vision":
                hf.export_vision(model).save_pretrained(str(tmp))
            else:
                ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
                hf.export_llm(model, tok.vocab_size, **ids).save_pretrained(str(tmp))
                hf_io.save_tokenizer(tok, tmp)
            hf_io.replace_folder(tmp, out / part)
    info = {
        "checkpoint": str(ckpt),
        "sha256": provenance.hash_path(ckpt),
        "meta": {**meta, "model": cfg.model_dump(mode="json")},
        "exported": {p: f"{p}/" for p in chosen},
        "not_exported": {"connector": hf_io.CONNECTOR_NOTE} | skipped,
        "special_tokens": hf_io.special_ids(tok) if tok else None,
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
    }
    atomic.write_text(out / "mm1.json", json.dumps(info, indent=2, default=str) + "\n")
    return info


def checkpoint_parts(ckpt: Path) -> set[str]:
    """The HF parts (``vision``, ``llm``) whose MM1Model module the checkpoint holds tensors of (an
    encoder-stage checkpoint has no decoder; a train-stage one has both, its encoder possibly untrained).
    The checkpoint is verified (checksums, no unsafe pickles) before megatron reads its metadata."""
    from megatron.core import dist_checkpointing

    from mm1.models.hf_io import PARTS
    from mm1.train import safe_load

    safe_load.verify(ckpt)
    tops = {key.split(".")[0] for key in dist_checkpointing.load_tensors_metadata(str(ckpt))}
    return {hf for hf, ours in PARTS.items() if ours in tops}


def import_folders(vision: Path | None, llm: Path | None, out: Path, base: ModelConfig, seed: int = 0) -> dict:
    """Write ``out/checkpoint``, ``out/tokenizer.json`` (with ``llm``) and ``out/config.yaml`` from
    HF folders (:mod:`mm1.models.hf_io`); ``base`` gives what HF does not describe (the connector,
    the encoder's objective, the decoder's seq_length). Returns the checkpoint's model.json content."""
    from mm1.models import hf, hf_io  # transformers: the optional extra (MissingExtraError without it)
    from mm1.models.mm1_model import MM1Model
    from mm1.parallel.setup import distributed
    from mm1.train import checkpoint

    if vision is None and llm is None:
        raise ValueError("give --vision DIR, --llm DIR or both (folders that save_pretrained wrote)")
    out = Path(out)
    hf_io.quiet()
    parts, imported, cfg = [], {}, base
    vm = lm = None
    if vision is not None:
        vm = hf_io.from_folder(hf.CLIPVisionModel, vision, "--vision")
        cfg = cfg.model_copy(update={"encoder": hf.encoder_config_from_hf(vm.config, cfg.encoder)})
        parts.append("vision")
        imported["vision"] = {"folder": str(vision), "sha256": provenance.hash_path(Path(vision))}
    vocab, image_id, tok_path = len(SPECIALS), SPECIALS.index(IMAGE), None  # vision only: no vocabulary
    if llm is not None:
        lm = hf_io.from_folder(hf.LlamaForCausalLM, llm, "--llm")
        decoder, hf_vocab = hf.decoder_config_from_hf(lm.config, cfg.decoder)
        cfg = cfg.model_copy(update={"decoder": decoder})
        text, mapping = hf_io.map_tokenizer(Path(llm), hf_vocab, lm.config.to_dict())
        mapping["mean_initialised_rows"] = hf_io.grow_vocab(lm, len(mapping["added"]))
        out.mkdir(parents=True, exist_ok=True)
        tok_path = atomic.write_text(out / "tokenizer.json", text)
        tok = TextTokenizer(tok_path)
        vocab, image_id = tok.vocab_size, tok.image_id
        parts.append("llm")
        imported["llm"] = {"folder": str(llm), "sha256": provenance.hash_path(Path(llm)), "tokenizer": mapping}
    cfg = ModelConfig.model_validate(cfg.model_dump())
    meta = {
        "model": cfg.model_dump(mode="json"),
        "vocab_size": vocab,
        "image_token_id": image_id,
        "parts": [hf_io.PARTS[p] for p in parts],  # train.init_from loads only these; the rest is a fresh init
        "imported_from": imported | {"git": provenance.git_state()},
    }
    with distributed(ParallelConfig(), seed=seed):
        model = MM1Model(cfg, vocab_size=vocab, image_token_id=image_id)
        hf.load_hf_into(model, vision=vm, llm=lm)
        checkpoint.save(model, meta, out / "checkpoint")
    atomic.write_text(out / "config.yaml", hf_io.config_yaml(cfg, parts, tok_path, vocab if lm is not None else None))
    return meta


# --- handlers -------------------------------------------------------------------------------------


def cmd_export_hf(args: argparse.Namespace) -> int:
    """write a checkpoint's encoder and decoder as HF CLIPVisionModel / LlamaForCausalLM folders (safetensors)"""
    if not args.checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} is not a folder; give an mm1 checkpoint folder")
    info = export_checkpoint(args.checkpoint, args.tokenizer, args.out, args.parts)
    left = "; ".join(f"{p}: {why}" for p, why in info["not_exported"].items())
    print(f"export-hf: {', '.join(info['exported'])} -> {args.out} (not exported: {left})")
    return 0


def cmd_import_hf(args: argparse.Namespace, cfg: RunConfig) -> int:
    """read HF CLIPVisionModel / LlamaForCausalLM folders into an mm1 checkpoint, tokenizer and config"""
    for flag in ("vision", "llm"):
        path = getattr(args, flag)
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"--{flag} {path} is not a folder; give a folder that save_pretrained wrote")
    meta = import_folders(args.vision, args.llm, args.out, cfg.model, seed=cfg.train.seed)
    tok = meta["imported_from"].get("llm", {}).get("tokenizer")
    mapped = f"; tokens renamed {tok['renamed']}, added {tok['added']}" if tok else ""
    print(f"import-hf: {', '.join(meta['parts'])} -> {args.out}/checkpoint{mapped}")
    return 0


# --- train.init_from --------------------------------------------------------------------------------

_NOT_WEIGHTS = {"encoder": ("image_size", "objective", "clip", "aim"), "decoder": ("seq_length",)}


def _differences(section: str, saved: dict, ours: EncoderConfig | DecoderConfig) -> dict:
    mine = ours.model_dump(mode="json")
    return {k: (saved.get(k), v) for k, v in mine.items() if k not in _NOT_WEIGHTS[section] and saved.get(k) != v}


def init_from(cfg: RunConfig, tokenizer: Path, stage_parts: tuple[str, ...]) -> list[tuple[Path, tuple[str, ...]]]:
    """The ``init`` entry (checkpoint, parts) of ``train.init_from`` for a stage that can start from
    ``stage_parts`` (``encoder``, ``language_model``), or [] when it is unset. Checked before any
    process starts: the folder exists, holds one of those parts (an import-hf checkpoint names its
    parts; an encoder-stage one holds the encoder; a train-stage one everything), that part's
    architecture equals the config's, and a decoder's vocabulary is the ``tokenizer``'s."""
    if cfg.train.init_from is None:
        return []
    ckpt = Path(cfg.train.init_from)
    meta_path = ckpt / "model.json"
    if not meta_path.is_file():
        what = "does not exist" if not ckpt.exists() else "is not an mm1 checkpoint folder (no model.json)"
        raise ConfigError(
            f"train.init_from={ckpt} {what}; give a checkpoint folder (OUT/checkpoint of `mm1 import-hf`, "
            "or the checkpoint/ of a train stage's --out)"
        )
    meta = json.loads(meta_path.read_text())
    held = meta.get("parts") or (["encoder"] if "objective" in meta else ["encoder", "connector", "language_model"])
    parts = tuple(p for p in stage_parts if p in held)
    if not parts:
        raise ConfigError(f"train.init_from={ckpt} holds {held}, none of what this stage starts from ({stage_parts})")
    for part, section in (("encoder", "encoder"), ("language_model", "decoder")):
        diff = _differences(section, meta["model"][section], getattr(cfg.model, section)) if part in parts else {}
        if diff:
            raise ConfigError(
                f"train.init_from={ckpt}: its model.{section} differs from the config's (checkpoint, config): {diff}; "
                f"use the config it came with (e.g. --config <import-hf OUT>/config.yaml)"
            )
    if "language_model" in parts:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size() if Path(tokenizer).is_file() else None
        if vocab is not None and vocab != meta["vocab_size"]:
            raise ConfigError(
                f"train.init_from={ckpt} has a vocabulary of {meta['vocab_size']} tokens, --tokenizer {tokenizer} "
                f"{vocab}; train with the tokenizer it came with (tokenizer.path: <import-hf OUT>/tokenizer.json)"
            )
    return [(ckpt, parts)]
