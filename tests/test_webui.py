"""The page's handlers, called the way Gradio calls them, with the demo model behind them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from conftest import pixels
from PIL import Image, ImageDraw

from pipelines.engine import Engine
from pipelines.outputs import read_metadata
from pipelines.settings import EngineSettings
from presets.store import PresetLibrary
from webui.app import TAB_LABELS, Studio, build_studio
from webui.gallery_tab import show_page
from webui.generation import request_from
from webui.presets_ui import fill_fields
from webui.settings_tab import apply_settings
from webui.state import JobBoard, SettingsStore, UiSettings
from webui.widgets import token_text


def no_progress(*args: Any, **kwargs: Any) -> None:
    """Stands in for gr.Progress outside a running server."""


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Studio:
    root = tmp_path_factory.mktemp("studio")
    engine = Engine(EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs"))
    return build_studio(engine, SettingsStore(root / "data"), PresetLibrary(root / "data"))


def run(studio: Studio, mode: str, session: str = "s1", model: str = "", **values: Any) -> list[dict[Any, Any]]:
    """Call a tab's Generate handler like Gradio does: widget -> value, then drain its updates."""
    widgets = studio.tabs[mode]
    presets = {widgets.presets.styles: values.pop("styles", []), widgets.presets.negatives: values.pop("negatives", [])}
    data = {widget: widget.value for widget in widgets.fields.values()}
    data |= {widgets.fields[name]: value for name, value in values.items()}
    data |= presets | {studio.top.model: model}
    return list(studio.handlers[mode](data, gr.Request(session_hash=session), no_progress))


def test_the_page_has_every_tab_in_order(studio: Studio) -> None:
    labels = [block.label for block in studio.app.blocks.values() if isinstance(block, gr.Tab)]
    assert labels == list(TAB_LABELS)


def test_generate_streams_progress_then_shows_saved_images(studio: Studio) -> None:
    updates = run(studio, "txt2img", prompt="a red circle", steps=12, width=64, height=64, seed=21, batch_size=2)
    widgets = studio.tabs["txt2img"]
    final = updates[-1]
    assert final[widgets.status].startswith("Done in") and "seeds 21, 22" in final[widgets.status]
    paths = [Path(p) for p in final[widgets.results]]
    assert len(paths) == 2 and all(p.is_file() and p.parent.parent == studio.engine.outputs.root for p in paths)
    assert read_metadata(paths[1])["parameters"].startswith("a red circle\nSteps: 12,")
    assert "Seed: 22," in read_metadata(paths[1])["parameters"]
    assert [entry["seed"] for entry in final[widgets.session]] == [21, 22]
    assert final[widgets.infotext].startswith("a red circle\nSteps: 12")


def test_bad_input_is_a_clear_message_and_nothing_runs(studio: Studio) -> None:
    before = studio.engine.outputs.page()[1]
    with pytest.raises(gr.Error, match="steps must be between 1 and 150, got 500"):
        run(studio, "txt2img", steps=500)
    with pytest.raises(gr.Error, match="img2img needs an init image"):
        run(studio, "img2img", prompt="x")
    assert studio.engine.outputs.page()[1] == before


def test_img2img_uses_the_uploaded_image(studio: Studio) -> None:
    picture = Image.new("RGB", (96, 64), (0, 160, 0))
    final = run(studio, "img2img", init_image=picture, width=96, height=64, steps=4, denoising_strength=0.3)[-1]
    result = Image.open(final[studio.tabs["img2img"].results][0])
    assert result.size == (96, 64)
    assert "Denoising strength: 0.3" in final[studio.tabs["img2img"].infotext]


def test_inpaint_with_a_painted_stroke_keeps_the_rest(studio: Studio) -> None:
    background = Image.new("RGB", (128, 128), (30, 60, 200))
    stroke = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(stroke).line([(40, 64), (90, 64)], fill=(255, 255, 255, 255), width=12)
    editor = {"background": background, "layers": [stroke], "composite": background}
    final = run(studio, "inpaint", init_image=editor, mask_blur=2, steps=6, denoising_strength=1.0, seed=3,
                width=128, height=128)[-1]  # fmt: skip
    out = pixels(Image.open(final[studio.tabs["inpaint"].results][0]))
    assert np.array_equal(out[:40], pixels(background)[:40]) and np.array_equal(out[90:], pixels(background)[90:])
    assert np.abs(out[60:68, 45:85] - pixels(background)[60:68, 45:85]).mean() > 10


