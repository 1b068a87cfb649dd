"""Live mode: the picture follows the typing and the brush.

A live session owns a ``LiveSlot`` (``slot.py``): the newest request replaces one that has not
started, one frame runs at a time, frames go through the engine's one fair queue but only when no
one else waits there, and a fixed seed keeps the picture still unless the input changes.

``live_request`` turns a tab's request into its live form: a few-step sampler (LCM, 4 steps, CFG 1.5
by default; one step without CFG for models made for it), one picture, nothing saved.
"""

from __future__ import annotations

import math

from ..requests import Img2Img, Inpaint, Txt2Img
from .slot import LiveFrame, LiveJob, LiveOutcome, LiveSessions, LiveSlot

__all__ = [
    "DEFAULT_CFG",
    "DEFAULT_STEPS",
    "MAX_STEPS",
    "SAMPLER",
    "LiveFrame",
    "LiveJob",
    "LiveOutcome",
    "LiveSessions",
    "LiveSlot",
    "default_steps",
    "is_fast_model",
    "live_request",
]

SAMPLER = "LCM"
DEFAULT_STEPS = 4
MAX_STEPS = 8
DEFAULT_CFG = 1.5  # LCM's sweet spot on ordinary models: a little guidance, without CFG's burn at few steps
FAST_CFG = 1.0  # models distilled for few steps have guidance baked in: 1 turns classifier-free guidance off
# Words in a model's name that say it was made to draw in one to a few steps.
FAST_MODEL_WORDS = ("turbo", "lightning", "hyper", "live", "lcm")


def is_fast_model(name: str) -> bool:
    """True for models made to draw in one to a few steps (sd-turbo, the live demo, LCM merges...)."""
    lowered = name.lower()
    return any(word in lowered for word in FAST_MODEL_WORDS)


def default_steps(model: str) -> int:
    """The live steps a model starts with: one for few-step models, four with LCM otherwise."""
    return 1 if is_fast_model(model) else DEFAULT_STEPS


def live_request(request: Txt2Img, steps: int, model: str) -> Txt2Img:
    """``request`` as one live frame of ``model``: the few-step sampler, ``steps`` denoising steps,
    one picture, no hires pass. An image-to-image request asks for enough steps that ``steps`` of
    them run at its strength (the engine runs ``steps * strength``; fewer than one would return the
    canvas unchanged)."""
    if isinstance(request, Inpaint):
        raise TypeError("live mode draws over the whole canvas: turn an Inpaint request into an Img2Img first")
    cfg = FAST_CFG if is_fast_model(model) else DEFAULT_CFG
    asked = steps
    if isinstance(request, Img2Img) and isinstance(request.denoising_strength, float | int):
        strength = float(request.denoising_strength)
        if 0 < strength < 1:
            asked = math.ceil(steps / strength)
            while int(asked * strength) < steps:  # the engine's own rounding, float error included
                asked += 1
    return request.replace(
        model=model, sampler_name=SAMPLER, schedule_type="Automatic", steps=asked, cfg_scale=cfg, batch_size=1,
        batch_count=1, enable_hr=False,
    )  # fmt: skip
