"""Table 4's official scoring rules on cases worked by hand (mm1.eval.table4)."""

from __future__ import annotations

import pytest

from mm1.data.formats.table4 import Table4Item
from mm1.eval.table4 import (
    accuracy_by,
    circular_accuracy,
    levenshtein,
    mathvista_correct,
    mathvista_extract,
    mme_answer,
    mme_scores,
    parse_choice,
    pope_answer,
    pope_metrics,
)

FOUR = ("red fox", "blue whale", "grey wolf", "brown bear")


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("(C) grey wolf", "C"),
        ("The answer is D.", "D"),  # trailing "." stripped, then " D " is a word
        ("A or B? I think B", "B"),  # two letters: the one mentioned last
        ("(A) is wrong, so (C)", "C"),  # brackets win over words; the last bracket
        ("(B) B A", "B"),  # a bracketed letter beats later bare letters
        ("I am quite sure it shows a blue whale in the sea", "B"),  # > 5 words: the option's text
        ("not a red fox but a brown bear in this one", "D"),  # two texts: the last mentioned
        ("a blue whale", None),  # <= 5 words and no letter: MMMU would guess at random
        ("Absolutely", None),
    ],
)
def test_parse_choice_follows_mmmu_rules_without_the_random_guess(response: str, letter: str | None) -> None:
    assert parse_choice(response, FOUR) == letter


def _item(key: str, group: str = "", category: str = "", answer: str = "") -> Table4Item:
    return Table4Item(key=key, image=None, question="", answer=answer, group=group, category=category)


def test_circular_eval_counts_a_question_only_if_every_rotation_is_right() -> None:
    items = [_item(f"q1r{r}", "q1", "attr") for r in range(4)] + [_item(f"q2r{r}", "q2", "logic") for r in range(4)]
    correct = {it.key: True for it in items} | {"q2r3": False}  # q2: 3 of 4 rotations right
    assert circular_accuracy(items, correct) == {"": 50.0, "attr": 100.0, "logic": 0.0}
    assert accuracy_by(items, correct)[""] == 87.5  # without CircularEval: 7 of 8


def test_pope_parsing_and_metrics_by_hand() -> None:
    assert pope_answer("No, there is not.") == "no"
    assert pope_answer("Yes. There is no dog.") == "yes"  # only the first sentence counts
    assert pope_answer("There isn't one") == "yes"  # the official rule knows only No / no / not
    labels = ["yes", "yes", "no", "no", "yes"]
    preds = ["yes", "no", "no", "yes", "yes"]  # TP 2, FN 1, TN 1, FP 1
    m = pope_metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["precision"] == pytest.approx(200 / 3) and m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == pytest.approx(60.0)
    assert pope_metrics(["no", "no"], ["yes", "no"]) == {
        "accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0
    }  # fmt: skip


def test_mme_acc_plus_and_score_by_hand() -> None:
    assert [mme_answer(t) for t in ("Yes", "yes, it is", "No", "Not really", "I think yes")] == [
        "yes", "yes", "no", "no", "other"
    ]  # fmt: skip
    items = [
        _item("e1a", "existence/1.jpg", "existence", "yes"),
        _item("e1b", "existence/1.jpg", "existence", "no"),
        _item("e2a", "existence/2.jpg", "existence", "yes"),
        _item("e2b", "existence/2.jpg", "existence", "no"),
        _item("c1a", "count/1.jpg", "count", "yes"),
        _item("c1b", "count/1.jpg", "count", "no"),
        _item("n1a", "code_reasoning/1.png", "code_reasoning", "no"),
        _item("n1b", "code_reasoning/1.png", "code_reasoning", "yes"),
    ]
    predicted = {"e1a": "yes", "e1b": "no", "e2a": "yes", "e2b": "yes", "c1a": "other", "c1b": "yes"}
    predicted |= {"n1a": "no", "n1b": "yes"}
    s = mme_scores(items, predicted)
    # existence: 3 of 4 questions (75), 1 of 2 images with both right (50) -> 125; count: 0 + 0
    assert (s["existence/acc"], s["existence/acc_plus"], s["existence/score"]) == (75.0, 50.0, 125.0)
    assert s["count/score"] == 0.0
    assert s["perception"] == 125.0 and s["cognition"] == 200.0
    with pytest.raises(ValueError, match="exactly two questions"):
        mme_scores(items[:3], predicted)


def _math(answer: str, kind: str, answer_type: str, choices=(), precision=None) -> Table4Item:
    meta = {"question_type": kind, "answer_type": answer_type, "precision": precision, "unit": "", "query": ""}
    return Table4Item(key="1", image=None, question="", choices=tuple(choices), answer=answer, meta=meta)


def test_mathvista_rule_based_extraction_and_normalisation_by_hand() -> None:
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    mc = _math("5", "multi_choice", "text", choices=("3", "5", "7"))
    assert mathvista_correct("B", mc)  # a letter -> its choice
    assert mathvista_correct("(B) five", mc)  # "(B) ..." -> B
    assert mathvista_correct("5", mc)  # the choice itself
    assert not mathvista_correct("five", mc)  # distance 4 to each choice: the first, "3"
    assert mathvista_correct("55", _math("5", "multi_choice", "text", choices=("3", "5", "77")))  # nearest: "5"
    integer = _math("12", "free_form", "integer")
    assert mathvista_correct("12.0", integer) and mathvista_correct('The answer is "12".', integer)
    assert not mathvista_correct("about 12", integer)  # GPT-4 would extract 12; the rules do not
    assert mathvista_extract("12", integer) == "12"
    floats = _math("1.5", "free_form", "float", precision=1)
    assert mathvista_correct("1.46", floats) and not mathvista_correct("1.44", floats)
    assert mathvista_correct("0.3333", _math("0.33", "free_form", "float", precision=2))
    assert mathvista_correct("[1, 2]", _math("[1, 2]", "free_form", "list"))
