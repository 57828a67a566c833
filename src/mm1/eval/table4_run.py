"""Table 4's benchmarks in the eval stage (``mm1 eval run --sft``): read, answered 0-shot, scored.

Where the model's answer comes from (no new machinery: the harness's choice likelihood and its
greedy decoder):
  * multiple choice (ScienceQA-IMG, MMMU, MMBench, SEED-Bench, MathVista's multi_choice): the
    options are listed in the user turn as "A. text" lines followed by ``eval.sft.choice_instruction``,
    and the option *letters* are ranked by the log-likelihood of each as the assistant's answer
    (with <eos>); the top letter is the answer. Listing the options makes MMBench's rotations real
    questions (the letters move), which is what CircularEval tests.
  * yes/no (POPE, MME): "Yes" and "No" ranked the same way after the question and
    ``eval.sft.vqa_instruction``; the official parsers then read the chosen word.
  * MathVista free_form: greedy decoding of its official ``query`` (``eval.vqa.max_new_tokens``),
    scored by :func:`mm1.eval.table4.mathvista_correct` (rule-based extraction, no GPT-4).
  * MMMU's open questions need its open-answer parser and free decoding; they are left out and
    counted (row "<name>/open_skipped").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from mm1 import atomic
from mm1.config.eval import BenchmarkSpec
from mm1.data.formats.table4 import LETTERS, Table4Item, read_mmbench, read_mmmu, read_scienceqa, read_seed_bench
from mm1.data.formats.table4_yesno import read_mathvista, read_mme, read_pope
from mm1.data.images import stack_images
from mm1.data.packing import PackLayout, encode_text
from mm1.eval.generate import greedy
from mm1.eval.likelihood import Candidate
from mm1.eval.table4 import (
    accuracy_by,
    circular_accuracy,
    mathvista_correct,
    mme_answer,
    mme_scores,
    pope_answer,
    pope_metrics,
)
from mm1.progress import progress

Choose = Callable[[list[list[str]], list[Table4Item], Sequence[str], str], list[int]]
"""(candidate answers per item, the items, their user turns, progress label) -> index picked per item."""
Generate = Callable[[list[Table4Item], Sequence[str], str], list[str]]
"""(items, their user turns, progress label) -> the decoded answer per item."""


def _path(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else Path(root) / p


def read_table4(spec: BenchmarkSpec, root: Path) -> tuple[list[Table4Item], dict[str, Path]]:
    """The items of a Table 4 benchmark, read by its format's reader, and the files read."""
    val, images = _path(root, spec.val), _path(root, spec.val_images)
    if not val.exists():
        raise FileNotFoundError(f"eval.benchmarks[{spec.name}].val: {val} does not exist")
    fmt, files = spec.file_format, {"val": val}
    if fmt == "scienceqa":
        splits = _path(root, spec.val_annotations) or val.with_name("pid_splits.json")
        files["val_annotations"] = splits
        items = read_scienceqa(val, splits, images, spec.split or "test")
    elif fmt == "mmmu":
        items = read_mmmu(val)
    elif fmt == "mmbench":
        items = read_mmbench(val)
    elif fmt == "seed_bench":
        items = read_seed_bench(val, images)
    elif fmt == "pope":
        items = read_pope(val, images)
    elif fmt == "mme":
        items = read_mme(val)
    else:
        items = read_mathvista(val, images)
    if not items:
        raise ValueError(f"eval.benchmarks[{spec.name}]: {val} holds no question to score")
    return items, files


def choice_turn(item: Table4Item, instruction: str) -> str:
    """The user turn of a multiple-choice question: image, hint, question, lettered options, instruction."""
    lines = ["<image>"] if item.image is not None else []
    lines += [item.context] if item.context else []
    lines += [item.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)] + [instruction]
    return "\n".join(lines)


def yes_no_turn(item: Table4Item, instruction: str) -> str:
    """The user turn of a yes/no question: image, then ``instruction`` with the question."""
    return "<image>\n" + instruction.format(question=item.question)


def _row(spec: BenchmarkSpec, sub: str, metric: str, value: float, n: int, template: str) -> dict:
    return {"benchmark": spec.name + (f"/{sub}" if sub else ""), "task": spec.task, "shots": 0, "metric": metric,
            "value": float(value), "n_examples": n, "demos_dropped": 0, "mean_shots": 0.0, "template": template}  # fmt: skip


def _by_category(spec: BenchmarkSpec, scores: dict[str, float], counts: dict[str, int], template: str) -> list:
    return [_row(spec, k, "accuracy", v, counts[k], template) for k, v in scores.items()]


def _counts(items: Sequence[Table4Item], unit: Callable[[Table4Item], str]) -> dict[str, int]:
    """Per category ("" = all), how many distinct ``unit(item)`` are scored (items, or questions)."""
    seen: dict[str, set[str]] = {"": set()}
    for it in items:
        for k in ("", it.category) if it.category else ("",):
            seen.setdefault(k, set()).add(unit(it))
    return {k: len(v) for k, v in seen.items()}


