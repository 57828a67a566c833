"""``mm1 export-hf`` / ``mm1 import-hf`` on disk, ``train.init_from``, and transformers as an optional extra.

Every model and tokenizer is built here with random weights (nothing downloaded); HF folders are
read with ``local_files_only=True``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mm1.cli import main
from mm1.config import DecoderConfig, EncoderConfig, ModelConfig, ParallelConfig, TokenizerConfig, load
from mm1.data.stages import pack
from mm1.data.tokenizer import EOC, IMAGE, PAD, TextTokenizer, train_tokenizer
from mm1.models.hf_io import map_tokenizer
from mm1.models.init import init_weights
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint
from tinykit import TINY_ENCODER, WORLD, hf_tokenizer_folder, words


@torch.no_grad()
def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _foreign(root: Path, pre: str = "bytelevel", **llama) -> tuple[Path, Path, Tokenizer]:
    """HF folders of a random CLIP tower and a random Llama with 3 unused rows past its tokenizer."""
    tok = hf_tokenizer_folder(root / "llm", pre)
    cfg = dict(vocab_size=tok.get_vocab_size() + 3, hidden_size=64, intermediate_size=160, num_hidden_layers=2)
    cfg |= dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1)
    cfg |= dict(eos_token_id=2, tie_word_embeddings=False) | llama
    torch.manual_seed(0)
    _perturbed(LlamaForCausalLM(LlamaConfig(**cfg)), seed=1).save_pretrained(root / "llm")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4
    )
    _perturbed(CLIPVisionModel(vision), seed=2).save_pretrained(root / "vision")
    return root / "vision", root / "llm", tok


IMPORT_SET = ["--set", "model.decoder.seq_length=32", "--set", "model.connector.num_tokens=4"]


def _load_mm1(ckpt: Path) -> MM1Model:
    """The checkpoint's model (call inside ``distributed``); parts it does not hold keep their init."""
    meta = checkpoint.read_meta(ckpt)
    model = MM1Model(meta["model"], vocab_size=meta["vocab_size"], image_token_id=meta["image_token_id"])
    checkpoint.load_into(model, ckpt, tuple(meta.get("parts") or ("encoder", "connector", "language_model")))
    return model.eval()


# --- import of foreign HF models ------------------------------------------------------------------


def test_import_foreign_llama_and_clip_matches_hf(tmp_path: Path) -> None:
    vision, llm, hf_tok = _foreign(tmp_path / "hf")
    out = tmp_path / "imported"
    assert main(["import-hf", "--vision", str(vision), "--llm", str(llm), "--out", str(out), *IMPORT_SET]) == 0

    tok = TextTokenizer(out / "tokenizer.json")
    size, rows = hf_tok.get_vocab_size(), hf_tok.get_vocab_size() + 3
    assert (tok.bos_id, tok.eos_id) == (hf_tok.token_to_id("<s>"), hf_tok.token_to_id("</s>"))  # renamed, same id
    assert [tok.pad_id, tok.image_id, tok.eoc_id] == [rows, rows + 1, rows + 2]  # after the model's rows
    assert tok.vocab_size == rows + 3
    for text in words(20, seed=5):
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False).ids

    hf_llm = LlamaForCausalLM.from_pretrained(llm, local_files_only=True).eval()
    hf_vision = CLIPVisionModel.from_pretrained(vision, local_files_only=True).eval()
    ids = torch.tensor([hf_tok.encode(t, add_special_tokens=False).ids[:16] for t in words(40, seed=7)[:2]])
    pixels = torch.randn(2, 3, 16, 16)
    with distributed(ParallelConfig(), seed=0), torch.no_grad():
        model = _load_mm1(out / "checkpoint")
        ours = model(ids, torch.zeros(0, 3, 16, 16))
        theirs = hf_llm(input_ids=ids).logits
        assert (ours[..., :rows] - theirs).abs().max() <= 1e-4  # on the original ids
        emb = model.language_model.embedding.word_embeddings.weight
        mean = hf_llm.model.embed_tokens.weight.float().mean(dim=0)
        assert all(torch.equal(emb[i], mean) for i in (tok.pad_id, tok.image_id, tok.eoc_id))
        assert torch.equal(emb[:rows], hf_llm.model.embed_tokens.weight)  # the gap rows keep HF's weights too
        features = model.encoder(pixels)
        assert (features - hf_vision(pixel_values=pixels).last_hidden_state).abs().max() <= 1e-5
    assert size < rows  # the placeholders filled the gap
    cfg = load(out / "config.yaml", [])
    assert cfg.model.decoder == checkpoint.read_meta(out / "checkpoint")["model"].decoder
    assert (cfg.tokenizer.path, cfg.tokenizer.vocab_size) == (str((out / "tokenizer.json").resolve()), rows + 3)


