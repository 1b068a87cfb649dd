"""The three generation tabs and the handler that streams a job's progress to the page."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
from PIL import Image

from pipelines import samplers
from pipelines.engine import Engine, Job, Result
from pipelines.errors import AtelierError, Interrupted
from pipelines.requests import MASKED_CONTENT, RESIZE_MODES, Img2Img, Inpaint, Txt2Img
from presets.store import PresetError, PresetLibrary

from .endpoints import GPU_WAITERS
from .outpaint_ui import build_outpaint_controls, wire_outpaint
from .shown import ShownFiles, data_url
from .state import JobBoard
from .widgets import GenerationWidgets, build_generation_widgets, grid_size

log = logging.getLogger(__name__)

REQUESTS = {"txt2img": Txt2Img, "img2img": Img2Img, "inpaint": Inpaint}
POLL_SECONDS = 0.3
PREVIEW_EVERY = 3
SUGGESTED = ("cfg_scale", "steps", "schedule_type")  # what a few-step sampler or a turbo model sets


def build_txt2img_tab(engine: Engine, library: PresetLibrary) -> GenerationWidgets:
    return build_generation_widgets(engine, library, "txt2img")


def build_img2img_tab(engine: Engine, library: PresetLibrary) -> GenerationWidgets:
    def controls() -> dict[str, Any]:
        image = gr.Image(
            label="Image", type="pil", sources=["upload", "clipboard"], height=320, elem_id="img2img-image"
        )
        strength = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength")
        resize = gr.Radio(list(RESIZE_MODES), value="just resize", label="Resize mode")
        return {"init_image": image, "denoising_strength": strength, "resize_mode": resize}

    widgets = build_generation_widgets(engine, library, "img2img", controls)
    _size_follows_image(widgets)
    return widgets


def build_inpaint_tab(engine: Engine, library: PresetLibrary) -> GenerationWidgets:
    outpaint: list[Any] = []  # the outpainting controls, built beside the editor and wired once the tab exists

    def controls() -> dict[str, Any]:
        editor = gr.ImageEditor(
            label="Image: paint over what to redraw",
            type="pil",
            sources=["upload", "clipboard"],
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
            eraser=gr.Eraser(default_size=24),
            layers=False,
            transforms=(),
            height=420,
            elem_id="inpaint-editor",
        )
        with gr.Accordion("Inpaint options", open=True):
            with gr.Row():
                blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur")
                strength = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength")
            with gr.Row():
                area = gr.Radio(["Whole picture", "Only masked"], value="Whole picture", label="Inpaint area")
                padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels")
            content = gr.Radio(list(MASKED_CONTENT), value="original", label="Masked content")
            resize = gr.Radio(list(RESIZE_MODES), value="just resize", label="Resize mode")
            invert = gr.Checkbox(False, label="Invert mask (redraw what is not painted)")
        with gr.Accordion("Upload a mask instead of painting", open=False):
            mask = gr.Image(label="Mask image (white = redraw)", type="pil", height=200, image_mode="L")
        outpaint.append(build_outpaint_controls(editor))
        return {
            "init_image": editor, "mask": mask, "mask_blur": blur, "denoising_strength": strength,
            "only_masked": area, "only_masked_padding": padding, "masked_content": content, "invert_mask": invert,
            "resize_mode": resize,
        }  # fmt: skip

    widgets = build_generation_widgets(engine, library, "inpaint", controls)
    _size_follows_image(widgets)
    wire_outpaint(outpaint[0], widgets)
    return widgets


def _size_follows_image(widgets: GenerationWidgets) -> None:
    """An uploaded picture sets width/height to its own size (on the 8-pixel grid)."""
    image_widget = widgets.fields["init_image"]
    if not isinstance(image_widget, gr.Image | gr.ImageEditor):
        raise TypeError(f"the init image widget must be an Image or an ImageEditor, got {type(image_widget).__name__}")

    followed = gr.State(None)  # the picture size width/height last followed
    targets = [widgets.fields["width"], widgets.fields["height"], followed]

    def uploaded(value: Any, last: tuple[int, int] | None) -> tuple[Any, Any, Any]:
        image = value.get("background") if isinstance(value, dict) else value
        if not isinstance(image, Image.Image):
            return gr.update(), gr.update(), last
        return (*grid_size(image.size), image.size)

    def changed(value: Any, last: tuple[int, int] | None) -> tuple[Any, Any, Any]:
        image = value.get("background") if isinstance(value, dict) else value
        if not isinstance(image, Image.Image) or image.size == last:  # a stroke, or a size already taken
            return gr.update(), gr.update(), last
        return uploaded(value, last)

    image_widget.upload(uploaded, [image_widget, followed], targets, queue=False, show_progress="hidden")
    if isinstance(image_widget, gr.ImageEditor):
        # On a busy machine the editor can announce an upload before its value holds the picture (the
        # handler then sees no background, measured 1 time in 14); the change that follows has it.
        image_widget.change(changed, [image_widget, followed], targets, queue=False, show_progress="hidden")


def tab_request(
    library: PresetLibrary, widgets: GenerationWidgets, data: dict[Any, Any], model_picker: gr.Dropdown
) -> Txt2Img:
    """The tab's widgets as its request, the chosen styles and negative presets applied (as the
    preview above Generate shows them). ``PresetError``/``BadRequest`` for what is wrong."""
    values = {name: data[widget] for name, widget in widgets.fields.items()}
    values["prompt"], values["negative_prompt"] = library.compose(
        values["prompt"] or "", values["negative_prompt"] or "",
        data[widgets.presets.styles] or [], data[widgets.presets.negatives] or [],
    )  # fmt: skip
    return request_from(widgets.mode, values | {"model": data[model_picker] or ""})


def request_from(mode: str, values: dict[str, Any]) -> Txt2Img:
    """Widget values (by request field name) -> the mode's typed request."""
    cls = REQUESTS[mode]
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if types.get(name) == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif types.get(name) == "str" and value is None:  # an untouched text box
            value = ""
        converted[name] = value
    if mode == "inpaint":
        converted["only_masked"] = values.get("only_masked") == "Only masked"
        converted["init_image"], painted = _editor_images(values.get("init_image"))
        converted["mask"] = values.get("mask") or painted
    return cls(**converted)


