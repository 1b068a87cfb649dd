"""Reference-only and AdaIN guidance on the built-in demo model, called through diffusers directly.

The demo model draws "a circle" in whatever colour its noise suggests (purple, pink, sometimes
blue); a blue or yellow reference must make it that colour. Pictures are judged with the rules of
``pipelines.scenes`` (the foreground is what differs from the border's colour).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from conftest import pixels, tiny_sdxl_around
from PIL import Image

from pipelines import samplers, scenes
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.guidance.reference import REFERENCE_MODES, Reference, reference_installed

SIDE = 64
STEPS = 10  # DDIM; the effects measured at 20 steps are the same at 10, in half the time


def circle(colour: str) -> Image.Image:
    return scenes.render(scenes.Scene("circle", colour, "centre", "big", "white"))


def foreground_colour(image: Image.Image) -> np.ndarray:
    """The median colour of what stands out from the border, by ``scenes.analyse``'s rule."""
    values = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = np.median(np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]]), axis=0)
    mask = np.abs(values - background).sum(axis=2) > 90
    return np.median(values[mask], axis=0) if mask.sum() >= 12 else background


def distance(pictures: list[Image.Image], colour: str) -> float:
    """Mean L1 distance of the pictures' foreground colours to a named colour."""
    target = np.array(scenes.COLOURS[colour], dtype=np.float32)
    return float(np.mean([np.abs(foreground_colour(picture) - target).sum() for picture in pictures]))


def largest_difference(first: list[Image.Image], second: list[Image.Image]) -> int:
    return max(int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(first, second, strict=True))


@pytest.fixture
def demo(engine: Engine) -> Iterator[Any]:
    """The demo model, with the device to this test alone (no other job may run on the shared UNet)."""
    with engine._device_lock:
        yield engine.manager.get("builtin:demo")


def draw(
    engine: Engine,
    model: Any,
    seeds: list[int],
    reference: Reference | None = None,
    *,
    mode: str = "txt2img",
    cfg: float = 7.0,
    sampler: str = "DDIM",
    steps: int = STEPS,
    **extra: Any,
) -> list[Image.Image]:
    scheduler = samplers.build_scheduler(model.pipe.scheduler.config, sampler, "Automatic")
    pipe = engine.manager.view(model, mode, scheduler)
    call = dict(
        prompt="a circle",
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        num_images_per_prompt=len(seeds),
        height=SIDE,
        width=SIDE,
        num_inference_steps=steps,
        guidance_scale=cfg,
        **extra,
    )
    if reference is None:
        return pipe(**call).images
    run_steps = int(steps * extra.get("strength", 1.0))
    with reference_installed(
        pipe, reference, width=SIDE, height=SIDE, do_classifier_free_guidance=cfg > 1, total_steps=run_steps
    ):
        return pipe(**call).images


def installed_state(unet: torch.nn.Module) -> dict[str, Any]:
    """Everything guidance could leave behind on the UNet: processors (by identity), hooks, attributes."""
    return {
        "processors": {name: id(processor) for name, processor in unet.attn_processors.items()},
        "hooks": {
            name: [
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._forward_hooks_with_kwargs),
                len(m._forward_pre_hooks_with_kwargs),
                len(m._backward_hooks),
            ]
            for name, m in unet.named_modules()
        },
        "attributes": {name: sorted(vars(m)) for name, m in unet.named_modules()},
    }


@pytest.mark.parametrize("colour", ["blue", "yellow"])
def test_the_circle_takes_the_reference_colour(engine: Engine, demo: Any, colour: str) -> None:
    seeds = [0, 1, 2, 3]
    alone = [scenes.analyse(picture).colour for picture in draw(engine, demo, seeds)]
    guided = [scenes.analyse(picture).colour for picture in draw(engine, demo, seeds, Reference(circle(colour)))]
    assert guided.count(colour) >= 3, f"with a {colour} reference: {guided}"
    assert guided.count(colour) >= alone.count(colour) + 2, f"alone {alone}, guided {guided}"


def test_strength_orders_the_distance_to_the_reference_colour(engine: Engine, demo: Any) -> None:
    """Yellow is far from what the model draws alone, so each step of strength shows."""
    seeds = [0, 1, 2, 3]
    distances = [distance(draw(engine, demo, seeds), "yellow")]
    for strength in (0.25, 0.5, 1.0):
        distances.append(distance(draw(engine, demo, seeds, Reference(circle("yellow"), strength=strength)), "yellow"))
    assert distances == sorted(distances, reverse=True) and len(set(distances)) == 4, distances


def test_strength_zero_changes_nothing(engine: Engine, demo: Any) -> None:
    plain = draw(engine, demo, [5, 6])
    assert largest_difference(draw(engine, demo, [5, 6], Reference(circle("blue"), strength=0)), plain) == 0


