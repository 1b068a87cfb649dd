"""LoRA for one job: tags in the prompt (``tags``), the files in ``models/Lora`` (``files``), and
applying them around a job's pipeline call (``apply``), leaving the model as loaded afterwards.

Tags and files import without torch (a page can parse prompts cheaply); ``applied`` loads torch,
diffusers and peft on first use.
"""

from __future__ import annotations

from typing import Any

from .files import LoraFile, LoraLibrary
from .tags import LoraTag, extract, merge, without_tags

__all__ = [
    "AppliedLoras",
    "LoraFile",
    "LoraLibrary",
    "LoraTag",
    "applied",
    "extract",
    "merge",
    "peft_state_dict",
    "without_tags",
]


def __getattr__(name: str) -> Any:
    if name in ("AppliedLoras", "applied", "peft_state_dict"):
        from . import apply

        return getattr(apply, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
