"""Deforum schedules: numbers and expressions of the frame ``t`` at keyframes, checked and evaluated safely.

A schedule is written ``0: (1.0), 30: (1.02+0.002*sin(2*3.14*t/30))``: comma-separated ``frame: (value)``
pairs (the parentheses may be left out; a schedule of one bare value means keyframe 0). Between keyframes,
as in Deforum: a keyframe whose value does not depend on ``t`` is linearly interpolated towards the next
keyframe's value at that keyframe's frame; a keyframe whose value depends on ``t`` is evaluated at every
frame up to the next keyframe. Frames before the first keyframe take its value; the last keyframe holds
(or its expression goes on) to the end.

Nothing is ever executed: the text is parsed with ``ast`` and every node is checked against a whitelist
(numbers, ``t``, ``pi``, ``e``, ``+ - * / ** %``, unary ``-``/``+``, calls of a fixed set of math
functions), then our own small interpreter evaluates the tree over a numpy array of frames (one pass per
keyframe, all its frames at once). Lengths, node counts and exponents are bounded, so no input can make
evaluation slow, and every error names the schedule, the keyframe and, where it applies, the frame.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BadRequest

MAX_SCHEDULE_CHARS = 10_000  # what a preset may hold in one text field
MAX_EXPRESSION_CHARS = 1_000
MAX_NODES = 200  # also bounds how deep the interpreter recurses
MAX_EXPONENT = 10_000  # far above any animation's needs; refuses 9**9**9 before it is tried
MAX_KEYFRAME = 1_000_000
MAX_FRAMES = 100_000

VARIABLES = ("t",)
CONSTANTS: Mapping[str, float] = types.MappingProxyType({"pi": math.pi, "e": math.e})


def _log(*args: np.ndarray) -> np.ndarray:
    return np.log(args[0]) if len(args) == 1 else np.log(args[0]) / np.log(args[1])


def _unary(function: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda *args: function(args[0])


# name -> (implementation, fewest arguments, most arguments); pow is checked like ** (see _power)
FUNCTIONS: Mapping[str, tuple[Callable[..., np.ndarray], int, int]] = types.MappingProxyType(
    {
        "sin": (_unary(np.sin), 1, 1),
        "cos": (_unary(np.cos), 1, 1),
        "tan": (_unary(np.tan), 1, 1),
        "asin": (_unary(np.arcsin), 1, 1),
        "acos": (_unary(np.arccos), 1, 1),
        "atan": (_unary(np.arctan), 1, 1),
        "sqrt": (_unary(np.sqrt), 1, 1),
        "abs": (_unary(np.abs), 1, 1),
        "exp": (_unary(np.exp), 1, 1),
        "log": (_log, 1, 2),
        "floor": (_unary(np.floor), 1, 1),
        "ceil": (_unary(np.ceil), 1, 1),
        "min": (lambda *args: functools.reduce(np.minimum, args), 2, 16),
        "max": (lambda *args: functools.reduce(np.maximum, args), 2, 16),
        "pow": (lambda *args: np.power(args[0], args[1]), 2, 2),
    }
)

_OPERATORS: Mapping[type, str] = types.MappingProxyType(
    {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.Mod: "%"}
)
_REFUSED: Mapping[type, str] = types.MappingProxyType(
    {
        ast.Attribute: "attribute access ('.')",
        ast.Subscript: "subscripts ('[...]')",
        ast.Lambda: "lambda functions",
        ast.ListComp: "comprehensions",
        ast.SetComp: "comprehensions",
        ast.DictComp: "comprehensions",
        ast.GeneratorExp: "comprehensions",
        ast.Compare: "comparisons",
        ast.BoolOp: "'and'/'or'",
        ast.IfExp: "'if'/'else'",
        ast.NamedExpr: "assignments (':=')",
        ast.List: "lists",
        ast.Tuple: "tuples",
        ast.Set: "sets",
        ast.Dict: "dicts",
        ast.JoinedStr: "f-strings",
        ast.Starred: "'*' unpacking",
        ast.Await: "'await'",
    }
)
_WHOLE_NUMBER = re.compile(r"\d{1,9}")


class _EvalError(Exception):
    """One expression's evaluation failed; the message says where and why."""


