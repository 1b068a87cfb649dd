"""Upscaling: A1111's upscalers by name (``upscalers``) and the hires fix built on them (``hires``).

Importing this package is light (no torch): request checking uses the names and size rules.
"""

from .hires import HiresPlan, hires_problems, plan, second_pass, second_pass_steps, target_size
from .upscalers import DEFAULT_UPSCALER, UpscalerLibrary, is_latent

__all__ = [
    "DEFAULT_UPSCALER",
    "HiresPlan",
    "UpscalerLibrary",
    "hires_problems",
    "is_latent",
    "plan",
    "second_pass",
    "second_pass_steps",
    "target_size",
]
