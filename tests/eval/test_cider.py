"""CIDEr-D: agreement with the COCO toolkit's scorer, hand-computed values, properties, tokenizer, errors.

The scorer's tests tokenise with the Python PTB tokenizer (no JVM per call); the Java one and the
toolkit's whole pipeline are compared in test_ptb_tokenizer.py."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mm1.eval.cider import cider_d, tokenize, tokenize_runs
from mm1.eval.harness import _score_captioning, _score_task
from mm1.eval.ptb_java import find_jar
from mm1.eval.scoring import score_captions
from mm1.world.language import reference_captions as sample_captions
from mm1.world.scene import sample_scene

needs_java = pytest.mark.skipif(
    shutil.which("java") is None or find_jar() is None, reason="needs java and CoreNLP's jar (scripts/test-env)"
)


@pytest.fixture(autouse=True)
def _python_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM1_CIDER_TOKENIZER", "python")


def _random_corpus(seed: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Sentences over a 6-word vocabulary: many repeated n-grams (clipping), empty and 1-word ones."""
    rng = random.Random(seed)
    words = ["a", "b", "c", "d", "e", "f"]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))

    ids = [f"img{k}" for k in range(rng.randint(2, 30))]
    return {i: sentence() for i in ids}, {i: [sentence() for _ in range(rng.randint(1, 5))] for i in ids}


