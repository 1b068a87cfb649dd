"""The built-in demo model draws what it is asked, and the training code that made it works.

The shipped model is judged by its pixels with ``pipelines.scenes.analyse`` (the rules that drew
its training pictures). The training loops run a few steps only: CI never trains from scratch,
but it does check that they learn, that a rebuild from a seed is deterministic, and that the
result loads like any local model.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines import demo_model, loading, scenes, training
from pipelines.engine import Engine
from pipelines.requests import Inpaint, Txt2Img

MAX_BYTES = 25 * 2**20


def test_the_shipped_model_is_a_small_diffusers_folder_of_fp16_safetensors() -> None:
    folder = demo_model.SHIPPED
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= MAX_BYTES
    weights = [path for path in files if path.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    assert sorted(path.parent.name for path in weights) == ["text_encoder", "unet", "vae"]
    assert all(path.suffix == ".safetensors" for path in weights)
    from safetensors import safe_open

    for path in weights:
        with safe_open(str(path), "pt") as opened:
            names = opened.keys()
            assert {opened.get_slice(name).get_dtype() for name in names} == {"F16"}, path
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    # The single-file loader builds demo checkpoints from configs/demo: they must describe this model.
    for part in ("unet", "vae"):
        shipped = json.loads((folder / part / "config.json").read_text())
        configured = json.loads((demo_model.ARCHITECTURE / part / "config.json").read_text())
        assert {k: v for k, v in configured.items() if not k.startswith("_")}.items() <= shipped.items()


def test_its_autoencoder_keeps_colours_shapes_and_places() -> None:
    """The decoder is the ceiling of every picture the model draws: scenes it encodes and decodes
    must read back as drawn."""
    pipe = loading.load_folder(demo_model.SHIPPED, torch.float32)
    assert demo_model.round_trip_fidelity(pipe.vae) >= 0.95


def test_it_is_the_default_model_and_draws_at_64_px(engine: Engine) -> None:
    assert engine.default_model == "builtin:demo"
    assert engine.native_size() == 64
    result = engine.generate(Txt2Img("a blue square", seed=5))
    assert result.images[0].size == (64, 64)
    assert result.request.steps == 20  # the page's defaults


@pytest.mark.parametrize(
    ("prompt", "colour"),
    [("a red circle", "red"), ("a blue square on the left", "blue"), ("a green triangle at the top", "green"),
     ("a yellow star", "yellow"), ("a purple circle on the right", "purple"), ("an orange square", "orange")],
)  # fmt: skip
def test_it_draws_the_colour_asked(engine: Engine, prompt: str, colour: str) -> None:
    images = engine.generate(Txt2Img(prompt, seed=40, batch_size=3)).images
    read = [scenes.analyse(image).colour for image in images]
    assert read.count(colour) >= 2, f"{prompt!r} read as {read}"


def test_it_draws_the_place_asked(engine: Engine) -> None:
    asked = {"a red square on the left": "left", "a blue circle on the right": "right",
             "a yellow star at the top": "top", "a green triangle at the bottom": "bottom"}  # fmt: skip
    read = {}
    for prompt in asked:
        images = engine.generate(Txt2Img(prompt, seed=50, batch_size=3)).images
        read[prompt] = [scenes.analyse(image).place for image in images]
    assert sum(places.count(asked[prompt]) for prompt, places in read.items()) >= 10, read


def test_a_negative_prompt_keeps_its_colour_out(engine: Engine) -> None:
    """The prompt "a circle" names no colour, so the model picks one; naming the most frequent one
    as the negative prompt makes it rare (a small model's guidance is not absolute), and most
    pictures are still circles (the rest squares: the two shapes this model mixes up)."""
    plain = engine.generate(Txt2Img("a circle", seed=70, batch_size=4, batch_count=2)).images
    colour, count = Counter(scenes.analyse(image).colour for image in plain).most_common(1)[0]
    assert count >= 2, [scenes.analyse(image) for image in plain]
    negative = engine.generate(Txt2Img("a circle", colour, seed=70, batch_size=4, batch_count=2)).images
    read = [scenes.analyse(image) for image in negative]
    assert [reading.colour for reading in read].count(colour) <= count // 2, (colour, count, read)
    assert [reading.shape for reading in read].count("circle") > len(read) // 2, read


def test_inpaint_changes_the_colour_inside_the_mask_only(engine: Engine) -> None:
    picture = scenes.render(scenes.Scene("circle", "red", "centre", "big", "white"))
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).rectangle([14, 14, 50, 50], fill=255)
    request = Inpaint("a blue circle in the centre", seed=3, init_image=picture, mask=mask,
                      denoising_strength=1.0, mask_blur=0)  # fmt: skip
    image = engine.generate(request).images[0]
    assert scenes.analyse(image).colour == "blue"
    outside = np.asarray(mask) == 0
    change = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(picture, dtype=np.int16))[outside]
    assert change.mean() < 2.0


def test_the_judge_reads_every_drawn_scene_correctly() -> None:
    """The evaluation's reader must agree with the drawing code before it can judge a model."""
    rng = random.Random(3)
    for shape, colour, place in itertools.product(scenes.SHAPES, scenes.COLOURS, scenes.PLACES):
        background = rng.choice(scenes.backgrounds_for(colour))
        scene = scenes.Scene(shape, colour, place, rng.choice(list(scenes.SIZES)), background, (rng.randint(-3, 3), 0))
        read = scenes.analyse(scenes.render(scene))
        assert (read.colour, read.shape, read.place) == (colour, shape, place), scene


def test_captions_vary_and_name_only_what_was_drawn() -> None:
    rng = random.Random(0)
    scene = scenes.Scene("triangle", "green", "left", "small", "white")
    captions = [scenes.caption(scene, rng) for _ in range(400)]
    assert 0.05 < captions.count("") / len(captions) < 0.15  # the unconditional share guidance needs
    worded = [c for c in captions if c]
    assert len(set(worded)) > 100
    assert all(word not in c for c in worded for word in ("red", "circle", "right", "big", "black"))
    assert sum("green" in c for c in worded) / len(worded) > 0.7


def test_training_loops_learn_and_install_the_averaged_weights() -> None:
    pipe = loading.build_untrained_demo()
    losses: list[float] = []
    schedule = training.Schedule(steps=40, learning_rate=2e-3, warmup_steps=5, log_every=1)
    vae = training.train_autoencoder(
        pipe.vae,
        demo_model.scene_batches(1, 4),
        schedule,
        report=lambda step, steps, f: losses.append(f["loss"]),
    )
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert not any(p.requires_grad for p in vae.parameters())  # the moving average, ready to save
    pipe.vae = vae
    unet_before = pipe.unet
    checkpoints: list[int] = []
    schedule = training.Schedule(steps=4, warmup_steps=1, checkpoint_every=2)
    training.train_denoiser(
        pipe, demo_model.scene_batches(2, 4), schedule, checkpoint=lambda s, m: checkpoints.append(s)
    )
    assert checkpoints == [2, 4]
    assert pipe.unet is not unet_before and not pipe.unet.training


def test_a_v_prediction_model_is_trained_to_predict_the_velocity_not_the_noise() -> None:
    """SD 2.x 768-v models predict v = alpha * noise - sigma * picture: fine-tuning one on the
    noise would unlearn it. At a noisy step the two targets differ most (v is nearly -picture)."""
    from diffusers import DDPMScheduler

    pipe = demo_model.untrained(3)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
    schedule = training.Schedule(steps=25, learning_rate=3e-3, warmup_steps=5, ema_decay=0.0)
    training.train_denoiser(pipe, demo_model.scene_batches(4, 6), schedule, noisy_weight=1.0)
    images, captions = next(demo_model.scene_batches(5, 16))
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        timesteps = torch.full((16,), 900)
        tokens = pipe.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
        predicted = pipe.unet(noise_schedule.add_noise(latents, noise, timesteps), timesteps,
                              pipe.text_encoder(tokens.input_ids)[0]).sample  # fmt: skip
    velocity = noise_schedule.get_velocity(latents, noise, timesteps)
    assert (predicted - velocity).pow(2).mean() < 0.5 * (predicted - noise).pow(2).mean()
    with pytest.raises(ValueError, match="'sample'"):
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="sample")
        training.train_denoiser(pipe, demo_model.scene_batches(4, 2), training.Schedule(steps=1))


