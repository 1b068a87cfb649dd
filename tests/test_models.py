"""Model sources and the cache: local folders, refusals, hub ids offline, eviction, mode views."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pixels

from pipelines import catalog, loading, samplers
from pipelines.engine import Engine
from pipelines.errors import BadRequest, ModelRefused, ModelUnavailable
from pipelines.manager import PipelineManager
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

FAST = {"steps": 4, "width": 64, "height": 64, "seed": 11}


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model saved as a diffusers folder, the way users keep downloaded models."""
    folder = tmp_path_factory.mktemp("saved") / "demo-copy"
    loading.load_builtin_demo(torch.float32).save_pretrained(folder, safe_serialization=True)
    return folder


def _models_dir_with(tmp_path: Path, demo_folder: Path, *names: str) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for name in names:
        (models / name).symlink_to(demo_folder, target_is_directory=True)
    return models


def test_listing_shows_builtin_local_and_curated_hub_models(tmp_path: Path, demo_folder: Path) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "my-model")
    (models / "old.ckpt").write_bytes(b"pickle")
    engine = Engine(EngineSettings(models_dir=models))
    entries = {entry.name: entry for entry in engine.list_models()}
    assert entries["builtin:demo"].source == "builtin"
    assert entries["my-model"].source == "folder" and not entries["my-model"].refused
    assert "pickle" in entries["old.ckpt"].refused
    assert entries["stable-diffusion-v1-5/stable-diffusion-v1-5"].title.endswith("(download ~2.1 GB)")
    assert engine.default_model == "my-model"  # a local model wins over the demo


def test_demo_is_the_default_when_no_model_is_present(tmp_path: Path) -> None:
    assert Engine(EngineSettings(models_dir=tmp_path / "nothing-here")).default_model == "builtin:demo"


def test_local_folder_loads_offline_and_draws_like_the_demo(tmp_path: Path, demo_folder: Path, engine: Engine) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "my-model")
    local = Engine(EngineSettings(models_dir=models))
    from_folder = local.generate(Txt2Img(prompt="a blue square", model="my-model", **FAST))
    builtin = engine.generate(Txt2Img(prompt="a blue square", model="builtin:demo", **FAST))
    assert np.array_equal(pixels(from_folder.images[0]), pixels(builtin.images[0]))
    assert from_folder.model == "my-model" and len(from_folder.model_hash) == 10


def test_a_folder_of_another_kind_of_model_is_refused_by_its_kind(tmp_path: Path, demo_folder: Path) -> None:
    folder = tmp_path / "kandinsky"
    shutil.copytree(demo_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ModelRefused, match=r"KandinskyV22Pipeline; Atelier runs Stable Diffusion 1.x, 2.x and XL"):
        loading.load_folder(folder, torch.float32)


def test_generating_in_every_mode_imports_no_pipeline_atelier_does_not_run(tmp_path: Path) -> None:
    """diffusers' AutoPipeline tables import every pipeline it has: a second of start-up for nothing."""
    script = """
import sys
from PIL import Image
from pipelines.engine import Engine
from pipelines.requests import Img2Img, Inpaint, Txt2Img
from pipelines.settings import EngineSettings
engine = Engine(EngineSettings(models_dir=sys.argv[1], outputs_dir=sys.argv[2]))
picture, mask = Image.new("RGB", (64, 64), "red"), Image.new("L", (64, 64), 255)
engine.generate(Txt2Img(prompt="a circle", steps=1, seed=1))
engine.generate(Img2Img(prompt="a circle", steps=2, seed=1, init_image=picture))
engine.generate(Inpaint(prompt="a circle", steps=2, seed=1, init_image=picture, mask=mask))
engine.close()
others = [name for name in sys.modules if name.startswith("diffusers.pipelines.") and "stable_diffusion" not in name]
print(sorted(others))
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "models"), str(tmp_path / "outputs")],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.strip().splitlines()[-1]
        == "['diffusers.pipelines.pipeline_loading_utils', 'diffusers.pipelines.pipeline_utils']"
    )
    assert "should be kept in float32" not in done.stderr  # diffusers' false note at every mode view


def test_pickle_checkpoints_are_refused_with_the_reason(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "danger.ckpt").write_bytes(b"\x80\x04pickle")
    engine = Engine(EngineSettings(models_dir=models))
    with pytest.raises(ModelRefused, match=r"pickle checkpoints .* can run arbitrary code"):
        engine.generate(Txt2Img(model="danger.ckpt", **FAST))


def test_a_damaged_safetensors_file_is_a_clear_error(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelUnavailable, match=r"not a readable \.safetensors file"):
        Engine(EngineSettings(models_dir=models)).generate(Txt2Img(model="broken.safetensors", **FAST))


@pytest.mark.parametrize("name", ["../secrets", "/etc/passwd", "a/../../b", "C:\\models\\x.safetensors"])
def test_path_like_model_names_never_leave_the_models_folder(engine: Engine, name: str) -> None:
    with pytest.raises(BadRequest, match="must be a name inside the models folder"):
        engine.generate(Txt2Img(model=name, **FAST))


def test_unknown_names_list_what_is_known(engine: Engine) -> None:
    with pytest.raises(ModelUnavailable, match="known models: builtin:demo"):
        engine.generate(Txt2Img(model="no-such-model", **FAST))


def test_offline_hub_id_fails_fast_with_what_to_do(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable) as caught:
        engine.generate(Txt2Img(model="stable-diffusion-v1-5/stable-diffusion-v1-5", **FAST))
    assert time.perf_counter() - started < 2
    message = str(caught.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "HF_HUB_OFFLINE" in message
    assert "models folder" in message


def test_unreachable_hub_fails_fast(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Port 9 on loopback refuses at once: the same answer as a machine with no network.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="downloading from the Hugging Face hub failed"):
        engine.generate(Txt2Img(model="someone/some-model", **FAST))
    assert time.perf_counter() - started < 15


def _fake_hf_cache(hub: Path, repo: str, folder: Path) -> None:
    """The layout huggingface_hub writes: models--org--name/snapshots/<rev> plus refs/main."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "snapshots").mkdir(parents=True)
    (repo_dir / "snapshots" / ("0" * 40)).symlink_to(folder, target_is_directory=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)


