"""The optional invisible watermark: a 48-bit message of the user's, hidden in a picture's pixels.

The mark has the layout of the ``invisible-watermark`` package's DWT-DCT method (``imwatermark``,
method ``dwtDct``) and is read back by that package's own ``WatermarkDecoder``, so anyone with the
package can check a picture:

    WatermarkDecoder("bytes", 48).decode(bgr_uint8, "dwtDct", scales=[36, 0, 0])

The layout: the picture's luma (OpenCV's YUV) goes through one level of the Haar wavelet; its
low-pass band is cut into 4x4 blocks (8x8 pixels each), block ``n`` carries bit ``n % 48`` (most
significant bit of the first byte first, as ``numpy.unpackbits`` orders them), and a block reads
as 1 when its largest coefficient (the top-left one left out) modulo the step 36 is over 18. Each
bit is carried by many blocks (85 at 512x512) and read back by majority.

We embed it ourselves rather than with the package's ``WatermarkEncoder``: measured on the demo's
kind of picture (a coloured shape on a plain background) at 512 px, that encoder's default (the U
channel) read back 26 of the 48 bits wrong on white backgrounds and lost the mark after JPEG
quality 95 on every plain background, and on luma it left 22 bits wrong at 25.8 dB PSNR: it
floors each coefficient to its quantisation cell (so the largest one can stop being the largest
and the decoder reads another), it hands the wavelet's detail bands back swapped (textured
pictures lose 10-15 dB), and it casts to uint8 without rounding or clipping (bright colours wrap
to dark). Here each block moves its largest coefficient to the nearest value that reads as the
wanted bit with a margin, stays the largest, and keeps every pixel in range; only that
coefficient's 2x2 pixels change (about 3% of the picture), then the result is read back with the
package's decoder and refused, with a note, when a bit does not come back.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadRequest

log = logging.getLogger(__name__)

MESSAGE_BITS = 48
# The package refuses pictures under 256*256 pixels (it checks the area); we ask for both sides,
# since a 48-bit mark needs enough blocks per bit for the majority vote (21 at 256x256). Measured on
# the demo's pictures (8 colours x 6 backgrounds x 2 shapes, a noisy photo-like one, and real demo
# model outputs) at sides 256, 257, 288, 320, 384, 448, 512, 515 and 768: all 48 bits read back, as
# PNG and as JPEG quality 95 and 90. Below 256 the package's decoder refuses to run at all.
MIN_SIDE = 256
STEP = 36.0  # the package's quantisation step for dwtDct: the larger, the more a JPEG can move a coefficient
SCALES = (STEP, 0.0, 0.0)  # the package's per-channel steps (Y, U, V): luma only, see below
BLOCK = 4  # coefficients per block side, the package's default
# Luma, not the package's default U channel: 4:2:0 JPEG halves chroma and its quantisation smears a
# 2x2 chroma bump away (every plain-background picture lost the mark at quality 95 on U), and a
# bright background has no room to move U (blue is already near 255 on white). On luma the same
# pictures read back every bit at JPEG quality 95 and 90, with 41 dB or more PSNR.
MARGIN = 5.0  # how far inside its half-cell (+-9) a coefficient is put: survives uint8 rounding and JPEG 90+
ROUNDS = 3  # embed, round to uint8, look again: a block that rounding moved is fixed in the next round
# matches() forgives this many flipped bits. A lossless copy reads back exactly (apply() checks it),
# and JPEG quality 90-95 flipped none of 48 in our measurements; at quality 85 a third of the
# plain-background pictures lost the mark all at once (their background's bumps are quantised away
# together: 22-26 bits) while the rest kept every bit, so a larger tolerance would buy little. The
# chance that an unrelated 48-bit reading lands within 4 bits of a message is sum(C(48, k), k <= 4) / 2**48 = 7.6e-10.
MATCH_TOLERANCE = 4
_LUMA_BGR = (0.114, 0.587, 0.299)  # OpenCV's Y weights, in the BGR order it works in
_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]{12})")
_HEX_PREFIX = re.compile(r"0[xX]")  # "0x12" meant hex: too short, not the text "0x12"
_FORMS = "12 hex digits (like 'a1b2c3d4e5f6', optionally 0x-prefixed) or 1 to 6 ASCII characters (like 'atelr1')"


def _libraries() -> tuple[Any, Any]:
    """OpenCV and the package's decoder, imported on first use: together they take 1.3 s to import."""
    try:
        import cv2
        from imwatermark import WatermarkDecoder
    except ImportError as error:
        raise BadRequest(
            f"the invisible watermark needs the invisible-watermark package ({error}): pip install -e '.[watermark]'"
        ) from error
    return cv2, WatermarkDecoder


