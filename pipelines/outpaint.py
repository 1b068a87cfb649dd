"""Outpainting: grow the canvas on any side, give the new area colour to start from, and build the
inpaint request that redraws it with a soft seam.

The new area is filled by stretching the picture's edge pixels outwards (softened further from
the edge) plus seeded noise, so the model starts from the right colours without a hard copy to
keep. The mask covers the new area plus ``overlap`` pixels of the original along each grown edge;
the engine's mask blur feathers that band, and the engine pastes the original back, untouched,
wherever the blurred mask is zero.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .errors import BadRequest
from .requests import MAX_SEED, Inpaint, Limits

log = logging.getLogger(__name__)

SIDES = ("left", "right", "up", "down")
MAX_EXTEND = 1024  # per side, per click: larger steps leave the model too little picture to follow
OVERLAP = 8  # pixels of the original the mask reaches into, by default
MAX_OVERLAP = 64
GRID = 8  # the latent grid: every canvas side is a multiple of it
FINE_NOISE = 8.0  # per-pixel grain (standard deviation, 0-255 scale)
COARSE_LIGHT = 20.0  # blotches of about one latent cell, lighter or darker: shapes the model can build on
COARSE_TINT = 8.0  # and a little colour variation; more turns the fill into confetti
COARSE_CELL = 8
SOFTEN_RADIUS = 12  # the far fill is the edge stretch blurred this much: streaks fade with distance


@dataclass(frozen=True)
class Extension:
    """How many pixels each side grows, after rounding to the grid, and what the rounding changed."""

    left: int
    right: int
    up: int
    down: int
    size: tuple[int, int]  # the canvas size
    notes: tuple[str, ...] = ()

    def amounts(self) -> dict[str, int]:
        return {"left": self.left, "right": self.right, "up": self.up, "down": self.down}


def plan_extension(
    size: tuple[int, int], left: float, right: float, up: float, down: float, limits: Limits | None = None
) -> Extension:
    """Check the amounts and round the canvas up to the 8-pixel grid, or raise ``BadRequest``.

    Each axis's extra pixels go to a side the artist grew on that axis (right/down first). An axis
    nobody grew still gets padded on the right/bottom when the picture itself is off the grid:
    resizing it instead would touch every pixel of the original.
    """
    limits = limits or Limits()
    requested = {"left": left, "right": right, "up": up, "down": down}
    problems: list[str] = []
    amounts: dict[str, int] = {}
    for name, value in requested.items():
        whole = _whole(value)
        if whole is None:
            problems.append(f"{name} must be a whole number of pixels, got {value!r}")
        elif not 0 <= whole <= MAX_EXTEND:
            problems.append(f"{name} must be between 0 and {MAX_EXTEND} pixels, got {whole}")
        else:
            amounts[name] = whole
    if not problems and not any(amounts.values()):
        problems.append("outpainting needs at least one side to extend: left, right, up and down are all 0")
    if problems:
        raise BadRequest(problems)
    notes: list[str] = []
    for first, second, axis, picture_side in (("left", "right", "width", size[0]), ("up", "down", "height", size[1])):
        total = picture_side + amounts[first] + amounts[second]
        extra = -total % GRID
        if not extra:
            continue
        side = second if amounts[second] or not amounts[first] else first
        notes.append(
            f"{axis} {total} is not a multiple of {GRID}: extending {side} by {amounts[side] + extra} "
            f"instead of {amounts[side]}"
        )
        amounts[side] += extra
    width = size[0] + amounts["left"] + amounts["right"]
    height = size[1] + amounts["up"] + amounts["down"]
    grown = ", ".join(f"{name} {amounts[name]}" for name in SIDES if amounts[name])
    described = f"the extended canvas would be {width}x{height} (picture {size[0]}x{size[1]}, {grown})"
    for axis, value in (("width", width), ("height", height)):
        if not limits.min_side <= value <= limits.max_side:
            problems.append(f"{described}: its {axis} must be between {limits.min_side} and {limits.max_side}")
    if not problems and width * height > limits.max_pixels:
        problems.append(f"{described}: {width * height} pixels, more than this device allows ({limits.max_pixels})")
    if problems:
        raise BadRequest(problems)
    return Extension(**amounts, size=(width, height), notes=tuple(notes))


def extend_canvas(
    image: Image.Image,
    left: float,
    right: float,
    up: float,
    down: float,
    seed: int,
    overlap: int = OVERLAP,
    limits: Limits | None = None,
) -> tuple[Image.Image, Image.Image]:
    """The grown canvas (the original pasted exactly, the new area filled) and its mask (white =
    redraw: the new area plus ``overlap`` pixels into the original along each grown edge).

    Amounts are rounded up so the canvas stays on the 8-pixel grid (``plan_extension`` says how).
    A negative seed picks a random one.
    """
    if not isinstance(image, Image.Image):
        raise BadRequest(f"outpainting needs a picture, got {type(image).__name__}")
    band = _whole(overlap)
    if band is None or not 0 <= band <= MAX_OVERLAP:
        raise BadRequest(f"overlap must be between 0 and {MAX_OVERLAP} pixels, got {overlap!r}")
    plan = plan_extension(image.size, left, right, up, down, limits)
    for note in plan.notes:
        log.info("outpainting: %s", note)
    rng = np.random.default_rng(seed if _whole(seed) is not None and seed >= 0 else None)
    original = image.convert("RGB")
    canvas = _fill(original, plan, rng)
    canvas.paste(original, (plan.left, plan.up))
    return canvas, _mask(original.size, plan, band)


def blur_reach(radius: int) -> int:
    """How many pixels past a mask's edge a mask blur of ``radius`` spreads (PIL's Gaussian blur
    reaches about 2.5 radii; measured, not assumed, so a change in Pillow cannot break the seam)."""
    if radius <= 0:
        return 0
    reach = math.ceil(radius * 3) + 2
    step = Image.new("L", (2 * reach + 2, 1), 0)
    step.paste(255, (reach + 1, 0, 2 * reach + 2, 1))
    row = np.asarray(step.filter(ImageFilter.GaussianBlur(radius)))[0]
    return int(reach + 1 - np.flatnonzero(row)[0])


def seam_blur(overlap: int) -> int:
    """The widest mask blur whose feathering stays inside ``overlap`` pixels of the original: the
    new area is then fully redrawn (none of the fill's noise is blended in)."""
    radius = 0
    while radius < 64 and blur_reach(radius + 1) <= overlap:
        radius += 1
    return radius


def outpaint_request(
    base: Inpaint,
    left: float,
    right: float,
    up: float,
    down: float,
    overlap: int = OVERLAP,
    limits: Limits | None = None,
) -> Inpaint:
    """The inpaint request that outpaints ``base.init_image``; every other field comes from ``base``.

    The mask band is widened to the reach of ``base.mask_blur`` when that blur is wider than the
    overlap allows (so the whole new area is redrawn), and the blur is raised to fill the band (so
    the seam is soft). Only the band and its feathering touch the original: pixels farther than
    ``overlap + blur_reach(mask_blur)`` from a grown edge come back unchanged. A seed of -1 is
    drawn here, so the fill and the picture are reproducible from the seed the infotext records.
    """
    if not isinstance(base.init_image, Image.Image):
        raise BadRequest(f"outpainting needs an init image, got {type(base.init_image).__name__}")
    blur = _whole(base.mask_blur)
    if blur is None or not 0 <= blur <= 64:
        raise BadRequest(f"mask_blur must be between 0 and 64, got {base.mask_blur!r}")
    band = _whole(overlap)
    if band is None or not 0 <= band <= MAX_OVERLAP:
        raise BadRequest(f"overlap must be between 0 and {MAX_OVERLAP} pixels, got {overlap!r}")
    band = max(band, blur_reach(blur))
    seed = base.seed if _whole(base.seed) is not None and base.seed >= 0 else random.randint(0, MAX_SEED)
    canvas, mask = extend_canvas(base.init_image, left, right, up, down, seed, band, limits)
    return dataclasses.replace(
        base,
        init_image=canvas,
        mask=mask,
        masked_content="original",  # the fill already has the colours: keep them as the start
        mask_blur=max(blur, seam_blur(band)),
        invert_mask=False,
        only_masked=False,
        resize_mode="just resize",  # the canvas is already the output size: nothing is resized
        width=canvas.width,
        height=canvas.height,
        seed=seed,
    )


def _whole(value: object) -> int | None:
    """An int, or a float holding one (sliders send floats); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _fill(original: Image.Image, plan: Extension, rng: np.random.Generator) -> Image.Image:
    """Edge pixels stretched outwards, softened with distance, plus noise that grows with it."""
    edge = np.pad(np.asarray(original), ((plan.up, plan.down), (plan.left, plan.right), (0, 0)), mode="edge")
    softened = np.asarray(Image.fromarray(edge).filter(ImageFilter.GaussianBlur(SOFTEN_RADIUS)), dtype=np.float32)
    stretched = edge.astype(np.float32)
    height, width = stretched.shape[:2]
    # Distance from the original rectangle: 0 inside it, growing across the new area.
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)
    dx = np.maximum(np.maximum(plan.left - xs, xs - (plan.left + original.width - 1)), 0)
    dy = np.maximum(np.maximum(plan.up - ys, ys - (plan.up + original.height - 1)), 0)
    distance = np.maximum(dx[None, :], dy[:, None])
    ramp = np.clip(distance / (2 * SOFTEN_RADIUS), 0, 1)[..., None]
    filled = stretched * (1 - ramp) + softened * ramp
    cells = (height // COARSE_CELL + 2, width // COARSE_CELL + 2)
    blotches = rng.normal(0.0, COARSE_LIGHT, (*cells, 1)) + rng.normal(0.0, COARSE_TINT, (*cells, 3))
    coarse = _upsample(blotches.astype(np.float32), (width, height))
    fine = rng.normal(0.0, FINE_NOISE, (height, width, 3)).astype(np.float32)
    # Noise starts weak at the seam (the continuation should match) and is full a few cells out.
    strength = np.clip(0.3 + distance / (4 * COARSE_CELL), 0.3, 1.0)[..., None]
    filled = filled + (coarse + fine) * strength
    return Image.fromarray(np.clip(np.rint(filled), 0, 255).astype(np.uint8))


def _upsample(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(cells[..., c])).resize(size, Image.Resampling.BICUBIC))
        for c in range(cells.shape[2])
    ]
    return np.stack(channels, axis=-1)


def _mask(picture: tuple[int, int], plan: Extension, overlap: int) -> Image.Image:
    """White over the new area and ``overlap`` pixels into the picture along each grown edge."""
    width, height = plan.size
    mask = np.full((height, width), 255, dtype=np.uint8)
    keep_left = plan.left + (min(overlap, picture[0]) if plan.left else 0)
    keep_right = plan.left + picture[0] - (min(overlap, picture[0]) if plan.right else 0)
    keep_top = plan.up + (min(overlap, picture[1]) if plan.up else 0)
    keep_bottom = plan.up + picture[1] - (min(overlap, picture[1]) if plan.down else 0)
    if keep_left < keep_right and keep_top < keep_bottom:
        mask[keep_top:keep_bottom, keep_left:keep_right] = 0
    return Image.fromarray(mask)
