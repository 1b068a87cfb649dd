"""Camera motion, noise and cadence in-betweens on real pixels, and colour coherence against drift."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.animation.colour import (
    MODES,
    ColourReference,
    lab_to_srgb,
    match_colours,
    srgb_to_lab,
)
from pipelines.animation.motion import (
    Motion,
    add_noise,
    cadence_blend,
    combined,
    motion_matrix,
    tween,
    warp,
)
from tests.conftest import pixels

SIZE = (96, 80)


def square(centre: tuple[int, int] = (48, 40), half: int = 8, size: tuple[int, int] = SIZE) -> Image.Image:
    """A white square on black: its brightness measures area, its centroid position."""
    picture = Image.new("RGB", size, (0, 0, 0))
    x, y = centre
    ImageDraw.Draw(picture).rectangle([x - half, y - half, x + half - 1, y + half - 1], fill=(255, 255, 255))
    return picture


def brightness(picture: Image.Image) -> float:
    return float(pixels(picture)[..., 0].sum()) / 255.0


def centroid(picture: Image.Image) -> tuple[float, float]:
    weights = pixels(picture)[..., 0].astype(np.float64)
    ys, xs = np.indices(weights.shape)
    return float((xs * weights).sum() / weights.sum()), float((ys * weights).sum() / weights.sum())


# -- warping ---------------------------------------------------------------------------------------


def test_zoom_105_per_frame_enlarges_the_shape() -> None:
    start = square(centre=(48, 40))
    one = warp(start, Motion(zoom=1.05))
    assert brightness(one) / brightness(start) == pytest.approx(1.05**2, rel=0.02)
    ten = warp(start, combined([Motion(zoom=1.05)] * 10, start.size))
    assert brightness(ten) / brightness(start) == pytest.approx(1.05**20, rel=0.03)
    assert centroid(ten) == pytest.approx(centroid(start), abs=0.3)  # zoom is about the centre


def test_zoom_below_one_shrinks_and_one_is_still() -> None:
    start = square()
    assert brightness(warp(start, Motion(zoom=0.9))) / brightness(start) == pytest.approx(0.81, rel=0.03)
    assert np.array_equal(pixels(warp(start, Motion(zoom=1.0))), pixels(start))


def test_translation_moves_the_shape_by_pixels_per_frame() -> None:
    start = square()
    moved = warp(start, Motion(translation_x=7, translation_y=-4))
    x0, y0 = centroid(start)
    assert centroid(moved) == pytest.approx((x0 + 7, y0 - 4), abs=0.05)
    assert brightness(moved) == pytest.approx(brightness(start), rel=0.01)


def test_translation_is_in_the_new_frames_pixels_whatever_the_zoom() -> None:
    start = square()
    x0, y0 = centroid(start)
    assert centroid(warp(start, Motion(zoom=1.5, translation_x=10))) == pytest.approx((x0 + 10, y0), abs=0.3)


def test_a_positive_angle_turns_counter_clockwise() -> None:
    # a dot right of the centre ends up above it (y points down)
    start = square(centre=(70, 40), half=3)
    cx, cy = (SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2
    x, y = centroid(warp(start, Motion(angle=90)))
    assert (x, y) == pytest.approx((cx, cy - (70 - 0.5 - cx)), abs=0.3)


def test_combined_motions_match_warping_one_after_another() -> None:
    start = square(half=12)
    steps = [Motion(zoom=1.02, angle=3, translation_x=2), Motion(zoom=0.97, angle=-1, translation_y=3)]
    once = warp(start, combined(steps, start.size))
    twice = warp(warp(start, steps[0]), steps[1])
    assert np.abs(pixels(once) - pixels(twice)).mean() < 3.0
    assert centroid(once) == pytest.approx(centroid(twice), abs=0.2)


WHITE, RED, BLACK = (255, 255, 255), (255, 0, 0), (0, 0, 0)


@pytest.mark.parametrize(
    ("border", "uncovered"),
    [
        ("replicate", [WHITE, WHITE, WHITE, WHITE]),  # columns -4..-1 repeat column 0
        ("reflect", [BLACK, BLACK, WHITE, WHITE]),  # -1, -2 mirror 0, 1 (white); -3, -4 mirror 2, 3
        ("wrap", [BLACK, BLACK, RED, RED]),  # -1, -2 are the right edge's last two columns
    ],
)
def test_border_modes_fill_what_comes_from_outside(border: str, uncovered: list[tuple[int, int, int]]) -> None:
    start = Image.new("RGB", SIZE, BLACK)
    ImageDraw.Draw(start).rectangle([0, 0, 1, SIZE[1]], fill=WHITE)
    ImageDraw.Draw(start).rectangle([SIZE[0] - 2, 0, SIZE[0], SIZE[1]], fill=RED)
    moved = pixels(warp(start, Motion(translation_x=4), border))  # moving right uncovers 4 columns
    assert [tuple(moved[40, column]) for column in range(4)] == uncovered
    assert tuple(moved[40, 4]) == WHITE  # and column 0 is now column 4


def test_replicate_repeats_the_edge_colour() -> None:
    start = Image.new("RGB", SIZE, (10, 200, 30))
    ImageDraw.Draw(start).rectangle([20, 20, 60, 60], fill=(250, 0, 0))
    zoomed_out = pixels(warp(start, Motion(zoom=0.5), "replicate"))
    assert (zoomed_out[0, 0] == (10, 200, 30)).all() and (zoomed_out[-1, -1] == (10, 200, 30)).all()


def test_a_far_zoom_out_keeps_the_border_rule() -> None:
    start = square(half=20)
    far = warp(start, Motion(zoom=0.15), "wrap")  # past the padding limit: the other resampler
    # wrapping tiles the picture: several squares, each about 0.15 as wide
    assert brightness(far) > 3 * brightness(start) * 0.15**2
    replicated = warp(start, Motion(zoom=0.15), "replicate")
    assert brightness(replicated) == pytest.approx(brightness(start) * 0.15**2, rel=0.25)


def test_bad_motions_are_refused() -> None:
    with pytest.raises(ValueError, match="zoom must be a positive factor"):
        warp(square(), Motion(zoom=0))
    with pytest.raises(ValueError, match="border must be one of"):
        warp(square(), Motion(zoom=1.1), "mirror")
    with pytest.raises(ValueError, match="invertible"):
        warp(square(), np.zeros((3, 3)))


def test_motion_matrix_of_a_frame_plan_like_object() -> None:
    from pipelines.animation.plan import plan_frames
    from pipelines.animation.settings import AnimationSettings

    plan = plan_frames(AnimationSettings(seed=1, max_frames=3, zoom="0: (1.1)"))[1]
    assert np.allclose(motion_matrix(plan, SIZE), motion_matrix(Motion(zoom=1.1), SIZE))


def test_rgba_and_grey_pictures_are_warped() -> None:
    assert warp(square().convert("RGBA"), Motion(zoom=1.1)).mode == "RGB"
    assert warp(square().convert("L"), Motion(zoom=1.1)).mode == "L"


# -- noise and cadence -----------------------------------------------------------------------------


def test_noise_has_the_scheduled_strength_and_repeats_with_its_seed() -> None:
    grey = Image.new("RGB", (128, 128), (128, 128, 128))
    noisy = add_noise(grey, 0.065, seed=3)
    spread = pixels(noisy).astype(np.float64).std()
    assert spread == pytest.approx(0.065 * 127.5, rel=0.05)
    assert np.array_equal(pixels(noisy), pixels(add_noise(grey, 0.065, seed=3)))
    assert not np.array_equal(pixels(noisy), pixels(add_noise(grey, 0.065, seed=4)))
    assert np.array_equal(pixels(add_noise(grey, 0.0, seed=3)), pixels(grey))
    with pytest.raises(ValueError, match="noise amount"):
        add_noise(grey, -0.1, seed=1)


def test_cadence_blend_is_linear() -> None:
    black, white = Image.new("RGB", SIZE, (0, 0, 0)), Image.new("RGB", SIZE, (200, 100, 50))
    assert (pixels(cadence_blend(black, white, 0.25))[0, 0] == (50, 25, 12)).all()
    assert np.array_equal(pixels(cadence_blend(black, white, 0.0)), pixels(black))
    with pytest.raises(ValueError, match="differ in size"):
        cadence_blend(black, white.resize((10, 10)), 0.5)


def test_a_tween_moves_both_neighbours_to_its_own_camera() -> None:
    # the shape moves 4 px per frame: frame 0 and frame 4 are diffused, frame 2 is half way
    step = Motion(translation_x=4)
    previous, following = square(centre=(30, 40)), square(centre=(46, 40))
    middle = tween(previous, following, [step, step], [step, step], 0.5)
    assert centroid(middle) == pytest.approx((37.5, 39.5), abs=0.1)
    assert pixels(middle)[..., 0].max() == 255  # the two copies line up: no half-bright ghosts
    ghost = cadence_blend(previous, following, 0.5)
    assert pixels(ghost)[..., 0].max() < 200


# -- colour coherence ------------------------------------------------------------------------------


def scene() -> Image.Image:
    rng = np.random.default_rng(7)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((96, 96), Image.Resampling.BICUBIC)


def drifted(picture: Image.Image, step: int) -> Image.Image:
    """What img2img feedback does over a long clip: a cast that grows frame by frame."""
    values = pixels(picture).astype(np.float64)
    values = values * (1 + 0.03 * step * np.array([1.0, -0.5, -1.0])) + step * np.array([4.0, 1.0, -3.0])
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def mean_colour_distance(picture: Image.Image, reference: Image.Image) -> float:
    return float(np.linalg.norm(pixels(picture).reshape(-1, 3).mean(0) - pixels(reference).reshape(-1, 3).mean(0)))


@pytest.mark.parametrize("mode", ["LAB", "HSV", "RGB"])
def test_colour_coherence_keeps_later_frames_near_frame_zero(mode: str) -> None:
    first = scene()
    reference = ColourReference(first)
    frame_without = frame_with = first
    for _ in range(8):
        frame_without = drifted(frame_without, 1)
        frame_with = match_colours(drifted(frame_with, 1), reference, mode)
        assert mean_colour_distance(frame_with, first) < mean_colour_distance(frame_without, first)
    # matching the three channels apart does not pin the colours' joint spread, so LAB and HSV still
    # wander a little (about 1 level a frame here); RGB matches the means themselves
    assert mean_colour_distance(frame_without, first) > 60
    assert mean_colour_distance(frame_with, first) < (1 if mode == "RGB" else 20)


def test_colour_coherence_none_changes_nothing() -> None:
    drift = drifted(scene(), 5)
    assert np.array_equal(pixels(match_colours(drift, scene(), "None")), pixels(drift))
    with pytest.raises(ValueError, match="colour coherence must be one of"):
        match_colours(drift, scene(), "lab")
    assert MODES == ("None", "HSV", "LAB", "RGB")


def test_matching_a_frame_to_itself_changes_almost_nothing() -> None:
    for mode in ("LAB", "HSV", "RGB"):
        assert np.abs(pixels(match_colours(scene(), scene(), mode)) - pixels(scene())).mean() < 1.0


def test_a_reference_object_matches_like_the_picture() -> None:
    drift, first = drifted(scene(), 4), scene()
    assert np.array_equal(pixels(match_colours(drift, ColourReference(first))), pixels(match_colours(drift, first)))


def test_lab_conversion_known_values_and_round_trip() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 0], [0, 0, 255]], dtype=np.uint8))
    assert lab[0] == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert lab[1] == pytest.approx([53.24, 80.09, 67.20], abs=0.02)
    assert lab[2] == pytest.approx([0.0, 0.0, 0.0], abs=0.01)
    assert lab[3] == pytest.approx([32.30, 79.19, -107.86], abs=0.02)
    every = np.random.default_rng(0).integers(0, 256, (50_000, 3), dtype=np.uint8)
    assert np.abs(lab_to_srgb(srgb_to_lab(every)).astype(int) - every).max() <= 1
