"""Outpainting through the real page: upload a picture in the Inpaint tab, grow it to the right,
check the sizes, the editor and the mask it painted, then Generate. Debian's Chromium driven by
Playwright (skips without it, outside CI)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import editor_extent, set_slider, shot
from PIL import Image

BLUE = (30, 60, 200)

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser: Any, studio_url: str) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(studio_url)
    page.wait_for_selector("#txt2img-generate", timeout=60_000)
    yield page
    page.close()


def _slider(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} input[type=number]")


def test_extend_canvas_grows_the_picture_and_generate_fills_it(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    picture = tmp_path / "blue.png"
    Image.new("RGB", (64, 64), BLUE).save(picture)
    page.get_by_role("tab", name="Inpaint").click()
    editor = page.locator("#inpaint-editor")
    editor.locator("canvas").first.wait_for(state="attached", timeout=30_000)  # see test_browser's inpaint test
    with page.expect_response(lambda response: "/upload" in response.url and response.ok, timeout=30_000):
        editor.locator("input[type=file]").first.set_input_files(str(picture))
    expect(_slider(page, "inpaint-width")).to_have_value("64", timeout=30_000)  # the tab took the picture's size
    before = editor_extent(page, 1.0)  # the square picture, drawn

    page.locator("#inpaint-outpaint").get_by_text("Outpainting (extend the canvas)").click()
    set_slider(page, "inpaint-outpaint-right", 64)
    page.locator("#inpaint-extend-canvas").click()
    page.locator("#inpaint-outpaint-note").get_by_text("Canvas now 128×64").wait_for(timeout=15_000)
    assert _slider(page, "inpaint-width").input_value() == "128"
    assert _slider(page, "inpaint-height").input_value() == "64"
    after = editor_extent(page, 2 * before[0] / before[1])
    shot(page, "outpaint-01-extended")
    assert after[0] / after[1] == pytest.approx(2 * before[0] / before[1], rel=0.1), (before, after)

    page.locator("#inpaint-seed input").fill("3")
    set_slider(page, "inpaint-steps", 8)
    page.locator("#inpaint-generate").click()
    page.locator("#inpaint-status").get_by_text("Done in").wait_for(timeout=60_000)
    shot(page, "outpaint-02-result")
    source = page.locator("#inpaint-results img[src*='gradio_api/file=']").first.get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    out = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.int16)
    assert out.shape == (64, 128, 3)
    # Only the mask's band and its feathering (20 px at the tab's blur of 4) touch the original; the
    # rest comes back exactly (the canvas travels to the page as PNG, not the editor's lossy WebP).
    assert np.array_equal(out[:, :40], np.broadcast_to(BLUE, (64, 40, 3))), "the original changed away from the seam"
    assert np.abs(out[:, 72:] - np.array(BLUE)).mean() > 10, "the new area was not redrawn"
