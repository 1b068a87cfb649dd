"""Colour coherence: match a frame's colour histograms to the first frame's, so long clips do not drift.

Each frame of an animation is img2img of the last one, and small shifts in colour add up (Deforum's
"colour burn"). Before each diffusion the warped frame's per-channel histograms are matched to a
reference frame's, in one of three colour spaces: ``RGB`` (each channel as stored), ``HSV`` (Pillow's
conversion) or ``LAB`` (CIE L*a*b* under D65, converted here from sRGB; lightness is matched apart from
the two colour axes, which keeps contrast and hue separate). ``None`` leaves the frame as it is.

Matching is quantile mapping: a pixel at the p-th quantile of its channel takes the value at the p-th
quantile of the reference's channel. Channels are counted in 256 (RGB, HSV) or 1024 (LAB) levels with
``bincount``, which keeps it to a few milliseconds for a 512 px frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MODES = ("None", "HSV", "LAB", "RGB")
LAB_LEVELS = 1024
# the sRGB gamut fits in L 0..100, a -86..98, b -108..95: these ranges hold it with room to spare
LAB_RANGES = ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0))

_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65
# white-normalised: XYZ / white straight from linear sRGB, and back
_TO_XYZ = (_SRGB_TO_XYZ / _WHITE[:, None]).T.astype(np.float32)
_FROM_XYZ = (np.linalg.inv(_SRGB_TO_XYZ) * _WHITE[None, :]).T.astype(np.float32)
_EDGE = 6.0 / 29.0
_GAMMA_STEPS = 65535  # linear light in 1/65535 steps: under 0.05 of a byte level after the sRGB curve


def _constant(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _decode_curve(values: np.ndarray) -> np.ndarray:
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def _encode_curve(linear: np.ndarray) -> np.ndarray:
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


# lookup tables for the sRGB curve, whose powers are most of a conversion's cost
_BYTE_TO_LINEAR = _constant(_decode_curve(np.arange(256) / 255.0).astype(np.float32))
_LINEAR_TO_BYTE = _constant(np.rint(_encode_curve(np.linspace(0.0, 1.0, _GAMMA_STEPS + 1)) * 255.0).astype(np.uint8))


def srgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """sRGB bytes (any shape ending in 3) to CIE L*a*b* (D65) as float32."""
    xyz = _BYTE_TO_LINEAR[np.asarray(pixels, dtype=np.uint8)] @ _TO_XYZ
    f = np.cbrt(xyz)
    dark = xyz <= _EDGE**3  # few pixels: mending them afterwards beats computing both branches for all
    f[dark] = xyz[dark] / np.float32(3 * _EDGE**2) + np.float32(4.0 / 29.0)
    lab = np.empty(f.shape, dtype=np.float32)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) to sRGB bytes; colours outside sRGB are clipped to it."""
    lab = np.asarray(lab, dtype=np.float32)
    f = np.empty(lab.shape, dtype=np.float32)
    f[..., 1] = (lab[..., 0] + 16.0) / 116.0
    f[..., 0] = f[..., 1] + lab[..., 1] / 500.0
    f[..., 2] = f[..., 1] - lab[..., 2] / 200.0
    xyz = f * f * f
    dark = f <= _EDGE
    xyz[dark] = np.float32(3 * _EDGE**2) * (f[dark] - np.float32(4.0 / 29.0))
    steps = np.clip(xyz @ (_FROM_XYZ * _GAMMA_STEPS), 0.0, _GAMMA_STEPS) + np.float32(0.5)
    return _LINEAR_TO_BYTE[steps.astype(np.uint16)]  # + 0.5 and a cast: rounding, without np.rint's pass


def channel_mapping(source: np.ndarray, reference_counts: np.ndarray) -> np.ndarray:
    """Quantile mapping of one channel: for each code 0..levels-1 of ``source`` (integer codes), the
    reference code at the same quantile, where ``reference_counts`` says how many of the reference's
    pixels have each code. Codes between two of the reference's levels map between them."""
    levels = len(reference_counts)
    source_counts = np.bincount(source.ravel(), minlength=levels)
    present = np.flatnonzero(reference_counts)
    source_quantiles = np.cumsum(source_counts) / source.size
    reference_quantiles = np.cumsum(reference_counts[present]) / reference_counts.sum()
    return np.interp(source_quantiles, reference_quantiles, present.astype(np.float64))


class ColourReference:
    """A reference frame's channel distributions, counted once per colour space and reused for every
    frame of a clip (converting the reference again for each frame would double LAB's cost)."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image.convert("RGB")
        self._counts: dict[str, list[np.ndarray]] = {}

    def counts(self, mode: str) -> list[np.ndarray]:
        if mode not in self._counts:
            codes, levels = _codes(self.image, mode)
            self._counts[mode] = [np.bincount(codes[..., c].ravel(), minlength=levels) for c in range(3)]
        return self._counts[mode]


def match_colours(image: Image.Image, reference: Image.Image | ColourReference, mode: str = "LAB") -> Image.Image:
    """``image`` with its colour histograms matched to ``reference``'s in ``mode`` (see ``MODES``).

    The two pictures may differ in size: only their distributions are compared. Pass a
    ``ColourReference`` to match many frames to one reference."""
    if mode not in MODES:
        raise ValueError(f"colour coherence must be one of {', '.join(MODES)}, got {mode!r}")
    picture = image.convert("RGB")
    if mode == "None":
        return picture
    counts = (reference if isinstance(reference, ColourReference) else ColourReference(reference)).counts(mode)
    codes, levels = _codes(picture, mode)
    # each channel's mapping is a lookup table over its levels, applied to the pixels in one gather
    if mode == "LAB":
        lab = np.empty(codes.shape, dtype=np.float32)
        for channel, (low, high) in enumerate(LAB_RANGES):
            table = low + channel_mapping(codes[..., channel], counts[channel]) * (high - low) / (levels - 1)
            lab[..., channel] = table.astype(np.float32)[codes[..., channel]]
        return Image.fromarray(lab_to_srgb(lab), "RGB")
    values = np.empty(codes.shape, dtype=np.uint8)
    for channel in range(3):
        table = np.clip(np.rint(channel_mapping(codes[..., channel], counts[channel])), 0, 255).astype(np.uint8)
        values[..., channel] = table[codes[..., channel]]
    return Image.fromarray(values, "HSV").convert("RGB") if mode == "HSV" else Image.fromarray(values, "RGB")


def _codes(picture: Image.Image, mode: str) -> tuple[np.ndarray, int]:
    """Integer codes of each channel in ``mode``'s space, and how many levels they have."""
    if mode == "RGB":
        return np.asarray(picture), 256
    if mode == "HSV":
        return np.asarray(picture.convert("HSV")), 256
    lab = srgb_to_lab(np.asarray(picture))
    lows = np.array([low for low, _ in LAB_RANGES], dtype=np.float32)
    scales = np.array([(LAB_LEVELS - 1) / (high - low) for low, high in LAB_RANGES], dtype=np.float32)
    scaled = np.clip((lab - lows) * scales + np.float32(0.5), 0, LAB_LEVELS - 1)
    return scaled.astype(np.uint16), LAB_LEVELS  # after + 0.5 the cast to int rounds
