"""2D camera motion between frames, noise before diffusion, and cadence in-betweens (numpy and Pillow).

Units are Deforum's: ``zoom`` is a factor per frame (1.0 still, above 1 moves in: the picture grows),
``angle`` degrees per frame (positive turns the picture counter-clockwise, as OpenCV's rotation that
Deforum uses), ``translation_x``/``translation_y`` pixels per frame (positive moves the picture right /
down). Zoom and turn are about the picture's centre; the translation is applied after them, in the
new frame's pixels, so "5 px per frame" moves the content 5 px whatever the zoom.

A run of motions is combined into one matrix and the picture resampled once (bilinear): warping frame
by frame would blur it a little more at every step. Pixels that come from outside the picture are
filled by repeating its edge (``replicate``), mirroring it (``reflect``) or wrapping round (``wrap``):
the picture is padded by that rule and Pillow resamples it (about 10 ms at 512 px); a far zoom-out,
which would need more padding than the picture itself, goes through scipy.ndimage instead.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image

BORDER_MODES: Mapping[str, str] = types.MappingProxyType(
    {"replicate": "nearest", "reflect": "reflect", "wrap": "grid-wrap"}  # our name -> scipy.ndimage's
)
MAX_MARGIN = 2  # beyond twice the picture's side of padding (a far zoom-out), scipy's slower path costs less
_NUMPY_PADS: Mapping[str, Literal["edge", "symmetric", "wrap"]] = types.MappingProxyType(
    {"replicate": "edge", "reflect": "symmetric", "wrap": "wrap"}
)


class MotionLike(Protocol):
    """Anything with the four motion values: a ``Motion``, a ``FramePlan``."""

    @property
    def zoom(self) -> float: ...

    @property
    def angle(self) -> float: ...

    @property
    def translation_x(self) -> float: ...

    @property
    def translation_y(self) -> float: ...


@dataclass(frozen=True)
class Motion:
    zoom: float = 1.0
    angle: float = 0.0
    translation_x: float = 0.0
    translation_y: float = 0.0


def motion_matrix(motion: MotionLike, size: tuple[int, int]) -> np.ndarray:
    """The 3x3 matrix taking a pixel's (x, y) in the previous frame to where it lands in the next."""
    if not (math.isfinite(motion.zoom) and motion.zoom > 0):
        raise ValueError(f"zoom must be a positive factor (1.0 is still), got {motion.zoom!r}")
    width, height = size
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    turn = math.radians(motion.angle)
    cos, sin = motion.zoom * math.cos(turn), motion.zoom * math.sin(turn)
    # y points down, so this turns the picture counter-clockwise on screen for a positive angle
    linear = np.array([[cos, sin], [-sin, cos]])
    shift = np.array([centre_x, centre_y]) - linear @ np.array([centre_x, centre_y])
    shift += (motion.translation_x, motion.translation_y)
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = shift
    return matrix


def combined(motions: Iterable[MotionLike], size: tuple[int, int]) -> np.ndarray:
    """One matrix for several motions applied in order (the first is applied first)."""
    matrix = np.eye(3)
    for motion in motions:
        matrix = motion_matrix(motion, size) @ matrix
    return matrix


def warp(image: Image.Image, motion: MotionLike | np.ndarray, border: str = "replicate") -> Image.Image:
    """``image`` moved by a motion (or a matrix from ``motion_matrix``/``combined``), resampled once."""
    if border not in BORDER_MODES:
        raise ValueError(f"border must be one of {', '.join(BORDER_MODES)}, got {border!r}")
    picture = image if image.mode in ("RGB", "L") else image.convert("RGB")
    matrix = motion if isinstance(motion, np.ndarray) else motion_matrix(motion, picture.size)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise ValueError(f"a motion matrix is 3x3, finite and invertible, got {matrix!r}")
    if np.allclose(matrix, np.eye(3), atol=1e-9):
        return picture.copy()
    inverse = np.linalg.inv(matrix)  # resampling asks, for each new pixel, where it comes from
    margin = _margin(inverse, picture.size)
    if margin <= MAX_MARGIN * max(picture.size):
        return _warp_padded(picture, inverse, margin, border)
    return _warp_scipy(picture, inverse, border)


