"""Generation through the engine with the built-in demo model: all modes, seeds, progress, stop."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pixels
from PIL import Image

from pipelines.engine import Engine, Job, Progress
from pipelines.errors import BadRequest, Interrupted, ShuttingDown
from pipelines.requests import Img2Img, Inpaint, Txt2Img
from pipelines.settings import EngineSettings

FAST = {"steps": 6, "width": 64, "height": 64}


def test_txt2img_is_deterministic_per_seed(engine: Engine) -> None:
    first = engine.generate(Txt2Img(prompt="a red circle", seed=7, **FAST))
    again = engine.generate(Txt2Img(prompt="a red circle", seed=7, **FAST))
    other = engine.generate(Txt2Img(prompt="a red circle", seed=8, **FAST))
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(first.images[0]) - pixels(other.images[0])).mean() > 5


def test_default_size_is_the_models_native_size(engine: Engine) -> None:
    result = engine.generate(Txt2Img(prompt="a house", seed=1, steps=2))
    native = engine.manager.get("builtin:demo").native_size
    assert result.images[0].size == (native, native) == (64, 64)


def test_batch_image_i_equals_the_single_run_with_seed_plus_i(engine: Engine) -> None:
    batch = engine.generate(Txt2Img(prompt="a star", seed=100, batch_size=2, batch_count=2, **FAST))
    assert batch.seeds == [100, 101, 102, 103]
    assert len(batch.images) == 4
    for index in (1, 3):
        single = engine.generate(Txt2Img(prompt="a star", seed=100 + index, **FAST))
        difference = np.abs(pixels(batch.images[index]) - pixels(single.images[0]))
        assert difference.max() <= 2, f"image {index} of the batch differs from seed {100 + index} alone"
    assert "Seed: 103," in batch.infotexts[3]


def test_random_seed_is_reported_and_reproducible(engine: Engine) -> None:
    first = engine.generate(Txt2Img(prompt="a tree", seed=-1, **FAST))
    seed = first.seeds[0]
    assert 0 <= seed < 2**32 and f"Seed: {seed}," in first.infotexts[0]
    again = engine.generate(Txt2Img(prompt="a tree", seed=seed, **FAST))
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))


def test_infotext_follows_a1111_format(engine: Engine) -> None:
    request = Txt2Img(prompt="a sun, bright", negative_prompt="blurry", seed=5, clip_skip=2, cfg_scale=6.5, **FAST)
    text = engine.generate(request).infotexts[0]
    prompt, negative, params = text.split("\n")
    assert prompt == "a sun, bright" and negative == "Negative prompt: blurry"
    assert re.match(
        r"Steps: 6, Sampler: DPM\+\+ 2M, Schedule type: Karras, CFG scale: 6\.5, Seed: 5, Size: 64x64, "
        r"Model hash: [0-9a-f]{10}, Model: demo, Clip skip: 2, Version: atelier-",
        params,
    ), params


def test_clip_skip_changes_the_picture(engine: Engine) -> None:
    plain = engine.generate(Txt2Img(prompt="a sun", seed=3, **FAST))
    skipped = engine.generate(Txt2Img(prompt="a sun", seed=3, clip_skip=2, **FAST))
    assert np.abs(pixels(plain.images[0]) - pixels(skipped.images[0])).mean() > 0.5


def test_each_request_gets_its_own_scheduler(engine: Engine) -> None:
    model = engine.manager.get("builtin:demo")
    base_scheduler = model.pipe.scheduler
    euler = engine.generate(Txt2Img(prompt="a moon", seed=4, sampler_name="Euler a", **FAST))
    engine.generate(Txt2Img(prompt="a moon", seed=4, sampler_name="DDIM", steps=3, width=64, height=64))
    euler_again = engine.generate(Txt2Img(prompt="a moon", seed=4, sampler_name="Euler a", **FAST))
    dpm = engine.generate(Txt2Img(prompt="a moon", seed=4, sampler_name="DPM++ 2M", **FAST))
    assert model.pipe.scheduler is base_scheduler, "a request replaced the model's own scheduler"
    assert np.array_equal(pixels(euler.images[0]), pixels(euler_again.images[0])), "scheduler state leaked"
    assert np.abs(pixels(euler.images[0]) - pixels(dpm.images[0])).mean() > 0.5


def test_img2img_keeps_size_and_follows_strength(engine: Engine, square_scene: tuple[Image.Image, Image.Image]) -> None:
    picture, _ = square_scene
    gentle = engine.generate(Img2Img(prompt="x", init_image=picture, denoising_strength=0.2, seed=1, steps=10))
    strong = engine.generate(Img2Img(prompt="x", init_image=picture, denoising_strength=1.0, seed=1, steps=10))
    untouched = engine.generate(Img2Img(prompt="x", init_image=picture, denoising_strength=0.0, seed=1, steps=10))
    assert gentle.images[0].size == picture.size == (128, 128)
    source = pixels(picture)
    assert np.abs(pixels(gentle.images[0]) - source).mean() < np.abs(pixels(strong.images[0]) - source).mean()
    assert np.array_equal(pixels(untouched.images[0]), source)
    assert "Denoising strength: 0.2," in gentle.infotexts[0]


@pytest.mark.parametrize("resize_mode", ["just resize", "crop and resize", "resize and fill"])
def test_img2img_resizes_the_init_image(engine: Engine, resize_mode: str) -> None:
    wide = Image.new("RGB", (200, 100), (0, 200, 0))
    result = engine.generate(Img2Img(init_image=wide, resize_mode=resize_mode, width=64, height=64, steps=2))
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("only_masked", [False, True])
@pytest.mark.parametrize("masked_content", ["original", "fill", "latent noise", "latent nothing"])
def test_inpaint_keeps_every_pixel_outside_the_blurred_mask(
    engine: Engine, square_scene: tuple[Image.Image, Image.Image], only_masked: bool, masked_content: str
) -> None:
    picture, mask = square_scene
    request = Inpaint(
        prompt="a yellow square",
        init_image=picture,
        mask=mask,
        seed=2,
        steps=8,
        denoising_strength=1.0,
        mask_blur=4,
        only_masked=only_masked,
        masked_content=masked_content,
    )
    result = engine.generate(request).images[0]
    out, source = pixels(result), pixels(picture)
    outside = np.ones((128, 128), bool)
    outside[48 - 12 : 80 + 13, 48 - 12 : 80 + 13] = False  # the mask plus three blur radii
    assert np.array_equal(out[outside], source[outside])
    assert np.abs(out[52:77, 52:77] - source[52:77, 52:77]).mean() > 10, "nothing was redrawn inside the mask"


def test_inverted_mask_redraws_the_outside(engine: Engine, square_scene: tuple[Image.Image, Image.Image]) -> None:
    picture, mask = square_scene
    result = engine.generate(Inpaint(init_image=picture, mask=mask, invert_mask=True, mask_blur=0, seed=1, steps=6))
    out, source = pixels(result.images[0]), pixels(picture)
    assert np.array_equal(out[48:81, 48:81], source[48:81, 48:81])
    assert np.abs(out[:30, :30] - source[:30, :30]).mean() > 10
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_inpaint_accepts_a_painted_rgba_layer_as_mask(
    engine: Engine, square_scene: tuple[Image.Image, Image.Image]
) -> None:
    picture, mask = square_scene
    layer = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    layer.putalpha(mask)  # what a sketch canvas gives: strokes in the alpha channel
    result = engine.generate(Inpaint(init_image=picture, mask=layer, mask_blur=0, seed=1, steps=6))
    out, source = pixels(result.images[0]), pixels(picture)
    assert np.array_equal(out[:40, :40], source[:40, :40])
    assert np.abs(out[50:78, 50:78] - source[50:78, 50:78]).mean() > 10


def test_empty_mask_is_a_clear_error(engine: Engine, square_scene: tuple[Image.Image, Image.Image]) -> None:
    picture, _ = square_scene
    with pytest.raises(BadRequest, match="mask is empty"):
        engine.generate(Inpaint(init_image=picture, mask=Image.new("L", (128, 128), 0), steps=2))


def test_progress_reports_every_step_with_eta_and_previews(engine: Engine) -> None:
    seen: list[Progress] = []
    engine.generate(
        Txt2Img(prompt="a cat", seed=1, steps=6, batch_count=2, width=64, height=64),
        on_progress=seen.append,
        preview_every=2,
    )
    assert [p.step for p in seen] == list(range(1, 13))
    assert all(p.total == 12 for p in seen)
    assert seen[-1].eta_seconds == 0 and seen[0].eta_seconds > 0
    previews = [p.preview for p in seen if p.preview is not None]
    assert previews and previews[0].size == (64, 64)


def test_stop_ends_the_job_within_one_step_and_returns_nothing(engine: Engine) -> None:
    job = Job()
    steps_seen: list[int] = []

    def stop_at_three(progress: Progress) -> None:
        steps_seen.append(progress.step)
        if progress.step == 3:
            engine.interrupt(job.id)

    with pytest.raises(Interrupted, match="stopped at step"):
        engine.generate(
            Txt2Img(prompt="a dog", steps=20, batch_count=3, **{"width": 64, "height": 64}),
            job=job,
            on_progress=stop_at_three,
        )
    assert max(steps_seen) <= 4
    assert job.state == "interrupted"
    assert engine.current_job is None
    assert engine.generate(Txt2Img(prompt="after", seed=1, **FAST)).images  # the next job runs


def test_interrupt_of_another_job_id_does_nothing(engine: Engine) -> None:
    job = Job()
    done: list[int] = []

    def try_wrong_id(progress: Progress) -> None:
        assert engine.interrupt("someone-else") is False
        done.append(progress.step)

    engine.generate(Txt2Img(seed=1, **FAST), job=job, on_progress=try_wrong_id)
    assert done[-1] == 6 and job.state == "done"


def test_one_generation_at_a_time_across_threads(engine: Engine) -> None:
    running: list[int] = []
    overlaps: list[int] = []
    lock = threading.Lock()

    def on_progress(progress: Progress) -> None:
        with lock:
            if progress.step == 1:
                running.append(1)
                if len(running) > 1:
                    overlaps.append(len(running))
            if progress.step == progress.total:
                running.pop()

    results: list[int] = []

    def worker(seed: int) -> None:
        results.append(engine.generate(Txt2Img(prompt=f"p{seed}", seed=seed, **FAST), on_progress=on_progress).seeds[0])

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3]
    assert overlaps == []


def test_validation_fails_before_any_work(engine: Engine) -> None:
    started = time.perf_counter()
    with pytest.raises(BadRequest, match="steps must be between 1 and 150, got 500"):
        engine.generate(Txt2Img(steps=500))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("sampler", ["Heun", "DPM2", "PLMS", "Euler"])
def test_progress_never_runs_past_the_total(engine: Engine, sampler: str) -> None:
    seen: list[Progress] = []
    request = Txt2Img(seed=1, steps=5, batch_count=2, width=64, height=64, sampler_name=sampler)
    engine.generate(request, on_progress=seen.append)
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and steps[-1] == seen[-1].total == 10
    assert all(p.eta_seconds >= 0 for p in seen)


def test_the_mask_is_fitted_like_the_picture(engine: Engine) -> None:
    """With "crop and resize" a wide picture loses its sides; the mask must lose the same sides."""
    wide = Image.new("RGB", (256, 128), (200, 30, 30))
    mask = Image.new("L", (256, 128), 0)
    mask.paste(255, (0, 0, 64, 128))  # the left quarter: cropped away entirely
    mask.paste(255, (128, 0, 140, 128))  # a band in the middle survives the crop
    result = engine.generate(
        Inpaint(init_image=wide, mask=mask, resize_mode="crop and resize", width=128, height=128, mask_blur=0, steps=4)
    )
    out = pixels(result.images[0])
    assert np.array_equal(out[:, :50], np.full((128, 50, 3), (200, 30, 30)))  # the old left quarter is not redrawn
    assert np.abs(out[:, 66:74] - np.array((200, 30, 30))).mean() > 10  # the middle band is


def test_out_of_memory_is_a_clear_error_and_the_next_job_works(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: the first denoise raises torch's OOM; the engine frees, explains, and recovers."""
    import torch

    from pipelines.errors import OutOfMemory

    real_view = engine.manager.view
    calls = {"n": 0}

    def view_that_runs_out(*args: object, **kwargs: object) -> object:
        pipe = real_view(*args, **kwargs)
        calls["n"] += 1
        return Exhausted(pipe) if calls["n"] == 1 else pipe

    class Exhausted:
        """The view, whose call runs out of memory (its text encoders still read the prompt first)."""

        def __init__(self, pipe: object) -> None:
            self.pipe = pipe

        def __getattr__(self, name: str) -> object:
            return getattr(self.pipe, name)

        def __call__(self, **_: object) -> object:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.manager, "view", view_that_runs_out)
    with pytest.raises(OutOfMemory, match="ran out of memory at 64x64, batch 1: use a smaller size"):
        engine.generate(Txt2Img(prompt="too big", **FAST))
    assert engine.current_job is None and not engine.busy
    assert engine.generate(Txt2Img(prompt="fits", seed=1, **FAST)).images[0].size == (64, 64)


def test_a_closed_engine_refuses_new_work_with_a_typed_error(tmp_path: Path) -> None:
    closed = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    closed.close()  # what a stopping server does while requests may still arrive
    with pytest.raises(ShuttingDown, match="stopping"):
        closed.submit(Txt2Img(prompt="too late", steps=1, width=64, height=64))
    with pytest.raises(ShuttingDown):
        closed.load()
    assert closed.queue_length == 0
