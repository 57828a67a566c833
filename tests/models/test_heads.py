"""The encoder pre-training heads: CLIP (contrastive) and AIM (prefix-causal next-patch regression)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from mm1.config import EncoderConfig, ParallelConfig
from mm1.models.aim import AimModel, aim_loss, patchify, prefix_causal_mask
from mm1.models.clip import ClipModel
from mm1.models.encoder import build_encoder
from mm1.models.megatron_config import MegatronLayout
from mm1.parallel.setup import distributed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.enums import AttnMaskType

VOCAB, B, T = 20, 4, 8
CFG = EncoderConfig(
    image_size=16,  # 4 x 4 grid of 4-pixel patches
    patch_size=4,
    hidden_size=32,
    num_layers=2,
    num_attention_heads=2,
    ffn_hidden_size=64,
    clip={"text_layers": 1, "text_hidden_size": 32, "text_attention_heads": 2, "text_seq_length": T, "embed_dim": 64},
    aim={"head_layers": 1, "head_hidden_size": 32},
)
P = CFG.grid**2


@pytest.fixture
def group() -> Iterator[None]:
    """A live 1-process group (megatron's layers need it to build and to run), seeded with 0."""
    with distributed(ParallelConfig(), seed=0):
        yield


def _images(seed: int = 0, n: int = B) -> torch.Tensor:
    return torch.randn(n, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(seed))


def _captions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 5, 3, 6])
    text = torch.randint(1, VOCAB, (B, T), generator=g)
    text[torch.arange(T) >= lengths[:, None]] = 0  # right padding
    return text, lengths


# --- CLIP -----------------------------------------------------------------------------------------


def test_clip_loss_is_log_b_for_uninformative_similarities(group) -> None:
    text, lengths = _captions()
    warm = ClipModel(CFG.model_copy(update={"clip": CFG.clip.model_copy(update={"init_temperature": 1.0})}), VOCAB)
    with torch.no_grad():
        loss = warm(_images(), text, lengths)
        assert torch.isfinite(loss) and abs(loss.item() - math.log(B)) < 0.15  # random data, temperature 1
        warm.logit_scale.fill_(-30.0)  # similarities scaled to ~0: both softmaxes uniform
        torch.testing.assert_close(warm(_images(), text, lengths), torch.tensor(math.log(B)))


@pytest.mark.parametrize("class_token", [False, True])
def test_clip_loss_is_symmetric_infonce_of_pooled_projected_features(group, class_token: bool) -> None:
    model = ClipModel(CFG.model_copy(update={"class_token": class_token}), VOCAB)
    images, (text, lengths) = _images(), _captions()
    with torch.no_grad():
        features = model.encoder(images)
        pooled = features[:, 0] if class_token else features.mean(dim=1)
        image = F.normalize(model.image_proj(model.image_norm(pooled)), dim=-1)
        torch.testing.assert_close(model.embed_images(images), image)
        logits = model.logit_scale.exp() * image @ model.embed_texts(text, lengths).T
        target = torch.arange(B)
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        torch.testing.assert_close(model(images, text, lengths), expected)
    torch.testing.assert_close(model.logit_scale.exp(), torch.tensor(1 / CFG.clip.init_temperature))


def test_clip_gradients_reach_the_vit_the_text_tower_and_the_logit_scale(group) -> None:
    model = ClipModel(CFG, VOCAB)
    model(_images(), *_captions()).backward()
    for part in (model.encoder, model.text, model.image_proj, model.text_proj):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None for g in grads)
        assert all(g.abs().sum() > 0 for g in grads)
    assert model.logit_scale.grad is not None and model.logit_scale.grad != 0


def test_clip_training_on_a_fixed_batch_cuts_the_loss(group) -> None:
    model = ClipModel(CFG, VOCAB)
    images, (text, lengths) = _images(), _captions()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model(images, text, lengths)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_clip_text_embedding_is_read_at_the_last_real_token(group) -> None:
    model = ClipModel(CFG, VOCAB).eval()
    text, lengths = _captions()
    pad_changed, last_changed = text.clone(), text.clone()
    pad_changed[1, lengths[1] :] = 7  # padding only
    last_changed[1, lengths[1] - 1] = 1 + text[1, lengths[1] - 1] % (VOCAB - 1)  # the last real token
    with torch.no_grad():
        ref = model.embed_texts(text, lengths)
        torch.testing.assert_close(model.embed_texts(pad_changed, lengths), ref)
        moved = model.embed_texts(last_changed, lengths)
    assert not torch.allclose(moved[1], ref[1])
    torch.testing.assert_close(moved[[0, 2, 3]], ref[[0, 2, 3]])


def test_clip_rejects_captions_longer_than_the_text_tower(group) -> None:
    model = ClipModel(CFG, VOCAB)
    with pytest.raises(ValueError, match="exceed clip.text_seq_length=8"):
        model.embed_texts(torch.zeros(1, T + 1, dtype=torch.long), torch.tensor([T + 1]))


# --- AIM ------------------------------------------------------------------------------------------


def test_prefix_causal_mask() -> None:
    mask = prefix_causal_mask(4, prefix=2)[0, 0]
    visible = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, ~visible)
    with_cls = prefix_causal_mask(4, prefix=2, class_token=True)[0, 0]  # the class token joins the prefix
    assert with_cls.shape == (5, 5) and not with_cls[:, 0].any() and with_cls[0, 3:].all()


