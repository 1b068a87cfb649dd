"""A1111's "infotext": the parameters text that PNG readers, A1111 and its tools understand.

``infotext`` writes it; ``parse_infotext`` reads it back (from Atelier, A1111 or anything that copies
A1111's format) and ``request_fields`` turns what was read into request fields, for "reuse
parameters" and PNG Info's "send to". Reading never raises: artists paste all sorts of text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from . import samplers
from .requests import MASKED_CONTENT, Img2Img, Inpaint, Txt2Img

VERSION = "atelier-0.1.0"

# One "key: value" pair of the parameters line, as A1111 reads it: the value is either JSON-quoted
# (and may then hold commas, colons and escaped newlines) or runs to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
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
}
_FLOATS = {"CFG scale": "cfg_scale", "Denoising strength": "denoising_strength"}
# Inpaint choices: A1111 key -> (field, value when the key is absent from an inpaint infotext, words -> value).
_CHOICES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "Inpaint area": ("only_masked", False, {"only masked": True, "whole picture": False}),
    "Mask mode": ("invert_mask", False, {"inpaint not masked": True, "inpaint masked": False}),
    "Masked content": ("masked_content", "original", {name: name for name in MASKED_CONTENT}),
}
_INPAINT_KEYS = ("Mask blur", "Masked area padding", *_CHOICES)


def infotext(request: Txt2Img, seed: int, width: int, height: int, model_name: str, model_hash: str) -> str:
    """The infotext of one image, keys in A1111's order."""
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
    if isinstance(request, Img2Img):
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
    params["Version"] = VERSION
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"{_NEGATIVE} {request.negative_prompt}")
    lines.append(", ".join(f"{key}: {_value(value)}" for key, value in params.items() if _value(value) != ""))
    return "\n".join(lines)


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
    """
    result: dict[str, Any] = {"prompt": "", "negative_prompt": ""}
    text = text.replace("\r\n", "\n").rstrip() if isinstance(text, str) else ""
    if text.startswith("{") and (data := _json_object(text)) is not None:
        return result | {key: data[key] for key in result if isinstance(data.get(key), str)}
    *lines, last = text.split("\n")
    pairs = _PAIR.findall(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
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
    result.update(prompt="\n".join(prompt), negative_prompt="\n".join(negative or []))
    for key, raw in pairs:
        value = _unquote(raw.strip())
        size = _SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.groups()
        else:
            result[key] = value
    return result


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
