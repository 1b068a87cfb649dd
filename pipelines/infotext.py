"""A1111's "infotext": the parameters text that PNG readers, A1111 and its tools understand.

``infotext`` writes it; ``parse_infotext`` reads it back (from Atelier, A1111 or anything that copies
A1111's format) and ``request_fields`` turns what was read into request fields, for "reuse
parameters" and PNG Info's "send to". Reading never raises: artists paste all sorts of text.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from . import samplers
from .requests import MASKED_CONTENT, REFERENCE_MODES, Img2Img, Inpaint, Txt2Img

log = logging.getLogger(__name__)

VERSION = "atelier-0.1.0"

# The most text (characters) parse_infotext reads. A1111's prompts are a few KB and its parameters
# line a few hundred characters (a few KB with extensions' keys); 64 KiB leaves ten times that. The
# text is anyone's (PIL reads 1 MB chunks, the REST API takes any image), so the bound keeps what
# one image can cost small: parse time, and the size of what PNG Info sends back.
MAX_TEXT = 64 * 1024

# Pieces of one "key: value" pair of the parameters line. Each matches one run of one character
# class, so a match never backtracks; parameter_pairs strings them together in a single pass.
_SPACES = re.compile(r"\s*")
_KEY = re.compile(r"\w[\w \-/]*")
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"

_INTS = {
    "Steps": "steps",
    "Seed": "seed",
    "Size-1": "width",
    "Size-2": "height",
    "Clip skip": "clip_skip",
    "Mask blur": "mask_blur",
    "Masked area padding": "only_masked_padding",
    "Variation seed": "subseed",
    "Seed resize from-1": "seed_resize_from_w",
    "Seed resize from-2": "seed_resize_from_h",
    "Hires resize-1": "hr_resize_x",
    "Hires resize-2": "hr_resize_y",
    "Hires steps": "hr_second_pass_steps",
}
_FLOATS = {
    "CFG scale": "cfg_scale",
    "Denoising strength": "denoising_strength",
    "Reference strength": "reference_strength",
    "Reference fidelity": "reference_fidelity",
    "Reference start": "reference_start",
    "Reference end": "reference_end",
    "Variation seed strength": "subseed_strength",
    "Hires upscale": "hr_scale",
}
_HASH = re.compile(r"^[0-9a-f]{8,64}$")
# Inpaint choices: A1111 key -> (field, value when the key is absent from an inpaint infotext, words -> value).
_CHOICES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "Inpaint area": ("only_masked", False, {"only masked": True, "whole picture": False}),
    "Mask mode": ("invert_mask", False, {"inpaint not masked": True, "inpaint masked": False}),
    "Masked content": ("masked_content", "original", {name: name for name in MASKED_CONTENT}),
}
_INPAINT_KEYS = ("Mask blur", "Masked area padding", *_CHOICES)


def infotext(
    request: Txt2Img,
    seed: int,
    width: int,
    height: int,
    model_name: str,
    model_hash: str,
    subseed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The infotext of one image, keys in A1111's order. ``subseed`` is this image's variation seed
    (the request's may be -1, random); ``extra`` holds keys the engine found out while running
    ("Lora hashes", "TI hashes"), placed before the version."""
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": request.schedule_type,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name.removeprefix("builtin:").rsplit("/", 1)[-1].removesuffix(".safetensors"),
    }
    if request.subseed_strength:
        chosen = request.subseed if subseed is None else subseed
        params |= {"Variation seed": chosen, "Variation seed strength": request.subseed_strength}
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
    hires = request.enable_hr and not isinstance(request, Img2Img)
    if isinstance(request, Img2Img) or hires:
        params["Denoising strength"] = request.denoising_strength
    if request.clip_skip > 1:
        params["Clip skip"] = request.clip_skip
    if isinstance(request, Inpaint):
        params["Mask blur"] = request.mask_blur
        if request.only_masked:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.only_masked_padding
        if request.masked_content != "original":
            params["Masked content"] = request.masked_content
        if request.invert_mask:
            params["Mask mode"] = "Inpaint not masked"
    if hires:
        params |= _hires(request)
    params |= _reference(request)
    params |= dict(extra or {})
    params["Version"] = VERSION
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"{_NEGATIVE} {request.negative_prompt}")
    lines.append(", ".join(f"{key}: {_value(value)}" for key, value in params.items() if _value(value) != ""))
    return "\n".join(lines)


