"""The server owner's blocked terms: a prompt that contains one is refused before anything runs.

The owner writes one term or phrase per line (``--blocked-terms FILE`` or the Settings box); lines
starting with ``#`` and blank lines are skipped, repeats are kept once. How a term matches a prompt:

- **Whole words, any case.** Both sides are cut into words (runs of letters, digits and combining
  marks) and compared after Unicode case folding: "ass" blocks "Ass" and "ASS!" but never "class" or
  "grass". Chinese, Japanese, Thai, Lao, Khmer and Myanmar are written without spaces, so there every
  character is a word of its own and a term matches wherever its characters stand together.
- **Phrases** ("blood bath") match whatever stands between their words when it holds no letters or
  digits: spaces, punctuation, underscores (booru tags write ``blood_bath``), brackets, and the prompt
  syntax below. A phrase does not match its words run together ("bloodbath"): write that as a line too.
- **A trailing ``*``** matches words that start with the term: "gore*" blocks "gore" and "gorefest",
  not "gory". In a phrase it applies to the last word ("blood bat*" blocks "blood bath"). Without it a
  term is one word exactly: "nude" does not block "nudes" ("nude*" does).
- **Prompt syntax is seen through**: weights ``(term:1.2)``, ``[term]``, escaped ``\\(term\\)``, the
  ``BREAK`` and ``AND`` keywords (a phrase matches with or without them between its words), prompt
  editing ``[a:b:0.5]`` and alternation ``[a|b]`` (every choice is checked, and the prompt as it reads
  before and after each switch), ``{image:NAME}`` references and ``__wildcard__`` names. The names of
  LoRA files (``<lora:NAME:0.8>``, ``<lyco:...>``, ``<hypernet:...>``) and of embeddings (written as
  words) count like any other words: a LoRA file named after a blocked term is refused, and the message
  says which tag. Words written ``CamelCase`` or run into digits (``NudeStyle_v2``, ``gore2``) are also
  read as separate words ("nude", "style", "gore"), since that is how such files are named.
- **Unicode tricks**: compatibility forms are folded (full-width ``ｎｕｄｅ``, ligatures, circled
  letters), invisible characters are removed (zero-width spaces and joiners, soft hyphens, direction
  marks, variation selectors), accents and vowel points are dropped on both sides (a term "nude"
  blocks "nüde", a term "café" blocks "cafe"), and Cyrillic or Greek letters that look like Latin ones
  are read as Latin ("nudе" with a Cyrillic "е").

Not caught: words spelled with spaces or other letters ("n u d e", "nud3"), synonyms and other
languages. A list of words is a fence against the obvious, not a classifier.

The negative prompt is never checked (it names what a picture should not show).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..errors import BadRequest

log = logging.getLogger(__name__)


def _char_class(ranges: Iterable[tuple[int, int]], categories: str) -> str:
    """A regex character class body of the code points in ``ranges`` whose category starts with one of
    ``categories``, written as ranges."""
    points = [c for start, end in ranges for c in range(start, end) if unicodedata.category(chr(c))[0] in categories]
    spans: list[tuple[int, int]] = []
    for point in points:
        if spans and spans[-1][1] == point - 1:
            spans[-1] = (spans[-1][0], point)
        else:
            spans.append((point, point))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in spans)


# Accents, Hebrew points and Arabic vowel signs: optional in writing, so dropped on both sides.
_DIACRITIC_BLOCKS = (
    (0x0300, 0x0370),
    (0x0483, 0x048A),
    (0x0591, 0x05C8),
    (0x0610, 0x061B),
    (0x064B, 0x0660),
    (0x0670, 0x0671),
    (0x06D6, 0x06EE),
    (0x1AB0, 0x1B00),
    (0x1DC0, 0x1E00),
    (0x20D0, 0x2100),
    (0xFE20, 0xFE30),
)
# Every combining mark of the Basic Multilingual Plane lies in these blocks (checked against the
# Unicode tables when written): marks that remain are parts of letters (Devanagari vowel signs...).
_MARK_BLOCKS = ((0x0300, 0x1E00), (0x20D0, 0x2100), (0x2CEF, 0x2E00), (0x302A, 0x30A0), (0xA66F, 0xAC00))
_MARKS = _char_class(_MARK_BLOCKS, "M") + "\ufb1e"
# Invisible characters an evader can slip inside a word: format characters (zero-width space and
# joiners, soft hyphen, direction marks, tags), variation selectors and the Hangul fillers.
_INVISIBLE = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\ufe00-\ufe0f\ufeff\ufff9-\ufffb\u115f\u1160\u3164\uffa0"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef"
)
_DROPPED = re.compile(f"[{_INVISIBLE}{_char_class(_DIACRITIC_BLOCKS, 'M')}]+")
# Scripts written without spaces between words: one character (with its marks) is one word.
_UNSPACED = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003134f"
)
# ASCII text in one pass: letters lowered, digits kept, everything else a space.
_ASCII_WORDS = bytes(ord(chr(b).lower()) if chr(b).isalnum() and b < 128 else 32 for b in range(256))
_PLAIN_WORD = re.compile(r"[^\W_]+")
_WORD = re.compile(f"[{_UNSPACED}][{_MARKS}]*|(?:[^\\W_{_UNSPACED}]|[{_MARKS}])+")
_SPECIAL = re.compile(f"[{_UNSPACED}{_MARKS}]")  # text without these has plain words

# Cyrillic and Greek letters that pass for Latin ones, upper and lower case (read before case folding:
# a capital eta looks like H, a small one like n).
_LOOKALIKE_PAIRS = (
    "Аa Вb Еe Кk Мm Нh Оo Рp Сc Тt Хx Уy Ѕs Іi Јj Һh Ԛq Ԝw Ӏl "
    "аa гr еe кk оo пn рp сc уy хx ьb ѕs іi јj һh ԁd ԛq ԝw ӏl "
    "Αa Βb Εe Ζz Ηh Ιi Κk Μm Νn Οo Ρp Τt Υy Χx "
    "αa γy ηn ιi κk νv οo ρp υu χx ωw"
)
_LOOKALIKES: Mapping[int, str] = MappingProxyType({ord(pair[0]): pair[1] for pair in _LOOKALIKE_PAIRS.split()})
_HAS_LOOKALIKE = re.compile("[\u0370-\u03ff\u0400-\u052f]")

# Prompt syntax (A1111's). A number after a colon is a weight or a step, never words.
_ESCAPE = re.compile(r"\\[\\()\[\]]")
_NETWORK_TAG = re.compile(r"<\s*(?:lora|lyco|hypernet)\s*:([^:<>]*)(?::[^<>]*)?>", re.IGNORECASE)
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_ROUND_WEIGHT = re.compile(rf":\s*{_NUMBER}\s*(?=\))")
_ANY_WEIGHT = re.compile(rf":\s*{_NUMBER}(?![\w.])")
# The keywords as whole upper-case words; the literal comes first so the engine jumps between candidates.
_KEYWORD = re.compile(r"(?:BREAK|AND)(?<!\wBREAK)(?<!\wAND)(?!\w)")
_INNER_SQUARE = re.compile(r"\[([^\[\]]*)\]")
_EDIT = re.compile(rf"(.*):\s*({_NUMBER})\s*", re.DOTALL)
# A word break inside a name: aB, ABc (before the B), a1 and 1a. The pattern starts with the
# character class so the regex engine skips quickly over lower-case text.
_CAMEL = re.compile(r"[A-Z\d](?:(?<=[a-z][A-Z])|(?<=[A-Z][A-Z])(?=[a-z])|(?<=[^\W\d_]\d)|(?<=\d)(?=[^\W\d_]))")
_MAX_READINGS = 8  # prompt-editing states checked at most (each switch point, each turn of an alternation)
_MIN_PREFIX = 2  # "a*" would block nearly every prompt: a prefix needs this many characters
_MAX_TERM = 100  # characters; a longer line is a paragraph, not a term (and would nest the pattern deep)


def _clean(text: str) -> str:
    """Compatibility forms folded and decomposed, invisible characters and accents removed. Case is kept:
    the prompt keywords (BREAK, AND) are upper case."""
    return _DROPPED.sub("", unicodedata.normalize("NFKD", text))


def _joined(text: str) -> str:
    """The words of cleaned text, case-folded, each with one space before and after: " a b c "."""
    if text.isascii():  # most prompts: a byte table is three times as fast as a pattern
        return f" {b' '.join(text.encode('ascii').translate(_ASCII_WORDS).split()).decode('ascii')} "
    folded = text.casefold()
    words = _WORD.findall(folded) if _SPECIAL.search(folded) else _PLAIN_WORD.findall(folded)
    return f" {' '.join(words)} "


@dataclass(frozen=True)
class _Term:
    written: str  # as the owner wrote it (stripped)
    words: tuple[str, ...]
    prefix: bool  # the last word matches any word it starts
    order: int  # position in the owner's list: the earlier wins a tie

    def matches_at(self, words: list[str], index: int) -> bool:
        """Whether the term stands in ``words`` from ``words[index]`` on."""
        last = len(self.words) - 1
        if index + last >= len(words):
            return False
        for offset, want in enumerate(self.words):
            have = words[index + offset]
            if not (have.startswith(want) if offset == last and self.prefix else have == want):
                return False
        return True


class BlockedTerms:
    """An immutable list of blocked terms and its matcher. ``BlockedTerms()`` is the empty list, which
    blocks nothing and is false.

    Matching works on the prompt's words joined by single spaces. Whether any term can be there is
    answered in C: a set intersection with the terms' first words, and for one-word prefix terms
    ("gore*") one regular expression whose branches are merged letter by letter (a trie), so neither
    grows with the length of the list. Only when that finds something does Python walk the words to
    settle which term stands first.
    """

    __slots__ = ("_by_first", "_firsts", "_phrases", "_prefix_pattern", "_prefixes", "_terms")

    def __init__(self, terms: Iterable[str] = (), source: str = "the blocked terms") -> None:
        """The list of ``terms`` (strings as the owner wrote them). Raises ``BadRequest`` naming each term
        that could never match (``source`` names where the list came from)."""
        self._setup(_build(((None, term) for term in terms), source))

    def _setup(self, terms: tuple[_Term, ...]) -> None:
        by_first: dict[str, list[_Term]] = {}
        prefixes: dict[str, list[_Term]] = {}
        for term in terms:
            if len(term.words) == 1 and term.prefix:
                prefixes.setdefault(term.words[0], []).append(term)
            else:
                by_first.setdefault(term.words[0], []).append(term)
        self._terms = terms
        self._phrases = any(len(term.words) > 1 for term in terms)
        self._by_first: Mapping[str, tuple[_Term, ...]] = MappingProxyType({k: tuple(v) for k, v in by_first.items()})
        self._firsts = frozenset(by_first)
        self._prefixes: Mapping[str, tuple[_Term, ...]] = MappingProxyType({k: tuple(v) for k, v in prefixes.items()})
        self._prefix_pattern = re.compile(f" {_trie(prefixes)}") if prefixes else None

    @classmethod
    def parse(cls, text: str, source: str = "the blocked terms") -> BlockedTerms:
        """The list in ``text``: one term per line, ``#`` comment lines and blank lines skipped. Raises
        ``BadRequest`` naming each line that could never match (``source`` names where the text came from)."""
        entries = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
        blocked = cls.__new__(cls)
        blocked._setup(_build(((n, line) for n, line in entries if line and not line.startswith("#")), source))
        return blocked

    @classmethod
    def from_file(cls, path: str | Path) -> BlockedTerms:
        """The list in the file at ``path`` (UTF-8). Raises ``BadRequest`` naming the file when it cannot be
        read, and each line of it that could never match."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BadRequest(f"cannot read the blocked terms file {path}: {reason}") from exc
        return cls.parse(text, source=f"the blocked terms file {path}")

    @property
    def terms(self) -> tuple[str, ...]:
        """The terms as the owner wrote them, in order, repeats dropped."""
        return tuple(term.written for term in self._terms)

    @property
    def text(self) -> str:
        """The list back as text, one term per line (what the Settings box shows)."""
        return "\n".join(self.terms)

    def __bool__(self) -> bool:
        return bool(self._terms)

    def __len__(self) -> int:
        return len(self._terms)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockedTerms) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(self.terms)

    def __repr__(self) -> str:
        return f"BlockedTerms({list(self.terms)!r})"

    def find(self, prompt: str) -> str | None:
        """The first blocked term ``prompt`` contains (earliest in the prompt; at one place, earliest in
        the list), as the owner wrote it; None when there is none."""
        if not self._terms or not prompt:
            return None
        for joined in _readings(prompt, self._phrases):
            found = self._search(joined)
            if found is not None:
                return found.written
        return None

    def check(self, prompt: str, where: str = "prompt") -> None:
        """Raise ``BadRequest`` naming the blocked term ``prompt`` contains, if any, and log the refusal
        (the owner reads refused attempts in the log). ``where`` names the field in the message."""
        term = self.find(prompt)
        if term is None:
            return
        tag = self._network_tag(prompt, term)
        place = f', in the tag "{tag}"' if tag else ""
        log.warning("refused a request: its %s contains the blocked term %r%s: %.300r", where, term, place, prompt)
        raise BadRequest(
            f'the {where} contains a blocked term ("{term}"{place}); the server\'s owner does not allow it'
        )

    def _network_tag(self, prompt: str, term: str) -> str | None:
        """The LoRA (or LyCORIS, hypernetwork) tag whose name holds ``term``, when the rest of the prompt
        does not: a user who never typed the word learns where it is."""
        if self.find(_NETWORK_TAG.sub(" , ", prompt)) == term:
            return None
        for match in _NETWORK_TAG.finditer(prompt):
            if self.find(match.group(1)) == term:
                return match.group(0)
        return None

    def _search(self, joined: str) -> _Term | None:
        """The term found earliest in ``joined`` (words between single spaces)."""
        words = joined.split()
        exact = not self._firsts.isdisjoint(words)
        prefix = self._prefix_pattern.search(joined) if self._prefix_pattern is not None else None
        if not exact and prefix is None:
            return None  # the usual case, answered without a Python loop over the words
        # No one-word prefix term stands before the first place the pattern found one.
        prefix_at = joined.count(" ", 0, prefix.start()) if prefix is not None else len(words)
        for index in range(min(prefix_at + 1, len(words))):
            word = words[index]
            found = [term for term in self._by_first.get(word, ()) if term.matches_at(words, index)]
            if index == prefix_at:
                found += [term for end in range(1, len(word) + 1) for term in self._prefixes.get(word[:end], ())]
            if found:
                return min(found, key=lambda term: term.order)
        return None


