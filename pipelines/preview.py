"""Cheap live previews: latents -> RGB by a fixed linear map, no VAE pass.

The factors are the widely used per-channel approximations for SD 1.x/2.x and SDXL latent spaces;
a preview costs microseconds, so it can run every few steps without slowing generation.
"""

from __future__ import annotations

import torch
from PIL import Image

_SD_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
_SDXL_FACTORS = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)


def latents_to_image(latents: torch.Tensor, family: str, size: tuple[int, int]) -> Image.Image:
    """The first latent of a batch as a small RGB picture scaled to ``size``."""
    factors = torch.tensor(_SDXL_FACTORS if family == "sdxl" else _SD_FACTORS, dtype=torch.float32)
    rgb = latents[0, :4].detach().float().cpu().permute(1, 2, 0) @ factors
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB").resize(size, Image.Resampling.BILINEAR)