@dataclass(frozen=True)
class Watermark:
    """A 48-bit message to hide in pictures; ``parse`` makes one from what a user typed."""

    message: int

    def __post_init__(self) -> None:
        if not 0 <= self.message < 1 << MESSAGE_BITS:
            raise BadRequest(f"watermark message {self.message!r} does not fit in {MESSAGE_BITS} bits")

    @classmethod
    def parse(cls, text: str) -> Watermark:
        """``"a1b2c3d4e5f6"`` / ``"0xA1B2C3D4E5F6"`` (12 hex digits) or ``"atelr1"`` (up to 6 ASCII
        characters, padded with spaces to 6 bytes). Surrounding spaces are ignored."""
        value = text.strip() if isinstance(text, str) else text
        if not isinstance(value, str) or not value:
            raise BadRequest(f"watermark message {text!r} is empty; give {_FORMS}")
        if hexdigits := _HEX.fullmatch(value):
            message = int(hexdigits.group(1), 16)
        elif len(value) <= MESSAGE_BITS // 8 and all(" " <= ch <= "~" for ch in value) and not _HEX_PREFIX.match(value):
            message = int.from_bytes(value.ljust(MESSAGE_BITS // 8).encode("ascii"), "big")
        else:
            raise BadRequest(f"watermark message {text!r} is neither {_FORMS}")
        ones = message.bit_count()
        if ones <= MATCH_TOLERANCE or ones >= MESSAGE_BITS - MATCH_TOLERANCE:
            # A plain picture with no mark reads back as all zeros or all ones: such a message
            # would "match" pictures that were never marked.
            raise BadRequest(
                f"watermark message {text!r} has {ones} of {MESSAGE_BITS} bits set: too close to all zeros or all "
                "ones, which unmarked plain pictures read back as; choose another"
            )
        return cls(message)

    @property
    def hex(self) -> str:
        return f"{self.message:012x}"

    @property
    def payload(self) -> bytes:
        """The 6 bytes the package writes and reads (``"bytes"`` type), first byte first."""
        return self.message.to_bytes(MESSAGE_BITS // 8, "big")

    @property
    def text(self) -> str | None:
        """The message as ASCII when every byte is printable (trailing padding spaces removed)."""
        if not all(0x20 <= byte <= 0x7E for byte in self.payload):
            return None
        return self.payload.decode("ascii").rstrip(" ") or None

    @property
    def label(self) -> str:
        """How the UI shows it: ``atelr1 (0x6174656c7231)`` or ``0xa1b2c3d4e5f6``."""
        return f"{self.text} (0x{self.hex})" if self.text else f"0x{self.hex}"

    def bits(self) -> np.ndarray:
        return np.unpackbits(np.frombuffer(self.payload, dtype=np.uint8))

    def distance(self, other: Watermark) -> int:
        """How many of the 48 bits differ."""
        return (self.message ^ other.message).bit_count()

    def apply(self, image: Image.Image) -> tuple[Image.Image, str | None]:
        """The picture with the mark (same size; RGB, or RGBA with its alpha kept) and None; or the
        picture unchanged and a note saying why it carries no mark (too small, or too flat and
        bright for the bits to read back)."""
        if note := _too_small(image):
            return image, note
        cv2, decoder = _libraries()
        started = time.perf_counter()
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        marked = _embed(cv2, bgr, self.bits())
        flipped = self.distance(_read_bgr(decoder, marked))
        if flipped:
            width, height = image.size
            note = (
                f"no invisible watermark: {flipped} of its {MESSAGE_BITS} bits would not read back from this "
                f"{width}x{height} picture (large flat areas of pure white or saturated colour leave the DWT-DCT "
                "mark no room)"
            )
            log.info("%s", note)
            return image, note
        result = Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]), "RGB")
        if alpha is not None:
            result.putalpha(alpha)
        log.debug("watermark %s applied to %dx%d in %.0f ms", self.label, *image.size, _ms(started))
        return result, None


def read(image: Image.Image) -> Watermark | None:
    """The 48 bits the picture carries, or None below ``MIN_SIDE``. Any picture reads as some
    message (a plain one as all zeros or all ones): compare with ``matches`` to know whether it is
    the one expected."""
    if _too_small(image):
        return None
    _, decoder = _libraries()
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return _read_bgr(decoder, bgr)


def matches(image: Image.Image, watermark: Watermark, tolerance: int = MATCH_TOLERANCE) -> bool:
    """Whether the picture carries ``watermark``, forgiving ``tolerance`` flipped bits (see
    ``MATCH_TOLERANCE``). False for pictures too small to carry a mark."""
    found = read(image)
    return found is not None and found.distance(watermark) <= tolerance


def _too_small(image: Image.Image) -> str | None:
    width, height = image.size
    if min(width, height) >= MIN_SIDE:
        return None
    return f"no invisible watermark: {width}x{height} is below the {MIN_SIDE}x{MIN_SIDE} the DWT-DCT mark needs"


