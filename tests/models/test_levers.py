"""The GPU speed levers (parallel.fusions, attention_backend, compile_layers, recompute auto) on CPU:
each reaches the model or megatron's TransformerConfig, changes no loss, and a CUDA-only one is
ignored on CPU with one warning line."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from mm1.config import ParallelConfig, load
from mm1.config.load import from_dict
from mm1.config.presets import preset_data
from mm1.models import attention
from mm1.models.attention import SdpaAttention, with_sdpa
from mm1.models.encoder import build_encoder
from mm1.models.megatron_config import MegatronLayout, decoder_config, encoder_config
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.plan.estimate import estimate, least_recompute, resolve_recompute
from tinykit import TINY_ENCODER, tiny_decoder

TINY = [*TINY_ENCODER, *tiny_decoder(layers=2, hidden=16, heads=2, seq_length=16), "model.moe.num_experts=0"]
VOCAB, IMAGE_ID = 50, 3
FUSED = ("bias_activation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion")


def _train(layout: MegatronLayout, steps: int = 1) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``steps`` SGD steps of a seed-1 tiny MM1 model built with ``layout`` on fixed inputs: the losses
    and the last step's gradients."""
    cfg = load(None, TINY).model
    with distributed(ParallelConfig(), seed=1):
        model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID, layout=layout).train()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(IMAGE_ID + 1, VOCAB, (2, cfg.decoder.seq_length), generator=g)
        tokens[:, 1 : 1 + cfg.connector.num_tokens] = IMAGE_ID  # one image per sequence
        images = torch.randn(2, 3, cfg.encoder.image_size, cfg.encoder.image_size, generator=g)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(steps):
            optimizer.zero_grad()
            loss = model(tokens, images, labels=torch.roll(tokens, -1, dims=1)).mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_close(a: tuple, b: tuple, tol: float) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=tol, abs=tol)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], rtol=tol, atol=tol, msg=name)


@pytest.fixture(scope="module")
def reference() -> tuple:
    return _train(MegatronLayout(), steps=2)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the ignored-lever lines as a fresh process would (they are said once per process)."""
    monkeypatch.setattr(attention, "_WARNED", set())


# --- attention_backend -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["flash", "math"])
def test_cpu_attention_kernels_give_the_same_loss(backend: str, reference: tuple) -> None:
    _assert_close(_train(MegatronLayout(attention_backend=backend), steps=2), reference, tol=1e-5)


@pytest.mark.parametrize("backend", ["cudnn", "efficient"])
def test_cuda_only_attention_kernels_are_ignored_on_cpu_with_one_line(backend: str, reference: tuple) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(MegatronLayout(attention_backend=backend), steps=2)
    lines = [str(w.message) for w in caught if "attention_backend" in str(w.message)]
    assert lines == [f"parallel.attention_backend={backend} is ignored on cpu: torch has no such kernel there "
                     "(it picks flash or math)"]  # fmt: skip
    assert result[0] == reference[0]  # torch's own choice: the same kernel, the same numbers
    for name, grad in result[1].items():
        assert torch.equal(grad, reference[1][name]), name


def test_attention_backend_reaches_every_core_attention() -> None:
    cfg = load(None, TINY).model
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(cfg, VOCAB, IMAGE_ID, layout=MegatronLayout(attention_backend="cudnn"))
        plain = MM1Model(cfg, VOCAB, IMAGE_ID, layout=MegatronLayout())
    cores = [m for m in model.modules() if isinstance(m, SdpaAttention)]
    assert len(cores) == cfg.decoder.num_layers + cfg.encoder.num_layers
    assert {m.backend for m in cores} == {"cudnn"}
    assert {m.backend for m in plain.modules() if isinstance(m, SdpaAttention)} == {"auto"}
    assert model.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="parallel.attention_backend='tpu'"):
        with_sdpa(None, "tpu")


# --- fusions -------------------------------------------------------------------------------------


def test_fusions_are_ignored_on_cpu_with_one_line(reference: tuple) -> None:
    cfg = load(None, TINY).model
    layout = MegatronLayout(fusions=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dec = decoder_config(cfg.decoder, cfg.moe, layout)
        result = _train(layout, steps=2)  # the decoder and the ViT: still one line
    lines = [str(w.message) for w in caught if "fusions" in str(w.message)]
    assert lines == ["parallel.fusions=true is ignored without CUDA: megatron's fused kernels are CUDA only"]
    assert not any(getattr(dec, flag) for flag in FUSED)
    assert result[0] == reference[0]


def test_fusions_reach_the_transformer_config_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU would build (the config only: no kernel runs), with CUDA reported present."""
    cfg = load(None, [*TINY, "model.encoder.activation=gelu"]).model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on, off = MegatronLayout(fusions=True), MegatronLayout()
    dec, enc = decoder_config(cfg.decoder, cfg.moe, on), encoder_config(cfg.encoder, on)
    assert all(getattr(dec, flag) for flag in FUSED) and dec.cross_entropy_fusion_impl == "native"
    assert enc.bias_activation_fusion and enc.bias_dropout_fusion  # GeLU with biases: fused_bias_gelu
    # no apex or Transformer Engine here: their fusions stay off rather than fail at the first step
    assert not (dec.masked_softmax_fusion or dec.gradient_accumulation_fusion or dec.apply_rope_fusion)
    quick = encoder_config(cfg.encoder.model_copy(update={"activation": "quick_gelu"}), on)
    assert not quick.bias_activation_fusion and quick.bias_dropout_fusion  # megatron fuses quick_gelu only gated
    plain = decoder_config(cfg.decoder, cfg.moe, off)
    assert not any(getattr(plain, flag) for flag in FUSED)  # off: today's GPU configs


