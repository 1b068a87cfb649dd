"""Outpainting: the grown canvas and its mask, the fill, the inpaint request, a real run on the
demo model with a soft seam, the editor value the Inpaint tab gets, and refused values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import pixels
from PIL import Image

from pipelines import images
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.outpaint import OVERLAP, blur_reach, extend_canvas, outpaint_request, plan_extension, seam_blur
from pipelines.requests import Inpaint, Limits
from webui.generation import _editor_images
from webui.outpaint_ui import extend_editor_value

RED = (200, 30, 30)


def _pattern(width: int = 64, height: int = 64) -> Image.Image:
    """Every pixel different: a paste that is off by one pixel or rescaled cannot match it."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("left", "right", "up", "down"),
    [(64, 0, 0, 0), (0, 64, 0, 0), (0, 0, 32, 0), (0, 0, 0, 32), (16, 40, 8, 24), (64, 64, 64, 64)],
)
def test_canvas_and_mask_geometry_for_each_side(left: int, right: int, up: int, down: int) -> None:
    picture = _pattern(64, 48)
    canvas, mask = extend_canvas(picture, left, right, up, down, seed=1, overlap=OVERLAP, limits=Limits(min_side=8))
    assert canvas.size == mask.size == (64 + left + right, 48 + up + down)
    assert np.array_equal(pixels(canvas)[up : up + 48, left : left + 64], pixels(picture))
    expected = np.full((48 + up + down, 64 + left + right), 255, dtype=np.uint8)
    inner_left, inner_right = left + (OVERLAP if left else 0), left + 64 - (OVERLAP if right else 0)
    inner_top, inner_bottom = up + (OVERLAP if up else 0), up + 48 - (OVERLAP if down else 0)
    expected[inner_top:inner_bottom, inner_left:inner_right] = 0  # kept: the picture less the bands
    assert np.array_equal(np.asarray(mask), expected)


def test_sizes_are_rounded_up_to_the_grid_and_the_notes_say_so() -> None:
    plan = plan_extension((100, 60), 3, 0, 0, 0)
    assert (plan.left, plan.right, plan.up, plan.down, plan.size) == (4, 0, 0, 4, (104, 64))
    assert plan.notes == (
        "width 103 is not a multiple of 8: extending left by 4 instead of 3",
        "height 60 is not a multiple of 8: extending down by 4 instead of 0",
    )
    assert plan_extension((64, 64), 5, 6, 0, 0).amounts() == {"left": 5, "right": 11, "up": 0, "down": 0}
    picture = _pattern(100, 60)
    canvas, mask = extend_canvas(picture, 3, 0, 0, 0, seed=1)
    assert canvas.size == (104, 64)
    assert np.array_equal(pixels(canvas)[:60, 4:], pixels(picture))  # pasted where the rounded amounts say
    # The padded strip below is new area too, with its own band into the picture.
    assert np.asarray(mask)[60 - OVERLAP :].min() == 255 and np.asarray(mask)[: 60 - OVERLAP, 4 + OVERLAP :].max() == 0


def test_the_fill_follows_the_edge_colours_with_noise_and_is_seeded() -> None:
    picture = Image.new("RGB", (64, 64), (30, 60, 200))
    picture.paste((230, 200, 40), (0, 32, 64, 64))  # blue above yellow
    canvas, _ = extend_canvas(picture, 0, 64, 0, 0, seed=7)
    new = pixels(canvas)[:, 64:]
    # Away from the colour boundary each half continues its own colour, on average...
    assert np.abs(new[:16].mean(axis=(0, 1)) - (30, 60, 200)).max() < 25
    assert np.abs(new[48:].mean(axis=(0, 1)) - (230, 200, 40)).max() < 25
    # ...but not as a flat copy: the model needs texture to start from.
    assert new[:16].std(axis=(0, 1)).min() > 8 and new[48:].std(axis=(0, 1)).min() > 8
    again, _ = extend_canvas(picture, 0, 64, 0, 0, seed=7)
    other, _ = extend_canvas(picture, 0, 64, 0, 0, seed=8)
    assert np.array_equal(pixels(again), pixels(canvas))
    assert not np.array_equal(pixels(other), pixels(canvas))


def test_the_request_redraws_the_new_area_fully_and_feathers_inside_the_original() -> None:
    base = Inpaint(prompt="a meadow", init_image=_pattern(64, 64), mask_blur=0, seed=-1, denoising_strength=0.9)
    request = outpaint_request(base, 0, 64, 0, 0)
    assert request.init_image is not None and request.mask is not None
    assert (request.width, request.height) == request.init_image.size == request.mask.size == (128, 64)
    assert (request.masked_content, request.denoising_strength, request.prompt) == ("original", 0.9, "a meadow")
    assert request.mask_blur == seam_blur(OVERLAP) > 0 and blur_reach(request.mask_blur) <= OVERLAP
    assert request.seed >= 0  # drawn here, so the fill is reproducible from the recorded seed
    soft = np.asarray(images.blur_mask(request.mask, request.mask_blur))
    assert soft[:, 64:].min() == 255, "the fill would show through the seam"
    assert soft[:, : 64 - OVERLAP - blur_reach(request.mask_blur)].max() == 0
    checked, _ = request.checked(Limits())
    assert checked.width == 128
    # A wider blur asked for is kept, and the band grows so the new area stays fully redrawn.
    wide = outpaint_request(dataclasses.replace(base, mask_blur=8), 0, 64, 0, 0)
    assert wide.mask is not None and wide.mask_blur == 8
    assert np.asarray(images.blur_mask(wide.mask, 8))[:, 64:].min() == 255