def _world_corpus(seed: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    """World captions: the candidate is a paraphrase of the image's caption, or another image's."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 3) for _ in range(40)]
    raw_refs = [sample_captions(s, rng, 4) for s in scenes]
    raw_cands = []
    for scene in scenes:
        source = scene if rng.random() < 0.5 else scenes[int(rng.integers(len(scenes)))]
        raw_cands.append(sample_captions(source, rng, 1)[0])
    flat_refs, cands = tokenize_runs([[r for rs in raw_refs for r in rs], raw_cands], "python")
    refs = {f"test-{k}": flat_refs[4 * k : 4 * k + 4] for k in range(len(scenes))}
    return {f"test-{k}": c for k, c in enumerate(cands)}, refs


@pytest.mark.parametrize("corpus", [_random_corpus(s) for s in range(6)] + [_world_corpus(s) for s in range(3)])
def test_matches_pycocoevalcap(corpus: tuple[dict[str, str], dict[str, list[str]]]) -> None:
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    cands, refs = corpus
    ref_score, ref_per_image = cider_module.Cider().compute_score(refs, {i: [c] for i, c in cands.items()})
    score, per_image = cider_d(cands, refs, tokenize_text=False)
    assert score == pytest.approx(float(ref_score), abs=1e-9)
    assert list(per_image) == list(refs)
    np.testing.assert_allclose(list(per_image.values()), ref_per_image, rtol=0, atol=1e-9)
    assert cider_d(cands, refs, tokenizer="python") == (score, per_image)  # the text is already tokenised


def test_hand_computed_length_penalty() -> None:
    # N = 2 images; every reference n-gram occurs in one image: idf = log 2 - log 1 = L for all.
    # "x": cand "a b" = ref "a b": cosine 1 for n=1,2, 0 for n=3,4 (no n-grams) -> 10 * 2/4 = 5.
    # "y": cand "c" vs ref "c d": n=1 cosine = L*L / (L * sqrt(2) L) = 1/sqrt(2); n=2..4: 0.
    #      lengths 1 and 2 words -> penalty exp(-1 / (2 * 6^2)) -> 10/4 * penalty/sqrt(2).
    score, per_image = cider_d({"x": "a b", "y": "c"}, {"x": ["a b"], "y": ["c d"]})
    y = 10 / 4 * math.exp(-1 / 72) / math.sqrt(2)
    assert per_image == pytest.approx({"x": 5.0, "y": y}, abs=1e-12)
    assert score == pytest.approx((5.0 + y) / 2, abs=1e-12)


def test_hand_computed_clipping() -> None:
    # idf = L for every n-gram (N = 2, df <= 1). Cand "a a b" vs ref "a b":
    # n=1: cand (a: 2L, b: L), |.| = sqrt(5) L; ref (a: L, b: L), |.| = sqrt(2) L;
    #      clipped dot = min(2L, L) L + min(L, L) L = 2 L^2 -> 2/sqrt(10) (unclipped would be 3/sqrt(10)).
    # n=2: cand (aa: L, ab: L), |.| = sqrt(2) L; ref (ab: L) -> 1/sqrt(2).   n=3: ref has none -> 0.
    # lengths: 3 and 2 words -> penalty exp(-1/72).   "y": "c" vs "c" -> n=1 only: 10/4.
    _, per_image = cider_d({"x": "a a b", "y": "c"}, {"x": ["a b"], "y": ["c"]})
    x = 10 / 4 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) * math.exp(-1 / 72)
    assert per_image == pytest.approx({"x": x, "y": 2.5}, abs=1e-12)


def test_a_single_image_scores_zero() -> None:
    # log N = log 1 = 0 makes every idf weight 0: CIDEr needs a corpus.
    assert cider_d({"x": "a red circle"}, {"x": ["a red circle"]}) == (0.0, {"x": 0.0})


def test_matching_candidate_beats_an_unrelated_one() -> None:
    cands, refs = _world_corpus(7)
    matching = {i: r[0] for i, r in refs.items()}
    unrelated = {i: "a photo of a dog playing with a frisbee" for i in refs}
    good, _ = cider_d(matching, refs)
    bad, _ = cider_d(unrelated, refs)
    assert good > 2.0 and bad < 0.2


def test_invariant_to_reference_and_image_order() -> None:
    cands, refs = _world_corpus(8)
    score, per_image = cider_d(cands, refs)
    shuffled_ids = list(reversed(refs))
    shuffled = {i: list(reversed(refs[i])) for i in shuffled_ids}
    score2, per_image2 = cider_d({i: cands[i] for i in shuffled_ids}, shuffled)
    assert score2 == pytest.approx(score, abs=1e-12)
    assert per_image2 == pytest.approx(per_image, abs=1e-12)


def test_length_penalty_lowers_a_padded_candidate() -> None:
    cands, refs = _world_corpus(9)
    exact = {i: r[0] for i, r in refs.items()}
    padded = {i: r[0] + " " + r[0] for i, r in refs.items()}  # same n-grams, twice as long
    assert cider_d(padded, refs)[0] < 0.5 * cider_d(exact, refs)[0]


@pytest.mark.parametrize("tokenizer", ["python", pytest.param("java", marks=needs_java)])
def test_tokenize_is_ptb_without_punctuation(tokenizer: str) -> None:
    examples = {
        "Two shapes: a big RED circle, and a cube.": "two shapes a big red circle and a cube",
        "A man's T-shirt isn't (really) blue!": "a man 's t-shirt is n't -lrb- really -rrb- blue",
        'They can\'t see 3.5 or 1,000 "dogs"...': "they ca n't see 3.5 or 1,000 dogs",
        "It's the 3rd time -- at 5 o'clock; ok?": "it 's the 3rd time at 5 o'clock ok",
        "A dog in the U.S. with J. Smith at 5 p.m. named J.": "a dog in the u.s. with j. smith at 5 p.m. named j.",
    }
    assert tokenize_runs([list(examples)], tokenizer) == [list(examples.values())]
    assert tokenize("A dog named J.", tokenizer) == "a dog named j."


def test_score_captions_and_scores_csv_name_the_tokenizer(tmp_path: Path) -> None:
    images = [{"id": k} for k in range(3)]
    texts = ["A red (big) cube.", "Two U.S. dogs", "Mr. J."]
    refs = [{"image_id": k, "id": k, "caption": c} for k, c in enumerate(texts)]
    (tmp_path / "refs.json").write_text(json.dumps({"images": images, "annotations": refs}))
    preds = [{"image_id": k, "caption": c} for k, c in enumerate(["a red big cube", "two dogs", "mr. j"])]
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    scored = score_captions(tmp_path / "pred.json", tmp_path / "refs.json")
    assert scored["tokenizer"] == "ptb-python"  # MM1_CIDER_TOKENIZER=python (the fixture)
    assert (
        scored["CIDEr"]
        == 100 * cider_d({k: p["caption"] for k, p in enumerate(preds)}, {k: [t] for k, t in enumerate(texts)})[0]
    )

    # The harness's rows: VQA scored at once; captioning rows filled in together (one tokenizer run),
    # each with the CIDEr of its own task as cider_d gives it alone.
    items = [SimpleNamespace(key=k, targets=(t,), answer_type="other", domain="") for k, t in enumerate(texts)]
    other = [SimpleNamespace(key=k, targets=(t, t.upper()), answer_type="other", domain="")
             for k, t in enumerate(texts[::-1])]  # fmt: skip
    predicted = {k: p["caption"] for k, p in enumerate(preds)}
    spec = SimpleNamespace(answer_metric="vqa_accuracy")
    vqa_bench = SimpleNamespace(name="v", task="vqa", items=items, spec=spec)
    (vqa,) = _score_task(vqa_bench, 0, predicted, 0, 0.0, "{caption}")
    assert (vqa["metric"], vqa["tokenizer"]) == ("accuracy", "") and vqa["value"] is not None
    tasks = []
    for bench in (SimpleNamespace(name="a", task="captioning", items=items),
                  SimpleNamespace(name="b", task="captioning", items=other)):  # fmt: skip
        (row,) = _score_task(bench, 0, predicted, 0, 0.0, "{caption}")
        assert row["metric"] == "CIDEr" and row["value"] is None
        tasks.append((row, bench, predicted))
    assert _score_captioning(tasks) == []  # no NoCaps domains
    for row, bench, _ in tasks:
        alone = cider_d({k: predicted[k] for k in predicted}, {it.key: list(it.targets) for it in bench.items})[0]
        assert row["tokenizer"] == "ptb-python" and row["value"] == pytest.approx(100 * alone, abs=1e-12)
    assert tasks[0][0]["value"] != tasks[1][0]["value"]


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"same image ids; only in candidates: \['b'\], only in references: \[\]"):
        cider_d({"a": "x", "b": "y"}, {"a": ["x"]})
    with pytest.raises(ValueError, match=r"references\['a'\] must be a non-empty list"):
        cider_d({"a": "x", "b": "y"}, {"a": [], "b": ["y"]})
    with pytest.raises(ValueError, match=r"references\['a'\] must be a non-empty list"):
        cider_d({"a": "x"}, {"a": "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one image"):
        cider_d({}, {})
