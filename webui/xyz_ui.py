"""The X/Y/Z plot of the Text to Image tab, and its script endpoint ``/xyz_plot``.

The plot takes every setting of the tab (styles applied as Generate applies them) and varies up to
three of them. Its pictures go to the tab's own results: the grid first, then every cell, each with
its infotext, so Reuse and Send work on them as on any result; the tab's Stop ends the plot and keeps
the cells done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.engine import Engine, Job
from pipelines.errors import AtelierError
from pipelines.requests import Txt2Img
from pipelines.xyz.axes import KINDS, Axis, kind_of
from pipelines.xyz.job import PlotCell, PlotResult, PlotSettings, submit_plot
from presets.store import PresetError, PresetLibrary

from .api import encode_png
from .endpoints import GPU_WAITERS
from .generation import tab_request
from .shown import ShownFiles
from .state import JobBoard
from .widgets import GenerationWidgets

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3
DEFAULT_TYPES = ("Seed", "Steps", "Nothing")


@dataclass
class XyzControls:
    accordion: gr.Accordion
    types: list[gr.Dropdown]  # X, Y, Z
    values: list[gr.Textbox]
    draw_legend: gr.Checkbox
    keep_random_seeds: gr.Checkbox
    run: gr.Button


def build_xyz_controls(engine: Engine, widgets: GenerationWidgets) -> XyzControls:
    """Built inside the tab, below its columns; returns what ``wire_xyz`` needs."""
    labels = [kind.label for kind in KINDS]
    types: list[gr.Dropdown] = []
    values: list[gr.Textbox] = []
    with gr.Accordion("X/Y/Z plot", open=False, elem_id="xyz-plot") as accordion:
        for name, default in zip("xyz", DEFAULT_TYPES, strict=True):
            with gr.Row(equal_height=True):
                types.append(
                    gr.Dropdown(
                        labels, value=default, label=f"{name.upper()} type", scale=1, elem_id=f"xyz-{name}-type"
                    )
                )
                values.append(
                    gr.Textbox(
                        label=f"{name.upper()} values", placeholder=kind_of(default).hint, scale=4,
                        elem_id=f"xyz-{name}-values",
                    )
                )  # fmt: skip
        with gr.Row(equal_height=True):
            draw_legend = gr.Checkbox(True, label="Draw legend", elem_id="xyz-draw-legend")
            keep_random = gr.Checkbox(False, label="Keep -1 seeds (a new random seed in every cell)")
            run = gr.Button("Run plot", variant="primary", elem_id="xyz-run")
        gr.Markdown(
            "Values: `1, 2, 3` · ranges `1-5`, `1-10 (+2)`, `10-1 (-3)`, `1-10 [4]` (4 values), `1.0-2.0 [3]` · "
            '`"a, b"` keeps a comma · Prompt S/R: the first value is the text replaced in the prompt.',
            elem_classes=["token-counter"],
        )
    for kind_box, value_box in zip(types, values, strict=True):
        kind_box.change(_hint, kind_box, value_box, queue=False, show_progress="hidden")
    return XyzControls(accordion, types, values, draw_legend, keep_random, run)


def _hint(label: str) -> Any:
    try:
        return gr.Textbox(placeholder=kind_of(label).hint)
    except AtelierError:
        return gr.skip()


def wire_xyz(
    engine: Engine, library: PresetLibrary, jobs: JobBoard, widgets: GenerationWidgets, controls: XyzControls,
    model_picker: gr.Dropdown,
) -> None:  # fmt: skip
    """Connects the plot's Run to the engine; Stop is the tab's own."""
    outputs = widgets.result_outputs
    options = [*controls.types, *controls.values, controls.draw_legend, controls.keep_random_seeds]

    def run(data: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            base = tab_request(library, widgets, data, model_picker)
            x, y, z = (
                Axis(data[kind], data[text] or "") for kind, text in zip(controls.types, controls.values, strict=True)
            )
            settings = PlotSettings(
                base, x, y, z, bool(data[controls.draw_legend]), bool(data[controls.keep_random_seeds])
            )
        except (AtelierError, PresetError, TypeError) as exc:
            raise gr.Error(str(exc)) from exc
        session = request.session_hash or "anonymous"
        yield from jobs.stream(session, lambda job: _stream(engine, job, settings, widgets))

    controls.run.click(
        run, inputs={model_picker, widgets.presets.styles, widgets.presets.negatives, *widgets.fields.values(),
                     *options},
        outputs=outputs, concurrency_limit=GPU_WAITERS, concurrency_id="gpu", api_visibility="private",
        show_progress="minimal",
    )  # fmt: skip


class _Watch:
    """What the device thread has finished, for the page's thread to show."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.cells: list[PlotCell] = []

    def __call__(self, done: int, total: int, cell: PlotCell) -> None:
        self.cells = [*self.cells, cell]  # a new list: the page's thread may be reading the old one
        self.done, self.total = done, total


