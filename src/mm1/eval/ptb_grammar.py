"""The rules of Stanford's PTB lexer (CoreNLP 3.4.1's PTBLexer.flex) as Python regexes, for `mm1.eval.ptb`.

`rules` is the grammar's rule table in its order: (regex, trailing context, action), with the options
pycocoevalcap's run uses (PTB3 escaping, LaTeX quotes, assimilations split, untokenizable characters
deleted). JFlex's %caseless does not reach into character classes, so literal text is wrapped in
``ci`` and classes keep their case. [:letter:], [:digit:] and [:uppercase:] are Java's, in the older
Unicode of the lexer's tables (`_UNKNOWN_TO_THE_LEXER`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable

NEWLINE_TOKEN = "\n"
"""What `lex` returns where a line ends."""

_LETTER_EXTRA = "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
_MISC = r"+%&~\^|\\¦\u00a7¨\u00a9\u00ac\u00ae¯\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\uff65"


@functools.cache
def _unicode_class(test: Callable[[str], bool]) -> str:
    """A regex character class body (ranges) of the BMP characters that pass ``test``."""
    ranges, start = [], None
    for cp in range(0x10000):
        ok = not 0xD800 <= cp <= 0xDFFF and test(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return "".join(f"\\u{a:04X}" if a == b else f"\\u{a:04X}-\\u{b:04X}" for a, b in ranges)


_UNKNOWN_TO_THE_LEXER = (
    "037F 0528-052F 0560 0588 05EF 0860-086A 0870-0887 0889-088E 08A1 08AD-08C9 0978 0980 09FC 0AF9 "
    "0C34 0C5A 0C5D 0C80 0CDD 0D04 0D54-0D56 0D5F 0DE6-0DEF 0E86 0E89 0E8C 0E8E-0E93 0E98 0EA0 "
    "0EA8-0EA9 0EAC 13F5 13F8-13FD 16F1-16F8 170D 171F 1878 191D-191E 19B0-19C0 19C8-19C9 1B4C "
    "1C80-1C88 1C90-1CBA 1CBD-1CBF 1CF2-1CF3 1CFA 2C2F 2C5F 312E-312F 31BB-31BF 4DB6-4DBF 9FCD-9FFF "
    "A698-A69D A78F A794-A79F A7AB-A7CA A7D0-A7D1 A7D3 A7D5-A7D9 A7F2-A7F7 A8FD-A8FE A9E0-A9E4 "
    "A9E6-A9FE AA7E-AA7F AB30-AB5A AB5C-AB69 AB70-ABBF "
)
"""BMP letters and digits of Python's Unicode that the 3.4.1 lexer's tables (an older Unicode) do not
know: Java deletes them as untokenizable. Measured by lexing "a<c>b" for every BMP character with
the jar (tests/eval/test_ptb_tokenizer.py repeats it, so a newer Unicode in Python shows)."""
_LETTERS_TO_THE_LEXER = "\u1885\u1886"
"""Letters to the lexer, combining marks in Python's Unicode."""


@functools.cache
def unknown_code_points() -> frozenset[int]:
    """`_UNKNOWN_TO_THE_LEXER` as a set of code points."""
    spans = [[int(x, 16) for x in span.split("-")] for span in _UNKNOWN_TO_THE_LEXER.split()]
    return frozenset(cp for span in spans for cp in range(span[0], span[-1] + 1))


def _is_letter(ch: str) -> bool:  # Java's Character.isLetter (Lu Ll Lt Lm Lo) in the lexer's Unicode
    known = unicodedata.category(ch) in ("Lu", "Ll", "Lt", "Lm", "Lo") and ord(ch) not in unknown_code_points()
    return known or ch in _LETTERS_TO_THE_LEXER


def _is_digit(ch: str) -> bool:  # Java's Character.isDigit (Nd) in the lexer's Unicode
    return unicodedata.category(ch) == "Nd" and ord(ch) not in unknown_code_points()


def _is_upper(ch: str) -> bool:  # Java's Character.isUpperCase: Lu and Other_Uppercase
    return ch.isupper() and unicodedata.category(ch) != "Lt" and ord(ch) not in unknown_code_points()


def ci(text: str) -> str:
    """``text`` matched without case (JFlex %caseless; character classes stay case-sensitive)."""
    return f"(?i:{text})"


