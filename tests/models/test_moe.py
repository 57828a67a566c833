"""The MoE decoder (megatron MoELayer, local spec, alltoall dispatcher) and sparse upcycling.

What megatron-core 0.16.1 does, checked here on a tiny MM1Model:
- layer pattern: an integer ``moe_layer_freq`` k makes layer i (0-based) MoE when i % k == 0
  (``models/gpt/gpt_layer_specs.py::get_gpt_decoder_layer_specs``): the first layer, then every k-th.
- routing: top-k of the router logits, then a softmax over the k chosen logits
  (``moe_utils.topk_routing_with_score_function`` with the default ``moe_router_pre_softmax=False``),
  so each token has exactly k non-zero weights and they sum to 1.
- aux losses: ``TopKRouter.routing`` attaches them to the routing probs (load balancing) and to the
  router logits (z-loss) with ``MoEAuxLossAutoScaler``: identity in forward, and in backward it adds
  d(aux)/d(input) x ``MoEAuxLossAutoScaler.main_loss_backward_scale`` (a class-wide tensor the
  pipeline schedule sets; 1 by default). They are not part of the returned LM loss. Their values,
  divided by their coefficients, are logged per layer in
  ``moe_utils.get_moe_layer_wise_logging_tracker()`` ("load_balancing_loss", "z_loss"). Both are
  computed only in training mode with grad enabled, over the tokens of the current micro-batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mm1.config import ModelConfig, ParallelConfig, load
from mm1.models import upcycle
from mm1.models.mm1_model import MM1Model
from mm1.models.size import moe_layer_indices
from mm1.parallel.setup import distributed
from mm1.train import checkpoint
from mm1.train.upcycle import upcycle_checkpoint
from tinykit import TINY_ENCODER, tiny_decoder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.moe.moe_layer import MoELayer
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler, get_moe_layer_wise_logging_tracker

TINY = [*TINY_ENCODER, *tiny_decoder(layers=2, hidden=64, heads=4, seq_length=32)]
MOE = ["model.moe.num_experts=4", "model.moe.layer_freq=1", "model.moe.top_k=2"]
VOCAB, IMAGE_ID, B = 50, 3, 2


def config(*overrides: str) -> ModelConfig:
    return load(None, [*TINY, *overrides]).model


DENSE = config("model.moe.num_experts=0")


def batch(cfg: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B sequences with one image each (slots 1..N) and random text; labels are the next tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(IMAGE_ID + 1, VOCAB, (B, cfg.decoder.seq_length), generator=g)
    tokens[:, 1 : 1 + cfg.connector.num_tokens] = IMAGE_ID
    images = torch.randn(B, 3, cfg.encoder.image_size, cfg.encoder.image_size, generator=g)
    return tokens, images, torch.roll(tokens, -1, dims=1)


@pytest.fixture
def live() -> Iterator[None]:
    """A 1-process group for building and running models; MoE logging and aux-loss scale reset."""
    with distributed(ParallelConfig(), seed=1):
        get_moe_layer_wise_logging_tracker().clear()
        # the trainer's schedule may have changed it; shape (1,) as megatron's schedules set it (copy_ keeps it)
        MoEAuxLossAutoScaler.set_loss_scale(torch.ones(1))
        yield
    get_moe_layer_wise_logging_tracker().clear()


def moe_modules(model: MM1Model) -> list[MoELayer]:
    return [layer.mlp for layer in model.language_model.decoder.layers if isinstance(layer.mlp, MoELayer)]


def record_routers(model: MM1Model) -> list[dict]:
    """Per MoE layer, filled on every forward: the router's input (tokens, H), probs and routing map."""
    records: list[dict] = []
    for moe in moe_modules(model):
        rec: dict = {"router": moe.router}
        records.append(rec)

        def hook(module, args, out, rec=rec) -> None:
            rec["input"] = args[0].detach().reshape(-1, args[0].shape[-1])
            rec["probs"], rec["map"] = out[0].detach(), out[1]

        moe.router.register_forward_hook(hook)
    return records


