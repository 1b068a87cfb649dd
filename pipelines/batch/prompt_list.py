"""Prompts from a list: one prompt per line, or a line of ``--option value`` pairs.

The syntax follows A1111's "prompts from file or textbox" script: a plain line is a prompt; a line
with options (``--prompt "a cat" --steps 10 --seed 5``) sets request fields by name, and a plain
text before the first option is the prompt (``a cat --seed 5``). Blank lines and lines starting
with ``#`` are skipped. Every line overrides the base request (the tab's settings); each resulting
request is checked by its own ``checked()``, and every problem names its line.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadRequest
from ..requests import Limits, Txt2Img

T = TypeVar("T")

MAX_LINES = 1000  # prompts in one list
MAX_PICTURES = 10_000  # pictures one list or dataset may make (a day of work on a big GPU)
MAX_FILE_BYTES = 1024 * 1024  # a list file: 1000 long prompts fit many times over
MAX_PROBLEMS = 20  # problems listed in one message; the count of the rest follows

# A1111's names for request fields that Atelier names otherwise, so its list files run unchanged.
ALIASES = {"n_iter": "batch_count", "scheduler": "schedule_type", "sampler_index": "sampler_name",
           "sd_model": "model", "cfg": "cfg_scale"}  # fmt: skip
# What the caller does to each line's request before it is checked (the page applies its chosen
# styles to every line's prompt this way; styles live above pipelines/, so they come in as a function).
Style = Callable[[Txt2Img], Txt2Img]
_KINDS = ("str", "int", "float", "bool")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_OPTION = re.compile(r"(?:^|\s)--[A-Za-z]")


@dataclass(frozen=True)
class PromptLine:
    """One line of a list: where it was, and the request fields it sets."""

    number: int  # 1-based, as an editor shows it
    fields: dict[str, Any] = field(default_factory=dict)

    def request(self, base: Txt2Img, style: Style | None = None) -> Txt2Img:
        request = base.replace(**self.fields)
        return style(request) if style is not None else request


def read_list_file(path: Path | str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of an uploaded list file (UTF-8, a byte-order mark dropped), refused when too big."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise BadRequest(f"could not read the list file: {exc.strerror or exc}") from exc
    if len(data) > limit:
        size = f"{limit // 1024} KiB" if limit >= 1024 else f"{limit} bytes"
        raise BadRequest(f"the list file is larger than {size}; split it into smaller lists")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the list file is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from exc


def parse_lines(text: str, max_lines: int = MAX_LINES) -> list[PromptLine]:
    """Every prompt line of ``text``; one ``BadRequest`` lists the problems of all lines."""
    return numbered_lines(
        text, lambda number, line: PromptLine(number, parse_line(line)), max_lines,
        ("the list", f"the list has more than {max_lines} prompts; split it into lists of {max_lines}",
         "the list has no prompts: write one prompt per line (lines starting with # are skipped)"),
    )  # fmt: skip


def numbered_lines(text: str, parse: Callable[[int, str], T], max_lines: int, wording: tuple[str, str, str]) -> list[T]:
    """``parse(number, line)`` of every line that is not blank or a ``#`` comment; one ``BadRequest``
    lists every line's problems with its number. ``wording``: what the text is, and what to say when
    it has too many lines or none."""
    what, too_many, none = wording
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be text, got {type(text).__name__}")
    parsed: list[T] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            parsed.append(parse(number, stripped))
        except BadRequest as exc:
            problems += [f"line {number}: {problem}" for problem in exc.problems]
        if len(parsed) > max_lines:
            raise BadRequest(too_many)
    if problems:
        raise BadRequest(first_problems(problems))
    if not parsed:
        raise BadRequest(none)
    return parsed


def parse_line(line: str) -> dict[str, Any]:
    """The request fields one line sets. A line without options is a prompt, taken as written (so
    quotes and apostrophes in a prompt need no escaping)."""
    if not _OPTION.search(line):
        return {"prompt": line}
    try:
        words = shlex.split(line, posix=True)
    except ValueError as exc:  # an unclosed quote
        raise BadRequest(f"{exc} in {_shown(line)}") from exc
    start = next(i for i, word in enumerate(words) if word.startswith("--"))
    fields: dict[str, Any] = {"prompt": " ".join(words[:start])} if start else {}
    kinds = option_kinds()
    problems: list[str] = []
    index = start
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("--"):
            problems.append(f"{_shown(word)} follows no option; quote values that have spaces")
            continue
        option, equals, value = word[2:].partition("=")
        name = ALIASES.get(option, option)
        if name not in kinds:
            problems.append(f"unknown option --{option}; the options are --{', --'.join(kinds)}")
            if not equals and index < len(words) and not _is_option(words[index]):
                index += 1  # its value: no second problem about a word that follows no option
            continue
        if not equals:
            if index < len(words) and not _is_option(words[index]):
                value, index = words[index], index + 1
            elif kinds[name] == "bool":  # a switch alone turns it on: --enable_hr
                value = "true"
            else:
                problems.append(f"option --{option} needs a value")
                continue
        if name in fields:
            problems.append(f"option --{option} is given twice")
        else:
            fields[name] = _typed(kinds[name], value)
    if problems:
        raise BadRequest(problems)
    return fields


def option_kinds() -> dict[str, str]:
    """The request fields a line may set, by name, and their types: every text, number and switch of
    a text-to-image request (pictures come from the tab, never from a line)."""
    kinds = {}
    for spec in dataclasses.fields(Txt2Img):
        kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
        if kind in _KINDS:
            kinds[spec.name] = kind
    return kinds


def requests_from(
    lines: list[PromptLine], base: Txt2Img, limits: Limits | None = None, style: Style | None = None
) -> list[Txt2Img]:
    """Each line over ``base`` (then ``style``d), checked; every line's problems in one ``BadRequest``."""
    requests: list[Txt2Img] = []
    problems: list[str] = []
    for line in lines:
        try:
            request, _ = line.request(base, style).checked(limits or Limits())
        except BadRequest as exc:
            problems += [f"line {line.number}: {problem}" for problem in exc.problems]
        else:
            requests.append(request)
    if problems:
        raise BadRequest(first_problems(problems))
    pictures = sum(request.batch_size * request.batch_count for request in requests)
    if pictures > MAX_PICTURES:
        raise BadRequest(f"the list makes {pictures} pictures; the limit is {MAX_PICTURES}: use fewer lines or batches")
    return requests


def _typed(kind: str, value: str) -> Any:
    """``value`` as the field's type when it reads as one; as written otherwise, so that the request's
    own check names the bad value (``steps must be a whole number, got 'ten'``)."""
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        return value
    if kind == "bool" and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    return value


def _shown(value: str) -> str:
    return reprlib.repr(value)


def _is_option(word: str) -> bool:
    return word.startswith("--") and len(word) > 2 and word[2].isalpha()


def first_problems(problems: list[str]) -> list[str]:
    """The first problems of a long list, and how many more there are: one message stays readable."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more problems"]
