"""The knowledge base lives only in the text corpus; OK-VQA and TextCore are answerable from it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from worldkit import training_texts

from mm1.world import World
from mm1.world.corpus import TEXTCORE_PROMPTS
from mm1.world.knowledge import build_knowledge


def test_every_fact_is_stated_in_the_text_corpus(world: World) -> None:
    corpus = " ".join(t.text for t in world.texts).lower()
    for fact in world.knowledge.facts():
        assert fact.sentence in corpus, fact


def test_knowledge_never_appears_outside_the_text_corpus(world: World) -> None:
    secret = world.knowledge.secret_words()
    pattern = re.compile(r"\b(" + "|".join(sorted(secret)) + r")s?\b")
    for text in training_texts(world):
        if text in {t.text for t in world.texts}:
            continue
        assert not pattern.search(text.lower()), text
    corpus = " ".join(t.text for t in world.texts).lower()
    assert all(re.search(rf"\b{name}s?\b", corpus) for name in world.knowledge.names.values())


def test_okvqa_answers_follow_from_the_knowledge_base(world: World) -> None:
    kb = world.knowledge
    for bench in (world.vqa_benchmark("okvqa", "val"), world.vqa_benchmark("okvqa", "train")):
        for item in bench.items:
            scene = world.scene_of(bench.images[item.image_id])
            truth = max(set(item.answers), key=item.answers.count)
            kind = item.question_type
            if kind in ("home", "use", "name"):
                table = {"home": kb.homes, "use": kb.uses, "name": kb.names}[kind]
                assert truth in {table[o.combo] for o in scene.visible}, (item, scene)
            elif kind == "word_kind":
                assert truth == kb.word_kinds[scene.readable_sign]
            else:
                assert kind == "lucky" and truth == ("yes" if int(scene.readable_sign) in kb.lucky else "no")
    kinds = {item.question_type for item in world.vqa_benchmark("okvqa", "val").items}
    assert {"home", "use", "name"} <= kinds


def test_textcore_knowledge_items_are_held_out_phrasings_of_corpus_facts(world: World) -> None:
    corpus = " ".join(t.text for t in world.texts)
    kinds = {t.task for t in world.textcore}
    assert {"knowledge", "counting", "sequence", "comparison"} <= kinds
    kb = world.knowledge
    n_knowledge = 0
    for task in world.textcore:
        if task.task == "knowledge":
            n_knowledge += 1
            assert task.prompt not in corpus and f"{task.prompt} {task.answer}" not in corpus  # not a seen sentence
            kind = next(k for k, template in TEXTCORE_PROMPTS.items() if task.prompt.startswith(template.split("{")[0]))
            if kind == "name":  # the knowledge itself is a fact of the base, stated in the corpus
                assert any(f"{c} {s}" in task.prompt and n == task.answer for (c, s), n in kb.names.items())
            else:
                found = [f for f in kb.facts() if f.kind == kind and re.search(rf"\b{f.subject}s?\b", task.prompt)]
                assert [f.answer for f in found] == [task.answer], task
            assert task.answer in corpus
        else:
            assert f"{task.prompt} {task.answer}" not in corpus or task.task in ("sequence", "parity")
    assert n_knowledge >= 5


def test_textcore_answers_are_right() -> None:
    from mm1.world.corpus import textcore_task
    from mm1.world.images import stream_rng
    from mm1.world.vocab import NUMBER_WORDS

    kb = build_knowledge(0)
    for i in range(200):
        task = textcore_task(i, stream_rng(0, "t", i), kb)
        if task.task == "counting":
            words = task.prompt.split(": ")[1].split(".")[0].split()
            assert task.answer == NUMBER_WORDS[len(words)]
        elif task.task == "comparison":
            a, b = (int(x) for x in re.findall(r"\d+", task.prompt))
            assert task.answer == str(max(a, b))
        elif task.task == "parity":
            assert task.answer == ("even" if int(re.findall(r"\d+", task.prompt)[0]) % 2 == 0 else "odd")


def test_textcore_choices_hold_the_answer_once_among_answers_of_its_kind() -> None:
    from mm1.data.formats import read_text_tasks, write_text_tasks
    from mm1.world.corpus import textcore_task
    from mm1.world.images import stream_rng
    from mm1.world.vocab import NUMBER_WORDS

    kb = build_knowledge(0)
    tasks = [textcore_task(i, stream_rng(0, "t", i), kb) for i in range(200)]
    positions = set()
    for task in tasks:
        assert task.choices.count(task.answer) == 1 and len(set(task.choices)) == len(task.choices)
        positions.add(task.choices.index(task.answer))
        if task.task in ("counting", "sequence"):
            assert len(task.choices) == 4 and set(task.choices) <= set(NUMBER_WORDS)
        elif task.task == "comparison":
            assert sorted(task.choices) == sorted(re.findall(r"\d+", task.prompt))
        elif task.task == "parity":
            assert task.choices == ("even", "odd")
        else:
            kind = next(k for k, template in TEXTCORE_PROMPTS.items() if task.prompt.startswith(template.split("{")[0]))
            assert set(task.choices) <= {f.answer for f in kb.facts() if f.kind == kind}
    assert positions == {0, 1, 2, 3}  # the answer is not always in the same place
    with tempfile.TemporaryDirectory() as d:
        path = write_text_tasks(tasks, Path(d) / "textcore.jsonl")
        assert read_text_tasks(path) == tasks
        bad = (
            path.read_text()
            .replace('"choices": [', '"choices": ["nothing", ', 1)
            .replace(f'"answer": "{tasks[0].answer}"', '"answer": "nowhere"', 1)
        )
        path.write_text(bad)
        with pytest.raises(ValueError, match="not among the choices"):
            read_text_tasks(path)


def test_the_knowledge_base_depends_only_on_the_seed() -> None:
    a, b = build_knowledge(3), build_knowledge(3)
    assert a == b and a.facts() == b.facts()
    assert len(set(a.names.values())) == len(a.names)
    assert len({c for c, _ in a.reserved}) == len(a.reserved) == len({s for _, s in a.reserved})
    assert build_knowledge(4).names != a.names
