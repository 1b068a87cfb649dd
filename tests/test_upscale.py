"""Upscalers and the hires fix: A1111's sizes and names, pixels of each upscaler, and the second pass
on the demo model (64 px first pass -> 128 px)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import samplers, scenes
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.requests import Limits
from pipelines.upscale import UpscalerLibrary, hires, upscalers

RED, BLUE = (220, 30, 35), (30, 80, 225)
LATENTS = [m.name for m in upscalers.LATENT_MODES]


def split_picture(width: int, height: int) -> Image.Image:
    """Red on the left half, blue on the right."""
    picture = Image.new("RGB", (width, height), RED)
    picture.paste(BLUE, (width // 2, 0, width, height))
    return picture


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- sizes, steps, checks --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "scale", "resize", "upscaled", "final"),
    [
        ((64, 64), 2.0, (0, 0), (128, 128), (128, 128)),
        ((512, 768), 1.5, (0, 0), (768, 1152), (768, 1152)),
        ((512, 512), 1.3, (0, 0), (664, 664), (664, 664)),  # int(665.6) = 665, down to 8-pixel cells
        ((512, 768), 2.0, (1024, 0), (1024, 1536), (1024, 1536)),  # one side given: the aspect is kept
        ((512, 768), 2.0, (0, 1024), (680, 1024), (680, 1024)),  # 1024 * 512 // 768 = 682 -> 680
        ((512, 512), 2.0, (1024, 768), (1024, 1024), (1024, 768)),  # both: cover, then crop
        ((768, 512), 2.0, (1024, 1024), (1536, 1024), (1024, 1024)),
        ((512, 512), 2.0, (1001, 1001), (1000, 1000), (1000, 1000)),
    ],
)
def test_target_sizes_follow_a1111(
    first: tuple[int, int], scale: float, resize: tuple[int, int], upscaled: tuple[int, int], final: tuple[int, int]
) -> None:
    assert hires.upscaled_size(*first, scale, *resize) == upscaled
    assert hires.target_size(*first, scale, *resize) == final
    plan = hires.plan(*first, steps=20, hr_scale=scale, hr_resize_x=resize[0], hr_resize_y=resize[1])
    assert (plan.upscale_width, plan.upscale_height, plan.width, plan.height) == (*upscaled, *final)


def test_both_resizes_cut_the_surplus_evenly() -> None:
    plan = hires.plan(512, 512, steps=20, hr_resize_x=1024, hr_resize_y=768)
    assert plan.crop_box == (0, 128, 1024, 896)
    # 1031 px of cover (8-px cells: 1024) for 1000: 3 surplus cells, 1 off the left and 2 off the right,
    # where A1111 truncates its latents
    odd = hires.plan(520, 504, steps=20, hr_resize_x=1000, hr_resize_y=1000)
    assert (odd.upscale_width, odd.upscale_height) == (1024, 1000)
    assert odd.crop_box == (8, 0, 1008, 1000)


def test_second_pass_steps_and_schedule() -> None:
    assert hires.second_pass_steps(20, 0) == 20
    assert hires.second_pass_steps(20, 7) == 7
    for strength in (0.05, 0.3, 0.33, 0.5, 0.7, 0.75, 0.99, 1.0):
        for steps in (1, 4, 20, 37, 150):
            total = hires.schedule_steps(steps, strength)
            assert min(int(total * strength), total) == steps  # what diffusers' img2img runs
            assert total == steps or int((total - 1) * strength) < steps  # and no longer than needed
    assert hires.schedule_steps(20, 0.0) == 0
    plan = hires.plan(64, 64, steps=20, hr_second_pass_steps=6, denoising_strength=0.0)
    assert plan.steps == 0  # strength 0: nothing is redrawn


def test_bad_hires_values_are_refused_naming_them() -> None:
    with pytest.raises(BadRequest) as caught:
        hires.plan(512, 512, steps=20, hr_scale=0.0, hr_second_pass_steps=-1, denoising_strength=1.5, hr_upscaler=3)
    text = str(caught.value)
    assert "hr_scale must be between 1 and 4, got 0.0" in text
    assert "hr_second_pass_steps" in text and "-1" in text
    assert "denoising_strength must be between 0 and 1, got 1.5" in text
    assert "hr_upscaler must be text, got int" in text
    with pytest.raises(BadRequest, match=r"hr_resize_x .* got -8"):
        hires.plan(512, 512, steps=20, hr_resize_x=-8)
    with pytest.raises(BadRequest, match=r"1024x1024 pixels \(from 512x512, hr_scale 2\), more than this device"):
        hires.plan(512, 512, steps=20, limits=Limits(max_pixels=768 * 768))
    with pytest.raises(BadRequest, match=r"makes the height 32 \(from 512x512, resize 64x32\)"):
        hires.plan(512, 512, steps=20, hr_resize_x=64, hr_resize_y=32)
    # hr_scale is not read when a resize is given, as in A1111
    assert hires.plan(64, 64, steps=4, hr_scale=0.0, hr_resize_x=128).width == 128


def test_hires_infotext_keys() -> None:
    scaled = hires.plan(64, 64, steps=8, hr_upscaler="lanczos", denoising_strength=0.45, hr_second_pass_steps=5)
    assert scaled.infotext_params() == {
        "Denoising strength": 0.45,
        "Hires upscale": 2.0,
        "Hires steps": 5,
        "Hires upscaler": "Lanczos",
    }
    resized = hires.plan(64, 64, steps=8, hr_resize_x=128, hr_resize_y=96)
    assert resized.infotext_params() == {
        "Denoising strength": 0.7,
        "Hires resize": "128x96",
        "Hires upscaler": "Latent",
    }


# -- names --------------------------------------------------------------------------------
def test_upscaler_names_in_a1111_order(tmp_path: Path) -> None:
    for path in ("ESRGAN/b-4x.safetensors", "RealESRGAN/A 2x.safetensors", "ESRGAN/pickled.pth",
                 "ESRGAN/Lanczos.safetensors", "RealESRGAN/b-4x.safetensors"):  # fmt: skip
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_bytes(b"not read until used")
    library = UpscalerLibrary(tmp_path)
    assert library.names() == [*LATENTS, "None", "Lanczos", "Nearest", "A 2x", "b-4x"]
    assert library.image_names() == ["None", "Lanczos", "Nearest", "A 2x", "b-4x"]
    assert library.model_files()["b-4x"] == tmp_path / "ESRGAN/b-4x.safetensors"  # the first folder wins
    assert library.check("latent (BICUBIC antialiased)") == "Latent (bicubic antialiased)"
    assert library.check("") == library.check(None) == "Latent"  # A1111's default
    assert library.is_latent("Latent (nearest)") and not library.is_latent("A 2x")
    with pytest.raises(BadRequest) as caught:
        library.check("R-ESRGAN 4x+")
    assert "unknown hr_upscaler 'R-ESRGAN 4x+'; known: Latent, " in str(caught.value)
    assert "A 2x, b-4x" in str(caught.value)
    assert UpscalerLibrary(tmp_path / "missing").names() == [*LATENTS, "None", "Lanczos", "Nearest"]
    with pytest.raises(BadRequest, match="unknown hr_upscaler 'pickled'"):
        hires.plan(64, 64, steps=4, hr_upscaler="pickled", upscalers=library)


# -- pixels of each upscaler ------------------------------------------------------------------
@pytest.mark.parametrize("name", LATENTS)
def test_latent_upscale_keeps_the_layout(name: str) -> None:
    latents = torch.ones(2, 4, 8, 8)
    latents[:, :, :, 4:] = -1.0  # left +1, right -1
    enlarged = UpscalerLibrary(".").upscale_latents(latents, 16, 12, name)
    assert enlarged.shape == (2, 4, 12, 16)
    assert torch.allclose(enlarged[..., :4], torch.ones(1), atol=1e-5)  # away from the edge: unchanged
    assert torch.allclose(enlarged[..., 12:], -torch.ones(1), atol=1e-5)
    assert (enlarged[..., :7] > 0.9).all() and (enlarged[..., 9:] < -0.9).all()  # bicubic rings a little
    edge = enlarged[0, 0, 0, 6:10]
    if "nearest" in name:
        assert set(edge.tolist()) == {1.0, -1.0}  # no new values
    else:
        assert (edge.abs() < 1).any()  # interpolated across the edge


def test_latent_modes_differ_as_in_a1111() -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    library = UpscalerLibrary(".")
    results = {name: library.upscale_latents(latents, 20, 20, name) for name in LATENTS}
    expected = torch.nn.functional.interpolate(latents, size=(20, 20), mode="bicubic", antialias=True)
    assert torch.allclose(results["Latent (bicubic antialiased)"], expected)
    assert not torch.allclose(results["Latent"], results["Latent (bicubic)"])
    assert not torch.equal(results["Latent (nearest)"], results["Latent (nearest-exact)"])  # 8 -> 20 rounds apart


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
def test_image_upscale_keeps_the_split(name: str) -> None:
    enlarged = UpscalerLibrary(".").upscale_image(split_picture(32, 16), 64, 40, name)
    assert enlarged.size == (64, 40)
    pixels = rgb(enlarged)
    assert np.abs(pixels[:, :28] - RED).max() <= 2
    assert np.abs(pixels[:, 36:] - BLUE).max() <= 2
    if name == "Nearest":
        assert {tuple(p) for p in pixels.reshape(-1, 3)} == {RED, BLUE}


class FakeUpscaler:
    """A 2x model: each pixel becomes a 2x2 block. Stands in for spandrel's descriptor."""

    scale = 2

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


