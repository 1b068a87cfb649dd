"""Validation of requests: every rule reports the offending value, all problems at once."""

from __future__ import annotations

import pytest
from PIL import Image

from pipelines import samplers
from pipelines.errors import BadRequest
from pipelines.requests import Img2Img, Inpaint, Limits, Txt2Img

IMAGE = Image.new("RGB", (64, 64))


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (Txt2Img(steps=0), "steps must be between 1 and 150, got 0"),
        (Txt2Img(steps=151), "steps must be between 1 and 150, got 151"),
        (Txt2Img(steps="20"), "steps must be a whole number, got '20'"),  # type: ignore[arg-type]
        (Txt2Img(steps=True), "steps must be a whole number, got True"),
        (Txt2Img(batch_size=9), "batch_size must be between 1 and 8, got 9"),
        (Txt2Img(batch_count=0), "batch_count must be between 1 and 100, got 0"),
        (Txt2Img(cfg_scale=-1), "cfg_scale must be between 0 and 30, got -1"),
        (Txt2Img(cfg_scale=float("nan")), "cfg_scale must be between 0 and 30, got nan"),
        (Txt2Img(seed=2**32), "seed must be between -1 and 4294967295, got 4294967296"),
        (Txt2Img(seed=-2), "seed must be between -1 and 4294967295, got -2"),
        (Txt2Img(clip_skip=0), "clip_skip must be between 1 and 12, got 0"),
        (Txt2Img(width=32), "width must be between 64 and 4096, got 32"),
        (Txt2Img(height=5000), "height must be between 64 and 4096, got 5000"),
        (Txt2Img(width=4096, height=4096), "size 4096x4096 is 16777216 pixels, more than this device allows"),
        (Txt2Img(sampler_name="Euler z"), "unknown sampler 'Euler z'; known: DPM++ 2M"),
        (Txt2Img(schedule_type="Cosine"), "unknown schedule type 'Cosine'"),
        (Txt2Img(prompt=None), "prompt must be text, got NoneType"),  # type: ignore[arg-type]
        (Txt2Img(prompt="x" * 20_001), "prompt is 20001 characters long; the limit is 20000"),
        (Img2Img(), "img2img needs an init image, got NoneType"),
        (Img2Img(init_image=IMAGE, denoising_strength=1.5), "denoising_strength must be between 0 and 1, got 1.5"),
        (Img2Img(init_image=IMAGE, resize_mode="stretch"), "resize_mode must be one of just resize"),
        (Inpaint(init_image=IMAGE), "inpaint needs a mask image, got NoneType"),
        (Inpaint(init_image=IMAGE, mask=IMAGE, mask_blur=-1), "mask_blur must be between 0 and 64, got -1"),
        (Inpaint(init_image=IMAGE, mask=IMAGE, masked_content="blur"), "masked_content must be one of fill"),
        (
            Inpaint(init_image=IMAGE, mask=IMAGE, only_masked_padding=999),
            "only_masked_padding must be between 0 and 256, got 999",
        ),
    ],
)
def test_each_rule_names_the_field_and_value(request_: Txt2Img, expected: str) -> None:
    with pytest.raises(BadRequest) as caught:
        request_.checked()
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(BadRequest) as caught:
        Txt2Img(steps=0, cfg_scale=99, sampler_name="nope").checked()
    assert len(caught.value.problems) == 3
    assert "steps" in str(caught.value) and "cfg_scale" in str(caught.value) and "nope" in str(caught.value)


def test_sizes_off_the_8_grid_are_rounded_with_a_note() -> None:
    request, notes = Txt2Img(width=130, height=101).checked()
    assert (request.width, request.height) == (128, 104)
    assert notes == ["width 130 is not a multiple of 8: using 128", "height 101 is not a multiple of 8: using 104"]


def test_pixel_budget_comes_from_limits() -> None:
    Txt2Img(width=512, height=512).checked(Limits(max_pixels=512 * 512))
    with pytest.raises(BadRequest, match="more than this device allows"):
        Txt2Img(width=512, height=520).checked(Limits(max_pixels=512 * 512))


def test_valid_requests_pass_unchanged() -> None:
    request = Inpaint(prompt="a cat", init_image=IMAGE, mask=IMAGE, width=64, height=64)
    checked, notes = request.checked()
    assert checked is request and notes == []


def test_fields_leave_images_out() -> None:
    fields = Img2Img(prompt="p", init_image=IMAGE).fields()
    assert fields["prompt"] == "p" and "init_image" not in fields and fields["denoising_strength"] == 0.75


@pytest.mark.parametrize(
    ("name", "schedule", "expected"),
    [
        ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),  # the older one-word form
        ("dpm++ 2m karras", "Automatic", ("DPM++ 2M", "Karras")),
        ("k_euler_a", None, ("Euler a", "Automatic")),
        ("Euler", "exponential", ("Euler", "Exponential")),
    ],
)
def test_sampler_names_resolve_like_a1111(name: str, schedule: str | None, expected: tuple[str, str]) -> None:
    sampler, schedule_type = samplers.resolve(name, schedule)
    assert (sampler.name, schedule_type) == expected


def test_scheduler_is_built_fresh_from_the_model_config() -> None:
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    first = samplers.build_scheduler(config, "DPM++ 2M", "Karras")
    second = samplers.build_scheduler(config, "DPM++ 2M", "Karras")
    assert type(first).__name__ == "DPMSolverMultistepScheduler"
    assert first is not second
    assert first.config.use_karras_sigmas is True and first.config.beta_schedule == "scaled_linear"
    euler = samplers.build_scheduler(config, "Euler", "Automatic")
    assert type(euler).__name__ == "EulerDiscreteScheduler"
    assert euler.config.use_karras_sigmas is False
    ancestral = samplers.build_scheduler(config, "Euler a", "Karras")  # no Karras option: stays as it is
    assert type(ancestral).__name__ == "EulerAncestralDiscreteScheduler"


def test_sampler_names_are_recorded_as_they_run() -> None:
    request, notes = Txt2Img(sampler_name="DPM++ 2M Karras", schedule_type="Automatic").checked()
    assert (request.sampler_name, request.schedule_type, notes) == ("DPM++ 2M", "Karras", [])
    request, notes = Txt2Img(sampler_name="k_euler_a", schedule_type="Karras").checked()
    assert (request.sampler_name, request.schedule_type) == ("Euler a", "Automatic")
    assert notes == ["Euler a has no Karras schedule here: using Automatic"]
