"""The Animation tab (Deforum-style clips) and its script endpoint ``/animate``.

Every control maps by name to a field of ``AnimationSettings``; the schedules are plotted as they
are typed; the whole set saves and loads as a preset and imports the matching part of a Deforum
settings file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from pipelines import samplers
from pipelines.animation.clips import KINDS
from pipelines.animation.job import AnimationResult
from pipelines.animation.schedules import schedule_table
from pipelines.animation.settings import BORDERS, COLOUR_COHERENCE, SEED_BEHAVIOURS, AnimationSettings, from_deforum
from pipelines.engine import Engine, Job
from pipelines.errors import AtelierError
from presets.store import PresetError, PresetLibrary, SavedSettings

from .endpoints import GPU_WAITERS
from .shown import ShownFiles
from .state import JobBoard

log = logging.getLogger(__name__)

EXAMPLE = '{"0": "a red circle on the left", "24": "a red circle on the right"}'
SCHEDULES = ("zoom", "angle", "translation_x", "translation_y", "strength_schedule", "noise_schedule",
             "cfg_scale_schedule")  # fmt: skip
PRESET_MODE = "animation"
POLL_SECONDS = 0.3


@dataclass
class AnimationWidgets:
    fields: dict[str, gr.components.Component]
    generate: gr.Button
    stop: gr.Button
    status: gr.Markdown
    preview: gr.Image
    clip: gr.Video
    plot: gr.LinePlot


def build_animation_tab(engine: Engine, library: PresetLibrary, jobs: JobBoard) -> AnimationWidgets:
    defaults = AnimationSettings()
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            fields = _prompt_and_clip_controls(engine, defaults) | _motion_controls(defaults)
            _preset_controls(library, fields)
        with gr.Column(scale=5):
            with gr.Row():
                generate = gr.Button("Generate clip", variant="primary", scale=3, elem_id="animate-generate")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="animate-stop")
            status = gr.Markdown("", elem_id="animate-status")
            preview = gr.Image(label="Latest frame", interactive=False, height=240, elem_id="animate-preview")
            clip = gr.Video(label="Clip", interactive=False, elem_id="animate-clip")
            table, problems = schedule_plot([getattr(defaults, name) for name in SCHEDULES], defaults.max_frames)
            plot = gr.LinePlot(
                table, x="frame", y="value", color="schedule", label="Schedules over the frames", height=260,
                elem_id="animate-plot",
            )  # fmt: skip
            plot_problems = gr.Markdown(problems)
    widgets = AnimationWidgets(fields, generate, stop, status, preview, clip, plot)
    _wire_plot(widgets, plot_problems)
    _wire_run(engine, jobs, widgets)
    return widgets


def _prompt_and_clip_controls(engine: Engine, defaults: AnimationSettings) -> dict[str, Any]:
    prompts = gr.Textbox(
        label="Prompts: a prompt, or Deforum keyframes as JSON", lines=4, value=EXAMPLE, elem_id="animate-prompts"
    )
    negative = gr.Textbox(label="Negative prompt", lines=1)
    with gr.Row():
        frames = gr.Number(defaults.max_frames, label="Frames", precision=0, minimum=1, elem_id="animate-frames")
        fps = gr.Number(defaults.fps, label="FPS", minimum=1, maximum=60)
        clip_format = gr.Dropdown(list(KINDS), value=defaults.clip_format, label="Format")
        cadence = gr.Slider(1, 50, value=defaults.diffusion_cadence, step=1, label="Cadence")
    with gr.Row():
        side = engine.native_size()
        width = gr.Slider(64, 2048, value=side, step=8, label="Width", elem_id="animate-width")
        height = gr.Slider(64, 2048, value=side, step=8, label="Height", elem_id="animate-height")
    with gr.Row():
        sampler = gr.Dropdown(samplers.sampler_names(), value=defaults.sampler_name, label="Sampler")
        steps = gr.Slider(1, 150, value=defaults.steps, step=1, label="Steps", elem_id="animate-steps")
    with gr.Row():
        seed = gr.Number(defaults.seed, label="Seed (-1: random)", precision=0, elem_id="animate-seed")
        behaviour = gr.Dropdown(list(SEED_BEHAVIOURS), value=defaults.seed_behaviour, label="Seed behaviour")
        prompt_travel = gr.Checkbox(defaults.prompt_travel, label="Prompt travel")
        seed_travel = gr.Checkbox(defaults.seed_travel, label="Seed travel")
    return {
        "prompts": prompts, "negative_prompt": negative, "max_frames": frames, "fps": fps,
        "clip_format": clip_format, "diffusion_cadence": cadence, "width": width, "height": height,
        "sampler_name": sampler, "steps": steps, "seed": seed, "seed_behaviour": behaviour,
        "prompt_travel": prompt_travel, "seed_travel": seed_travel,
    }  # fmt: skip


def _motion_controls(defaults: AnimationSettings) -> dict[str, Any]:
    with gr.Accordion("Camera and schedules (frame: (value or expression of t))", open=True):
        boxes = {
            name: gr.Textbox(getattr(defaults, name), label=name.replace("_", " ").capitalize(), lines=1,
                             elem_id=f"animate-{name.replace('_', '-')}")
            for name in SCHEDULES
        }  # fmt: skip
        with gr.Row():
            colour = gr.Dropdown(list(COLOUR_COHERENCE), value=defaults.colour_coherence, label="Colour coherence")
            border = gr.Dropdown(list(BORDERS), value=defaults.border, label="Border")
    return boxes | {"colour_coherence": colour, "border": border}


def _preset_controls(library: PresetLibrary, fields: dict[str, Any]) -> None:
    with gr.Accordion("Save, load, import", open=False):
        with gr.Row():
            name = gr.Textbox(label="Preset name", scale=3, elem_id="animate-preset-name")
            save = gr.Button("Save", scale=1, elem_id="animate-save")
        with gr.Row():
            saved = gr.Dropdown(_saved(library), label="Saved animations", scale=3, elem_id="animate-saved")
            load = gr.Button("Load", scale=1, elem_id="animate-load")
        deforum = gr.File(label="Import a Deforum settings file (.json)", file_types=[".json", ".txt"])
    outputs = list(fields.values())

    def store(preset_name: str, *values: Any) -> Any:
        try:
            settings, _ = settings_from(dict(zip(fields, values, strict=True))).checked()
            library.save(
                "settings", SavedSettings(preset_name.strip(), PRESET_MODE, settings.to_dict()), overwrite=True
            )
        except (AtelierError, PresetError) as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Saved “{preset_name.strip()}”.")
        return gr.Dropdown(choices=_saved(library), value=preset_name.strip())

    def restore(preset_name: str | None) -> list[Any]:
        try:
            return _values(fields, AnimationSettings.from_dict(library.get("settings", preset_name or "").settings))
        except (AtelierError, PresetError) as exc:
            raise gr.Error(str(exc)) from exc

    def imported(path: str | None) -> list[Any]:
        if not path:
            return [gr.skip()] * len(outputs)
        try:
            settings, report = from_deforum(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, AtelierError) as exc:
            raise gr.Error(f"Could not import that file: {exc}") from exc
        gr.Info("Imported. " + (" · ".join(report[:8]) if report else "Every setting matched."))
        return _values(fields, settings)

    save.click(store, [name, *outputs], saved)
    load.click(restore, saved, outputs)
    deforum.upload(imported, deforum, outputs)


def _saved(library: PresetLibrary) -> list[str]:
    return [preset.name for preset in library.saved() if preset.mode == PRESET_MODE]


def _values(fields: dict[str, Any], settings: AnimationSettings) -> list[Any]:
    data = settings.to_dict()
    return [data.get(name, gr.skip()) for name in fields]


def settings_from(values: dict[str, Any]) -> AnimationSettings:
    """Widget values by field name -> settings; whole numbers from number boxes become ints."""
    whole = ("max_frames", "seed", "steps", "width", "height", "diffusion_cadence")
    converted: dict[str, Any] = {
        name: int(value) if name in whole and isinstance(value, float) and value.is_integer() else value
        for name, value in values.items()
    }
    return AnimationSettings(**converted)


def schedule_plot(texts: list[str], frames: Any) -> tuple[pd.DataFrame, str]:
    """The rows a line plot of every valid schedule needs, and the problems of the others."""
    count = int(frames) if isinstance(frames, (int, float)) and float(frames).is_integer() else 0
    rows, errors = schedule_table(dict(zip(SCHEDULES, texts, strict=True)), count, max_points=300)
    return pd.DataFrame(rows, columns=["frame", "schedule", "value"]), "\n".join(f"- {error}" for error in errors)


def _wire_plot(widgets: AnimationWidgets, problems: gr.Markdown) -> None:
    watched: list[Any] = [widgets.fields[name] for name in (*SCHEDULES, "max_frames")]  # text and number boxes

    def plot(*values: Any) -> tuple[pd.DataFrame, str]:
        *texts, frames = values
        return schedule_plot(texts, frames)

    for widget in watched:
        widget.change(plot, watched, [widgets.plot, problems], queue=False, show_progress="hidden")


def _wire_run(engine: Engine, jobs: JobBoard, widgets: AnimationWidgets) -> None:
    outputs = [widgets.status, widgets.preview, widgets.clip]

    def run(data: dict[Any, Any], request: gr.Request) -> Iterator[tuple[Any, ...]]:
        try:
            settings = settings_from({name: data[widget] for name, widget in widgets.fields.items()})
            settings.checked(engine.limits)
        except (AtelierError, TypeError) as exc:
            raise gr.Error(str(exc)) from exc
        session = request.session_hash or "anonymous"
        yield from jobs.stream(session, lambda job: _stream(engine, job, settings, widgets))

    widgets.generate.click(
        run, set(widgets.fields.values()), outputs, concurrency_limit=GPU_WAITERS, concurrency_id="gpu",
        api_visibility="private", show_progress="minimal",
    )  # fmt: skip

    def stop(request: gr.Request) -> None:
        jobs.stop(request.session_hash or "anonymous")

    widgets.stop.click(stop, None, None, queue=False)


def _stream(
    engine: Engine, job: Job, settings: AnimationSettings, widgets: AnimationWidgets
) -> Iterator[tuple[Any, ...]]:
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = engine.animate(settings, job)
        except Exception as exc:  # handed to the page below as a message
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"animation-{job.id[:8]}", daemon=True)
    worker.start()
    shown, files = -1, ShownFiles(engine.outputs.finish, "frame")
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if job.state == "running" and job.step != shown:
            shown = job.step
            latest = files([job.preview])[0] if job.preview is not None else None
            yield f"Frame {job.step}/{job.total} · {time.perf_counter() - job.started:.1f}s", latest, gr.skip()
        elif job.state == "queued":
            yield "Waiting for the GPU…", gr.skip(), gr.skip()
    error = outcome.get("error")
    if isinstance(error, AtelierError):
        raise gr.Error(str(error))
    if error is not None:
        log.error("animation failed", exc_info=error)
        raise gr.Error(f"Animation failed ({type(error).__name__}: {error}). Details are in the server log.")
    result: AnimationResult = outcome["result"]
    yield _summary(result), gr.skip(), str(result.clip) if result.clip else None


def _summary(result: AnimationResult) -> str:
    made = f"{len(result.frames)} frames in {result.seconds:.1f}s · seed {result.settings.seed}"
    where = f" · {result.clip.name}" if result.clip else ""
    notes = "\n\n" + "\n".join(f"- {note}" for note in result.notes) if result.notes else ""
    return f"{'Stopped' if result.stopped else 'Done'}: {made}{where}{notes}"


def register_animation_api(engine: Engine) -> None:
    """``/animate`` for scripts: the same settings as the tab, by name; returns the clip's path."""

    def animate(
        prompts: str, max_frames: int = 24, fps: float = 15, width: int = 0, height: int = 0, steps: int = 20,
        seed: int = -1, zoom: str = "0: (1.0)", angle: str = "0: (0)", translation_x: str = "0: (0)",
        translation_y: str = "0: (0)", strength_schedule: str = "0: (0.65)", noise_schedule: str = "0: (0.065)",
        cfg_scale_schedule: str = "0: (7)", colour_coherence: str = "LAB", diffusion_cadence: int = 2,
        clip_format: str = "mp4", negative_prompt: str = "", sampler_name: str = "Euler a",
        seed_behaviour: str = "iter", prompt_travel: bool = True, seed_travel: bool = False, model: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """A clip from prompt keyframes (Deforum JSON {"0": "...", "24": "..."} or one prompt). Schedules
        are Deforum's "frame: (value or expression of t)"; zoom 1.0 = still; width/height 0 = the model's
        native size. Returns {"clip": path on the server, "frames", "seed", "notes"}."""
        values = {name: value for name, value in locals().items() if name != "engine"}
        try:
            result = engine.animate(settings_from(values))
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        clip = str(result.clip) if result.clip else ""
        return {"clip": clip, "frames": len(result.frames), "seed": result.settings.seed, "notes": result.notes}

    gr.api(animate, api_name="animate", concurrency_limit=GPU_WAITERS, concurrency_id="gpu")
