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

Tokenisation is the toolkit's: Stanford's PTB tokenizer (CoreNLP 3.4.1, ``-preserveLines
-lowerCase``), then its punctuation tokens dropped (`PUNCTUATION`). Two implementations give the
same tokens: "ptb-java" runs the toolkit's own jar (`mm1.eval.ptb_java`; the default where ``java``
and the jar are found, as the paper's numbers used it) and "ptb-python" is a port of its lexer
(`mm1.eval.ptb`, for machines without Java; where it is known to differ is said there). Pick one
with ``tokenizer=`` or ``MM1_CIDER_TOKENIZER=java|python``; `resolve_tokenizer` says which runs.
PTB looks ahead across lines (an initial "J." keeps its period unless the next caption starts a
sentence), so as in the toolkit the references are tokenised as one run and the candidates as
another, each in the order given, one caption a line (line breaks inside a caption become spaces).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from mm1.eval.ptb import tokenize_lines
from mm1.eval.ptb_java import java_available, java_tokenize

MAX_N = 4
"""CIDEr uses n-grams of 1 to 4 words."""
SIGMA = 6.0
"""Standard deviation of the Gaussian length penalty, in words."""

NGram = tuple[str, ...]

PUNCTUATION = frozenset(
    ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";")
)
"""Tokens pycocoevalcap drops after PTB (its ptbtokenizer.py list). Its bracket names are upper case and
the tokens lower case, so -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- stay, as they do in the toolkit."""
TOKENIZERS = {"java": "ptb-java", "python": "ptb-python"}
"""Names accepted by ``tokenizer=`` and MM1_CIDER_TOKENIZER -> the name recorded in scores.csv."""
TOKENIZER_ENV = "MM1_CIDER_TOKENIZER"
_LINE_BREAK = re.compile("[\r\n\u2028\u2029\x0b\x0c]")


def resolve_tokenizer(choice: str = "auto") -> str:
    """The tokenizer that runs for ``choice``, "ptb-java" or "ptb-python".

    "auto": $MM1_CIDER_TOKENIZER (java / python) if set, else Java when ``java`` and the jar are found."""
    if choice == "auto":
        choice = os.environ.get(TOKENIZER_ENV) or ("java" if java_available() else "python")
    name = TOKENIZERS.get(choice, choice)
    if name not in TOKENIZERS.values():
        raise ValueError(f"CIDEr tokenizer {choice!r} is not one of java, python (or auto); set {TOKENIZER_ENV} to one")
    if name == "ptb-java" and not java_available():
        raise ValueError(f"CIDEr tokenizer java needs `java` on PATH and the CoreNLP jar; use {TOKENIZER_ENV}=python")
    return name


def tokenize_runs(runs: Sequence[Sequence[str]], tokenizer: str = "auto") -> list[list[str]]:
    """Each run of captions tokenised as one toolkit PTBTokenizer run, punctuation dropped, tokens
    joined by single spaces (one Java process for all runs)."""
    name = resolve_tokenizer(tokenizer)
    one_line = [[_LINE_BREAK.sub(" ", s) for s in run] for run in runs]
    if name == "ptb-java":
        lines = java_tokenize(one_line)
    else:
        lines = [[" ".join(tokens) for tokens in tokenize_lines(run)] for run in one_line]
    return [[" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATION) for line in run] for run in lines]


def tokenize(caption: str, tokenizer: str = "auto") -> str:
    """One caption as the toolkit tokenises it alone: PTB tokens, lower case, punctuation dropped."""
    return tokenize_runs([[caption]], tokenizer)[0][0]


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
    candidates: dict[str, str],
    references: dict[str, list[str]],
    *,
    tokenize_text: bool = True,
    tokenizer: str = "auto",
) -> tuple[float, dict[str, float]]:
    """CIDEr-D of one candidate caption per image against that image's reference captions.

    Returns the corpus score (the mean over images) and the score of every image id. The captions
    are tokenised with ``tokenizer`` (see the module's docstring; `resolve_tokenizer` names the one
    "auto" picks); with tokenize_text=False the strings are taken as already tokenised (split on
    whitespace), which is what the toolkit's `Cider.compute_score` expects.
    """
    _check_inputs(candidates, references)
    ids = list(candidates)
    refs = {i: list(references[i]) for i in ids}
    cands = {i: candidates[i] for i in ids}
    if tokenize_text:
        flat_refs, flat_cands = tokenize_runs([[r for i in ids for r in refs[i]], list(cands.values())], tokenizer)
        cands = dict(zip(ids, flat_cands, strict=True))
        it = iter(flat_refs)
        refs = {i: [next(it) for _ in refs[i]] for i in ids}
    cand_counts = {i: ngram_counts(cands[i]) for i in ids}
    ref_counts = {i: [ngram_counts(r) for r in refs[i]] for i in ids}

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