def _patch_pixels(index: int) -> tuple[slice, slice, slice, slice]:
    """The pixels of patch ``index`` (raster order) in a (B, 3, H, W) batch."""
    p, r, c = CFG.patch_size, *divmod(index, CFG.grid)
    return slice(None), slice(None), slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)


def test_aim_encoder_applies_the_prefix_causal_mask(group) -> None:
    model = AimModel(CFG).eval()
    attentions = [m for m in model.encoder.modules() if isinstance(m, SelfAttention)]
    assert attentions and all(a.core_attention.attn_mask_type == AttnMaskType.arbitrary for a in attentions)
    prefix, later = 5, 11
    images = _images()
    changed_later, changed_prefix = images.clone(), images.clone()
    changed_later[_patch_pixels(later)] += 1.0
    changed_prefix[_patch_pixels(prefix - 1)] += 1.0
    mask = prefix_causal_mask(P, prefix)
    with torch.no_grad():
        ref = model.encoder(images, attention_mask=mask)
        after_later = model.encoder(changed_later, attention_mask=mask)
        after_prefix = model.encoder(changed_prefix, attention_mask=mask)
        unmasked = model.encoder(changed_later)  # no mask: bidirectional, as MM1 will run it

    def moved(a: torch.Tensor) -> torch.Tensor:  # (P,) bool: did position p's features change?
        return (a - ref).abs().amax(dim=(0, 2)) > 1e-4

    assert not moved(after_later)[:later].any()  # neither the prefix nor earlier patches see it
    assert moved(after_later)[later:].all()
    assert moved(after_prefix).all()  # every position sees the whole prefix
    assert moved(unmasked).all()


def test_patchify_follows_the_vit_patch_order(group) -> None:
    vit = build_encoder(CFG, MegatronLayout())
    images = _images()
    w = vit.conv1.weight.permute(0, 2, 3, 1).reshape(CFG.hidden_size, -1)  # (hidden, p, p, 3) flattened
    conv = vit.conv1(images).flatten(2).transpose(1, 2)  # (B, P, hidden)
    torch.testing.assert_close(patchify(images, CFG.patch_size) @ w.T, conv)


def test_aim_loss_covers_only_the_patches_after_the_prefix() -> None:
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(B, P, 48, generator=g)
    predictions = torch.randn(B, P - 1, 48, generator=g, requires_grad=True)
    prefix = 6
    loss = aim_loss(predictions, patches, prefix, normalize=True)
    other_prefix_targets = patches.clone()
    other_prefix_targets[:, :prefix] = torch.randn(B, prefix, 48, generator=g)
    assert torch.equal(aim_loss(predictions, other_prefix_targets, prefix, normalize=True), loss)
    other_first_target = patches.clone()
    other_first_target[:, prefix] += 1.0
    other_first_target[:, prefix, 0] += 1.0  # not just a shift, which normalising would undo
    assert aim_loss(predictions, other_first_target, prefix, normalize=True) != loss
    loss.backward()
    assert (predictions.grad[:, : prefix - 1] == 0).all() and (predictions.grad[:, prefix - 1 :] != 0).all()
    # normalised targets: zero mean and unit variance per patch make a perfect prediction
    targets = patches[:, 1:]
    normalised = (targets - targets.mean(-1, keepdim=True)) / targets.std(-1, unbiased=False, keepdim=True)
    assert aim_loss(normalised, patches, prefix, normalize=True) < 1e-6
    assert aim_loss(targets, patches, prefix, normalize=False) == 0


def test_aim_prefix_is_sampled_from_the_generator_in_range(group) -> None:
    model = AimModel(CFG)
    draws = [model.sample_prefix(torch.Generator().manual_seed(s)) for s in range(200)]
    assert set(draws) == set(range(1, P))
    assert draws == [model.sample_prefix(torch.Generator().manual_seed(s)) for s in range(200)]
    images = _images()
    with torch.no_grad():
        sampled = model(images, generator=torch.Generator().manual_seed(3))
        given = model(images, prefix=draws[3])
    assert torch.equal(sampled, given)
    with pytest.raises(ValueError, match=r"prefix=16 must lie in \[1, 15\]"):
        model(images, prefix=P)


def test_aim_training_reduces_the_loss(group) -> None:
    model = AimModel(CFG)
    images, g = _images(n=2), torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = model(images, prefix=P // 2).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(20):  # a new prefix each step
        optimizer.zero_grad()
        model(images, generator=g).backward()
        optimizer.step()
    with torch.no_grad():
        after = model(images, prefix=P // 2).item()
    assert after < 0.8 * before, (before, after)


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a state dict, or global shapes of a sharded one (extra states left out)."""
    out = {}
    for k, v in state.items():
        shape = getattr(v, "global_shape", None) or (tuple(v.shape) if torch.is_tensor(v) else None)
        if shape is not None and not k.endswith("_extra_state"):
            out[k] = tuple(shape)
    return out


def test_aim_encoder_weights_are_the_mm1_encoders(group) -> None:
    aim = AimModel(CFG).encoder
    mm1 = build_encoder(CFG, MegatronLayout())
    assert aim.state_dict().keys() == mm1.state_dict().keys()
    assert _shapes(aim.state_dict()) == _shapes(mm1.state_dict())
    assert _shapes(aim.sharded_state_dict(prefix="encoder.")) == _shapes(mm1.sharded_state_dict(prefix="encoder."))
    mm1.load_state_dict(aim.state_dict())
    images = _images()
    with torch.no_grad():  # without a mask the AIM encoder is the bidirectional MM1 encoder
        torch.testing.assert_close(mm1(images), aim(images))
