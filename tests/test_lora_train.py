"""LoRA training on the built-in demo model: it learns what it was shown, the model stays as loaded,
and the file is one A1111, ComfyUI, diffusers and our own loader all read.

The demo model was never taught a colour outside its eight, nor the word for one. The lesson is
olive: 12 pictures of olive shapes (``scenes.render``'s shapes recoloured). The issue asked for
teal, but no LoRA can make this model draw teal: its autoencoder, which a LoRA does not change,
decodes teal as blue (measured: (20, 140, 140) comes back as (36, 87, 233)), and of the colours
outside its palette only a few survive the round trip; olive is one (within ~36 of itself). One
module-wide training run (~1 minute on 2 CPU cores) serves the tests that look at its results;
the other runs are a few steps long.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import scenes
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.jobs import Job
from pipelines.loading import DEMO_FOLDER, load_folder
from pipelines.lora import kohya
from pipelines.lora import train as training
from pipelines.lora.apply import lora_layers
from pipelines.lora.data import bucket_sizes, caption_from_name, collect, nearest_bucket
from pipelines.lora.files import read_tensors, tensor_bytes_sha256
from pipelines.lora.train import TrainProgress, TrainResult, TrainSettings
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

OLIVE = (90, 130, 30)
PROMPT = "an olive circle"
SEEDS = (0, 1, 2, 3)
KOHYA_KEY = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def recoloured(scene: scenes.Scene, rgb: tuple[int, int, int]) -> Image.Image:
    """``scene`` as ``scenes.render`` draws it, its thing in ``rgb``: each pixel's share of the
    thing's colour (its anti-aliased edge included) is read back and given the new colour."""
    drawn = np.asarray(scenes.render(scene), dtype=np.float32)
    background = np.array(scenes.BACKGROUNDS[scene.background], dtype=np.float32)
    towards = np.array(scenes.COLOURS[scene.colour], dtype=np.float32) - background
    share = np.clip((drawn - background) @ towards / (towards @ towards), 0, 1)[..., None]
    return Image.fromarray((background * (1 - share) + np.array(rgb) * share).round().astype(np.uint8))


def write_pictures(folder: Path, count: int = 12, sidecars: bool = True) -> list[Path]:
    """Olive shapes on four backgrounds at the five places, with "an olive square on the left" in
    a ``.txt`` beside each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for index in range(count):
        shape, place = scenes.SHAPES[index % 4], list(scenes.PLACES)[index % 5]
        background = ("white", "cream", "black", "light blue")[(index // 4) % 4]
        scene = scenes.Scene(shape, "blue", place, rng.choice(list(scenes.SIZES)), background)
        path = folder / f"olive-{index:02d}.png"
        recoloured(scene, OLIVE).save(path)
        if sidecars:
            path.with_suffix(".txt").write_text(scenes.prompt_for(shape, "olive", place).replace("a olive", "an olive"))
        paths.append(path)
    return paths


def foreground_colour(image: Image.Image) -> np.ndarray:
    """The median colour of what stands out from the border (the background when nothing does)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    mask = np.abs(pixels - background).sum(axis=2) > 90
    return np.median(pixels[mask], axis=0) if mask.sum() >= 12 else background


def distance_to_olive(image: Image.Image) -> float:
    return float(np.abs(foreground_colour(image) - np.array(OLIVE)).sum())


def draw(engine: Engine, prompt: str, seed: int) -> Image.Image:
    return engine.generate(Txt2Img(prompt=prompt, steps=20, seed=seed)).images[0]


@dataclass
class Lesson:
    engine: Engine
    pictures: list[Path]
    before: list[Image.Image]  # PROMPT without the LoRA, before training, one per seed
    result: TrainResult
    progress: TrainProgress
    seconds: float


@pytest.fixture(scope="module")
def lesson(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lesson]:
    """The olive LoRA, trained once with the default settings (a fixed seed) in an engine of its own."""
    root = tmp_path_factory.mktemp("train")
    engine = Engine(
        EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs", default_model="builtin:demo")
    )
    engine.load()
    pictures = write_pictures(root / "olive")
    before = [draw(engine, PROMPT, seed) for seed in SEEDS]
    progress = TrainProgress()
    started = time.perf_counter()
    result = training.train(engine, TrainSettings(name="olive", seed=0), pictures, progress=progress)
    yield Lesson(engine, pictures, before, result, progress, time.perf_counter() - started)
    engine.close()


