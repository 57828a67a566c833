"""The paper-scale study is MM1's recipe: cells of Table 1, Fig 4, Fig 5, Fig 7 and the SFT stage,
resolved through mm1.study as Snakemake resolves them (config/paper-30b.yaml), against the paper
(shared/MM1.md; (s) = from secondary summaries)."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO
from mm1.config.load import from_dict
from mm1.config.presets import deep_merge, preset_data
from mm1.study import Study

ABLATION_FIGURES = ("table1", "fig4", "fig5a", "fig5b", "fig5c", "fig5d", "fig8")
# MM1's ablation base (Sec. 3) and its pre-training recipe
ABLATION = {"decoder_params": "llm-1.2b", "encoder": "vit-l14-336", "connector": ("c_abstractor", 144)}
PRETRAIN = {"steps": 200_000, "global_batch_size": 512, "seq_length": 4096, "warmup_steps": 2000}
SFT = {"steps": 10_000, "global_batch_size": 256, "seq_length": 2048, "lr": 1e-5, "lr_decay": "cosine"}  # (s)


def _default() -> dict:
    return yaml.safe_load((REPO / "config" / "default.yaml").read_text())


@pytest.fixture(scope="module")
def study() -> Study:
    """config/default.yaml + the preset and study file config/paper-30b.yaml names."""
    top = yaml.safe_load((REPO / "config" / "paper-30b.yaml").read_text())
    base = deep_merge(_default(), preset_data(top["preset"]))
    return Study(deep_merge(base, yaml.safe_load((REPO / top["studyfile"]).read_text())))


def _preset_section(name: str, *path: str) -> dict:
    data = deep_merge(_default(), preset_data(name))
    for key in path:
        data = data[key]
    return data


def _assert_pretraining(cfg) -> None:
    t, d = cfg.train, cfg.model.decoder
    got = {"steps": t.steps, "global_batch_size": t.global_batch_size, "seq_length": d.seq_length}
    assert got | {"warmup_steps": t.warmup_steps} == PRETRAIN
    assert t.freeze == [] and t.lr is None  # everything unfrozen; the LR law of the decoder's size


def _assert_layout_divides_heads(cfg) -> None:
    tp = cfg.parallel.tp
    assert cfg.model.encoder.num_attention_heads % tp == 0 and cfg.model.decoder.num_attention_heads % tp == 0


def test_the_ablation_figures_run_on_the_ablation_base_not_the_30b(study: Study):
    figures = study.base.study.figures
    for fig in ABLATION_FIGURES:
        assert "base" not in figures[fig].experiments, fig  # base is MM1-30B
    abl = study.stage_config("train", "abl")
    assert abl.model.decoder.model_dump() == _preset_section(ABLATION["decoder_params"], "model", "decoder")
    assert abl.model.encoder.model_dump() == _preset_section(ABLATION["encoder"], "model", "encoder")
    assert (abl.model.connector.kind, abl.model.connector.num_tokens) == ABLATION["connector"]
    assert abl.model.encoder.image_size == 336 and abl.model.encoder.patch_size == 14
    mixture = study.stage_config("pack", "abl").data.mixture
    assert (mixture.caption, mixture.interleaved, mixture.text) == (0.45, 0.45, 0.1)
    _assert_pretraining(abl)


def test_a_table1_cell_swaps_the_encoder_on_the_2_9b_decoder(study: Study):
    assert "enc-aim-600m" in study.base.study.figures["table1"].experiments
    for exp, encoder in (("enc-aim-600m", "aim-600m"), ("enc-vit-h14-378", "vit-h14-378")):
        cfg = study.stage_config("train", exp)
        assert cfg.model.decoder.model_dump() == _preset_section("llm-2.9b", "model", "decoder")  # (s)
        assert cfg.model.encoder.model_dump() == _preset_section(encoder, "model", "encoder")
        assert (cfg.model.connector.kind, cfg.model.connector.num_tokens) == ABLATION["connector"]
        _assert_pretraining(cfg)
        _assert_layout_divides_heads(cfg)  # AIM-600M: 12 heads
        _assert_layout_divides_heads(study.stage_config("encoder", exp))  # its encoder pre-training too


def test_a_fig4_cell_changes_only_the_connector_and_resolution(study: Study):
    cfg = study.stage_config("train", "conn-avg-t64-r224")
    abl = study.stage_config("train", "abl")
    assert (cfg.model.connector.kind, cfg.model.connector.num_tokens, cfg.model.encoder.image_size) == (
        "avg_pool",
        64,
        224,
    )
    assert cfg.model.decoder == abl.model.decoder and cfg.train == abl.train and cfg.parallel == abl.parallel
    assert study.run_of("llm", "conn-avg-t64-r224") == study.run_of("llm", "abl")  # the same LLM


def test_a_fig5_cell_changes_only_the_mixture(study: Study):
    pack = study.stage_config("pack", "mix-c0")
    assert (pack.data.mixture.caption, pack.data.mixture.interleaved, pack.data.mixture.text) == (0, 1, 0)
    assert study.stage_config("train", "mix-c0").model == study.stage_config("train", "abl").model
    assert study.run_of("encoder", "mix-c0") == study.run_of("encoder", "abl")


@pytest.mark.parametrize("exp, preset", [("dec-3b", "mm1-3b"), ("moe-7b", "mm1-7b-moe")])
def test_the_final_models_are_their_presets_whole(study: Study, exp: str, preset: str):
    """The ablation base under every experiment must not leak into a final model."""
    alone = from_dict({**deep_merge(_default(), preset_data(preset)), "name": exp}).model_dump()
    resolved = study.config(exp).model_dump()
    assert {k: v for k, v in resolved.items() if k != "study"} == {k: v for k, v in alone.items() if k != "study"}


def test_sft_is_the_papers_recipe_and_fig7_raises_only_the_sft_resolution(study: Study):
    for exp in ("abl", "dec-3b", "sft-split"):
        sft = study.stage_config("sft", exp)
        got = {
            "steps": sft.train.steps,
            "global_batch_size": sft.train.global_batch_size,
            "seq_length": sft.model.decoder.seq_length,
            "lr": sft.train.lr,
            "lr_decay": sft.train.lr_decay,
        }
        assert got == SFT and sft.train.freeze == [], exp
    pretrained = study.stage_config("train", "dec-3b").model.encoder.image_size
    assert pretrained == 378
    for exp, px, grid in (("sft-r448", 448, 1), ("sft-r560", 560, 1), ("sft-r672", 672, 1), ("sft-split", 672, 2)):
        sft = study.stage_config("sft", exp)
        assert (sft.model.encoder.image_size, sft.sft.image_grid) == (px, grid)
        assert px % sft.model.encoder.patch_size == 0
        assert study.run_of("train", exp) == "dec-3b", exp  # one pre-trained model, as the paper
    split = study.stage_config("sft", "sft-split")
    tokens = (split.sft.image_grid**2 + 1) * split.model.connector.num_tokens
    assert split.model.encoder.image_size * split.sft.image_grid == 1344 and tokens == 720 < SFT["seq_length"]