def test_a_clean_share_of_each_batch_trains_on_the_clean_steps() -> None:
    """Corners form in the last, nearly clean steps: ``clean_share`` sends that share of every
    batch there, and leaves the rest spread over the whole schedule."""
    pipe = demo_model.untrained(3)
    seen: list[torch.Tensor] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    schedule = training.Schedule(steps=3, warmup_steps=1, ema_decay=0.0)
    training.train_denoiser(pipe, demo_model.scene_batches(4, 8), schedule, clean_share=0.5, clean_below=10)
    assert len(seen) == 3
    assert all(int((timesteps < 10).sum()) >= 4 for timesteps in seen), seen
    assert int((torch.cat(seen) >= 10).sum()) >= 6, seen


def test_a_rebuild_from_a_seed_is_identical_resumed_or_not_and_loads_as_a_local_model(tmp_path: Path) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    stages = (demo_model.Stage(2, noisy_weight=1.0), demo_model.Stage(2, clean_share=0.5))
    demo_model.build(whole, seed=7, vae_steps=2, stages=stages, batch_size=4)
    demo_model.build(resumed, seed=7, vae_steps=2, stages=(), batch_size=4)  # stopped after the autoencoder
    demo_model.build(resumed, seed=7, vae_steps=2, stages=stages[:1], batch_size=4, resume=True)
    stage_one = (resumed / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    demo_model.build(resumed, seed=7, vae_steps=2, stages=stages, batch_size=4, resume=True)
    weights = [(out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() for out in (whole, resumed)]
    assert weights[0] == weights[1] != stage_one
    record = json.loads((whole / demo_model.RECORD).read_text())
    assert record["seed"] == 7 and record["denoiser_stages"] == [
        {"steps": 2, "noisy_weight": 1.0, "clean_share": 0.0},
        {"steps": 2, "noisy_weight": 0.0, "clean_share": 0.5},
    ]
    shipped_schedule = json.loads((demo_model.ARCHITECTURE / "scheduler" / "scheduler_config.json").read_text())
    assert json.loads((whole / "scheduler" / "scheduler_config.json").read_text()) | {"_diffusers_version": ""} == (
        shipped_schedule | {"_diffusers_version": ""}
    )
    with pytest.raises(ValueError, match="other settings"):
        demo_model.build(resumed, seed=8, vae_steps=2, stages=stages, batch_size=4, resume=True)
    with pytest.raises(ValueError, match="other stages"):
        demo_model.build(resumed, seed=7, vae_steps=2, stages=stages[:1] * 3, batch_size=4, resume=True)
    pipe = loading.load_folder(whole, torch.float32)
    assert pipe.unet.config.sample_size == 16 and pipe.vae.config.scaling_factor > 0
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="pil").images[0]
    assert image.size == (64, 64)