def _read_bgr(decoder_class: Any, bgr: np.ndarray) -> Watermark:
    decoder = decoder_class("bytes", MESSAGE_BITS)
    payload = decoder.decode(bgr, "dwtDct", scales=list(SCALES), block=BLOCK)
    return Watermark(int.from_bytes(payload, "big"))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _embed(cv2: Any, bgr: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``bgr`` (uint8) with every block's largest low-pass luma coefficient moved to read as its bit."""
    height, width = bgr.shape[:2]
    rows, cols = height // 4 * 2 // BLOCK, width // 4 * 2 // BLOCK  # blocks, cropped as the package crops
    count = rows * cols
    wanted = bits[np.arange(count) % bits.size].astype(np.float64)
    order = np.arange(count)
    out = bgr
    for _ in range(ROUNDS):
        luma = cv2.cvtColor(out, cv2.COLOR_BGR2YUV)[: rows * 2 * BLOCK, : cols * 2 * BLOCK, 0].astype(np.float64)
        # Haar low-pass band: each coefficient is the sum of a 2x2 pixel square over 2.
        low = (luma[0::2, 0::2] + luma[0::2, 1::2] + luma[1::2, 0::2] + luma[1::2, 1::2]) / 2
        blocks = low.reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3).reshape(count, BLOCK * BLOCK)
        others = np.abs(blocks[:, 1:])  # the decoder leaves the top-left coefficient out
        place = np.argmax(others, axis=1)
        value = others[order, place]
        others[order, place] = -1.0
        runner_up = others.max(axis=1)
        # Where the 2x2 pixels of each block's largest coefficient lie.
        y = ((order // cols) * BLOCK + (place + 1) // BLOCK) * 2
        x = ((order % cols) * BLOCK + (place + 1) % BLOCK) * 2
        work = out.astype(np.float64)
        squares = [(y + dy, x + dx) for dy in (0, 1) for dx in (0, 1)]
        weights = np.array(_LUMA_BGR)
        # How far luma can go up or down in each pixel (through whichever channels are not at 0/255);
        # a coefficient moves twice its pixels' luma step.
        room_up = 2 * np.min([((255.0 - work[sy, sx]) * weights).sum(axis=1) for sy, sx in squares], axis=0)
        room_down = 2 * np.min([(work[sy, sx] * weights).sum(axis=1) for sy, sx in squares], axis=0)
        target = _nearest_target(value, wanted, np.maximum(runner_up, value - room_down), value + room_up)
        step = target - value
        if not np.any(np.abs(step) > 0.25):
            break
        for sy, sx in squares:
            work[sy, sx] += _luma_change(work[sy, sx], step / 2, weights)
        out = np.clip(np.rint(work), 0, 255).astype(np.uint8)
    return out


def _nearest_target(value: np.ndarray, wanted: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The value nearest ``value`` in [low, high] that reads as ``wanted`` with ``MARGIN`` to spare;
    ``value`` itself where none does (that block's vote is lost; the read-back check counts)."""
    best = value.copy()
    distance = np.full(value.shape, np.inf)
    cell = np.floor(value / STEP)
    half = STEP / 4 - MARGIN  # a bit's half-cell is centred at (k + 0.25 + 0.5 * bit) * STEP, +-STEP/4
    for shift in (-1.0, 0.0, 1.0):
        centre = (cell + shift + 0.25 + 0.5 * wanted) * STEP
        lo, hi = np.maximum(centre - half, low), np.minimum(centre + half, high)
        candidate = np.clip(value, lo, hi)
        gap = np.where(lo <= hi, np.abs(candidate - value), np.inf)
        better = gap < distance
        best[better], distance[better] = candidate[better], gap[better]
    return best


def _luma_change(pixels: np.ndarray, luma: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-pixel BGR changes that move luma by ``luma``: the same amount ``d`` on every channel (the
    least change), capped where a channel reaches 0 or 255, with ``d`` raised so the others make up."""
    rising = luma >= 0
    room = np.where(rising[:, None], 255.0 - pixels, pixels)
    need = np.abs(luma)
    # Luma reached by a common amount d is sum(w * min(d, room)): piecewise linear, with a bend at
    # each channel's room. Find the segment where it reaches ``need`` and solve on it.
    order = np.argsort(room, axis=1)
    bends = np.take_along_axis(room, order, axis=1)
    w = weights[order]
    below = np.cumsum(w * bends, axis=1) - w * bends  # luma from the channels already capped
    still = np.cumsum(w[:, ::-1], axis=1)[:, ::-1]  # weight of the channels still moving
    reached = below + bends * still  # luma at each bend
    segment = np.minimum(np.argmax(reached >= need[:, None], axis=1), 2)
    rows = np.arange(len(need))
    amount = (need - below[rows, segment]) / still[rows, segment]
    change = np.minimum(amount[:, None], room)
    return np.where(rising[:, None], change, -change)
