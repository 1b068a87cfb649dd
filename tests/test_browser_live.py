"""Live mode in a real browser: type with Live on, the picture follows and the speed shows.
In Text to Image the page's own script sends the frames (``webui.live_route``) and shows them inline.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import serve_studio, shot
from PIL import Image

from pipelines import scenes

LIVE_IMAGE = "#txt2img-live-image img"
FPS = re.compile(r"(\d+(?:\.\d+)?) fps")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("browser-live")
    app, url = serve_studio(root)
    yield url, root / "outputs"
    app.close()


def _shown(page: Any) -> Image.Image | None:
    source = page.locator(LIVE_IMAGE).first.get_attribute("src")
    if not source:  # no frame yet
        return None
    header, _, data = source.partition(",")
    assert header == "data:image/png;base64", header  # shown inline: no file to write and fetch again
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _settled(page: Any, quiet_seconds: float = 1.5, timeout: float = 60) -> None:
    """Wait until the live picture has not changed for ``quiet_seconds`` (the last change's frame is in)."""
    deadline = time.monotonic() + timeout
    source = page.locator(LIVE_IMAGE).first.get_attribute("src")
    while time.monotonic() < deadline:
        page.wait_for_timeout(quiet_seconds * 1000)
        now = page.locator(LIVE_IMAGE).first.get_attribute("src")
        if now == source:
            return
        source = now
    raise AssertionError("the live picture kept changing after the typing stopped")


def _wait_for_colour(page: Any, colour: str, timeout: float = 60) -> Image.Image:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        image = _shown(page) if page.locator(LIVE_IMAGE).count() else None
        if image is not None:
            seen = scenes.analyse(image).colour
            if seen == colour:
                return image
        page.wait_for_timeout(200)
    shot(page, f"live-failed-{colour}")
    readout = page.locator("#txt2img-live-readout").inner_text()
    raise AssertionError(f"the live picture never turned {colour} (last seen: {seen or 'nothing'}; {readout!r})")


def test_typing_with_live_on_redraws_the_picture_and_shows_the_speed(browser: Any, server: tuple[str, Path]) -> None:
    url, outputs = server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
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
        shot(page, "live-01-typing")
        # Keep saves the frame on show, with its infotext, and the results panel shows it. Blue shows
        # from "a blue c" on: wait for the last frame (the picture stops changing) before keeping.
        _settled(page)
        shown = _shown(page)
        saved_before = set(outputs.rglob("*.png"))
        page.locator("#txt2img-live-keep").click()
        page.get_by_text("Kept the live picture as").first.wait_for(timeout=30_000)
        kept = sorted(set(outputs.rglob("*.png")) - saved_before)
        assert len(kept) == 1, kept
        with Image.open(kept[0]) as file:
            assert file.info["parameters"].startswith("a blue circle\nSteps: 4, Sampler: LCM"), file.info
            assert shown is not None and np.array_equal(np.asarray(file.convert("RGB")), np.asarray(shown))
    finally:
        page.close()
