"""A1111's "infotext": the parameters text that PNG readers, A1111 and its tools understand."""

from __future__ import annotations

import json
from typing import Any

from .requests import Img2Img, Inpaint, Txt2Img

VERSION = "atelier-0.1.0"


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
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(f"{key}: {_value(value)}" for key, value in params.items() if _value(value) != ""))
    return "\n".join(lines)


def _value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if any(c in text for c in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text
