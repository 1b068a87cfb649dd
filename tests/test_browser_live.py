"""Live mode in a real browser: type with Live on, the picture follows and the speed shows.

It runs against the real studio once ``webui.app`` builds the live controls; until then against a
small page with the Text to Image tab and live mode wired the same way.
"""

from __future__ import annotations

import inspect
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import free_port
from PIL import Image

import launch
import webui.app
from pipelines import scenes
from pipelines.engine import Engine
from pipelines.settings import EngineSettings
from presets.store import PresetLibrary
from webui.generation import build_txt2img_tab
from webui.live_ui import build_live_controls, wire_live
from webui.state import JobBoard

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LIVE_IMAGE = "#txt2img-live-image img"
FPS = re.compile(r"(\d+(?:\.\d+)?) fps")

pytestmark = pytest.mark.browser


def _small_page(root: Path, port: int) -> Any:
    engine = Engine(EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs"))
    library = PresetLibrary(root / "data")
    with gr.Blocks(analytics_enabled=False) as app:
        model = gr.Dropdown([engine.default_model], value=engine.default_model, label="Model", elem_id="model-picker")
        with gr.Tab("Text to Image"):
            widgets = build_txt2img_tab(engine, library)
            controls = build_live_controls(engine, widgets)
        wire_live(engine, JobBoard(), widgets, controls, model, library)
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root, port = tmp_path_factory.mktemp("browser-live"), free_port()
    if "build_live_controls" in inspect.getsource(webui.app):  # the studio has live mode: test the real page
        args = launch.parse_args(
            ["--port", str(port), "--outputs-dir", str(root / "outputs"), "--data-dir", str(root / "data"),
             "--models-dir", str(root / "models")]
        )  # fmt: skip
        app = launch.serve(args, prevent_thread_lock=True)
    else:
        app = _small_page(root, port)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _shown(page: Any) -> tuple[str, Image.Image]:
    source = page.locator(LIVE_IMAGE).first.get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    return source, Image.open(io.BytesIO(response.body())).convert("RGB")


def _wait_for_colour(page: Any, colour: str, timeout: float = 60) -> Image.Image:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        if page.locator(LIVE_IMAGE).count():
            _, image = _shown(page)
            seen = scenes.analyse(image).colour
            if seen == colour:
                return image
        page.wait_for_timeout(200)
    _shot(page, f"live-failed-{colour}")
    readout = page.locator("#txt2img-live-readout").inner_text()
    raise AssertionError(f"the live picture never turned {colour} (last seen: {seen or 'nothing'}; {readout!r})")


def test_typing_with_live_on_redraws_the_picture_and_shows_the_speed(browser: Any, server: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(server)
        page.wait_for_selector("#txt2img-live-toggle", timeout=60_000)
        page.locator("#txt2img-seed input").fill("3")
        page.locator("#txt2img-live-toggle input[type=checkbox]").check()
        prompt = page.get_by_label("Prompt", exact=True).first
        prompt.press_sequentially("a red star", delay=40)
        red = _wait_for_colour(page, "red")
        readout = page.locator("#txt2img-live-readout")
        assert FPS.search(readout.inner_text()), readout.inner_text()  # the red picture came with its speed
        prompt.fill("")
        prompt.press_sequentially("a blue circle", delay=40)
        blue = _wait_for_colour(page, "blue")
        assert red.size == blue.size == (64, 64)
        text = readout.inner_text()
        match = FPS.search(text)
        assert match and float(match.group(1)) > 0, text
        _shot(page, "live-01-typing")
    finally:
        page.close()
