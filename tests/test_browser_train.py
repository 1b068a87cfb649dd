"""The Train tab in a real browser: upload pictures, train a few steps, watch the loss plot and the
sample pictures, and get a LoRA the studio lists.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import serve_studio, set_number, shot
from PIL import Image

from pipelines import scenes
from pipelines.standards import xmp

SAMPLES = "#train-samples img"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("browser-train")
    app, url = serve_studio(root)
    yield url, root / "models" / "Lora"
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
        set_number(page, "train-steps", 6)
        set_number(page, "train-seed", 4)
        page.get_by_text("Sample pictures while training").click()
        set_number(page, "train-sample-every", 3)
        page.locator("#train-start").click()
        page.locator("#train-status").get_by_text("Done: 6/6 steps").wait_for(timeout=120_000)
        shot(page, "train-01-done")
        # The loss plot drew its points, and both samples (steps 3 and 6) are shown.
        page.locator("#train-loss .mark-line path").first.wait_for(timeout=10_000)
        plot = page.locator("#train-loss").inner_html()
        assert "average of 20" in plot  # the legend
        # Both lines are drawn with a colour: after an empty first table Gradio kept the paths but
        # stroked them with "none", an empty frame that only looked right in the page's HTML.
        strokes = page.locator("#train-loss .mark-line path").evaluate_all(
            "paths => paths.map(p => getComputedStyle(p).stroke)"
        )
        assert len(strokes) == 2 and "none" not in strokes, strokes
        assert page.locator(SAMPLES).count() >= 2
        source = page.locator(SAMPLES).first.get_attribute("src")
        response = page.request.get(source)
        assert response.ok
        assert xmp.is_ai_marked(response.body())  # a sample is a file from the server like any other
        sample = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
        assert sample.shape == (64, 64, 3) and sample.std() > 5  # a picture, not a blank
        result = page.locator("#train-result").inner_text()
        assert "<lora:browser orange:0.8>" in result and "browser orange.safetensors" in result
        assert (lora_folder / "browser orange.safetensors").is_file()
        # The name is taken now, by this very run: said plainly, not as a warning about someone's file.
        page.locator("#train-size").get_by_text("is the LoRA just trained").wait_for(timeout=10_000)
        assert "⚠" not in page.locator("#train-size").inner_text()
    finally:
        page.close()
