"""The Python PTB tokenizer against CoreNLP 3.4.1's own (Java), and CIDEr against pycocoevalcap's pipeline.

The corpus is the world's reference captions with what real captions hold spliced in: abbreviations
and initials (also at the end of a caption and before the next caption's first word), brackets,
quotes, clitics, hyphens, numbers, ampersands, slashes, punctuation runs and unicode. One Java run
tokenises the whole corpus; every sentence's tokens must be the Python tokenizer's.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from mm1.eval.cider import PUNCTUATION, cider_d, resolve_tokenizer, tokenize_runs
from mm1.eval.ptb import tokenize_lines
from mm1.eval.ptb_grammar import unknown_code_points
from mm1.eval.ptb_java import find_jar, java_tokenize
from mm1.world.language import reference_captions
from mm1.world.scene import sample_scene

needs_java = pytest.mark.skipif(
    shutil.which("java") is None or find_jar() is None, reason="needs java and CoreNLP's jar (scripts/test-env)"
)

WORDS = (
    "U.S. u.s. U.K. a.m. p.m. A.M. e.g. i.e. etc. Mr. Mrs. Dr. St. Jr. vs. Inc. Co. Ltd. Corp. No. no. Fig. fig. "
    "Jan. Sept. Calif. Mass. Ph.D. J. K. I. A. z. x. B.B. T.V. D.C. a.k.a. cont'd Co. Pty. "
    "( ) [ ] { } (a) [the] {x} \" ' `` '' ` “ ” ‘ ’ « » 'the' \"big\" "
    "don't can't won't isn't I'm you're we've they'll he'd it's dogs' James' o'clock y'all 'em '90s "
    "cannot gonna wanna gotta gimme lemme 'tis 'twas "
    "t-shirt well-known x-ray -- --- - – — ... .. . , ; : ! ? !! ?! ... . . . "
    "3.5 1,000 10:30 2 1/2 1/2 ½ ¼ 10% $5 US$ 5$ €3 £2 ¢ 12-3-2020 1/2/99 -5 +3 3rd 1990s 2x "
    "AT&T R&D at&t &amp; & and/or A/B 24/7 * ** # #1 @ @home _ = + ~ ^ | < > << >> "
    "café naïve ÉCOLE Zürich über ñ δ Ω 中文 ° × ™ © • · … ¿ ¡ "
    "www.example.com http://a.b/c a@b.com file.jpg :) ;-) :D"
).split(" ")
"""What real captions hold that world captions do not (one token each, in the text's spelling)."""
STARTS = ("The", "A", "He", "In", "It", "Some", "there", "This", "we", "One", "Now")
"""Capitalised words, some of which PTB treats as sentence starts after an abbreviation."""


def spiced_corpus(seed: int, n_images: int, refs_per_image: int = 4) -> tuple[dict[str, str], dict[str, list[str]]]:
    """World captions with `WORDS` and `STARTS` spliced in, some capitalised, some ending in an initial."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)

    def spice(caption: str) -> str:
        words = caption.split()
        for _ in range(rng.randint(0, 4)):
            words.insert(rng.randint(0, len(words)), rng.choice(WORDS))
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), rng.choice(STARTS))
        text = " ".join(words)
        text = text[:1].upper() + text[1:] if rng.random() < 0.5 else text
        ending = rng.choice(["", ".", ".", " .", "!", "...", " J.", " U.S.", " etc.", " a.m.", " Inc.", " x."])
        return text + ending

    scenes = [sample_scene(nrng, 3) for _ in range(n_images)]
    refs = {
        f"{seed}-{k}": [spice(c) for c in reference_captions(s, nrng, refs_per_image)] for k, s in enumerate(scenes)
    }
    cands = {}
    for k, scene in enumerate(scenes):
        source = scene if rng.random() < 0.5 else scenes[rng.randrange(len(scenes))]
        cands[f"{seed}-{k}"] = spice(reference_captions(source, nrng, 1)[0])
    return cands, refs


def _sentences(seed: int, n_images: int) -> list[str]:
    cands, refs = spiced_corpus(seed, n_images)
    return [r for rs in refs.values() for r in rs] + list(cands.values())


@needs_java
def test_python_tokens_equal_java_on_the_spiced_corpus() -> None:
    sentences = _sentences(0, 500)  # 2,500 captions, one Java run
    java = java_tokenize([sentences])[0]
    python = [" ".join(tokens) for tokens in tokenize_lines(sentences)]
    mismatches = [(s, j, p) for s, j, p in zip(sentences, java, python, strict=True) if j != p]
    assert not mismatches, f"{len(mismatches)} of {len(sentences)} differ, first: {mismatches[:3]}"
    assert any("-lrb-" in line for line in java) and any(" j ." in line or line.endswith(" j") for line in java)


@needs_java
def test_python_knows_the_characters_java_knows() -> None:
    # Every 4th BMP character and every one the lexer's older Unicode does not know, between two
    # letters: letter, digit, symbol or deleted must be decided as Java decides.
    unknown = unknown_code_points()
    breaks = "\r\n\u2028\u2029\x0b\x0c"
    cps = [cp for cp in range(0x20, 0x10000) if (cp % 4 == 0 or cp in unknown) and not 0xD800 <= cp <= 0xDFFF]
    sentences = [f"a{chr(cp)}b" for cp in cps if chr(cp) not in breaks]
    java = java_tokenize([sentences])[0]
    python = [" ".join(tokens) for tokens in tokenize_lines(sentences)]
    mismatches = [(ascii(s), j, p) for s, j, p in zip(sentences, java, python, strict=True) if j != p]
    assert not mismatches, f"{len(mismatches)} of {len(sentences)} differ, first: {mismatches[:3]}"


def test_python_tokenizer_on_known_ptb_cases() -> None:
    lines = [
        "A man in the U.S. at 5 a.m. with J. Smith.",
        "He saw a dog named J.",
        "The dog (black) [x] {y} ate Mr. Jones' \"food\" -- don't you think?",
        "I cannot see 2 1/2 cats at AT&T, e.g. 3.5 of 1,000... etc.",
        "A dog named J.",
    ]
    assert tokenize_lines(lines) == [
        "a man in the u.s. at 5 a.m. with j. smith .".split(),
        "he saw a dog named j .".split(),  # before "The": sentence-final initial gives up its period
        "the dog -lrb- black -rrb- -lsb- x -rsb- -lcb- y -rcb- ate mr. jones ' `` food '' -- do n't you think ?".split(),
        ["i", "can", "not", "see", "2\u00a01/2", "cats", "at", "at&t", ",", "e.g.", "3.5", "of", "1,000", "...",
         "etc.", "."],
        "a dog named j.".split(),  # at the end of the text it keeps it
    ]  # fmt: skip


@pytest.mark.parametrize("tokenizer", ["python", pytest.param("java", marks=needs_java)])
def test_cider_equals_pycocoevalcap_pipeline(tokenizer: str) -> None:
    ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    if shutil.which("java") is None:
        pytest.skip("the toolkit's pipeline needs java (scripts/test-env installs it)")
    cands, refs = spiced_corpus(1, 300)
    toolkit = ptb.PTBTokenizer()
    gts = toolkit.tokenize({i: [{"caption": c} for c in rs] for i, rs in refs.items()})
    res = toolkit.tokenize({i: [{"caption": c}] for i, c in cands.items()})
    expected, expected_per_image = cider.Cider().compute_score(gts, res)
    score, per_image = cider_d(cands, refs, tokenizer=tokenizer)
    assert score == pytest.approx(float(expected), abs=1e-9)
    np.testing.assert_allclose(list(per_image.values()), expected_per_image, rtol=0, atol=1e-9)


def test_choice_of_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM1_CIDER_TOKENIZER", "python")
    assert resolve_tokenizer() == "ptb-python" == resolve_tokenizer("python")
    monkeypatch.delenv("MM1_CIDER_TOKENIZER")
    java = shutil.which("java") is not None and find_jar() is not None
    assert resolve_tokenizer() == ("ptb-java" if java else "ptb-python")
    with pytest.raises(ValueError, match="not one of java, python"):
        resolve_tokenizer("nltk")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ValueError, match="MM1_CIDER_TOKENIZER=python"):
        resolve_tokenizer("java")


def test_line_breaks_inside_a_caption_do_not_shift_the_others() -> None:
    runs = [["a red\ncircle .", "two\r\nblue\u2028cubes", "a (big) dog"]]
    assert tokenize_runs(runs, "python") == [["a red circle", "two blue cubes", "a -lrb- big -rrb- dog"]]
    assert "-LRB-" in PUNCTUATION and "-lrb-" not in PUNCTUATION  # the toolkit's list, as it matches
