"""Few-step samplers: LCM, TCD and trailing timesteps ("SGM Uniform"), and the CFG/steps presets.

Schedules are checked by their timesteps; pictures by what ``pipelines.scenes.analyse`` reads in
them on the built-in demo model (64 px, 4-8 steps, two seeds).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

from pipelines import samplers, scenes
from pipelines.engine import Engine
from pipelines.infotext import infotext, parse_infotext, request_fields
from pipelines.requests import Txt2Img

# Stable Diffusion 1's scheduler config: "leading" spacing, as most checkpoints ship it.
SD1_SCHEDULER = Path(samplers.__file__).parent / "configs" / "sd1" / "scheduler" / "scheduler_config.json"


@pytest.fixture(scope="module")
def demo_config(engine: Engine) -> Any:
    return engine.manager.get("builtin:demo").pipe.scheduler.config


@pytest.fixture(scope="module")
def leading_config() -> dict[str, Any]:
    config = json.loads(SD1_SCHEDULER.read_text())
    assert config.get("timestep_spacing", "leading") == "leading"
    return config


def timesteps(config: Any, sampler: str, schedule: str, steps: int) -> list[int]:
    scheduler = samplers.build_scheduler(config, sampler, schedule)
    scheduler.set_timesteps(steps)
    return [round(float(t)) for t in scheduler.timesteps]


@pytest.mark.parametrize("sampler", ["LCM", "TCD"])
def test_lcm_and_tcd_take_as_many_steps_as_asked_from_the_last_training_step(demo_config: Any, sampler: str) -> None:
    expected = {1: [999], 2: [999, 499], 4: [999, 759, 499, 259]}
    for steps, wanted in expected.items():
        assert timesteps(demo_config, sampler, "Automatic", steps) == wanted
        # Their own schedule already is trailing: "SGM Uniform" names it and changes nothing.
        assert timesteps(demo_config, sampler, "SGM Uniform", steps) == wanted
    built = samplers.build_scheduler(demo_config, sampler)
    assert isinstance(built, getattr(diffusers, f"{sampler}Scheduler"))
    assert built.config.prediction_type == demo_config.prediction_type  # the model's own config carries over


def test_trailing_timesteps_start_at_the_last_training_step(leading_config: dict[str, Any]) -> None:
    offering = [s.name for s in samplers.SAMPLERS if "SGM Uniform" in s.schedules]
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "UniPC", "DDIM", "LCM", "TCD"} <= set(offering)
    for name in offering:
        for steps in (1, 4):
            assert timesteps(leading_config, name, "SGM Uniform", steps)[0] == 999, (name, steps)
    # What the schedule type fixes: leading DDIM starts 250 steps short of pure noise at 4 steps,
    # and one Euler step from linspace spacing lands on timestep 0 (no denoising at all).
    assert timesteps(leading_config, "DDIM", "Automatic", 4) == [751, 501, 251, 1]
    assert timesteps(leading_config, "DDIM", "SGM Uniform", 4) == [999, 749, 499, 249]
    assert timesteps(leading_config, "Euler", "Automatic", 1) == [0]
    assert timesteps(leading_config, "Euler", "SGM Uniform", 1) == [999]
    built = samplers.build_scheduler(leading_config, "Euler", "SGM Uniform")
    assert built.config.timestep_spacing == "trailing" and built.config.use_karras_sigmas is False


@pytest.mark.parametrize(
    ("sampler", "schedule", "steps", "cfg"),
    [("LCM", "Automatic", 4, 1.5), ("TCD", "Automatic", 4, 1.5), ("Euler", "SGM Uniform", 4, 7.0)],
)  # fmt: skip
def test_few_steps_draw_a_red_circle(engine: Engine, sampler: str, schedule: str, steps: int, cfg: float) -> None:
    request = Txt2Img("a red circle", sampler_name=sampler, schedule_type=schedule, steps=steps, cfg_scale=cfg,
                      seed=3, batch_size=2, width=64, height=64)  # fmt: skip
    result = engine.generate(request)
    readings = [scenes.analyse(image) for image in result.images]
    assert [r.colour for r in readings] == ["red", "red"], readings
    assert [r.shape for r in readings].count("circle") >= 1, readings
    assert (result.request.sampler_name, result.request.schedule_type) == (sampler, schedule)


def test_tcd_keeps_its_gamma_whatever_eta_the_pipeline_passes(demo_config: Any) -> None:
    """Pipelines pass ``eta`` (0 by default) to any step that takes one; TCD's step takes none, so
    its stochastic part (gamma 0.3) stays on, and the seed decides the noise it adds."""
    scheduler = samplers.build_scheduler(demo_config, "TCD")
    assert "eta" not in inspect.signature(scheduler.step).parameters
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    output = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def one_step(seed: int) -> torch.Tensor:
        fresh = samplers.build_scheduler(demo_config, "TCD")
        fresh.set_timesteps(4)
        generator = torch.Generator().manual_seed(seed)
        return fresh.step(output, fresh.timesteps[0], sample, generator=generator).prev_sample

    assert torch.equal(one_step(5), one_step(5))
    assert (one_step(5) - one_step(6)).abs().mean() > 1e-3


@pytest.mark.parametrize(
    ("name", "schedule", "expected"),
    [("tcd", None, ("TCD", "Automatic")), ("TcD", "sgm uniform", ("TCD", "SGM Uniform")),
     ("LCM", "Automatic", ("LCM", "Automatic")), ("lcm", "SGM UNIFORM", ("LCM", "SGM Uniform")),
     ("Euler SGM Uniform", None, ("Euler", "SGM Uniform")), ("k_euler_a", "Sgm Uniform", ("Euler a", "SGM Uniform")),
     ("dpm++_2m sgm uniform", "Automatic", ("DPM++ 2M", "SGM Uniform"))],
)  # fmt: skip
def test_names_and_aliases_resolve_in_any_case(name: str, schedule: str | None, expected: tuple[str, str]) -> None:
    sampler, schedule_type = samplers.resolve(name, schedule)
    assert (sampler.name, schedule_type) == expected


def test_schedules_a_sampler_lacks_fall_back_with_a_note() -> None:
    request, notes = Txt2Img(sampler_name="tcd", schedule_type="karras").checked()
    assert (request.sampler_name, request.schedule_type) == ("TCD", "Automatic")
    assert notes == ["TCD has no Karras schedule here: using Automatic"]
    request, notes = Txt2Img(sampler_name="euler a", schedule_type="SGM Uniform").checked()
    assert (request.sampler_name, request.schedule_type, notes) == ("Euler a", "SGM Uniform", [])
    with pytest.raises(KeyError, match=r"unknown schedule type 'Beta'.*SGM Uniform"):
        samplers.resolve("Euler", "Beta")


@pytest.mark.parametrize(("sampler", "schedule"), [("Euler", "SGM Uniform"), ("TCD", "Automatic"),
                                                   ("LCM", "SGM Uniform"), ("DDIM", "SGM Uniform")])  # fmt: skip
def test_infotext_round_trips_the_sampler_and_schedule(sampler: str, schedule: str) -> None:
    request = Txt2Img("a red circle", sampler_name=sampler, schedule_type=schedule, steps=4, cfg_scale=1.5, seed=3)
    text = infotext(request, 3, 64, 64, "demo", "0123456789")
    assert f"Sampler: {sampler}, Schedule type: {schedule}," in text
    fields = request_fields(parse_infotext(text))
    assert (fields["sampler_name"], fields["schedule_type"], fields["steps"]) == (sampler, schedule, 4)
    assert fields["cfg_scale"] == 1.5
    # Old one-word names carry the schedule too.
    fields = request_fields({"Sampler": f"{sampler} {schedule}" if schedule != "Automatic" else sampler})
    assert (fields["sampler_name"], fields["schedule_type"]) == (sampler, schedule)


def test_presets_suit_few_step_samplers_and_turbo_models() -> None:
    assert samplers.suggested_cfg("LCM") == samplers.suggested_cfg("tcd", "v1-5.safetensors") == 1.5
    assert samplers.suggested_steps("LCM") == samplers.suggested_steps("TCD") == 4
    for model in ("sd-turbo", "stabilityai/SDXL-Turbo", "checkpoints/sdxl_turbo_1.0.safetensors", "builtin:demo-live"):
        # A turbo model was trained without CFG: that wins over the sampler's preset.
        for sampler in ("Euler a", "LCM", "DPM++ 2M"):
            assert samplers.suggested_cfg(sampler, model) == 0.0, (sampler, model)
            assert samplers.suggested_steps(sampler, model) == 1
    for sampler, model in (("DPM++ 2M", ""), ("Euler a", "builtin:demo"), ("no such sampler", "v1-5")):
        assert samplers.suggested_cfg(sampler, model) is None and samplers.suggested_steps(sampler, model) is None
        assert samplers.suggested_fields(sampler, model) == {}
    assert samplers.suggested_schedule("Euler", "sd-turbo") == "SGM Uniform"
    assert samplers.suggested_schedule("LMS", "builtin:demo") is None
    assert samplers.suggested_schedule("TCD") == "Automatic" and samplers.suggested_schedule("nope", "sd-turbo") is None
    assert samplers.suggested_fields("LCM") == {"cfg_scale": 1.5, "steps": 4, "schedule_type": "Automatic"}
    assert samplers.suggested_fields("Euler a", "sdxl-turbo") == {"cfg_scale": 0.0, "steps": 1,
                                                                 "schedule_type": "SGM Uniform"}  # fmt: skip
    # The presets are values a request accepts as they are.
    fields = samplers.suggested_fields("DPM++ 2M", "sd-turbo")
    request, notes = Txt2Img(sampler_name="DPM++ 2M", **fields).checked()
    assert (request.cfg_scale, request.steps, request.schedule_type, notes) == (0.0, 1, "SGM Uniform", [])
