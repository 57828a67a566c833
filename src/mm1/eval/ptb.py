"""Stanford's PTB tokenizer (CoreNLP 3.4.1, ``-preserveLines -lowerCase``) in Python, for CIDEr without Java.

The COCO caption toolkit tokenises with ``edu.stanford.nlp.process.PTBTokenizer`` from CoreNLP 3.4.1, a
JFlex lexer. This module re-implements that lexer's rules and its longest-match semantics: at every
position each rule is tried, the longest match wins (trailing context ``A/B`` counts toward the length,
but only ``A`` becomes the token), and among equally long matches the earlier rule wins. The rules are
the 3.4.1 grammar's, in its order, with the options the toolkit runs it with (PTB3 escaping, LaTeX
quotes, assimilations split, untokenizable characters deleted), so the tokens that matter for CIDEr
change the way Java changes them:

* abbreviations and initials: "u.s." "a.m." "mr." "j." stay one token; an abbreviation or a single
  letter at the end of a sentence (before an upper-case word, the end of the text, or certain
  sentence-starting words) gives up or repeats its period ("named J." -> "j ." ; "etc. The" -> "etc. .");
* brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- (lower-cased by ``-lowerCase``); quotes `` '' ` ';
* clitics split ("do n't", "ca n't", "it 's", "we 're"), as do "can not", "gon na", "'t is";
* hyphenated words, numbers (3.5, 1,000, fractions "2 1/2"), "at&t", "and/or" stay whole; "--" for dashes.

Every sentence is lexed as the toolkit lexes it: all sentences joined by newlines into one text, so a
rule's look-ahead may see the next line (as in Java). The rules are in `mm1.eval.ptb_grammar`; this
module is the lexer: it tries only the rules whose matches can start with the character at hand.

Checked against the jar (tests/eval/test_ptb_tokenizer.py; more while building it): identical tokens
on over 20,000 world captions spiced with abbreviations, initials, brackets, quotes, clitics, numbers and
symbols, on over 40,000 random strings of letters, digits, punctuation, markup, URLs and unicode, and for
each of the 63,454 BMP characters between two letters. Where it could still differ:
* Python's ``re`` takes the first alternative of a group that lets a rule match, JFlex the longest.
  Each rule's top-level alternatives are tried one by one, and the one nested group where this was
  seen to matter (a hyphen followed by an acronym) puts its longer alternative first; no other case
  turned up.
* Python's Unicode (Python 3.11: 14.0) is newer than the lexer's: the characters Java does not know
  are listed in `mm1.eval.ptb_grammar`. A newer Python knows more; the test over the BMP shows them.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Sequence

from mm1.eval.ptb_grammar import NEWLINE_TOKEN, Action, rules


@functools.cache
def _compiled() -> list[tuple[re.Pattern[str], Action]]:
    """Each rule's top-level alternatives as rules of their own: re takes the first alternative that
    matches, JFlex the longest, and among equal lengths the earlier entry (the same rule) wins."""
    return [
        (re.compile(f"({alt})(?:{trail})" if trail else f"({alt})"), act)
        for rx, trail, act in rules()
        for alt in _alternatives(rx)
    ]


def _alternatives(rx: str) -> list[str]:
    """``rx`` split at its top-level ``|`` (outside groups and character classes)."""
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(rx):
        ch = rx[i]
        if ch == "\\":
            i += 1
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            i += 1 if rx[i + 1 : i + 2] == "^" else 0
            i += 1 if rx[i + 1 : i + 2] == "]" else 0
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(rx[start:i])
            start = i + 1
        i += 1
    return [*parts, rx[start:]]


def _utf16_units(text: str) -> str:
    """Characters beyond the BMP as two surrogates, as Java's 16-bit chars see them."""
    if all(ord(c) < 0x10000 for c in text):
        return text
    return "".join(
        c if ord(c) < 0x10000 else chr(0xD800 + ((ord(c) - 0x10000) >> 10)) + chr(0xDC00 + ((ord(c) - 0x10000) & 0x3FF))
        for c in text
    )


