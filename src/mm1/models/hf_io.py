"""Hugging Face folders on disk: mm1 checkpoints out to them, and back in (``mm1 export-hf`` / ``import-hf``).

    export: mm1 checkpoint ─► DIR/vision/  CLIPVisionModel (config.json, model.safetensors)
                              DIR/llm/     LlamaForCausalLM + mm1's tokenizer (tokenizer.json,
                                           tokenizer_config.json naming <bos>/<eos>/<pad>)
                              DIR/mm1.json what it came from; the connector is not exported (no HF class holds it)
    import: HF folders ─► OUT/checkpoint/  an mm1 checkpoint (``train.init_from``, ``--init-encoder/-decoder``)
                          OUT/tokenizer.json  the HF tokenizer with mm1's special tokens mapped or added
                          OUT/config.yaml     model.encoder / model.decoder / tokenizer keys of those shapes

The weights are mapped by :mod:`mm1.models.hf`; this module holds the pieces around them (which
parts to export, the tokenizer mapping, the vocabulary growth, the config written beside an import)
and :mod:`mm1.hf_cli` runs them with a process group and mm1's checkpoints. HF folders are read with
``local_files_only=True`` (never the hub). Special tokens on import (:func:`map_tokenizer`): mm1's ``<bos>``, ``<eos>`` and
``<pad>`` take over the HF tokenizer's own bos/eos/pad tokens (renamed, same id); the others
(``<image>``, ``<eoc>``, and a pad that is the eos) are added after the model's vocabulary, and
their embedding and output rows start as the mean of the existing rows (common practice, e.g.
LLaVA's added image tokens; torchtune and transformers' ``mean_resizing`` do the same).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from tokenizers import Tokenizer

from mm1.config import ModelConfig
from mm1.data.tokenizer import BOS, EOC, EOS, IMAGE, PAD, SPECIALS, TextTokenizer
from mm1.models.hf import LlamaForCausalLM  # raises MissingExtraError without transformers

PARTS = {"vision": "encoder", "llm": "language_model"}  # HF folder -> the MM1Model part it holds
ROLES = {BOS: "bos", EOS: "eos", PAD: "pad"}  # mm1's special -> the HF tokenizer's role, in mapping order
CONNECTOR_NOTE = "the connector is not exported: no Hugging Face class holds mm1's vision-language connector"


# --- export ---------------------------------------------------------------------------------------


def _exportable(cfg: ModelConfig) -> dict[str, str]:
    """{part: why it cannot be exported} for the parts a HF class cannot represent."""
    why = {}
    if not cfg.encoder.class_token:
        why["vision"] = "model.encoder.class_token=false (HF CLIP always has one)"
    dec = cfg.decoder
    if cfg.moe.enabled or (dec.position_embedding, dec.normalization, dec.activation) != ("rope", "RMSNorm", "swiglu"):
        why["llm"] = "the decoder is not a dense Llama (RoPE, RMSNorm, SwiGLU, model.moe.num_experts=0)"
    return why


def choose_parts(
    ckpt: Path, present: set[str], cfg: ModelConfig, asked: list[str] | None
) -> tuple[list[str], dict[str, str]]:
    """(parts to export, {part left out: why}): the ``asked`` ones (each must be ``present`` in the
    checkpoint ``ckpt`` and exportable), or by default every present part a HF class can represent."""
    why = _exportable(cfg)
    skipped = {p: "the checkpoint holds no tensors of it" for p in PARTS if p not in present}
    skipped |= {p: r for p, r in why.items() if p in present}
    if asked:
        bad = {p: skipped[p] for p in asked if p in skipped}
        if bad:
            part, reason = next(iter(bad.items()))
            raise ValueError(f"--parts {part}: cannot export it from {ckpt}: {reason}")
        return asked, {p: r for p, r in skipped.items() if p not in asked}
    chosen = [p for p in PARTS if p not in skipped]
    if not chosen:
        raise ValueError(f"{ckpt}: nothing to export ({'; '.join(f'{p}: {r}' for p, r in skipped.items())})")
    return chosen, skipped


def replace_folder(tmp: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def save_tokenizer(tok: TextTokenizer, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(tok.path),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IMAGE, EOC],
    )
    fast.save_pretrained(str(folder))


def special_ids(tok: TextTokenizer) -> dict[str, int]:
    """{special token: id} of mm1's tokenizer."""
    names = ("pad", "bos", "eos", "image", "eoc")  # TextTokenizer's <name>_id, in SPECIALS order
    return {token: getattr(tok, f"{name}_id") for token, name in zip(SPECIALS, names, strict=True)}


# --- the tokenizer on import ------------------------------------------------------------------------


