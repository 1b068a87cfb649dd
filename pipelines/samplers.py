"""A1111 sampler names mapped to diffusers schedulers.

Artists know samplers by A1111's names ("DPM++ 2M", schedule type "Karras"), and older files say
"DPM++ 2M Karras" in one word. Schedulers keep per-run state, so every request gets a fresh one
built from the model's own scheduler config (betas, prediction type) plus the sampler's options.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ("Automatic", "Karras", "Exponential")  # what diffusers offers for it


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, ("k_dpmpp_2m",)),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        ("k_dpmpp_2m_sde",),
    ),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "euler_ancestral"), ("Automatic",)),
    Sampler("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", {}, ("k_heun",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",)),
    Sampler("DDIM", "DDIMScheduler", {}, ("ddim",), ("Automatic",)),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("plms",), ("Automatic",)),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
    Sampler("DEIS", "DEISMultistepScheduler", {}, ("deis",)),
    Sampler("LCM", "LCMScheduler", {}, ("lcm",), ("Automatic",)),
)

# Schedule type -> the scheduler option that turns it on ("Automatic" keeps the scheduler's own).
SCHEDULE_TYPES: dict[str, str | None] = {
    "Automatic": None,
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
}

DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULE = "Karras"


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def resolve(sampler_name: str, schedule_type: str | None = None) -> tuple[Sampler, str]:
    """Find the sampler and schedule type for A1111 names, old one-word forms included.

    Raises ``KeyError`` with the known names when nothing matches (and for names that are not text).
    """
    if not isinstance(sampler_name, str):
        raise KeyError(f"sampler_name must be text, got {type(sampler_name).__name__}")
    wanted = _key(sampler_name)
    schedule = schedule_type or "Automatic"
    for suffix in SCHEDULE_TYPES:
        if suffix != "Automatic" and wanted.endswith(" " + suffix.lower()):
            wanted = wanted[: -len(suffix) - 1]
            if schedule_type in (None, "", "Automatic"):
                schedule = suffix
    for sampler in SAMPLERS:
        if wanted == _key(sampler.name) or wanted in (_key(a) for a in sampler.aliases):
            break
    else:
        raise KeyError(f"unknown sampler '{sampler_name}'; known: {', '.join(sampler_names())}")
    if schedule_type is not None and not isinstance(schedule_type, str):
        raise KeyError(f"schedule_type must be text, got {type(schedule_type).__name__}")
    matches = [t for t in SCHEDULE_TYPES if t.lower() == schedule.lower()]
    if not matches:
        raise KeyError(f"unknown schedule type '{schedule}'; known: {', '.join(SCHEDULE_TYPES)}")
    return sampler, matches[0]


def build_scheduler(base_config: dict[str, Any], sampler_name: str, schedule_type: str | None = None) -> Any:
    """A new scheduler for one request, made from the model's scheduler config."""
    import diffusers

    sampler, schedule = resolve(sampler_name, schedule_type)
    cls = getattr(diffusers, sampler.scheduler_class)
    options = dict(sampler.options)
    flag = SCHEDULE_TYPES[schedule]
    if flag is not None and flag in inspect.signature(cls.__init__).parameters:
        options[flag] = True
    return cls.from_config(base_config, **options)
