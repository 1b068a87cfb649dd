"""Animation through the engine and the ``/animate`` endpoint, judged by the demo model's pixels: prompt
travel moves the shape, zoom grows it, Stop keeps a clip of the frames so far, every frame is a PNG
with its parameters and the clip is in the gallery. The library's parts (schedules, warps, colours,
clip files) are tested in the other test_animation_* files."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

import launch
from pipelines import infotext
from pipelines.animation.clips import clip_info
from pipelines.animation.settings import AnimationSettings
from pipelines.engine import Engine, Job
from pipelines.errors import BadRequest
from pipelines.outputs import read_metadata
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

TRAVEL = '{"0": "a red circle on the left", "8": "a red circle on the right"}'
STILL = {"zoom": "0: (1.0)", "noise_schedule": "0: (0)", "sampler_name": "DDIM", "steps": 8, "seed": 3}


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    yield engine
    engine.close()


def _foreground(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.abs(pixels - np.median(border, axis=0)).sum(axis=2) > 90


def _centre_x(image: Image.Image) -> float:
    return float(np.nonzero(_foreground(image))[1].mean())


def test_prompt_travel_moves_the_shape_left_to_right_smoothly(own_engine: Engine) -> None:
    # Strength 0: each frame starts from the same seed's noise, so only the blended prompt changes.
    settings = AnimationSettings(prompts=TRAVEL, max_frames=9, diffusion_cadence=1, strength_schedule="0: (0)",
                                 seed_behaviour="fixed", **STILL)  # fmt: skip
    result = own_engine.animate(settings)
    centres = [_centre_x(frame) for frame in result.frames]
    assert centres[0] < 28 < 36 < centres[-1], centres
    assert all(later >= earlier - 1.5 for earlier, later in itertools.pairwise(centres)), centres  # no jumps back
    travel = [np.abs(np.subtract(a, b, dtype=np.int16)).mean() for a, b in itertools.pairwise(result.frames)]
    other_seed = own_engine.animate(settings.replace(prompts="a red circle on the left", max_frames=1, seed=4))
    independent = np.abs(np.subtract(result.frames[0], other_seed.frames[0], dtype=np.int16)).mean()
    # The demo model knows two places, so the shape crosses over in a frame or two (a real model glides);
    # the frames before and after that barely change, far less than a picture of another seed differs.
    assert np.median(travel) < independent / 10, (travel, independent)


def test_zoom_with_little_denoising_enlarges_the_shape_frame_by_frame(own_engine: Engine) -> None:
    settings = AnimationSettings(prompts="a red circle", max_frames=5, diffusion_cadence=1, colour_coherence="None",
                                 **STILL | {"zoom": "0: (1.1)", "strength_schedule": "0: (0.95)"})  # fmt: skip
    areas = [int(_foreground(frame).sum()) for frame in own_engine.animate(settings).frames]
    assert all(later > earlier for earlier, later in itertools.pairwise(areas)), areas


@pytest.mark.parametrize("clip_format", ["mp4", "gif", "webp"])
def test_every_frame_is_a_png_with_parameters_and_the_clip_is_in_the_gallery(
    own_engine: Engine, clip_format: str
) -> None:
    settings = AnimationSettings(prompts="a red circle", max_frames=4, fps=8, clip_format=clip_format, **STILL)
    result = own_engine.animate(settings)
    info = clip_info(result.clip)
    assert (info.kind, info.frames, info.width, info.height) == (clip_format, 4, 64, 64)
    assert info.fps == pytest.approx(8, rel=0.1)
    assert [path.name for path in result.paths] == [f"frame-{i:05d}.png" for i in range(4)]
    metadata = read_metadata(result.paths[2])
    params = infotext.parse_infotext(metadata["parameters"])
    assert (params["prompt"], params["Frame"], params["Seed"]) == (
        "a red circle",
        "2",
        str(metadata["atelier"]["seed"]),
    )
    assert infotext.parse_infotext(read_metadata(result.paths[0])["parameters"])["Seed"] == str(result.settings.seed)
    items, total = own_engine.outputs.page("red circle")
    assert total == 1 and items[0].path == result.clip  # frames stay in their folder, out of the grid
    assert read_metadata(result.clip)["parameters"].startswith("a red circle\n")


def test_stop_keeps_the_frames_so_far_and_still_writes_their_clip(own_engine: Engine) -> None:
    job = Job()

    def stop_after_three(done: int, total: int, frame: Image.Image) -> None:
        if done == 3:
            job.interrupt()

    settings = AnimationSettings(prompts="a red circle", max_frames=12, diffusion_cadence=1, **STILL)
    result = own_engine.animate(settings, job, stop_after_three)
    assert result.stopped and len(result.frames) == 3 and job.state == "interrupted"
    assert clip_info(result.clip).frames == 3
    assert not [p for p in result.clip.parent.rglob("*") if p.name.startswith(".writing-")]  # nothing half-written
    assert any("stopped after 3 of 12 frames" in note for note in result.notes)


@pytest.mark.parametrize("prompt", ["a (red:1.3) circle, (blue square:0.4)", "a red circle BREAK on the left"])
def test_the_first_frame_reads_the_prompt_as_generate_does(own_engine: Engine, prompt: str) -> None:
    # Weights and BREAK were read as words: the frame drifted from the picture Generate makes.
    frame = own_engine.animate(AnimationSettings(prompts=prompt, max_frames=1, **STILL)).frames[0]
    picture = own_engine.generate(
        Txt2Img(prompt=prompt, steps=8, sampler_name="DDIM", seed=3, width=64, height=64, cfg_scale=7)
    ).images[0]
    assert np.array_equal(np.asarray(frame), np.asarray(picture))


def test_lora_tags_in_keyframes_apply_to_their_frames_and_come_off(own_engine: Engine) -> None:
    from test_lora import write_peft_lora

    unet = own_engine.manager.get("builtin:demo").pipe.unet
    write_peft_lora(unet, own_engine.settings.models_dir / "Lora" / "wobble.safetensors")
    tagged = "a red circle <lora:wobble:1>"
    clip = own_engine.animate(AnimationSettings(prompts=tagged, max_frames=1, **STILL))
    frames = clip.frames
    asked = {"steps": 8, "sampler_name": "DDIM", "seed": 3, "width": 64, "height": 64, "cfg_scale": 7}
    generated = own_engine.generate(Txt2Img(prompt=tagged, **asked))
    with_lora = generated.images[0]
    # The frame's file names the LoRA by the same hash a picture's does (A1111's readers and hubs use it).
    lora_hashes = infotext.parse_infotext(generated.infotexts[0])["Lora hashes"]
    assert lora_hashes.startswith("wobble: ") and len(lora_hashes) == len("wobble: ") + 12
    assert infotext.parse_infotext(read_metadata(clip.paths[0])["parameters"])["Lora hashes"] == lora_hashes
    plain = own_engine.generate(Txt2Img(prompt="a red circle", **asked)).images[0]
    assert np.array_equal(np.asarray(frames[0]), np.asarray(with_lora))
    assert not np.array_equal(np.asarray(with_lora), np.asarray(plain)), "the LoRA changes the picture"
    after = own_engine.animate(AnimationSettings(prompts="a red circle", max_frames=1, **STILL)).frames[0]
    assert np.array_equal(np.asarray(after), np.asarray(plain)), "the LoRA stayed on the model"
    with pytest.raises(BadRequest, match="gone"):  # an unknown name: refused before the clip queues
        own_engine.animate(AnimationSettings(prompts='{"0": "a circle", "4": "a square <lora:gone:1>"}'))


def test_bad_schedules_are_refused_before_anything_is_made(own_engine: Engine) -> None:
    with pytest.raises(BadRequest, match="zoom") as caught:
        own_engine.animate(AnimationSettings(prompts="a circle", zoom="0: (1.0), 10: (__import__('os'))"))
    assert "10" in str(caught.value)
    assert not (own_engine.outputs.root).exists() or not list(own_engine.outputs.root.rglob("*.png"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp = tmp_path_factory.mktemp("animate-server")
    (tmp / "models").mkdir()
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"),
         "--models-dir", str(tmp / "models")]
    )  # fmt: skip
    app = launch.serve(args, prevent_thread_lock=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client
    client.close()
    app.close()


def test_animate_endpoint_returns_the_clip(client: Client) -> None:
    answer = client.predict(
        prompts=TRAVEL, max_frames=3, fps=6, steps=6, seed=9, zoom="0: (1.02)", clip_format="gif",
        api_name="/animate",
    )  # fmt: skip
    assert answer["frames"] == 3 and answer["seed"] == 9
    assert clip_info(answer["clip"]).frames == 3
    with pytest.raises(AppError, match="cfg_scale_schedule"):
        client.predict(prompts="a circle", max_frames=2, cfg_scale_schedule="0: (oops)", api_name="/animate")
