"""Prompts from a list, and dataset mode, in the Text to Image tab; and their script endpoints
``/prompts_from_list`` and ``/make_dataset``.

The list's lines override the tab's settings (the chosen styles apply to every line); the whole list
is one job in the engine's queue. Progress shows in the tab's status line, pictures in its results
gallery as they finish, and the tab's Stop ends the list keeping what is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines import samplers
from pipelines.batch.dataset import MAX_PER_PROMPT, read_metadata
from pipelines.batch.job import (
    BatchProgress,
    BatchResult,
    Picture,
    dataset_spec,
    prompt_list,
    submit_dataset,
    submit_prompt_list,
)
from pipelines.batch.job import make_dataset as run_dataset
from pipelines.batch.prompt_list import option_kinds, read_list_file
from pipelines.engine import Engine, Job
from pipelines.errors import AtelierError
from pipelines.requests import Txt2Img
from presets.store import PresetError, PresetLibrary

from .endpoints import GPU_WAITERS
from .generation import request_from
from .shown import ShownFiles
from .state import JobBoard
from .widgets import GenerationWidgets

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3
MAX_SHOWN = 100  # pictures the results gallery shows (the newest): each update sends them all again
API_NAMES = ("prompts_from_list", "make_dataset")
HELP = (
    "One prompt per line; `#` starts a comment. A line may set any of the tab's settings by name, as in "
    'A1111\'s *prompts from file*: `--prompt "a cat" --negative_prompt "blurry" --steps 10 --seed 5` '
    "(or `a cat --seed 5`). Lines override the tab's settings; the chosen styles apply to every line.  \n"
    "**Dataset mode**: lines are `class_name: prompt` (no name: a slug of the prompt); every prompt gets N "
    "pictures with different seeds in `outputs/datasets/<name>/<class>/`, captioned in `metadata.jsonl` "
    "(the layout of diffusers' training scripts and `datasets`' *imagefolder*)."
)
EXAMPLE = 'a red circle\n--prompt "a blue square on the left" --seed 5 --steps 10'


@dataclass
class BatchControls:
    lines: gr.Textbox
    upload: gr.File
    dataset: gr.Checkbox
    name: gr.Textbox
    per_prompt: gr.Number
    run: gr.Button


def build_batch_controls(engine: Engine, widgets: GenerationWidgets) -> BatchControls:
    """Built inside the tab, below its columns; returns what ``wire_batch`` needs."""
    with gr.Accordion("Prompts from a list / dataset", open=False, elem_id="batch-panel"):
        gr.Markdown(HELP)
        with gr.Row(equal_height=False):
            lines = gr.Textbox(
                label="Prompts, one per line", lines=6, max_lines=20, placeholder=EXAMPLE, scale=3,
                elem_id="batch-lines",
            )  # fmt: skip
            upload = gr.File(
                label="Or a text file (.txt)", file_types=[".txt"], type="filepath", scale=1, elem_id="batch-file"
            )
        with gr.Row(equal_height=True):
            dataset = gr.Checkbox(False, label="Dataset mode", elem_id="batch-dataset")
            name = gr.Textbox("dataset", label="Dataset name", max_lines=1, interactive=True, elem_id="batch-name")
            per_prompt = gr.Number(
                4, label="Pictures per prompt", precision=0, minimum=1, maximum=MAX_PER_PROMPT,
                elem_id="batch-per-prompt",
            )  # fmt: skip
            run = gr.Button("Run list", variant="primary", elem_id="batch-run")
    return BatchControls(lines, upload, dataset, name, per_prompt, run)


def wire_batch(
    engine: Engine, library: PresetLibrary, jobs: JobBoard, widgets: GenerationWidgets, controls: BatchControls,
    model_picker: gr.Dropdown,
) -> None:  # fmt: skip
    """Connects the list's Run to the engine; Stop is the tab's own."""
    outputs = widgets.result_outputs

    def run(data: dict[Any, Any], request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[Any]:
        values = {name: data[widget] for name, widget in widgets.fields.items()}
        styles, negatives = data[widgets.presets.styles] or [], data[widgets.presets.negatives] or []

        def style(line: Txt2Img) -> Txt2Img:
            prompt, negative = library.compose(line.prompt, line.negative_prompt, styles, negatives)
            return line.replace(prompt=prompt, negative_prompt=negative)

        session = request.session_hash or "anonymous"
        job, tracker = jobs.start(session), BatchProgress()
        try:
            base = request_from(widgets.mode, values | {"model": data[model_picker] or ""})
            future = _submit(engine, data, controls, base, style, job, tracker)
        except (AtelierError, PresetError, TypeError) as exc:
            jobs.finish(session, job)
            raise gr.Error(str(exc)) from exc
        try:
            yield from _stream(engine, job, tracker, future, widgets, progress)
        finally:
            job.interrupt() if job.state in ("queued", "running") else None  # the browser went away
            jobs.finish(session, job)

    inputs: set[Any] = {model_picker, widgets.presets.styles, widgets.presets.negatives, *widgets.fields.values()}
    inputs |= {controls.lines, controls.dataset, controls.name, controls.per_prompt}
    controls.run.click(
        run, inputs=inputs, outputs=outputs, concurrency_limit=GPU_WAITERS, concurrency_id="gpu",
        api_visibility="private", show_progress="minimal",
    )  # fmt: skip

    def uploaded(path: str | None) -> Any:
        if not path:
            return gr.skip()
        try:
            return read_list_file(path)
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc

    controls.upload.upload(uploaded, controls.upload, controls.lines, queue=False)


def _submit(
    engine: Engine, data: dict[Any, Any], controls: BatchControls, base: Txt2Img,
    style: Callable[[Txt2Img], Txt2Img], job: Job, tracker: BatchProgress,
) -> Future[BatchResult]:  # fmt: skip
    """The list, or the dataset, queued as one job; bad lines raise here with their numbers."""
    text = data[controls.lines] or ""
    if not data[controls.dataset]:
        return submit_prompt_list(engine, text, base, job, tracker, style)
    per_prompt = data[controls.per_prompt]
    per_prompt = int(per_prompt) if isinstance(per_prompt, float) and per_prompt.is_integer() else per_prompt
    spec = dataset_spec(engine, text, (data[controls.name] or "").strip(), per_prompt, base, style)
    return submit_dataset(engine, spec, job, tracker)


def _stream(
    engine: Engine, job: Job, tracker: BatchProgress, future: Future[BatchResult], widgets: GenerationWidgets,
    progress: gr.Progress,
) -> Iterator[dict[Any, Any]]:  # fmt: skip
    """The job's overall progress (picture k of n, and the steps of the one being drawn) until it ends."""
    shown, started, files = -1, 0.0, ShownFiles(engine.outputs.finish)
    while not future.done():
        wait([future], timeout=POLL_SECONDS)
        if job.state == "queued" and not started:
            yield {widgets.status: _waiting_text(engine, job)}
            continue
        started = started or time.perf_counter()
        done, total = tracker.done, max(tracker.total, 1)
        progress((done, total), desc=f"Picture {min(done + 1, total)}/{total}")
        update: dict[Any, Any] = {widgets.status: _status(job, tracker, time.perf_counter() - started)}
        if done != shown:  # unchanged pictures are not sent again: each send re-encodes them
            shown = done
            update |= _pictures_update(list(tracker.pictures), widgets, files)
        yield update
    error = future.exception()
    if isinstance(error, AtelierError):
        raise gr.Error(str(error))
    if error is not None:
        log.error("prompt list failed", exc_info=error)
        raise gr.Error(f"The list failed ({type(error).__name__}: {error}). Details are in the server log.")
    result = future.result()
    yield _pictures_update(result.pictures, widgets, files) | {widgets.status: _summary(result)}


