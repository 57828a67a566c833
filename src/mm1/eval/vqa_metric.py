"""VQA accuracy, computed the way the official VQA evaluation (GT-Vision-Lab/VQA `vqaEval.py`) does.

For a question with human answers a_1..a_n (VQAv2: n = 10) and a predicted answer p:

    acc(p) = 1/n * sum_j min(1, #{k != j : a_k == p} / 3)

i.e. the mean, over the n ways of leaving one human out, of "at least 3 of the other humans gave
p". With n = 10 an answer given by 0, 1, 2, 3, >= 4 humans scores 0, 0.3, 0.6, 0.9, 1. The same
rule holds for any n >= 1, so with fewer than 4 answers even a unanimous match scores only
(n - 1) / 3: 0 for n = 1, 1/3 for n = 2, 2/3 for n = 3. (The official code leaves out every
answer *record* equal to the one left out; its records carry distinct answer_ids, so that is
exactly one, as here.) The score of a set of questions is 100 x the mean accuracy, which the
official tool then prints rounded to 2 decimals; we keep full precision.

Before comparing, the official code
  1. always replaces newlines and tabs by spaces and strips both ends (prediction and answers);
  2. only when the human answers are not all identical (after step 1) normalises the prediction
     and every answer with `normalize_answer`. When they are unanimous nothing more is done, so
     "Yes" or "yes." scores 0 against ten "yes" but 1 against nine "yes" and one "no". We
     reproduce this quirk; `always_normalize=True` (not official) normalises in both cases.

`normalize_answer` (the official `processPunctuation` then `processDigitArticle`):
  - punctuation: each of  ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !  is deleted where the answer
    holds it next to a space, or anywhere when the answer holds a digit-comma-digit ("1,000" ->
    "1000", and then every other listed mark is deleted too); otherwise it becomes a space
    ("t-shirt" -> "t shirt"). Apostrophes, colons and other symbols are kept;
  - a period is deleted unless a digit follows it ("3.5" is kept, "5." -> "5"): the official
    pattern meant "not between digits" but its look-behind is mistyped as a look-ahead, so only
    the following character counts. It deletes at most 32 periods (it passes re.UNICODE, 32,
    where `re.sub` takes its count);
  - lower-casing, splitting on whitespace, number words "none", "zero".."ten" -> "0".."10",
    dropping the articles a, an, the, and restoring the apostrophe of ~120 contractions
    ("dont" -> "don't"), all word by word; words are rejoined by single spaces.
Lower-casing is part of step 2, so it too is skipped for unanimous answers. The official code is
Python 2, where `\\d` means [0-9] for these patterns; we use [0-9].

GQA is scored by exact match instead (`exact_match_scores`): one answer per question, so VQA accuracy
would be 0 for every prediction. GQA's official `eval.py` compares the prediction with the answer as
strings (`predicted == gold`); its answers are lower-case words without punctuation, and the common VLM
evaluations normalise the generated text first: LLaVA-1.5's `convert_gqa_for_eval.py` lower-cases it
and strips trailing periods, lmms-eval's `gqa.yaml` scores `exact_match` with `ignore_case` and
`ignore_punctuation` (every `string.punctuation` character deleted). `gqa_normalize` does the latter,
plus stripping the ends and collapsing runs of spaces, on both sides; articles and number words are
kept (GQA's answers hold none, and neither evaluation rewrites them).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
"""Words replaced by digits (the official `manualMap`)."""

ARTICLES = frozenset({"a", "an", "the"})

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
"""The marks `normalize_answer` deletes or turns into spaces (periods are handled apart)."""

# The official table, entry for entry, as "word:contraction". It is applied to lower-cased words, so
# the four keys with a capital I (Id've I'dve Im Ive) never match; "somebody'd" -> "somebodyd" is the
# wrong way round in the official table and is kept as it is.
CONTRACTIONS = dict(
    pair.split(":")
    for pair in """
    aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
    couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
    hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
    howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
    itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've
    mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've
    oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't
    shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't
    shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
    somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd
    someoned've:someone'd've someone'dve:someone'd've someonell:someone'll someones:someone's
    somethingd:something'd somethingd've:something'd've something'dve:something'd've
    somethingll:something'll thats:that's thered:there'd thered've:there'd've there'dve:there'd've
    therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
    theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've
    werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd
    wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
    whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
    wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
    yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
    you'dve:you'd've youll:you'll youre:you're youve:you've
