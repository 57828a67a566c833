"""Sequence parallelism and overlapped gradient reduction train the same model.

The two layout options `mm1 plan` turns on where they pay (parallel.sequence_parallel with TP > 1,
parallel.overlap_grad_reduce with DP > 1) change where activations live and when gradients are
summed, not what is computed: each 2-process run reproduces the 1-process loss curve step by step,
as the plain TP=2 and DP=2 layouts do in test_layouts.py (same tiny world, model and tolerance).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_layouts import RTOL, STEPS, TINY, losses, mm1, world  # noqa: F401 (world: a fixture)

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

OPTIONS = {
    "tp1": [],
    # the decoder's norms and residuals on half of the sequence each; reduce-scatter + all-gather for all-reduce
    "tp2_sp": ["parallel.world_size=2", "parallel.tp=2", "parallel.sequence_parallel=true"],
}


@pytest.fixture(scope="module")
def runs(world) -> dict[str, Path]:  # noqa: F811 (the imported fixture)
    out = {}
    for name, layout in OPTIONS.items():
        out[name] = world["root"] / f"option-{name}"
        sets = [arg for s in TINY + layout for arg in ("--set", s)]
        data = ["--packed", str(world["packed"]), "--tokenizer", str(world["tokenizer"])]
        mm1(["train", *data, "--out", str(out[name]), *sets])
    return out


@pytest.mark.parametrize(("layout", "field"), [("tp2_sp", "sequence_parallel")])
def test_layout_option_reproduces_single_process_losses(runs, layout: str, field: str) -> None:
    base, other = losses(runs["tp1"]), losses(runs[layout])
    assert len(base) == len(other) == STEPS
    assert base[-1] < base[0]
    for step, (a, b) in enumerate(zip(base, other, strict=True), start=1):
        assert abs(a - b) <= RTOL * abs(a), f"step {step}: tp1 loss {a} vs {layout} loss {b}"
    prov = json.loads((runs[layout] / "provenance.json").read_text())
    assert prov["layout"]["world_size"] == 2 and prov["config"]["parallel"][field] is True
