"""Seeded latent noise and its travel between seeds.

``seeded_noise`` draws exactly what diffusers draws for latents from a CPU ``torch.Generator`` seeded
the same way, so a travel weight of 0 reproduces the plain seed's picture. ``slerp`` moves along the
sphere between two noises: a straight blend would shrink the noise's norm half-way (two independent
Gaussians averaged have ~0.71 of the spread) and give washed-out frames there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PARALLEL = 0.9995  # cosine above which two noises are treated as parallel and blended linearly


def seeded_noise(
    seed: int, shape: Sequence[int], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal noise of ``shape`` from a CPU generator seeded with ``seed``, then moved to
    ``device``: the same numbers on every machine, as diffusers' ``randn_tensor`` with that generator."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(tuple(shape), generator=generator, dtype=dtype, device="cpu")
    return noise.to(device)


def slerp(first: torch.Tensor, second: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation from ``first`` (weight 0) to ``second`` (weight 1), over the whole tensor.

    Nearly parallel inputs are blended linearly (the sphere's formula divides by ~0 there). Computed
    in float64 and returned in ``first``'s dtype and device.
    """
    if first.shape != second.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    if not (isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0):
        raise ValueError(f"slerp weight must be between 0 and 1, got {weight!r}")
    if weight == 0.0:
        return first.clone()
    if weight == 1.0:
        return second.to(first.device, first.dtype, copy=True)
    a = first.detach().to(torch.float64).flatten()
    b = second.detach().to(device=first.device, dtype=torch.float64).flatten()
    norms = a.norm() * b.norm()
    cosine = float((a @ b) / norms) if float(norms) > 0 else 1.0
    if abs(cosine) > PARALLEL:
        mixed = (1.0 - weight) * a + weight * b
    else:
        angle = math.acos(max(-1.0, min(1.0, cosine)))
        mixed = (math.sin((1.0 - weight) * angle) * a + math.sin(weight * angle) * b) / math.sin(angle)
    return mixed.reshape(first.shape).to(first.dtype)


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