@pytest.mark.parametrize("cfg", [7.0, 1.0])
def test_a_batch_gives_the_pictures_of_single_runs(engine: Engine, demo: Any, cfg: float) -> None:
    """Within 1/255: plain diffusers on this CPU already differs by 1 level in a few pixels between a
    batch and single runs (torch's matrix products block a batch differently); the reference adds
    nothing to that, since its pass is computed at batch 1 with noise of its own."""
    reference = Reference(circle("blue"), mode="reference-adain+attn")
    seeds = [3, 4, 5]
    batch = draw(engine, demo, seeds, reference, cfg=cfg)
    singles = [draw(engine, demo, [seed], reference, cfg=cfg)[0] for seed in seeds]
    assert largest_difference(batch, singles) <= 1
    assert largest_difference(batch, draw(engine, demo, seeds, cfg=cfg)) > 20  # and it did guide them


def test_without_guidance_a_batch_still_follows_the_reference(engine: Engine, demo: Any) -> None:
    seeds = [0, 1, 2, 3]
    alone = distance(draw(engine, demo, seeds, cfg=1.0), "blue")
    guided = distance(draw(engine, demo, seeds, Reference(circle("blue")), cfg=1.0), "blue")
    assert guided < alone / 3, (alone, guided)


@pytest.mark.parametrize("mode", REFERENCE_MODES)
def test_nothing_is_left_installed_after_a_job(engine: Engine, demo: Any, mode: str) -> None:
    before_state = installed_state(demo.pipe.unet)
    before = draw(engine, demo, [7])
    draw(engine, demo, [7], Reference(circle("yellow"), mode=mode))
    assert installed_state(demo.pipe.unet) == before_state
    assert largest_difference(draw(engine, demo, [7]), before) == 0


def test_nothing_is_left_installed_after_a_failed_job(engine: Engine, demo: Any) -> None:
    before_state = installed_state(demo.pipe.unet)
    pipe = engine.manager.view(demo, "txt2img", samplers.build_scheduler(demo.pipe.scheduler.config, "DDIM"))
    reference = Reference(circle("blue"), mode="reference-adain+attn")
    guided = reference_installed(
        pipe, reference, width=SIDE, height=SIDE, do_classifier_free_guidance=True, total_steps=2
    )
    with pytest.raises(RuntimeError, match="stopped"), guided:
        assert installed_state(demo.pipe.unet) != before_state
        raise RuntimeError("stopped")
    assert installed_state(demo.pipe.unet) == before_state


@pytest.mark.parametrize("mode", ["reference-adain", "reference-adain+attn"])
def test_adain_modes_move_the_picture_toward_the_reference(engine: Engine, demo: Any, mode: str) -> None:
    seeds = [0, 1, 2, 3]
    alone = distance(draw(engine, demo, seeds), "yellow")
    guided = distance(draw(engine, demo, seeds, Reference(circle("yellow"), mode=mode)), "yellow")
    assert guided < alone / 3, (alone, guided)