def _trie(prefixes: Iterable[str]) -> str:
    """A regex matching a word that starts with any of ``prefixes``: merged letter by letter, so the
    engine never tries two branches that start with the same letter."""
    root: dict[str, dict] = {}  # a tree of dicts: letter -> subtree; "" marks the end of a prefix
    for text in prefixes:
        node = root
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}

    def render(node: dict[str, dict]) -> str:
        if "" in node:
            return ""  # a shorter prefix already matches whatever follows
        branches = [re.escape(char) + render(child) for char, child in node.items()]
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return render(root)


def _build(entries: Iterable[tuple[int | None, str]], source: str) -> tuple[_Term, ...]:
    """The owner's entries as terms, repeats (same words, any case or punctuation) dropped. Raises
    ``BadRequest`` naming every entry that could never match."""
    problems: list[str] = []
    terms: list[_Term] = []
    seen: set[tuple[tuple[str, ...], bool]] = set()
    for number, raw in entries:
        written = raw.strip()
        if not written:
            continue
        where = f"line {number} of {source}" if number is not None else source
        body = written.rstrip("*").rstrip()
        prefix = body != written
        words = tuple(_joined(_clean(body)).split())
        if "*" in body:
            problems.append(f'{where}: "{written}": a * only goes at the end of a term (it matches word beginnings)')
        elif not words:
            problems.append(f'{where}: "{written}" has no letters or digits, so it could never match')
        elif len(written) > _MAX_TERM:
            problems.append(f'{where}: "{written[:40]}...": a term has at most {_MAX_TERM} characters')
        elif prefix and len(words[-1]) < _MIN_PREFIX:
            problems.append(f'{where}: "{written}": a prefix needs at least {_MIN_PREFIX} letters before the *')
        elif (words, prefix) not in seen:
            seen.add((words, prefix))
            terms.append(_Term(written, words, prefix, len(terms)))
    if problems:
        raise BadRequest(problems)
    return tuple(terms)


