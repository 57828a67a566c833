"""Worker of test_generate.py: greedy decoding under TP=2 (run under torchrun with 2 processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # test_generate; tinykit

from test_generate import prompts_and_images  # noqa: E402

from mm1.config import ParallelConfig  # noqa: E402
from mm1.data.images import stack_images  # noqa: E402
from mm1.data.tokenizer import TextTokenizer  # noqa: E402
from mm1.eval.generate import greedy  # noqa: E402
from mm1.models.megatron_config import MegatronLayout  # noqa: E402
from mm1.models.mm1_model import MM1Model  # noqa: E402
from mm1.parallel.setup import distributed  # noqa: E402
from mm1.train import checkpoint  # noqa: E402


def main(root: Path, out: Path) -> None:
    run = {"data": root / "world", "tokenizer": root / "tokenizer" / "tokenizer.json", "ckpt": root / "ckpt"}
    tok = TextTokenizer(run["tokenizer"])
    meta = checkpoint.read_meta(run["ckpt"])
    prompts, images = prompts_and_images(run)
    with distributed(ParallelConfig(world_size=2, tp=2), seed=0) as rank:
        model = MM1Model(
            meta["model"], vocab_size=tok.vocab_size, image_token_id=tok.image_id, layout=MegatronLayout(tp=2)
        )
        checkpoint.load_into(model, run["ckpt"])
        model.eval()
        x = stack_images(images, meta["model"].encoder.image_size)
        outs = greedy(model, tok, prompts, x, meta["model"].decoder.seq_length, 20)
        if rank.is_main:
            out.write_text(json.dumps(outs))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