class CountingLibrary(UpscalerLibrary):
    def __init__(self, models_dir: Path) -> None:
        super().__init__(models_dir)
        self.loads: list[Path] = []

    def _load(self, path: Path) -> Any:
        self.loads.append(path)
        return FakeUpscaler()


def test_model_upscaler_runs_until_it_covers_then_resizes(tmp_path: Path) -> None:
    (tmp_path / "ESRGAN").mkdir()
    weights = tmp_path / "ESRGAN" / "fake-2x.safetensors"
    weights.write_bytes(b"x")
    library = CountingLibrary(tmp_path)
    picture = split_picture(20, 10)
    twice = library.upscale_image(picture, 80, 40, "fake-2x")  # two passes make exactly 4x
    assert twice.size == (80, 40)
    assert np.array_equal(rgb(twice), rgb(picture.resize((80, 40), Image.Resampling.NEAREST)))
    odd = library.upscale_image(picture, 56, 24, "FAKE-2X")  # 3 passes would overshoot; 2 cover, then Lanczos
    assert odd.size == (56, 24)
    assert np.abs(rgb(odd)[:, :24] - RED).max() <= 2 and np.abs(rgb(odd)[:, 32:] - BLUE).max() <= 2
    assert library.loads == [weights]  # loaded once, kept for the next job
    os.utime(weights, (1, 1))  # a replaced file is read again
    library.upscale_image(picture, 40, 20, "fake-2x")
    assert library.loads == [weights, weights]
    library.unload()
    assert library._loaded is None


