"""VQA accuracy: hand-worked leave-one-out values, the official normalisation and its quirks, errors."""

from __future__ import annotations

import pytest

from mm1.eval.vqa_metric import CONTRACTIONS, VQAReference, normalize_answer, vqa_accuracy, vqa_scores


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # 10 humans, k of them said "cat", the others "dog"; the prediction is "cat".
        # Leaving out one of the k cat-sayers leaves k-1 cats, leaving out a dog-sayer leaves k:
        (0, 0.0),  # never a match
        (1, 0.3),  # 1 x min(1, 0/3) + 9 x min(1, 1/3) = 3     -> 3/10
        (2, 0.6),  # 2 x 1/3 + 8 x 2/3 = 2/3 + 16/3 = 6          -> 6/10
        (3, 0.9),  # 3 x 2/3 + 7 x 3/3 = 2 + 7 = 9               -> 9/10
        (4, 1.0),  # 4 x 3/3 + 6 x 1 = 10                         -> 10/10
        (7, 1.0),  # everyone left out still leaves >= 3 cats
    ],
)
def test_leave_one_out_with_ten_answers(k: int, expected: float) -> None:
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)
    assert vqa_accuracy("cat", list(reversed(answers))) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["cat"], 0.0),  # leaving out the only human leaves none: min(1, 0/3)
        (["cat", "cat"], 1 / 3),  # each left-out leaves 1 cat
        (["cat", "dog"], 1 / 6),  # (0 + 1/3) / 2
        (["cat", "cat", "cat"], 2 / 3),  # each left-out leaves 2 cats
        (["cat"] * 4, 1.0),  # each left-out leaves 3 cats
        (["cat", "cat", "cat", "dog", "dog"], (3 * 2 / 3 + 2 * 1) / 5),  # = 4/5
    ],
)
def test_leave_one_out_with_fewer_answers(answers: list[str], expected: float) -> None:
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes", "yes"),  # lower-cased (the official processDigitArticle lower-cases)
        ("  yes\n", "yes"),
        ("two", "2"),  # number words -> digits
        ("None", "0"),
        ("Ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # only none, zero..ten are mapped
        ("the red one", "red 1"),  # articles dropped, "one" -> "1"
        ("a cat and an apple", "cat and apple"),
        ("theater", "theater"),  # whole words only
        ("dont", "don't"),  # contractions regain their apostrophe
        ("Im here", "im here"),  # the table's "Im" is capitalised and never matches lower-cased text
        ("oclock", "o'clock"),
        ("somebody'd", "somebodyd"),  # the official table maps this one the wrong way round
        ("t-shirt", "t shirt"),  # a mark not next to a space becomes a space
        ("red - blue", "red blue"),  # a mark next to a space is deleted
        ("yes!", "yes"),  # -> "yes " then split/join
        ("(left)", "left"),
        ("hello, world", "hello world"),
        ("a,b", "b"),  # "a b" -> article "a" dropped
        ("1,000", "1000"),  # digit-comma-digit: marks are deleted, not spaced...
        ("1,000 t-shirts", "1000 tshirts"),  # ...all of them, wherever they are
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("5.", "5"),
        ("e.g.", "eg"),  # other periods are deleted, not spaced
        ("x.5", "x.5"),  # only the next character counts (the official look-behind is mistyped)
        ("it's", "it's"),  # apostrophes are not punctuation here
        ("10:30", "10:30"),  # nor are colons
        ("$5 & 50%", "$5 & 50%"),  # nor these
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_at_most_32_periods_are_deleted() -> None:
    # The official code passes re.UNICODE (= 32) where re.sub takes its count.
    assert normalize_answer("a" + "." * 40 + "b") == "a" + "." * 8 + "b"


def test_contraction_table_is_the_official_size_and_shape() -> None:
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["wont"] == "won't" and CONTRACTIONS["yall'd've"] == "y'all'd've"


def test_no_normalisation_when_the_answers_are_unanimous() -> None:
    # Official quirk: only non-unanimous answer sets trigger normalisation of prediction and answers.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    # One dissenting human is enough for normalisation: 9 "yes" -> leaving any one out leaves >= 8.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    # Whitespace cleaning always happens, and unanimity is judged after it.
    assert vqa_accuracy(" yes\t", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes\n"] * 5 + ["yes"] * 5) == 0.0
    # The opt-in, non-official option normalises unanimous answers too.
    assert vqa_accuracy("Yes.", ["yes"] * 10, always_normalize=True) == 1.0


def test_answers_are_normalised_too() -> None:
    # Non-unanimous: "Two", "2 " and "two" all become "2" -> 3 matches of 10 -> 0.9 (as hand-worked above).
    answers = ["Two", "2 ", "two"] + ["three"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx(0.9, abs=1e-12)
    assert vqa_accuracy("3", answers) == 1.0


def test_scores_per_answer_type_and_question_type() -> None:
    items = {
        1: VQAReference(["yes"] * 10, "yes/no", "is there"),  # "yes": 1
        2: VQAReference(["no"] * 10, "yes/no", "is there"),  # "yes": 0
        3: (["2"] * 3 + ["3"] * 7, "number"),  # "2": 0.9; a plain tuple without question type
        4: VQAReference(["red"] * 2 + ["blue"] * 8, "other", "what color"),  # "red": 0.6
    }
    preds = {1: "yes", 2: "yes", 3: "two", 4: "Red"}
    scores = vqa_scores(preds, items)
    assert scores["n_questions"] == 4
    assert scores["per_question"] == pytest.approx({1: 100.0, 2: 0.0, 3: 90.0, 4: 60.0}, abs=1e-9)
    assert scores["accuracy"] == pytest.approx(100 * (1 + 0 + 0.9 + 0.6) / 4, abs=1e-9)
    assert scores["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 90.0, "other": 60.0}, abs=1e-9)
    assert scores["per_question_type"] == pytest.approx({"is there": 50.0, "what color": 60.0}, abs=1e-9)


def test_inputs_are_checked() -> None:
    items = {1: (["a"] * 10, "other"), 2: (["b"] * 10, "other"), 3: (["c"] * 10, "other")}
    with pytest.raises(ValueError, match=r"no prediction for 2 of 3 questions \(first ids: \[2, 3\]\)"):
        vqa_scores({1: "a"}, items)
    with pytest.raises(ValueError, match=r"1 predictions are for unknown questions \(first ids: \[9\]\)"):
        vqa_scores({1: "a", 2: "b", 3: "c", 9: "x"}, items)
    with pytest.raises(ValueError, match=r"question 2: answers must be a non-empty list"):
        vqa_scores({1: "a", 2: "b"}, {1: (["a"], "other"), 2: ([], "other")})
    with pytest.raises(ValueError, match=r"prediction for question 1 must be a string"):
        vqa_scores({1: 3}, {1: (["a"], "other")})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one question"):
        vqa_scores({}, {})
    with pytest.raises(ValueError, match="non-empty list of strings"):
        vqa_accuracy("a", "a")
