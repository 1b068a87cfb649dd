"""Noise travel between seeds, and prompt travel between embeddings, for animation frames.

The noise itself comes from ``pipelines.seeds``: a travel weight of 0 reproduces the plain seed's
picture, and the travel is spherical for the reason given there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..seeds import seeded_noise, slerp


def travel_noise(
    seed: int,
    next_seed: int,
    weight: float,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The initial latent noise of a frame planned with (``seed``, ``next_seed``, ``weight``)."""
    noise = seeded_noise(seed, shape, dtype, device)
    if next_seed == seed or weight == 0.0:
        return noise
    return slerp(noise, seeded_noise(next_seed, shape, dtype, device), weight)


def lerp(first: torch.Tensor, second: torch.Tensor, weight: float) -> torch.Tensor:
    """A straight blend, for prompt travel between two text embeddings of one shape."""
    if first.shape != second.shape:
        raise ValueError(f"lerp needs tensors of one shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    if not (isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0):
        raise ValueError(f"lerp weight must be between 0 and 1, got {weight!r}")
    return torch.lerp(first, second.to(first.device, first.dtype), float(weight))
