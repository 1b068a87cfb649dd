"""LoRA tags written in a prompt: ``<lora:name>``, ``<lora:name:0.8>``, ``<lora:name:0.5:1.0>``.

The tag syntax is A1111's extra-network syntax: ``lora`` or ``lyco`` (LyCORIS files go through the
same loader), the file's name as the LoRA library lists it, then up to two weights. One weight
applies to the text encoder and the UNet alike; with two, the first is the text encoder's and the
second the UNet's. Weights may also be written by key (``te=0.5``, ``unet=1.2``). A missing weight
is 1.0.

The same name written twice is one LoRA applied once with the weights added, per part: applying a
LoRA's change twice, scaled w1 and w2, is adding it once scaled w1 + w2, so this is what stacking the
tags means (A1111 keeps only the last, which silently drops a weight the artist wrote).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import BadRequest

# A name is anything up to the next ':' or '>': file names have spaces, dots, dashes and
# subfolders ("styles/ink wash"); weights follow, separated by ':'.
_TAG = re.compile(r"<(lora|lyco):([^:<>]*)((?::[^:<>]*)*)>", re.IGNORECASE)
_KEYS = {"te": "te_weight", "unet": "unet_weight"}
# Weights past this are a typo (a missing dot: <lora:x:08>), never a look anyone wants.
MAX_WEIGHT = 20.0


@dataclass(frozen=True)
class LoraTag:
    """One LoRA a prompt asks for, with the weight for each part of the model."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0

    def text(self) -> str:
        """The tag as a prompt writes it, shortest form first (what a UI inserts for a pick)."""
        if self.te_weight == self.unet_weight:
            return f"<lora:{self.name}:{_number(self.unet_weight)}>"
        return f"<lora:{self.name}:{_number(self.te_weight)}:{_number(self.unet_weight)}>"


def extract(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt the model reads (tags taken out) and the LoRAs asked for, in first-mention order,
    one per name (see the module note on repeated names). Raises ``BadRequest`` naming each
    malformed tag."""
    problems: list[str] = []
    found: list[LoraTag] = []
    for match in _TAG.finditer(prompt):
        try:
            found.append(_parse(match))
        except ValueError as exc:
            problems.append(f"LoRA tag {match.group(0)}: {exc}")
    if problems:
        raise BadRequest(problems)
    return without_tags(prompt), merge(found)


def without_tags(prompt: str) -> str:
    """The prompt with every tag taken out, well-formed or not, never raising: for a token counter
    that runs on each keystroke (``extract`` is what checks them)."""
    text, removed = _TAG.subn("", prompt)
    if not removed:
        return prompt  # a prompt without tags reaches the model exactly as written
    # Only the blanks a removed tag leaves behind go; the artist's line breaks stay.
    return "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip() for line in text.split("\n")).strip()


def merge(tags: list[LoraTag]) -> list[LoraTag]:
    """One tag per name, weights added, in first-mention order."""
    merged: dict[str, LoraTag] = {}
    for tag in tags:
        before = merged.get(tag.name)
        if before is None:
            merged[tag.name] = tag
        else:
            merged[tag.name] = LoraTag(tag.name, before.te_weight + tag.te_weight, before.unet_weight + tag.unet_weight)
    return list(merged.values())


def _parse(match: re.Match[str]) -> LoraTag:
    name = match.group(2).strip()
    if not name:
        raise ValueError("the LoRA name is empty (write <lora:name:weight>)")
    fields = [field.strip() for field in match.group(3).split(":")[1:]]
    if len(fields) > 2:
        raise ValueError(f"{len(fields)} weights given; write one (both parts) or two (text encoder, UNet)")
    weights: dict[str, float] = {}
    positional = ["te_weight", "unet_weight"]
    for index, field in enumerate(fields):
        key, _, value = field.rpartition("=")
        if key:
            if key.strip().lower() not in _KEYS:
                raise ValueError(f"unknown weight key {key.strip()!r} (known: te, unet)")
            slot = _KEYS[key.strip().lower()]
        else:
            slot = positional[index]
        weights[slot] = _weight(value.strip())
    if len(fields) == 1 and "=" not in fields[0]:
        weights["unet_weight"] = weights["te_weight"]  # one number: the whole LoRA at that weight
    return LoraTag(name, weights.get("te_weight", 1.0), weights.get("unet_weight", 1.0))


def _weight(text: str) -> float:
    if not text:
        raise ValueError("a weight is empty (write a number such as 0.8)")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"weight {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
        raise ValueError(f"weight {text!r} is out of range (-{MAX_WEIGHT:g} to {MAX_WEIGHT:g})")
    return value


def _number(value: float) -> str:
    return str(value).removesuffix(".0")