@dataclass(frozen=True)
class Keyframe:
    frame: int
    text: str  # the value as written, for messages and plots
    tree: ast.Expression = field(compare=False, repr=False)
    uses_t: bool = False


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: keyframes sorted by frame. ``values(frames)`` evaluates it."""

    name: str
    keyframes: tuple[Keyframe, ...]

    def values(self, frames: int, hold: bool = False) -> list[float]:
        """The value at each of ``frames`` frames; raises ``BadRequest`` naming keyframe and frame.

        ``hold``: constants keep their value up to the next keyframe instead of moving towards it
        (for seeds, where a value between two seeds means nothing)."""
        return [float(v) for v in self.series(frames, hold)]

    def series(self, frames: int, hold: bool = False) -> np.ndarray:
        if not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
            raise BadRequest(f"{self.name}: the number of frames must be between 1 and {MAX_FRAMES}, got {frames!r}")
        out = np.empty(frames, dtype=np.float64)
        problems: dict[str, None] = {}  # ordered and without repeats: a keyframe is evaluated twice at times
        keys = self.keyframes
        first = keys[0]
        if first.frame > 0:
            out[: min(first.frame, frames)] = self._at(first, np.array([float(first.frame)]), problems)
        for index, key in enumerate(keys):
            following = keys[index + 1] if index + 1 < len(keys) else None
            end = following.frame if following else frames
            low, high = key.frame, min(end, frames)
            if low >= high:
                continue
            frame_numbers = np.arange(low, high, dtype=np.float64)
            if key.uses_t or following is None or hold:
                out[low:high] = self._at(key, frame_numbers, problems)
            else:
                start_value = self._at(key, np.array([float(low)]), problems)
                end_value = self._at(following, np.array([float(end)]), problems)
                out[low:high] = start_value + (end_value - start_value) * (frame_numbers - low) / (end - low)
        if problems:
            raise BadRequest(list(problems))
        return out

    def _at(self, key: Keyframe, frames: np.ndarray, problems: dict[str, None]) -> np.ndarray:
        try:
            return np.broadcast_to(_Interpreter(key.text, frames).run(key.tree), frames.shape)
        except _EvalError as exc:
            problems[f"{self.name} keyframe {key.frame} ({_short(key.text)}): {exc}"] = None
            return np.zeros(frames.shape)

    def keyframe_at(self, frame: int) -> Keyframe:
        """The keyframe whose segment holds ``frame`` (the first one for frames before it)."""
        current = self.keyframes[0]
        for key in self.keyframes:
            if key.frame <= frame:
                current = key
        return current


def parse_schedule(text: Any, name: str = "schedule") -> Schedule:
    """Parse and check a schedule; raises ``BadRequest`` listing every bad keyframe."""
    if not isinstance(text, str):
        raise BadRequest(f"{name} must be text like '0: (1.0)', got {type(text).__name__}")
    if len(text) > MAX_SCHEDULE_CHARS:
        raise BadRequest(f"{name} is {len(text)} characters long; the limit is {MAX_SCHEDULE_CHARS}")
    items = _split(text, name)
    if not items:
        raise BadRequest(f"{name} is empty: write at least one keyframe, like '0: (1.0)'")
    problems: list[str] = []
    keyframes: dict[int, Keyframe] = {}
    for number, item in enumerate(items, start=1):
        colon = _top_level_colon(item)
        if colon < 0 and len(items) == 1:
            key_text, value = "0", item
        elif colon < 0:
            problems.append(f"{name} item {number} ({_short(item)}): write it as 'frame: (value)'")
            continue
        else:
            key_text, value = item[:colon].strip(), item[colon + 1 :].strip()
        try:
            frame = parse_frame(key_text)
        except BadRequest as exc:
            problems.append(f"{name} item {number}: {exc}")
            continue
        where = f"{name} keyframe {frame}"
        if frame in keyframes:
            problems.append(f"{where} is given twice")
            continue
        try:
            tree, uses_t = _parse_expression(value, VARIABLES)
        except _EvalError as exc:
            problems.append(f"{where} ({_short(value)}): {exc}")
            continue
        keyframes[frame] = Keyframe(frame, value, tree, uses_t)
    if problems:
        raise BadRequest(problems)
    return Schedule(name, tuple(keyframes[f] for f in sorted(keyframes)))


def evaluate_schedule(text: Any, frames: int, name: str = "schedule") -> list[float]:
    """Parse ``text`` and return its value at each of ``frames`` frames (``BadRequest`` when wrong)."""
    return parse_schedule(text, name).values(frames)


def evaluate_constant(text: str, what: str = "value") -> float:
    """A number written as an expression without ``t`` (``"120-1"``, ``"2*pi"``); ``BadRequest`` when wrong."""
    try:
        return _constant(text)
    except _EvalError as exc:
        raise BadRequest(f"{what} {_short(text)}: {exc}") from None


def _constant(text: str) -> float:
    tree, _ = _parse_expression(text, ())
    return float(_Interpreter(text, np.zeros(1)).run(tree))


def parse_frame(text: str) -> int:
    """A keyframe's frame number: digits, optionally quoted as in Deforum files, or a constant expression."""
    cleaned = text.strip()
    if len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in "'\"":
        cleaned = cleaned[1:-1].strip()
    if _WHOLE_NUMBER.fullmatch(cleaned):
        frame = int(cleaned)
    else:
        try:
            value = _constant(cleaned) if cleaned else math.nan
        except _EvalError as exc:
            raise BadRequest(f"keyframe {_short(text)} is not a frame number (0, 1, 2 ...): {exc}") from None
        if not (math.isfinite(value) and value == int(value)):
            raise BadRequest(f"keyframe {_short(text)} is not a whole frame number (0, 1, 2 ...)")
        frame = int(value)
    if not 0 <= frame <= MAX_KEYFRAME:
        raise BadRequest(f"keyframe {_short(text)} must be a frame from 0 to {MAX_KEYFRAME}")
    return frame