def _stream(engine: Engine, job: Job, settings: PlotSettings, widgets: GenerationWidgets) -> Iterator[dict[Any, Any]]:
    watch = _Watch()
    started = time.perf_counter()
    try:
        future: Future[Any] = submit_plot(engine, settings, job, watch)
    except AtelierError as exc:  # a bad value: refused before anything ran
        raise gr.Error(str(exc)) from exc
    shown, files = -1, ShownFiles(engine.outputs.finish)
    while not future.done():
        wait([future], timeout=POLL_SECONDS)
        update: dict[Any, Any] = {}
        if job.state == "queued" and not watch.done:
            update[widgets.status] = _waiting(engine, job)
        elif job.state == "running":
            cell = f"cell {min(watch.done + 1, watch.total or 1)} of {watch.total or '…'}"
            update[widgets.status] = f"X/Y/Z plot: {cell} · step {job.step}/{job.total} · " \
                f"{time.perf_counter() - started:.1f}s"  # fmt: skip
        if watch.done != shown:
            shown = watch.done
            cells = list(watch.cells)
            update[widgets.results] = files([cell.path or cell.image for cell in cells], [c.infotext for c in cells])
        if update:
            yield update
    try:
        result: PlotResult = future.result()
    except AtelierError as exc:
        raise gr.Error(str(exc)) from exc
    except Exception as exc:
        log.error("X/Y/Z plot failed", exc_info=exc)
        raise gr.Error(f"The plot failed ({type(exc).__name__}: {exc}). Details are in the server log.") from exc
    yield _finished(result, widgets, files)


def _waiting(engine: Engine, job: Job) -> str:
    ahead = engine.queue_position(job)
    return f"Waiting for the GPU: {ahead} job{'s' if ahead > 1 else ''} ahead of yours." if ahead > 0 else \
        "Waiting for the GPU…"  # fmt: skip


def _finished(result: PlotResult, widgets: GenerationWidgets, files: ShownFiles) -> dict[Any, Any]:
    """The grid first, then the cells, each with its infotext for the tab's Parameters and Reuse."""
    entries: list[dict[str, Any]] = []
    pictures: list[Any] = []  # saved files, or (a full disk) the pictures in hand
    texts: list[str] = []
    if result.grid is not None:
        first = result.cells[0]
        pictures.append(result.grid_path or result.grid)
        texts.append(result.grid_infotext)
        entries.append(_entry(result.grid_path, first.seed, result.grid_infotext, first.request))
    for cell in result.cells:
        pictures.append(cell.path or cell.image)
        texts.append(cell.infotext)
        entries.append(_entry(cell.path, cell.seed, cell.infotext, cell.request))
    shown = files(pictures, texts)
    made = f"{len(result.cells)} of {result.total} cells" if result.stopped else f"{result.total} cells"
    notes = "\n\n" + "\n".join(f"- {note}" for note in result.notes) if result.notes else ""
    status = f"{'Stopped' if result.stopped else 'Done'}: X/Y/Z plot of {made} in {result.seconds:.1f}s{notes}"
    return {
        widgets.results: shown, widgets.infotext: entries[0]["infotext"] if entries else "", widgets.status: status,
        widgets.session: entries, widgets.selected: 0,
    } | widgets.no_reveal()  # fmt: skip


def _entry(path: Any, seed: int, text: str, request: Txt2Img) -> dict[str, Any]:
    return {
        "path": str(path) if path else None,
        "seed": seed,
        "infotext": text,
        "fields": request.fields() | {"seed": seed},
    }


def register_xyz_api(engine: Engine) -> Any:
    """``/xyz_plot`` for scripts: the plot's settings by name; returns the grid and every cell as base64
    PNGs with their infotexts. Returns the endpoint's function (tests call it directly)."""

    def xyz_plot(
        prompt: str, negative_prompt: str = "", x_type: str = "Seed", x_values: str = "", y_type: str = "Nothing",
        y_values: str = "", z_type: str = "Nothing", z_values: str = "", steps: int = 20, cfg_scale: float = 7.0,
        width: int = 0, height: int = 0, seed: int = -1, sampler_name: str = "DPM++ 2M",
        schedule_type: str = "Karras", model: str = "", draw_legend: bool = True, keep_random_seeds: bool = False,
        save: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """An X/Y/Z plot. Types: Nothing, Seed, Steps, CFG Scale, Sampler, Schedule type, Prompt S/R,
        Checkpoint name, Clip skip, Size, LoRA weight ...; values as in A1111 ("1, 2", "1-10 (+2)",
        "1.0-2.0 [3]"). width/height 0 = the model's native size; seed -1 = random. Returns {"grid": base64
        PNG, "grid_infotext", "images": [base64 PNG per cell, X fastest], "infotexts" (one per image),
        "seeds", "paths" (grid first, when saved), "stopped", "notes"}."""
        try:
            base = Txt2Img(
                prompt=prompt, negative_prompt=negative_prompt, steps=int(steps), cfg_scale=float(cfg_scale),
                width=int(width), height=int(height), seed=int(seed), sampler_name=sampler_name,
                schedule_type=schedule_type, model=model,
            )  # fmt: skip
            x, y, z = Axis(x_type, x_values), Axis(y_type, y_values), Axis(z_type, z_values)
            settings = PlotSettings(base, x, y, z, bool(draw_legend), bool(keep_random_seeds), save=bool(save))
            result: PlotResult = submit_plot(engine, settings, Job()).result()
        except (AtelierError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        paths = [str(p) for p in [result.grid_path, *(cell.path for cell in result.cells)] if p is not None]
        finish = engine.outputs.finish
        return {
            "grid": encode_png(result.grid, result.grid_infotext, None, finish) if result.grid is not None else "",
            "grid_infotext": result.grid_infotext,
            "images": [encode_png(cell.image, cell.infotext, None, finish) for cell in result.cells],
            "infotexts": [cell.infotext for cell in result.cells],
            "seeds": [cell.seed for cell in result.cells],
            "paths": paths, "stopped": result.stopped, "notes": result.notes,
        }  # fmt: skip

    gr.api(xyz_plot, api_name="xyz_plot", concurrency_limit=GPU_WAITERS, concurrency_id="gpu")
    return xyz_plot