def test_metaspace_tokenizer_is_mapped_the_same_way(tmp_path: Path) -> None:
    hf_tok = hf_tokenizer_folder(tmp_path, "metaspace")
    size = hf_tok.get_vocab_size()
    text, done = map_tokenizer(tmp_path, size, {"pad_token_id": None})
    (tmp_path / "mapped.json").write_text(text)
    tok = TextTokenizer(tmp_path / "mapped.json")
    assert done["renamed"] == {"<s>": "<bos>", "</s>": "<eos>"}
    assert done["added"] == {PAD: size, IMAGE: size + 1, EOC: size + 2}
    for line in words(20, seed=3):
        assert tok.encode(line) == hf_tok.encode(line, add_special_tokens=False).ids
        assert tok.decode(tok.encode(line)) == hf_tok.decode(hf_tok.encode(line, add_special_tokens=False).ids)


def test_a_pad_that_is_the_eos_becomes_a_token_of_its_own(tmp_path: Path) -> None:
    hf_tok = hf_tokenizer_folder(tmp_path, "bytelevel")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text()) | {"pad_token": {"content": "</s>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    size = hf_tok.get_vocab_size()
    text, done = map_tokenizer(tmp_path, size, {})
    assert done["renamed"] == {"<s>": "<bos>", "</s>": "<eos>"} and done["added"][PAD] == size
    (tmp_path / "mapped.json").write_text(text)
    tok = TextTokenizer(tmp_path / "mapped.json")
    assert (tok.eos_id, tok.pad_id) == (hf_tok.token_to_id("</s>"), size)


def test_a_tokenizer_larger_than_the_model_names_the_field(tmp_path: Path) -> None:
    hf_tok = hf_tokenizer_folder(tmp_path, "bytelevel")
    with pytest.raises(ValueError, match="LlamaConfig.vocab_size"):
        map_tokenizer(tmp_path, hf_tok.get_vocab_size() - 1, {})


def test_unrepresentable_llama_is_one_line_naming_the_field(tmp_path: Path, capsys) -> None:
    _, llm, _ = _foreign(tmp_path / "hf", tie_word_embeddings=True)
    capsys.readouterr()  # save_pretrained's progress bars
    assert main(["import-hf", "--llm", str(llm), "--out", str(tmp_path / "out"), *IMPORT_SET]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "LlamaConfig.tie_word_embeddings" in err


# --- export, then import: bit-exact ----------------------------------------------------------------


def _mm1_checkpoint(root: Path) -> tuple[Path, Path]:
    """A random mm1 checkpoint (CLIP-style encoder with a class token, a GQA decoder) and its tokenizer."""
    tok_path = train_tokenizer(TokenizerConfig(vocab_size=300), words(300), root / "tokenizer.json")
    tok = TextTokenizer(tok_path)
    encoder = EncoderConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=1, ffn_hidden_size=64)
    encoder = encoder.model_copy(update={"class_token": True, "activation": "quick_gelu"})
    decoder = DecoderConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_query_groups=2, seq_length=32)
    cfg = ModelConfig.model_validate({"encoder": encoder.model_dump(), "decoder": decoder.model_dump()})
    cfg = ModelConfig.model_validate({**cfg.model_dump(), "connector": {"num_tokens": 4}})
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(cfg, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        init_weights(model, seed=3)
        _perturbed(model, seed=4)
        meta = {"model": cfg.model_dump(mode="json"), "vocab_size": tok.vocab_size, "image_token_id": tok.image_id}
        ckpt = checkpoint.save(model, meta, root / "checkpoint")
    return ckpt, tok_path


VOCAB_SIZED = ("embedding.word_embeddings.weight", "output_layer.weight")


def test_export_then_import_is_bit_exact(tmp_path: Path) -> None:
    ckpt, tok_path = _mm1_checkpoint(tmp_path)
    hf, back = tmp_path / "hf", tmp_path / "back"
    assert main(["export-hf", "--checkpoint", str(ckpt), "--tokenizer", str(tok_path), "--out", str(hf)]) == 0
    info = json.loads((hf / "mm1.json").read_text())
    assert set(info["exported"]) == {"vision", "llm"} and "connector" in info["not_exported"]
    assert info["special_tokens"]["<image>"] == TextTokenizer(tok_path).image_id
    assert (hf / "vision" / "model.safetensors").is_file() and (hf / "llm" / "model.safetensors").is_file()

    fast = PreTrainedTokenizerFast.from_pretrained(hf / "llm", local_files_only=True)
    tok = TextTokenizer(tok_path)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    line = words(1, seed=9)[0]
    assert fast.encode(line, add_special_tokens=False) == tok.encode(line)

    args = ["import-hf", "--vision", str(hf / "vision"), "--llm", str(hf / "llm"), "--out", str(back)]
    assert main([*args, *IMPORT_SET]) == 0
    again_tok = TextTokenizer(back / "tokenizer.json")  # mm1's specials are there already: nothing renamed or added
    specials = ("vocab_size", "pad_id", "bos_id", "eos_id", "image_id", "eoc_id")
    assert [getattr(again_tok, a) for a in specials] == [getattr(tok, a) for a in specials]
    hf_llm = LlamaForCausalLM.from_pretrained(hf / "llm", local_files_only=True).eval()
    hf_vision = CLIPVisionModel.from_pretrained(hf / "vision", local_files_only=True).eval()
    ids = torch.tensor([tok.encode(t)[:12] for t in words(2, seed=11)])
    with distributed(ParallelConfig(), seed=0), torch.no_grad():
        original, again = _load_mm1(ckpt), _load_mm1(back / "checkpoint")
        for part in ("encoder", "language_model"):
            first, second = getattr(original, part).state_dict(), getattr(again, part).state_dict()
            for key, tensor in first.items():
                if isinstance(tensor, torch.Tensor):  # vocabulary padding rows are not exported (zeros on import)
                    rows = tok.vocab_size if key in VOCAB_SIZED else None
                    assert torch.equal(tensor[:rows], second[key][:rows]), f"{part}.{key}"
        logits = original(ids, torch.zeros(0, 3, 16, 16))[..., : tok.vocab_size]
        assert (logits - hf_llm(input_ids=ids).logits).abs().max() <= 1e-4
        pixels = torch.randn(2, 3, 16, 16)
        assert (original.encoder(pixels) - hf_vision(pixel_values=pixels).last_hidden_state).abs().max() <= 1e-5


def test_export_parts_that_cannot_be_exported_is_one_line(tmp_path: Path, capsys) -> None:
    ckpt, tok_path = _mm1_checkpoint(tmp_path)
    args = ["export-hf", "--checkpoint", str(ckpt), "--parts", "llm", "--out", str(tmp_path / "hf")]
    assert main(args) == 1  # no --tokenizer
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["export-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "hf")]) == 1
    assert "not an mm1 checkpoint" in capsys.readouterr().err


def test_an_encoder_stage_checkpoint_exports_its_vit(tmp_path: Path, capsys) -> None:
    from mm1.train.encoder_trainer import build_encoder_model

    cfg = load(None, [*TINY_ENCODER, "model.encoder.class_token=true", "model.encoder.activation=quick_gelu"])
    pixels = torch.randn(2, 3, 16, 16)
    with distributed(ParallelConfig(), seed=0), torch.no_grad():
        clip = _perturbed(build_encoder_model(cfg, vocab_size=300), seed=5)
        ours = clip.encoder(pixels)
        meta = {"model": cfg.model.model_dump(mode="json"), "vocab_size": 300, "image_token_id": 3, "objective": "clip"}
        ckpt = checkpoint.save(clip, meta, tmp_path / "checkpoint")
    assert main(["export-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    info = json.loads((tmp_path / "hf" / "mm1.json").read_text())
    assert list(info["exported"]) == ["vision"] and "no tensors" in info["not_exported"]["llm"]
    hf_vision = CLIPVisionModel.from_pretrained(tmp_path / "hf" / "vision", local_files_only=True).eval()
    with torch.no_grad():
        assert (hf_vision(pixel_values=pixels).last_hidden_state - ours).abs().max() <= 1e-5
    capsys.readouterr()
    args = ["export-hf", "--checkpoint", str(ckpt), "--parts", "llm", "--out", str(tmp_path / "hf2")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--parts llm" in err and "no tensors" in err


# --- a stage that starts from imported weights -----------------------------------------------------


def test_llm_stage_starts_from_imported_weights(tmp_path: Path, tiny_world: dict[str, Path], capsys) -> None:
    _, llm, _ = _foreign(tmp_path / "hf")
    imported = tmp_path / "imported"
    assert main(["import-hf", "--llm", str(llm), "--out", str(imported), *IMPORT_SET]) == 0
    text_only = ["data.mixture.caption=0", "data.mixture.interleaved=0", "data.mixture.text=1"]
    steps = ["train.steps=1", "train.warmup_steps=0", "train.lr=1e-10", "train.micro_batch_size=4"]
    overrides = [*WORLD, *text_only, *steps, "train.global_batch_size=4"]
    cfg = load(imported / "config.yaml", overrides)
    pack(cfg, tiny_world["manifest"], imported / "tokenizer.json", tmp_path / "packed")
    run = tmp_path / "llm"
    sets = [x for o in [*overrides, f"train.init_from={imported / 'checkpoint'}"] for x in ("--set", o)]
    inputs = ["--packed", str(tmp_path / "packed" / "train.parquet"), "--tokenizer", str(imported / "tokenizer.json")]
    assert main(["train", "--config", str(imported / "config.yaml"), *sets, *inputs, "--out", str(run)]) == 0

    with distributed(ParallelConfig(), seed=0):
        start = _load_mm1(imported / "checkpoint").language_model.state_dict()
        after = _load_mm1(run / "checkpoint").language_model.state_dict()
    keys = [k for k, t in start.items() if isinstance(t, torch.Tensor) and not k.endswith("_extra_state")]
    drift = max((start[k] - after[k]).abs().max().item() for k in keys)
    assert drift <= 1e-7  # one step at lr 1e-10 from the imported weights, not from a fresh init (~0.02 apart)
    provenance = json.loads((run / "provenance.json").read_text())
    assert any(k.startswith("init_") for k in provenance["inputs"])

    capsys.readouterr()
    wrong = ["--set", "model.decoder.ffn_hidden_size=128", *sets, *inputs, "--out", str(tmp_path / "x")]
    assert main(["train", "--config", str(imported / "config.yaml"), *wrong]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.init_from" in err and "ffn_hidden_size" in err
    other_tokenizer = [*sets, *inputs[:2], "--tokenizer", str(tiny_world["tokenizer"]), "--out", str(tmp_path / "y")]
    assert main(["train", "--config", str(imported / "config.yaml"), *other_tokenizer]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.init_from" in err and "vocabulary" in err


def test_encoder_stage_starts_from_an_imported_clip_tower(tmp_path: Path, tiny_world: dict[str, Path]) -> None:
    vision, _, _ = _foreign(tmp_path / "hf")
    imported = tmp_path / "imported"
    assert main(["import-hf", "--vision", str(vision), "--out", str(imported), *IMPORT_SET]) == 0
    steps = ["train.steps=1", "train.warmup_steps=0", "train.lr=1e-10", "train.micro_batch_size=4"]
    sets = [
        x
        for o in [*steps, "train.global_batch_size=4", f"train.init_from={imported / 'checkpoint'}"]
        for x in ("--set", o)
    ]
    inputs = ["--manifest", str(tiny_world["manifest"]), "--tokenizer", str(tiny_world["tokenizer"])]
    run = tmp_path / "encoder"
    assert main(["encoder", "--config", str(imported / "config.yaml"), *sets, *inputs, "--out", str(run)]) == 0
    with distributed(ParallelConfig(), seed=0):
        start = _load_mm1(imported / "checkpoint").encoder.state_dict()
        meta = checkpoint.read_meta(run / "checkpoint")
        model = MM1Model(meta["model"], vocab_size=meta["vocab_size"], image_token_id=meta["image_token_id"])
        checkpoint.load_into(model, run / "checkpoint", ("encoder",))
        after = model.encoder.state_dict()
    keys = [k for k, t in start.items() if isinstance(t, torch.Tensor) and not k.endswith("_extra_state")]
    assert max((start[k] - after[k]).abs().max().item() for k in keys) <= 1e-7


def test_init_from_must_exist(tmp_path: Path, tiny_world: dict[str, Path], capsys) -> None:
    args = ["train", "--set", f"train.init_from={tmp_path / 'nowhere'}", "--out", str(tmp_path / "run")]
    args += ["--packed", str(tiny_world["packed"]), "--tokenizer", str(tiny_world["tokenizer"])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.init_from" in err and "does not exist" in err


# --- transformers is an optional extra -------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_only_the_hf_commands_import_transformers() -> None:
    code = "import sys, mm1.cli, mm1.train.trainer, mm1.eval.harness; print('transformers' in sys.modules)"
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_hf_command_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "llm").mkdir()
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from mm1.cli import main\n"
        f"sys.exit(main(['import-hf', '--llm', {str(tmp_path / 'llm')!r}, '--out', {str(tmp_path / 'out')!r}]))"
    )
    done = _python(code)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert "\n" not in err and "pip install 'mm1[hf]'" in err
