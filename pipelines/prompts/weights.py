"""The attention syntax artists type in prompts (AUTOMATIC1111's), read into weighted pieces of text.

``(words)`` multiplies the weight of ``words`` by 1.1, ``[words]`` divides it by 1.1, ``(words:1.3)``
multiplies it by 1.3, and brackets nest (``((a))`` is 1.21). ``\\(`` ``\\)`` ``\\[`` ``\\]`` and ``\\\\``
are the characters themselves. A bracket left open weighs everything after it; a closing bracket
with nothing open is plain text. The upper-case word ``BREAK`` ends the current 75-token chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UP = 1.1  # what one pair of round brackets multiplies by
DOWN = 1 / 1.1  # what one pair of square brackets multiplies by
# A BREAK in the parsed list: the keyword with weight -1, the value A1111's parser gives it too. No text
# fragment can carry it, since the whole word BREAK always becomes this marker wherever it stands.
BREAK: tuple[str, float] = ("BREAK", -1.0)

_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPED = frozenset("()[]\\")
# ``:1.3)`` closes a round bracket with an explicit weight; only digits, dots and a sign count as the number.
_EXPLICIT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")


@dataclass
class _Piece:
    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``text`` as (fragment, weight) pairs in order, neighbours of equal weight merged.

    A prompt with no brackets, backslashes or BREAK is ``[(text, 1.0)]``; an empty one ``[("", 1.0)]``.
    A ``BREAK`` appears as the pair :data:`BREAK`.
    """
    pieces: list[_Piece] = []
    round_open: list[int] = []  # index into ``pieces`` where each open bracket starts
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece.is_break:
                piece.weight *= factor

    def add_text(chunk: str) -> None:
        # BREAK is looked for in each stretch of plain text, so an escaped bracket next to it still counts.
        parts = _BREAK_WORD.split(chunk)
        for index, part in enumerate(parts):
            if index:
                pieces.append(_Piece(BREAK[0], BREAK[1], is_break=True))
            if part:
                pieces.append(_Piece(part))

    position, plain = 0, []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in _ESCAPED:
            plain.append(text[position + 1])
            position += 2
            continue
        explicit = _EXPLICIT.match(text, position) if char == ":" and round_open else None
        weight = _number(explicit.group(1)) if explicit else None
        if char not in "()[]" and weight is None:
            plain.append(char)
            position += 1
            continue
        if char in ")]" and not (round_open if char == ")" else square_open):
            plain.append(char)  # a closing bracket with nothing open is text
            position += 1
            continue
        add_text("".join(plain))
        plain = []
        if weight is not None and explicit is not None:
            scale(round_open.pop(), weight)
            position = explicit.end()
            continue
        if char == "(":
            round_open.append(len(pieces))
        elif char == "[":
            square_open.append(len(pieces))
        elif char == ")":
            scale(round_open.pop(), UP)
        else:
            scale(square_open.pop(), DOWN)
        position += 1
    add_text("".join(plain))
    for start in round_open:  # left open: they weigh the rest of the prompt
        scale(start, UP)
    for start in square_open:
        scale(start, DOWN)
    return _merged(pieces)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "1.2.3" matches the pattern but is no number: then it is text
        return None


def _merged(pieces: list[_Piece]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for piece in pieces:
        if piece.is_break:
            merged.append(BREAK)
        elif merged and merged[-1] != BREAK and merged[-1][1] == piece.weight:
            merged[-1] = (merged[-1][0] + piece.text, piece.weight)
        else:
            merged.append((piece.text, piece.weight))
    return merged or [("", 1.0)]
