"""The axes of an X/Y/Z plot: what each kind varies, and A1111's syntax for its values.

Values are one text, as artists type them in A1111: a comma list (CSV, so ``"a, b", c`` is two
values), where a number axis also takes ranges: ``1-5`` (1 2 3 4 5), ``1-10 (+2)`` (a step),
``10-1 (-3)`` (a step down), ``1-10 [4]`` (4 values spread evenly, ends included) and the same with
decimals (``1.0-2.0 [3]``). A seed of ``-1`` is a random one. For "Prompt S/R" the first value is
the text searched for in the prompt and every value (the first too) replaces it in turn.

Parsing never runs anything: it turns text into values or raises ``BadRequest`` naming the axis and
the value at fault. Applying a value to a request gives a new request; the request's own checks
then say whether it is in range.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .. import samplers
from ..errors import BadRequest
from ..requests import Img2Img, Txt2Img

MAX_VALUES = 100  # per axis: a typo such as "1-100000" is refused, not queued as a day of work
_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_INT_RANGE = re.compile(rf"^({_INT})\s*-\s*({_INT})\s*(?:\(\s*({_INT})\s*\)|\[\s*(\d+)\s*\])?$")
_FLOAT_RANGE = re.compile(rf"^({_FLOAT})\s*-\s*({_FLOAT})\s*(?:\(\s*({_FLOAT})\s*\)|\[\s*(\d+)\s*\])?$")
_SIZE = re.compile(r"^(\d+)\s*(?:[x×*]\s*(\d+))?$", re.IGNORECASE)
# A1111's LoRA tag: <lora:NAME>, <lora:NAME:weight>, <lora:NAME:te:unet> (and <lyco:...> alike).
LORA_TAG = re.compile(r"<(lora|lyco):([^:<>]+)(?::[^<>]*)?>", re.IGNORECASE)


@dataclass(frozen=True)
class AxisKind:
    """One thing a plot can vary. ``label`` is A1111's name (its API and infotexts use it)."""

    label: str
    value_type: type  # int, float or str
    field: str = ""  # the request field a value goes to ("" for the kinds that rewrite the prompt etc.)
    named: bool = True  # grid labels read "Steps: 20"; False: just the value ("Euler a")
    hint: str = ""  # an example of its values, for the page

    def apply(self, request: Txt2Img, value: Any, values: Sequence[Any]) -> Txt2Img:
        """``request`` with this axis at ``value`` (``values``: the whole axis, Prompt S/R needs its first)."""
        if self.label == "Nothing":
            return request
        if self.label == "Prompt S/R":
            term = str(values[0])
            return request.replace(
                prompt=request.prompt.replace(term, value), negative_prompt=request.negative_prompt.replace(term, value)
            )
        if self.label == "LoRA weight":
            return request.replace(prompt=with_lora_weight(request.prompt, float(value)))
        if self.label == "Size":
            width, height = value
            return request.replace(width=width, height=height)
        if self.label == "Checkpoint name":
            return request.replace(model=value)
        return request.replace(**{self.field: value})

    def format(self, value: Any) -> str:
        """The value as the grid's legend shows it."""
        if self.label == "Nothing":
            return ""
        if self.label == "Size":
            text = f"{value[0]}x{value[1]}"
        elif self.label == "Checkpoint name":
            text = PurePosixPath(str(value)).name.removesuffix(".safetensors").removeprefix("builtin:")
        elif isinstance(value, float):
            text = f"{round(value, 8):g}"
        else:
            text = str(value)
        return f"{self.label}: {text}" if self.named else text