def _macros() -> dict[str, str]:
    """The 3.4.1 grammar's macros as Python regexes (each one a group, so they compose)."""
    m: dict[str, str] = {}
    letter = f"[{_unicode_class(_is_letter)}]"
    m["UPPER"] = f"[{_unicode_class(_is_upper)}]"
    m["SPAMP"] = ci("&amp;")
    m["SPLET"] = "&[aeiouAEIOU]" + ci("(?:acute|grave|uml)") + ";"
    m["SGML"] = (
        r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*"
        r"(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
    )
    m["SPACE"] = "[ \t\u00a0\u2000-\u200a\u3000]"
    m["NEWLINE"] = "(?:\r\n|[\r\n\u2028\u2029\x0b\x0c\x85])"
    m["SPACENL"] = f"(?:{m['SPACE']}|{m['NEWLINE']})"
    m["SENTEND"] = f"{m['SPACENL']}(?:{m['SPACENL']}|{m['UPPER']}|{m['SGML']})"
    d = f"[{_unicode_class(_is_digit)}]"  # [:digit:]
    m["DIGIT"] = d
    m["LETTER"] = f"(?:{letter}|{m['SPLET']}|[{_LETTER_EXTRA}])"
    m["LD"] = f"(?:{m['LETTER']}|{d})"
    m["ld"] = f"(?:{letter}|{d})"
    m["APOS"] = "(?:['\u0092\u2019]|" + ci("&apos;") + ")"
    m["APOSETC"] = f"(?:{m['APOS']}|[`\u0091\u2018\u201b])"
    m["HYPHEN"] = "[-_\u058a\u2010\u2011]"
    m["ACRO"] = (
        "(?:"
        + ci(r"(?:canada|sino|korean|eu|japan|non)-u\.s|u\.s\.-(?:u\.k|u\.s\.s\.r)")
        + r"|[A-Za-z](?:\.[A-Za-z])*)"
    )
    m["ACRO2"] = (
        "(?:"
        + ci(r"(?:canada|sino|korean|eu|japan|non)-u\.s|u\.s\.-(?:u\.k|u\.s\.s\.r)")
        + r"|[A-Za-z](?:\.[A-Za-z])+)"
    )
    return m


def _abbreviations() -> dict[str, str]:
    """The abbreviation lists (ABBREV1: usually before lower case; ABBREV4: before upper case; ABBREV3)."""
    month = "sept|jan|feb|mar|apr|jun|jul|aug|sep|oct|nov|dec"
    days = "tues|thurs|mon|tue|wed|thu|fri"
    state = (
        ci("ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans|kan|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt")
        + "|A"
        + ci("z|rk")
        + "|D"
        + ci("el")
        + "|I"
        + ci("ll")
        + "|L"
        + ci("a")
        + "|M"
        + ci("ass|iss")
        + "|O"
        + ci("re")
        + "|P"
        + ci("a")
        + "|T"
        + ci("ex")
        + "|W"
        + ci("ash")
        + "|"
        + ci("wisc|wis|wyo")
    )
    comp = ci("inc|cos|co|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys") + "|" + ci("pp?t") + "[ye]" + ci("s") + "?"
    ptit = ci(r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq")
    abbrev1 = f"(?:{ci(month)}|{ci(days)}|{state}|{comp}|{ci('tel|est|ext|sq')}|{ptit}|{ci('etc|al|seq|bldg')})\\."
    title = (
        ci(
            "mrs|mr|ms|drs|dr|profs|prof|sens|sen|reps|rep|attys|atty|lt|col|gen|messrs|govs|gov|adm|rev|maj|sgt"
            "|cpl|pvt|capt|ste|st|ave|pres|lieut|hon|brig|comdr|cmdr|pfc|spc|supts|supt|det|mt|ft|adj|adv|asst"
            "|assoc|ens|insp|mlle|mme|msgr|sfc"
        )
        + "|M"
        + ci("iss")
    )
    comp2 = ci("invt|elec|natl|dept") + "|" + ci("m") + "[ft]" + ci("g")
    other = ci(r"vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph")
    return {
        "ABBREV1": abbrev1,
        "ABBREV4": f"(?:{title}|{other}|{comp2}|{{ACRO}})",
        "ABBREV3": ci(r"(?:figs|fig|prop|nos|no|art|bldg|pp|op|ca)\."),
    }


_SENTENCE_STARTS = (
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More Mr. Ms. "
    "Now Once One Other Our She Since So Some Such That The Their Then There These They This We When While What "
    "Yet You"
).split()
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_LEFT_QUOTES = str.maketrans({"\u0091": "`", "\u2018": "`", "\u201b": "`", "\u2039": "`", "\u0092": "'",
                              "\u2019": "'", "\u203a": "'", "\u0093": "``", "\u201c": "``", "\u00ab": "``",
                              "\u0094": "''", "\u201d": "''", "\u00bb": "''"})  # fmt: skip
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}

