"""The data-side stages: render the synthetic world, train the tokenizer. Each writes provenance."""

from __future__ import annotations

from pathlib import Path

from mm1 import provenance
from mm1.config import TokenizerConfig, WorldConfig
from mm1.data.tokenizer import TextTokenizer, train_tokenizer
from mm1.world import read_split
from mm1.world.scenes import generate_world


def make_world(cfg: WorldConfig, out_dir: Path) -> dict[str, Path]:
    """Render the train and test splits of the MM1 world into ``out_dir``."""
    paths = generate_world(cfg, Path(out_dir))
    provenance.record(out_dir, stage="data", config={"world": cfg.model_dump(mode="json")}, seed=cfg.seed)
    return paths


def make_tokenizer(cfg: TokenizerConfig, train_pairs: Path, out_dir: Path) -> TextTokenizer:
    """Train the BPE tokenizer on the training captions; writes ``out_dir/tokenizer.json``."""
    texts = read_split(train_pairs)["caption"].to_list()
    path = train_tokenizer(cfg, texts, Path(out_dir) / "tokenizer.json")
    tok = TextTokenizer(path)
    provenance.record(
        out_dir,
        stage="tokenizer",
        config={"tokenizer": cfg.model_dump(mode="json")},
        seed=None,
        inputs={"train_pairs": Path(train_pairs)},
        extra={"vocab_size": tok.vocab_size},
    )
    return tok