KINDS: tuple[AxisKind, ...] = (
    AxisKind("Nothing", str, named=False),
    AxisKind("Seed", int, "seed", hint="1, 2, 3 (-1: a random seed)"),
    AxisKind("Var. seed", int, "subseed", hint="1-4"),
    AxisKind("Var. strength", float, "subseed_strength", hint="0-1 [5]"),
    AxisKind("Steps", int, "steps", hint="10-30 (+10)"),
    AxisKind("Hires steps", int, "hr_second_pass_steps", hint="10, 20"),
    AxisKind("CFG Scale", float, "cfg_scale", hint="3-12 [4]"),
    AxisKind("Prompt S/R", str, named=False, hint="red, blue, green (the first is searched for in the prompt)"),
    AxisKind("Sampler", str, "sampler_name", named=False, hint=", ".join(samplers.sampler_names()[:4])),
    AxisKind("Schedule type", str, "schedule_type", named=False, hint=", ".join(samplers.SCHEDULE_TYPES)),
    AxisKind("Checkpoint name", str, "model", named=False, hint="model names from the picker, comma separated"),
    AxisKind("Clip skip", int, "clip_skip", hint="1-3"),
    AxisKind("Denoising", float, "denoising_strength", hint="0.3-0.9 [4] (image to image, or hires fix)"),
    AxisKind("Size", str, named=False, hint="512x512, 512x768, 768 (a square)"),
    AxisKind("LoRA weight", float, hint="0-1 [5] (the weight of the prompt's first <lora:NAME:w> tag)"),
)
BY_LABEL = {kind.label.lower(): kind for kind in KINDS}
LABELS = tuple(kind.label for kind in KINDS)


def kind_of(label: str) -> AxisKind:
    """The axis kind named ``label`` (case does not matter); ``BadRequest`` with the known ones if none."""
    kind = BY_LABEL.get(str(label).strip().lower())
    if kind is None:
        raise BadRequest(f"unknown axis type {label!r}; known: {', '.join(LABELS)}")
    return kind


@dataclass(frozen=True)
class Axis:
    """One axis as the artist typed it: its kind's label and its values text."""

    type: str = "Nothing"
    values: str = ""

    @property
    def kind(self) -> AxisKind:
        return kind_of(self.type)

    @property
    def used(self) -> bool:
        return self.kind.label != "Nothing"


def split_values(text: str) -> list[str]:
    """A comma list as CSV reads it (quotes keep commas in a value), each value stripped."""
    if not isinstance(text, str):
        raise BadRequest(f"axis values must be text, got {type(text).__name__}")
    rows = csv.reader(text.splitlines() or [""], skipinitialspace=True)
    return [value.strip() for row in rows for value in row if value.strip()]


def parse_values(name: str, kind: AxisKind, text: str) -> list[Any]:
    """The values of axis ``name`` ("X", "Y", "Z") of ``kind`` from ``text``, ranges expanded."""
    if kind.label == "Nothing":
        return [None]
    where = f"{name} axis ({kind.label})"
    items = split_values(text)
    if not items:
        raise BadRequest(f"{where} has no values: type some, e.g. {kind.hint}")
    values: list[Any] = []
    problems: list[str] = []
    for item in items:
        try:
            values += _expand(kind, item)
        except BadRequest as exc:
            problems += [f"{where}: {problem}" for problem in exc.problems]
        if len(values) > MAX_VALUES:
            raise BadRequest(f"{where} has more than {MAX_VALUES} values (at {item!r}): use fewer or a larger step")
    if problems:
        raise BadRequest(problems)
    return values


def _expand(kind: AxisKind, item: str) -> list[Any]:
    if kind.label == "Size":
        size = _SIZE.match(item)
        if size is None:
            raise BadRequest(f"{item!r} is not a size: write WIDTHxHEIGHT (512x768) or one side for a square")
        width = int(size.group(1))
        return [(width, int(size.group(2) or width))]
    if kind.value_type is int:
        return _int_values(item)
    if kind.value_type is float:
        return _float_values(item)
    return [item]


def _int_values(item: str) -> list[int]:
    found = _INT_RANGE.match(item)
    if found is None:
        number = _number(item, "a whole number")
        if not number.is_integer():
            raise BadRequest(f"{item!r} is not a whole number")
        return [int(number)]
    start, end = (int(found.group(i).replace(" ", "")) for i in (1, 2))
    if found.group(4) is not None:  # [count]: evenly spread, both ends included
        return [round(value) for value in _spread(item, start, end, int(found.group(4)))]
    step = int(found.group(3).replace(" ", "")) if found.group(3) else (1 if end >= start else -1)
    _check_step(item, start, end, step)
    return list(range(start, end + (1 if step > 0 else -1), step))