Action = Callable[[str], tuple[str | None, int]]
"""A matched text -> (the token, or None for none; how many of its characters are consumed)."""


def _keep(text: str) -> tuple[str | None, int]:
    return text, len(text)


def _skip(text: str) -> tuple[str | None, int]:
    return None, len(text)


def _soft(text: str) -> tuple[str | None, int]:  # removeSoftHyphens
    return (text.replace("\u00ad", "") or "-"), len(text)


def _amp(text: str) -> tuple[str | None, int]:  # normalizeAmp
    return re.sub("(?i)&amp;", "&", text), len(text)


def _nbsp(text: str) -> tuple[str | None, int]:
    return text.replace(" ", "\u00a0"), len(text)


def _quotes(left: bool) -> Action:
    """LaTeX quotes: ' and " become ` `` when probably opening, ' '' otherwise; curly ones by their side."""

    def action(text: str) -> tuple[str | None, int]:
        single, double = ("`", "``") if left else ("'", "''")
        out = re.sub("&apos;|'", single, text)
        out = re.sub('"|&quot;', double, out)
        return out.translate(_LEFT_QUOTES), len(text)

    return action


def _fixed(token: str) -> Action:
    return lambda text: (token, len(text))


def _head(n: int) -> Action:
    """Keep the first n characters (JFlex yypushback of the rest)."""
    return lambda text: (text[:n], n)


def _period_again(text: str) -> tuple[str | None, int]:
    """An abbreviation that ends a sentence: the token keeps its period and the period is read again."""
    return text, len(text) - 1


def _acronym_before_sentence(text: str) -> tuple[str | None, int]:
    """An acronym before a sentence-starting word: "I." gives "I" and "."; longer ones as _period_again."""
    return (text[:1], 1) if len(text) == 2 else _period_again(text)


def _parens(text: str) -> tuple[str | None, int]:
    return text.replace("(", "-LRB-").replace(")", "-RRB-"), len(text)


def _patterns() -> dict[str, str]:
    """The regexes of the rule table, by name: the macros and the patterns built from them."""
    m = _macros()
    abbreviations = {k: v.replace("{ACRO}", m["ACRO"]) for k, v in _abbreviations().items()}
    return m | abbreviations | _word_patterns(m) | _symbol_patterns(m)


def _word_patterns(m: dict[str, str]) -> dict[str, str]:
    """Words, clitics, numbers and hyphenated things (every local is a pattern, by its name)."""
    sp, spnl, nl, ld, lt = m["SPACE"], m["SPACENL"], m["NEWLINE"], m["LD"], m["LETTER"]
    L = f"[{_unicode_class(_is_letter)}]"  # noqa: N806 (the grammar's [:letter:])
    apos, apx, hy = m["APOS"], m["APOSETC"], m["HYPHEN"]
    word = f"{lt}{ld}*(?:[.!?]{lt}{ld}*)*"
    redaux = f"{apos}(?:[msdMSD]|{ci('re|ve|ll')})"
    sredaux = f"{ci('n')}{apx}{ci('t')}"
    sword = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
    apoword = "|".join([
        f"{apos}{ci('n')}{apos}?",
        f"[lLdDjJ]{apos}",
        f"{ci('dunkin|somethin|ol')}{apos}",
        f"{apos}{ci('em')}",
        f"[A-HJ-XZn]{apx}{L}{{2}}{L}*",
        f"{apos}[2-9]0{ci('s')}",
        f"{apos}{ci('till?')}",
        f"{L}{L}*[aeiouyAEIOUY]{apx}[aeiouA-Z]{L}*",
        f"{apos}{ci('cause')}",
        ci(r"cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"),
        f"{ci('o')}{apx}{ci('o')}",
    ])  # fmt: skip
    d = m["DIGIT"]
    num = f"[-+]?(?:{d}*(?:[.:,\u00ad\u066b\u066c]{d}+)+|{d}+)"
    thing_part = f"(?:[dDoOlL]{apx}(?:{L}|{d}))?(?:{L}|{d})+"
    thing = f"{thing_part}(?:{hy}{thing_part})*"
    thinga = f"[A-Z]+(?:(?:[+&]|{m['SPAMP']})[A-Z]+)+"
    thing3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
    hthing = rf"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{m['ACRO2']}\.|[A-Za-z0-9\u00ad]+))+"
    insentp = "[,;:\u3001]"
    ext = (
        "bat|bmp|class|cgi|cpp|c|dll|docx|doc|exe|gif|gz|html|htm|h|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt"
        "|ps|py|sql|tar|txt|wav|xml|x|zip"
    )
    filename = f"{ld}+(?:[.]{ld}+)*[.]{ci(ext)}"
    return {k: v for k, v in locals().items() if k != "m"}


