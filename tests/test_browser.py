"""The real page in a real browser: Debian's Chromium driven by Playwright, against a live server.

Screenshots land in ``test-artifacts/`` (look at them: the page must look tidy). Outside CI the
tests skip when Chromium or Playwright is missing; in CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import editor_extent, serve_studio, set_slider, shot
from PIL import Image

from pipelines import scenes
from webui.app import TAB_LABELS

BLUE = (30, 60, 200)

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser: Any, studio_url: str) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(studio_url)
    page.wait_for_selector("#txt2img-generate", timeout=60_000)
    yield page
    page.close()


def _fetch_image(page: Any, selector: str) -> Image.Image:
    source = page.locator(selector).first.get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def test_generate_shows_the_image_and_the_gallery_keeps_it(page: Any) -> None:
    for label in TAB_LABELS:
        assert page.get_by_role("tab", name=label).is_visible(), f"tab {label!r} missing"
    shot(page, "01-text-to-image")
    page.get_by_label("Prompt", exact=True).first.fill("a red star on a cream background")
    page.locator("#txt2img-seed input").fill("7")
    page.locator("#txt2img-generate").click()
    page.locator("#txt2img-status").get_by_text("Done in").wait_for(timeout=60_000)
    result = "#txt2img-results img[src*='gradio_api/file=']"
    shot(page, "02-result")
    shown, panel = page.locator(result).first.bounding_box(), page.locator("#txt2img-results").bounding_box()
    assert panel["y"] <= shown["y"] and shown["y"] + shown["height"] <= panel["y"] + panel["height"], (
        f"the result is cropped: picture {shown}, results panel {panel}"
    )
    image = _fetch_image(page, result)
    assert image.size == (64, 64)  # the demo model's native size
    drawn = scenes.analyse(image)  # the built-in model draws what it is asked
    assert (drawn.colour, drawn.shape) == ("red", "star"), drawn
    assert "a red star on a cream background" in page.locator("#txt2img-infotext textarea").input_value()
    page.get_by_role("tab", name="Gallery").click()
    page.wait_for_selector("#gallery-grid img[src*='gradio_api/file=']", timeout=30_000)
    # Other tests on this server may have saved pictures too (any order): find this one by its prompt.
    search = page.get_by_label("Search prompts")
    search.fill("red star on a cream")
    search.press("Enter")
    page.get_by_text("1 image matching “red star on a cream” · page 1 of 1").wait_for(timeout=10_000)
    shot(page, "03-gallery")


def test_inpaint_stroke_redraws_only_under_the_brush(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    picture = tmp_path / "blue.png"
    Image.new("RGB", (128, 128), BLUE).save(picture)
    page.get_by_role("tab", name="Inpaint").click()
    editor = page.locator("#inpaint-editor")
    # The editor drops a file handed over before its drawing canvas exists (it starts up a second
    # or two after the tab opens; a person is never that quick), so wait for the canvas. Then paint
    # only once the upload has reached the server: a stroke on an empty canvas would paint over a
    # blank background instead of the picture.
    editor.locator("canvas").first.wait_for(state="attached", timeout=30_000)
    with page.expect_response(lambda response: "/upload" in response.url and response.ok, timeout=30_000):
        editor.locator("input[type=file]").first.set_input_files(str(picture))
    # The tab takes the picture's size once the server has seen it; Generate before that drew at 64 px.
    expect(page.locator("#inpaint-width input[type=number]")).to_have_value("128", timeout=30_000)
    editor_extent(page, 1.0)  # drawn: a stroke before that paints over a blank canvas
    editor.get_by_role("button", name="Brush", exact=True).click()
    box = editor.locator("canvas").first.bounding_box()
    middle_y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, middle_y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), middle_y)
    page.mouse.up()
    shot(page, "04-inpaint-stroke")
    page.locator("#inpaint-generate").click()
    page.locator("#inpaint-status").get_by_text("Done in").wait_for(timeout=60_000)
    result = "#inpaint-results img[src*='gradio_api/file=']"
    shot(page, "05-inpaint-result")
    out = np.asarray(_fetch_image(page, result), dtype=np.int16)
    assert out.shape == (128, 128, 3)
    # The stroke crosses the middle rows; with the default mask blur (4 px) rows this far away stay.
    kept = np.concatenate([out[:20], out[108:]])
    assert np.abs(kept - np.array(BLUE)).max() <= 2, "pixels outside the stroke changed colour"
    assert np.abs(out[58:70, 50:78] - np.array(BLUE)).mean() > 10, "nothing was redrawn under the stroke"


def test_picking_a_few_step_sampler_brings_the_cfg_and_steps_it_needs(page: Any) -> None:
    from playwright.sync_api import expect

    page.locator("#txt2img-sampler input").click()
    page.get_by_role("option", name="LCM", exact=True).click()
    expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("1.5", timeout=10_000)
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("4")
    page.locator("#txt2img-sampler input").click()
    page.get_by_role("option", name="Euler a", exact=True).click()
    page.wait_for_timeout(500)  # a sampler without a suggestion leaves the values as they are
    expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("1.5")


def test_a_saved_preset_survives_a_reload_and_restores_every_field(page: Any, studio_url: str) -> None:
    page.get_by_label("Prompt", exact=True).first.fill("a quiet harbour")
    page.locator("#txt2img-seed input").fill("1234")
    set_slider(page, "txt2img-steps", 33)
    page.locator("#txt2img-presets").get_by_text("Styles and negative presets").click()
    page.locator("#txt2img-styles input").click()
    page.get_by_role("option", name="Watercolor").click()
    page.locator("#txt2img-saved-settings").get_by_text("Saved settings").first.click()
    page.locator("#txt2img-preset-name textarea, #txt2img-preset-name input").first.fill("harbour night")
    page.locator("#txt2img-save-preset").click()
    page.get_by_text("Saved “harbour night”.").wait_for(timeout=15_000)
    shot(page, "06-preset-saved")

    page.reload()
    page.wait_for_selector("#txt2img-generate", timeout=60_000)
    assert page.get_by_label("Prompt", exact=True).first.input_value() == ""
    page.locator("#txt2img-saved-settings").get_by_text("Saved settings").first.click()
    page.locator("#txt2img-saved input").click()
    page.get_by_role("option", name="harbour night").click()
    page.locator("#txt2img-load-preset").click()
    page.get_by_text("Loaded “harbour night”.").wait_for(timeout=15_000)
    assert page.get_by_label("Prompt", exact=True).first.input_value() == "a quiet harbour"
    assert page.locator("#txt2img-seed input").input_value() == "1234"
    assert page.locator("#txt2img-steps input[type=number]").input_value() == "33"
    page.locator("#txt2img-presets").get_by_text("Styles and negative presets").click()
    page.locator("#txt2img-final-prompt").get_by_text("watercolor painting of a quiet harbour").wait_for(timeout=10_000)
    shot(page, "07-preset-loaded")


def test_each_key_in_the_prompt_costs_the_server_one_request_at_most(page: Any) -> None:
    # The token counters and the final-prompt preview answer in one request: on a small CPU each
    # request per key press takes time from a live frame.
    typed = "a red star"
    sent: list[str] = []

    def count(request: Any) -> None:
        # Only what the typing sent: the top bar's device line asks on its own every 5 s.
        try:
            values = json.loads(request.post_data or "{}").get("data", []) if request.method == "POST" else []
        except (ValueError, AttributeError):
            return
        if any(isinstance(value, str) and value and typed.startswith(value) for value in values):
            sent.append(request.url)

    page.on("request", count)
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.press_sequentially(typed, delay=120)
    page.locator("#txt2img-prompt-tokens").get_by_text("3/75 tokens").wait_for(timeout=10_000)
    page.wait_for_timeout(500)  # the last key's answer
    assert 1 <= len(sent) <= len(typed), sent


def test_auth_refuses_a_wrong_password_and_accepts_the_right_one(tmp_path: Path) -> None:
    app, url = serve_studio(tmp_path, "--auth", "artist:s3cret")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("config").status_code == 401
            wrong = client.post("login", data={"username": "artist", "password": "nope"})
            assert wrong.status_code == 400
            assert client.get("config").status_code == 401
            right = client.post("login", data={"username": "artist", "password": "s3cret"})
            assert right.status_code == 200
            assert client.get("config").status_code == 200
    finally:
        app.close()
