"""Seeded latent noise matches diffusers' own draw, and seed travel slerps without losing spread."""

from __future__ import annotations

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from pipelines.animation.noise import lerp, travel_noise
from pipelines.seeds import seeded_noise, slerp

SHAPE = (1, 4, 16, 16)


def test_seeded_noise_is_what_diffusers_draws_for_that_seed() -> None:
    ours = seeded_noise(42, SHAPE)
    theirs = randn_tensor(SHAPE, generator=torch.Generator("cpu").manual_seed(42), dtype=torch.float32)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, seeded_noise(43, SHAPE))
    assert seeded_noise(42, SHAPE, dtype=torch.float16).dtype == torch.float16


def test_slerp_ends_are_exact_and_the_middle_keeps_the_spread() -> None:
    a, b = seeded_noise(1, SHAPE), seeded_noise(2, SHAPE)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    middle = slerp(a, b, 0.5)
    assert middle.std().item() == pytest.approx(a.std().item(), rel=0.05)
    assert lerp(a, b, 0.5).std().item() == pytest.approx(a.std().item() / 2**0.5, rel=0.08)  # why not lerp
    b_scaled = b * (a.norm() / b.norm())  # of one length, the middle of the arc is as near to either end
    middle = slerp(a, b_scaled, 0.5)
    to_a = torch.nn.functional.cosine_similarity(middle.flatten(), a.flatten(), dim=0).item()
    to_b = torch.nn.functional.cosine_similarity(middle.flatten(), b_scaled.flatten(), dim=0).item()
    assert to_a == pytest.approx(to_b, abs=1e-5)
    assert middle.norm().item() == pytest.approx(a.norm().item(), rel=1e-5)


def test_slerp_moves_steadily_along_the_arc() -> None:
    a, b = seeded_noise(1, SHAPE), seeded_noise(2, SHAPE)
    distances = [torch.dist(slerp(a, b, w / 10), a).item() for w in range(11)]
    assert distances == sorted(distances)


def test_slerp_of_parallel_noise_falls_back_to_a_blend() -> None:
    a = seeded_noise(1, SHAPE)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a, atol=1e-5)
    zero = torch.zeros(SHAPE)
    assert torch.equal(slerp(zero, zero, 0.3), zero)


def test_slerp_and_lerp_refuse_bad_inputs() -> None:
    a = seeded_noise(1, SHAPE)
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, a[:, :2], 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        slerp(a, a, 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        lerp(a, a, -0.1)


def test_travel_noise_for_a_plan() -> None:
    assert torch.equal(travel_noise(5, 9, 0.0, SHAPE), seeded_noise(5, SHAPE))
    assert torch.equal(travel_noise(5, 5, 0.7, SHAPE), seeded_noise(5, SHAPE))
    assert torch.allclose(travel_noise(5, 9, 1.0, SHAPE), seeded_noise(9, SHAPE))
    assert torch.allclose(travel_noise(5, 9, 0.3, SHAPE), slerp(seeded_noise(5, SHAPE), seeded_noise(9, SHAPE), 0.3))
