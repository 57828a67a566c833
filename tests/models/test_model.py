"""The MM1 model: splicing image tokens into the text, the avg-pool connector, the assembled forward."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from mm1.config import ConnectorConfig, ModelConfig, ParallelConfig, load
from mm1.models.connector import AvgPoolConnector, build_connector
from mm1.models.mm1_model import MM1Model, padded_vocab_size, splice_images
from mm1.parallel.setup import distributed
from tinykit import TINY_ENCODER, tiny_decoder

# --- splice_images ------------------------------------------------------------------------------


def _splice_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    S, B, H, K = 7, 2, 3, 2
    text = torch.randn(S, B, H)
    image_tokens = torch.randn(B, K, H)
    is_image = torch.zeros(B, S, dtype=torch.bool)
    is_image[0, [1, 2]] = True  # contiguous slots
    is_image[1, [3, 6]] = True  # scattered slots, last one at the end
    return text, image_tokens, is_image


def test_splice_puts_image_tokens_at_the_slots_in_order() -> None:
    text, image_tokens, is_image = _splice_case()
    out = splice_images(text, image_tokens, is_image)
    assert out.shape == text.shape
    for b in range(is_image.shape[0]):
        slots = is_image[b].nonzero().flatten().tolist()
        for k, s in enumerate(slots):
            assert torch.equal(out[s, b], image_tokens[b, k])
        for s in range(text.shape[0]):
            if s not in slots:
                assert torch.equal(out[s, b], text[s, b])


@pytest.mark.parametrize("bad_row", [[1], [1, 2, 3]])
def test_splice_rejects_rows_with_the_wrong_number_of_slots(bad_row: list[int]) -> None:
    text, image_tokens, is_image = _splice_case()
    is_image[0] = False
    is_image[0, bad_row] = True
    with pytest.raises(ValueError) as info:
        splice_images(text, image_tokens, is_image)
    msg = str(info.value)
    assert f"{len(bad_row) + 2} <image> slots but 2 images x 2 tokens = 4" in msg
    assert str([len(bad_row), 2]) in msg


def test_splice_handles_several_images_in_one_sequence_and_none_in_another() -> None:
    S, B, H, N = 8, 3, 4, 2
    text = torch.randn(S, B, H)
    is_image = torch.zeros(B, S, dtype=torch.bool)
    is_image[0, [1, 2, 5, 6]] = True  # two images
    is_image[2, [3, 4]] = True  # one image; row 1 is text only
    image_tokens = torch.randn(3, N, H)
    out = splice_images(text, image_tokens, is_image)
    expected = [(0, 1, 0, 0), (0, 2, 0, 1), (0, 5, 1, 0), (0, 6, 1, 1), (2, 3, 2, 0), (2, 4, 2, 1)]
    for b, s, m, k in expected:
        assert torch.equal(out[s, b], image_tokens[m, k])
    assert torch.equal(out[:, 1], text[:, 1])
    assert torch.equal(splice_images(text, image_tokens[:0], torch.zeros(B, S, dtype=torch.bool)), text)


def test_splice_passes_gradients_to_image_tokens_and_text() -> None:
    text, image_tokens, is_image = _splice_case()
    text.requires_grad_(True)
    image_tokens.requires_grad_(True)
    weights = torch.randn(text.shape)
    (splice_images(text, image_tokens, is_image) * weights).sum().backward()
    for b in range(is_image.shape[0]):
        slots = is_image[b].nonzero().flatten()
        assert torch.equal(image_tokens.grad[b], weights[slots, b])
        assert torch.all(text.grad[slots, b] == 0)
        keep = ~is_image[b]
        assert torch.equal(text.grad[keep, b], weights[keep, b])


@pytest.mark.parametrize(("vocab", "padded"), [(1, 128), (127, 128), (128, 128), (129, 256), (320, 384)])
def test_padded_vocab_size(vocab: int, padded: int) -> None:
    assert padded_vocab_size(vocab) == padded


@pytest.mark.parametrize("multiple", [8, 64, 100])
def test_padded_vocab_size_is_the_smallest_multiple(multiple: int) -> None:
    for vocab in range(1, 3 * multiple):
        p = padded_vocab_size(vocab, multiple)
        assert p % multiple == 0
        assert vocab <= p < vocab + multiple


# --- connector ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("grid", "num_tokens"), [(4, 4), (6, 9), (4, 16), (4, 1)])
def test_avg_pool_connector_is_window_mean_then_projection(grid: int, num_tokens: int) -> None:
    torch.manual_seed(0)
    B, Hv, H = 2, 5, 7
    conn = AvgPoolConnector(ConnectorConfig(num_tokens=num_tokens), encoder_width=Hv, grid=grid, decoder_width=H)
    torch.nn.init.normal_(conn.proj.bias)  # a non-zero bias must be applied once per token
    patches = torch.randn(B, grid * grid, Hv)  # patch p sits at row p // grid, column p % grid
    out = conn(patches)
    side, k = math.isqrt(num_tokens), grid // math.isqrt(num_tokens)
    assert out.shape == (B, num_tokens, H)
    grid_view = patches.reshape(B, grid, grid, Hv)
    for i in range(side):
        for j in range(side):
            window = grid_view[:, i * k : (i + 1) * k, j * k : (j + 1) * k].reshape(B, -1, Hv)
            expected = window.mean(dim=1) @ conn.proj.weight.T + conn.proj.bias
            torch.testing.assert_close(out[:, i * side + j], expected)


def test_build_connector_picks_avg_pool() -> None:
    conn = build_connector(ConnectorConfig(num_tokens=4), 8, 4, 16)
    assert isinstance(conn, AvgPoolConnector)
    assert conn.proj.in_features == 8 and conn.proj.out_features == 16


# --- the assembled model ------------------------------------------------------------------------

TINY = [*TINY_ENCODER, *tiny_decoder(layers=2, hidden=16, heads=2, seq_length=16), "model.moe.num_experts=0"]
VOCAB, IMAGE_ID, B = 50, 3, 2


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return load(None, TINY).model


def _build(cfg: ModelConfig, seed: int) -> MM1Model:
    """Build under a fresh 1-process group seeded with ``seed`` (the group must be up for forward too)."""
    with distributed(ParallelConfig(), seed=seed):
        return MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()


def _inputs(cfg: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, slice]:
    g = torch.Generator().manual_seed(seed)
    S, n_img = cfg.decoder.seq_length, cfg.connector.num_tokens
    tokens = torch.randint(IMAGE_ID + 1, VOCAB, (B, S), generator=g)
    slots = slice(1, 1 + n_img)  # <bos>-like token at 0, then the image, then text
    tokens[:, slots] = IMAGE_ID
    images = torch.randn(B, 3, cfg.encoder.image_size, cfg.encoder.image_size, generator=g)
    return tokens, images, slots


@pytest.fixture
def model(cfg: ModelConfig) -> Iterator[MM1Model]:
    """A model built with seed 1, inside a live 1-process gloo group for its forward passes."""
    with distributed(ParallelConfig(), seed=1):
        yield MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()


def test_forward_shapes_and_per_token_loss(cfg: ModelConfig, model: MM1Model) -> None:
    tokens, images, _ = _inputs(cfg)
    labels = torch.roll(tokens, -1, dims=1)
    with torch.no_grad():
        logits = model(tokens, images)
        loss = model(tokens, images, labels=labels)
    S = cfg.decoder.seq_length
    assert logits.shape == (B, S, padded_vocab_size(VOCAB))
    assert loss.shape == (B, S)
    assert torch.isfinite(loss).all()
    # the loss is the per-token cross-entropy of the logits
    expected = F.cross_entropy(logits.reshape(B * S, -1), labels.reshape(-1), reduction="none").reshape(B, S)
    torch.testing.assert_close(loss, expected)


def test_backward_reaches_encoder_connector_and_decoder(cfg: ModelConfig, model: MM1Model) -> None:
    model.train()
    tokens, images, _ = _inputs(cfg)
    model(tokens, images, labels=torch.roll(tokens, -1, dims=1)).mean().backward()
    for part in (model.encoder, model.connector, model.language_model):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_same_seed_same_parameters_other_seed_different(cfg: ModelConfig) -> None:
    ref = _build(cfg, seed=1).state_dict()
    same = _build(cfg, seed=1).state_dict()
    other = _build(cfg, seed=2).state_dict()
    params = {k: v for k, v in ref.items() if torch.is_tensor(v) and v.is_floating_point()}
    assert params
    assert all(torch.equal(v, same[k]) for k, v in params.items())
    randomly_initialised = [k for k, v in params.items() if v.std() > 0]
    assert randomly_initialised
    assert all(not torch.equal(params[k], other[k]) for k in randomly_initialised)


def test_image_reaches_the_text_after_it(cfg: ModelConfig, model: MM1Model) -> None:
    tokens, images, slots = _inputs(cfg)
    other_images = images.clone()
    other_images[0] = -images[0]  # change the first sample's image only
    with torch.no_grad():
        a = model(tokens, images)
        b = model(tokens, other_images)
    after = slots.stop
    assert not torch.allclose(a[0, after:], b[0, after:])
    # positions before the image cannot see it, and the other sample is untouched
    torch.testing.assert_close(a[0, : slots.start], b[0, : slots.start])
    torch.testing.assert_close(a[1], b[1])


def test_decoder_is_causal(cfg: ModelConfig, model: MM1Model) -> None:
    tokens, images, slots = _inputs(cfg)
    t = slots.stop + 3
    changed = tokens.clone()
    changed[:, t] = IMAGE_ID + 1 + (tokens[:, t] - IMAGE_ID) % (VOCAB - IMAGE_ID - 1)  # another text id
    assert (changed[:, t] != tokens[:, t]).all() and (changed[:, t] != IMAGE_ID).all()
    with torch.no_grad():
        a = model(tokens, images)
        b = model(changed, images)
    torch.testing.assert_close(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_forward_rejects_sequences_without_all_image_slots(cfg: ModelConfig, model: MM1Model) -> None:
    tokens, images, slots = _inputs(cfg)
    tokens[0, slots.start] = IMAGE_ID + 1
    with torch.no_grad(), pytest.raises(ValueError, match="<image> slots but"):
        model(tokens, images)
