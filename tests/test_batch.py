"""Prompts from a list and dataset mode: the lines' syntax and its errors, a list run on the demo
model as one queued job, the dataset's folder layout and captions, Stop, and the script endpoints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from pipelines.batch import job as batch_job
from pipelines.batch.dataset import METADATA, parse_classes, read_metadata
from pipelines.batch.job import BatchProgress, Picture
from pipelines.batch.prompt_list import MAX_LINES, parse_lines, read_list_file, requests_from
from pipelines.engine import Engine, Job
from pipelines.errors import BadRequest
from pipelines.outputs import read_metadata as image_metadata
from pipelines.requests import Txt2Img

BASE = Txt2Img(steps=2, width=64, height=64, seed=1)


# -- the lines ---------------------------------------------------------------------------------
def test_plain_lines_are_prompts_as_written_and_comments_are_skipped() -> None:
    text = '# my list\n\na red circle\n   \n  a cat\'s "hat", (red:1.2)  \n# the end\n'
    lines = parse_lines(text)
    assert [(line.number, line.fields) for line in lines] == [
        (3, {"prompt": "a red circle"}),
        (5, {"prompt": 'a cat\'s "hat", (red:1.2)'}),  # no option: quotes and apostrophes are the prompt's own
    ]


def test_options_set_fields_by_name_with_quotes_and_a1111_names() -> None:
    line = (
        "--prompt \"a cat, sitting\" --negative_prompt 'blurry, dark' --steps 10 --seed 5 --cfg_scale 7.5 "
        '--sampler_name "Euler a" --width=96 --height 64 --batch_size 2 --n_iter 3 --scheduler Karras'
    )
    (parsed,) = parse_lines(line)
    assert parsed.fields == {
        "prompt": "a cat, sitting", "negative_prompt": "blurry, dark", "steps": 10, "seed": 5, "cfg_scale": 7.5,
        "sampler_name": "Euler a", "width": 96, "height": 64, "batch_size": 2, "batch_count": 3,
        "schedule_type": "Karras",
    }  # fmt: skip
    assert parse_lines("a small blue square --seed 7")[0].fields == {"prompt": "a small blue square", "seed": 7}


def test_lines_override_the_base_request_and_keep_the_rest() -> None:
    base = Txt2Img(prompt="ignored", negative_prompt="grey", steps=2, width=64, height=64, cfg_scale=5.0)
    first, second = requests_from(parse_lines("a red circle\n--prompt x --negative_prompt blue --steps 3"), base)
    assert (first.prompt, first.negative_prompt, first.steps, first.cfg_scale) == ("a red circle", "grey", 2, 5.0)
    assert (second.prompt, second.negative_prompt, second.steps, second.width) == ("x", "blue", 3, 64)


def test_unknown_options_and_broken_quotes_name_their_line() -> None:
    text = "a red circle\n--prompt 'a square --steps 3\n\n--prompt star --restore_faces true\n--steps"
    with pytest.raises(BadRequest) as caught:
        parse_lines(text)
    problems = caught.value.problems
    assert len(problems) == 3, problems  # every bad line at once, nothing about the good one
    assert problems[0].startswith("line 2: No closing quotation")
    assert problems[1].startswith("line 4: unknown option --restore_faces; the options are --prompt")
    assert problems[2] == "line 5: option --steps needs a value"


def test_bad_values_are_caught_by_the_requests_own_check_with_the_line_number() -> None:
    lines = parse_lines("a red circle --steps ten\nfine\n--prompt x --width 10 --cfg_scale 99")
    with pytest.raises(BadRequest) as caught:
        requests_from(lines, BASE)
    assert caught.value.problems == [
        "line 1: steps must be a whole number, got 'ten'",
        "line 3: cfg_scale must be between 0 and 30, got 99.0",
        "line 3: width must be between 64 and 4096, got 10",
    ]


def test_empty_and_too_long_lists_are_refused_with_a_message() -> None:
    with pytest.raises(BadRequest, match="has no prompts"):
        parse_lines("# only a comment\n\n")
    with pytest.raises(BadRequest, match=f"more than {MAX_LINES} prompts"):
        parse_lines("a red circle\n" * (MAX_LINES + 1))
    with pytest.raises(BadRequest, match="the list makes 10400 pictures; the limit is 10000"):
        requests_from(parse_lines("a --batch_size 8 --batch_count 100\n" * 13), BASE)


def test_a_list_file_reads_like_the_textbox(tmp_path: Path) -> None:
    good = tmp_path / "list.txt"
    good.write_bytes('\ufeffa red circle\r\n--prompt "a blue square" --seed 3\r\n'.encode())
    assert [line.fields for line in parse_lines(read_list_file(good))] == [
        {"prompt": "a red circle"}, {"prompt": "a blue square", "seed": 3}
    ]  # fmt: skip
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(BadRequest, match="not UTF-8"):
        read_list_file(latin)
    with pytest.raises(BadRequest, match="larger than 8 bytes"):
        read_list_file(good, limit=8)


def test_dataset_classes_are_named_or_slugged() -> None:
    text = "circle: a red circle\nBig Square : a blue square --steps 3\na green star!\n(red:1.2) triangle\n# x"
    classes = parse_classes(text)
    assert [(c.label, c.caption, c.line.number) for c in classes] == [
        ("circle", "a red circle", 1), ("big_square", "a blue square", 2), ("a_green_star", "a green star!", 3),
        ("red_1_2_triangle", "(red:1.2) triangle", 4),
    ]  # fmt: skip
    assert classes[1].line.fields["steps"] == 3
    with pytest.raises(BadRequest) as caught:
        parse_classes("circle:\nsquare: a square --batch_size 4\nstar: a star --bogus 1")
    starts = ("line 1: class circle has no prompt", "line 2: --batch_size cannot be set per class",
              "line 3: unknown option --bogus;")  # fmt: skip
    assert len(caught.value.problems) == len(starts)
    assert all(problem.startswith(start) for problem, start in zip(caught.value.problems, starts, strict=True))


def test_dataset_settings_are_checked_together(engine: Engine) -> None:
    with pytest.raises(BadRequest) as caught:
        batch_job.dataset_spec(engine, "circle: a red circle --steps 0", "../up", 0, BASE)
    assert "the dataset name must be" in str(caught.value) and "'../up'" in str(caught.value)
    assert "pictures per prompt must be a whole number from 1 to 1000, got 0" in str(caught.value)
    with pytest.raises(BadRequest, match="line 1: steps must be between 1 and"):
        batch_job.dataset_spec(engine, "circle: a red circle --steps 0", "shapes", 2, BASE)


# -- running on the demo model ----------------------------------------------------------------------
def _queued_jobs(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every job the engine queues, by kind: a list must be one job, not one per picture."""
    queued: list[str] = []
    submit_work, submit = engine.submit_work, engine.submit

    def work(*args: Any, **kwargs: Any) -> Any:
        queued.append("work")
        return submit_work(*args, **kwargs)

    def single(*args: Any, **kwargs: Any) -> Any:
        queued.append("request")
        return submit(*args, **kwargs)

    monkeypatch.setattr(engine, "submit_work", work)
    monkeypatch.setattr(engine, "submit", single)
    return queued