def test_start_and_end_limit_the_steps_guided(engine: Engine, demo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference pass runs once for each guided step: 10 steps from 20% to 50% guide 3."""
    unet = demo.pipe.unet
    rows: list[int] = []
    own_forward = unet.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        rows.append(int(kwargs.get("sample", args[0] if args else None).shape[0]))
        return own_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", counting)
    draw(engine, demo, [1, 2], Reference(circle("blue"), start=0.2, end=0.5))
    assert rows.count(4) == STEPS  # the pictures' own calls: 2 pictures x (negative, positive)
    assert rows.count(2) == 3  # the reference's: its negative and positive rows, whatever the batch


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun"])
def test_other_samplers_follow_the_reference(engine: Engine, demo: Any, sampler: str) -> None:
    """Sigma samplers call the UNet at fractional timesteps; Heun calls it twice per step."""
    seeds = [0, 1, 2]
    guided = draw(engine, demo, seeds, Reference(circle("blue")), sampler=sampler, steps=12)
    assert [scenes.analyse(picture).colour for picture in guided].count("blue") >= 2


def test_img2img_follows_the_reference(engine: Engine, demo: Any) -> None:
    start = scenes.render(scenes.Scene("circle", "purple", "centre", "big", "white"))
    seeds = [0, 1, 2]
    alone = distance(draw(engine, demo, seeds, mode="img2img", image=start, strength=0.8), "yellow")
    guided = draw(engine, demo, seeds, Reference(circle("yellow")), mode="img2img", image=start, strength=0.8)
    assert distance(guided, "yellow") < alone / 2


def test_inpaint_follows_the_reference_inside_the_mask(engine: Engine, demo: Any) -> None:
    start = scenes.render(scenes.Scene("square", "purple", "centre", "big", "white"))
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (12, 12, 52, 52))
    seeds = [0, 1, 2]
    call = dict(mode="inpaint", image=start, mask_image=mask, strength=1.0)
    alone = distance(draw(engine, demo, seeds, **call), "yellow")
    guided = draw(engine, demo, seeds, Reference(circle("yellow")), **call)
    assert distance(guided, "yellow") < alone / 2


def test_an_inpainting_unet_sees_the_reference_unmasked(
    engine: Engine, demo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 9-channel UNet reads latents, mask and masked picture: the reference pass gives it the
    reference's own latent as the masked picture and a mask that masks nothing."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(demo.pipe.unet.config, in_channels=9)
    pipe = StableDiffusionInpaintPipeline(
        vae=demo.pipe.vae,
        text_encoder=demo.pipe.text_encoder,
        tokenizer=demo.pipe.tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(demo.pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    samples: list[torch.Tensor] = []
    own_forward = unet.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        samples.append(kwargs.get("sample", args[0] if args else None))
        return own_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", recording)
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (16, 16, 48, 48))
    call = dict(
        prompt="a circle",
        image=circle("red"),
        mask_image=mask,
        height=SIDE,
        width=SIDE,
        num_inference_steps=3,
        num_images_per_prompt=2,  # 4 rows a call with guidance: the reference pass has 2
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
    )
    plain = pipe(**call).images
    samples.clear()
    call["generator"] = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    with reference_installed(
        pipe, Reference(circle("blue")), width=SIDE, height=SIDE, do_classifier_free_guidance=True, total_steps=3
    ):
        guided = pipe(**call).images
    written = [sample for sample in samples if sample.shape[0] == 2]
    assert len(written) == 3 and all(sample.shape[1] == 9 for sample in samples)
    latent = written[0][:, 5:]
    assert torch.equal(written[0][:, 4], torch.zeros_like(written[0][:, 4]))
    assert all(torch.equal(sample[:, 5:], latent) for sample in written)
    assert latent.abs().mean() > 0.1  # the reference itself, not an empty picture
    assert largest_difference(guided, plain) > 0


def tiny_sdxl() -> Any:
    """An SDXL-shaped pipeline (two text encoders, added time and text embeddings), random and tiny."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    pipe = tiny_sdxl_around(unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_sdxl_shaped_unet_is_guided_the_same_in_a_batch() -> None:
    pipe = tiny_sdxl()
    side = 32
    before_state = installed_state(pipe.unet)

    def run(seeds: list[int], reference: Reference | None) -> list[Image.Image]:
        call = dict(
            prompt="a circle",
            height=side,
            width=side,
            num_inference_steps=4,
            guidance_scale=5.0,
            num_images_per_prompt=len(seeds),
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        )
        if reference is None:
            return pipe(**call).images
        with reference_installed(
            pipe, reference, width=side, height=side, do_classifier_free_guidance=True, total_steps=4
        ):
            return pipe(**call).images

    reference = Reference(circle("blue").resize((side, side)), mode="reference-adain+attn")
    batch = run([0, 1], reference)
    assert largest_difference(batch, [run([0], reference)[0], run([1], reference)[0]]) <= 1
    assert largest_difference(batch, run([0, 1], None)) > 0
    assert installed_state(pipe.unet) == before_state


def test_bad_values_are_refused_all_at_once() -> None:
    with pytest.raises(BadRequest) as refused:
        Reference("blue.png", mode="reference-magic", strength=3, fidelity=-0.5, start=0.9, end=0.2).checked()  # type: ignore[arg-type]
    problems = refused.value.problems
    assert len(problems) == 5, problems
    for needle in (
        "str",
        "'reference-magic'",
        "reference-only",
        "got 3",
        "got -0.5",
        "(0.9) must be below its end (0.2)",
    ):
        assert any(needle in problem for problem in problems), (needle, problems)
    with pytest.raises(BadRequest, match="strength must be a number from 0 to 2, got nan"):
        Reference(circle("blue"), strength=float("nan")).checked()


def test_bad_sizes_and_steps_are_refused(engine: Engine, demo: Any) -> None:
    pipe = engine.manager.view(demo, "txt2img", samplers.build_scheduler(demo.pipe.scheduler.config, "DDIM"))
    guided = reference_installed(
        pipe, Reference(circle("blue")), width=65, height=0, do_classifier_free_guidance=True, total_steps=0
    )
    with pytest.raises(BadRequest) as refused, guided:
        pass
    assert refused.value.problems == [
        f"width must be a positive multiple of {pipe.vae_scale_factor}, got 65",  # the demo's autoencoder: 4
        f"height must be a positive multiple of {pipe.vae_scale_factor}, got 0",
        "total_steps must be a whole number of at least 1, got 0",
    ]