def _pictures_update(pictures: list[Picture], widgets: GenerationWidgets, files: ShownFiles) -> dict[Any, Any]:
    """The newest pictures in the results gallery, and the tab's result entries that match them (so
    selecting, reusing a seed and "reuse all parameters" work on a list's pictures too)."""
    pictures = pictures[-MAX_SHOWN:]
    entries = [
        {"path": str(p.path) if p.path else None, "seed": p.seed, "infotext": p.infotext, "fields": p.fields}
        for p in pictures
    ]
    shown = files([p.path or p.image for p in pictures], [p.infotext for p in pictures])
    return {
        widgets.results: shown, widgets.session: entries, widgets.selected: 0,
        widgets.infotext: pictures[0].infotext if pictures else "",
    } | widgets.no_reveal()  # fmt: skip


def _status(job: Job, tracker: BatchProgress, elapsed: float) -> str:
    done, total = tracker.done, max(tracker.total, 1)
    step = f" · step {job.step}/{job.total}" if job.state == "running" and job.total else ""
    left = f" · about {elapsed / done * (total - done):.0f}s left" if done else ""
    return f"Picture {min(done + 1, total)}/{total}{step} · {elapsed:.1f}s{left} · {tracker.current[:120]}"


def _summary(result: BatchResult) -> str:
    made = f"{len(result.pictures)} of {result.total} pictures in {result.seconds:.1f}s"
    where = f" · dataset **{result.name}**: `{result.folder}`" if result.folder is not None else ""
    hidden = f" · the newest {MAX_SHOWN} are shown" if len(result.pictures) > MAX_SHOWN else ""
    notes = "\n\n" + "\n".join(f"- {note}" for note in result.notes) if result.notes else ""
    return f"{'Stopped' if result.stopped else 'Done'}: {made}{where}{hidden}{notes}"


