"""A study starts from Hugging Face weights (issue 26 item 4): ``mm1 import-hf``, then Snakemake trains.

A random Llama and its Llama-style tokenizer (``<s>`` ``</s>`` ``<unk>``, no pad) are built here and
saved as ``save_pretrained`` writes them; nothing is downloaded. The study names the import in its
config the way docs/models.md shows: the import's ``config.yaml`` as a configfile (the decoder's
shape and ``tokenizer.path``) and ``study.stages.llm: {train.init_from: ...}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import SMOKE, run

pytestmark = pytest.mark.slow

WORDS = "a red blue green cat dog square circle sat on under big small the of and is".split()


def _hf_llama(folder: Path) -> None:
    """A random LlamaForCausalLM with a ByteLevel BPE tokenizer, in HF's on-disk layout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(special))
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
    start.write_text(yaml.safe_dump({"study": {"stages": {"llm": {"train.init_from": "imported/checkpoint"}}}}))
    configs = ["--configfile", str(SMOKE), "imported/config.yaml", str(start)]
    run(["snakemake", "--cores", "2", "results/llm/base/checkpoint", *configs], project, timeout=900)

    llm = project / "results" / "llm" / "base"
    inputs = json.loads((llm / "provenance.json").read_text())["inputs"]
    assert any(k.startswith("init_") and "imported/checkpoint" in str(v) for k, v in inputs.items()), inputs
    copied = project / "results" / "tokenizer" / "base" / "tokenizer.json"
    assert copied.read_bytes() == (project / "imported" / "tokenizer.json").read_bytes()
    hf_vocab = Tokenizer.from_file(str(project / "hf-llama" / "tokenizer.json")).get_vocab_size()
    saved = json.loads((llm / "checkpoint" / "model.json").read_text())
    assert saved["vocab_size"] == hf_vocab + 3  # <s> -> <bos>, </s> -> <eos>; <pad> <image> <eoc> added