def _editor_images(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """Background and painted mask (the union of the strokes' alpha) from an ImageEditor value."""
    if not isinstance(value, dict) or value.get("background") is None:
        return None, None
    background = value["background"].convert("RGB")
    mask = Image.new("L", background.size, 0)
    for layer in value.get("layers") or []:
        if layer is not None:
            alpha = layer.convert("RGBA").getchannel("A").resize(background.size)
            mask.paste(255, (0, 0), alpha.point(lambda a: 255 if a > 0 else 0))
    return background, mask


def wire_generation(
    engine: Engine,
    library: PresetLibrary,
    jobs: JobBoard,
    widgets: GenerationWidgets,
    model_picker: gr.Dropdown,
    device_state: tuple[gr.Markdown, Callable[[], str]],
) -> Callable[..., Iterator[dict[Any, Any]]]:
    """Connect Generate and Stop of one tab; every tab shares the single GPU slot. ``device_state`` is
    the top bar's status and what it shows, brought up to date the moment a job ends."""
    outputs = widgets.result_outputs

    def run(
        data: dict[Any, Any], request: gr.Request, progress: gr.Progress = gr.Progress()
    ) -> Iterator[dict[Any, Any]]:
        try:
            job_request = tab_request(library, widgets, data, model_picker)
            job_request.checked(engine.limits)
        except (AtelierError, PresetError) as exc:
            raise gr.Error(str(exc)) from exc
        session = request.session_hash or "anonymous"
        yield from jobs.stream(session, lambda job: _stream(engine, job, job_request, widgets, progress))

    state_widget, state_text = device_state
    widgets.generate.click(
        run, inputs={model_picker, widgets.presets.styles, widgets.presets.negatives, *widgets.fields.values()},
        outputs=outputs,
        concurrency_limit=GPU_WAITERS, concurrency_id="gpu", api_visibility="private", show_progress="minimal",
    ).then(state_text, None, state_widget, queue=False, show_progress="hidden")  # fmt: skip

    def stop(request: gr.Request) -> None:
        jobs.stop(request.session_hash or "anonymous")

    widgets.stop.click(stop, None, None, queue=False)

    def skip(request: gr.Request) -> None:
        jobs.skip(request.session_hash or "anonymous")

    widgets.skip.click(skip, None, None, queue=False)
    _wire_suggestions(widgets, model_picker)
    return run


def _wire_suggestions(widgets: GenerationWidgets, model_picker: gr.Dropdown) -> None:
    """A few-step sampler or a turbo model picked by hand brings the CFG, steps and schedule it needs
    (LCM 1.5/4, turbo 0/1); values set by Reuse or a preset are left alone (``input``, not ``change``)."""
    suggested = [widgets.fields[name] for name in SUGGESTED]

    def suggest(sampler: str | None, model: str | None) -> list[Any]:
        fields = samplers.suggested_fields(sampler or "", model or "")
        return [fields.get(name, gr.skip()) for name in SUGGESTED]

    sampler = widgets.fields["sampler_name"]
    if not isinstance(sampler, gr.Dropdown):
        raise TypeError(f"the sampler widget must be a Dropdown, got {type(sampler).__name__}")
    for picker in (sampler, model_picker):
        picker.input(suggest, [sampler, model_picker], suggested, queue=False, show_progress="hidden")


def _stream(
    engine: Engine, job: Job, job_request: Txt2Img, widgets: GenerationWidgets, progress: gr.Progress
) -> Iterator[dict[Any, Any]]:
    """Run the job in a worker thread and show its steps, ETA and preview until it ends."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = engine.generate(job_request, job=job, preview_every=PREVIEW_EVERY, save=True)
        except Exception as exc:  # handed to the page below as a message
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"job-{job.id[:8]}", daemon=True)
    started = time.perf_counter()
    worker.start()
    shown_key: tuple[int, int] = (0, 0)
    shown = ShownFiles(engine.outputs.finish, "preview")
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if job.state == "running" and job.total:
            progress((job.step, job.total), desc=f"Step {job.step}/{job.total}")
            update: dict[Any, Any] = {widgets.status: _status(job)}
            key = (len(job.images), id(job.preview))
            if key != shown_key:  # unchanged pictures are not sent again: each send re-encodes them
                shown_key = key
                update[widgets.results] = shown([*_finished_images(job), *([job.preview] if job.preview else [])])
            yield update
        elif job.state == "queued":  # after its last step a job says nothing new until it returns
            yield {widgets.status: _waiting_text(engine, job)}
    error = outcome.get("error")
    if isinstance(error, Interrupted):
        kept = shown(_finished_images(job))
        note = f"kept the {len(kept)} finished image(s)" if kept else "nothing was kept"
        yield {widgets.results: kept, widgets.status: f"Stopped at step {job.step} of {job.total}; {note}."}
        return
    if isinstance(error, AtelierError):
        raise gr.Error(str(error))
    if error is not None:
        log.error("generation failed", exc_info=error)
        raise gr.Error(f"Generation failed ({type(error).__name__}: {error}). Details are in the server log.")
    yield _finished(outcome["result"], widgets, time.perf_counter() - started, shown)


def _waiting_text(engine: Engine, job: Job) -> str:
    ahead = engine.queue_position(job)
    if ahead <= 0 and engine.loading_model:  # this job's model, or the one the start-up or a switch loads
        return f"Loading the model {engine.loading_model}…"
    if ahead <= 0:
        return "Waiting for the GPU…"
    return f"Waiting for the GPU: {ahead} job{'s' if ahead > 1 else ''} ahead of yours."


def _finished_images(job: Job) -> list[Any]:
    """Finished pictures: their saved files when every one was saved, else the images themselves (a
    full disk must not cost the pictures in hand)."""
    return [str(path) for path in job.paths] if len(job.paths) == len(job.images) else list(job.images)


def _status(job: Job) -> str:
    """Step and time left, timed from the first step (a model load before it would skew the ETA)."""
    elapsed = time.perf_counter() - job.started
    done = job.step / job.total if job.total else 0
    eta = elapsed / done - elapsed if done else 0
    return f"Step {job.step}/{job.total} · {elapsed:.1f}s · about {eta:.0f}s left"


def _finished(result: Result, widgets: GenerationWidgets, seconds: float, shown: ShownFiles) -> dict[Any, Any]:
    saved = len(result.paths) == len(result.images)
    pictures = shown([str(p) for p in result.paths]) if saved else shown(result.images, result.infotexts)
    paths = result.paths if len(result.paths) == len(result.seeds) else [None] * len(result.seeds)
    entries = [
        {
            "path": str(path) if path else None,
            "seed": seed,
            "infotext": text,
            "fields": result.request.fields() | {"seed": seed},
            "hidden": result.hidden.get(index),  # the safety check's original, in this session's memory only
        }
        for index, (path, seed, text) in enumerate(zip(paths, result.seeds, result.infotexts, strict=True))
    ]
    notes = "\n\n" + "\n".join(f"- {note}" for note in result.notes) if result.notes else ""
    status = f"Done in {seconds:.1f}s · seeds {', '.join(map(str, result.seeds))}{notes}"
    return {
        widgets.results: pictures, widgets.infotext: result.infotexts[0] if result.infotexts else "",
        widgets.status: status, widgets.session: entries, widgets.selected: 0,
        widgets.reveal: gr.Button(visible=bool(result.hidden)), widgets.revealed: "",
    }  # fmt: skip


def wire_reveal(engine: Engine, widgets: GenerationWidgets) -> None:
    """The person who generated a flagged picture may look at it: shown inline in their page only."""

    def reveal(entries: list[dict[str, Any]], selected: int) -> str:
        chosen = entries[selected] if entries and 0 <= selected < len(entries) else None
        hidden = chosen.get("hidden") if chosen else None
        if hidden is None:
            flagged = [index + 1 for index, entry in enumerate(entries or []) if entry.get("hidden") is not None]
            return f"The selected picture was not flagged. Flagged: picture {', '.join(map(str, flagged)) or 'none'}."
        source = data_url(hidden, engine.outputs.finish)
        return (f'<p>The flagged picture as it was made, shown here only (the saved file and the gallery keep '
                f'the blurred one):</p><img src="{source}" style="max-width:100%" alt="flagged picture">')  # fmt: skip

    widgets.reveal.click(reveal, [widgets.session, widgets.selected], widgets.revealed, queue=False)
