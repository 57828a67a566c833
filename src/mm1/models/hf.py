"""Hugging Face interoperability: CLIP vision towers and Llama decoders into and out of mm1.

torchtitan's ``state_dict_adapter`` idea: pure functions that map configs and state dicts, and
two thin helpers that move whole models (:func:`load_hf_into`, :func:`export_hf`).

    HF CLIPVisionModel  <->  MM1Model.encoder         (megatron CLIPViTModel, class token on)
    HF LlamaForCausalLM <->  MM1Model.language_model  (megatron GPTModel, RMSNorm, SwiGLU, RoPE)

The layouts that differ:

* megatron fuses Q, K and V into one ``linear_qkv`` whose rows go group by group: for each of the
  ``ng`` query groups, that group's ``np/ng`` query heads, then its key head, then its value head
  (``Attention.get_query_key_value_tensors``). With plain MHA (ng = np) that is [q, k, v] per head.
* megatron's SwiGLU ``linear_fc1`` is cat(gate, up): the first half goes through SiLU.
* mm1 pads the vocabulary to a multiple of 128 (:func:`padded_vocab_size`); imported rows past the
  HF vocabulary are zeros, and the export slices them off.
* megatron's CLIP ViT returns the last layer's output without ``ln_post``: that is HF's
  ``last_hidden_state``. HF's ``post_layernorm`` only normalises the pooled class token, which mm1
  does not use, so it is dropped on import and exported as the identity (weight 1, bias 0).

State dicts here are module-relative: the keys of ``model.encoder.state_dict()`` and of
``model.language_model.state_dict()`` (without megatron's ``_extra_state`` entries).

transformers is an optional extra (``pip install 'mm1[hf]'``): only this module and
:mod:`mm1.models.hf_io` import it, and only the ``mm1 export-hf`` / ``mm1 import-hf`` commands import
them; without it, importing this module raises :class:`MissingExtraError` saying what to install.
"""

from __future__ import annotations

import torch

from mm1.config import DecoderConfig, EncoderConfig
from mm1.models.mm1_model import MM1Model, padded_vocab_size


class MissingExtraError(ImportError):
    """transformers (the optional extra ``mm1[hf]``) is not installed; only the HF commands need it."""


try:
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
except ImportError:
    raise MissingExtraError(
        "Hugging Face import/export needs the optional extra: pip install 'mm1[hf]' (transformers, safetensors)"
    ) from None

State = dict[str, torch.Tensor]

# --- shared helpers -----------------------------------------------------------------------------


def _require(ok: bool, field: str, value: object, why: str) -> None:
    if not ok:
        raise ValueError(f"{field}={value!r} is not supported: {why}")


