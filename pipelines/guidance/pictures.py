"""Pictures from outside (uploads, gallery files, downloads) read safely: only a few raster formats,
bounded in pixels, checked whole before decoding, and always upright RGB."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from ..errors import BadRequest
from ..outputs import UNREADABLE

log = logging.getLogger(__name__)

MAX_REFERENCE_PIXELS = 40_000_000  # far above any reference worth using; bounds decoding a hostile file
# Raster formats only: Pillow can also open formats it decodes through outside programs (EPS runs
# Ghostscript), which a file from the internet must never reach.
READABLE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def decode_picture(source: Path | bytes, what: str, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """An RGB picture from a file or downloaded bytes: checked whole (verify), bounded in pixels, then decoded."""

    def open_source() -> Image.Image:
        file: Path | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
        return Image.open(file, formats=formats)

    try:
        with open_source() as probe:  # verify() leaves the image unusable: it is opened again to decode
            if probe.width * probe.height > max_pixels:
                raise BadRequest(f"{what} is {probe.width}x{probe.height}: more than {max_pixels} pixels")
            probe.verify()
        with open_source() as image:
            image.load()
            return as_rgb(image)
    except Image.DecompressionBombError as exc:
        raise BadRequest(f"{what} has more pixels than allowed ({exc})") from exc
    except UNREADABLE as exc:
        kinds = ", ".join(formats)
        raise BadRequest(f"{what} is not an image Atelier reads ({kinds}): {exc}") from exc


def as_rgb(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied) and RGB; transparent parts become white, not black."""
    upright = ImageOps.exif_transpose(image)
    if upright.mode == "RGB":
        return upright
    if "A" in upright.getbands() or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return upright.convert("RGB")