def _waiting_text(engine: Engine, job: Job) -> str:
    ahead = engine.queue_position(job)
    if ahead <= 0:
        return f"Loading the model {engine.loading_model}…" if engine.loading_model else "Waiting for the GPU…"
    return f"Waiting for the GPU: {ahead} job{'s' if ahead > 1 else ''} ahead of yours."


def register_batch_api(engine: Engine) -> dict[str, Callable[..., dict[str, Any]]]:
    """``/prompts_from_list`` and ``/make_dataset`` for scripts (call inside the page's Blocks); their
    names are in ``API_NAMES``. Returns the two functions by name, for tests."""

    def prompts_from_list(
        lines: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
        sampler_name: str = samplers.DEFAULT_SAMPLER, schedule_type: str = samplers.DEFAULT_SCHEDULE,
        width: int = 0, height: int = 0, seed: int = -1, batch_size: int = 1, batch_count: int = 1, clip_skip: int = 1,
        model: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """One prompt per line; a line may set settings by name (--prompt "a cat" --steps 10 --seed 5), over
        the settings given here. The pictures are saved to the gallery. Returns {"paths" (on the server),
        "infotexts", "seeds", "notes", "stopped"}."""
        settings = {key: value for key, value in locals().items() if key not in ("lines", "engine")}
        try:
            result = prompt_list(engine, lines, _base(settings))
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        return {
            "paths": [str(p.path) if p.path else "" for p in result.pictures],
            "infotexts": [p.infotext for p in result.pictures], "seeds": [p.seed for p in result.pictures],
            "notes": result.notes, "stopped": result.stopped,
        }  # fmt: skip

    def make_dataset(
        classes: str, name: str = "dataset", per_prompt: int = 4, steps: int = 20, width: int = 0, height: int = 0,
        seed: int = -1, negative_prompt: str = "", cfg_scale: float = 7.0, sampler_name: str = samplers.DEFAULT_SAMPLER,
        batch_size: int = 1, model: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """A dataset for training: lines "class_name: prompt", per_prompt pictures of each with different seeds
        (counting on from seed), in outputs/datasets/<name>/<class>/<nnnnn>.png with metadata.jsonl
        ({"file_name", "text", "label", "seed"} per picture). An existing name is never written into: the
        next free "<name>-1" is used. Returns {"folder", "name", "metadata", "files", "captions", "seeds",
        "notes", "stopped"}."""
        settings = {key: value for key, value in locals().items() if key not in ("classes", "name", "per_prompt")}
        settings.pop("engine", None)
        try:
            result = run_dataset(engine, classes, str(name).strip(), _whole(per_prompt), _base(settings))
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        rows = read_metadata(result.folder) if result.folder is not None else []
        return {
            "folder": str(result.folder or ""), "name": result.name, "metadata": str(result.metadata or ""),
            "files": [row["file_name"] for row in rows], "captions": [row["text"] for row in rows],
            "seeds": [row["seed"] for row in rows], "notes": result.notes, "stopped": result.stopped,
        }  # fmt: skip

    for function in (prompts_from_list, make_dataset):
        gr.api(function, api_name=function.__name__, concurrency_limit=GPU_WAITERS, concurrency_id="gpu")
    return {"prompts_from_list": prompts_from_list, "make_dataset": make_dataset}


def _base(settings: dict[str, Any]) -> Txt2Img:
    """An endpoint's settings as a request: whole-number fields sent as 4.0 become 4; the request's
    own check names any other bad value."""
    kinds = option_kinds()
    return Txt2Img(**{key: _whole(value) if kinds[key] == "int" else value for key, value in settings.items()})


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value
