"""The ViT encoder: bidirectional attention, position-embedding interpolation, loading a checkpoint
trained at another image size."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mm1.config import EncoderConfig, ModelConfig, ParallelConfig, load
from mm1.models.encoder import build_encoder, interpolate_position_embeddings
from mm1.models.megatron_config import MegatronLayout
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, checksums
from tinykit import TINY_ENCODER, tiny_decoder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.enums import AttnMaskType

# --- interpolate_position_embeddings ------------------------------------------------------------


def _ramp(grid: int, class_token: bool) -> torch.Tensor:
    """Embeddings whose channel 0 is the patch row, channel 1 the column, channel 2 constant."""
    steps = torch.arange(grid, dtype=torch.float32)
    r, c = torch.meshgrid(steps, steps, indexing="ij")
    grid_rows = torch.stack([r, c, torch.full_like(r, 7.0)], dim=-1).reshape(grid * grid, 3)
    cls = torch.tensor([[-1.0, -2.0, -3.0]])
    return torch.cat([cls, grid_rows]) if class_token else grid_rows


@pytest.mark.parametrize("class_token", [False, True])
@pytest.mark.parametrize("new_grid", [3, 12])
def test_interpolation_resizes_the_grid_in_raster_order_and_keeps_the_class_row(
    class_token: bool, new_grid: int
) -> None:
    weight = _ramp(8, class_token)
    out = interpolate_position_embeddings(weight, class_token, new_grid)
    assert out.shape == (class_token + new_grid**2, 3)
    if class_token:
        assert torch.equal(out[0], weight[0])
    grid = out[int(class_token) :].reshape(new_grid, new_grid, 3)
    # rows stay rows and columns stay columns (no transposition), and a constant stays constant
    torch.testing.assert_close(grid[..., 0], grid[:, :1, 0].expand(new_grid, new_grid))
    torch.testing.assert_close(grid[..., 1], grid[:1, :, 1].expand(new_grid, new_grid))
    torch.testing.assert_close(grid[..., 2], torch.full((new_grid, new_grid), 7.0))
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all()
    # and it is torch's bicubic resize (align_corners=False, no antialiasing) of the g x g image
    image = weight[int(class_token) :].reshape(1, 8, 8, 3).permute(0, 3, 1, 2)
    expected = F.interpolate(image, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    torch.testing.assert_close(grid, expected[0].permute(1, 2, 0))


def test_interpolation_to_the_same_grid_is_the_identity() -> None:
    weight = torch.randn(1 + 36, 5)
    out = interpolate_position_embeddings(weight, True, 6)
    assert torch.equal(out, weight) and out.data_ptr() != weight.data_ptr()


def test_interpolation_rejects_a_non_square_grid() -> None:
    with pytest.raises(ValueError, match="square patch grid: 17 rows"):
        interpolate_position_embeddings(torch.randn(17, 4), False, 4)


# --- bidirectional attention --------------------------------------------------------------------

ENC = EncoderConfig(
    image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_attention_heads=2, ffn_hidden_size=64
)


def test_default_encoder_has_no_causal_mask_and_every_position_sees_every_patch() -> None:
    with distributed(ParallelConfig(), seed=0):
        vit = build_encoder(ENC, MegatronLayout()).eval()
        attentions = [m for m in vit.modules() if isinstance(m, SelfAttention)]
        assert len(attentions) == ENC.num_layers
        for attn in attentions:
            assert attn.attn_mask_type == AttnMaskType.no_mask
            assert attn.core_attention.attn_mask_type == AttnMaskType.no_mask
        images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        changed = images.clone()
        changed[:, :, -4:, -4:] += 1.0  # the last patch in raster order
        with torch.no_grad():
            a, b = vit(images), vit(changed)
    assert a.shape == (2, ENC.grid**2, ENC.hidden_size)
    # a causal ViT would leave every position before the last unchanged
    assert ((a - b).abs().amax(dim=-1) > 1e-4).all()


# --- loading a checkpoint saved at another image size -------------------------------------------

# image_size is set per test
TINY = [
    *(o for o in TINY_ENCODER if "image_size" not in o),
    *tiny_decoder(layers=1, hidden=16, heads=2, seq_length=16),
    "model.moe.num_experts=0",
]
POS = "encoder.position_embeddings.weight"


def _config(image_size: int, *extra: str) -> ModelConfig:
    return load(None, [*TINY, f"model.encoder.image_size={image_size}", *extra]).model


def _model(cfg: ModelConfig) -> MM1Model:
    return MM1Model(cfg, vocab_size=50, image_token_id=3)


def _save(cfg: ModelConfig, out) -> dict[str, torch.Tensor]:
    """Save a model built with seed 1; return its weights."""
    with distributed(ParallelConfig(), seed=1):
        model = _model(cfg)
        checkpoint.save(model, {"model": cfg.model_dump(mode="json")}, out)
    return {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def _load(cfg: ModelConfig, ckpt) -> dict[str, torch.Tensor]:
    """Load ``ckpt`` into a model built with another seed; return its weights."""
    with distributed(ParallelConfig(), seed=2):
        model = _model(cfg)
        checkpoint.load_into(model, ckpt)
    return {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize("class_token", [False, True])
def test_checkpoint_at_another_image_size_loads_with_interpolated_position_embeddings(tmp_path, class_token) -> None:
    extra = [f"model.encoder.class_token={class_token}"]
    saved = _save(_config(32, *extra), tmp_path / "ckpt")  # grid 8
    loaded = _load(_config(48, *extra), tmp_path / "ckpt")  # grid 12
    assert saved[POS].shape == (class_token + 64, 16) and loaded[POS].shape == (class_token + 144, 16)
    torch.testing.assert_close(loaded[POS], interpolate_position_embeddings(saved[POS], class_token, 12))
    assert loaded.keys() == saved.keys()
    for k in saved.keys() - {POS}:
        assert torch.equal(loaded[k], saved[k]), k


def test_checkpoint_at_the_same_image_size_loads_exactly(tmp_path) -> None:
    cfg = _config(32)
    saved = _save(cfg, tmp_path / "ckpt")
    loaded = _load(cfg, tmp_path / "ckpt")
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_checkpoint_with_another_shape_elsewhere_names_the_tensor_and_both_shapes(tmp_path) -> None:
    _save(_config(32), tmp_path / "ckpt")
    with pytest.raises(ValueError) as info:
        _load(_config(48, "model.encoder.ffn_hidden_size=48"), tmp_path / "ckpt")
    msg = str(info.value)
    assert "encoder.decoder.layers.mlp.linear_fc1.weight: checkpoint (1, 32, 16), model (1, 48, 16)" in msg
    assert POS not in msg  # the position embeddings alone may differ


def test_position_embeddings_that_disagree_with_model_json_are_refused(tmp_path) -> None:
    cfg = _config(32)
    _save(cfg, tmp_path / "ckpt")
    meta = tmp_path / "ckpt" / "model.json"
    meta.write_text(meta.read_text().replace('"image_size": 32', '"image_size": 40'))
    checksums.seal(tmp_path / "ckpt")  # the edited model.json, its checksums recorded again
    with pytest.raises(ValueError, match=r"encoder.position_embeddings.weight: the checkpoint holds shape \(64, 16\)"):
        _load(_config(48), tmp_path / "ckpt")


def test_encoder_of_a_clip_checkpoint_loads_alone_at_another_image_size(tmp_path) -> None:
    """Encoder pre-training -> multimodal model: only ``encoder.*`` is read, the rest keep their init."""
    from mm1.models.clip import ClipModel

    clip_cfg = _config(32)
    with distributed(ParallelConfig(), seed=1):
        clip = ClipModel(clip_cfg.encoder, vocab_size=50)
        checkpoint.save(clip, {"model": clip_cfg.model_dump(mode="json")}, tmp_path / "clip")
        saved = {k: v.clone() for k, v in clip.state_dict().items() if torch.is_tensor(v)}
    cfg = _config(48)
    with distributed(ParallelConfig(), seed=2):
        model = _model(cfg)
        before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
        with pytest.raises(ValueError, match="the checkpoint lacks"):
            checkpoint.load_into(model, tmp_path / "clip")  # the whole model: no decoder in it
        checkpoint.load_into(model, tmp_path / "clip", parts=("encoder",))
        loaded = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    torch.testing.assert_close(loaded[POS], interpolate_position_embeddings(saved[POS], False, 12))
    for k, v in loaded.items():
        if k.startswith("encoder.") and k != POS:
            assert torch.equal(v, saved[k]), k
        elif not k.startswith("encoder."):
            assert torch.equal(v, before[k]), k
