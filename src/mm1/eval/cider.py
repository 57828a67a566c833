"""CIDEr-D, computed the way the COCO caption toolkit (pycocoevalcap `cider_scorer.py`) does.

For each image i with candidate c and references r_1..r_m, and for n = 1..4:

    g_n(s)[w]  = tf(w, s) * (log(N) - log(max(1, df(w))))     tf-idf of n-gram w in sentence s
    sim_n(c,r) = sum_w min(g_n(c)[w], g_n(r)[w]) * g_n(r)[w] / (|g_n(c)| |g_n(r)|)
                 * exp(-(l(c) - l(r))^2 / (2 sigma^2))         clipped cosine x length penalty
    CIDEr-D(i) = 10 * mean_n( mean_j sim_n(c, r_j) )

N is the number of images scored together and df(w) the number of images whose reference set
contains w, so scores depend on the whole evaluated corpus (a single image scores 0: log(1) = 0).
sigma = 6 and l(s) is the number of words. A cosine whose norm is 0 is left at 0. (The toolkit's
`counts2vec` counts bigrams as the length, i.e. words - 1; the difference of two lengths is the
same whenever both sentences are non-empty, and an empty sentence scores 0 either way.)

Tokenisation: the toolkit runs Stanford's PTB tokenizer (Java, -lowerCase) and drops punctuation
tokens. We have no Java; `tokenize` lower-cases, splits off the clitics 's 're 've 'll 'd 'm n't
as PTB does, keeps hyphenated words, numbers like 3.5 or 1,000 and internal apostrophes in one
token, and drops punctuation. Differences from PTB show only on unusual text: PTB turns [ ] into
-LSB- -RSB- (which coco keeps) and has special cases for abbreviations (a.m., U.S.) and some
symbols; we drop all brackets and split abbreviations at their periods. For the plain captions
of this project the two agree.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

MAX_N = 4
"""CIDEr uses n-grams of 1 to 4 words."""
SIGMA = 6.0
"""Standard deviation of the Gaussian length penalty, in words."""

NGram = tuple[str, ...]

_CLITIC_NT = re.compile(r"(?<=[^\W_])n't\b")
_CLITIC_APOSTROPHE = re.compile(r"(?<=[^\W_])'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)+"  # numbers with a decimal or thousands separator: 3.5, 1,000
    r"|[^\W_]+(?:[-'][^\W_]+)*"  # words, with internal hyphens/apostrophes: 3rd, t-shirt, o'clock
    r"|n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off above
    r"|[^\s\w]|_"  # any other single symbol
)
_PUNCTUATION = frozenset(".,?!:;-'`\"()[]{}")
"""Tokens dropped after tokenising: coco's list (. ? ! , : ; - -- ... quotes, brackets)."""


def tokenize(caption: str) -> str:
    """Lower-case, split into PTB-like tokens, drop punctuation; tokens joined by single spaces."""
    text = caption.lower()
    text = _CLITIC_NT.sub(" n't", text)
    text = _CLITIC_APOSTROPHE.sub(r" '\1", text)
    return " ".join(t for t in _TOKEN.findall(text) if t not in _PUNCTUATION)


def ngram_counts(sentence: str, max_n: int = MAX_N) -> Counter[NGram]:
    """Counts of the 1..max_n-grams of a whitespace-tokenised sentence."""
    words = sentence.split()
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class _TfIdf:
    """A sentence as tf-idf weights per n-gram order, their L2 norms, and its penalty length."""

    weights: tuple[dict[NGram, float], ...]  # index n-1 holds the n-grams
    norms: tuple[float, ...]
    length: int  # number of words


def _tfidf(counts: Counter[NGram], doc_freq: Counter[NGram], log_n_images: float) -> _TfIdf:
    """Weight each n-gram count by log(N) - log(max(1, df))."""
    weights: list[dict[NGram, float]] = [{} for _ in range(MAX_N)]
    for ngram, tf in counts.items():
        weights[len(ngram) - 1][ngram] = tf * (log_n_images - math.log(max(1.0, doc_freq[ngram])))
    norms = tuple(math.sqrt(sum(w * w for w in order.values())) for order in weights)
    length = sum(tf for ngram, tf in counts.items() if len(ngram) == 1)
    return _TfIdf(tuple(weights), norms, length)


def _similarity(cand: _TfIdf, ref: _TfIdf, sigma: float) -> list[float]:
    """Per-order clipped cosine of candidate and reference, times the length penalty."""
    penalty = math.exp(-((cand.length - ref.length) ** 2) / (2 * sigma**2))
    sims = []
    for c, r, c_norm, r_norm in zip(cand.weights, ref.weights, cand.norms, ref.norms, strict=True):
        dot = sum(min(w, r.get(ngram, 0.0)) * r.get(ngram, 0.0) for ngram, w in c.items())
        if c_norm != 0 and r_norm != 0:
            dot /= c_norm * r_norm
        sims.append(dot * penalty)
    return sims


def _check_inputs(candidates: dict[str, str], references: dict[str, list[str]]) -> None:
    """Raise a ValueError that names the problem if the two dicts cannot be scored together."""
    if candidates.keys() != references.keys():
        only_c = sorted(candidates.keys() - references.keys())[:5]
        only_r = sorted(references.keys() - candidates.keys())[:5]
        raise ValueError(
            f"candidates and references must have the same image ids; "
            f"only in candidates: {only_c}, only in references: {only_r} (first 5 shown)"
        )
    if not candidates:
        raise ValueError("cider_d needs at least one image; got empty candidates and references")
    for image_id, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{image_id!r}] must be a non-empty list of strings, got {refs!r}")


def cider_d(
    candidates: dict[str, str], references: dict[str, list[str]], *, tokenize_text: bool = True
) -> tuple[float, dict[str, float]]:
    """CIDEr-D of one candidate caption per image against that image's reference captions.

    Returns the corpus score (the mean over images) and the score of every image id. With
    tokenize_text=False the strings are taken as already tokenised (split on whitespace), which
    is what the toolkit's `Cider.compute_score` expects; `tokenize` is idempotent, so feeding
    tokenised text with the default gives the same result.
    """
    _check_inputs(candidates, references)
    prepare = tokenize if tokenize_text else (lambda s: s)
    ids = list(candidates)
    cand_counts = {i: ngram_counts(prepare(candidates[i])) for i in ids}
    ref_counts = {i: [ngram_counts(prepare(r)) for r in references[i]] for i in ids}

    doc_freq: Counter[NGram] = Counter()  # images whose references contain the n-gram
    for i in ids:
        doc_freq.update(set().union(*ref_counts[i]))
    log_n_images = math.log(len(ids))

    scores: dict[str, float] = {}
    for i in ids:
        cand = _tfidf(cand_counts[i], doc_freq, log_n_images)
        per_order = [0.0] * MAX_N
        for counts in ref_counts[i]:
            sims = _similarity(cand, _tfidf(counts, doc_freq, log_n_images), SIGMA)
            per_order = [total + s for total, s in zip(per_order, sims, strict=True)]
        scores[i] = 10.0 * sum(per_order) / MAX_N / len(ref_counts[i])
    return sum(scores.values()) / len(scores), scores
