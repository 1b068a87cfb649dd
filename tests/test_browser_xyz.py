"""The X/Y/Z plot in a real browser: X and Y values typed into the Text to Image tab's plot, one Run,
the labelled grid first in the tab's results and then every cell, the grid's parameters shown."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from conftest import ARTIFACTS, set_text
from PIL import Image

RESULTS = "#txt2img-results img[src*='gradio_api/file=']"

pytestmark = pytest.mark.browser


def _picture(page: Any, index: int) -> Image.Image:
    source = page.locator(RESULTS).nth(index).get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def test_seed_by_steps_plot_shows_its_grid_then_its_cells(browser: Any, studio_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(studio_url)
        page.wait_for_selector("#txt2img-generate", timeout=60_000)
        page.get_by_label("Prompt", exact=True).first.fill("a yellow triangle")
        page.locator("#xyz-plot").get_by_text("X/Y/Z plot").first.click()
        # X is Seed and Y is Steps unless changed: only their values need typing
        set_text(page, "xyz-x-values", "3, 4")
        set_text(page, "xyz-y-values", "1, 2")
        page.locator("#xyz-run").click()
        page.locator("#txt2img-status").get_by_text("Done: X/Y/Z plot of 4 cells").wait_for(timeout=90_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "xyz-01-plot.png"), full_page=True)
        assert page.locator(RESULTS).count() == 5  # the grid, then the 4 cells
        grid, cell = _picture(page, 0), _picture(page, 1)
        assert cell.size == (64, 64) and grid.width > 128 and grid.height > 128
        legend = np.asarray(grid.convert("L"))[:12]  # the band of X labels above the cells
        assert (legend < 128).sum() > 20, "the grid has no labels above its cells"
        infotext = page.locator("#txt2img-infotext textarea").input_value()
        assert infotext.startswith("a yellow triangle\n") and 'X Type: Seed, X Values: "3, 4"' in infotext
    finally:
        page.close()
