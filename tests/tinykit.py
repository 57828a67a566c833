"""The tiny configs and helpers every test folder shares: the one definition of each.

Tests import from here (``from tinykit import tiny``), never from a conftest: when pytest collects
several folders, ``import conftest`` may find another folder's conftest. ``tests/`` is on
``sys.path`` because ``tests/conftest.py`` lives there (pytest's default "prepend" import mode); a
script a test starts in a process of its own puts it there itself.

Three sizes, each derived from the pieces below rather than copied:

- :data:`WORLD` + :data:`TINY`: the tiny run of the training, fault and SLURM tests: a 64-caption world,
  a 320-word tokenizer, a 2 x 64 decoder, 6 steps of 8 sequences (``tests/conftest.py``'s ``tiny_world``).
- :data:`EVAL_WORLD` + :data:`EVAL_MODEL`: the eval tests' world (more benchmark items) and the same
  model over 160 positions with 4 image tokens.
- :data:`MICRO`: the 16 px ViT (:data:`TINY_ENCODER`) under a 2 x 32 decoder, for tests that build a
  model without a tokenizer (vocabulary 50).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from mm1.config import RunConfig, load
from mm1.data.stages import make_tokenizer, pack
from mm1.world.export import make_world

if TYPE_CHECKING:
    from mm1.models.mm1_model import MM1Model

TESTS = Path(__file__).resolve().parent

WORLD = [
    "world.n_captions=64",
    "world.n_documents=16",
    "world.n_text=32",
    "world.n_bench_val=8",
    "world.n_bench_train=4",
    "world.n_textcore=4",
    "world.n_sft=4",
    "world.n_multiple_choice=4",
    "tokenizer.vocab_size=320",
]
TINY_MODEL = [
    "model.encoder.hidden_size=32",
    "model.encoder.num_layers=1",
    "model.encoder.ffn_hidden_size=64",
    "model.decoder.num_layers=2",
    "model.decoder.hidden_size=64",
    "model.decoder.ffn_hidden_size=128",
]
# 6 steps x 8 sequences = 48 sequences; the packed tiny world holds that many (longer runs wrap around)
TINY = [
    *TINY_MODEL,
    "train.steps=6",
    "train.warmup_steps=1",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
]

# The eval tests: more benchmark items to score, 4 image tokens, room for few-shot prompts.
EVAL_WORLD = [
    *WORLD,
    "world.n_bench_val=6",
    "world.n_bench_train=10",
    "world.n_textcore=12",
    "world.n_multiple_choice=6",
]
EVAL_MODEL = [*TINY_MODEL, "model.connector.num_tokens=4", "model.decoder.seq_length=160"]

# A 16 px image in 4 px patches through a 1-layer ViT of width 16, pooled to 4 image tokens.
TINY_ENCODER = [
    "model.encoder.image_size=16",
    "model.encoder.patch_size=4",
    "model.encoder.hidden_size=16",
    "model.encoder.num_layers=1",
    "model.encoder.num_attention_heads=2",
    "model.encoder.ffn_hidden_size=32",
    "model.connector.num_tokens=4",
]


def tiny_decoder(layers: int, hidden: int, heads: int, seq_length: int) -> list[str]:
    """A decoder of ``layers`` x ``hidden`` (MLP 2 x hidden) over ``seq_length`` tokens."""
    return [
        f"model.decoder.num_layers={layers}",
        f"model.decoder.hidden_size={hidden}",
        f"model.decoder.num_attention_heads={heads}",
        f"model.decoder.ffn_hidden_size={2 * hidden}",
        f"model.decoder.seq_length={seq_length}",
    ]


MICRO = [*TINY_ENCODER, *tiny_decoder(layers=2, hidden=32, heads=4, seq_length=24)]


def tiny(*overrides: str) -> RunConfig:
    """The tiny run's config (:data:`TINY`) with ``overrides`` applied last."""
    return load(None, TINY + list(overrides))


def write_world(root: Path, overrides: list[str], *, packed: bool = True) -> dict[str, Path]:
    """The world of ``overrides`` under ``root/world``, its tokenizer under ``root/tokenizer`` and (if
    ``packed``) its packed pre-training sequences under ``root/packed``; the paths by name."""
    cfg = load(None, overrides)
    make_world(cfg.world, root / "world")
    manifest = root / "world" / "manifest.parquet"
    tok = make_tokenizer(cfg.tokenizer, manifest, root / "tokenizer", cfg.data.max_bad_fraction)
    out = {
        "world": root / "world",
        "manifest": manifest,
        "benchmark": root / "world" / "benchmarks" / "coco" / "captions_val.json",
        "tokenizer": tok.path,
    }
    if packed:
        pack(cfg, manifest, tok.path, root / "packed")
        out["packed"] = root / "packed" / "train.parquet"
    return out


def train_inputs(paths: dict[str, Path]) -> list[str]:
    """``mm1 train``'s input arguments for a world of :func:`write_world` (``tiny_world``)."""
    return ["--packed", str(paths["packed"]), "--tokenizer", str(paths["tokenizer"])]


def build_model(cfg: RunConfig, tok) -> MM1Model:
    """The megatron model of ``cfg.model`` for tokenizer ``tok`` (anything with ``vocab_size`` and
    ``image_id``); call it inside ``mm1.parallel.setup.distributed``."""
    # imported here: tests/conftest.py imports this module in every folder, and most need no torch
    from mm1.models.mm1_model import MM1Model

    return MM1Model(cfg.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)


def load_conftest(folder: Path) -> ModuleType:
    """Another test folder's conftest (its plain helpers), as a module of its own name."""
    spec = importlib.util.spec_from_file_location(f"mm1_tests_{folder.name}_conftest", folder / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Hugging Face side (tests/models/test_hf_cli.py, tests/workflow/test_hf_start.py) -----------------

WORDS = "the a red blue cat dog sat on mat under big small house tree runs jumps quickly slowly".split()


def words(n: int, seed: int = 0) -> list[str]:
    """``n`` short sentences of WORDS (seeded)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(n)]


def hf_tokenizer_folder(folder: Path, pre: str = "bytelevel"):
    """A Llama-style tokenizer in HF's layout under ``folder`` (tokenizer.json + tokenizer_config.json):
    <unk> <s> </s> specials, no pad, ByteLevel or Metaspace pieces, BPE trained on :func:`words`."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if pre == "metaspace" else None))
    if pre == "bytelevel":
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(words(400), trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok
