"""The power tools over A1111's REST API, through the public ``webuiapi`` client, with A1111's field
names: hires fix, variation seeds, the X/Y/Z plot script, Skip, and the lists of upscalers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import webuiapi
from conftest import free_port

import launch
from pipelines.manager import PipelineManager
from pipelines.settings import EngineSettings
from tests.test_lora import write_peft_lora

TIMEOUT = 120
FAST = {"steps": 4, "width": 64, "height": 64, "seed": 21, "sampler_name": "Euler", "cfg_scale": 6.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("power-api")


@pytest.fixture(scope="module")
def api(models: Path) -> Iterator[webuiapi.WebUIApi]:
    tmp = models
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"),
         "--models-dir", str(tmp / "models"), "--api"]
    )  # fmt: skip
    (tmp / "models").mkdir(parents=True, exist_ok=True)
    app = launch.serve(args, prevent_thread_lock=True)
    yield webuiapi.WebUIApi(host="127.0.0.1", port=port)
    app.close()


def _base(api: webuiapi.WebUIApi) -> str:
    return api.baseurl


def _rgb(image: object) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)  # type: ignore[attr-defined]


def test_hires_fix_with_a1111_fields(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a blue square", enable_hr=True, hr_scale=2, hr_upscaler="Lanczos",
                         hr_second_pass_steps=2, denoising_strength=0.5, **FAST)  # fmt: skip
    assert result.image.size == (128, 128)
    text = result.info["infotexts"][0]
    assert "Hires upscale: 2" in text and "Hires upscaler: Lanczos" in text and "Size: 64x64" in text
    plain = api.txt2img(prompt="a blue square", **FAST)
    assert plain.image.size == (64, 64)


def test_an_unknown_upscaler_is_a_422_naming_the_known_ones(api: webuiapi.WebUIApi) -> None:
    response = httpx.post(f"{_base(api)}/txt2img", timeout=TIMEOUT,
                          json={"prompt": "x", "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+", **FAST})  # fmt: skip
    assert response.status_code == 422
    assert "R-ESRGAN 4x+" in response.text and "Lanczos" in response.text


def test_variation_seed_fields_are_used_and_reported(api: webuiapi.WebUIApi) -> None:
    plain = api.txt2img(prompt="a yellow star", **FAST)
    varied = api.txt2img(prompt="a yellow star", subseed=77, subseed_strength=0.3, **FAST)
    assert varied.info["subseed"] == 77 and varied.info["subseed_strength"] == 0.3
    assert "Variation seed: 77, Variation seed strength: 0.3" in varied.info["infotexts"][0]
    assert np.abs(_rgb(varied.image) - _rgb(plain.image)).mean() > 0


def test_the_xyz_plot_script_returns_the_grid_then_the_cells(api: webuiapi.WebUIApi) -> None:
    # A1111's script_args: x type, x values, x dropdown, y type, y values, y dropdown, z ..., draw legend,
    # include lone images, include sub grids, no fixed seeds
    script_args = ["Seed", "1,2", "", "Steps", "2,3", "", "Nothing", "", "", True, True, False, False]
    result = api.txt2img(prompt="a red circle", script_name="x/y/z plot", script_args=script_args, **FAST)
    assert len(result.images) == 5
    grid, cells = result.images[0], result.images[1:]
    assert grid.size[0] > 2 * 64 and grid.size[1] > 2 * 64  # two by two cells and the labels
    infotexts = result.info["infotexts"]
    assert [("Seed: 1" in t, "Steps: 2" in t) for t in infotexts[1:3]] == [(True, True), (False, True)]
    assert all(cell.size == (64, 64) for cell in cells)
    script_args[10] = False  # without "include lone images", A1111 sends the grid alone
    grid_only = api.txt2img(prompt="a red circle", script_name="x/y/z plot", script_args=script_args, **FAST)
    assert len(grid_only.images) == 1 and grid_only.images[0].size == grid.size


def test_an_unknown_script_is_refused_by_name(api: webuiapi.WebUIApi) -> None:
    response = httpx.post(f"{_base(api)}/txt2img", timeout=TIMEOUT,
                          json={"prompt": "x", "script_name": "loopback", "script_args": [], **FAST})  # fmt: skip
    assert response.status_code == 422 and "loopback" in response.text


def test_the_upscaler_lists_match_a1111s_shapes(api: webuiapi.WebUIApi, tmp_path: Path) -> None:
    names = [item["name"] for item in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    modes = [item["name"] for item in api.get_latent_upscale_modes()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes
    scripts = httpx.get(f"{_base(api)}/scripts", timeout=TIMEOUT).json()
    assert "x/y/z plot" in scripts["txt2img"]
    assert json.loads(json.dumps(api.get_embeddings())) == {"loaded": {}, "skipped": {}}


def test_lora_tags_over_rest_and_unknown_names_are_a_422(api: webuiapi.WebUIApi, models: Path) -> None:
    unknown = httpx.post(f"{_base(api)}/txt2img", timeout=TIMEOUT, json={"prompt": "x <lora:ink:0.8>", **FAST})
    assert unknown.status_code == 422 and "ink" in unknown.text and "no LoRA files" in unknown.text
    folder = models / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    # A UNet of the demo's shape, from a manager of this test's own (the shared engine's may be unloaded).
    demo = PipelineManager(EngineSettings(models_dir=models / "own", outputs_dir=models / "own")).get("builtin:demo")
    write_peft_lora(demo.pipe.unet, folder / "ink.safetensors")
    assert [item["name"] for item in api.get_loras()] == ["ink"]
    plain = api.txt2img(prompt="a green triangle", **FAST)
    inked = api.txt2img(prompt="a green triangle <lora:ink:1>", **FAST)
    assert np.abs(_rgb(inked.image) - _rgb(plain.image)).mean() > 0.5
    assert 'Lora hashes: "ink: ' in inked.info["infotexts"][0]
    after = api.txt2img(prompt="a green triangle", **FAST)
    assert np.array_equal(_rgb(after.image), _rgb(plain.image))
