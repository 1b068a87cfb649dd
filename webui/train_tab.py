"""The Train tab: teach the loaded model a subject or a style with a LoRA, and ``/train_lora`` for
scripts.

Pictures come as uploads (with ``.txt`` captions beside them, if the artist has them) or as a
folder on the server; the file's predicted size shows for the rank before anything runs; while
the job runs the page shows the step, the ETA, a live loss plot and sample pictures; Stop ends it
at once and keeps what was learnt. The result is ``models/Lora/NAME.safetensors``, in the LoRA
picker at once, used as ``<lora:NAME:0.8>``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from gradio.data_classes import FileData

from pipelines.engine import Engine, Job
from pipelines.errors import AtelierError, BadRequest
from pipelines.lora import train
from pipelines.lora.train import TrainProgress, TrainResult, TrainSettings

from .endpoints import GPU_WAITERS
from .shown import ShownFiles
from .state import JobBoard

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
TRAIN_JOBS = "train"  # the JobBoard kind: the Train tab's Stop and a picture's Stop leave each other alone
PLOT_POINTS = 400  # the plot thins a long run's per-step losses to this many
AVERAGE_OF = 20  # steps in the plot's moving average
WHOLE = ("steps", "rank", "resolution", "batch_size", "seed", "sample_every", "sample_steps", "save_every")
PHASES = {"queued": "Waiting for the GPU…", "preparing": "Encoding the pictures…", "saving": "Writing the file…"}


@dataclass
class TrainWidgets:
    fields: dict[str, Any]  # TrainSettings field name -> widget
    files: gr.File
    size: gr.Markdown
    train: gr.Button
    stop: gr.Button
    status: gr.Markdown
    plot: gr.LinePlot
    samples: gr.Gallery
    result: gr.Markdown


def build_train_tab(engine: Engine, jobs: JobBoard) -> TrainWidgets:
    """The tab's controls and wiring (call inside a ``gr.Tab``); trains the model picked in the tab."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            files, data_fields = _data_controls()
            settings_fields = _settings_controls(engine)
            size = gr.Markdown(_size_text(engine, engine.default_model, 4, False, "", False), elem_id="train-size")
        with gr.Column(scale=5):
            with gr.Row():
                start = gr.Button("Train", variant="primary", scale=3, elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="train-stop")
            status = gr.Markdown("", elem_id="train-status")
            # Empty at first: a line plot built on an empty table never draws the lines it gets later.
            plot = gr.LinePlot(
                None, x="step", y="loss", color="series", label="Loss per step", height=300, elem_id="train-loss"
            )
            samples = gr.Gallery(label="Samples", columns=4, height=260, elem_id="train-samples")
            result = gr.Markdown("", elem_id="train-result")
    widgets = TrainWidgets(data_fields | settings_fields, files, size, start, stop, status, plot, samples, result)
    _wire_size(engine, widgets)
    _wire_run(engine, jobs, widgets)
    return widgets


def _data_controls() -> tuple[gr.File, dict[str, Any]]:
    files = gr.File(
        label="Pictures, and .txt captions named like them", file_count="multiple", type="filepath",
        file_types=["image", ".txt", ".jsonl"], elem_id="train-files",
    )  # fmt: skip
    folder = gr.Textbox(label="…or a folder on the server", placeholder="/path/to/pictures", elem_id="train-folder")
    captions = gr.Textbox(
        label="Captions, one per picture in order (empty: the .txt files, else the file names)", lines=3,
        elem_id="train-captions",
    )  # fmt: skip
    trigger = gr.Textbox(label="Trigger word (put before every caption)", elem_id="train-trigger")
    with gr.Row():
        name = gr.Textbox(label="LoRA name", scale=3, elem_id="train-name")
        overwrite = gr.Checkbox(False, label="Replace a LoRA of this name", scale=2, elem_id="train-overwrite")
    return files, {
        "folder": folder,
        "captions": captions,
        "trigger_word": trigger,
        "name": name,
        "overwrite": overwrite,
    }


