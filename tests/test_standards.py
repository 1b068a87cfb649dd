"""Content standards at every door of a real server: the AI-source mark in every file written or
returned, blocked terms refused before anything runs (nothing written), the safety check blurring
a flagged colour everywhere and staying on when the owner requires it, the watermark from the
engine, and a C2PA manifest on what the server sends.

The modules themselves are tested in test_xmp, test_blocked_terms, test_safety, test_watermark and
test_c2pa; here they are wired: launch flags, the engine, the page's handlers, REST and Gradio."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import serve_studio
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image
from tiny_safety import build_checker

import launch
from pipelines import scenes
from pipelines.animation.settings import AnimationSettings
from pipelines.batch.job import make_dataset, prompt_list
from pipelines.engine import Engine, Job
from pipelines.errors import BadRequest, SafetyUnavailable
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings
from pipelines.standards import xmp
from pipelines.standards.safety import blur
from presets.store import PresetLibrary, Style
from webui.app import build_studio
from webui.live_route import FRAME_PATH
from webui.state import SettingsStore

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
TERMS = "# the owner's list\nblood bath\ngore*\n"
RED = (220, 30, 35)  # the demo's red (pipelines.scenes)
FAST = {"steps": 4, "width": 64, "height": 64, "seed": 2}


def _exiftool_source_type(path: Path) -> str:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool not found: install it with 'sudo apt-get install libimage-exiftool-perl'")
    done = subprocess.run(["exiftool", "-s3", "-XMP-iptcExt:DigitalSourceType", str(path)],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.strip()


def _b64(data: str) -> bytes:
    return base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data)


def _engine_with_terms(tmp_path: Path) -> Engine:
    """An engine on folders under ``tmp_path`` whose owner blocks ``TERMS``."""
    (tmp_path / "terms.txt").write_text(TERMS, encoding="utf-8")
    return Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                                 blocked_terms=tmp_path / "terms.txt"))  # fmt: skip


def _no_progress(*args: Any, **kwargs: Any) -> None:
    """Stands in for gr.Progress outside a running server."""


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


# -- the mark, in every file from every door -------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("standards")
    (root / "terms.txt").write_text(TERMS, encoding="utf-8")
    PresetLibrary(root / "data").save("style", Style("Grim", "{prompt}, a Blood Bath at dawn"))
    app, url = serve_studio(root, "--api", "--blocked-terms", str(root / "terms.txt"))
    yield url, root / "outputs"
    app.close()


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_saved_files_carry_the_mark_and_keep_the_infotext(tmp_path: Path, image_format: str) -> None:
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    engine.outputs.image_format = image_format
    try:
        result = engine.generate(Txt2Img(prompt="a red circle", **FAST), save=True)
    finally:
        engine.close()
    data = result.paths[0].read_bytes()
    assert xmp.is_ai_marked(data) and b"Atelier" in (xmp.extract(data) or b"")
    assert _exiftool_source_type(result.paths[0]) == TRAINED  # a public reader sees it
    import sd_parsers

    parsed = sd_parsers.ParserManager().parse(result.paths[0])
    assert parsed is not None and "a red circle" in parsed.full_prompt  # the A1111 infotext is untouched


def test_rest_gradio_live_and_gallery_answers_carry_the_mark(server: tuple[str, Path]) -> None:
    url, outputs = server
    with httpx.Client(base_url=url, timeout=180) as http:
        rest = http.post("/sdapi/v1/txt2img", json={"prompt": "a blue square", **FAST, "save_images": True})
        assert rest.status_code == 200, rest.text
        assert xmp.is_ai_marked(_b64(rest.json()["images"][0]))
        live = http.post(FRAME_PATH, json={"key": "m" * 20, "steps": 2, "fields": {"prompt": "a red star", "seed": 1}})
        assert live.status_code == 200 and xmp.is_ai_marked(_b64(live.json()["image"]))
        saved = sorted(outputs.rglob("*.png"))[-1]
        gallery_copy = http.get(f"/gradio_api/file={saved}")  # what the gallery's download gives
        assert gallery_copy.status_code == 200 and xmp.is_ai_marked(gallery_copy.content)
    client = Client(url, verbose=False)
    try:
        answer = client.predict(prompt="a green circle", steps=4, seed=3, save=False, api_name="/txt2img")
        assert xmp.is_ai_marked(_b64(answer["images"][0]))
        frame = client.predict(prompt="a green star", steps=1, api_name="/live")
        assert xmp.is_ai_marked(_b64(frame["image"]))
    finally:
        client.close()


def test_previews_and_unsaved_pictures_in_the_page_carry_the_mark(tmp_path: Path) -> None:
    # Pictures that are no saved file (progress previews, pictures a failed save left in hand) reach
    # the page as files all the same: Gradio writes what a handler gives it to its cache.
    (tmp_path / "blocker").write_text("a file where the outputs folder should be", encoding="utf-8")
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "blocker" / "outputs"))
    studio = build_studio(engine, SettingsStore(tmp_path / "data"), PresetLibrary(tmp_path / "data"))
    try:
        widgets = studio.tabs["txt2img"]
        data = {widget: widget.value for widget in widgets.fields.values()}
        data |= {widgets.presets.styles: [], widgets.presets.negatives: [], studio.top.model: ""}
        asked = {"prompt": "a red circle", **FAST, "steps": 40}  # long enough for the page to show previews
        data |= {widgets.fields[name]: value for name, value in asked.items()}
        updates = list(studio.handlers["txt2img"](data, gr.Request(session_hash="s"), _no_progress))
    finally:
        engine.close()
    galleries = [update[widgets.results] for update in updates if widgets.results in update]
    assert len(galleries) >= 2, "a preview and the finished picture"
    assert "was not saved" in updates[-1][widgets.status]
    shown = [Path(path) for gallery in galleries for path in gallery]
    assert shown and all(isinstance(path, Path) and xmp.is_ai_marked(path.read_bytes()) for path in shown)
    final = Image.open(galleries[-1][0])
    assert "a red circle" in final.info["parameters"]  # the unsaved picture keeps its parameters
    assert scenes.analyse(final.convert("RGB")).colour == "red"


def test_animation_frames_clips_and_datasets_carry_the_mark(tmp_path: Path) -> None:
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    try:
        clip = engine.animate(AnimationSettings(prompts="a red circle", max_frames=2, steps=2, clip_format="gif",
                                                width=64, height=64, fps=4))  # fmt: skip
        made = make_dataset(engine, "circles: a red circle", "marks", 1, Txt2Img(prompt="", steps=2))
    finally:
        engine.close()
    assert clip.clip is not None and xmp.is_ai_marked(clip.clip.read_bytes())
    assert _exiftool_source_type(clip.clip) == TRAINED
    assert clip.paths and all(xmp.is_ai_marked(frame.read_bytes()) for frame in clip.paths)
    pictures = sorted((tmp_path / "outputs" / "datasets").rglob("*.png"))
    assert made.paths or pictures
    assert pictures and all(xmp.is_ai_marked(picture.read_bytes()) for picture in pictures)


# -- blocked terms at every door --------------------------------------------------------------------
def test_rest_refuses_a_blocked_prompt_before_anything_runs(server: tuple[str, Path]) -> None:
    url, outputs = server
    before = _files(outputs)
    with httpx.Client(base_url=url, timeout=120) as http:
        for prompt in ("a BLOOD-bath, red", "(blood:1.3)_Bath", "Ｂｌｏｏｄ bath", "gorefest at noon"):
            answer = http.post("/sdapi/v1/txt2img", json={"prompt": prompt, **FAST, "save_images": True})
            assert answer.status_code == 422, (prompt, answer.text)
            assert "blocked term" in answer.json()["detail"], answer.text
        # A style's {prompt} expansion is checked too, and the negative prompt is not.
        styled = http.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "styles": ["Grim"], **FAST})
        assert styled.status_code == 422 and '"blood bath"' in styled.json()["detail"]
        negative = http.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "negative_prompt": "blood bath",
                                                         **FAST})  # fmt: skip
        assert negative.status_code == 200
        # Words that only contain a term pass: "gore*" is a prefix of words, "bath" alone is no phrase.
        fine = http.post("/sdapi/v1/txt2img", json={"prompt": "a bloody red bath, gory", **FAST})
        assert fine.status_code == 200
    assert _files(outputs) == before  # nothing refused was written (the allowed ones were not saved)


def test_gradio_endpoints_and_scripts_refuse_a_blocked_prompt(server: tuple[str, Path]) -> None:
    url, outputs = server
    before = _files(outputs)
    client = Client(url, verbose=False)
    try:
        with pytest.raises(Exception, match="blocked term"):
            client.predict(prompt="a blood bath", steps=4, api_name="/txt2img")
        with pytest.raises(Exception, match=r"line 2: .*blocked term"):
            client.predict(lines="a red circle\na GORE scene", steps=2, api_name="/prompts_from_list")
        with pytest.raises(Exception, match="blocked term"):
            client.predict(prompt="a blood bath", steps=1, api_name="/live")
    finally:
        client.close()
    assert _files(outputs) == before


def test_the_engine_refuses_every_keyframe_plot_cell_and_list_line(tmp_path: Path) -> None:
    engine = _engine_with_terms(tmp_path)
    try:
        with pytest.raises(BadRequest, match="keyframe 4: the prompt contains a blocked term"):
            engine.animate(AnimationSettings(prompts=json.dumps({"0": "a red circle", "4": "gore"}), max_frames=6))
        with pytest.raises(BadRequest, match="line 1: the prompt contains a blocked term"):
            prompt_list(engine, "blood bath", Txt2Img(prompt="", steps=2))
        from pipelines.xyz.axes import Axis
        from pipelines.xyz.job import PlotSettings, submit_plot

        plot = PlotSettings(Txt2Img(prompt="a red circle", steps=2), Axis("Prompt S/R", "red circle, blood bath"))
        with pytest.raises(BadRequest, match="blocked term"):
            submit_plot(engine, plot, Job())
    finally:
        engine.close()
    assert not _files(tmp_path / "outputs")


def test_the_page_shows_the_refusal_and_settings_add_terms(tmp_path: Path) -> None:
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    studio = build_studio(engine, SettingsStore(tmp_path / "data"), PresetLibrary(tmp_path / "data"))
    try:
        widgets = studio.tabs["txt2img"]
        data = {widget: widget.value for widget in widgets.fields.values()}
        data |= {widgets.fields["prompt"]: "a Seance, red", widgets.presets.styles: [],
                 widgets.presets.negatives: [], studio.top.model: ""}  # fmt: skip
        engine.standards.set_page_terms("séance")  # as the Settings box saves it
        with pytest.raises(gr.Error, match='blocked term \\("séance"\\)'):
            list(studio.handlers["txt2img"](data, gr.Request(session_hash="s"), _no_progress))
        with pytest.raises(BadRequest):
            engine.standards.set_page_terms("!!!")  # a line that could never match: refused, old list kept
        assert engine.standards.blocked.find("a seance") == "séance"
    finally:
        engine.close()
    assert not _files(tmp_path / "outputs")


def test_a_damaged_settings_terms_file_is_shown_to_mend_and_never_emptied(tmp_path: Path) -> None:
    kept = tmp_path / "data" / "blocked-terms.txt"
    kept.parent.mkdir()
    kept.write_text("gore\n***\n", encoding="utf-8")  # "***" could never match: the list is refused
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    try:
        studio = build_studio(engine, SettingsStore(tmp_path / "data"), PresetLibrary(tmp_path / "data"))
        blocks = {getattr(block, "elem_id", None): block for block in studio.app.blocks.values()}
        assert blocks["settings-blocked-terms"].value == "gore\n***\n"  # the owner's text, to mend
        note = blocks["settings-blocked-terms-note"].value
        assert "not in force" in note and "***" in note
        assert len(engine.standards.blocked) == 0
    finally:
        engine.close()
    assert kept.read_text(encoding="utf-8") == "gore\n***\n"


def test_a_bad_terms_file_stops_the_launch_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "terms.txt"
    bad.write_text("fine\n***\n", encoding="utf-8")
    args = launch.parse_args(["--models-dir", str(tmp_path / "m"), "--outputs-dir", str(tmp_path / "o"),
                              "--blocked-terms", str(bad)])  # fmt: skip
    with pytest.raises(SystemExit, match="line 2 of the blocked terms file"):
        launch.build_engine(args)


# -- the safety check ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("safety")
    build_checker(root / "models" / "safety-checker", RED)
    app, url = serve_studio(root, "--api", "--safety-check", "required")
    yield url, root / "outputs"
    app.close()


def test_a_flagged_picture_is_blurred_everywhere_and_required_stays_on(guarded: tuple[str, Path]) -> None:
    url, outputs = guarded
    with httpx.Client(base_url=url, timeout=180) as http:
        red = http.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **FAST, "save_images": True,
                                                   "safety_check": False})  # fmt: skip
        assert red.status_code == 200, red.text
        notes = json.loads(red.json()["info"])["notes"]
        assert any("flagged this picture: it is blurred" in note for note in notes), notes
        assert any("required" in note for note in notes), notes  # the wish to skip it was refused
        sent = Image.open(io.BytesIO(_b64(red.json()["images"][0]))).convert("RGB")
        blue = http.post("/sdapi/v1/txt2img", json={"prompt": "a blue square", **FAST})
        blue_notes = json.loads(blue.json()["info"])["notes"]
    assert not any("flagged" in note for note in blue_notes)
    assert scenes.analyse(sent).colour != "red" and np.asarray(sent).std() < 40  # washed out, edges gone
    saved = sorted(outputs.rglob("*.png"))
    assert len(saved) == 1
    on_disk = np.asarray(Image.open(saved[0]).convert("RGB"))
    assert np.array_equal(on_disk, np.asarray(sent))  # the file is the blurred one too, never the original


def test_the_gradio_endpoints_take_the_callers_wish_unless_the_server_requires_the_check(
    guarded: tuple[str, Path], tmp_path: Path
) -> None:
    def red_over_gradio(url: str, **wish: bool) -> tuple[Image.Image, list[str]]:
        client = Client(url, verbose=False)
        try:
            answer = client.predict(prompt="a red circle", save=False, **FAST, **wish, api_name="/txt2img")
        finally:
            client.close()
        return Image.open(io.BytesIO(_b64(answer["images"][0]))).convert("RGB"), answer["notes"]

    with pytest.raises(AppError, match="safety_check must be true, false or null, got 'no'"):
        red_over_gradio(guarded[0], safety_check="no")  # type: ignore[arg-type]
    required, notes = red_over_gradio(guarded[0], safety_check=False)
    assert scenes.analyse(required).colour != "red", notes  # blurred all the same
    assert any("required" in note for note in notes), notes

    build_checker(tmp_path / "models" / "safety-checker", RED)
    app, url = serve_studio(tmp_path, "--safety-check", "on")
    try:
        checked, checked_notes = red_over_gradio(url)  # no wish: the server's setting
        unchecked, unchecked_notes = red_over_gradio(url, safety_check=False)
    finally:
        app.close()
    assert scenes.analyse(checked).colour != "red"
    assert any("flagged this picture: it is blurred" in note for note in checked_notes), checked_notes
    assert scenes.analyse(unchecked).colour == "red", unchecked_notes
    assert not any("flagged" in note for note in unchecked_notes), unchecked_notes


def test_the_page_can_reveal_a_flagged_picture_to_its_maker(tmp_path: Path) -> None:
    build_checker(tmp_path / "models" / "safety-checker", RED)
    settings = EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", safety_check="on")
    engine = Engine(settings)
    studio = build_studio(engine, SettingsStore(tmp_path / "data"), PresetLibrary(tmp_path / "data"))
    try:
        widgets = studio.tabs["txt2img"]
        data = {widget: widget.value for widget in widgets.fields.values()}
        data |= {widgets.presets.styles: [], widgets.presets.negatives: [], studio.top.model: ""}
        data |= {widgets.fields[name]: value for name, value in ({"prompt": "a red circle"} | FAST).items()}
        last = list(studio.handlers["txt2img"](data, gr.Request(session_hash="s"), _no_progress))[-1]
        assert "flagged this picture: it is blurred" in last[widgets.status]
        assert last[widgets.reveal].visible is True
        entry = last[widgets.session][0]
        shown = Image.open(entry["path"]).convert("RGB")
        assert np.array_equal(np.asarray(shown), np.asarray(blur(entry["hidden"]).convert("RGB")))
        reveal = studio.app.fns  # the reveal handler: shows the original inline, writes no file
        files_before = _files(tmp_path)
        handler = next(fn.fn for fn in reveal.values() if getattr(fn.fn, "__name__", "") == "reveal")
        html = handler(last[widgets.session], 0)
        assert "data:image/png;base64," in html and _files(tmp_path) == files_before
        revealed = _b64(html.split('src="')[1].split('"')[0])
        assert xmp.is_ai_marked(revealed)  # "save image as" on it makes a file: it carries the mark
        assert scenes.analyse(Image.open(io.BytesIO(revealed)).convert("RGB")).colour == "red"

        # A new result of another kind (an X/Y/Z plot) takes the flagged original away, with its button.
        plot = next(fn for fn in studio.app.fns.values() if getattr(fn.fn, "__name__", "") == "run"
                    and any(getattr(block, "elem_id", "") == "xyz-x-values" for block in fn.inputs))  # fmt: skip
        asked = {"xyz-x-values": "3, 4", "xyz-y-values": "2", "txt2img-prompt": "a blue circle"}
        plot_data = {block: asked.get(getattr(block, "elem_id", None) or "", block.value) for block in plot.inputs}
        plot_data |= {widgets.presets.styles: [], widgets.presets.negatives: [], studio.top.model: ""}
        after = list(plot.fn(plot_data, gr.Request(session_hash="s")))[-1]
        assert "X/Y/Z plot of 2 cells" in after[widgets.status]
        assert after[widgets.reveal].visible is False and after[widgets.revealed] == ""
    finally:
        engine.close()


def test_required_without_its_model_refuses_to_draw(tmp_path: Path) -> None:
    settings = EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                              safety_check="required")  # fmt: skip
    engine = Engine(settings)
    try:
        with pytest.raises(SafetyUnavailable, match="safety-checker"):
            engine.generate(Txt2Img(prompt="a red circle", **FAST))
    finally:
        engine.close()


# -- the watermark and C2PA from the engine ------------------------------------------------------------
def test_the_watermark_is_in_every_picture_big_enough(tmp_path: Path) -> None:
    from pipelines.standards import watermark

    settings = EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", watermark="atelr1")
    engine = Engine(settings)
    try:
        small = engine.generate(Txt2Img(prompt="a red circle", **FAST), save=True)
        big = engine.generate(Txt2Img(prompt="a blue circle", steps=2, width=256, height=256, seed=1), save=True)
    finally:
        engine.close()
    assert any("below" in note and "256" in note for note in small.notes), small.notes
    mark = watermark.Watermark.parse("atelr1")
    assert watermark.matches(Image.open(big.paths[0]), mark)
    assert not watermark.matches(Image.open(big.paths[0]), watermark.Watermark.parse("other1"))


def test_c2pa_signs_what_the_server_writes(tmp_path: Path) -> None:
    pytest.importorskip("c2pa", reason="c2pa-python is not installed: pip install -e '.[c2pa]'")
    from c2pa_certs import make_chain

    from pipelines.standards.c2pa_sign import read_manifest

    cert, key = make_chain(tmp_path / "certs")
    settings = EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", c2pa_cert=cert,
                              c2pa_key=key)  # fmt: skip
    engine = Engine(settings)
    try:
        result = engine.generate(Txt2Img(prompt="a red circle", **FAST), save=True)
    finally:
        engine.close()
    data = result.paths[0].read_bytes()
    summary = read_manifest(data, "image/png")
    assert summary is not None and summary["digital_source_type"] == TRAINED
    assert xmp.is_ai_marked(data)  # the XMP mark went in before the manifest sealed the bytes


def test_no_preview_shows_a_picture_before_the_safety_check_saw_it(tmp_path: Path) -> None:
    build_checker(tmp_path / "models" / "safety-checker", RED)
    settings = EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", safety_check="on")
    engine = Engine(settings)
    try:
        checked, unchecked = Job(), Job(safety_check=False)
        engine.generate(Txt2Img(prompt="a red circle", **FAST), checked, preview_every=1)
        engine.generate(Txt2Img(prompt="a red circle", **FAST), unchecked, preview_every=1)
    finally:
        engine.close()
    assert checked.preview is None and unchecked.preview is not None


@pytest.mark.parametrize(
    "prompt", ["(go)(re) at noon", "[go][re]", "go<lora:any:0>re", "go{image:pic}re", "blood BREAK bath"]
)
def test_words_joined_by_syntax_are_read_as_the_model_reads_them(tmp_path: Path, prompt: str) -> None:
    engine = _engine_with_terms(tmp_path)
    try:
        with pytest.raises(BadRequest, match="blocked term"):
            engine.generate(Txt2Img(prompt=prompt, **FAST))
    finally:
        engine.close()


def test_flagged_pictures_are_numbered_across_batches_and_required_keeps_no_original(tmp_path: Path) -> None:
    build_checker(tmp_path / "models" / "safety-checker", RED)
    for mode in ("on", "required"):
        settings = EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / mode, safety_check=mode)
        engine = Engine(settings)
        try:
            result = engine.generate(Txt2Img(prompt="a red circle", batch_count=2, **FAST))
        finally:
            engine.close()
        flagged = [note for note in result.notes if "flagged" in note]
        assert flagged == ["The safety check flagged pictures 1, 2 of 2: they are blurred."], result.notes
        assert set(result.hidden) == ({0, 1} if mode == "on" else set())  # required: nobody may reveal it


def test_training_refuses_a_blocked_sample_prompt_before_it_starts(tmp_path: Path) -> None:
    from pipelines.lora.train import TrainSettings, prepare

    pictures = []
    for index in range(2):
        pictures.append(tmp_path / f"red circle {index}.png")
        scenes.render(scenes.Scene("circle", "red", "centre", "big", "white")).save(pictures[-1])
    engine = _engine_with_terms(tmp_path)
    try:
        with pytest.raises(BadRequest, match="sample prompt: the prompt contains a blocked term"):
            prepare(engine, TrainSettings(name="grim", sample_prompts="a red circle\nGore, red"), pictures)
    finally:
        engine.close()
    assert not (tmp_path / "models" / "Lora").exists()
