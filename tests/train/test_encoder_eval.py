"""The encoder stage's held-out checks on cases worked by hand: CLIP retrieval, AIM's mean predictor."""

from __future__ import annotations

import pytest
import torch

from mm1.models.aim import aim_loss
from mm1.train.encoder_eval import aim_targets, mean_predictor_loss, retrieval_accuracy, summarize


def test_retrieval_ranks_each_images_own_caption_among_all_captions() -> None:
    """Text i is the one-hot e_i, so row i of the image embeddings is image i's similarity to each
    text (up to its norm). The own text (diagonal) is placed at a known rank in each row."""
    sims = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # own best: rank 1
            [5.0, 7, 9, 8, 1, 2, 3],  # two above it: rank 3
            [5.0, 6, 0, 1, 2, 3, 4],  # own worst: rank 7
            [8.0, 1, 2, 8, 4, 5, 6],  # tied with text 0 for best: a tie counts against, rank 2
            [1.0, 9, 8, 7, 5, 6, 2],  # four above it: rank 5
            [9.0, 8, 7, 6, 5, 1, 4],  # five above it: rank 6
            [1.0, 2, 3, 4, 5, 6, 7],  # own best: rank 1
        ]
    )
    texts = [f"caption {i}" for i in range(7)]
    got = retrieval_accuracy(sims, torch.eye(7), texts)
    assert got["images"] == got["captions"] == 7
    assert got["top1"] == pytest.approx(100 * 2 / 7)  # rows 0, 6
    assert got["top5"] == pytest.approx(100 * 5 / 7)  # rows 0, 1, 3, 4, 6
    assert got["top1_chance"] == pytest.approx(100 / 7)
    assert got["top5_chance"] == pytest.approx(100 * 5 / 7)


def test_identical_caption_texts_are_one_candidate_and_retrieving_it_is_a_hit_for_each_image() -> None:
    """Images 0 and 1 share the caption "a red circle" (one text, one embedding). Image 1 retrieves
    it first: a hit, though the pair's own row is image 0's. Chance is over the 3 distinct texts."""
    e = torch.eye(3)
    texts = ["a red circle", "a red circle", "a blue square", "a green star"]
    text_emb = torch.stack([e[0], e[0], e[1], e[2]])
    image_emb = torch.stack([e[0], e[0], e[2], e[2]])  # image 2 ("blue square") looks like the green star
    got = retrieval_accuracy(image_emb, text_emb, texts)
    assert got["images"] == 4 and got["captions"] == 3
    # image 2: green star 1, red circle 0 = blue square 0 -> the tie puts its own text at rank 3
    assert got["top1"] == pytest.approx(75.0)
    assert got["top1_chance"] == pytest.approx(100 / 3)
    assert got["top5"] == got["top5_chance"] == pytest.approx(100.0)  # 5 >= 3 texts: every image


def test_a_collapsed_encoder_retrieves_nothing() -> None:
    """Every image and text embeds to the same vector: every text ties, and ties count against."""
    texts = [f"caption {i}" for i in range(10)]
    got = retrieval_accuracy(torch.ones(10, 4), torch.ones(10, 4), texts)
    assert got["top1"] == got["top5"] == 0.0
    assert got["top5_chance"] == pytest.approx(50.0)


def test_retrieval_refuses_unmatched_inputs() -> None:
    with pytest.raises(ValueError, match="as many images as captions"):
        retrieval_accuracy(torch.ones(3, 2), torch.ones(2, 2), ["a", "b"])


def test_the_mean_predictor_loss_is_the_spread_of_the_targets_around_their_mean() -> None:
    """Targets (1, 1), (3, 5), (5, 3): mean (3, 3); squared errors 4+4, 0+4, 4+0 over 6 numbers = 16/6."""
    targets = torch.tensor([[1.0, 1.0], [3.0, 5.0], [5.0, 3.0]])
    assert mean_predictor_loss(targets.reshape(1, 3, 2)) == pytest.approx(16 / 6)
    # no other constant does better
    for const in ([0.0, 0.0], [3.0, 3.5], [2.5, 3.0]):
        assert ((targets - torch.tensor(const)) ** 2).mean().item() >= 16 / 6


@pytest.mark.parametrize("normalize", [True, False])
def test_the_baseline_reads_the_targets_aim_loss_compares_with(normalize: bool) -> None:
    """Predicting aim_targets themselves gives aim_loss 0; predicting their mean gives the baseline."""
    gen = torch.Generator().manual_seed(0)
    patches = torch.rand(3, 6, 12, generator=gen)  # (B, P, D)
    prefix = 2
    targets = aim_targets(patches, prefix, normalize)  # (B, P - prefix, D)
    predictions = torch.zeros(3, 5, 12)  # (B, P - 1, D): row i predicts patch i + 1
    predictions[:, prefix - 1 :] = targets
    assert aim_loss(predictions, patches, prefix, normalize).item() == pytest.approx(0.0, abs=1e-7)
    predictions[:, prefix - 1 :] = targets.reshape(-1, 12).mean(dim=0)
    loss = aim_loss(predictions, patches, prefix, normalize).item()
    assert loss == pytest.approx(mean_predictor_loss(targets), rel=1e-5)


def test_the_summary_sets_the_training_loss_beside_its_chance_level() -> None:
    curve = [3.0] * 90 + [2.0] * 10
    got = summarize("clip", curve, micro_batch=32, heldout={"top1": 10.0})
    assert got["final_loss"] == 2.0 and got["final_loss_steps"] == 10
    assert got["chance_loss"] == pytest.approx(3.4657, abs=1e-4)  # ln 32
    assert got["heldout_top1"] == 10.0 and got["heldout_set"] == "coco-val"
    assert summarize("aim", curve, 32, None)["heldout_set"] is None