def test_hub_id_in_the_hf_home_cache_loads_offline(tmp_path: Path, demo_folder: Path) -> None:
    """A repo already in the standard cache (HF_HOME) loads with the hub unreachable, and the
    picker marks a curated model found there as downloaded."""
    _fake_hf_cache(tmp_path / "hf" / "hub", "atelier-test/tiny", demo_folder)
    _fake_hf_cache(tmp_path / "hf" / "hub", "stabilityai/sd-turbo", demo_folder)
    script = (
        "from pipelines.engine import Engine; from pipelines.requests import Txt2Img; e = Engine(); "
        "r = e.generate(Txt2Img(model='atelier-test/tiny', steps=2, width=64, height=64)); "
        "print('OK', r.model, r.images[0].size); print([m.title for m in e.list_models()])"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert "OK atelier-test/tiny (64, 64)" in done.stdout, done.stderr[-2000:]
    assert "stabilityai/sd-turbo (downloaded)" in done.stdout
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5 (download ~2.1 GB)" in done.stdout


def test_loading_a_model_and_its_mode_views_does_not_warn_about_the_safety_checker(
    demo_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Atelier leaves the NSFW checker out on purpose; diffusers warned about it at every view."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pipe = loading.load_folder(demo_folder, torch.float32)
            views = [
                getattr(diffusers, loading.VIEW_CLASSES["sd"][mode]).from_pipe(pipe) for mode in ("img2img", "inpaint")
            ]
    finally:
        diffusers_logging.disable_propagation()
    assert [view.safety_checker for view in views] == [None, None]
    assert not [record.getMessage() for record in caplog.records if "safety checker" in record.getMessage()]


def test_mode_views_share_every_module_and_switch_in_milliseconds(engine: Engine) -> None:
    model = engine.manager.get("builtin:demo")
    base = model.pipe.components
    for mode in ("txt2img", "img2img", "inpaint"):
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, "Euler")
        view = engine.manager.view(model, mode, scheduler)
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert view.components[name] is base[name], f"{mode} view copied {name}"
        assert view.scheduler is scheduler and view.scheduler is not model.pipe.scheduler
        assert next(view.unet.parameters()).dtype == engine.manager.dtype
    started = time.perf_counter()
    for _ in range(20):
        engine.manager.view(model, "inpaint", model.pipe.scheduler)
    assert (time.perf_counter() - started) / 20 < 0.05


def test_a_mode_view_is_built_once_and_takes_each_jobs_scheduler(engine: Engine, tmp_path: Path) -> None:
    """Building a view walks every module (a sixth of a one-step 512 px frame on a GPU): the
    manager keeps one per mode and hands it the next job's scheduler."""
    model = engine.manager.get("builtin:demo")
    euler, dpm = (samplers.build_scheduler(model.pipe.scheduler.config, name) for name in ("Euler", "DPM++ 2M"))
    first = engine.manager.view(model, "img2img", euler)
    second = engine.manager.view(model, "img2img", dpm)
    assert second is first and second.scheduler is dpm
    assert second.config["scheduler"][1] == type(dpm).__name__  # what from_pipe and save_pretrained read
    assert engine.manager.view(model, "txt2img", euler) is not first
    own = engine.manager.view(model, "img2img", euler, own=True)  # for a caller that swaps modules in
    assert own is not first and own.unet is first.unet and first.scheduler is dpm
    # With offloading, each view's hooks are its own: a new view per job.
    offloading = PipelineManager(EngineSettings(models_dir=tmp_path, outputs_dir=tmp_path, offload="model"))
    demo = offloading.get("builtin:demo")
    assert offloading.view(demo, "txt2img", euler) is not offloading.view(demo, "txt2img", euler)


def test_cache_counts_hits_misses_and_bytes(tmp_path: Path, demo_folder: Path) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "a")
    engine = Engine(EngineSettings(models_dir=models))
    pipe = engine.load("a").pipe
    engine.load("a")
    stats = engine.status()["stats"]["a"]
    assert (stats["hits"], stats["misses"]) == (1, 1)
    assert stats["load_seconds"] > 0 and stats["location"] == "cpu"
    tensors = [t for m in (pipe.unet, pipe.vae, pipe.text_encoder) for t in (*m.parameters(), *m.buffers())]
    assert stats["bytes_held"] == sum(t.numel() * t.element_size() for t in tensors) > 20_000_000