def score_table4(
    spec: BenchmarkSpec,
    items: list[Table4Item],
    choose: Choose,
    generate: Generate,
    choice_instruction: str,
    yes_no_instruction: str,
) -> tuple[list[dict], dict[str, str]]:
    """scores.csv rows of one Table 4 benchmark and each item's answer (key -> letter / word / text)."""
    fmt = spec.file_format
    if fmt in ("pope", "mme"):
        turns = [yes_no_turn(it, yes_no_instruction) for it in items]
        picks = choose([["Yes", "No"]] * len(items), items, turns, spec.name)
        parse = pope_answer if fmt == "pope" else mme_answer
        answers = {it.key: parse(("Yes", "No")[p]) for it, p in zip(items, picks, strict=True)}
        if fmt == "pope":
            metrics = pope_metrics([answers[it.key] for it in items], [it.answer for it in items])
            rows = [_row(spec, "" if m == "f1" else m, "f1" if m == "f1" else m, v, len(items), yes_no_instruction)
                    for m, v in metrics.items()]  # fmt: skip
            return rows, answers
        scores = mme_scores(items, answers)
        rows = [_row(spec, "" if k == "perception" else k, "score", v, len(items), yes_no_instruction)
                for k, v in scores.items()]  # fmt: skip
        return rows, answers
    skipped = [it for it in items if fmt == "mmmu" and it.meta.get("question_type") != "multiple-choice"]
    scored = [it for it in items if not (fmt == "mmmu" and it.meta.get("question_type") != "multiple-choice")]
    free = [it for it in scored if fmt == "mathvista" and it.meta["question_type"] == "free_form"]
    listed = [it for it in scored if not (fmt == "mathvista" and it.meta["question_type"] == "free_form")]
    answers: dict[str, str] = {}
    if listed:
        turns = [choice_turn(it, choice_instruction) for it in listed]
        picks = choose([list(LETTERS[: len(it.choices)]) for it in listed], listed, turns, spec.name)
        answers |= {it.key: LETTERS[p] for it, p in zip(listed, picks, strict=True)}
    if free:
        texts = generate(free, [f"<image>\n{it.meta['query'] or it.question}" for it in free], spec.name)
        answers |= {it.key: t for it, t in zip(free, texts, strict=True)}
    if fmt == "mathvista":
        correct = {it.key: mathvista_correct(answers[it.key], it) for it in scored}
    else:
        correct = {it.key: answers[it.key] == it.answer for it in scored}
    if fmt == "mmbench":
        questions = _counts(scored, lambda it: it.group)
        rows = _by_category(spec, circular_accuracy(scored, correct), questions, choice_instruction)
        rows.append(_row(spec, "single", "accuracy", accuracy_by(scored, correct)[""], len(scored), choice_instruction))
    else:
        rows = _by_category(spec, accuracy_by(scored, correct), _counts(scored, lambda it: it.key), choice_instruction)
    if skipped:
        rows.append(_row(spec, "open_skipped", "count", len(skipped), len(skipped), choice_instruction))
    return rows, answers


def run_table4(ctx, spec: BenchmarkSpec, root: Path, out_dir: Path | None, sft_prompt, choose_groups, answer_text):
    """One Table 4 benchmark in the harness: its scores.csv rows and the files read. ``ctx`` is the
    harness's context; ``sft_prompt(turn, image)``, ``choose_groups(groups, desc)`` and
    ``answer_text(decoded)`` are its prompt builder, likelihood ranker and answer cleaner. With
    ``out_dir`` (the main rank), each item's answer goes to predictions/<name>_0shot.json."""
    items, files = read_table4(spec, root)
    layout = PackLayout.from_tokenizer(ctx.tok, ctx.max_length, ctx.mc.connector.num_tokens, 1)

    def answer_ids(text: str) -> list[int]:
        return encode_text(ctx.tok, ctx.sft.assistant_template.format(text=text), layout).tolist() + [ctx.tok.eos_id]

    def choose(options, chosen_items, turns, desc):
        groups = []
        for it, turn, opts in zip(chosen_items, turns, options, strict=True):
            prompt = sft_prompt(turn, it.image)
            groups.append([Candidate(prompt.ids, answer_ids(o), prompt.images) for o in opts])
        return choose_groups(groups, f"{desc} (table 4)")

    def generate(gen_items, turns, desc):
        prompts = [sft_prompt(turn, it.image) for it, turn in zip(gen_items, turns, strict=True)]
        texts: dict[int, str] = {}
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
        mb = ctx.cfg.micro_batch_size
        for start in progress(range(0, len(order), mb), desc=f"{desc} (table 4)", unit="batch"):
            idx = order[start : start + mb]
            images = stack_images([im for i in idx for im in prompts[i].images], ctx.image_size).to(ctx.device)
            outs = greedy(ctx.model, ctx.tok, [prompts[i].ids for i in idx], images, ctx.max_length,
                          ctx.cfg.vqa.max_new_tokens)  # fmt: skip
            texts |= {i: answer_text(ctx.tok.decode(o)) for i, o in zip(idx, outs, strict=True)}
        return [texts[i] for i in range(len(prompts))]

    rows, answers = score_table4(spec, items, choose, generate, ctx.cfg.sft.choice_instruction,
                                 ctx.cfg.sft.vqa_instruction)  # fmt: skip
    if out_dir is not None:
        entries = [{"key": k, "answer": a} for k, a in answers.items()]
        atomic.write_text(out_dir / "predictions" / f"{spec.name}_0shot.json", json.dumps(entries) + "\n")
    return rows, {f"{spec.name}/{k}": v for k, v in files.items()}
