"""The optional safety check: a tiny checker built by the tests flags red pictures; flagged pictures
are blurred until unreadable; the model loads on first use; the server's mode wins over requests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pixels
from PIL import Image
from tiny_safety import build_checker

from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.requests import Txt2Img
from pipelines.scenes import COLOURS, Scene, analyse, render
from pipelines.standards.safety import (
    FOLDER_NAME,
    HUB_ID,
    REQUIRED_NOTE,
    SafetyChecker,
    SafetyMode,
    blur,
    effective,
    flagged_note,
    missing_help,
)


@pytest.fixture(scope="module")
def models_with_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("safety-models")
    build_checker(models / FOLDER_NAME, COLOURS["red"])
    return models


@pytest.fixture(scope="module")
def checker(models_with_checker: Path) -> SafetyChecker:
    found = SafetyChecker.find(models_with_checker)
    assert found is not None
    return found


def shape(colour: str, thing: str = "square", size: str = "big", place: str = "centre") -> Image.Image:
    return render(Scene(thing, colour, place, size, "white"))


def std(image: Image.Image) -> float:
    return float(pixels(image).std())


def test_find_is_fast_and_loads_the_model_on_first_check(models_with_checker: Path) -> None:
    started = time.perf_counter()
    checker = SafetyChecker.find(models_with_checker)
    assert time.perf_counter() - started < 0.05
    assert checker is not None and not checker.loaded
    assert checker.check([shape("red")]) == [True]
    assert checker.loaded


def test_flags_a_red_shape_on_white_and_no_other_colour(checker: SafetyChecker) -> None:
    others = [name for name in COLOURS if name != "red"]
    flags = checker.check([shape("red"), shape("red", "star", "small", "left"), *(shape(name) for name in others)])
    assert flags[:2] == [True, True]
    assert flags[2:] == [False] * len(others), dict(zip(others, flags[2:], strict=True))
    # A large picture is reduced by the checker's own preprocessor: same verdicts.
    assert checker.check([shape("red").resize((512, 512)), shape("blue").resize((512, 512))]) == [True, False]


def test_flags_a_picture_the_demo_engine_made(engine: Engine, checker: SafetyChecker) -> None:
    red = engine.generate(Txt2Img(prompt="a red circle", seed=2, steps=4, width=64, height=64)).images[0]
    blue = engine.generate(Txt2Img(prompt="a blue square", seed=1, steps=4, width=64, height=64)).images[0]
    assert (analyse(red).colour, analyse(blue).colour) == ("red", "blue")  # the pictures are what they say
    screened = checker.screen([red, blue])
    assert screened.flagged == [True, False]
    assert screened.images[1] is blue and screened.originals == {0: red}
    assert np.array_equal(np.asarray(screened.images[0]), np.asarray(blur(red)))
    assert screened.note == "The safety check flagged picture 1 of 2: it is blurred."


def test_blur_makes_a_flagged_picture_unreadable_at_the_same_size() -> None:
    for picture in (shape("red", "star", "big", "left"), shape("red", "square", "medium", "top")):
        before = analyse(picture)
        blurred = blur(picture)
        assert blurred.size == picture.size
        assert std(blurred) < 0.6 * std(picture)
        after = analyse(blurred)
        assert (after.colour, after.shape) != (before.colour, before.shape), (before, after)
    wide = shape("red").resize((512, 384))
    blurred = blur(wide)
    assert blurred.size == (512, 384) and std(blurred) < 0.6 * std(wide)
    # Outlines are gone: a red circle and a red square of about the same area, whose edges differ by
    # whole pixels of red against white, blur to pictures that differ by a few levels at most.
    circle, square = shape("red", "circle"), shape("red", "square")
    assert np.abs(pixels(circle) - pixels(square)).max() > 150
    assert np.abs(pixels(blur(circle)) - pixels(blur(square))).max() < 8
    assert blur(shape("red").convert("RGBA")).mode == "RGBA"


def test_screen_leaves_unflagged_pictures_untouched(checker: SafetyChecker) -> None:
    blue, green = shape("blue"), shape("green", "circle")
    screened = checker.screen([blue, green])
    assert screened.flagged == [False, False] and screened.note is None and screened.originals == {}
    assert screened.images[0] is blue and screened.images[1] is green
    assert checker.check([]) == []


def test_missing_folder_gives_none_and_help_says_where_and_what(tmp_path: Path) -> None:
    assert SafetyChecker.find(tmp_path) is None
    text = missing_help(tmp_path)
    assert str(tmp_path / FOLDER_NAME) in text and HUB_ID in text and "optional" in text
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert name in text
    assert SafetyChecker.missing_help(tmp_path) == text


def test_incomplete_folder_is_a_bad_request_naming_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / FOLDER_NAME
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    checker = SafetyChecker.find(tmp_path)
    assert checker is not None
    with pytest.raises(BadRequest) as caught:
        checker.check([shape("red")])
    message = str(caught.value)
    assert str(folder) in message and "model.safetensors" in message and "preprocessor_config.json" in message
    assert checker.missing() == ["model.safetensors (or pytorch_model.bin)", "preprocessor_config.json"]
    with pytest.raises(BadRequest, match="does not exist"):
        SafetyChecker.load(tmp_path / "nowhere")


def test_weights_in_pytorch_model_bin_load_the_same_checker(models_with_checker: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source, folder = models_with_checker / FOLDER_NAME, tmp_path / FOLDER_NAME
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
    checker = SafetyChecker.load(folder)
    assert checker.loaded
    assert checker.check([shape("red"), shape("blue")]) == [True, False]


def test_two_threads_checking_at_once_get_the_same_flags(models_with_checker: Path) -> None:
    checker = SafetyChecker.find(models_with_checker)
    assert checker is not None and not checker.loaded
    pictures = [shape("red"), shape("blue"), shape("red", "circle", "small", "right"), shape("orange")]
    start = threading.Barrier(2)
    results: list[list[bool]] = []

    def run() -> None:
        start.wait()
        results.append(checker.check(pictures))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [[True, False, True, False]] * 2


def test_safety_mode_parses_known_words_only() -> None:
    assert SafetyMode.parse("off") is SafetyMode.OFF
    assert SafetyMode.parse(" ON ") is SafetyMode.ON
    assert SafetyMode.parse("Required") is SafetyMode.REQUIRED
    assert SafetyMode.parse(SafetyMode.ON) is SafetyMode.ON
    with pytest.raises(BadRequest, match=r"'maybe'.*off, on, required"):
        SafetyMode.parse("maybe")


@pytest.mark.parametrize(
    ("mode", "requested", "expected"),
    [
        ("off", None, (False, None)),
        ("off", True, (True, None)),
        ("off", False, (False, None)),
        ("on", None, (True, None)),
        ("on", True, (True, None)),
        ("on", False, (False, None)),
        ("required", None, (True, None)),
        ("required", True, (True, None)),
        ("required", False, (True, REQUIRED_NOTE)),
    ],
)
def test_effective_setting_for_every_mode(mode: str, requested: bool | None, expected: tuple) -> None:
    assert effective(mode, requested) == expected
    assert effective(SafetyMode(mode), requested) == expected


def test_flagged_note_counts_pictures() -> None:
    assert flagged_note([False, False]) is None
    assert flagged_note([True]) == "The safety check flagged this picture: it is blurred."
    assert flagged_note([True, False, True]) == "The safety check flagged pictures 1, 3 of 3: they are blurred."