def schedule_table(
    schedules: Mapping[str, str], frames: int, max_points: int = 1000
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows ``{"frame", "schedule", "value"}`` for a line plot of every schedule that is valid, and
    the problems of those that are not, so a plot can update while the artist is still typing.

    At most ``max_points`` frames per schedule are listed (evenly spaced, the last frame included).
    """
    if not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        return [], [f"the number of frames must be between 1 and {MAX_FRAMES}, got {frames!r}"]
    step = max(1, math.ceil(frames / max(1, max_points)))
    shown = list(range(0, frames, step))
    if shown[-1] != frames - 1:
        shown.append(frames - 1)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for name, text in schedules.items():
        try:
            series = parse_schedule(text, name).series(frames)
        except BadRequest as exc:
            problems.extend(exc.problems)
            continue
        rows.extend({"frame": f, "schedule": name, "value": float(series[f])} for f in shown)
    return rows, problems


# -- parsing ---------------------------------------------------------------------------------------


def _split(text: str, name: str) -> list[str]:
    """Items between commas outside parentheses; blank items (a trailing comma) are dropped."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise BadRequest(f"{name}: the ')' at character {index + 1} closes nothing")
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth > 0:
        raise BadRequest(f"{name}: a '(' is never closed")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _top_level_colon(item: str) -> int:
    depth = 0
    for index, char in enumerate(item):
        depth += (char == "(") - (char == ")")
        if char == ":" and depth == 0:
            return index
    return -1


def _parse_expression(text: str, variables: tuple[str, ...]) -> tuple[ast.Expression, bool]:
    """Parse and whitelist-check one value; returns the tree and whether it uses ``t``."""
    if not text.strip():
        raise _EvalError("the value is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise _EvalError(f"the value is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise _EvalError(f"not a valid expression ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError):
        raise _EvalError("not a valid expression") from None
    nodes = sum(1 for _ in ast.walk(tree))  # iterative: safe before the recursive check below
    if nodes > MAX_NODES:
        raise _EvalError(f"the value has {nodes} parts; the limit is {MAX_NODES}")
    problems: list[str] = []
    _check(tree.body, variables, problems)
    if problems:
        raise _EvalError("; ".join(dict.fromkeys(problems)))
    uses_t = any(isinstance(n, ast.Name) and n.id in variables for n in ast.walk(tree))
    return tree, uses_t


def _check(node: ast.AST, variables: tuple[str, ...], problems: list[str]) -> None:
    allowed_names = (*variables, *CONSTANTS)
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            problems.append(f"only numbers are allowed, not {_short(repr(node.value), quote=False)}")
    elif isinstance(node, ast.Name):
        if node.id not in allowed_names:
            problems.append(f"the name {_short(node.id)} is not allowed; use {', '.join(allowed_names)}")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _OPERATORS:
            problems.append(f"the operator {_operator(node.op)} is not allowed; use {' '.join(_OPERATORS.values())}")
        _check(node.left, variables, problems)
        _check(node.right, variables, problems)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            problems.append(f"the operator {_operator(node.op)} is not allowed; only '-' and '+' go before a value")
        _check(node.operand, variables, problems)
    elif isinstance(node, ast.Call):
        _check_call(node, variables, problems)
    else:
        what = _REFUSED.get(type(node), f"'{type(node).__name__}' expressions")
        problems.append(f"not allowed: {what}")
        if isinstance(node, (ast.Attribute, ast.Subscript)):  # say what it was reached from, too
            _check(node.value, variables, problems)


def _check_call(node: ast.Call, variables: tuple[str, ...], problems: list[str]) -> None:
    known = ", ".join(FUNCTIONS)
    if not isinstance(node.func, ast.Name):
        problems.append(f"only these functions may be called, by name: {known}")
        _check(node.func, variables, problems)
    elif node.func.id not in FUNCTIONS:
        problems.append(f"the function {_short(node.func.id)} is not allowed; use {known}")
    else:
        _, fewest, most = FUNCTIONS[node.func.id]
        if not fewest <= len(node.args) <= most:
            wanted = f"{fewest} argument" if fewest == most == 1 else f"{fewest} to {most} arguments"
            wanted = f"{fewest} arguments" if fewest == most > 1 else wanted
            problems.append(f"{node.func.id}() takes {wanted}, got {len(node.args)}")
    if node.keywords:
        problems.append("named arguments (name=value) are not allowed")
    for argument in node.args:
        _check(argument, variables, problems)


def _operator(op: ast.AST) -> str:
    symbols = {
        ast.FloorDiv: "//",
        ast.MatMult: "@",
        ast.BitAnd: "&",
        ast.BitOr: "|",
        ast.BitXor: "^",
        ast.LShift: "<<",
        ast.RShift: ">>",
        ast.Not: "not",
        ast.Invert: "~",
    }
    return f"'{symbols.get(type(op), type(op).__name__)}'"


def _short(text: str, limit: int = 60, quote: bool = True) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else f"{text[: limit - 3]}..."
    return f"'{text}'" if quote else text


# -- evaluation ------------------------------------------------------------------------------------


class _Interpreter:
    """Evaluates a checked tree with ``t`` bound to an array of frame numbers."""

    def __init__(self, source: str, frames: np.ndarray) -> None:
        self.source = source.strip()
        self.frames = frames
        self.names: dict[str, np.ndarray] = {"t": frames, **{k: np.asarray(v) for k, v in CONSTANTS.items()}}

    def run(self, tree: ast.Expression) -> np.ndarray:
        with np.errstate(all="ignore"):  # bad values are found and reported by _finite, not warned about
            return self._value(tree.body)

    def _value(self, node: ast.expr) -> np.ndarray:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)):
                raise _EvalError(f"only numbers are allowed, not {_short(repr(node.value), quote=False)}")
            try:
                number = float(node.value)
            except OverflowError:
                raise _EvalError(f"the number {_short(self._label(node))} is too large") from None
            return self._finite(np.asarray(number), node)
        if isinstance(node, ast.Name):
            return self.names[node.id]
        if isinstance(node, ast.UnaryOp):
            operand = self._value(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            arguments = [self._value(a) for a in node.args]
            if node.func.id == "pow":
                return self._power(arguments[0], arguments[1], node)
            return self._finite(FUNCTIONS[node.func.id][0](*arguments), node)
        raise _EvalError(f"{type(node).__name__} cannot be evaluated")  # unreachable after _check

    def _binary(self, node: ast.BinOp) -> np.ndarray:
        left, right = self._value(node.left), self._value(node.right)
        if isinstance(node.op, ast.Add):
            result = left + right
        elif isinstance(node.op, ast.Sub):
            result = left - right
        elif isinstance(node.op, ast.Mult):
            result = left * right
        elif isinstance(node.op, ast.Pow):
            return self._power(left, right, node)
        else:
            zero = right == 0
            if np.any(zero):
                raise _EvalError(f"division by zero in {_short(self._label(node))}{self._where(zero)}")
            result = np.mod(left, right) if isinstance(node.op, ast.Mod) else left / right
        return self._finite(result, node)

    def _power(self, base: np.ndarray, exponent: np.ndarray, node: ast.AST) -> np.ndarray:
        too_big = np.abs(exponent) > MAX_EXPONENT
        if np.any(too_big):
            shown = float(np.broadcast_to(exponent, too_big.shape)[too_big].flat[0])
            raise _EvalError(
                f"the exponent {shown:g} in {_short(self._label(node))} is beyond ±{MAX_EXPONENT}{self._where(too_big)}"
            )
        return self._finite(np.power(base, exponent), node)

    def _finite(self, value: np.ndarray, node: ast.AST) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        bad = ~np.isfinite(value)
        if np.any(bad):
            kind = "is not a real number" if np.any(np.isnan(value)) else "is infinite or too large"
            raise _EvalError(f"{_short(self._label(node))} {kind}{self._where(bad)}")
        return value

    def _where(self, mask: np.ndarray) -> str:
        """' at frame N' for a problem that depends on the frame; nothing for one that does not."""
        if mask.ndim == 0 or self.frames.size == 0:
            return ""
        index = int(np.argmax(np.broadcast_to(mask, self.frames.shape)))
        return f" at frame {int(self.frames[index])}"

    def _label(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or self.source