def aux_terms(x: torch.Tensor, weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The load-balancing loss E/(k T^2) sum_i f_i P_i (Switch Transformer, f_i = tokens routed to
    expert i, P_i = summed softmax prob of i) and the z-loss mean(logsumexp(logits)^2), both without
    their coefficients, written from the papers rather than from megatron's code."""
    logits = x @ weight.T  # (T, E)
    scores = logits.softmax(dim=-1)
    chosen = torch.zeros_like(scores).scatter(1, scores.topk(top_k, dim=-1).indices, 1.0)
    tokens, experts = logits.shape
    balance = experts / (top_k * tokens**2) * (scores.sum(0) * chosen.sum(0)).sum()
    z = logits.logsumexp(dim=-1).square().mean()
    return balance, z


# --- layer pattern --------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "freq", "expected"), [(2, 1, [0, 1]), (4, 2, [0, 2]), (5, 3, [0, 3])])
def test_moe_layers_are_every_layer_freq_th_starting_with_the_first(live, layers, freq, expected) -> None:
    cfg = config(*MOE, f"model.decoder.num_layers={layers}", f"model.moe.layer_freq={freq}")
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID)
    kinds = [type(layer.mlp) for layer in model.language_model.decoder.layers]
    assert (
        [i for i, k in enumerate(kinds) if k is MoELayer]
        == expected
        == moe_layer_indices(cfg.decoder.num_layers, cfg.moe)
    )
    assert all(k is MLP for i, k in enumerate(kinds) if i not in expected)
    for moe in moe_modules(model):
        assert len(moe.experts.local_experts) == 4
        assert moe.router.weight.shape == (4, cfg.decoder.hidden_size)


def test_dense_config_has_no_moe_layers(live) -> None:
    model = MM1Model(DENSE, vocab_size=VOCAB, image_token_id=IMAGE_ID)
    assert not moe_modules(model) and moe_layer_indices(DENSE.decoder.num_layers, DENSE.moe) == []


# --- routing ---------------------------------------------------------------------------------------


def test_each_token_goes_to_its_top_2_experts_with_weights_summing_to_1(live) -> None:
    cfg = config(*MOE)
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()
    records = record_routers(model)
    tokens, images, _ = batch(cfg)
    with torch.no_grad():
        model(tokens, images)
    assert len(records) == 2
    for rec in records:
        probs, chosen = rec["probs"], rec["map"]
        assert probs.shape == chosen.shape == (B * cfg.decoder.seq_length, 4)
        assert (chosen.sum(dim=-1) == 2).all()
        assert torch.equal(probs != 0, chosen)
        torch.testing.assert_close(probs.sum(dim=-1), torch.ones(len(probs)))
        logits = rec["input"] @ rec["router"].weight.T
        top2 = torch.zeros_like(chosen).scatter(1, logits.topk(2, dim=-1).indices, True)
        assert torch.equal(chosen, top2)
        # the weights are the softmax of the two chosen logits (not of all four)
        expected = torch.zeros_like(probs).masked_scatter(chosen, logits[chosen].view(-1, 2).softmax(-1))
        torch.testing.assert_close(probs, expected)


# --- aux losses ------------------------------------------------------------------------------------


def test_aux_losses_are_logged_per_moe_layer_and_match_their_formulas(live) -> None:
    cfg = config(*MOE)
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).train()
    records = record_routers(model)
    tokens, images, labels = batch(cfg)
    model(tokens, images, labels=labels)
    tracker = get_moe_layer_wise_logging_tracker()
    for layer, rec in enumerate(records):
        balance, z = aux_terms(rec["input"], rec["router"].weight.detach(), top_k=2)
        assert balance > 0 and z > 0
        torch.testing.assert_close(tracker["load_balancing_loss"]["values"][layer], balance)
        torch.testing.assert_close(tracker["z_loss"]["values"][layer], z)


def test_aux_losses_are_skipped_in_eval_mode(live) -> None:
    cfg = config(*MOE)
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()
    tokens, images, labels = batch(cfg)
    model(tokens, images, labels=labels).sum().backward()
    assert get_moe_layer_wise_logging_tracker() == {}
    assert all(moe.router.weight.grad.abs().sum() > 0 for moe in moe_modules(model))  # LM loss only