def test_an_uploaded_mask_wins_over_strokes() -> None:
    background = Image.new("RGB", (64, 64))
    uploaded = Image.new("L", (64, 64), 0)
    uploaded.paste(255, (0, 0, 10, 10))
    request = request_from(
        "inpaint",
        {"init_image": {"background": background, "layers": []}, "mask": uploaded, "only_masked": "Only masked"},
    )
    assert request.mask is uploaded and request.only_masked is True and request.init_image.size == (64, 64)


def test_slider_floats_become_whole_numbers() -> None:
    request = request_from("txt2img", {"steps": 20.0, "width": 512.0, "cfg_scale": 7.0, "seed": -1.0})
    assert (request.steps, request.width, request.seed) == (20, 512, -1) and isinstance(request.steps, int)


def test_stop_ends_only_the_clicking_sessions_job(studio: Studio) -> None:
    saved_before = studio.engine.outputs.page()[1]
    updates: list[dict[Any, Any]] = []
    worker = threading.Thread(
        target=lambda: updates.extend(run(studio, "txt2img", session="alice", steps=150, width=64, height=64))
    )
    worker.start()
    deadline = time.time() + 30
    while not (studio.engine.current_job and studio.engine.current_job.step > 0) and time.time() < deadline:
        time.sleep(0.05)
    assert studio.jobs.stop("bob") is False  # another visitor's Stop finds no job of theirs
    assert studio.jobs.stop("alice") is True
    worker.join(60)
    widgets = studio.tabs["txt2img"]
    assert updates[-1][widgets.status].startswith("Stopped at step")
    assert updates[-1][widgets.results] == []
    assert studio.engine.outputs.page()[1] == saved_before, "a stopped job saved an image"


def test_job_board_keeps_sessions_apart() -> None:
    board = JobBoard()
    alice, bob = board.start("alice"), board.start("bob")
    assert board.stop("alice") and alice.interrupted and not bob.interrupted
    board.finish("alice", alice)
    assert board.stop("alice") is False


def test_job_board_keeps_a_sessions_training_apart_from_its_pictures() -> None:
    board = JobBoard()
    training = board.start("alice", "train")
    picture = board.start("alice")  # a picture started while the LoRA trains
    assert board.stop("alice") and picture.interrupted and not training.interrupted
    assert board.stop("alice", "train") and training.interrupted
    board.finish("alice", picture)
    board.finish("alice", training)  # the wrong kind: the training's entry stays
    assert board.stop("alice", "train")
    board.finish("alice", training, "train")
    assert board.stop("alice", "train") is False


def test_reuse_fills_fields_by_name(studio: Studio) -> None:
    fields = studio.tabs["inpaint"].fields
    wanted = {name: fields[name] for name in ("prompt", "steps", "only_masked", "seed")}
    values = fill_fields(wanted, {"prompt": "a cat", "steps": 33, "only_masked": True, "unknown": 1})
    assert values[:3] == ["a cat", 33, "Only masked"]
    assert isinstance(values[3], type(gr.skip()))  # a field the image does not have stays as it is


def test_gallery_pages_newest_first_and_filters(studio: Studio) -> None:
    run(studio, "txt2img", prompt="zebra stripes", steps=2, width=64, height=64, seed=1)
    run(studio, "txt2img", prompt="a lone lighthouse", steps=2, width=64, height=64, seed=2)
    items, page, summary, paths = show_page(studio.engine, "", 1)
    assert items[0][1] == "a lone lighthouse" and items[1][1] == "zebra stripes" and page == 1
    assert paths == [thumbnail for thumbnail, _ in items] and Path(paths[0]).is_file()
    items, _, summary, _ = show_page(studio.engine, "ZEBRA", 1)
    assert [caption for _, caption in items] == ["zebra stripes"] and summary.startswith("1 image matching")
    _, page, _, _ = show_page(studio.engine, "", 99)
    assert page == 1  # past the last page shows the last page