def _readings(prompt: str, phrases: bool) -> Iterator[str]:
    """The prompt's readings as joined words (see ``_joined``): as written, with names split and, when
    some term is a phrase, without keywords and at each prompt-editing state; each also with look-alike
    letters read as Latin. Repeats are skipped."""
    seen: set[str] = set()
    views = _views(prompt, phrases)
    lookalikes = _HAS_LOOKALIKE.search(views[0]) is not None
    for view in views:
        joined = _joined(view)
        if joined not in seen:
            seen.add(joined)
            yield joined
        if lookalikes:
            latin = _joined(view.translate(_LOOKALIKES))
            if latin not in seen:
                seen.add(latin)
                yield latin


def _views(prompt: str, phrases: bool) -> list[str]:
    """The prompt's readings as cleaned text, prompt syntax taken apart (see the module note). Without
    phrases the readings that only join words differently are left out: one-word terms are all in the
    prompt as written."""
    # Each step is skipped when its syntax is absent: most prompts are plain ASCII with few brackets.
    text = prompt if prompt.isascii() else _clean(prompt)
    if "\\" in text:
        text = _ESCAPE.sub(" ", text)
    if "<" in text:
        text = _NETWORK_TAG.sub(lambda match: f" {match.group(1)} ", text)
    if ":" in text:
        text = _ROUND_WEIGHT.sub(" ", text)
    literal = _ANY_WEIGHT.sub(" ", text) if ":" in text else text
    bare = _KEYWORD.sub(" ", literal) if phrases and ("BREAK" in literal or "AND" in literal) else literal
    views = [literal, bare, _CAMEL.sub(r" \g<0> ", bare)]
    if phrases and "[" in text:
        # The prompt before any switch, then after each switch point in turn (steps, 10, count as later
        # than fractions, 0.5, as no step count is known here); alternations turn with each reading.
        switches: list[float] = []
        _edited(text, -math.inf, 0, switches)
        times = [-math.inf, *sorted(set(switches))]
        readings = min(_MAX_READINGS, max(len(times), 1 + text.count("|")))
        for reading in range(readings):
            edited = _edited(text, times[min(reading, len(times) - 1)], reading)
            views.append(_KEYWORD.sub(" ", _ANY_WEIGHT.sub(" ", edited)))
    return list(dict.fromkeys(views))


def _edited(text: str, time: float, turn: int, switches: list[float] | None = None) -> str:
    """``text`` as it reads at one point of its prompt editing: each ``[a:b:when]`` reads ``b`` once
    ``when <= time`` (``[b:when]`` and ``[a::when]`` alike), and each alternation ``[a|b|c]`` reads its
    choice number ``turn`` (A1111 turns them one each step). Inner brackets first, so nesting works.
    The switch points met are added to ``switches`` when given."""

    def pick(match: re.Match[str]) -> str:
        inside = match.group(1)
        if "|" in inside:
            parts = inside.split("|")
            return f" {parts[turn % len(parts)]} "
        edit = _EDIT.fullmatch(inside)
        if edit is None:
            return f" {inside} "  # [words]: a lower weight, not an edit
        when = float(edit.group(2))
        if switches is not None:
            switches.append(when)
        before, _, after = edit.group(1).partition(":") if ":" in edit.group(1) else ("", "", edit.group(1))
        return f" {after if when <= time else before} "

    previous = None
    while previous != text:
        previous, text = text, _INNER_SQUARE.sub(pick, text)
    return text
