"""Few-shot prompts: templates, the query cut, context overflow, stop strings, template validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mm1.config import EvalConfig
from mm1.data.tokenizer import TextTokenizer
from mm1.eval.prompts import Example, Template, build_prompt, cut_at_stops

VQA = "<image>Question: {question} Answer: {answer}"
N = 4  # image slots


@pytest.fixture(scope="module")
def tok(tiny_run) -> TextTokenizer:
    return TextTokenizer(tiny_run["tokenizer"])


def _demo(i: int) -> Example:
    return Example(bytes([i]), {"question": f"What colour is shape {i}?", "answer": "red"})


def test_demo_and_query_are_encoded_segment_by_segment(tok: TextTokenizer) -> None:
    t = Template(VQA, "vqa", tok, N)
    demo = t.demo(_demo(1))
    assert demo == [tok.image_id] * N + tok.encode("Question: What colour is shape 1? Answer: red")
    query = t.query(Example(b"q", {"question": "How many shapes?"}))
    assert query == [tok.image_id] * N + tok.encode("Question: How many shapes? Answer:")  # cut, no trailing space
    caption = Template("<image>{caption}<eoc>", "captioning", tok, N)
    assert caption.demo(Example(b"x", {"caption": " A red circle. "})) == (
        [tok.image_id] * N + tok.encode("A red circle.") + [tok.eoc_id]
    )
    assert caption.query(Example(b"x", {})) == [tok.image_id] * N


def test_prompt_is_bos_demos_query_with_images_in_reading_order(tok: TextTokenizer) -> None:
    t = Template(VQA, "vqa", tok, N)
    demos = [_demo(i) for i in range(3)]
    query = Example(b"query", {"question": "Is it big?"})
    p = build_prompt(t, demos, query, max_length=500, max_new_tokens=5, max_images=16, overflow="error", where="x")
    assert p.ids == [tok.bos_id] + t.demo(demos[0]) + t.demo(demos[1]) + t.demo(demos[2]) + t.query(query)
    assert p.images == [bytes([0]), bytes([1]), bytes([2]), b"query"]
    assert (p.shots, p.dropped) == (3, 0)


def test_overflow_drops_the_earliest_demonstrations_and_counts_them(tok: TextTokenizer) -> None:
    t = Template(VQA, "vqa", tok, N)
    demos = [_demo(i) for i in range(4)]
    query = Example(b"q", {"question": "Is it big?"})
    one = len(t.demo(demos[0]))
    room = 1 + 2 * one + len(t.query(query)) + 5  # bos + two demonstrations + query + 5 new tokens
    p = build_prompt(t, demos, query, max_length=room, max_new_tokens=5, max_images=16, overflow="drop_earliest",
                     where="x")  # fmt: skip
    assert (p.shots, p.dropped) == (2, 2)
    assert p.images == [bytes([2]), bytes([3]), b"q"]  # the latest demonstrations stay
    assert len(p.ids) + 5 <= room
    with pytest.raises(ValueError, match=r"vqav2 question 7, 4-shot: .* exceed the model's \d+-token context"):
        build_prompt(t, demos, query, max_length=room, max_new_tokens=5, max_images=16, overflow="error",
                     where="vqav2 question 7, 4-shot")  # fmt: skip


def test_too_many_images_drop_demonstrations_too(tok: TextTokenizer) -> None:
    t = Template(VQA, "vqa", tok, N)
    p = build_prompt(t, [_demo(i) for i in range(8)], Example(b"q", {"question": "Q?"}), max_length=10_000,
                     max_new_tokens=5, max_images=3, overflow="drop_earliest", where="x")  # fmt: skip
    assert (p.shots, p.dropped, len(p.images)) == (2, 6, 3)


def test_a_query_alone_that_does_not_fit_is_an_error_naming_the_example(tok: TextTokenizer) -> None:
    t = Template(VQA, "vqa", tok, N)
    with pytest.raises(ValueError, match="okvqa question 3, 0-shot: .* with 0 demonstrations"):
        build_prompt(t, [], Example(b"q", {"question": "word " * 50}), max_length=20, max_new_tokens=5,
                     max_images=16, overflow="drop_earliest", where="okvqa question 3, 0-shot")  # fmt: skip


def test_the_default_vqa_demonstration_ends_its_answer_with_a_newline(tok: TextTokenizer) -> None:
    t = Template(EvalConfig().vqa.template, "vqa", tok, N)
    demo = t.demo(_demo(1))
    assert demo == [tok.image_id] * N + tok.encode("Question: What colour is shape 1? Answer: red\n")
    query = t.query(Example(b"q", {"question": "What colour is shape 1?"}))
    assert query == [tok.image_id] * N + tok.encode("Question: What colour is shape 1? Answer:")  # no "\n"
    rest = t.continuation(Example(b"q", {"question": "What colour is shape 1?"}), " red ")
    assert query + rest == demo and rest == tok.encode(" red\n")  # the answer, then its terminator
    assert tok.decode(rest[-1:]) == "" and "\n" in tok._tok.decode(rest[-1:])  # the last token is the newline
    assert "\n" in EvalConfig().vqa.stop  # a generated answer is cut there too
    caption = Template("<image>{caption}<eoc>", "captioning", tok, N)
    assert caption.continuation(Example(b"x", {}), "A red circle.") == tok.encode("A red circle.") + [tok.eoc_id]


def test_cut_at_stops() -> None:
    assert cut_at_stops(" blue Question: what", ("\n", "Question")) == "blue"
    assert cut_at_stops("two\nthree", ("\n",)) == "two"
    assert cut_at_stops("  a red circle  ", ()) == "a red circle"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vqa", {"template": "<image>Question: {question}", "max_new_tokens": 5}, "must contain each of"),
        ("vqa", {"template": "Q: {question} A: {answer}", "max_new_tokens": 5}, "<image> exactly once"),
        ("captioning", {"template": "{caption}<image>", "max_new_tokens": 5}, "image must come before"),
        ("captioning", {"template": "<image>{caption}<end>", "max_new_tokens": 5}, "unknown markers"),
        ("captioning", {"template": "<image>{caption", "max_new_tokens": 5}, "not a valid format string"),
        ("shots", [4, 4], "distinct"),
    ],
)
def test_bad_templates_and_shots_are_refused_naming_the_field(field, value, message) -> None:
    with pytest.raises(ValidationError, match=message):
        EvalConfig.model_validate({field: value})


def test_shots_need_a_train_split() -> None:
    spec = {"name": "mine", "task": "vqa", "val": "/data/q.json"}
    with pytest.raises(ValidationError, match=r"benchmarks \['mine'\] have no train split"):
        EvalConfig.model_validate({"benchmarks": [spec]})
    assert EvalConfig.model_validate({"benchmarks": [spec], "shots": [0]}).shots == (0,)