def _take(state: State, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the state dict has no {key!r}; is it from the model the config describes?")
    return state.pop(key)


def _no_leftovers(state: State, what: str) -> None:
    if state:
        raise ValueError(f"{what} keys the config does not account for: {sorted(state)[:8]}")


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """HF q (np*hn, ...), k and v (ng*hn, ...) -> megatron's (ng*(np/ng + 2)*hn, ...) rows."""
    q, k, v = (t.reshape(groups, -1, *t.shape[1:]) for t in (q, k, v))  # (ng, rows per group, ...)
    fused = torch.cat([q, k, v], dim=1)  # (ng, (np/ng + 2)*hn, ...)
    return fused.reshape(-1, *fused.shape[2:])


def split_qkv(qkv: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, ...]:
    """Inverse of :func:`fuse_qkv`: megatron's fused rows -> HF q, k, v."""
    head_dim = qkv.shape[0] // (heads + 2 * groups)
    per_group = qkv.reshape(groups, -1, *qkv.shape[1:])  # (ng, (np/ng + 2)*hn, ...)
    parts = per_group.split([heads // groups * head_dim, head_dim, head_dim], dim=1)
    return tuple(p.reshape(-1, *qkv.shape[1:]).contiguous() for p in parts)


def _without_extra_state(state: State) -> State:
    return {k: v for k, v in state.items() if not k.endswith("_extra_state")}


# --- vision: HF CLIPVisionModel <-> megatron CLIPViTModel ----------------------------------------

_VIT = {  # HF key -> CLIPViTModel key, outside the layers
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "position_embeddings.weight",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
}
_VIT_LAYER = {  # "encoder.layers.{i}." + HF key -> "decoder.layers.{i}." + CLIPViTModel key
    "layer_norm1.weight": "input_layernorm.weight",
    "layer_norm1.bias": "input_layernorm.bias",
    "self_attn.out_proj.weight": "self_attention.linear_proj.weight",
    "self_attn.out_proj.bias": "self_attention.linear_proj.bias",
    "layer_norm2.weight": "pre_mlp_layernorm.weight",
    "layer_norm2.bias": "pre_mlp_layernorm.bias",
    "mlp.fc1.weight": "mlp.linear_fc1.weight",
    "mlp.fc1.bias": "mlp.linear_fc1.bias",
    "mlp.fc2.weight": "mlp.linear_fc2.weight",
    "mlp.fc2.bias": "mlp.linear_fc2.bias",
}


def _square(hf_cfg: CLIPVisionConfig, field: str) -> int:
    value = getattr(hf_cfg, field)
    if isinstance(value, (list, tuple)):
        _require(len(value) == 2 and value[0] == value[1], f"CLIPVisionConfig.{field}", value, "mm1 is square only")
        return int(value[0])
    return int(value)


def encoder_config_from_hf(hf_cfg: CLIPVisionConfig, base: EncoderConfig | None = None) -> EncoderConfig:
    """The EncoderConfig of a HF CLIP vision tower; fields HF does not describe (the pre-training
    objective and its heads) come from ``base``. ``projection_dim`` and the initializer settings
    are not part of the tower's forward and are not carried over."""
    if not isinstance(hf_cfg, CLIPVisionConfig):
        raise TypeError(f"expected a CLIPVisionConfig, got {type(hf_cfg).__name__}")
    _require(
        hf_cfg.hidden_act in ("gelu", "quick_gelu"),
        "CLIPVisionConfig.hidden_act",
        hf_cfg.hidden_act,
        "mm1's encoder has 'gelu' (exact) or 'quick_gelu'",
    )
    _require(hf_cfg.num_channels == 3, "CLIPVisionConfig.num_channels", hf_cfg.num_channels, "mm1 reads RGB")
    _require(
        not hf_cfg.attention_dropout,
        "CLIPVisionConfig.attention_dropout",
        hf_cfg.attention_dropout,
        "mm1's encoder trains without dropout; set it to 0.0",
    )
    fields = {
        "image_size": _square(hf_cfg, "image_size"),
        "patch_size": _square(hf_cfg, "patch_size"),
        "hidden_size": hf_cfg.hidden_size,
        "num_layers": hf_cfg.num_hidden_layers,
        "num_attention_heads": hf_cfg.num_attention_heads,
        "ffn_hidden_size": hf_cfg.intermediate_size,
        "class_token": True,
        "activation": hf_cfg.hidden_act,
        "norm_epsilon": hf_cfg.layer_norm_eps,
    }
    return EncoderConfig.model_validate({**(base or EncoderConfig()).model_dump(), **fields})


def encoder_config_to_hf(enc_cfg: EncoderConfig, **hf_fields) -> CLIPVisionConfig:
    """The CLIPVisionConfig of an mm1 encoder; ``hf_fields`` adds HF-only settings (projection_dim...)."""
    _require(enc_cfg.class_token, "EncoderConfig.class_token", enc_cfg.class_token, "HF CLIP always has one")
    return CLIPVisionConfig(
        hidden_size=enc_cfg.hidden_size,
        intermediate_size=enc_cfg.ffn_hidden_size,
        num_hidden_layers=enc_cfg.num_layers,
        num_attention_heads=enc_cfg.num_attention_heads,
        num_channels=3,
        image_size=enc_cfg.image_size,
        patch_size=enc_cfg.patch_size,
        hidden_act=enc_cfg.activation,
        layer_norm_eps=enc_cfg.norm_epsilon,
        attention_dropout=0.0,
        **hf_fields,
    )


def encoder_state_from_hf(hf_state: State, enc_cfg: EncoderConfig) -> State:
    """CLIPVisionModel state dict -> CLIPViTModel state dict (``post_layernorm`` dropped)."""
    hf = {k.removeprefix("vision_model."): v for k, v in hf_state.items()}
    heads = enc_cfg.num_attention_heads
    out = {"class_token": _take(hf, "embeddings.class_embedding").reshape(1, 1, -1)}  # (H,) -> (1, 1, H)
    out |= {ours: _take(hf, theirs) for theirs, ours in _VIT.items()}
    for i in range(enc_cfg.num_layers):
        src, dst = f"encoder.layers.{i}.", f"decoder.layers.{i}."
        out |= {dst + ours: _take(hf, src + theirs) for theirs, ours in _VIT_LAYER.items()}
        for kind in ("weight", "bias"):
            q, k, v = (_take(hf, f"{src}self_attn.{p}_proj.{kind}") for p in "qkv")
            out[f"{dst}self_attention.linear_qkv.{kind}"] = fuse_qkv(q, k, v, groups=heads)
    hf.pop("post_layernorm.weight", None)
    hf.pop("post_layernorm.bias", None)
    _no_leftovers(hf, "CLIPVisionModel")
    return out


def encoder_state_to_hf(state: State, enc_cfg: EncoderConfig) -> State:
    """CLIPViTModel state dict -> CLIPVisionModel state dict (``post_layernorm`` = identity)."""
    ours = _without_extra_state(state)
    heads, hidden = enc_cfg.num_attention_heads, enc_cfg.hidden_size
    out = {"embeddings.class_embedding": _take(ours, "class_token").reshape(-1)}
    out |= {theirs: _take(ours, mine) for theirs, mine in _VIT.items()}
    for i in range(enc_cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"encoder.layers.{i}."
        out |= {dst + theirs: _take(ours, src + mine) for theirs, mine in _VIT_LAYER.items()}
        for kind in ("weight", "bias"):
            qkv = split_qkv(_take(ours, f"{src}self_attention.linear_qkv.{kind}"), heads, heads)
            out |= {f"{dst}self_attn.{p}_proj.{kind}": t for p, t in zip("qkv", qkv, strict=True)}
    _no_leftovers(ours, "CLIPViTModel")
    dtype = out["embeddings.class_embedding"].dtype
    out["post_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
    out["post_layernorm.bias"] = torch.zeros(hidden, dtype=dtype)
    return out


# --- language: HF LlamaForCausalLM <-> megatron GPTModel -----------------------------------------

_LLAMA = {"model.norm.weight": "decoder.final_layernorm.weight"}  # HF key -> GPTModel key
_LLAMA_PADDED = {  # vocabulary-sized: padded with zero rows in mm1
    "model.embed_tokens.weight": "embedding.word_embeddings.weight",
    "lm_head.weight": "output_layer.weight",
}
_LLAMA_LAYER = {  # "model.layers.{i}." + HF key -> "decoder.layers.{i}." + GPTModel key
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
    "mlp.down_proj.weight": "mlp.linear_fc2.weight",
}


def _rope_theta(hf_cfg: LlamaConfig) -> float:
    rope = dict(hf_cfg.rope_parameters or {"rope_theta": getattr(hf_cfg, "rope_theta", 10000.0)})
    kind = rope.pop("rope_type", "default")
    _require(kind == "default", "LlamaConfig.rope_parameters.rope_type", kind, "mm1 has plain RoPE, no scaling")
    theta = rope.pop("rope_theta")
    _require(not rope, "LlamaConfig.rope_parameters", hf_cfg.rope_parameters, "only rope_theta is understood")
    return float(theta)


def decoder_config_from_hf(hf_cfg: LlamaConfig, base: DecoderConfig | None = None) -> tuple[DecoderConfig, int]:
    """(DecoderConfig, vocab_size) of a HF Llama; ``seq_length`` (the training length) comes from
    ``base`` and must fit in ``max_position_embeddings``. Token ids (bos/eos/pad) stay with the
    tokenizer; initializer settings and ``use_cache`` are not carried over."""
    if not isinstance(hf_cfg, LlamaConfig):
        raise TypeError(f"expected a LlamaConfig, got {type(hf_cfg).__name__}")
    base = base or DecoderConfig()
    _require(hf_cfg.hidden_act == "silu", "LlamaConfig.hidden_act", hf_cfg.hidden_act, "mm1's decoder is SwiGLU")
    for field, why in [
        ("tie_word_embeddings", "mm1 keeps input and output embeddings apart"),
        ("attention_bias", "mm1's decoder has no biases"),
        ("mlp_bias", "mm1's decoder has no biases"),
        ("attention_dropout", "mm1's decoder trains without dropout; set it to 0.0"),
    ]:
        _require(not getattr(hf_cfg, field), f"LlamaConfig.{field}", getattr(hf_cfg, field), why)
    head_dim = hf_cfg.hidden_size // hf_cfg.num_attention_heads
    _require(
        hf_cfg.head_dim == head_dim,
        "LlamaConfig.head_dim",
        hf_cfg.head_dim,
        f"mm1 uses hidden_size / num_attention_heads = {head_dim}",
    )
    _require(
        base.seq_length <= hf_cfg.max_position_embeddings,
        "LlamaConfig.max_position_embeddings",
        hf_cfg.max_position_embeddings,
        f"it is shorter than the decoder's seq_length={base.seq_length}",
    )
    groups = hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads
    fields = {
        "num_layers": hf_cfg.num_hidden_layers,
        "hidden_size": hf_cfg.hidden_size,
        "num_attention_heads": hf_cfg.num_attention_heads,
        "num_query_groups": None if groups == hf_cfg.num_attention_heads else groups,
        "ffn_hidden_size": hf_cfg.intermediate_size,
        "position_embedding": "rope",
        "normalization": "RMSNorm",
        "activation": "swiglu",
        "rotary_base": _rope_theta(hf_cfg),
        "norm_epsilon": hf_cfg.rms_norm_eps,
    }
    return DecoderConfig.model_validate({**base.model_dump(), **fields}), hf_cfg.vocab_size


def decoder_config_to_hf(dec_cfg: DecoderConfig, vocab_size: int, **hf_fields) -> LlamaConfig:
    """The LlamaConfig of an mm1 decoder; ``max_position_embeddings`` defaults to ``seq_length``,
    ``hf_fields`` adds HF-only settings (bos_token_id, eos_token_id, ...)."""
    for field, want in [("position_embedding", "rope"), ("normalization", "RMSNorm"), ("activation", "swiglu")]:
        value = getattr(dec_cfg, field)
        _require(value == want, f"DecoderConfig.{field}", value, f"a Llama has {want!r}")
    hf_fields.setdefault("max_position_embeddings", dec_cfg.seq_length)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=dec_cfg.hidden_size,
        intermediate_size=dec_cfg.ffn_hidden_size,
        num_hidden_layers=dec_cfg.num_layers,
        num_attention_heads=dec_cfg.num_attention_heads,
        num_key_value_heads=dec_cfg.query_groups,
        hidden_act="silu",
        rms_norm_eps=dec_cfg.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": dec_cfg.rotary_base},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        **hf_fields,
    )


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if rows < t.shape[0]:
        raise ValueError(f"the HF vocabulary has {t.shape[0]} rows, more than mm1's padded {rows}")
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def decoder_state_from_hf(hf_state: State, dec_cfg: DecoderConfig, padded_vocab: int | None = None) -> State:
    """LlamaForCausalLM state dict -> GPTModel state dict; embeddings and output layer padded with
    zero rows to ``padded_vocab`` (default: the HF vocabulary padded to a multiple of 128)."""
    hf = dict(hf_state)
    groups = dec_cfg.query_groups
    padded = {ours: _take(hf, theirs) for theirs, ours in _LLAMA_PADDED.items()}
    rows = padded_vocab or padded_vocab_size(len(padded["embedding.word_embeddings.weight"]))
    out = {ours: _pad_rows(t, rows) for ours, t in padded.items()}
    out |= {ours: _take(hf, theirs) for theirs, ours in _LLAMA.items()}
    for i in range(dec_cfg.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        out |= {dst + ours: _take(hf, src + theirs) for theirs, ours in _LLAMA_LAYER.items()}
        q, k, v = (_take(hf, f"{src}self_attn.{p}_proj.weight") for p in "qkv")
        out[f"{dst}self_attention.linear_qkv.weight"] = fuse_qkv(q, k, v, groups)
        gate, up = _take(hf, f"{src}mlp.gate_proj.weight"), _take(hf, f"{src}mlp.up_proj.weight")
        out[f"{dst}mlp.linear_fc1.weight"] = torch.cat([gate, up])  # megatron: SiLU on the first half
    _no_leftovers(hf, "LlamaForCausalLM")
    return out


def decoder_state_to_hf(state: State, dec_cfg: DecoderConfig, vocab_size: int) -> State:
    """GPTModel state dict -> LlamaForCausalLM state dict, vocabulary padding sliced off."""
    ours = _without_extra_state(state)
    heads, groups = dec_cfg.num_attention_heads, dec_cfg.query_groups
    rows = len(ours.get("embedding.word_embeddings.weight", ()))
    if not 0 < vocab_size <= rows:
        raise ValueError(f"vocab_size={vocab_size} must be in 1..{rows}, the padded rows of the embedding")
    out = {theirs: _take(ours, mine)[:vocab_size] for theirs, mine in _LLAMA_PADDED.items()}
    out |= {theirs: _take(ours, mine) for theirs, mine in _LLAMA.items()}
    for i in range(dec_cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        out |= {dst + theirs: _take(ours, src + mine) for theirs, mine in _LLAMA_LAYER.items()}
        qkv = split_qkv(_take(ours, f"{src}self_attention.linear_qkv.weight"), heads, groups)
        out |= {f"{dst}self_attn.{p}_proj.weight": t for p, t in zip("qkv", qkv, strict=True)}
        gate, up = _take(ours, f"{src}mlp.linear_fc1.weight").chunk(2)
        out[f"{dst}mlp.gate_proj.weight"], out[f"{dst}mlp.up_proj.weight"] = gate, up
    _no_leftovers(ours, "GPTModel (is it an MoE decoder?)")
    return out


# --- whole models ---------------------------------------------------------------------------------


def _same(section: str, ours: EncoderConfig | DecoderConfig, theirs: EncoderConfig | DecoderConfig) -> None:
    mine, hf = ours.model_dump(), theirs.model_dump()
    diff = {k: (v, hf[k]) for k, v in mine.items() if v != hf[k]}
    if diff:
        raise ValueError(f"model.{section} differs from the HF model's config (mm1, HF): {diff}")


def _whole(model: MM1Model, what: str) -> None:
    if not (model.pre_process and model.post_process) or model.config.tensor_model_parallel_size != 1:
        raise ValueError(f"{what} needs the whole, unsharded model (tp = pp = 1), not one rank's part")


def _load(module: torch.nn.Module, state: State) -> None:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ValueError(f"state dict mismatch: missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}")


@torch.no_grad()
def load_hf_into(
    model: MM1Model, vision: CLIPVisionModel | None = None, llm: LlamaForCausalLM | None = None
) -> MM1Model:
    """Copy HF weights into ``model`` (built from the configs :func:`encoder_config_from_hf` and
    :func:`decoder_config_from_hf` give); the connector keeps its initialisation."""
    _whole(model, "load_hf_into")
    if vision is not None:
        _same("encoder", model.cfg.encoder, encoder_config_from_hf(vision.config, model.cfg.encoder))
        _load(model.encoder, encoder_state_from_hf(vision.state_dict(), model.cfg.encoder))
    if llm is not None:
        if model.cfg.moe.enabled:
            raise ValueError("model.moe.num_experts > 0: a Llama has a dense decoder")
        dec, _ = decoder_config_from_hf(llm.config, model.cfg.decoder)
        _same("decoder", model.cfg.decoder, dec)
        state = decoder_state_from_hf(llm.state_dict(), dec, model.language_model.vocab_size)
        _load(model.language_model, state)
    return model


@torch.no_grad()
def export_vision(model: MM1Model) -> CLIPVisionModel:
    """A HF copy of ``model``'s encoder (the whole, unsharded model)."""
    _whole(model, "export_vision")
    enc = model.cfg.encoder
    vision = CLIPVisionModel(encoder_config_to_hf(enc))
    vision.load_state_dict(encoder_state_to_hf(model.encoder.state_dict(), enc))
    return vision.eval()


@torch.no_grad()
def export_llm(model: MM1Model, vocab_size: int, **llama_fields) -> LlamaForCausalLM:
    """A HF copy of ``model``'s decoder; ``vocab_size`` is the unpadded vocabulary (mm1's own,
    ``<image>`` included when it has one) and ``llama_fields`` go to the LlamaConfig."""
    _whole(model, "export_llm")
    if model.cfg.moe.enabled:
        raise ValueError("model.moe.num_experts > 0: a Llama has a dense decoder")
    dec = model.cfg.decoder
    llm = LlamaForCausalLM(decoder_config_to_hf(dec, vocab_size, **llama_fields))
    llm.load_state_dict(decoder_state_to_hf(model.language_model.state_dict(), dec, vocab_size))
    return llm.eval()


def export_hf(model: MM1Model, vocab_size: int, **llama_fields) -> tuple[CLIPVisionModel, LlamaForCausalLM]:
    """HF copies of ``model``'s encoder and decoder (:func:`export_vision`, :func:`export_llm`)."""
    return export_vision(model), export_llm(model, vocab_size, **llama_fields)