@pytest.mark.parametrize(("aux", "z"), [(0.01, 0.001), (0.01, 0.0), (0.0, 0.001), (0.0, 0.0)])
def test_aux_losses_alone_train_the_router_and_coefficient_0_turns_them_off(live, aux, z) -> None:
    """With the LM loss multiplied by 0, only the aux losses send gradients: the routers get them, and
    what lies after the last router (its experts, the LM head) gets exactly 0."""
    cfg = config(*MOE, f"model.moe.aux_loss_coeff={aux}", f"model.moe.z_loss_coeff={z}")
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).train()
    records = record_routers(model)
    tokens, images, labels = batch(cfg)
    (model(tokens, images, labels=labels) * 0).sum().backward()
    for moe in moe_modules(model):
        assert (moe.router.weight.grad.abs().sum() > 0) == (aux + z > 0)
    after = [*moe_modules(model)[-1].experts.parameters(), *model.language_model.output_layer.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in after)
    # The last MoE layer's router is downstream of every other aux loss: its gradient is its own
    # layer's aux losses only, which we can write out.
    last = records[-1]
    weight = last["router"].weight.detach().clone().requires_grad_(True)
    balance, zloss = aux_terms(last["input"], weight, top_k=2)
    (expected,) = torch.autograd.grad(aux * balance + z * zloss, weight)
    torch.testing.assert_close(last["router"].weight.grad, expected, rtol=1e-4, atol=1e-9)
    if aux == 0:
        assert "load_balancing_loss" not in get_moe_layer_wise_logging_tracker()


def test_z_loss_coefficient_0_logs_no_nan(live) -> None:
    # megatron's TopKRouter.apply_z_loss skips only a None coefficient and would log z_loss / 0.0;
    # decoder_config passes None for 0.
    cfg = config(*MOE, "model.moe.z_loss_coeff=0")
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID).train()
    tokens, images, labels = batch(cfg)
    model(tokens, images, labels=labels)
    logged = get_moe_layer_wise_logging_tracker().get("z_loss", {"values": torch.zeros(1)})["values"]
    assert torch.isfinite(logged).all()


# --- upcycling -------------------------------------------------------------------------------------

UPCYCLED = config("model.moe.num_experts=4", "model.moe.layer_freq=2", "model.moe.top_k=2")  # layer 0 MoE


def test_upcycle_state_copies_the_ffn_into_every_expert_and_draws_routers(live) -> None:
    dense = MM1Model(DENSE, vocab_size=VOCAB, image_token_id=IMAGE_ID).state_dict()
    target = MM1Model(UPCYCLED, vocab_size=VOCAB, image_token_id=IMAGE_ID).state_dict()
    state = upcycle.upcycle_state(dense, DENSE, UPCYCLED, seed=5)
    assert set(state) == set(target)
    for key, value in target.items():
        assert (state[key] is None) == (value is None), key
        if torch.is_tensor(value):
            assert state[key].shape == value.shape and state[key].dtype == value.dtype, key
    layer0, layer1 = "language_model.decoder.layers.0.mlp.", "language_model.decoder.layers.1.mlp."
    for e in range(4):
        for fc in ("linear_fc1", "linear_fc2"):
            assert torch.equal(state[f"{layer0}experts.local_experts.{e}.{fc}.weight"], dense[f"{layer0}{fc}.weight"])
    # everything but layer 0's FFN (2 weights, 2 extra states) passes through as the same objects
    kept = [k for k in dense if k in target]
    assert len(kept) == len(dense) - 4 and f"{layer1}linear_fc1.weight" in kept
    assert all(state[k] is dense[k] for k in kept)
    router = state[f"{layer0}router.weight"]
    assert abs(router.std().item() - upcycle.ROUTER_INIT_STD) < 0.004 and abs(router.mean().item()) < 0.004
    assert torch.equal(router, upcycle.upcycle_state(dense, DENSE, UPCYCLED, seed=5)[f"{layer0}router.weight"])
    assert not torch.equal(router, upcycle.upcycle_state(dense, DENSE, UPCYCLED, seed=6)[f"{layer0}router.weight"])


