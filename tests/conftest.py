"""Shared fixtures: one engine on the built-in demo model, reused across tests for speed."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Tests talk to 127.0.0.1 only: no usage reports from Gradio or the hub client.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: one torch thread each, or their thread pools fight
    # (set before torch is imported, below).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipelines.engine import Engine
from pipelines.settings import EngineSettings


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def engine(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    outputs = tmp_path_factory.mktemp("outputs")
    engine = Engine(EngineSettings(models_dir=models_dir, outputs_dir=outputs, default_model="builtin:demo"))
    engine.load()
    return engine


@pytest.fixture
def square_scene() -> tuple[Image.Image, Image.Image]:
    """A red picture with a blue square, and a mask covering the square's centre (white = redraw)."""
    picture = Image.new("RGB", (128, 128), (200, 30, 30))
    ImageDraw.Draw(picture).rectangle([32, 32, 96, 96], fill=(20, 40, 220))
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle([48, 48, 80, 80], fill=255)
    return picture, mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


class WarningRecords(logging.Handler):
    """Collects the warnings (and worse) a server logs, for tests that read what it said."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def serve_studio(tmp: Path, *flags: str) -> tuple[Any, str]:
    """A real Atelier server on 127.0.0.1 with its folders under ``tmp``: (the app, its URL)."""
    import launch

    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"),
         "--models-dir", str(tmp / "models"), *flags]
    )  # fmt: skip
    return launch.serve(args, prevent_thread_lock=True), f"http://127.0.0.1:{port}/"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")  # not longer: Playwright's sync API holds an event loop while it lives
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright. Without it the browser tests skip and say how to get
    it; in CI (``CI=true``, where ``.ci/run`` installs it) they fail instead."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium not found at {CHROMIUM}: install it with 'sudo apt-get install chromium'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


def tiny_sdxl_around(unet: Any) -> Any:
    """An SDXL pipeline on ``unet`` with a tiny random autoencoder and two tiny text encoders (seeded
    by the caller: built in this order after its ``torch.manual_seed``)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines import loading

    text = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        projection_dim=32, hidden_act="gelu",
    )  # fmt: skip
    tokenizer = loading.clip_tokenizer()
    with loading.building_modules():  # a server's engine may be loading a model on its own thread
        vae = AutoencoderKL(
            block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=16,
        )  # fmt: skip
        text_encoders = CLIPTextModel(text), CLIPTextModelWithProjection(text)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )  # fmt: skip


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # screenshots of the browser tests' runs


def shot(page: Any, name: str) -> None:
    """A full-page screenshot in test-artifacts/, to look at the page the way a user does."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def set_slider(page: Any, elem_id: str, value: float) -> None:
    """Types ``value`` into a slider's number box as a user would, and waits until the slider holds it.

    The box shows the number at once, but the slider takes it in a frame or more later (its track moves
    then), and a slider that has just been shown (an accordion opened) can still be set back to its start
    while it mounts: on a busy CPU a click straight after the typing sent the old value (CI saw Extend
    canvas get 0, twice). So the typing is repeated until the track shows it and the box still does."""
    box = page.locator(f"#{elem_id} input[type=number]")
    track = page.locator(f"#{elem_id} input[type=range]")
    _type_until_held(page, f"slider {elem_id}", box, [box, track], f"{value:g}")


def set_number(page: Any, elem_id: str, value: float) -> None:
    """Types ``value`` into a number box and waits until it keeps it: a box shown just before (a tab or
    an accordion opened) is set back to its start value while it mounts; a sample interval typed
    straight after the click was lost 1 time in 6 on a busy CPU."""
    box = page.locator(f"#{elem_id} input")
    _type_until_held(page, f"number box {elem_id}", box, [box], f"{value:g}")


def set_text(page: Any, elem_id: str, text: str) -> None:
    """Types ``text`` into a text box and waits until it keeps it (see ``set_number``)."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    _type_until_held(page, f"text box {elem_id}", box, [box], text, enter=False)


def _type_until_held(page: Any, what: str, box: Any, shows: list[Any], text: str, *, enter: bool = True) -> None:
    """Type ``text`` into ``box`` until every one of ``shows`` holds it, twice 300 ms apart (20 s at most)."""

    def holds() -> bool:
        return all(shown.input_value() == text for shown in shows)

    deadline = time.monotonic() + 20
    while True:
        box.fill(text)
        if enter:
            box.press("Enter")
        for _ in range(10):  # about 2 s for the widget to take it
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            if holds():
                page.wait_for_timeout(300)
                if holds():
                    return
            page.wait_for_timeout(200)
        seen = ", ".join(repr(shown.input_value()) for shown in shows)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} does not take {text!r}: it shows {seen}")
        logging.getLogger(__name__).warning("%s: typed %r, it shows %s; typing it again", what, text, seen)


def _drawn_extent(page: Any) -> tuple[float, float]:
    """The (width, height) on screen of the picture the editor draws: the box of its blue pixels."""
    shot = Image.open(io.BytesIO(page.locator("#inpaint-editor canvas").first.screenshot())).convert("RGB")
    pixels = np.asarray(shot, dtype=np.int16)
    blueish = (pixels[..., 2] - pixels[..., 0]) > 30  # the picture and its fill are blue; the editor is grey/white
    rows, cols = np.flatnonzero(blueish.any(axis=1)), np.flatnonzero(blueish.any(axis=0))
    return float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)


def editor_extent(page: Any, ratio: float) -> tuple[float, float]:
    """The Inpaint editor's picture extent (a blue picture's, in screen pixels) once its width/height is
    ``ratio``, or after 20 s whatever it is: the editor draws a picture some time after it arrives,
    seconds on a busy CPU."""
    deadline = time.monotonic() + 20
    while True:
        try:
            extent = _drawn_extent(page)
        except IndexError:  # nothing drawn yet
            extent = (0.0, 1.0)
        if extent[0] / extent[1] == pytest.approx(ratio, rel=0.1) or time.monotonic() > deadline:
            return extent
        page.wait_for_timeout(250)


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Atelier server of the module's own (fresh folders), for browser tests: its URL."""
    app, url = serve_studio(tmp_path_factory.mktemp("studio"))
    yield url
    app.close()