def test_a_run_on_the_demo_keeps_the_original_and_blends_the_seam(engine: Engine) -> None:
    red = Image.new("RGB", (64, 64), RED)
    request = outpaint_request(
        Inpaint(prompt="a red circle", init_image=red, steps=4, seed=5, mask_blur=0), 0, 64, 0, 0
    )
    result = engine.generate(request, save=False).images[0]
    assert request.init_image is not None
    out, source, fill = pixels(result), pixels(red), pixels(request.init_image)
    assert result.size == (128, 64)
    changed = OVERLAP + blur_reach(request.mask_blur)  # the mask's band plus its feathering
    assert np.array_equal(out[:, : 64 - changed], source[:, : 64 - changed])
    assert np.abs(out[:, 64:] - fill[:, 64:]).mean() > 10, "the new area was not redrawn"
    # Soft seam: no jump between neighbouring columns near the seam comes close to a hard paste's.
    hard_step = np.abs(source[:, 63] - out[:, 64]).mean()
    steps = np.abs(np.diff(out[:, 64 - changed - 2 : 64 + changed + 2], axis=1)).mean(axis=(0, 2))
    assert hard_step > 20, "the demo redrew the new area in the original's colour: nothing to blend"
    assert steps.max() < hard_step / 3, (steps.round(1), hard_step)


def test_the_editor_value_round_trips_with_its_mask_and_moves_old_strokes() -> None:
    picture = _pattern(64, 64).convert("RGBA")  # the tab's editor hands over RGBA pictures
    stroke = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (10, 10, 20, 20))
    value = {"background": picture, "layers": [stroke], "composite": picture}
    grown, plan = extend_editor_value(value, 0, 0, 32, 0, seed=3, mask_blur=0)
    assert plan.size == (64, 96)
    background, mask = _editor_images(grown)
    assert background is not None and mask is not None
    assert np.array_equal(pixels(background)[32:], pixels(picture))
    expected = np.zeros((96, 64), dtype=np.uint8)
    expected[: 32 + OVERLAP] = 255  # the new area above and the band
    expected[42:52, 10:20] = 255  # the stroke, moved down with the picture
    assert np.array_equal(np.asarray(mask), expected)
    # The tab's mask blur widens the band so it covers the blur's reach.
    _, wide = _editor_images(extend_editor_value(value, 0, 0, 32, 0, seed=3, mask_blur=8)[0])
    assert wide is not None and np.asarray(wide)[: 32 + blur_reach(8), 30].min() == 255


def test_bad_values_are_refused_with_the_values_named() -> None:
    picture = _pattern(64, 48)
    with pytest.raises(BadRequest) as refused:
        extend_canvas(picture, -8, 2000, 1.5, 0, seed=1)
    assert refused.value.problems == [
        "left must be between 0 and 1024 pixels, got -8",
        "right must be between 0 and 1024 pixels, got 2000",
        "up must be a whole number of pixels, got 1.5",
    ]
    with pytest.raises(BadRequest, match="left, right, up and down are all 0"):
        extend_canvas(picture, 0, 0, 0, 0, seed=1)
    with pytest.raises(BadRequest, match=r"would be 1088x48 \(picture 64x48, right 1024\): its width must be between"):
        extend_canvas(picture, 0, 1024, 0, 0, seed=1, limits=Limits(max_side=1024))
    with pytest.raises(BadRequest, match=r"its height must be between 64 and 4096"):
        extend_canvas(picture, 0, 64, 0, 0, seed=1)  # 48 px high: too low for a request
    with pytest.raises(BadRequest, match=r"1088x1048 .*: 1140224 pixels, more than this device allows \(1000000\)"):
        extend_canvas(_pattern(64, 1048), 0, 1024, 0, 0, seed=1, limits=Limits(max_pixels=1_000_000))
    with pytest.raises(BadRequest, match="overlap must be between 0 and 64 pixels, got 100"):
        extend_canvas(picture, 8, 0, 0, 0, seed=1, overlap=100)
    with pytest.raises(BadRequest, match="outpainting needs an init image, got NoneType"):
        outpaint_request(Inpaint(), 8, 0, 0, 0)
    with pytest.raises(BadRequest, match="upload a picture"):
        extend_editor_value({"background": None, "layers": [], "composite": None}, 8, 0, 0, 0)