def test_upcycle_state_moves_a_transformer_engine_fused_norm_to_the_moe_layer() -> None:
    """TE's dense layers keep the pre-MLP norm inside linear_fc1; TE's MoE layers have pre_mlp_layernorm."""
    norm, fc1 = torch.ones(64), torch.zeros(256, 64)
    te_dense = {}
    for i in (0, 1):
        te_dense[f"language_model.decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight"] = norm
        te_dense[f"language_model.decoder.layers.{i}.mlp.linear_fc1.weight"] = fc1
    state = upcycle.upcycle_state(te_dense, DENSE, UPCYCLED)
    assert state["language_model.decoder.layers.0.pre_mlp_layernorm.weight"] is norm
    assert state["language_model.decoder.layers.1.mlp.linear_fc1.layer_norm_weight"] is norm  # stays dense
    assert not any("local_experts" in k and "layer_norm" in k for k in state)
    assert sum("layers.0.mlp.experts" in k for k in state) == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.decoder.ffn_hidden_size=96", "model.decoder.ffn_hidden_size: dense 128 vs moe 96"),
        ("model.connector.kind=attn_pool", "model.connector.kind: dense 'avg_pool' vs moe 'attn_pool'"),
    ],
)
def test_upcycling_refuses_configs_that_differ_beyond_moe(override: str, message: str) -> None:
    other = config(*MOE, override)
    with pytest.raises(ValueError, match="differ") as info:
        upcycle.check_upcyclable(DENSE, other)
    assert message in str(info.value)


def test_upcycling_needs_a_dense_parent_and_an_moe_target() -> None:
    with pytest.raises(ValueError, match="already MoE"):
        upcycle.check_upcyclable(UPCYCLED, UPCYCLED)
    with pytest.raises(ValueError, match="target config is dense"):
        upcycle.check_upcyclable(DENSE, DENSE)


def test_upcycled_checkpoint_computes_its_dense_parent_function(tmp_path: Path) -> None:
    """Identical experts and top-2 weights summing to 1: the MoE model's logits equal the dense
    model's before training (to float rounding), for a batch with images and text."""
    tokens, images, _ = batch(DENSE)
    with distributed(ParallelConfig(), seed=7):
        dense = MM1Model(DENSE, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()
        meta = {"model": DENSE.model_dump(mode="json"), "vocab_size": VOCAB, "image_token_id": IMAGE_ID, "steps": 3}
        checkpoint.save(dense, meta, tmp_path / "dense")
        with torch.no_grad():
            expected = dense(tokens, images)
    upcycle_checkpoint(tmp_path / "dense", UPCYCLED, tmp_path / "moe", seed=11)
    meta = checkpoint.read_meta(tmp_path / "moe")
    assert meta["model"] == UPCYCLED
    parent = meta["upcycled_from"]
    assert parent["checkpoint"] == str(tmp_path / "dense") and len(parent["sha256"]) == 64
    assert parent["meta"]["steps"] == 3 and parent["meta"]["model"]["moe"]["num_experts"] == 0
    assert parent["router_init"] == {"distribution": "normal", "std": upcycle.ROUTER_INIT_STD, "seed": 11}
    with distributed(ParallelConfig(), seed=0):
        moe = MM1Model(UPCYCLED, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()
        checkpoint.load_into(moe, tmp_path / "moe")
        assert len(moe_modules(moe)) == 1
        with torch.no_grad():
            got = moe(tokens, images)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-5, f"upcycled vs dense logits: max abs diff {diff:.3g}"


def test_mm1_upcycle_command_takes_the_parent_model_and_the_configs_moe(tmp_path: Path) -> None:
    from mm1.cli import main

    with distributed(ParallelConfig(), seed=7):
        dense = MM1Model(DENSE, vocab_size=VOCAB, image_token_id=IMAGE_ID)
        meta = {"model": DENSE.model_dump(mode="json"), "vocab_size": VOCAB, "image_token_id": IMAGE_ID}
        checkpoint.save(dense, meta, tmp_path / "dense")
    args = ["upcycle", "--checkpoint", str(tmp_path / "dense"), "--out", str(tmp_path / "moe")]
    assert main(args) == 2  # the default config is dense: nothing to upcycle to
    assert main([*args, "--set", "model.moe.num_experts=4", "--set", "model.moe.layer_freq=2"]) == 0
    assert checkpoint.read_meta(tmp_path / "moe")["model"] == UPCYCLED


def test_top_1_routing_builds_and_trains_its_router(live) -> None:
    """megatron refuses top-1 without pre-softmax scores; decoder_config sets them for top_k=1."""
    cfg = config(*MOE[:2], "model.moe.top_k=1")
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID)
    tokens, images, labels = batch(cfg)
    loss = model(tokens, images, labels=labels)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    routers = [p for n, p in model.named_parameters() if n.endswith("router.weight")]
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)