def test_a_three_line_list_is_one_job_with_each_lines_fields_in_its_infotext(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = _queued_jobs(engine, monkeypatch)
    text = "a red circle --seed 11\n# skipped\n--prompt 'a blue square' --seed 12 --steps 3\na green star --cfg_scale 5"
    job, tracker = Job(), BatchProgress()
    result = batch_job.submit_prompt_list(engine, text, BASE, job, tracker).result()
    assert queued == ["work"]
    assert (len(result.pictures), result.total, result.stopped, job.state) == (3, 3, False, "done")
    first, second, third = (picture.infotext for picture in result.pictures)
    assert first.startswith("a red circle\n") and "Seed: 11," in first and "Steps: 2," in first
    assert second.startswith("a blue square\n") and "Seed: 12," in second and "Steps: 3," in second
    assert third.startswith("a green star\n") and "CFG scale: 5," in third and "Seed: 1," in third
    for picture in result.pictures:  # saved to the gallery with their own parameters
        assert picture.path is not None and picture.path.parent.parent == engine.outputs.root
        assert image_metadata(picture.path)["parameters"] == picture.infotext
    assert [picture.path for picture in tracker.pictures] == result.paths == job.paths


def test_a_lines_batches_count_their_seeds_on_like_one_run(engine: Engine) -> None:
    base = BASE.replace(steps=1)
    result = batch_job.prompt_list(engine, "a red circle --seed 40 --batch_size 2 --batch_count 2", base)
    assert [picture.seed for picture in result.pictures] == [40, 41, 42, 43]
    whole = engine.generate(base.replace(prompt="a red circle", seed=40, batch_size=2, batch_count=2))
    for picture, image in zip(result.pictures, whole.images, strict=True):
        assert np.array_equal(np.asarray(picture.image), np.asarray(image))


def _foreground_colour(image: Image.Image) -> np.ndarray:
    """The median colour of what stands out from the picture's border (``scenes.analyse``'s rule)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    mask = np.abs(pixels - np.median(border, axis=0)).sum(axis=2) > 90
    assert mask.sum() >= 12, "nothing stands out from the background"
    return np.median(pixels[mask], axis=0)


def _check_layout(folder: Path, rows: list[dict[str, Any]]) -> None:
    """What ``datasets``' imagefolder needs: every picture listed once, by a path relative to the
    metadata's folder, with the same keys in every row; no stray files. Loaded with ``datasets``
    when it is installed."""
    pictures = sorted(str(path.relative_to(folder)) for path in folder.rglob("*.png"))
    assert sorted(row["file_name"] for row in rows) == pictures
    assert all(set(row) == {"file_name", "text", "label", "seed"} for row in rows)
    assert sorted(path.name for path in folder.rglob("*") if path.is_file() and path.suffix != ".png") == [METADATA]
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
        assert sorted(loaded["text"]) == sorted(row["text"] for row in rows)


def test_a_dataset_has_class_folders_captions_and_pictures_that_follow_their_prompts(engine: Engine) -> None:
    base = BASE.replace(steps=8, seed=1)
    result = batch_job.make_dataset(engine, "circle: a red circle\nsquare: a blue square", "shapes", 2, base)
    folder = result.folder
    assert folder is not None and folder == engine.outputs.root / "datasets" / result.name
    rows = read_metadata(folder)
    assert [(row["file_name"], row["text"], row["label"]) for row in rows] == [
        ("circle/00000.png", "a red circle", "circle"), ("circle/00001.png", "a red circle", "circle"),
        ("square/00000.png", "a blue square", "square"), ("square/00001.png", "a blue square", "square"),
    ]  # fmt: skip
    assert [row["seed"] for row in rows] == [1, 2, 3, 4]  # a different seed for every picture
    _check_layout(folder, rows)
    for row in rows:
        with Image.open(folder / row["file_name"]) as image:
            red, _, blue = _foreground_colour(image)
            assert red > blue + 60 if row["label"] == "circle" else blue > red + 60, (row, red, blue)
            text = image_metadata(folder / row["file_name"])["parameters"]
        assert text.startswith(row["text"] + "\n") and f"Seed: {row['seed']}," in text
        assert text.endswith(f", Dataset: {result.name}, Class: {row['label']}")


class _StopAfter(list[Picture]):
    """The progress list of a job that is stopped as its k-th picture is done (as a person would,
    but never late): the job must end with exactly those."""

    def __init__(self, job: Job, count: int) -> None:
        super().__init__()
        self.job, self.limit = job, count

    def append(self, picture: Picture) -> None:
        super().append(picture)
        if len(self) >= self.limit:
            self.job.interrupt()


def test_stop_keeps_a_dataset_of_exactly_the_pictures_made(engine: Engine) -> None:
    job = Job()
    tracker = BatchProgress(pictures=_StopAfter(job, 3))
    spec = batch_job.dataset_spec(engine, "circle: a red circle\nsquare: a blue square", "stopped", 2, BASE)
    result = batch_job.submit_dataset(engine, spec, job, tracker).result()
    assert (result.stopped, len(result.pictures), result.total, job.state) == (True, 3, 4, "interrupted")
    assert result.folder is not None
    rows = read_metadata(result.folder)
    assert [row["file_name"] for row in rows] == ["circle/00000.png", "circle/00001.png", "square/00000.png"]
    _check_layout(result.folder, rows)  # no stray or half-written file either
    assert any("metadata.jsonl lists the 3 made" in note for note in result.notes), result.notes


def test_stop_keeps_the_finished_pictures_of_a_list(engine: Engine) -> None:
    job = Job()
    tracker = BatchProgress(pictures=_StopAfter(job, 1))
    result = batch_job.submit_prompt_list(engine, "a red circle\na blue square\na star", BASE, job, tracker).result()
    assert (result.stopped, len(result.pictures), job.state) == (True, 1, "interrupted")
    assert result.pictures[0].path is not None and result.pictures[0].path.exists()
    assert job.paths == result.paths and "stopped after 1 of 3 pictures" in result.notes[-1]


def test_a_dataset_stopped_before_it_starts_leaves_no_folder(engine: Engine) -> None:
    job = Job()
    job.interrupt()
    result = batch_job.submit_dataset(engine, batch_job.dataset_spec(engine, "a star", "never", 1, BASE), job).result()
    assert (result.stopped, result.pictures, result.folder) == (True, [], None)
    assert not (engine.outputs.root / "datasets" / "never").exists()


def test_an_existing_dataset_is_never_written_into(engine: Engine) -> None:
    existing = engine.outputs.root / "datasets" / "mine"
    (existing / "circle").mkdir(parents=True)
    (existing / "circle" / "00000.png").write_bytes(b"not touched")
    (existing / METADATA).write_text('{"file_name": "circle/00000.png", "text": "old"}\n')
    result = batch_job.make_dataset(engine, "circle: a red circle", "mine", 1, BASE)
    assert result.name == "mine-1" and result.folder == existing.parent / "mine-1"
    assert any("a dataset called mine exists: this one is mine-1" in note for note in result.notes)
    assert (existing / "circle" / "00000.png").read_bytes() == b"not touched"
    assert (existing / METADATA).read_text() == '{"file_name": "circle/00000.png", "text": "old"}\n'
    assert [row["file_name"] for row in read_metadata(existing.parent / "mine-1")] == ["circle/00000.png"]


# -- the script endpoints ---------------------------------------------------------------------------
def test_the_endpoints_make_a_list_and_a_dataset_for_a_script(engine: Engine) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from webui.batch_ui import API_NAMES, register_batch_api

    with gr.Blocks() as app:
        register_batch_api(engine)
    app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        listed = client.predict("a red circle --seed 3\na blue square", steps=2, width=64, api_name=f"/{API_NAMES[0]}")
        assert len(listed["paths"]) == 2 and all(Path(path).exists() for path in listed["paths"])
        assert listed["seeds"][0] == 3 and listed["infotexts"][1].startswith("a blue square\n")
        made = client.predict("dot: a red circle", name="api", per_prompt=2, steps=2, seed=9, api_name="/make_dataset")
        assert (made["files"], made["captions"], made["seeds"]) == (
            ["dot/00000.png", "dot/00001.png"], ["a red circle"] * 2, [9, 10]
        )  # fmt: skip
        assert json.loads(Path(made["metadata"]).read_text().splitlines()[0])["label"] == "dot"
        with pytest.raises(AppError, match="line 2: unknown option --restore_faces"):
            client.predict("a cat\na dog --restore_faces 1", api_name="/prompts_from_list")
    finally:
        app.close()