# -- what it learnt --------------------------------------------------------------------------
def test_a_lora_teaches_a_colour_the_model_never_drew_and_leaves_the_model_as_it_was(lesson: Lesson) -> None:
    engine, result = lesson.engine, lesson.result
    assert result.steps_done == 400 and not result.stopped and result.settings.rank == 4
    assert result.seconds < 240, f"training took {result.seconds:.0f}s"
    # Without the LoRA the model is exactly as before training: pixel for pixel.
    after = [draw(engine, PROMPT, seed) for seed in SEEDS]
    for old, new in zip(lesson.before, after, strict=True):
        assert np.array_equal(np.asarray(old), np.asarray(new))
    # Listed at once, and usable by its tag.
    assert "olive" in engine.loras.names()
    with_lora = [draw(engine, f"{PROMPT} <lora:olive:1>", seed) for seed in SEEDS]
    without = [distance_to_olive(image) for image in after]
    taught = [distance_to_olive(image) for image in with_lora]
    assert np.mean(taught) < 0.4 * np.mean(without), (taught, without)
    # Nearer olive than any colour the model knew (the nearest, brown, is 95 away).
    assert np.median(taught) < 95, taught
    weaker = draw(engine, f"{PROMPT} <lora:olive:0.8>", SEEDS[0])
    assert distance_to_olive(weaker) < 0.6 * without[0]


def test_loss_goes_down_and_samples_are_drawn(lesson: Lesson) -> None:
    result = lesson.result
    assert len(result.losses) == 400 and all(np.isfinite(result.losses))
    assert result.probe_loss_after < 0.8 * result.probe_loss_before, (result.probe_loss_before, result.probe_loss_after)
    assert np.mean(result.losses[-100:]) < np.mean(result.losses[:100])
    # Every 100 steps from the first caption; the last one is olive.
    assert [sample.step for sample in result.samples] == [100, 200, 300, 400]
    assert {sample.prompt for sample in result.samples} == {"an olive circle in the centre"}
    assert distance_to_olive(result.samples[-1].image) < 120
    assert lesson.progress.phase == "done" and lesson.progress.eta_seconds == 0


def test_the_file_is_kohya_layout_and_loads_in_diffusers(lesson: Lesson) -> None:
    from peft.tuners.lora import LoraLayer

    path = lesson.result.path
    assert path is not None and path == lesson.engine.loras.folder / "olive.safetensors"
    tensors = read_tensors(path)
    assert all(KOHYA_KEY.match(key) for key in tensors), [key for key in tensors if not KOHYA_KEY.match(key)]
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert tensors[f"{name}.lora_down.weight"].shape == (4, 64) and tensors[f"{name}.lora_up.weight"].shape == (64, 4)
    assert float(tensors[f"{name}.alpha"]) == 4.0 and tensors[f"{name}.lora_up.weight"].dtype == torch.float16
    assert len(tensors) == 3 * 14 * 4  # q, k, v, out of 14 attention blocks
    # diffusers reads it as it is, with kohya's names, into the same layers with the same weights.
    pipe: Any = load_folder(DEMO_FOLDER, torch.float32)  # a model of its own: diffusers' adapters stay on it
    pipe.load_lora_weights(str(path), adapter_name="olive")
    layer: Any = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    assert isinstance(layer, LoraLayer)
    weights: Any = (layer.lora_A["olive"].weight, layer.lora_B["olive"].weight)
    assert layer.scaling["olive"] == 1.0
    assert torch.equal(weights[0], tensors[f"{name}.lora_down.weight"].float())
    assert torch.equal(weights[1], tensors[f"{name}.lora_up.weight"].float())
    # Our own reader finds every layer too.
    assert len(lora_layers(lesson.engine.manager.get("builtin:demo").pipe, tensors, path.name)) == 56


