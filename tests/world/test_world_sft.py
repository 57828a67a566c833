"""SFT conversations (LLaVA format) and multiple-choice items."""

from __future__ import annotations

import re

from mm1.world import World


def test_conversations_alternate_and_place_the_image_first(world: World) -> None:
    kinds = set()
    for conv in world.sft:
        roles = [role for role, _ in conv.turns]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and roles
        assert conv.turns[0][1].startswith("<image>\n") == (conv.image is not None)
        assert sum(text.count("<image>") for _, text in conv.turns) == (conv.image is not None)
        kinds.add("text" if conv.image is None else "multi" if len(roles) > 2 else "single")
    assert kinds == {"text", "multi", "single"}


def test_multiple_choice_has_four_distinct_choices_and_the_right_answer(world: World) -> None:
    for item in world.multiple_choice:
        assert len(item.choices) == 4 == len(set(item.choices))
        assert 0 <= item.answer < 4
    answers = [m.answer for m in world.multiple_choice]
    assert len(set(answers)) > 1


def test_multiple_choice_answers_are_right(world: World) -> None:
    checked = 0
    for item in world.multiple_choice:
        scene, answer = world.scene_of(item.image), item.choices[item.answer]
        if item.question == "What colour is the background?":
            answer_should = scene.background
        elif item.question in (
            "What does the sign say?",
            "What number is on the sign?",
            "What is written on the sign?",
        ):
            answer_should = scene.readable_sign
        elif item.question == "How many shapes are there?":
            answer_should = str(len(scene.objects))
        elif match := re.fullmatch(r"What colour is the (\w+)\?", item.question):
            answer_should = next(o.colour for o in scene.visible if o.shape == match.group(1))
        elif match := re.fullmatch(r"What shape is the (\w+) object\?", item.question):
            answer_should = next(o.shape for o in scene.visible if o.colour == match.group(1))
        else:
            continue
        assert answer == answer_should, (item, scene)
        checked += 1
    assert checked >= len(world.multiple_choice) // 4
