"""The hires fix through the engine: a first pass at the asked size, upscaled, redrawn; its sizes,
steps, progress and infotext, and a picture reused from its infotext comes out the same."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.infotext import parse_infotext, request_fields
from pipelines.requests import Img2Img, Txt2Img
from pipelines.scenes import analyse
from tests.conftest import pixels

BASE = Txt2Img(prompt="a red circle", steps=6, width=64, height=64, seed=5, model="builtin:demo")
HIRES = BASE.replace(enable_hr=True, hr_upscaler="Lanczos", hr_second_pass_steps=3, denoising_strength=0.5)


def test_hires_doubles_the_size_redraws_and_keeps_the_subject(engine: Engine) -> None:
    first = engine.generate(BASE).images[0]
    steps: list[int] = []
    result = engine.generate(HIRES, on_progress=lambda progress: steps.append(progress.step))
    picture = result.images[0]
    assert picture.size == (128, 128)
    plain_upscale = first.resize((128, 128))
    assert np.abs(pixels(picture) - pixels(plain_upscale)).mean() > 1.0, "the second pass redrew nothing"
    assert analyse(picture).colour == "red"  # what the prompt asks for, still, after the redraw
    assert steps[-1] == 6 + 3 and steps == sorted(steps), "progress counts both passes, in order"


def test_the_infotext_reproduces_the_hires_picture(engine: Engine) -> None:
    result = engine.generate(HIRES.replace(hr_upscaler="latent (nearest)", hr_resize_x=96, hr_resize_y=128))
    text = result.infotexts[0]
    assert "Size: 64x64" in text and "Hires resize: 96x128" in text and "Hires upscaler: Latent (nearest)" in text
    assert "Denoising strength: 0.5" in text and "Hires steps: 3" in text
    fields = request_fields(parse_infotext(text))
    assert fields["enable_hr"] and fields["hr_upscaler"] == "Latent (nearest)"
    again = engine.generate(Txt2Img(**(fields | {"model": "builtin:demo"})))
    assert again.images[0].size == (96, 128)
    assert np.array_equal(pixels(again.images[0]), pixels(result.images[0]))


@pytest.mark.parametrize("subseed_strength", [0.0, 0.6])
def test_the_second_pass_is_image_to_image_of_the_upscale_with_the_same_seeds(
    engine: Engine, subseed_strength: float
) -> None:
    # As in A1111, the second pass draws its noise from the picture's seed and variation seed: a
    # variation seed changed the first pass only, and the second redrew it with the plain seed's noise.
    variation = {"subseed": 11, "subseed_strength": subseed_strength}
    hires = engine.generate(HIRES.replace(**variation)).images[0]
    first = engine.generate(BASE.replace(**variation)).images[0]
    redrawn = engine.generate(
        Img2Img(prompt=BASE.prompt, init_image=first.resize((128, 128), Image.Resampling.LANCZOS), width=128,
                height=128, steps=6, denoising_strength=0.5, seed=BASE.seed, model="builtin:demo", **variation)
    ).images[0]  # fmt: skip  # 3 steps of a 6-step schedule: the hires pass's 3 steps at strength 0.5
    assert np.array_equal(pixels(hires), pixels(redrawn))


def test_without_enable_hr_the_hires_fields_change_nothing(engine: Engine) -> None:
    plain = engine.generate(BASE).images[0]
    unused = engine.generate(BASE.replace(hr_upscaler="Lanczos", hr_scale=3.0, denoising_strength=0.2))
    assert np.array_equal(pixels(unused.images[0]), pixels(plain))
    assert "Hires" not in unused.infotexts[0] and "Denoising strength" not in unused.infotexts[0]


def test_an_unknown_upscaler_is_refused_before_it_queues_naming_the_known_ones(engine: Engine) -> None:
    with pytest.raises(BadRequest, match=r"unknown hr_upscaler 'ESRGAN_4x'.*Latent.*Lanczos"):
        engine.submit(HIRES.replace(hr_upscaler="ESRGAN_4x"))
    with pytest.raises(BadRequest, match="hr_scale must be between 1 and 4"):
        engine.submit(HIRES.replace(hr_scale=8.0))
