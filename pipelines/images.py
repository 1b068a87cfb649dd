"""Pixel work around a generation: fitting init images, preparing masks, compositing inpaints."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .errors import BadRequest


def fit(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """Bring an image to ``width``x``height`` the way A1111's resize modes do."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    if resize_mode == "just resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if resize_mode == "crop and resize":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    # "resize and fill": fit inside, then stretch the edge pixels into the empty bands
    inner = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
    canvas = image.resize((width, height), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(16))
    canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    return canvas


def prepare_mask(
    mask: Image.Image, width: int, height: int, invert: bool, resize_mode: str = "just resize"
) -> Image.Image:
    """A greyscale mask at the output size, white = redraw, fitted like the picture it belongs to.
    Empty masks are refused."""
    if mask.mode in ("RGBA", "LA"):
        # A painted layer: the strokes are where alpha is set (Gradio's ImageEditor gives these).
        # An alpha that is opaque everywhere holds no strokes; then the colours are the mask.
        alpha = mask.getchannel("A")
        if alpha.histogram()[255] < alpha.width * alpha.height:
            mask = alpha
    grey = mask.convert("L")
    if resize_mode == "crop and resize":
        grey = ImageOps.fit(grey, (width, height), Image.Resampling.NEAREST)
    elif resize_mode == "resize and fill":
        inner = ImageOps.contain(grey, (width, height), Image.Resampling.NEAREST)
        grey = Image.new("L", (width, height), 0)  # the stretched bands around the picture are kept
        grey.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    else:
        grey = grey.resize((width, height), Image.Resampling.NEAREST)
    if invert:
        grey = ImageOps.invert(grey)
    low, high = grey.getextrema()
    if high == 0:
        raise BadRequest("the mask is empty (all black): paint the area to redraw")
    if low == 255 and invert:
        raise BadRequest("the inverted mask covers nothing: every pixel was painted")
    return grey


def fill_masked(image: Image.Image, mask: Image.Image, masked_content: str, seed: int) -> Image.Image:
    """What the model starts from inside the mask, as A1111's "Masked content" options.

    "latent noise" and "latent nothing" are approximated in pixel space: random colours, or the
    neutral grey that decodes from an all-zero latent.
    """
    if masked_content == "original":
        return image
    if masked_content == "fill":
        # Repeated blurs of the kept pixels spread the surrounding colours into the hole.
        keep = ImageOps.invert(mask)
        filled = image.copy()
        for radius in (64, 32, 16, 8, 4, 2, 1):
            blurred = filled.filter(ImageFilter.GaussianBlur(radius))
            filled = Image.composite(image, blurred, keep)
        return filled
    if masked_content == "latent noise":
        rng = np.random.default_rng(seed)
        noise = Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8), "RGB")
        return Image.composite(noise, image, mask)
    grey = Image.new("RGB", image.size, (128, 128, 128))
    return Image.composite(grey, image, mask)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def composite(original: Image.Image, generated: Image.Image, soft_mask: Image.Image) -> Image.Image:
    """Generated pixels where the mask is set, the original's exactly where it is zero."""
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    return Image.composite(generated.convert("RGB"), original, soft_mask)
