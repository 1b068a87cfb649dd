"""The starting noise of pictures, drawn as A1111 and diffusers draw it, and its variations.

Each picture's noise comes from a CPU ``torch.Generator`` seeded with that picture's seed, so the
noise depends on the seed alone (not the device, nor the picture's place in a batch), and equals what
diffusers' ``randn_tensor`` draws from such a generator: a request without variation gets exactly the
pictures it got before. ``slerp`` moves along the sphere between two noises: a straight blend would
shrink the noise's norm half-way (two independent Gaussians averaged have ~0.71 of the spread) and
give washed-out pictures there.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

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


def variation_noise(
    seed: int,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    subseed: int = 0,
    subseed_strength: float = 0.0,
    drawn_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One picture's noise of ``shape`` (1, C, H, W), A1111's way.

    ``subseed_strength`` blends in ``subseed``'s noise (A1111's variation seed). ``drawn_size`` is
    the latent (height, width) to draw the noise at ("seed resize from"): that noise is placed at the
    centre of fresh noise of ``shape`` (cropped when larger), so the seed keeps its composition.
    """
    batch, channels, height, width = shape
    drawn = (batch, channels, *(drawn_size or (height, width)))
    noise = seeded_noise(seed, drawn, dtype)
    if subseed_strength:
        noise = slerp(noise, seeded_noise(subseed, drawn, dtype), subseed_strength)
    if drawn == tuple(shape):
        return noise
    canvas = seeded_noise(seed, shape, dtype)
    # The overlap of the two, centred on both: offsets are >= 0 on the side that is larger.
    rows, cols = min(height, drawn[2]), min(width, drawn[3])
    top, left = max(0, (height - drawn[2]) // 2), max(0, (width - drawn[3]) // 2)
    src_top, src_left = max(0, (drawn[2] - height) // 2), max(0, (drawn[3] - width) // 2)
    canvas[:, :, top : top + rows, left : left + cols] = noise[
        :, :, src_top : src_top + rows, src_left : src_left + cols
    ]
    return canvas


def batch_noise(
    seeds: Sequence[int],
    subseeds: Sequence[int],
    subseed_strength: float,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    drawn_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The noise of a batch: ``variation_noise`` of each (seed, subseed), stacked."""
    one = (1, *shape[1:])
    return torch.cat([
        variation_noise(seed, one, dtype, subseed, subseed_strength, drawn_size)
        for seed, subseed in zip(seeds, subseeds, strict=True)
    ])  # fmt: skip


@contextlib.contextmanager
def varied(
    pipe: Any,
    from_image: bool,
    seeds: list[int],
    subseeds: list[int],
    subseed_strength: float,
    resize_from: tuple[int, int],
    kwargs: dict[str, Any],
) -> Iterator[None]:
    """A diffusers call (``pipe(**kwargs)`` inside) with variation seeds and, in text to image,
    "seed resize from" (``resize_from`` = (width, height) in pixels; 0 = off). Without them
    diffusers' own draw from the seeds' generators is the same noise: nothing changes."""
    if from_image:
        with _image_noise_varied(pipe, subseeds, subseed_strength) if subseed_strength else contextlib.nullcontext():
            yield
        return
    resize = resize_from[0] > 0 and resize_from[1] > 0
    if subseed_strength or resize:
        scale = pipe.vae_scale_factor
        shape = (len(seeds), pipe.unet.config.in_channels, kwargs["height"] // scale, kwargs["width"] // scale)
        drawn = (resize_from[1] // scale, resize_from[0] // scale) if resize else None
        noise = batch_noise(seeds, subseeds, subseed_strength, shape, pipe.unet.dtype, drawn)
        kwargs["latents"] = noise.to(pipe.unet.device)
    yield


@contextlib.contextmanager
def _image_noise_varied(pipe: Any, subseeds: list[int], strength: float) -> Iterator[None]:
    """Image to image and inpainting draw their noise inside ``prepare_latents`` (after the VAE's
    sampling used the same generators) and take none from the caller: a ``latents`` argument means
    "start from pure noise" there. For the call, the pipeline module's ``randn_tensor`` draws as
    before and blends each picture's subseed noise in, so a small strength nudges the picture
    rather than starting another. Only the device thread runs pipelines: no other call sees it."""
    module = sys.modules[type(pipe).__module__]
    original = module.randn_tensor

    def draw(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, layout: Any = None) -> Any:
        noise = original(shape, generator=generator, device=device, dtype=dtype, layout=layout)
        if len(shape) != 4 or shape[0] != len(subseeds):
            return noise
        one = (1, *shape[1:])
        extra = [seeded_noise(subseed, one, noise.dtype, noise.device) for subseed in subseeds]
        return torch.cat([slerp(noise[i : i + 1], e, strength) for i, e in enumerate(extra)])

    module.randn_tensor = draw  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.randn_tensor = original  # type: ignore[attr-defined]
