"""A study starts from Hugging Face weights (issue 26 item 4): ``mm1 import-hf``, then Snakemake trains.

A random Llama and its Llama-style tokenizer (``<s>`` ``</s>`` ``<unk>``, no pad) are built here and
saved as ``save_pretrained`` writes them; nothing is downloaded. The study names the import in its
config the way docs/models.md shows: the import's ``config.yaml`` as a configfile (the decoder's
shape and ``tokenizer.path``) and ``study.stages.llm: {train.init_from: ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from conftest import SMOKE, run
from tinykit import hf_tokenizer_folder

pytestmark = pytest.mark.slow


def _hf_llama(folder: Path) -> None:
    """A random LlamaForCausalLM with a ByteLevel BPE tokenizer, in HF's on-disk layout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = hf_tokenizer_folder(folder)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def test_snakemake_trains_the_llm_stage_from_imported_hf_weights(project: Path) -> None:
    _hf_llama(project / "hf-llama")
    run(["mm1", "import-hf", "--llm", "hf-llama", "--out", "imported"], project)
    imported = yaml.safe_load((project / "imported" / "config.yaml").read_text())
    assert imported["tokenizer"]["path"].endswith("imported/tokenizer.json")
    start = project / "start.yaml"
    llm = {"train.init_from": "imported/checkpoint", "train.steps": 2, "train.warmup_steps": 0}  # a start is enough
    start.write_text(yaml.safe_dump({"study": {"stages": {"llm": llm}}}))
    configs = ["--configfile", str(SMOKE), "imported/config.yaml", str(start)]
    run(["snakemake", "--cores", "2", "results/llm/base/checkpoint", *configs], project, timeout=900)

    out = project / "results" / "llm" / "base"
    inputs = json.loads((out / "provenance.json").read_text())["inputs"]
    assert any(k.startswith("init_") and "imported/checkpoint" in str(v) for k, v in inputs.items()), inputs
    copied = project / "results" / "tokenizer" / "base" / "tokenizer.json"
    assert copied.read_bytes() == (project / "imported" / "tokenizer.json").read_bytes()
    hf_vocab = Tokenizer.from_file(str(project / "hf-llama" / "tokenizer.json")).get_vocab_size()
    saved = json.loads((out / "checkpoint" / "model.json").read_text())
    assert saved["vocab_size"] == hf_vocab + 3  # <s> -> <bos>, </s> -> <eos>; <pad> <image> <eoc> added