def _hires(request: Txt2Img) -> dict[str, Any]:
    """A1111's hires keys: a resize target replaces the scale when one is set."""
    params: dict[str, Any] = {}
    if request.hr_resize_x or request.hr_resize_y:
        params["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
    else:
        params["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        params["Hires steps"] = request.hr_second_pass_steps
    return params | {"Hires upscaler": request.hr_upscaler}


def _reference(request: Txt2Img) -> dict[str, Any]:
    """The reference a picture followed: its mode, weights and the hash it is kept under beside the
    outputs, so that reusing the picture's parameters brings the reference back too."""
    if request.reference_image is None and not request.reference_hash:
        return {}
    params: dict[str, Any] = {
        "Reference": request.reference_mode,
        "Reference strength": request.reference_strength,
        "Reference fidelity": request.reference_fidelity,
    }
    if (request.reference_start, request.reference_end) != (0.0, 1.0):
        params |= {"Reference start": request.reference_start, "Reference end": request.reference_end}
    return params | {"Reference hash": request.reference_hash}


def _value(value: Any) -> str:
    # str() is the shortest text that reads back as the same float, so the image can be reproduced
    # (":g" kept only 6 digits: a cfg_scale of 7.1234567 came back as 7.12346).
    text = str(value).removesuffix(".0") if isinstance(value, float) else str(value)
    if any(c in text for c in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def parse_infotext(text: str) -> dict[str, Any]:
    """``prompt``, ``negative_prompt`` and every parameter under its A1111 key, values as text.

    Follows A1111's reader: the last line holds the parameters only if it has at least 3
    ``key: value`` pairs (otherwise it is prompt text); everything after a line starting with
    "Negative prompt:" is the negative prompt; ``WxH`` values are split into ``<key>-1``/``<key>-2``
    (``Size-1`` is the width). Unlike A1111, prompt lines are not stripped, so Atelier's own
    infotexts give back their prompts exactly. A JSON object (Fooocus) gives only its prompts.
    A text longer than ``MAX_TEXT`` gives only its lines within the bound, as prompts, and a
    ``notes`` entry saying what was not read.
    """
    text = text.replace("\r\n", "\n").rstrip() if isinstance(text, str) else ""
    if len(text) > MAX_TEXT:
        return _cut_short(text)
    if text.startswith("{") and (data := _json_object(text)) is not None:
        return _prompts([]) | {
            key: data[key] for key in ("prompt", "negative_prompt") if isinstance(data.get(key), str)
        }
    *lines, last = text.split("\n")
    pairs = parameter_pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
    return _prompts(lines) | _parameters(pairs)


def _cut_short(text: str) -> dict[str, Any]:
    """What a text over the bound gives: its whole lines within the bound, read as prompt lines.

    The parameters line is the last one, past the bound; a line the bound cuts is left out rather
    than read as a shorter prompt that the image never had.
    """
    head = text[: MAX_TEXT + 1]
    lines = head[: head.rfind("\n")].split("\n") if "\n" in head else []
    log.warning("an infotext of %d characters was cut to its lines within the first %d", len(text), MAX_TEXT)
    notes = (
        f"This parameters text is {len(text):,} characters long, more than the {MAX_TEXT:,} read: "
        f"its generation parameters (the last line) and any line past character {MAX_TEXT:,} were not read."
    )
    return _prompts(lines) | {"notes": notes}


def _prompts(lines: list[str]) -> dict[str, str]:
    """Prompt and negative prompt of the lines before the parameters line."""
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.lstrip().startswith(_NEGATIVE):
            rest = line.lstrip()[len(_NEGATIVE) :]
            negative = [rest.removeprefix(" ")]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative or [])}


def _parameters(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Values under their keys, unquoted, ``WxH`` split in two."""
    params: dict[str, str] = {}
    for key, raw in pairs:
        value = _unquote(raw.strip())
        size = _SIZE.match(value)
        if size:
            params[f"{key}-1"], params[f"{key}-2"] = size.groups()
        else:
            params[key] = value
    return params


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """The ``key: value`` pairs of a parameters line, in order, each value as written (quotes kept).

    A key is a word character, then word characters, spaces, dashes and slashes; a value is either a
    JSON-quoted string followed by a comma or the line's end, or the text up to the next comma. Text
    that fits neither is skipped. This reads a line as A1111's pattern does, but in one pass: the
    pattern, tried again at every character, rescanned the rest of a line holding no pair, so a 1 MB
    line took hours with the GIL held.
    """
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(line):
        pair, pos = _pair_from(line, pos)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _pair_from(line: str, start: int) -> tuple[tuple[str, str] | None, int]:
    """The pair that begins at ``start`` (after blanks) and where the next one may begin; or None
    and the first place worth trying next (always past ``start``)."""
    key_start = _after_spaces(line, start)
    key = _KEY.match(line, key_start)
    if key is None:
        return None, key_start + 1
    if not line.startswith(":", key.end()):
        # Every start up to here reaches the same key run and the same missing colon.
        return None, key.end()
    value_start = _after_spaces(line, key.end() + 1)
    closing = _closing_quote(line, value_start)
    if closing != -1 and (closing + 1 == len(line) or line[closing + 1] == ","):
        return (key.group(), line[value_start : closing + 1]), closing + 2
    comma = line.find(",", value_start)
    value_end = len(line) if comma == -1 else comma
    return (key.group(), line[value_start:value_end]), value_end + 1


def _after_spaces(line: str, pos: int) -> int:
    spaces = _SPACES.match(line, pos)
    return spaces.end() if spaces else pos


def _closing_quote(line: str, start: int) -> int:
    """Index of the quote closing a JSON-style string that opens at ``start``; -1 if none opens or
    it never closes. A quote is escaped when an odd run of backslashes stands right before it."""
    if not line.startswith('"', start):
        return -1
    pos = start + 1
    while (quote := line.find('"', pos)) != -1:
        before = line[pos:quote]
        if (len(before) - len(before.rstrip("\\"))) % 2 == 0:
            return quote
        pos = quote + 1
    return -1


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            unquoted = json.loads(value)
        except ValueError:
            return value
        return unquoted if isinstance(unquoted, str) else value
    return value


def _json_object(text: str) -> dict[str, Any] | None:
    """The object of a JSON text (Fooocus's metadata), or None: "{red|blue} car" is a prompt."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def request_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Request fields (Atelier's names and types) from ``parse_infotext``'s result.

    Values that do not convert, unknown samplers and unknown keys are left out rather than raising:
    this feeds "reuse parameters", where a half-read file should still fill what it can. As in
    A1111, a parameters line without "Clip skip" means clip skip 1, and an inpaint infotext without
    "Inpaint area"/"Mask mode"/"Masked content" means whole picture/inpaint masked/original.
    """
    if not isinstance(params, Mapping):
        return {}
    fields: dict[str, Any] = {}
    for key in ("prompt", "negative_prompt"):
        if isinstance(params.get(key), str):
            fields[key] = params[key]
    for key, name in _INTS.items():
        if (number := _to_int(params.get(key))) is not None:
            fields[name] = number
    for key, name in _FLOATS.items():
        if (real := _to_float(params.get(key))) is not None:
            fields[name] = real
    fields.update(_sampler(params.get("Sampler"), params.get("Schedule type")))
    model = params.get("Model")
    if isinstance(model, str) and model.strip():
        fields["model"] = model.strip()
    if "Steps" in params and "Clip skip" not in params:
        fields["clip_skip"] = 1
    reference = params.get("Reference")
    if isinstance(reference, str) and reference.strip() in REFERENCE_MODES:
        fields["reference_mode"] = reference.strip()
    digest = params.get("Reference hash")
    if isinstance(digest, str) and _HASH.match(digest.strip()):
        fields["reference_hash"] = digest.strip()
    if any(key in params for key in ("Hires upscaler", "Hires upscale", "Hires resize-1")):
        fields["enable_hr"] = True
        if isinstance(upscaler := params.get("Hires upscaler"), str) and upscaler.strip():
            fields["hr_upscaler"] = upscaler.strip()
    elif "Steps" in params:
        fields["enable_hr"] = False  # A1111's reader: a picture without hires keys had no hires pass
    inpaint = any(key in params for key in _INPAINT_KEYS)
    for key, (name, absent, words) in _CHOICES.items():
        value = params.get(key)
        if isinstance(value, str) and value.strip().lower() in words:
            fields[name] = words[value.strip().lower()]
        elif inpaint and key not in params:
            fields[name] = absent
    return fields


def _sampler(name: Any, schedule: Any) -> dict[str, str]:
    """Sampler and schedule type, old one-word names ("DPM++ 2M Karras") included; {} if unknown."""
    if not isinstance(name, str) or not name.strip():
        return {}
    # An unknown schedule type (A1111 has more than diffusers) falls back to the sampler alone.
    for wanted in (schedule if isinstance(schedule, str) and schedule.strip() else None, None):
        try:
            sampler, schedule_type = samplers.resolve(name.strip(), wanted and wanted.strip())
        except KeyError:
            continue
        return {"sampler_name": sampler.name, "schedule_type": schedule_type}
    return {}


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        real = _to_float(text)  # "4.0" is a whole number too
        return int(real) if real is not None and real.is_integer() else None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        real = float(str(value).strip())
    except ValueError:
        return None
    return real if math.isfinite(real) else None
