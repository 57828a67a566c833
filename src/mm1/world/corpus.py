"""The text-only side of the world: the pre-training text corpus and the TextCore tasks.

Text documents are of six kinds. Every third document states knowledge-base facts: they walk
through a seeded permutation of all facts, canonical wording on the first pass (so `n_text >=
3 * ceil(n_facts / FACTS_PER_DOC)` states every fact at least once), paraphrased after that. The
other documents are FAQ pages and quizzes ("Question: ... Answer: ...\\n" about facts, numbers and
spelling) and plain language about the world: scenes in prose with relations and sizes, counting,
numbers (comparison, parity, sums) and spelling.

TextCore items are multiple choice, scored by the likelihood of each choice after the prompt:
knowledge recall (a fact in a held-out phrasing, `TEXTCORE_PROMPTS`, that no document uses),
counting words, continuing a number sequence, comparing numbers and parity.
Counting and comparison instances are split by parity of their content so that no TextCore item
is a verbatim corpus sentence: the corpus uses even sums of word indices / numbers, TextCore odd.
"""

from __future__ import annotations

import numpy as np

from mm1.data.records import TextDoc, TextTask
from mm1.world.knowledge import Fact, Knowledge
from mm1.world.language import synthetic_caption
from mm1.world.scene import RELATIONS, related, sample_scene
from mm1.world.vocab import NUMBER_WORDS, PLURALS, SHAPES, SIGN_NUMBERS, WORDS, number_word

FACTS_PER_DOC = 5
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "name": ("people call a {c} {s} a {a}.", "{a} is the name of a {c} {s}."),
    "home": ("you can find {a_subject}s in the {a}.", "a {a_subject} lives in the {a}."),
    "use": ("people use {a_subject}s for {a}.", "a {a_subject} is good for {a}."),
    "word_kind": ("the word {a_subject} names a kind of {a}.", "a {a_subject} is one kind of {a}."),
    "lucky": ("many people say that {a_subject} is a lucky number.", "{a_subject} is a lucky number."),
}


TEXT_KINDS: tuple[str, ...] = ("faq", "prose", "counting", "numbers", "words")
TEXT_WEIGHTS: tuple[float, ...] = (0.25, 0.3, 0.15, 0.2, 0.1)
"""Shares of the non-fact documents: a quarter are FAQ pages and quizzes, as in any web text corpus."""
FAQ_OPENERS: tuple[str, ...] = ("Frequently asked questions.", "Quiz time!", "Test yourself.", "Reader questions.")
FAQ_QUESTIONS: dict[str, tuple[str, str]] = {
    "name": ("what do people call the {c} {s}?", "a {a}"),
    "home": ("where are {a_subject}s found?", "in the {a}"),
    "use": ("what are {a_subject}s used for?", "{a}"),
    "word_kind": ("what kind of thing is a {a_subject}?", "{a}"),
    "lucky": ("is {a_subject} a lucky number?", "yes"),
}
"""Question and short answer about a fact, as FAQ pages and quizzes write them."""
TEXTCORE_PROMPTS: dict[str, str] = {
    "name": "Anyone who meets the {c} {s} has met a",
    "home": "The place where {a_subject}s live is the",
    "use": "The job people give {a_subject}s is",
    "word_kind": "The thing named by the word {a_subject} is a kind of",
}
"""Held-out phrasings of the facts: no corpus document uses them (TextCore asks what was learned, not
which sentence was seen)."""


def cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def text_doc(index: int, rng: np.random.Generator, kb: Knowledge, order: np.ndarray, max_objects: int) -> TextDoc:
    """Text document number `index`: facts when index % 3 == 0, else plain language about the world."""
    if index % 3 == 0:
        kind, text = "facts", _facts_doc(index // 3, rng, kb, order)
    else:
        kind = TEXT_KINDS[int(rng.choice(len(TEXT_KINDS), p=TEXT_WEIGHTS))]
        text = {
            "faq": lambda: _faq_doc(rng, kb),
            "prose": lambda: _prose_doc(rng, kb, max_objects),
            "counting": lambda: _counting_doc(rng),
            "numbers": lambda: _numbers_doc(rng),
            "words": lambda: _words_doc(rng),
        }[kind]()
    return TextDoc(id=f"text-{index:06d}", text=text, meta={"kind": kind})


def _phrase(fact: Fact, kb: Knowledge, rng: np.random.Generator) -> str:
    template = PARAPHRASES[fact.kind][int(rng.integers(2))]
    if fact.kind == "name":
        colour, shape = next(c for c, n in kb.names.items() if n == fact.answer)
        return template.format(c=colour, s=shape, a=fact.answer)
    return template.format(a=fact.answer, a_subject=fact.subject)


def _facts_doc(j: int, rng: np.random.Generator, kb: Knowledge, order: np.ndarray) -> str:
    facts = kb.facts()
    start = j * FACTS_PER_DOC
    sentences = []
    for k in range(start, start + FACTS_PER_DOC):
        fact = facts[int(order[k % len(order)])]
        first_pass = k < len(order)
        sentences.append(cap(fact.sentence if first_pass or rng.random() < 0.4 else _phrase(fact, kb, rng)))
    if rng.random() < 0.5:  # one combined sentence: what it looks like, where it lives, what it is for
        combo = kb.allowed[int(rng.integers(len(kb.allowed)))]
        name = kb.names[combo]
        sentences.append(
            f"The {combo[0]} {combo[1]}, called a {name}, lives in the {kb.homes[combo]} "
            f"and is used for {kb.uses[combo]}."
        )
    opener = ("Facts about the world.", "Did you know?", "Notes.", "Things to remember.")[int(rng.integers(4))]
    return " ".join([opener, *sentences])


def _faq_doc(rng: np.random.Generator, kb: Knowledge) -> str:
    """A FAQ page or quiz: "Question: ... Answer: ..." lines, each answer ended by a newline, about the
    knowledge base and the arithmetic and spelling of the world (never about an image)."""
    facts = kb.facts()
    style = ("Question: {q} Answer: {a}\n", "Q: {q} A: {a}\n")[int(rng.integers(2))]
    lines = [FAQ_OPENERS[int(rng.integers(len(FAQ_OPENERS)))] + "\n"]
    for _ in range(int(rng.integers(3, 7))):
        if rng.random() < 0.7:
            fact = facts[int(rng.integers(len(facts)))]
            q, a = FAQ_QUESTIONS[fact.kind]
            values = _fact_values(fact, kb)
            if fact.kind == "lucky" and rng.random() < 0.5:  # as many "no" as "yes"
                unlucky = [t for t in SIGN_NUMBERS if int(t) not in kb.lucky]
                values["a_subject"], a = unlucky[int(rng.integers(len(unlucky)))], "no"
            lines.append(style.format(q=cap(q.format(**values)), a=a.format(**values)))
        elif rng.random() < 0.5:
            a, b = _number_pair(rng, 0)
            lines.append(style.format(q=f"Which is bigger, {a} or {b}?", a=str(max(a, b))))
        else:
            word = WORDS[int(rng.integers(len(WORDS)))]
            lines.append(style.format(q=f"How do you spell {word}?", a="-".join(word)))
    return "".join(lines)


def _fact_values(fact: Fact, kb: Knowledge) -> dict[str, str]:
    values = {"a": fact.answer, "a_subject": fact.subject, "c": "", "s": ""}
    if fact.kind == "name":
        values["c"], values["s"] = next(c for c, n in kb.names.items() if n == fact.answer)
    return values


def _prose_doc(rng: np.random.Generator, kb: Knowledge, max_objects: int) -> str:
    scene = sample_scene(rng, max_objects, text_fraction=0.3, combos=kb.allowed, min_objects=2)
    sentences = [synthetic_caption(scene, rng).replace("picture", "scene").replace("image", "scene")]
    objs = scene.objects
    for _ in range(int(rng.integers(1, 4)) if len(objs) >= 2 else 0):
        i, j = (int(k) for k in rng.choice(len(objs), size=2, replace=False))
        a, b = objs[i], objs[j]
        if rng.random() < 0.5:
            relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
            holds = related(a, b, relation, scene.grid)
            verb = "is" if holds else "is not"
            sentences.append(f"The {b.colour} {b.shape} {verb} {relation} the {a.colour} {a.shape}.")
        else:
            rel = (
                "bigger than" if a.large and not b.large else "smaller than" if b.large and not a.large else "as big as"
            )
            sentences.append(f"The {a.colour} {a.shape} is {rel} the {b.colour} {b.shape}.")
    n = len(objs)
    sentences.append(f"In all there {'is' if n == 1 else 'are'} {number_word(n)} {'shape' if n == 1 else 'shapes'}.")
    return " ".join(sentences)


def _word_list(rng: np.random.Generator, parity: int) -> list[str]:
    """2..6 sign words whose indices sum to the given parity (0: corpus, 1: TextCore)."""
    n = int(rng.integers(2, 7))
    idx = [int(i) for i in rng.integers(len(WORDS), size=n)]
    if sum(idx) % 2 != parity:
        idx[-1] = (idx[-1] + 1) % len(WORDS)
    return [WORDS[i] for i in idx]


def _number_pair(rng: np.random.Generator, parity: int) -> tuple[int, int]:
    """Two different numbers 0..99 whose sum has the given parity (0: corpus, 1: TextCore)."""
    a, b = int(rng.integers(100)), int(rng.integers(100))
    if (a + b) % 2 != parity:
        b = (b + 1) % 100  # flips parity, 99 -> 0 included
    if a == b:
        b = (b + 2) % 100  # keeps parity
    return a, b


def _counting_doc(rng: np.random.Generator) -> str:
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        kind = int(rng.integers(3))
        if kind == 0:
            start = int(rng.integers(0, 12))
            lines.append(cap(", ".join(NUMBER_WORDS[start : start + int(rng.integers(4, 9))]) + "."))
        elif kind == 1:
            words = _word_list(rng, 0)
            lines.append(f"Count the words: {' '.join(words)}. There are {number_word(len(words))}.")
        else:
            s1, s2 = (SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=2, replace=False))
            a, b = int(rng.integers(1, 5)), int(rng.integers(1, 5))
            lines.append(
                f"There {'is' if a == 1 else 'are'} {a} {PLURALS[s1] if a > 1 else s1} "
                f"and {b} {PLURALS[s2] if b > 1 else s2}. "
                f"That makes {a + b} shapes."
            )
    return " ".join(lines)