def test_settings_are_saved_applied_and_survive_damage(tmp_path: Path) -> None:
    engine = Engine(EngineSettings(models_dir=tmp_path / "m", outputs_dir=tmp_path / "o"))
    store = SettingsStore(tmp_path / "data")
    store.save(UiSettings(max_models=2, ram_budget_gb=1.5, image_format="webp", theme="dark"))
    apply_settings(engine, store.load())
    assert engine.settings.max_models == 2 and engine.settings.ram_budget_bytes == int(1.5 * 1024**3)
    assert engine.outputs.image_format == "webp"
    store.path.write_text("{not json")
    assert store.load() == UiSettings()
    store.path.write_text('{"image_format": "gif"}')
    assert store.load() == UiSettings()
    aside = sorted(p.read_text() for p in store.path.parent.glob("settings.damaged-*.json"))
    assert aside == sorted(["{not json", '{"image_format": "gif"}']), "a damaged settings file was lost"


def test_token_counter_counts_chunks_past_the_window(studio: Studio) -> None:
    assert "3/75 tokens" in token_text(studio.engine, "a red circle")
    assert "3/75 tokens" in token_text(studio.engine, "(a:1.3) [red] circle")  # weights syntax costs no tokens
    assert "80/150 tokens, in 2 chunks" in token_text(studio.engine, "red " * 80)
    assert "2/150 tokens, in 2 chunks" in token_text(studio.engine, "red BREAK circle")


def test_png_info_reads_fields_from_a1111_and_atelier_images(studio: Studio) -> None:
    from webui.pnginfo_tab import fields_from_image

    fixtures = Path(__file__).parent / "fixtures" / "images-from-other-tools"
    a1111 = fields_from_image(str(fixtures / "automatic1111_cropped.png"))
    assert (a1111["prompt"], a1111["negative_prompt"], a1111["steps"], a1111["seed"]) == (
        "photo of a duck", "monochrome", 15, 235284042,
    )  # fmt: skip
    assert (a1111["sampler_name"], a1111["width"], a1111["height"]) == ("UniPC", 512, 400)
    assert fields_from_image(str(fixtures / "invokeai_sdmeta1.png")) == {}
    assert fields_from_image(str(fixtures / "empty_file.png")) == {}
    final = run(studio, "txt2img", prompt="lossless, with: punctuation", steps=3, width=64, height=64, seed=9)[-1]
    ours = fields_from_image(final[studio.tabs["txt2img"].results][0])
    assert (ours["prompt"], ours["steps"], ours["seed"], ours["width"]) == ("lossless, with: punctuation", 3, 9, 64)


def _size_handler(studio: Studio, mode: str, event: str) -> Any:
    """The handler the tab's picture widget runs on ``event`` to set width and height."""
    image_widget = studio.tabs[mode].fields["init_image"]
    for dependency in studio.app.fns.values():
        named = getattr(dependency.fn, "__name__", "")
        if (image_widget._id, event) in dependency.targets and named in ("uploaded", "changed"):
            return dependency.fn
    raise AssertionError(f"no {event} handler sets the {mode} tab's size")


def test_the_size_follows_an_uploaded_picture_even_when_the_editor_announces_it_early(studio: Studio) -> None:
    picture = Image.new("RGB", (130, 97), "white")
    editor = {"background": picture, "layers": [], "composite": picture}
    empty = {"background": None, "layers": [], "composite": None}
    uploaded, changed = _size_handler(studio, "inpaint", "upload"), _size_handler(studio, "inpaint", "change")
    assert uploaded(editor, None) == (128, 96, (130, 97))  # on the 8-pixel grid
    assert uploaded(editor, (130, 97)) == (128, 96, (130, 97))  # a new upload always sets the size
    # The editor may send its upload event before its value holds the picture: nothing to follow yet...
    assert uploaded(empty, None)[:2] == (gr.update(), gr.update())
    # ...and the change that brings the picture sets the size instead.
    assert changed(editor, None) == (128, 96, (130, 97))
    # A stroke (the same picture) leaves a size the artist set since.
    stroke = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    assert changed(editor | {"layers": [stroke]}, (130, 97)) == (gr.update(), gr.update(), (130, 97))
    assert _size_handler(studio, "img2img", "upload")(picture, None) == (128, 96, (130, 97))
