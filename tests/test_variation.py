"""Variation seeds (A1111's subseed), "seed resize from", and Skip, on the demo model's pixels."""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

from pipelines.engine import Engine, Job, Progress
from pipelines.infotext import parse_infotext, request_fields
from pipelines.requests import Img2Img, Txt2Img
from pipelines.seeds import seeded_noise, variation_noise
from tests.conftest import pixels

BASE = Txt2Img(prompt="a red circle", steps=4, width=64, height=64, seed=11, model="builtin:demo")


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def test_full_strength_gives_the_subseeds_picture_and_none_gives_the_seeds(engine: Engine) -> None:
    plain = engine.generate(BASE).images[0]
    other = engine.generate(BASE.replace(seed=99)).images[0]
    assert distance(plain, other) > 5  # two seeds, two pictures: the test can tell them apart
    nothing = engine.generate(BASE.replace(subseed=99, subseed_strength=0.0)).images[0]
    full = engine.generate(BASE.replace(subseed=99, subseed_strength=1.0)).images[0]
    assert np.array_equal(pixels(nothing), pixels(plain))
    assert distance(full, other) < 1.0  # slerp at 1 is the subseed's noise (float rounding aside)


def test_strength_moves_the_picture_step_by_step(engine: Engine) -> None:
    plain = engine.generate(BASE).images[0]
    distances = [
        distance(engine.generate(BASE.replace(subseed=99, subseed_strength=strength)).images[0], plain)
        for strength in (0.05, 0.3, 1.0)
    ]
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_a_batch_varies_each_picture_by_its_own_subseed_and_records_it(engine: Engine) -> None:
    request = BASE.replace(subseed=500, subseed_strength=0.4, batch_size=2)
    batch = engine.generate(request)
    second = engine.generate(BASE.replace(seed=12, subseed=501, subseed_strength=0.4))
    assert distance(batch.images[1], second.images[0]) < 1.0  # picture 2 = seed 12 with subseed 501
    fields = request_fields(parse_infotext(batch.infotexts[1]))
    assert (fields["seed"], fields["subseed"], fields["subseed_strength"]) == (12, 501, 0.4)
    again = engine.generate(BASE.replace(**{k: fields[k] for k in ("seed", "subseed", "subseed_strength")}))
    assert np.array_equal(pixels(again.images[0]), pixels(second.images[0]))  # a batch differs by rounding only


def test_seed_resize_keeps_the_noise_centre_and_same_size_changes_nothing(engine: Engine) -> None:
    plain = engine.generate(BASE).images[0]
    same = engine.generate(BASE.replace(seed_resize_from_w=64, seed_resize_from_h=64)).images[0]
    assert np.array_equal(pixels(same), pixels(plain))
    small = seeded_noise(11, (1, 4, 8, 8))
    wide = variation_noise(11, (1, 4, 8, 16), drawn_size=(8, 8))
    assert torch.equal(wide[:, :, :, 4:12], small)  # the 64 px noise sits in the middle of the 128 px one
    text = engine.generate(BASE.replace(width=128, seed_resize_from_w=64, seed_resize_from_h=64)).infotexts[0]
    assert "Seed resize from: 64x64" in text


def test_image_to_image_variation_nudges_rather_than_replaces(engine: Engine) -> None:
    start = Image.new("RGB", (64, 64), (30, 60, 200))
    request = Img2Img(prompt="a red square", init_image=start, steps=8, denoising_strength=0.8, seed=3,
                      width=64, height=64, model="builtin:demo")  # fmt: skip
    plain = engine.generate(request).images[0]
    near = engine.generate(request.replace(subseed=7, subseed_strength=0.05)).images[0]
    far = engine.generate(request.replace(subseed=7, subseed_strength=1.0)).images[0]
    assert 0 < distance(near, plain) < distance(far, plain)


def test_skip_ends_the_current_batch_and_the_next_runs_in_full(engine: Engine) -> None:
    request = BASE.replace(steps=8, batch_count=2)
    full = engine.generate(request)
    job = Job()
    skipped_once = threading.Event()

    def on_progress(progress: Progress) -> None:
        if progress.step == 2 and not skipped_once.is_set():
            skipped_once.set()
            assert engine.skip(job.id)

    result = engine.generate(request, job, on_progress=on_progress)
    assert job.state == "done" and len(result.images) == 2
    assert any("batch 1 was skipped at step 2" in note for note in result.notes), result.notes
    assert distance(result.images[0], full.images[0]) > 5  # the first picture stopped early, half drawn
    assert np.array_equal(pixels(result.images[1]), pixels(full.images[1]))  # the second ran in full