def _symbol_patterns(m: dict[str, str]) -> dict[str, str]:
    """Sentence starts, URLs, e-mail, phone numbers, smileys, quotes, fractions (every local a pattern)."""
    apos, d = m["APOS"], m["DIGIT"]
    starts = "|".join(w[0] + (ci(re.escape(w[1:])) if len(w) > 1 else "") for w in _SENTENCE_STARTS)
    url_stop = '[^ \t\n\f\r"<>|.!?(){},-]'
    fullurl = f'{ci("https?://")}[^ \t\n\f\r"<>|(){{}}]+{url_stop}'
    likelyurl = (
        f'(?:(?:{ci("www")}\\.(?:[^ \t\n\f\r"<>|.!?(){{}},]+\\.)+[a-zA-Z]{{2,4}})|(?:(?:[^ \t\n\f\r"`\'<>|.!?(){{}},-_$]+\\.)+'
        f'{ci("com|net|org|edu")}))(?:/[^ \t\n\f\r"<>|()]+{url_stop})?'
    )
    email = (
        f'(?:{ci("&lt;")}|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{{}}]*@(?:[^ \t\n\f\r"<>|(){{}}.\u00a0]+\\.)*'
        f'(?:[^ \t\n\f\r"<>|(){{}}.\u00a0]+)(?:{ci("&gt;")}|>)?'
    )
    phone = (
        r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])[0-9]{3,4}"
        r"[\- \u00a0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
    )
    smiley = r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"
    asian = (
        r"[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
        r"|\([\^x=~<>']-[\^x=~<>'`]\)"
    )
    quotes = f"''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]{{1,2}}|{apos}"
    dblquot = f'"|{ci("&quot;")}'
    tbspec = (
        ci(r"-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls")
        + f"|{ci('cap')}{apos}{ci('n')}|{ci('c')}{apos}{ci('est')}"
    )
    frac = f"(?:{d}{{1,4}}[- \u00a0])?{d}{{1,4}}(?:\\\\?/|\u2044){d}{{1,4}}"
    return {k: v for k, v in locals().items() if k != "m"}


