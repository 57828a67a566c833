"""The official scores of MM1 Table 4's offline-scorable benchmarks, written from their rules.

Sources read (rules re-written here, no code copied):
  * MMMU ``eval/eval_utils.py`` (parse_multi_choice_response): letter parsing. The official code
    picks a *random* letter (``random.choice``, seed 42) when it finds none; here such an answer
    is ``None`` and counts as wrong, so a score never depends on a random draw.
  * MMBench / VLMEvalKit: CircularEval, a question is right only if every rotation is.
  * POPE ``evaluate.py`` (as in LLaVA's eval_pope.py): yes/no parsing, accuracy, precision,
    recall, F1, yes-ratio.
  * MME ``eval_tool/calculation.py``: parse_pred_ans, acc and acc+ per subtask, score =
    (acc + acc+) x 100, MME^P = the sum over the perception subtasks.
  * MathVista ``evaluation/extract_answer.py`` and ``calculate_score.py``: the rule-based part
    of the extraction (an answer that is a choice, an integer, a float, or 'The answer is "x".');
    the normalisation (letter or "(A) text" -> the choice, otherwise the choice with the smallest
    Levenshtein distance; integers; floats rounded to ``precision``) and exact comparison.
    **The GPT-4 extractor is not used**: where the rules find nothing the response itself goes
    to the normalisation, so free-form answers wrapped in prose score lower than officially.
  * ScienceQA and SEED-Bench: accuracy over the questions (SEED-Bench's own evaluation also
    ranks the options by likelihood, as mm1's harness does).
Scores are percentages (0-100), MME's are its own points (0-200 per subtask).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from mm1.data.formats.table4 import LETTERS, Table4Item
from mm1.data.formats.table4_yesno import MME_COGNITION, MME_PERCEPTION

# --- multiple choice ---------------------------------------------------------------------------


def parse_choice(response: str, choices: Sequence[str]) -> str | None:
    """The option letter a free-form ``response`` gives, by MMMU's rules; None where MMMU guesses."""
    letters = LETTERS[: len(choices)]
    for char in ",.!?;:'":
        response = response.strip(char)
    padded = f" {response} "
    found = [c for c in letters if f"({c})" in padded]  # "(B)"
    pattern = "({})"
    if not found:
        found, pattern = [c for c in letters if f" {c} " in padded], " {} "  # "B" as a word
    if not found and len(padded.split()) > 5:  # a sentence: look for an option's text
        found = [c for c, text in zip(letters, choices, strict=True) if text.lower() in padded.lower()]
        if len(found) > 1:  # the option mentioned last wins
            return max(found, key=lambda c: (padded.lower().rfind(choices[letters.index(c)].lower()), -found.index(c)))
        return found[0] if found else None
    if not found:
        return None  # MMMU: random.choice(all_choices); see the module's docstring
    return max(found, key=lambda c: (padded.rfind(pattern.format(c)), -found.index(c)))  # the last mentioned