def _margin(inverse: np.ndarray, size: tuple[int, int]) -> int:
    """How far outside the picture the new frame's corners reach back to, in whole pixels."""
    width, height = size
    corners = np.array(
        [[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [-0.5, height - 0.5, 1], [width - 0.5, height - 0.5, 1]]
    )
    source = corners @ inverse[:2].T
    over = max(0.0, -source[:, 0].min(), source[:, 0].max() - width, -source[:, 1].min(), source[:, 1].max() - height)
    return math.ceil(over) + 2  # and two more: bilinear reads one pixel past the point it samples


def _warp_padded(picture: Image.Image, inverse: np.ndarray, margin: int, border: str) -> Image.Image:
    """Pad with the border's rule, then let Pillow resample (fast, C): the padding stands in for
    the rule Pillow lacks (it only fills with one colour)."""
    pixels = np.asarray(picture)
    padding = ((margin, margin), (margin, margin)) + (((0, 0),) if pixels.ndim == 3 else ())
    padded = Image.fromarray(np.pad(pixels, padding, mode=_NUMPY_PADS[border]), picture.mode)
    # Pillow reads coordinates with pixel i spanning [i, i+1); ours put pixel i's centre at i
    linear, shift = inverse[:2, :2], inverse[:2, 2]
    shift = shift + 0.5 - linear @ np.array([0.5, 0.5]) + margin
    data = (linear[0, 0], linear[0, 1], shift[0], linear[1, 0], linear[1, 1], shift[1])
    return padded.transform(picture.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


def _warp_scipy(picture: Image.Image, inverse: np.ndarray, border: str) -> Image.Image:
    from scipy import ndimage  # its import is slow; only far zoom-outs come here

    (a, b, c), (d, e, f) = inverse[0], inverse[1]
    pixels = np.asarray(picture, dtype=np.float32)
    # scipy indexes (row, column) = (y, x): swap the axes of the (x, y) matrix
    sampling = np.array([[e, d], [b, a]])
    offset = np.array([f, c])
    if pixels.ndim == 3:
        sampling = np.pad(sampling, ((0, 1), (0, 1)))
        sampling[2, 2] = 1.0
        offset = np.append(offset, 0.0)
    moved = ndimage.affine_transform(pixels, sampling, offset=offset, order=1, mode=BORDER_MODES[border])
    return Image.fromarray(_to_bytes(moved), picture.mode)


def add_noise(image: Image.Image, amount: float, seed: int) -> Image.Image:
    """Gaussian noise of standard deviation ``amount`` with pixels read as -1 to 1 (Deforum's noise
    schedule: 0.065 is about 8 levels of 255), the same for the same seed."""
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"noise amount must be 0 or more, got {amount!r}")
    picture = image if image.mode in ("RGB", "L") else image.convert("RGB")
    if amount == 0:
        return picture.copy()
    pixels = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
    noise = np.random.default_rng(seed).standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(_to_bytes((pixels + amount * noise + 1.0) * 127.5), picture.mode)


def cadence_blend(previous: Image.Image, following: Image.Image, weight: float) -> Image.Image:
    """``previous`` at weight 0 to ``following`` at weight 1, pixel by pixel."""
    if previous.size != following.size:
        raise ValueError(f"cadence frames differ in size: {previous.size} and {following.size}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"cadence weight must be between 0 and 1, got {weight!r}")
    return Image.blend(previous.convert("RGB"), following.convert("RGB"), float(weight))


def tween(
    previous: Image.Image,
    following: Image.Image,
    since_previous: Sequence[MotionLike],
    until_following: Sequence[MotionLike],
    weight: float,
    border: str = "replicate",
) -> Image.Image:
    """A cadence in-between: ``previous`` moved forward by the motions since it, ``following`` moved
    back by the motions still to come before it, blended by ``weight`` (the plan's cadence_weight).
    Moving both to this frame's camera keeps edges in place where a plain cross-fade would ghost."""
    size = previous.size
    forward = warp(previous, combined(since_previous, size), border)
    backward = warp(following, np.linalg.inv(combined(until_following, size)), border)
    return cadence_blend(forward, backward, weight)


def _to_bytes(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
