"""A reference image through the real page: upload it in the Text to Image tab's Reference image
controls, generate, and read the note and the parameters; then send a gallery picture to the
reference, and make a clip in the Animation tab. Debian's Chromium driven by Playwright (skips
without it, outside CI)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ARTIFACTS, set_number, set_slider, set_text
from PIL import Image, ImageDraw

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser: Any, studio_url: str) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(studio_url)
    page.wait_for_selector("#txt2img-generate", timeout=60_000)
    yield page
    page.close()


def _upload(page: Any, widget: str, picture: Path) -> None:
    with page.expect_response(lambda response: "/upload" in response.url and response.ok, timeout=30_000):
        page.locator(f"{widget} input[type=file]").first.set_input_files(str(picture))


def test_an_uploaded_reference_guides_the_picture_and_is_named(page: Any, tmp_path: Path) -> None:
    reference = tmp_path / "blue-circle.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse([12, 12, 52, 52], fill=(30, 60, 220))
    picture.save(reference)
    page.locator("#txt2img-reference").get_by_text("Reference image").first.click()
    _upload(page, "#txt2img-reference-image", reference)
    assert "reference-only" in page.locator("#txt2img-reference").inner_text()  # the modes are explained
    page.get_by_label("Prompt", exact=True).first.fill("a circle, {image}")
    page.locator("#txt2img-seed input").fill("5")
    page.locator("#txt2img-generate").click()
    status = page.locator("#txt2img-status")
    status.get_by_text("Done in").wait_for(timeout=90_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "10-reference.png"), full_page=True)
    assert "reference: tab upload" in status.inner_text()
    parameters = page.locator("#txt2img-infotext textarea").input_value()
    assert parameters.startswith("a circle\n"), parameters  # the tag is not part of what the model read
    assert "Reference: reference-only" in parameters and "Reference hash: " in parameters


def test_a_gallery_picture_can_be_sent_to_the_reference(page: Any) -> None:
    page.get_by_label("Prompt", exact=True).first.fill("a yellow square")
    page.locator("#txt2img-generate").click()
    page.locator("#txt2img-status").get_by_text("Done in").wait_for(timeout=90_000)
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid img[src*='gradio_api/file=']").first.click()
    # The selection reaches the server before Use as reference may be clicked (a slow machine lags).
    from playwright.sync_api import expect

    expect(page.locator("#gallery-parameters textarea")).to_have_value(re.compile("a yellow square"), timeout=15_000)
    page.locator("#gallery-send-reference").click()
    page.locator("#txt2img-reference-image img").first.wait_for(timeout=15_000)
    assert page.get_by_role("tab", name="Text to Image").get_attribute("aria-selected") == "true"


def test_the_animation_tab_makes_a_clip_that_plays(page: Any) -> None:
    page.get_by_role("tab", name="Animation").click()
    set_number(page, "animate-frames", 3)
    set_slider(page, "animate-steps", 4)
    set_text(page, "animate-zoom", "0: (1.0), 2: (1.05+0.01*sin(t))")
    page.locator("#animate-generate").click()
    page.locator("#animate-status").get_by_text("Done: 3 frames").wait_for(timeout=120_000)
    video = page.locator("#animate-clip video")
    video.wait_for(timeout=15_000)
    assert "gradio_api/file=" in (video.get_attribute("src") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "11-animation.png"), full_page=True)
    playable = page.evaluate("document.querySelector('#animate-clip video').canPlayType('video/mp4')")
    assert playable in ("maybe", "probably")