def test_tiles_join_without_seams() -> None:
    """Tiles with enough overlap give exactly the whole-picture result (a 3x3 conv sees 1 pixel round)."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))

    def model(pixels: torch.Tensor) -> torch.Tensor:
        return conv(pixels).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    pixels = torch.rand(1, 3, 37, 50, generator=generator)
    with torch.no_grad():
        whole = model(pixels)
        tiled = upscalers.tiled_upscale(model, pixels, 2, tile=16, overlap=2)
    assert tiled.shape == (1, 3, 74, 100)
    assert torch.allclose(tiled, whole, atol=1e-6)


def spandrel_or_skip() -> Any:
    try:
        import spandrel
    except ImportError as exc:
        pytest.skip(f"spandrel cannot be imported here ({exc}); it comes with {upscalers.INSTALL_HINT}")
    return spandrel


def test_model_file_without_spandrel_says_how_to_install(tmp_path: Path) -> None:
    try:
        import spandrel  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("spandrel imports here: the message for a missing spandrel cannot be seen")
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "4x-real.safetensors").write_bytes(b"x")
    with pytest.raises(BadRequest, match=r"upscaler '4x-real' .* spandrel .* pip install 'atelier\[upscalers\]'"):
        UpscalerLibrary(tmp_path).upscale_image(split_picture(16, 16), 32, 32, "4x-real")


def test_esrgan_file_through_spandrel(tmp_path: Path) -> None:
    spandrel_or_skip()
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    network = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    (tmp_path / "ESRGAN").mkdir()
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "ESRGAN" / "tiny.safetensors")
    picture = split_picture(100, 70)
    tiled = UpscalerLibrary(tmp_path, tile=40).upscale_image(picture, 200, 140, "tiny")
    whole = UpscalerLibrary(tmp_path, tile=4096).upscale_image(picture, 200, 140, "tiny")
    assert tiled.size == (200, 140)
    assert np.array_equal(rgb(tiled), rgb(whole))
    with torch.no_grad():
        expected = network.eval()(torch.from_numpy(rgb(picture).astype(np.float32) / 255).permute(2, 0, 1)[None])
    expected_pixels = (expected[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
    assert np.abs(rgb(whole) - expected_pixels).max() <= 1


# -- the second pass on the demo model ----------------------------------------------------------
@pytest.fixture(scope="module")
def demo(engine: Engine) -> tuple[Any, Callable[[str], Any], UpscalerLibrary]:
    model = engine.manager.get("builtin:demo")

    def view(mode: str) -> Any:
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, "Euler", "Automatic")
        return engine.manager.view(model, mode, scheduler)

    return model, view, UpscalerLibrary(engine.settings.models_dir)


def first_pass(view: Callable[[str], Any], plan: hires.HiresPlan, seed: int = 1) -> tuple[Any, dict[str, Any]]:
    kwargs = {
        "prompt": "a red circle",
        "num_inference_steps": 6,
        "guidance_scale": 7.0,
        "generator": [torch.Generator("cpu").manual_seed(seed)],
        "width": plan.first_width,
        "height": plan.first_height,
    }
    return view("txt2img")(**kwargs, output_type=plan.first_output_type).images, kwargs


@pytest.mark.parametrize("upscaler", ["Lanczos", "Latent"])
def test_second_pass_redraws_at_twice_the_size(demo: Any, upscaler: str) -> None:
    model, view, library = demo
    plan = hires.plan(64, 64, steps=6, hr_upscaler=upscaler, hr_second_pass_steps=3, denoising_strength=0.5)
    first, kwargs = first_pass(view, plan)
    steps: list[int] = []

    def count(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        steps.append(step)
        return tensors

    # The same kwargs as the first pass: its (spent) generator is re-seeded, its size is the plan's.
    final = hires.second_pass(view("img2img"), first, plan, library, **kwargs, callback_on_step_end=count)
    assert len(final) == 1 and final[0].size == (128, 128)
    assert len(steps) == 3  # hr_second_pass_steps steps, whatever the strength
    picture = hires.decode_latents(model.pipe, first)[0] if plan.latent else first[0]
    plain = picture.resize((128, 128), Image.Resampling.LANCZOS)
    change = np.abs(rgb(final[0]) - rgb(plain)).sum(axis=2)
    assert change.mean() > 3 and (change > 60).mean() > 0.01  # redrawn, not just enlarged
    before, after = scenes.analyse(picture), scenes.analyse(final[0])
    assert before.colour == after.colour == "red"  # ... keeping what it shows and where
    assert after.place == before.place and after.foreground > 0.04


def test_second_pass_is_reproducible_from_its_seed(demo: Any) -> None:
    _, view, library = demo
    plan = hires.plan(64, 64, steps=6, hr_upscaler="Lanczos", hr_second_pass_steps=1, denoising_strength=0.4)
    first, kwargs = first_pass(view, plan)
    once = hires.second_pass(view("img2img"), first, plan, library, **kwargs)[0]
    again = hires.second_pass(view("img2img"), first, plan, library, **kwargs)[0]  # same spent generators
    assert np.array_equal(rgb(once), rgb(again))


def test_denoising_zero_keeps_the_upscale(demo: Any) -> None:
    model, view, library = demo
    lanczos = hires.plan(64, 64, steps=6, hr_upscaler="Lanczos", denoising_strength=0.0)
    pictures, kwargs = first_pass(view, lanczos)
    kept = hires.second_pass(view("img2img"), pictures, lanczos, library, **kwargs)[0]
    assert np.array_equal(rgb(kept), rgb(pictures[0].resize((128, 128), Image.Resampling.LANCZOS)))

    latent = hires.plan(64, 64, steps=6, hr_upscaler="Latent", denoising_strength=0.0)
    latents, kwargs = first_pass(view, latent)
    kept = hires.second_pass(view("img2img"), latents, latent, library, **kwargs)[0]
    assert kept.size == (128, 128)
    enlarged = hires.decode_latents(model.pipe, latents)[0].resize((128, 128), Image.Resampling.BILINEAR)
    assert np.abs(rgb(kept) - rgb(enlarged)).mean() < 12  # the same picture, decoded from enlarged latents
    assert scenes.analyse(kept).colour == "red"


def test_resize_to_another_aspect_crops_the_middle(demo: Any) -> None:
    _, view, library = demo
    plan = hires.plan(64, 64, steps=6, hr_upscaler="Lanczos", hr_resize_x=128, hr_resize_y=96, denoising_strength=0)
    pictures, kwargs = first_pass(view, plan)
    kept = hires.second_pass(view("img2img"), pictures, plan, library, **kwargs)[0]
    assert kept.size == (128, 96) and plan.crop_box == (0, 16, 128, 112)
    whole = pictures[0].resize((128, 128), Image.Resampling.LANCZOS)
    assert np.array_equal(rgb(kept), rgb(whole.crop((0, 16, 128, 112))))

    latent = hires.plan(64, 64, steps=6, hr_upscaler="Latent (nearest)", hr_resize_x=128, hr_resize_y=96)
    latent = dataclasses.replace(latent, steps=0, denoising_strength=0.0)
    latents, kwargs = first_pass(view, latent)
    assert hires.second_pass(view("img2img"), latents, latent, library, **kwargs)[0].size == (128, 96)