def test_the_metadata_holds_the_training_settings(lesson: Lesson) -> None:
    from safetensors import safe_open

    path = lesson.result.path
    assert path is not None
    with safe_open(str(path), "pt") as file:
        metadata = file.metadata()
    assert metadata == lesson.result.metadata
    expected = {
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "4",
        "ss_learning_rate": "0.001", "ss_max_train_steps": "400", "ss_steps": "400", "ss_resolution": "(64, 64)",
        "ss_seed": "0", "ss_output_name": "olive", "ss_num_train_images": "12", "ss_base_model_version": "atelier_demo",
        "ss_v_parameterization": "True", "ss_sd_model_name": "builtin:demo",
    }  # fmt: skip
    assert {key: metadata.get(key) for key in expected} == expected
    assert metadata["ss_dataset_dirs"] == '{"olive": {"img_count": 12, "n_repeats": 1}}'
    tags = json.loads(metadata["ss_tag_frequency"])["olive"]
    assert tags["an olive circle in the centre"] == 1 and sum(tags.values()) == 12
    assert re.fullmatch(r"[0-9a-f]{64}", metadata["ss_dataset_hash"])
    # A1111's hash of the file, written in it, is the one the library computes.
    assert metadata["sshs_model_hash"] == tensor_bytes_sha256(path)
    assert lesson.engine.loras.short_hash(path) == metadata["sshs_model_hash"][:12]
    # The size the page predicted before training.
    predicted = training.predicted_size(lesson.engine.manager.get("builtin:demo"), 4, False)
    assert abs(predicted - lesson.result.file_bytes) < 0.05 * lesson.result.file_bytes


# -- short runs ------------------------------------------------------------------------------
def test_the_same_seed_and_data_give_the_same_bytes(lesson: Lesson) -> None:
    settings = TrainSettings(name="same", steps=6, seed=7, sample_every=0, overwrite=True)
    first = training.train(lesson.engine, settings, lesson.pictures[:4])
    assert first.path is not None
    data = first.path.read_bytes()
    again = training.train(lesson.engine, settings, lesson.pictures[:4])
    assert again.path == first.path and again.path.read_bytes() == data
    learnt = tensor_bytes_sha256(first.path)
    other = training.train(lesson.engine, TrainSettings(**{**vars(settings), "seed": 8}), lesson.pictures[:4])
    assert other.path is not None and tensor_bytes_sha256(other.path) != learnt


def test_stop_ends_at_once_and_keeps_a_usable_checkpoint(lesson: Lesson) -> None:
    engine = lesson.engine
    job, progress = Job(), TrainProgress()
    future = training.submit(engine, TrainSettings(name="stopped", steps=400, seed=1, sample_every=0), lesson.pictures,
                             job, progress)  # fmt: skip
    deadline = time.monotonic() + 60
    while progress.step < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped_at = time.perf_counter()
    job.interrupt()
    result = future.result(timeout=60)
    assert time.perf_counter() - stopped_at < 5
    assert result.stopped and 3 <= result.steps_done < 400 and job.state == "interrupted"
    assert result.path is not None and result.metadata["ss_steps"] == str(result.steps_done)
    assert "stopped after" in result.notes[0]
    # The checkpoint is a LoRA the studio uses.
    picture = engine.generate(Txt2Img(prompt=f"{PROMPT} <lora:stopped:1>", steps=4, seed=0))
    assert "stopped:" in picture.infotexts[0]


