"""The Train tab in a real browser: upload pictures, train a few steps, watch the loss plot and the
sample pictures, and get a LoRA the studio lists.

It runs against the real studio once ``webui.app`` builds the Train tab; until then against a small
page with the tab wired the same way.
"""

from __future__ import annotations

import inspect
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from conftest import free_port
from PIL import Image

import launch
import webui.app
from pipelines import scenes
from pipelines.engine import Engine
from pipelines.settings import EngineSettings
from webui.state import JobBoard
from webui.train_tab import build_train_tab

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SAMPLES = "#train-samples img"

pytestmark = pytest.mark.browser


def _small_page(root: Path, port: int) -> Any:
    engine = Engine(EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs"))
    engine.load()  # the predicted size shows for a loaded model
    with gr.Blocks(analytics_enabled=False) as app, gr.Tab("Train"):
        build_train_tab(engine, JobBoard())
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root, port = tmp_path_factory.mktemp("browser-train"), free_port()
    if "build_train_tab" in inspect.getsource(webui.app):  # the studio has the tab: test the real page
        args = launch.parse_args(
            ["--port", str(port), "--outputs-dir", str(root / "outputs"), "--data-dir", str(root / "data"),
             "--models-dir", str(root / "models")]
        )  # fmt: skip
        app = launch.serve(args, prevent_thread_lock=True)
    else:
        app = _small_page(root, port)
    yield f"http://127.0.0.1:{port}/", root / "models" / "Lora"
    app.close()


def _pictures(folder: Path) -> list[Path]:
    """Four orange circles and squares, captioned by their names ("orange circle")."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    paths = []
    for index in range(4):
        shape = ("circle", "square")[index % 2]
        scene = scenes.Scene(shape, "orange", rng.choice(list(scenes.PLACES)), "big", "white")
        path = folder / f"orange {shape} {index}.png"
        scenes.render(scene).save(path)
        paths.append(path)
    return paths


def test_upload_train_and_watch_the_loss_and_the_samples(
    browser: Any, server: tuple[str, Path], tmp_path: Path
) -> None:
    url, lora_folder = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        page.goto(url)
        page.get_by_role("tab", name="Train").first.click(timeout=60_000)  # once the page has its tabs
        page.wait_for_selector("#train-start", timeout=60_000)
        page.locator("#train-files input[type=file]").set_input_files([str(p) for p in _pictures(tmp_path)])
        # The upload reached the server once the page lists the files.
        page.locator("#train-files").get_by_text("orange square 3").first.wait_for(timeout=30_000)
        page.locator("#train-name textarea").fill("browser orange")
        page.locator("#train-name textarea").press("Tab")
        page.locator("#train-size").get_by_text("Predicted file size").wait_for(timeout=10_000)
        page.locator("#train-steps input").fill("6")
        page.locator("#train-seed input").fill("4")
        page.get_by_text("Sample pictures while training").click()
        page.locator("#train-sample-every input").fill("3")
        page.locator("#train-start").click()
        page.locator("#train-status").get_by_text("Done: 6/6 steps").wait_for(timeout=120_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "train-01-done.png"), full_page=True)
        # The loss plot drew its points, and both samples (steps 3 and 6) are shown.
        page.locator("#train-loss svg").first.wait_for(timeout=10_000)
        plot = page.locator("#train-loss").inner_html()
        assert "average of 20" in plot and plot.count("<path") > 4  # the legend, and the lines drawn
        assert page.locator(SAMPLES).count() >= 2
        source = page.locator(SAMPLES).first.get_attribute("src")
        response = page.request.get(source)
        assert response.ok
        sample = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
        assert sample.shape == (64, 64, 3) and sample.std() > 5  # a picture, not a blank
        result = page.locator("#train-result").inner_text()
        assert "<lora:browser orange:0.8>" in result and "browser orange.safetensors" in result
        assert (lora_folder / "browser orange.safetensors").is_file()
    finally:
        page.close()
