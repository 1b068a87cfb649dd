"""A1111 sampler names mapped to diffusers schedulers.

Artists know samplers by A1111's names ("DPM++ 2M", schedule type "Karras"), and older files say
"DPM++ 2M Karras" in one word. Schedulers keep per-run state, so every request gets a fresh one
built from the model's own scheduler config (betas, prediction type) plus the sampler's options.

Few-step sampling: LCM and TCD make their own schedule, which always starts at the last training
step; other samplers get that through the schedule type "SGM Uniform" (diffusers' trailing
timestep spacing), which turbo models need: with leading or linspace spacing one step runs at
timestep 1 or 0, where there is nothing left to denoise, and the picture stays noise.
``suggested_cfg``/``suggested_steps``/``suggested_schedule`` give the values those samplers and
models are meant to run with.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

# TCD's stochastic share ("gamma", the ``eta`` of its step), Forge's default for its TCD sampler.
TCD_GAMMA = 0.3
# CFG and steps that LCM- and TCD-style samplers are made for (their CFG range is 1-2).
FEW_STEP_CFG = 1.5
FEW_STEP_STEPS = 4
FEW_STEP_SAMPLERS = ("LCM", "TCD")
# Turbo models are trained to draw in one step without CFG (a scale of 0 or 1 turns CFG off).
TURBO_CFG = 0.0
TURBO_STEPS = 1
TURBO_SCHEDULE = "SGM Uniform"
LIVE_DEMO_MODEL = "builtin:demo-live"

ALL_SCHEDULES = ("Automatic", "Karras", "Exponential", "SGM Uniform")
# LCM and TCD set their own timesteps from the last training step on (999, 759, 499, 259 for 4
# steps): "SGM Uniform" is what they already do, kept so Forge's usual pairing reproduces as written.
OWN_SCHEDULE = ("Automatic", "SGM Uniform")


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ALL_SCHEDULES  # what diffusers offers for it


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, ("k_dpmpp_2m",)),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        ("k_dpmpp_2m_sde",),
    ),
    Sampler(
        "Euler a",
        "EulerAncestralDiscreteScheduler",
        {},
        ("k_euler_a", "euler_ancestral"),
        ("Automatic", "SGM Uniform"),
    ),
    Sampler("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", {}, ("k_heun",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",)),
    Sampler("DDIM", "DDIMScheduler", {}, ("ddim",), ("Automatic", "SGM Uniform")),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("plms",), ("Automatic", "SGM Uniform")),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
    Sampler("DEIS", "DEISMultistepScheduler", {}, ("deis",)),
    Sampler("LCM", "LCMScheduler", {}, ("lcm",), OWN_SCHEDULE),
    Sampler("TCD", "TCDScheduler", {}, ("tcd",), OWN_SCHEDULE),
)

# Schedule type -> the scheduler option that turns it on: a name (set to True) or (name, value);
# None for "Automatic", which keeps the model's own.
SCHEDULE_TYPES: dict[str, str | tuple[str, Any] | None] = {
    "Automatic": None,
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "SGM Uniform": ("timestep_spacing", "trailing"),
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
    tcd = sampler.scheduler_class == "TCDScheduler"
    cls: Any = _tcd_with_gamma() if tcd else getattr(diffusers, sampler.scheduler_class)
    options = dict(sampler.options)
    accepted = inspect.signature(cls.__init__).parameters
    flag = SCHEDULE_TYPES[schedule]
    if flag is not None:
        option, value = (flag, True) if isinstance(flag, str) else flag
        if option in accepted:
            options[option] = value
    # Another scheduler's own options (PNDM's skip_prk_steps in SD's config) would be ignored with a
    # warning on every request: left out here instead. Private keys (_class_name ...) stay.
    config = {key: value for key, value in dict(base_config).items() if key.startswith("_") or key in accepted}
    return cls.from_config(config, **options)


@functools.cache
def _tcd_with_gamma() -> Any:
    """TCD with its gamma fixed: pipelines pass their own ``eta`` (0.0 by default) to any step that
    takes one, which would always turn TCD's stochastic part off; this step takes none."""
    from diffusers import TCDScheduler

    class GammaTCDScheduler(TCDScheduler):
        gamma = TCD_GAMMA

        def step(
            self, model_output: Any, timestep: Any, sample: Any, generator: Any = None, return_dict: bool = True
        ) -> Any:
            parent = super().step  # type: ignore[misc]  # diffusers is untyped here
            return parent(model_output, timestep, sample, eta=self.gamma, generator=generator, return_dict=return_dict)

    return GammaTCDScheduler


# -- presets for few-step sampling -----------------------------------------------------------------
def is_turbo_model(model_name: str) -> bool:
    """Models made to draw in one step without CFG: "*turbo*" (sd-turbo, sdxl-turbo) and the live demo."""
    if not isinstance(model_name, str):
        return False
    name = model_name.strip().lower()
    return "turbo" in name or name == LIVE_DEMO_MODEL


def _few_step_sampler(sampler_name: str) -> bool:
    try:
        return resolve(sampler_name)[0].name in FEW_STEP_SAMPLERS
    except KeyError:
        return False


def suggested_cfg(sampler_name: str, model_name: str = "") -> float | None:
    """The CFG scale this sampler and model are made for, or None to leave the user's value.

    A turbo model wins over the sampler: it was trained without CFG, whatever samples it.
    """
    if is_turbo_model(model_name):
        return TURBO_CFG
    return FEW_STEP_CFG if _few_step_sampler(sampler_name) else None


def suggested_steps(sampler_name: str, model_name: str = "") -> int | None:
    """The step count this sampler and model are made for, or None to leave the user's value."""
    if is_turbo_model(model_name):
        return TURBO_STEPS
    return FEW_STEP_STEPS if _few_step_sampler(sampler_name) else None


def suggested_schedule(sampler_name: str, model_name: str = "") -> str | None:
    """The schedule type to run with, or None to leave the user's.

    "SGM Uniform" for a turbo model on a sampler that offers it; "Automatic" for LCM and TCD (their
    own schedule, so the page's default "Karras" does not end in a fallback note).
    """
    try:
        sampler = resolve(sampler_name)[0]
    except KeyError:
        return None
    if is_turbo_model(model_name) and TURBO_SCHEDULE in sampler.schedules:
        return TURBO_SCHEDULE
    return "Automatic" if sampler.name in FEW_STEP_SAMPLERS else None


def suggested_fields(sampler_name: str, model_name: str = "") -> dict[str, Any]:
    """The request fields (``cfg_scale``, ``steps``, ``schedule_type``) to change for this sampler
    and model; the ones without a suggestion are left out."""
    values = {
        "cfg_scale": suggested_cfg(sampler_name, model_name),
        "steps": suggested_steps(sampler_name, model_name),
        "schedule_type": suggested_schedule(sampler_name, model_name),
    }
    return {name: value for name, value in values.items() if value is not None}