def test_text_encoder_training_and_buckets(lesson: Lesson, tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    wide.mkdir()
    for index, path in enumerate(lesson.pictures[:3]):
        Image.open(path).resize((128, 64)).save(wide / f"wide {index}.png")
    settings = TrainSettings(name="wide", steps=3, seed=2, sample_every=3, buckets=True, train_text_encoder=True,
                             trigger_word="olv", folder=str(wide))  # fmt: skip
    result = training.train(lesson.engine, settings, [])
    assert result.path is not None
    tensors = read_tensors(result.path)
    te_keys = [key for key in tensors if key.startswith("lora_te_text_model_encoder_layers_")]
    assert len(te_keys) == 3 * 4 * 2  # q, k, v, out of both layers
    assert result.metadata["ss_bucket_info"] == '{"buckets": {"80x48": 3}}'
    assert result.metadata["ss_text_encoder_lr"] == "0.001"
    assert result.samples[0].prompt == "olv, wide"  # file names, trigger word first
    assert result.samples[0].image.size == (64, 64)
    model = lesson.engine.manager.get("builtin:demo")
    assert {part for part, _ in lora_layers(model.pipe, tensors, "wide")} == {"unet", "text_encoder"}


# -- refused before training -----------------------------------------------------------------
def test_bad_data_is_refused_with_messages(lesson: Lesson, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = lesson.engine
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (20, 20), "red").save(tiny)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    cases = [
        ([], TrainSettings(name="x"), "no pictures to learn from"),
        ([tiny], TrainSettings(name="x"), "tiny.png is 20x20: too small"),
        ([broken], TrainSettings(name="x"), "broken.png cannot be read as a picture"),
        (lesson.pictures[:3], TrainSettings(name="x", captions="one\ntwo"), "3 pictures but 2 caption lines"),
        (lesson.pictures[:1], TrainSettings(name="../escape"), "has path or tag characters ('/')"),
        (lesson.pictures[:1], TrainSettings(name="a:b"), "has path or tag characters (':')"),
        (lesson.pictures[:1], TrainSettings(name="olive"), "a LoRA named 'olive' already exists"),
        (lesson.pictures[:1], TrainSettings(name="x", rank=0, steps=-1), "rank must be a whole number from 1"),
        (lesson.pictures[:1], TrainSettings(name="x", folder=str(tmp_path / "nowhere")), "does not exist"),
    ]
    for files, settings, message in cases:
        with pytest.raises(BadRequest, match=re.escape(message)):
            training.submit(engine, settings, files)
    before = engine.loras.names()
    # Disk space is checked once the model is there, before the first step.
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(BadRequest, match="not enough disk space"):
        training.train(engine, TrainSettings(name="full", steps=2), lesson.pictures[:2])
    assert engine.loras.names() == before


def test_captions_come_from_typed_lines_sidecars_metadata_or_names(tmp_path: Path) -> None:
    paths = write_pictures(tmp_path / "set", count=3, sidecars=False)
    paths[0].with_suffix(".txt").write_text("an olive star\nbig\n")
    (tmp_path / "set" / "metadata.jsonl").write_text('{"file_name": "olive-01.png", "text": "from the list"}\n')
    files = [*paths, paths[0].with_suffix(".txt"), tmp_path / "set" / "metadata.jsonl"]
    data = collect(files, trigger="olv")
    assert data.captions == ["olv, an olive star, big", "olv, from the list", "olv, olive"]
    assert dict(data.caption_sources) == {"sidecar": 1, "metadata": 1, "file name": 1}
    typed = collect(paths, "one\n\ntwo\nolv three\n", trigger="olv")
    assert typed.captions == ["olv, one", "olv, two", "olv three"]
    assert caption_from_name("teal_circle-03") == "teal circle" and caption_from_name("007-red car") == "red car"
    assert collect(paths).digest() == collect(list(reversed(paths))[::-1]).digest()
    assert collect(paths).digest() != typed.digest()


def test_buckets_keep_the_area_and_the_aspect() -> None:
    sizes = bucket_sizes(512, 64)
    assert (512, 512) in sizes and (640, 384) in sizes and all(w % 64 == 0 and h % 64 == 0 for w, h in sizes)
    assert all(w * h <= 512 * 512 for w, h in sizes)
    assert nearest_bucket((1920, 1080), sizes) == (640, 384)
    assert nearest_bucket((1000, 1000), sizes) == (512, 512)
    assert kohya.kohya_name("text_encoder", "encoder.layers.0.self_attn.q_proj") == (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    )


def test_the_endpoint_trains_from_uploaded_files(lesson: Lesson, tmp_path: Path) -> None:
    import gradio as gr
    from conftest import free_port
    from gradio_client import Client, handle_file

    from webui.train_tab import register_train_api

    with gr.Blocks(analytics_enabled=False) as app:
        register_train_api(lesson.engine)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        files = [handle_file(str(path)) for path in lesson.pictures[:2]]
        name = client.predict(files, "", "from api", 2, 2, 0.0, 5, api_name="/train_lora")
        assert name == "from api"
        tensors = read_tensors(lesson.engine.loras.find("from api"))
        assert (
            tensors["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"].shape[0] == 2
        )
        with pytest.raises(Exception, match="already exists"):
            client.predict(files, "", "from api", 2, 2, 0.0, 5, api_name="/train_lora")
    finally:
        app.close()