def _settings_controls(engine: Engine) -> dict[str, Any]:
    defaults = TrainSettings(name="")
    model_name = engine.default_model
    with gr.Row():
        model = gr.Dropdown(_models(engine), value=model_name, label="Model to teach", elem_id="train-model")
        rank = gr.Slider(1, 128, value=defaults.rank, step=1, label="Rank", elem_id="train-rank")
    with gr.Row():
        steps = gr.Number(defaults.steps, label="Steps", precision=0, minimum=1, elem_id="train-steps")
        rate = gr.Number(train.default_learning_rate(engine, model_name), label="Learning rate", elem_id="train-lr")
        batch = gr.Slider(1, 16, value=defaults.batch_size, step=1, label="Batch size")
        seed = gr.Number(defaults.seed, label="Seed (-1: random)", precision=0, elem_id="train-seed")
    with gr.Row():
        side = engine.native_size(model_name)
        resolution = gr.Number(side, label="Resolution (px)", precision=0, minimum=64, elem_id="train-resolution")
        buckets = gr.Checkbox(defaults.buckets, label="Aspect-ratio buckets (else centre crops)")
        text_encoder = gr.Checkbox(defaults.train_text_encoder, label="Train the text encoder too", elem_id="train-te")
    with gr.Accordion("Sample pictures while training", open=False):
        prompts = gr.Textbox(label="Prompts, one per line (empty: the first caption)", lines=2, elem_id="train-prompts")
        with gr.Row():
            every = gr.Number(defaults.sample_every, label="Every N steps (0: none)", precision=0, minimum=0,
                              elem_id="train-sample-every")  # fmt: skip
            sample_steps = gr.Slider(1, 50, value=defaults.sample_steps, step=1, label="Sampling steps")
            save_every = gr.Number(
                defaults.save_every, label="Save the file every N steps (0: at the end)", precision=0
            )
    return {
        "model": model, "rank": rank, "steps": steps, "learning_rate": rate, "batch_size": batch, "seed": seed,
        "resolution": resolution, "buckets": buckets, "train_text_encoder": text_encoder, "sample_prompts": prompts,
        "sample_every": every, "sample_steps": sample_steps, "save_every": save_every,
    }  # fmt: skip


def _models(engine: Engine) -> list[str]:
    names = [entry.name for entry in engine.list_models() if not getattr(entry, "refused", False)]
    return list(dict.fromkeys([engine.default_model, *names]))


def settings_from(values: dict[str, Any]) -> TrainSettings:
    """Widget values by field name -> settings (number boxes give floats; blank ones give None)."""
    known = {f.name: f.default for f in fields(TrainSettings) if f.name != "name"}
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known and key != "name":
            continue
        if value is None:
            value = known.get(key, "")
        if key in WHOLE and isinstance(value, float) and value.is_integer():
            value = int(value)
        converted[key] = value
    return TrainSettings(**converted)


# -- the predicted size ------------------------------------------------------------------------
def _size_text(
    engine: Engine, model_name: str, rank: Any, text_encoder: bool, name: str, overwrite: bool,
    just_trained: bool = False,
) -> str:  # fmt: skip
    lines = []
    loaded = {model.name: model for model in engine.manager.loaded()}
    model = loaded.get(model_name or engine.default_model)
    try:
        rank_number = int(rank)
    except (TypeError, ValueError):
        rank_number = 0
    if model is None:
        lines.append("The predicted file size shows once the model is loaded.")
    elif rank_number >= 1:
        size = train.predicted_size(model, rank_number, bool(text_encoder))
        layers = len(train.layer_shapes(model, bool(text_encoder)))
        lines.append(f"Predicted file size: **{_kilobytes(size)}** (rank {rank_number}, {layers} layers, fp16)")
    if name and name.strip():
        problems = train.name_problems(name)
        if problems:
            lines.append(f"⚠ {problems[0]}")
        elif train.lora_path(engine, name).exists() and just_trained and not overwrite:
            again = "to train it again, tick “Replace” or pick another name"
            lines.append(f"“{name.strip()}” is the LoRA just trained: {again}.")
        elif train.lora_path(engine, name).exists():
            replace = "it will be replaced" if overwrite else "tick “Replace” to train over it, or pick another name"
            lines.append(f"⚠ A LoRA named “{name.strip()}” exists: {replace}.")
    return "\n\n".join(lines)