def _float_values(item: str) -> list[float]:
    found = _FLOAT_RANGE.match(item)
    if found is None:
        return [_number(item, "a number")]
    start, end = (float(found.group(i).replace(" ", "")) for i in (1, 2))
    if found.group(4) is not None:
        return _spread(item, start, end, int(found.group(4)))
    step = float(found.group(3).replace(" ", "")) if found.group(3) else (1.0 if end >= start else -1.0)
    _check_step(item, start, end, step)
    count = math.floor((end - start) / step + 1e-9) + 1  # the end is included when a step lands on it
    return [round(start + step * index, 8) for index in range(count)]


def _spread(item: str, start: float, end: float, count: int) -> list[float]:
    if not 1 <= count <= MAX_VALUES:
        raise BadRequest(f"{item!r} asks for {count} values: use 1 to {MAX_VALUES}")
    if count == 1:
        return [float(start)]
    return [round(start + (end - start) * index / (count - 1), 8) for index in range(count)]


def _check_step(item: str, start: float, end: float, step: float) -> None:
    if step == 0:
        raise BadRequest(f"{item!r} has a step of 0")
    if (end - start) * step < 0:
        raise BadRequest(f"{item!r} steps away from its end: use a {'negative' if end < start else 'positive'} step")
    if abs(end - start) / abs(step) + 1 > MAX_VALUES:
        raise BadRequest(f"{item!r} makes more than {MAX_VALUES} values: use a larger step")


def _number(item: str, what: str) -> float:
    try:
        number = float(item.replace(" ", ""))
    except ValueError:
        raise BadRequest(f"{item!r} is not {what}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{item!r} is not {what}")
    return number


def with_lora_weight(prompt: str, weight: float) -> str:
    """``prompt`` with its first ``<lora:NAME...>`` tag set to ``<lora:NAME:weight>`` (one weight for
    the text encoder and the UNet alike)."""
    return LORA_TAG.sub(lambda tag: f"<{tag.group(1)}:{tag.group(2)}:{round(weight, 8):g}>", prompt, count=1)


def problems_with(
    name: str, kind: AxisKind, values: list[Any], base: Txt2Img, models: Sequence[str] | None
) -> list[str]:
    """What is wrong with an axis's values for this request beyond their syntax (each message names
    the axis and the value); ranges of numbers are left to the request's own checks."""
    where = f"{name} axis ({kind.label})"
    problems: list[str] = []
    if kind.label == "Sampler":
        for value in values:
            try:
                samplers.resolve(value)
            except KeyError as exc:
                problems.append(f"{where}: {exc.args[0]}")
    elif kind.label == "Schedule type":
        known = {schedule.lower() for schedule in samplers.SCHEDULE_TYPES}
        problems += [
            f"{where}: unknown schedule type {value!r}; known: {', '.join(samplers.SCHEDULE_TYPES)}"
            for value in values
            if value.lower() not in known
        ]
    elif kind.label == "Prompt S/R" and values[0] not in base.prompt and values[0] not in base.negative_prompt:
        problems.append(f"{where}: {values[0]!r} (the first value) is in neither the prompt nor the negative prompt")
    elif kind.label == "LoRA weight" and not LORA_TAG.search(base.prompt):
        problems.append(f"{where}: the prompt has no <lora:NAME:weight> tag whose weight the values could set")
    elif kind.label == "Checkpoint name" and models is not None:
        problems += [f"{where}: unknown model {value!r}; known: {', '.join(models)}" for value in values
                     if match_model(value, models) is None]  # fmt: skip
    elif kind.label == "Denoising" and not (isinstance(base, Img2Img) or getattr(base, "enable_hr", False)):
        problems.append(f"{where}: denoising strength changes nothing in text to image without hires fix")
    elif kind.field and kind.field not in base.fields():
        problems.append(f"{where}: a {base.mode} request has no {kind.field}")
    return problems


def match_model(name: str, models: Sequence[str]) -> str | None:
    """The model ``name`` means: an exact name, else one whose name or file name (without
    ``.safetensors``) is ``name`` in any case, else the only one that contains it."""
    if name in models:
        return name
    wanted = name.strip().lower().removesuffix(".safetensors")

    def stem(model: str) -> str:
        return PurePosixPath(model).name.lower().removesuffix(".safetensors")

    exact = [model for model in models if model.lower().removesuffix(".safetensors") == wanted or stem(model) == wanted]
    if exact:
        return exact[0]
    partial = [model for model in models if wanted and wanted in model.lower()]
    return partial[0] if len(partial) == 1 else None