def _named(value: Any) -> str | None:
    if isinstance(value, dict):  # older tokenizer_config.json: {"content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def hf_roles(folder: Path, tok: Tokenizer, ids: dict[str, Any]) -> dict[str, str]:
    """{role: token} of the HF tokenizer in ``folder``: tokenizer_config.json / special_tokens_map.json
    name them; else the model config's ``<role>_token_id`` (``ids``) where that id is a special token."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        for role in ROLES.values():
            if role not in found and (token := _named(data.get(f"{role}_token"))):
                found[role] = token
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    for role in ROLES.values():
        value = ids.get(f"{role}_token_id")
        value = value[0] if isinstance(value, list) and value else value
        token = tok.id_to_token(value) if isinstance(value, int) else None
        if role not in found and token in specials:
            found[role] = token
    return found


def _rename(tree: Any, old: str, new: str) -> Any:
    """``tree`` (JSON) with every string and key equal to ``old`` replaced by ``new``."""
    if isinstance(tree, dict):
        return {(new if k == old else k): _rename(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rename(v, old, new) for v in tree]
    return new if tree == old else tree


def _rename_token(data: dict, old: str, new: str) -> None:
    for entry in data.get("added_tokens") or []:
        if entry["content"] == old:
            entry["content"] = new
    vocab = data["model"].get("vocab")
    if isinstance(vocab, dict) and old in vocab:
        vocab[new] = vocab.pop(old)
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        for piece in vocab:
            if piece[0] == old:
                piece[0] = new
    if data.get("post_processor"):
        data["post_processor"] = _rename(data["post_processor"], old, new)


def _special(token_id: int, content: str) -> dict:
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    return {"id": token_id, "content": content, **flags, "special": True}


def map_tokenizer(folder: Path, model_vocab: int, ids: dict[str, Any]) -> tuple[str, dict]:
    """(tokenizer.json text with mm1's specials, what was done) for the HF tokenizer in ``folder``
    whose model has ``model_vocab`` embedding rows. Rows the model has past the tokenizer's last id get
    placeholder specials ``<mm1_unused_ID>`` (ids stay contiguous); mm1's missing specials follow, at
    ids ``model_vocab``, ``model_vocab + 1``, ..."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"--llm {folder} has no tokenizer.json; give a HF folder with a fast tokenizer")
    data = json.loads(path.read_text())
    tok = Tokenizer.from_str(path.read_text())
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > model_vocab:
        raise ValueError(f"LlamaConfig.vocab_size={model_vocab} is smaller than the tokenizer's {size} tokens")
    roles, renamed, taken = hf_roles(folder, tok, ids), {}, set()
    for ours, role in ROLES.items():
        theirs = roles.get(role)
        if theirs is None or theirs in taken or tok.token_to_id(ours) is not None:
            continue  # none, already mm1's name for another role (pad == eos), or mm1's name is there already
        _rename_token(data, theirs, ours)
        renamed[theirs], taken = ours, taken | {theirs}
    gap = [_special(i, f"<mm1_unused_{i}>") for i in range(size, model_vocab)]
    missing = [name for name in SPECIALS if tok.token_to_id(name) is None and name not in renamed.values()]
    added = [_special(model_vocab + i, name) for i, name in enumerate(missing)]
    data["added_tokens"] = [*(data.get("added_tokens") or []), *gap, *added]
    for name in SPECIALS:  # a name the HF vocabulary has as plain text becomes special (never split)
        if (i := tok.token_to_id(name)) is not None and not any(e["id"] == i for e in data["added_tokens"]):
            data["added_tokens"].append(_special(i, name))
    text = json.dumps(data, ensure_ascii=False, indent=2)
    check = Tokenizer.from_str(text)
    got = {e["content"]: check.token_to_id(e["content"]) for e in gap + added}
    if any(got[e["content"]] != e["id"] for e in gap + added) or check.get_vocab_size() != model_vocab + len(added):
        raise ValueError(f"{path}: the added tokens did not get contiguous ids after {size}; is the file consistent?")
    return text, {"renamed": renamed, "added": {e["content"]: e["id"] for e in added}, "placeholders": len(gap)}


def grow_vocab(llm: LlamaForCausalLM, rows: int) -> list[int]:
    """Give ``llm`` ``rows`` new embedding and output rows, each the mean of the existing ones; their ids."""
    old = llm.config.vocab_size
    with torch.no_grad():
        for module in (llm.model.embed_tokens, llm.lm_head):
            weight = module.weight
            mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
            module.weight = torch.nn.Parameter(torch.cat([weight, mean.expand(rows, -1)]))
    llm.model.embed_tokens.num_embeddings = llm.lm_head.out_features = old + rows
    llm.config.vocab_size = old + rows
    return list(range(old, old + rows))


# --- import ---------------------------------------------------------------------------------------


def quiet() -> None:
    """No progress bars from transformers: mm1's commands report in lines (and errors in one)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def from_folder(cls: type, folder: Path, flag: str) -> Any:
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {folder} has no config.json; give a folder that save_pretrained wrote")
    try:
        return cls.from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError, TypeError) as exc:  # transformers' own: no weights, another architecture
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{flag} {folder}: transformers cannot load it as a {cls.__name__} ({first})") from None


def config_yaml(cfg: ModelConfig, parts: list[str], tokenizer: Path | None, vocab: int | None) -> str:
    model = {}
    if "vision" in parts:
        model["encoder"] = cfg.encoder.model_dump(mode="json")
    if "llm" in parts:
        model["decoder"] = cfg.decoder.model_dump(mode="json")
    data: dict[str, Any] = {"model": model}
    if tokenizer is not None:
        data["tokenizer"] = {"vocab_size": vocab, "path": str(tokenizer.resolve())}
    head = (
        "# Written by `mm1 import-hf`: the shapes of the imported weights. Merge it with --config (or into a\n"
        "# study's base config) and start a stage from them with train.init_from: <this folder>/checkpoint.\n"
    )
    return head + yaml.safe_dump(data, sort_keys=False)