""".split()
)
"""Words missing their apostrophe -> the contraction (the official `contractions`)."""

_NUMBER_COMMA = re.compile(r"[0-9],[0-9]")
_PERIOD = re.compile(r"\.(?![0-9])")
_MAX_PERIODS = 32
"""The official code removes at most re.UNICODE = 32 periods (see the module docstring)."""


class VQAReference(NamedTuple):
    """What a VQA question is scored against; a plain (answers, answer_type) tuple also works."""

    answers: Sequence[str]
    answer_type: str = "other"
    question_type: str = ""


def clean_whitespace(s: str) -> str:
    """Newlines and tabs -> spaces, ends stripped: the step applied to every answer."""
    return s.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(s: str) -> str:
    delete_all = _NUMBER_COMMA.search(s) is not None
    out = s
    for mark in PUNCTUATION:
        # Decided on the input, not on what earlier replacements left.
        delete = delete_all or f"{mark} " in s or f" {mark}" in s
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _words(s: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in s.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(s: str) -> str:
    """The official answer normalisation (module docstring), after `clean_whitespace`."""
    return _words(_punctuation(clean_whitespace(s)))


def vqa_accuracy(prediction: str, answers: Sequence[str], *, always_normalize: bool = False) -> float:
    """Accuracy in [0, 1] of one predicted answer against n >= 1 human answers (module docstring).

    always_normalize=True (not official) normalises even when the human answers are unanimous."""
    if not isinstance(prediction, str):
        raise ValueError(f"the prediction must be a string, got {prediction!r}")
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    pred = clean_whitespace(prediction)
    humans = [clean_whitespace(a) for a in answers]
    if always_normalize or len(set(humans)) > 1:
        pred = normalize_answer(pred)
        humans = [normalize_answer(a) for a in humans]
    matches = sum(a == pred for a in humans)
    # Leaving out human j, the others hold `matches` copies of pred, one fewer if j gave pred.
    per_left_out = [min(1.0, (matches - (a == pred)) / 3) for a in humans]
    return sum(per_left_out) / len(per_left_out)


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def gqa_normalize(s: str) -> str:
    """GQA's answer normalisation (module docstring): lower-case, punctuation deleted, spaces collapsed."""
    return " ".join(s.lower().translate(_NO_PUNCTUATION).split())


def exact_match_scores(predictions: Mapping[int, str], items: Mapping[int, Sequence[Any]]) -> dict[str, Any]:
    """GQA's metric: a question scores 1 when the normalised prediction equals a normalised answer (GQA:
    its one answer), else 0. ``items`` and the result are as for :func:`vqa_scores` (percentages)."""
    return _scores(predictions, items, lambda p, answers: float(gqa_normalize(p) in map(gqa_normalize, answers)))


def answer_scores(
    predictions: Mapping[int, str],
    items: Mapping[int, Sequence[Any]],
    metric: Literal["vqa_accuracy", "exact_match"] = "vqa_accuracy",
) -> dict[str, Any]:
    """:func:`vqa_scores` or :func:`exact_match_scores`, by a benchmark's ``answer_metric``."""
    if metric == "exact_match":
        return exact_match_scores(predictions, items)
    if metric != "vqa_accuracy":
        raise ValueError(f"unknown answer metric {metric!r}; use vqa_accuracy or exact_match")
    return vqa_scores(predictions, items)


def vqa_scores(
    predictions: Mapping[int, str], items: Mapping[int, Sequence[Any]], *, always_normalize: bool = False
) -> dict[str, Any]:
    """Score one predicted answer per question against ``items``: question_id -> (answers,
    answer_type) or (answers, answer_type, question_type), e.g. a `VQAReference`.

    Returns percentages (100 x mean accuracy, the paper's scale) as the official tool reports them:
    ``accuracy`` over all questions, ``per_answer_type``, ``per_question_type`` (over the questions
    that have a non-empty question type), ``per_question`` (question_id -> 100 x accuracy), and
    ``n_questions``. Every question needs a prediction and every prediction a question."""
    return _scores(predictions, items, lambda p, answers: vqa_accuracy(p, answers, always_normalize=always_normalize))


def _scores(predictions: Mapping[int, str], items: Mapping[int, Sequence[Any]], accuracy) -> dict[str, Any]:
    """The result of :func:`vqa_scores` with ``accuracy(prediction, answers)`` in [0, 1] per question."""
    _check_ids(predictions, items)
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for qid, item in items.items():
        ref = VQAReference(*item)
        if not isinstance(predictions[qid], str):
            raise ValueError(f"prediction for question {qid} must be a string, got {predictions[qid]!r}")
        if isinstance(ref.answers, str) or not ref.answers or not all(isinstance(a, str) for a in ref.answers):
            raise ValueError(f"question {qid}: answers must be a non-empty list of strings, got {ref.answers!r}")
        acc = accuracy(predictions[qid], ref.answers)
        per_question[qid] = acc
        by_answer_type.setdefault(ref.answer_type, []).append(acc)
        if ref.question_type:
            by_question_type.setdefault(ref.question_type, []).append(acc)
    return {
        "accuracy": _percent(list(per_question.values())),
        "per_answer_type": {t: _percent(accs) for t, accs in sorted(by_answer_type.items())},
        "per_question_type": {t: _percent(accs) for t, accs in sorted(by_question_type.items())},
        "per_question": {qid: 100 * acc for qid, acc in per_question.items()},
        "n_questions": len(per_question),
    }


def _percent(accs: list[float]) -> float:
    return 100 * sum(accs) / len(accs)  # (100 x sum) / n, in the official order


def _check_ids(predictions: Mapping[int, str], items: Mapping[int, Any]) -> None:
    if not items:
        raise ValueError("vqa_scores needs at least one question; got no items")
    missing = sorted(items.keys() - predictions.keys())
    extra = sorted(predictions.keys() - items.keys())
    if missing:
        raise ValueError(f"no prediction for {len(missing)} of {len(items)} questions (first ids: {missing[:5]})")
    if extra:
        raise ValueError(f"{len(extra)} predictions are for unknown questions (first ids: {extra[:5]})")