def accuracy_by(items: Sequence[Table4Item], correct: Mapping[str, bool]) -> dict[str, float]:
    """{"": overall accuracy %, category: accuracy %} over ``items`` (keyed by item.key)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for it in items:
        groups[""].append(correct[it.key])
        if it.category:
            groups[it.category].append(correct[it.key])
    return {k: 100.0 * sum(v) / len(v) for k, v in sorted(groups.items())}


def circular_accuracy(items: Sequence[Table4Item], correct: Mapping[str, bool]) -> dict[str, float]:
    """MMBench's CircularEval: a question (its ``group``) is right only if every copy is right;
    {"": overall %, category: %} over questions."""
    question: dict[str, bool] = {}
    category: dict[str, str] = {}
    for it in items:
        question[it.group] = question.get(it.group, True) and correct[it.key]
        category[it.group] = it.category
    per_question = [Table4Item(key=g, image=None, question="", category=category[g]) for g in question]
    return accuracy_by(per_question, question)


# --- yes / no ----------------------------------------------------------------------------------


def pope_answer(response: str) -> str:
    """POPE's parsing: the first sentence, commas removed, is "no" if it has the word No/no/not."""
    words = response.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def pope_metrics(predicted: Iterable[str], labels: Iterable[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (of "yes") and the yes-ratio, in %. The official script
    divides by zero when nothing is predicted yes; here precision (and F1) are then 0."""
    pairs = [(p == "yes", label == "yes") for p, label in zip(predicted, labels, strict=True)]
    if not pairs:
        raise ValueError("POPE: no answer to score")
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    fn = sum(t and not p for p, t in pairs)
    tn = len(pairs) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1}
    return {k: 100.0 * v for k, v in out.items()} | {"yes_ratio": 100.0 * (tp + fp) / len(pairs)}


def mme_answer(response: str) -> str:
    """MME's parse_pred_ans: "yes"/"no" as such, else by "yes"/"no" in the first 4 characters,
    else "other" (always wrong)."""
    text = response.lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def mme_scores(items: Sequence[Table4Item], predicted: Mapping[str, str]) -> dict[str, float]:
    """Per subtask: acc (% of questions), acc+ (% of images with both questions right) and
    score = acc + acc+ (MME's points, 0-200); "perception" and "cognition" their sums over the
    subtasks present (MME^P over all ten is Table 4's number)."""
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        by_task[it.category][it.group].append(predicted[it.key] == it.answer)
    out: dict[str, float] = {}
    for task, images in sorted(by_task.items()):
        bad = [g for g, v in images.items() if len(v) != 2]
        if bad:
            raise ValueError(f"MME {task}: images {bad[:3]} do not have exactly two questions")
        answers = [c for v in images.values() for c in v]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(v) for v in images.values()) / len(images)
        out |= {f"{task}/acc": acc, f"{task}/acc_plus": acc_plus, f"{task}/score": acc + acc_plus}
    for name, tasks in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [t for t in tasks if t in by_task]
        if present:
            out[name] = sum(out[f"{t}/score"] for t in present)
    return out


# --- MathVista ---------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def mathvista_extract(response: str, item: Table4Item) -> str:
    """The rule-based steps of MathVista's extract_answer (quick_extract on); where the official
    code would ask GPT-4, the stripped response itself (see the module's docstring)."""
    if response == "":
        return ""
    meta = item.meta
    if meta["question_type"] == "multi_choice" and response in item.choices:
        return response
    for kind, parse in (("integer", int), ("float", float)):
        if meta["answer_type"] == kind:
            try:
                return str(parse(response))
            except ValueError:
                pass
    quoted = re.search(r'The answer is "(.*)"\.', response)
    return quoted.group(1) if quoted else response.strip()


def mathvista_normalize(extraction: str, item: Table4Item) -> str | None:
    """calculate_score's normalize_extracted_answer: the prediction compared with the answer."""
    meta = item.meta
    if meta["question_type"] == "multi_choice":
        text = str(extraction).strip()
        letter = re.findall(r"\(([a-zA-Z])\)", text)
        if letter:
            text = letter[0].upper()
        options = list(LETTERS[: len(item.choices)])
        if text in options:
            return item.choices[options.index(text)]
        distances = [levenshtein(text, c) for c in item.choices]
        return item.choices[distances.index(min(distances))]  # the first of the closest, as list.index
    try:
        if meta["answer_type"] == "integer":
            return str(int(float(extraction)))
        if meta["answer_type"] == "float":
            # The official code calls round(x, precision) with the file's number; the files we could
            # see give precision as 1.0 / 2.0, which Python 3's round() rejects. We round to
            # int(precision) places, the field's documented meaning (decimal places).
            return str(round(float(extraction), meta["precision"]))
    except (ValueError, OverflowError):
        return None
    return str(extraction)  # text and list answers compare as strings


def mathvista_correct(response: str, item: Table4Item) -> bool:
    """MathVista's verdict on one response: normalised extraction == the answer (safe_equal)."""
    return mathvista_normalize(mathvista_extract(response, item), item) == item.answer
