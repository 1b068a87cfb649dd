"""The demo model's training code: its pictures and captions, the judge of its drawings, and
the training loops. The loops run a few steps only (CI never trains from scratch), enough to
check that they learn, that a rebuild from a seed is deterministic, and that the result loads
like any local model.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import torch

from pipelines import demo_model, loading, scenes, training


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
        pipe.vae, demo_model.scene_batches(1, 4), schedule, report=lambda step, steps, f: losses.append(f["loss"])
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


def test_a_rebuild_from_a_seed_is_identical_and_loads_as_a_local_model(tmp_path: Path) -> None:
    builds = [tmp_path / "first", tmp_path / "second"]
    for out in builds:
        demo_model.build(out, seed=7, vae_steps=2, denoiser_steps=2, batch_size=4)
    weights = [(out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() for out in builds]
    assert weights[0] == weights[1]
    pipe = loading.load_folder(builds[0], torch.float32)
    assert pipe.unet.config.sample_size == 16 and pipe.vae.config.scaling_factor > 0
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="pil").images[0]
    assert image.size == (64, 64)
