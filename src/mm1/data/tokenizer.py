"""The text tokenizer: byte-level BPE trained with HF tokenizers, plus MM1's special tokens."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mm1 import atomic
from mm1.config import TokenizerConfig

PAD, BOS, EOS, IMAGE, EOC = "<pad>", "<bos>", "<eos>", "<image>", "<eoc>"
SPECIALS = [PAD, BOS, EOS, IMAGE, EOC]
"""<eoc> ends a chunk inside a packed sequence (e.g. one caption of several packed together)."""


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str], out: Path) -> Path:
    """Train on ``texts`` and write ``out`` (a tokenizer.json) atomically."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return atomic.write_text(Path(out), tok.to_str(pretty=True))


class TextTokenizer:
    """encode/decode text and know the special ids."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"tokenizer file {path} is a folder; give its tokenizer.json")
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist; run the tokenizer stage first")
        self.path = path
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust parser raises a bare Exception for any malformed file
            raise ValueError(
                f"tokenizer file {path} is not a tokenizer.json ({exc}); rerun the tokenizer stage to rewrite it"
            ) from None
        self._tok.encode_special_tokens = True  # "<image>" written in web text stays text, never a slot
        ids = {name: self._tok.token_to_id(name) for name in SPECIALS}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer {path} lacks the special tokens {missing}; retrain it with mm1")
        self.pad_id, self.bos_id, self.eos_id, self.image_id, self.eoc_id = (ids[n] for n in SPECIALS)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True).strip()
