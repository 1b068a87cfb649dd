"""The prompt list in a real browser: two lines typed into the Text to Image tab's list, one Run,
two pictures in the tab's results, each drawn from its own line."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from conftest import ARTIFACTS
from PIL import Image

RESULTS = "#txt2img-results img[src*='gradio_api/file=']"

pytestmark = pytest.mark.browser


def _red_minus_blue(page: Any, index: int) -> float:
    """How much redder than blue the foreground of the index-th result is (negative: bluer)."""
    source = page.locator(RESULTS).nth(index).get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    pixels = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    foreground = pixels[np.abs(pixels - np.median(border, axis=0)).sum(axis=2) > 90]
    red, _, blue = np.median(foreground, axis=0)
    return float(red - blue)


def test_two_typed_lines_give_two_pictures(browser: Any, studio_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(studio_url)
        page.wait_for_selector("#txt2img-generate", timeout=60_000)
        page.get_by_text("Prompts from a list / dataset").click()
        page.locator("#batch-lines textarea").fill("a red circle --seed 3\n--prompt 'a blue square' --seed 4")
        page.locator("#batch-run").click()
        page.locator("#txt2img-status").get_by_text("Done: 2 of 2 pictures").wait_for(timeout=90_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "batch-01-list.png"), full_page=True)
        assert page.locator(RESULTS).count() == 2
        assert _red_minus_blue(page, 0) > 60 and _red_minus_blue(page, 1) < -60  # each line drew its own prompt
        infotext = page.locator("#txt2img-infotext textarea").input_value()
        assert infotext.startswith("a red circle\n") and "Seed: 3," in infotext
    finally:
        page.close()