@pytest.mark.parametrize("budget", [{"max_models": 1}, {"ram_budget_bytes": 30_000_000}])
def test_eviction_really_frees_the_least_recently_used(
    tmp_path: Path, demo_folder: Path, budget: dict[str, int]
) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "a", "b")
    engine = Engine(EngineSettings(models_dir=models, **budget))
    first_unet = weakref.ref(engine.load("a").pipe.unet)
    engine.generate(Txt2Img(model="a", **FAST))
    engine.load("b")
    gc.collect()
    assert [m.name for m in engine.manager.loaded()] == ["b"]
    assert first_unet() is None, "the evicted model's weights are still referenced somewhere"
    assert engine.status()["stats"]["a"]["location"] == "not loaded"
    assert engine.status()["stats"]["a"]["bytes_held"] == 0


def test_unload_frees_memory(tmp_path: Path, demo_folder: Path) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "a")
    engine = Engine(EngineSettings(models_dir=models))
    unet = weakref.ref(engine.load("a").pipe.unet)
    assert engine.manager.unload("a") == ["a"]
    gc.collect()
    assert unet() is None and engine.manager.loaded() == []


def test_catalog_resolves_names(tmp_path: Path) -> None:
    assert catalog.resolve("builtin:demo", tmp_path).source == "builtin"
    assert catalog.resolve("org/model-name", tmp_path).source == "hub"
    (tmp_path / "x.safetensors").write_bytes(b"")
    assert catalog.resolve("x.safetensors", tmp_path).source == "single_file"


def test_a_dangling_link_in_the_models_folder_is_skipped(tmp_path: Path, demo_folder: Path) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "good")
    (models / "unplugged.safetensors").symlink_to(tmp_path / "drive" / "gone.safetensors")
    engine = Engine(EngineSettings(models_dir=models))
    assert [entry.name for entry in catalog.list_local(models)] == ["good"]
    assert engine.default_model == "good"


def test_a_model_that_fails_to_load_leaves_the_loaded_one_working(tmp_path: Path, demo_folder: Path) -> None:
    models = _models_dir_with(tmp_path, demo_folder, "good")
    (models / "truncated.safetensors").write_bytes(
        (demo_folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:4096]
    )
    engine = Engine(EngineSettings(models_dir=models))
    before = engine.generate(Txt2Img(model="good", **FAST)).images[0]
    with pytest.raises(ModelUnavailable, match=r"truncated\.safetensors"):
        engine.generate(Txt2Img(model="truncated.safetensors", **FAST))
    after = engine.generate(Txt2Img(model="good", **FAST)).images[0]
    assert np.array_equal(pixels(before), pixels(after))
    assert [m.name for m in engine.manager.loaded()] == ["good"]


def test_demo_weights_are_the_same_when_built_in_several_threads_at_once() -> None:
    """A server warming up beside a script builds the demo twice at once; both must be identical."""
    import threading

    reference = loading.build_untrained_demo().unet.conv_in.weight.detach().clone()
    built: list[object] = []

    def build() -> None:
        built.append(loading.build_untrained_demo().unet.conv_in.weight)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 2 and all(np.array_equal(weight.detach().numpy(), reference.numpy()) for weight in built)