# --- the config carries every lever ---------------------------------------------------------------


def test_parallel_config_carries_the_levers() -> None:
    par = load(
        None, ["parallel.fusions=true", "parallel.attention_backend=cudnn", "parallel.compile_layers=true"]
    ).parallel
    layout = MegatronLayout.of(par, bf16=True)
    assert (layout.fusions, layout.attention_backend, layout.compile_layers, layout.bf16) == (True, "cudnn", True, True)
    default = MegatronLayout.of(ParallelConfig())
    assert default == MegatronLayout()  # the defaults keep today's model
    with pytest.raises(ValueError, match="attention_backend"):
        load(None, ["parallel.attention_backend=fastest"])


# --- recompute auto ------------------------------------------------------------------------------


def test_recompute_auto_is_resolved_before_a_model_is_built() -> None:
    cfg = load(None, [*TINY, "parallel.recompute=auto"])
    with pytest.raises(ValueError, match="resolve_recompute"):
        MegatronLayout.of(cfg.parallel)
    assert resolve_recompute(cfg, None).parallel.recompute == "none"  # no GPU
    assert resolve_recompute(cfg, 80.0).parallel.recompute == "none"
    assert resolve_recompute(cfg, 1e-6).parallel.recompute == "full"  # nothing fits: the planner's check says so
    fixed = load(None, [*TINY, "parallel.recompute=selective"])
    assert resolve_recompute(fixed, 1e-6) is fixed


@pytest.mark.parametrize("preset", ["mm1-ablation", "mm1-3b", "mm1-30b", "mm1-7b-moe"])
def test_recompute_auto_fits_each_paper_preset_no_slower_than_its_own(preset: str) -> None:
    cfg = from_dict(preset_data(preset), preset)
    auto = from_dict({**preset_data(preset), "parallel": {**preset_data(preset)["parallel"], "recompute": "auto"}})
    own, chosen = estimate(cfg, "h100-80gb"), estimate(auto, "h100-80gb")
    assert chosen.fits and chosen.layout.recompute == least_recompute(cfg, 80)
    assert chosen.step_seconds <= own.step_seconds


def test_encoder_levers_reach_the_vit() -> None:
    cfg = load(None, TINY).model
    with distributed(ParallelConfig(), seed=0):
        vit = build_encoder(cfg.encoder, MegatronLayout(attention_backend="math", compile_layers=True))
    assert {m.backend for m in vit.modules() if isinstance(m, SdpaAttention)} == {"math"}
    assert all(layer._compiled_call_impl is not None for layer in vit.decoder.layers)


# --- compile_layers (slow: inductor compiles on CPU) ----------------------------------------------


@pytest.mark.slow
def test_compiled_layers_train_like_eager(reference: tuple) -> None:
    torch._dynamo.reset()
    counters.clear()
    result = _train(MegatronLayout(compile_layers=True), steps=2)
    _assert_close(result, reference, tol=1e-5)
    # one graph per kind of layer (decoder, ViT), shared by the block's layers, none broken apart
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"]