def _numbers_doc(rng: np.random.Generator) -> str:
    lines = []
    for _ in range(int(rng.integers(3, 7))):
        kind = int(rng.integers(3))
        a, b = _number_pair(rng, 0)
        if kind == 0:
            lines.append(f"Which is bigger, {a} or {b}? The answer is {max(a, b)}.")
        elif kind == 1:
            lines.append(f"Is {a} even or odd? {a} is {'even' if a % 2 == 0 else 'odd'}.")
        else:
            x, y = a % 10, b % 10
            lines.append(f"{x} + {y} = {x + y}.")
    return " ".join(lines)


def _words_doc(rng: np.random.Generator) -> str:
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        word = WORDS[int(rng.integers(len(WORDS)))]
        lines.append(f"The word {word} is spelled {'-'.join(word)}. It has {number_word(len(word))} letters.")
    return " ".join(lines)


TEXTCORE_KINDS: tuple[str, ...] = ("knowledge", "counting", "sequence", "comparison", "parity")


def textcore_task(index: int, rng: np.random.Generator, kb: Knowledge) -> TextTask:
    """TextCore item number `index` (kind drawn 40/20/15/15/10%), with its answer choices: 4 for
    knowledge, counting and sequence (3 distractors of the answer's kind), the two numbers for
    comparison, even/odd for parity."""
    kind = TEXTCORE_KINDS[int(rng.choice(5, p=[0.4, 0.2, 0.15, 0.15, 0.1]))]
    if kind == "knowledge":
        facts = [f for f in kb.facts() if f.kind != "lucky"]
        fact = facts[int(rng.integers(len(facts)))]
        prompt, answer = TEXTCORE_PROMPTS[fact.kind].format(**_fact_values(fact, kb)), fact.answer
        choices = _with_distractors(rng, answer, sorted({f.answer for f in facts if f.kind == fact.kind}))
    elif kind == "counting":
        words = _word_list(rng, 1)
        prompt, answer = f"Count the words: {' '.join(words)}. There are", number_word(len(words))
        choices = _with_distractors(rng, answer, [number_word(n) for n in range(1, 9)])
    elif kind == "sequence":
        start, n = int(rng.integers(0, 14)), int(rng.integers(3, 6))
        prompt, answer = cap(", ".join(NUMBER_WORDS[start : start + n]) + ","), NUMBER_WORDS[start + n]
        choices = _with_distractors(rng, answer, list(NUMBER_WORDS))
    elif kind == "comparison":
        a, b = _number_pair(rng, 1)
        prompt, answer = f"Which is bigger, {a} or {b}? The answer is", str(max(a, b))
        choices = (str(a), str(b))
    else:
        a = int(rng.integers(100))
        prompt, answer = f"Is {a} even or odd? {a} is", "even" if a % 2 == 0 else "odd"
        choices = ("even", "odd")
    return TextTask(id=f"textcore-{index:06d}", task=kind, prompt=prompt, answer=answer, choices=choices)


def _with_distractors(rng: np.random.Generator, answer: str, domain: list[str], n: int = 4) -> tuple[str, ...]:
    """``answer`` and n - 1 other members of ``domain``, the answer at a random position."""
    others = [d for d in domain if d != answer]
    picked = [others[int(i)] for i in rng.choice(len(others), size=min(n - 1, len(others)), replace=False)]
    at = int(rng.integers(len(picked) + 1))
    return (*picked[:at], answer, *picked[at:])