def _kilobytes(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size < 10 * 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def _wire_size(engine: Engine, widgets: TrainWidgets) -> None:
    names = ("model", "rank", "train_text_encoder", "name", "overwrite")
    watched = [widgets.fields[name] for name in names]

    def size(*values: Any) -> str:
        return _size_text(engine, *values)

    for widget in watched:
        widget.change(size, watched, widgets.size, queue=False, show_progress="hidden")

    def model_defaults(model_name: str) -> tuple[Any, Any]:
        try:
            return train.default_learning_rate(engine, model_name), engine.native_size(model_name)
        except AtelierError:
            return gr.skip(), gr.skip()

    model = widgets.fields["model"]
    outputs = [widgets.fields["learning_rate"], widgets.fields["resolution"]]
    model.input(model_defaults, model, outputs, queue=False, show_progress="hidden")


# -- running -----------------------------------------------------------------------------------
def loss_table(losses: list[float]) -> pd.DataFrame:
    """Rows for the loss plot: each step's loss (thinned to ``PLOT_POINTS``) and its moving average."""
    rows: list[tuple[int, float, str]] = []
    every = max(1, len(losses) // PLOT_POINTS)
    total = 0.0
    for index, loss in enumerate(losses):
        total += loss
        if index >= AVERAGE_OF:
            total -= losses[index - AVERAGE_OF]
        if index % every == 0 or index == len(losses) - 1:
            rows.append((index + 1, loss, "loss"))
            rows.append((index + 1, total / min(index + 1, AVERAGE_OF), f"average of {AVERAGE_OF}"))
    # Typed columns even when empty: the plot fixes its axes' kinds from the first table it gets.
    return pd.DataFrame(
        {
            "step": pd.Series([row[0] for row in rows], dtype="int64"),
            "loss": pd.Series([row[1] for row in rows], dtype="float64"),
            "series": pd.Series([row[2] for row in rows], dtype="object"),
        }
    )


def _wire_run(engine: Engine, jobs: JobBoard, widgets: TrainWidgets) -> None:
    outputs = [widgets.status, widgets.plot, widgets.samples, widgets.result, widgets.size]

    def run(data: dict[Any, Any], request: gr.Request) -> Any:
        values = {name: data[widget] for name, widget in widgets.fields.items()}
        paths = [Path(path) for path in data[widgets.files] or []]
        session = request.session_hash or "anonymous"
        job = jobs.start(session, TRAIN_JOBS)
        progress = TrainProgress()
        try:
            future = train.submit(engine, settings_from(values), paths, job, progress)
        except (AtelierError, TypeError) as exc:
            jobs.finish(session, job, TRAIN_JOBS)
            raise gr.Error(str(exc)) from exc
        try:
            yield from _stream(future, job, progress, ShownFiles(engine.outputs.finish, "sample"))
            size = _size_text(engine, values["model"], values["rank"], values["train_text_encoder"], values["name"],
                              values["overwrite"], just_trained=True)  # fmt: skip
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), size
        finally:
            job.interrupt() if job.state in ("queued", "running") else None  # the browser went away
            jobs.finish(session, job, TRAIN_JOBS)

    inputs: set[Any] = {widgets.files, *widgets.fields.values()}
    widgets.train.click(
        run, inputs, outputs, concurrency_limit=GPU_WAITERS, concurrency_id="gpu", api_visibility="private",
        show_progress="minimal",
    )  # fmt: skip

    def stop(request: gr.Request) -> None:
        jobs.stop(request.session_hash or "anonymous", TRAIN_JOBS)

    widgets.stop.click(stop, None, None, queue=False)


def _stream(future: Future[TrainResult], job: Job, progress: TrainProgress, files: ShownFiles) -> Any:
    shown_samples, shown_step = -1, -1
    while not future.done():
        time.sleep(POLL_SECONDS)
        if progress.phase in PHASES:
            yield PHASES[progress.phase], gr.skip(), gr.skip(), gr.skip(), gr.skip()
            continue
        step, count = progress.step, len(progress.samples)
        if step == shown_step and count == shown_samples:
            continue
        gallery = _gallery(progress, files) if count != shown_samples else gr.skip()
        shown_step, shown_samples = step, count
        yield _status(progress), _plot(list(progress.losses)), gallery, gr.skip(), gr.skip()
    try:
        result = future.result()
    except AtelierError as exc:
        raise gr.Error(str(exc)) from exc
    except Exception as exc:
        log.error("LoRA training failed", exc_info=exc)
        raise gr.Error(f"Training failed ({type(exc).__name__}: {exc}). Details are in the server log.") from exc
    yield _status(progress, result), _plot(result.losses), _gallery(progress, files), _summary(result), gr.skip()


def _plot(losses: list[float]) -> pd.DataFrame | None:
    # An empty table leaves Gradio's plot without its lines for good (axes only, whatever data comes
    # next), so the plot is cleared instead until the first loss arrives.
    return loss_table(losses) if losses else None


def _gallery(progress: TrainProgress, files: ShownFiles) -> list[tuple[str, str]]:
    samples = list(progress.samples)
    shown = files([sample.image for sample in samples])
    return [(file, f"step {sample.step}: {sample.prompt}") for file, sample in zip(shown, samples, strict=True)]


def _status(progress: TrainProgress, result: TrainResult | None = None) -> str:
    losses = list(progress.losses[-AVERAGE_OF:])
    loss = f" · loss {sum(losses) / len(losses):.4f}" if losses else ""
    if result is not None:
        verb = "Stopped" if result.stopped else "Done"
        return f"{verb}: {result.steps_done}/{result.settings.steps} steps in {result.seconds:.0f}s{loss}"
    rate = progress.step / progress.seconds if progress.seconds else 0.0
    sampling = " · drawing samples" if progress.phase == "sampling" else ""
    return (f"Step {progress.step}/{progress.total}{loss} · {rate:.1f} steps/s · "
            f"ETA {_duration(progress.eta_seconds)}{sampling}")  # fmt: skip


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def _summary(result: TrainResult) -> str:
    if result.path is None:
        return "Nothing was saved: " + "; ".join(result.notes or ["the job was stopped before it began"])
    tag = f"<lora:{result.name}:0.8>"
    lines = [
        f"Saved **{result.path.name}** ({_kilobytes(result.file_bytes)}): write `{tag}` in a prompt to use it.",
        f"Learning rate {result.settings.learning_rate:g} · rank {result.settings.rank} · seed {result.settings.seed}"
        f" · loss on fixed noise {result.probe_loss_before:.4f} → {result.probe_loss_after:.4f}",
    ]
    lines += [f"- {note}" for note in result.notes]
    return "\n\n".join(lines)


# -- the script endpoint -------------------------------------------------------------------------
def register_train_api(engine: Engine) -> None:
    """``/train_lora`` for scripts (call inside the page's Blocks)."""

    def train_lora(
        images: list[FileData], captions: str = "", name: str = "", steps: int = 400, rank: int = 4,
        learning_rate: float = 0.0, seed: int = -1, trigger_word: str = "", resolution: int = 0,
        batch_size: int = 1, train_text_encoder: bool = False, overwrite: bool = False, model: str = "",
    ) -> str:  # fmt: skip
        """Train a LoRA on the pictures (files; .txt files among them caption the pictures of the same name)
        and save it as models/Lora/NAME.safetensors. captions: one per line, in the pictures' order (empty:
        the .txt files, else the file names). learning_rate 0 = the model's default (1e-4; 1e-3 for the
        built-in demo); resolution 0 = the model's native size; seed -1 = random. An existing name is refused
        unless overwrite is true. Returns the LoRA's name, for <lora:NAME:0.8>."""
        try:
            paths = [_file_path(item) for item in images or []]
            settings = TrainSettings(
                name=name, steps=int(steps), rank=int(rank), learning_rate=float(learning_rate), seed=int(seed),
                trigger_word=trigger_word, captions=captions, resolution=int(resolution), batch_size=int(batch_size),
                train_text_encoder=bool(train_text_encoder), overwrite=bool(overwrite), model=model, sample_every=0,
            )  # fmt: skip
            result = train.train(engine, settings, paths)
        except AtelierError as exc:
            raise gr.Error(str(exc)) from exc
        if result.path is None:
            raise gr.Error("the training was stopped before it began: nothing was saved")
        return result.name

    gr.api(train_lora, api_name="train_lora", concurrency_limit=GPU_WAITERS, concurrency_id="gpu")


def _file_path(item: Any) -> Path:
    """An uploaded file's path on the server (Gradio checked it lies in its upload cache)."""
    if isinstance(item, FileData):
        return Path(item.path)
    if isinstance(item, dict) and isinstance(item.get("path"), str):
        return Path(item["path"])
    raise BadRequest(f"images must be uploaded files, got {type(item).__name__}")