def rules() -> list[tuple[str, str | None, Action]]:
    """(regex, trailing context or None, action), in the order of the 3.4.1 grammar's rules."""
    p = _patterns()
    L, lt, d = p["L"], p["lt"], p["d"]  # noqa: N806 (the grammar's [:letter:], {LETTER}, {DIGIT})
    spnl, apos, starts = p["spnl"], p["apos"], p["starts"]
    return [
        (ci(r"c\+\+"), None, _keep),
        (ci("c|f") + "#", None, _keep),
        (ci("cannot"), None, _head(3)),
        (ci("'twas"), None, _head(2)),
        (ci("'tis"), None, _head(2)),
        (ci("gonna|gotta|lemme|gimme|wanna"), None, _head(3)),
        (p["SGML"], None, _nbsp),
        (ci("&(?:md|mdash|ndash);") + "|[\u0096\u0097\u2013\u2014\u2015]", None, _fixed("--")),
        (p["SPAMP"], None, _amp),
        ("&" + ci("(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"), None, _keep),
        (p["word"], p["redaux"], _soft),
        (p["sword"], p["sredaux"], _soft),
        (p["word"], None, _soft),
        (p["apoword"], None, _keep),
        (ci("y") + p["apos"], L, _keep),
        (p["fullurl"], None, _keep),
        (p["likelyurl"], None, _keep),
        (p["email"], None, _keep),
        (f"@[a-zA-Z_][a-zA-Z_0-9]*|#{lt}+", None, _keep),
        (p["redaux"], "[^A-Za-z]", _quotes(False)),
        (p["sredaux"], "[^A-Za-z]", _quotes(False)),
        (f"{d}{{1,2}}[-/]{d}{{1,2}}[-/]{d}{{2,4}}", None, _keep),
        (p["num"], None, _soft),
        ("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)", None, _keep),
        (p["frac"], None, _nbsp),
        ("[\u00bc\u00bd\u00be\u2153-\u215e]", None, lambda t: (_FRACTIONS.get(t, t), 1)),
        (p["tbspec"], None, _amp),
        (p["thing3"], None, _keep),
        (r"[A-Z]*\$|#", None, _keep),
        (
            "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
            None,
            lambda t: (_CURRENCY.get(t, t), 1),
        ),  # fmt: skip
        (f"{p['ACRO']}\\.", f"{spnl}+(?:{starts}|{p['SGML']}){spnl}", _acronym_before_sentence),
        (p["ABBREV3"], f"{spnl}?{d}", _keep),
        (ci("pt") + "[eyEY]\\.|" + ci(r"co\."), p["sp"] + ci("ltd|lim"), _keep),
        (p["ABBREV1"], p["SENTEND"], _period_again),
        (p["ABBREV1"], "(?s:..)", _keep),
        (p["ABBREV1"], None, _period_again),
        (p["ABBREV4"] + r"\.", None, _keep),
        (p["ABBREV4"], p["sp"], _keep),
        (p["ACRO"], p["spnl"], _keep),
        (f"{apos}[0-9][0-9]", p["spnl"], _keep),
        (p["filename"], f"(?:{spnl}|[.?!,])", _keep),
        (p["word"] + r"\.", p["insentp"], _soft),
        (p["phone"], None, lambda t: (_parens(_nbsp(t)[0])[0], len(t))),
        (p["dblquot"], "[A-Za-z0-9$]", _quotes(True)),
        (p["dblquot"], None, _quotes(False)),
        ("\x7f", None, _skip),
        ("<|" + ci("&lt;"), None, _fixed("<")),
        (">|" + ci("&gt;"), None, _fixed(">")),
        (p["smiley"], "[^A-Za-z0-9]", _parens),
        (p["asian"], None, _parens),
        (r"[(){}\[\]]", None, lambda t: (_BRACKETS[t], 1)),
        (r"-+", None, lambda t: ("--" if 3 <= len(t) <= 4 else t, len(t))),
        ("\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", None, _fixed("...")),
        ("@+|#+|_+", None, _keep),
        (r"\*+|(?:\\\*){1,3}", None, _keep),
        (p["insentp"], None, _keep),
        ("[?!]+", None, _keep),
        ("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", None, _keep),
        ("=", None, _keep),
        ("/", None, _keep),
        (p["hthing"] + r"\.", p["insentp"], _soft),
        (p["hthing"], None, _soft),
        (p["thing"] + r"\.", p["insentp"], _keep),
        (p["thing"], None, _keep),
        (p["thinga"] + r"\.", p["insentp"], _amp),
        (p["thinga"], None, _amp),
        ("'", "[A-Za-z][^ \t\n\r\u00a0]", _quotes(True)),
        (p["redaux"], None, _quotes(False)),
        (p["sredaux"], None, _quotes(False)),
        (p["quotes"], None, _quotes(False)),
        ("<<|>>", None, _keep),
        (f"[{_MISC}]", None, _keep),
        ("\x00|" + p["sp"] + "+|[\u200b\u200e\u200f\ufeff]", None, _skip),
        (p["nl"], None, _fixed(NEWLINE_TOKEN)),
        (ci("&nbsp;"), None, _skip),
        ("(?s:.)", None, _skip),  # untokenizable: deleted (the toolkit's default, FIRST_DELETE)
    ]
