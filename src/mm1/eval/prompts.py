"""Few-shot prompts: demonstrations and a query written with a template, as token ids + images.

A template such as ``"<image>Question: {question} Answer: {answer}\\n"`` is split at its markers:
``<image>`` becomes the image's N slots, ``<eoc>``/``<eos>`` those special ids, and each text run
between markers is encoded on its own (as the packer encodes the text segments of interleaved
documents). A demonstration fills every field; the query is the template cut before the answer
field, trailing whitespace removed, so the model writes the answer with its leading space:

    <bos> [demo 1] [demo 2] ... [query]  -> generated answer

What a demonstration puts after its query part (the answer and its terminator: "\\n" in the
default VQA template, <eoc> in the captioning one) is ``Template.continuation``: the tokens whose
likelihood the likelihood scores measure.

If the prompt plus the answer budget exceeds the model's context, or it holds more images than
allowed, the earliest demonstrations are dropped until it fits (``overflow="drop_earliest"``; the
number dropped is returned so results can count it) or a ValueError is raised (``"error"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mm1.config.eval import ANSWER_FIELD
from mm1.data.tokenizer import TextTokenizer

_MARKER = re.compile(r"(<image>|<eoc>|<eos>)")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    images: list[bytes]
    """The prompt's images in reading order (demonstrations first, the query's last)."""
    shots: int
    """Demonstrations kept."""
    dropped: int
    """Demonstrations dropped to fit the context or the image limit."""


@dataclass(frozen=True)
class Example:
    """One demonstration or query: its image and the template's fields (the answer may be absent)."""

    image: bytes
    fields: Mapping[str, str]


class Template:
    """A task's template, encoded for one tokenizer and image-token count."""

    def __init__(self, template: str, task: str, tok: TextTokenizer, image_tokens: int) -> None:
        self.template, self.task, self.tok, self.image_tokens = template, task, tok, image_tokens
        self.answer_field = ANSWER_FIELD[task]
        head, _, _ = template.partition("{" + self.answer_field + "}")
        self.query_template = head.rstrip()
        self._special = {"<image>": [tok.image_id] * image_tokens, "<eoc>": [tok.eoc_id], "<eos>": [tok.eos_id]}

    def _encode(self, template: str, fields: Mapping[str, str]) -> list[int]:
        ids: list[int] = []
        for part in _MARKER.split(template):
            if part in self._special:
                ids += self._special[part]
            elif part:
                text = part.format(**fields)
                ids += self.tok.encode(text) if text else []
        return ids

    def demo(self, ex: Example) -> list[int]:
        return self._encode(self.template, {k: v.strip() for k, v in ex.fields.items()})

    def query(self, ex: Example) -> list[int]:
        return self._encode(self.query_template, {k: v.strip() for k, v in ex.fields.items()})

    def continuation(self, ex: Example, answer: str) -> list[int]:
        """The tokens a demonstration of ``ex`` with ``answer`` holds after ``query(ex)``: the answer
        and the rest of the template (its terminator). Should the tokenizer merge across the cut,
        the rest of the template is encoded on its own."""
        fields = {k: v.strip() for k, v in ex.fields.items()} | {self.answer_field: answer.strip()}
        query, full = self._encode(self.query_template, fields), self._encode(self.template, fields)
        if full[: len(query)] == query:
            return full[len(query) :]
        return self._encode(self.template[len(self.query_template) :], fields)


def build_prompt(
    template: Template,
    demos: Sequence[Example],
    query: Example,
    *,
    max_length: int,
    max_new_tokens: int,
    max_images: int,
    overflow: str,
    where: str,
) -> Prompt:
    """``<bos>``, the demonstrations in order, the query; fitted to the context by ``overflow``.
    ``where`` names the example in errors (e.g. "coco image 42, 8-shot")."""
    demo_ids = [template.demo(d) for d in demos]
    query_ids = template.query(query)
    head = [template.tok.bos_id]
    budget = max_length - max_new_tokens
    start = 0
    while True:
        n = len(head) + sum(len(d) for d in demo_ids[start:]) + len(query_ids)
        images = len(demos) - start + 1
        if n <= budget and images <= max_images:
            break
        if overflow == "error" or start == len(demos):
            why = (
                f"{n} prompt tokens + {max_new_tokens} new tokens exceed the model's {max_length}-token context"
                if n > budget
                else f"{images} images exceed eval.max_images={max_images}"
            )
            fix = "use fewer shots, a shorter template or max_new_tokens" if start < len(demos) or n > budget else ""
            raise ValueError(f"{where}: {why} with {len(demos) - start} demonstrations; {fix}".rstrip("; "))
        start += 1
    ids = head + [t for d in demo_ids[start:] for t in d] + query_ids
    return Prompt(ids=ids, images=[d.image for d in demos[start:]] + [query.image], shots=len(demos) - start,
                  dropped=start)  # fmt: skip


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The generated text up to the first stop string, stripped."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()