def _from_utf16_units(token: str) -> str:
    if token.isascii():
        return token
    return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _first_chars(pattern: str) -> Callable[[str], bool]:
    """A test that is true of every character a match of ``pattern`` can start with (and maybe of more)."""
    try:
        from re import _constants as k  # type: ignore[attr-defined]  # CPython's own regex parser
        from re import _parser  # type: ignore[attr-defined]
    except ImportError:  # another Python: no filter, every rule is tried
        return lambda ch: True
    categories = {k.CATEGORY_DIGIT: r"\d", k.CATEGORY_NOT_DIGIT: r"\D", k.CATEGORY_SPACE: r"\s",
                  k.CATEGORY_NOT_SPACE: r"\S", k.CATEGORY_WORD: r"\w", k.CATEGORY_NOT_WORD: r"\W"}  # fmt: skip

    def variants(ch: str, nocase: bool) -> set[str]:
        return {ch, ch.lower(), ch.upper(), ch.casefold(), ch.swapcase()} if nocase else {ch}

    def in_set(items: list, nocase: bool) -> Callable[[str], bool]:
        """Membership in a character class (conservatively true where the class is not understood)."""
        negate = any(op is k.NEGATE for op, _ in items)
        known = (k.LITERAL, k.RANGE, k.CATEGORY, k.NEGATE)
        if negate and nocase or any(op not in known for op, _ in items):
            return lambda ch: True
        spans: list[list[int]] = []  # disjoint, sorted
        for a, b in sorted((av, av) if op is k.LITERAL else av for op, av in items if op in (k.LITERAL, k.RANGE)):
            if spans and a <= spans[-1][1] + 1:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
        starts = [a for a, _ in spans]
        cats = [re.compile(categories.get(av, "(?s:.)")) for op, av in items if op is k.CATEGORY]

        def member(v: str) -> bool:
            at = bisect.bisect_right(starts, ord(v)) - 1
            return at >= 0 and ord(v) <= spans[at][1] or any(c.match(v) for c in cats)

        return lambda ch: any(member(v) for v in variants(ch, nocase)) != negate

    def seq(items: list, nocase: bool) -> tuple[list[Callable[[str], bool]], bool]:
        tests: list[Callable[[str], bool]] = []
        for op, av in items:
            more, nullable = item(op, av, nocase)
            tests += more
            if not nullable:
                return tests, False
        return tests, True

    def item(op: object, av: object, nocase: bool) -> tuple[list[Callable[[str], bool]], bool]:
        if op is k.LITERAL:
            allowed = variants(chr(av), nocase)
            return [lambda ch, n=nocase: bool(variants(ch, n) & allowed)], False
        if op is k.IN:
            return [in_set(av, nocase)], False
        if op is k.SUBPATTERN:
            return seq(av[3], (nocase or bool(av[1] & k.SRE_FLAG_IGNORECASE)) and not av[2] & k.SRE_FLAG_IGNORECASE)
        if op is k.BRANCH:
            parts = [seq(branch, nocase) for branch in av[1]]
            return [t for tests, _ in parts for t in tests], any(nullable for _, nullable in parts)
        if op in (k.MAX_REPEAT, k.MIN_REPEAT, getattr(k, "POSSESSIVE_REPEAT", None)):
            tests, nullable = seq(av[2], nocase)
            return tests, nullable or av[0] == 0
        if op in (k.AT, k.ASSERT, k.ASSERT_NOT):
            return [], True  # zero width: the next item gives the first character
        return [lambda ch: True], False  # anything else (ANY, NOT_LITERAL, ...): every character

    parsed = _parser.parse(pattern)
    tests, nullable = seq(list(parsed), bool(parsed.state.flags & k.SRE_FLAG_IGNORECASE))
    return (lambda ch: True) if nullable else (lambda ch: any(t(ch) for t in tests))


class _Dispatch(dict):
    """character -> the rules (compiled, action) whose matches can start with it, filled on first use."""

    def __missing__(self, ch: str) -> list[tuple[re.Pattern[str], Action]]:
        self[ch] = [(rx, act) for rx, act, first in _rules_with_first() if first(ch)]
        return self[ch]


@functools.cache
def _rules_with_first() -> list[tuple[re.Pattern[str], Action, Callable[[str], bool]]]:
    return [(rx, act, _first_chars(rx.pattern)) for rx, act in _compiled()]


_DISPATCH = _Dispatch()
_SPACES = re.compile(" +")


def lex(text: str) -> list[str]:
    """PTBLexer's tokens of ``text`` (not lower-cased), with NEWLINE_TOKEN where a line ends."""
    text, pos, tokens = _utf16_units(text), 0, []
    while pos < len(text):
        if text[pos] == " ":  # no rule but the one that skips spaces starts with a space
            pos = _SPACES.match(text, pos).end()
            continue
        best, best_len = None, 0
        for rx, action in _DISPATCH[text[pos]]:
            match = rx.match(text, pos)
            if match is not None and match.end() - pos > best_len:
                best, best_len = (action, match.group(1)), match.end() - pos
        action, matched = best
        token, used = action(matched)
        if token is not None:
            tokens.append(_from_utf16_units(token))
        pos += used
    return tokens


def tokenize_lines(sentences: Sequence[str]) -> list[list[str]]:
    """Each sentence's tokens as ``PTBTokenizer -preserveLines -lowerCase`` writes them (one sentence a line).

    The sentences are lexed as one text joined by newlines, as the toolkit's Java run reads them; a
    sentence must not contain a line break (`mm1.eval.cider` replaces them by spaces first)."""
    lines: list[list[str]] = [[]]
    for token in lex("\n".join(sentences)):
        if token == NEWLINE_TOKEN:
            lines.append([])
        else:
            lines[-1].append(token.lower())
    if len(lines) != max(len(sentences), 1):
        raise ValueError(
            f"tokenize_lines: a sentence holds a line break ({len(sentences)} sentences, {len(lines)} lines)"
        )
    return lines[: len(sentences)]
