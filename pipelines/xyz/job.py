"""An X/Y/Z plot as one device job: check every cell -> run each cell's picture -> draw the grid ->
save it with an infotext naming the axes.

Everything is checked before the job is queued: each axis's values (syntax, samplers, models, the
Prompt S/R term) and every cell's request, so a typo in the last value costs nothing and writes
nothing. The job then holds the device slot for all its cells, so its pictures come out together and
one Stop ends it; Stop keeps the cells done and still writes a grid of them (the rest left blank).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import BadRequest, Interrupted
from ..requests import MAX_SEED, Limits, Txt2Img
from .axes import LABELS, Axis, AxisKind, kind_of, match_model, parse_values, problems_with
from .grid import draw_grid

if TYPE_CHECKING:
    from ..engine import Engine, Job, Result

log = logging.getLogger(__name__)

SCRIPT = "X/Y/Z plot"
MAX_CELLS = 400
MAX_GRID_PIXELS = 200_000_000  # A1111's default cap on a grid's size; a bigger one is hard to open anyway
NAMES = ("X", "Y", "Z")
SEED_KINDS = ("Seed", "Var. seed")
NOTHING = kind_of("Nothing")


@dataclass
class PlotSettings:
    """A base request and up to three axes. ``keep_random_seeds`` (A1111's "Keep -1 for seeds"): a
    seed of -1 is a new random seed in every cell; otherwise it is drawn once, so a Seed column (and
    every cell, for the base seed) shares it and the plot compares like with like."""

    base: Txt2Img
    x: Axis = field(default_factory=Axis)
    y: Axis = field(default_factory=Axis)
    z: Axis = field(default_factory=Axis)
    draw_legend: bool = True
    keep_random_seeds: bool = False
    include_cells: bool = True  # A1111's "Include Sub Images": front doors return the cells beside the grid
    save: bool = True  # write the cells and the grid to the outputs folder

    @property
    def axes(self) -> tuple[Axis, Axis, Axis]:
        return self.x, self.y, self.z

    def replace(self, **changes: Any) -> PlotSettings:
        return dataclasses.replace(self, **changes)

    def checked(
        self, limits: Limits | None = None, models: Sequence[str] | None = None
    ) -> tuple[PlotSettings, list[str]]:
        """A normalised copy (the base request checked) and notes, or ``BadRequest`` listing every
        axis value at fault. ``models``: the names a Checkpoint axis may use (None: not checked)."""
        plan = make_plan(self, limits or Limits(), models)
        return self.replace(base=plan.base), plan.notes

    def to_dict(self) -> dict[str, Any]:
        """What the grid's file records besides the base request: the axes and options."""
        axes = {
            name.lower(): {"type": axis.type, "values": axis.values}
            for name, axis in zip(NAMES, self.axes, strict=True)
        }
        return axes | {"draw_legend": self.draw_legend, "keep_random_seeds": self.keep_random_seeds}


@dataclass
class PlotCell:
    """One finished cell: its place on the axes, its picture and how it was made."""

    index: int  # ix + iy * len(xs) + iz * len(xs) * len(ys)
    image: Image.Image
    infotext: str
    seed: int
    request: Txt2Img
    model: str  # the model's name and hash, as the engine loaded it
    model_hash: str
    path: Path | None = None


@dataclass
class PlotResult:
    grid: Image.Image | None  # None when Stop came before the first cell
    grid_infotext: str
    grid_path: Path | None
    cells: list[PlotCell]  # the cells done, in axis order (X fastest)
    total: int  # cells the plot has
    labels: tuple[list[str], ...]  # the legend's texts of X, Y and Z
    settings: PlotSettings  # with the seeds that were drawn
    boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)  # each cell's place in the grid
    notes: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0

    def as_result(self, include_cells: bool | None = None) -> Result:
        """The plot as one generation result, the way A1111's API returns a script's pictures: the
        grid first, then (``include_cells``, default the settings' choice) every cell."""
        from ..engine import Result

        cells = self.cells if (self.settings.include_cells if include_cells is None else include_cells) else []
        first = self.cells[0] if self.cells else None
        pictures = ([self.grid] if self.grid is not None else []) + [cell.image for cell in cells]
        seeds = ([first.seed] if self.grid is not None and first else []) + [cell.seed for cell in cells]
        texts = ([self.grid_infotext] if self.grid is not None else []) + [cell.infotext for cell in cells]
        paths = [path for path in [self.grid_path, *(cell.path for cell in cells)] if path is not None]
        request = first.request if first else self.settings.base
        model, model_hash = (first.model, first.model_hash) if first else (request.model, "")
        timings = {"generate_s": self.seconds}
        return Result(pictures, seeds, texts, request, model, model_hash, timings, list(self.notes), paths)


CellCallback = Callable[[int, int, PlotCell], None]  # cells done, cells in all, the newest cell


@dataclass
class Plan:
    """The checked plot: each axis's values and labels, and every cell's request in running order."""

    base: Txt2Img
    kinds: tuple[AxisKind, ...]  # X, Y, Z
    values: tuple[list[Any], ...]
    requests: list[Txt2Img]  # by cell index
    order: list[int]  # cell indexes in the order they run (a model change is the slowest: outermost)
    notes: list[str]

    @property
    def labels(self) -> tuple[list[str], ...]:
        return tuple(
            [kind.format(value) for value in values] for kind, values in zip(self.kinds, self.values, strict=True)
        )


def make_plan(
    settings: PlotSettings, limits: Limits, models: Sequence[str] | None, seeds: random.Random | None = None
) -> Plan:
    """Every cell's request, checked; ``BadRequest`` with every problem, each naming its axis and value.
    With ``seeds``, seeds of -1 are drawn from it (unless the settings keep them random)."""
    problems: list[str] = []
    notes: list[str] = []
    kinds: list[AxisKind] = []
    values: list[list[Any]] = []
    for name, axis in zip(NAMES, settings.axes, strict=True):
        try:
            kind = kind_of(axis.type)
            values.append(parse_values(name, kind, axis.values))
            kinds.append(kind)
        except BadRequest as exc:
            problems += [p if p.startswith(f"{name} axis") else f"{name} axis: {p}" for p in exc.problems]
            kinds.append(NOTHING)
            values.append([None])
    used = [kind.label for kind in kinds if kind is not NOTHING]
    problems += [f"{label} is on more than one axis" for label in sorted(set(used)) if used.count(label) > 1]
    base = settings.base
    if base.batch_size != 1 or base.batch_count != 1:
        notes.append("each cell is one picture: batch size and count are set to 1")
        base = base.replace(batch_size=1, batch_count=1)
    if seeds is not None and not settings.keep_random_seeds:
        base = base.replace(seed=_drawn(base.seed, seeds))
        values = [[_drawn(v, seeds) for v in vals] if kind.label in SEED_KINDS else vals
                  for kind, vals in zip(kinds, values, strict=True)]  # fmt: skip
    for name, kind, axis_values in zip(NAMES, kinds, values, strict=True):
        if kind is not NOTHING:
            problems += problems_with(name, kind, axis_values, base, models)
    values = [_model_names(kind, vals, models) for kind, vals in zip(kinds, values, strict=True)]
    count = math.prod(len(vals) for vals in values)
    if count > MAX_CELLS:
        problems.append(f"the plot has {count} cells, more than {MAX_CELLS}: use fewer values")
    if problems:
        raise BadRequest(problems)
    try:
        base, base_notes = base.checked(limits)
    except BadRequest as exc:
        raise BadRequest([f"the plot's base settings: {p}" for p in exc.problems]) from exc
    requests = _cell_requests(base, kinds, values, limits)
    return Plan(base, tuple(kinds), tuple(values), requests, _order(kinds, values), notes + base_notes)


def _drawn(seed: Any, seeds: random.Random) -> Any:
    return seeds.randint(0, MAX_SEED) if seed == -1 else seed


def _model_names(kind: AxisKind, values: list[Any], models: Sequence[str] | None) -> list[Any]:
    """Checkpoint values as the engine names the models ("v1-5" -> "v1-5.safetensors")."""
    if kind.label != "Checkpoint name" or models is None:
        return values
    return [match_model(value, models) or value for value in values]


def _cell_requests(base: Txt2Img, kinds: list[AxisKind], values: list[list[Any]], limits: Limits) -> list[Txt2Img]:
    """Each cell's request by index (X fastest); the problems of any cell, each naming its axis values."""
    xs, ys, zs = values
    requests: list[Txt2Img] = []
    problems: list[str] = []
    for z, y, x in itertools.product(zs, ys, xs):
        request = base
        for kind, value, axis_values in zip(kinds, (x, y, z), values, strict=True):
            request = kind.apply(request, value, axis_values)
        try:
            request, _ = request.checked(limits)
        except BadRequest as exc:
            cell = zip(NAMES, kinds, (x, y, z), strict=True)
            where = ", ".join(f"{n} axis ({k.label}) value {k.format(v)!r}" for n, k, v in cell if k is not NOTHING)
            problems += [f"{where}: {p}" for p in exc.problems if f"{where}: {p}" not in problems]
        requests.append(request)
    if problems:
        cut = 12  # one bad value fails a whole row of cells: the first messages say enough
        raise BadRequest(problems if len(problems) <= cut else [*problems[:cut], f"and {len(problems) - cut} more"])
    return requests


def _order(kinds: list[AxisKind], values: list[list[Any]]) -> list[int]:
    """Cells in index order, except that a Checkpoint axis changes least often (a model switch is slow)."""
    sizes = [len(vals) for vals in values]
    cells = range(math.prod(sizes))
    slow = [axis for axis, kind in enumerate(kinds) if kind.label == "Checkpoint name"]
    if not slow:
        return list(cells)
    stride = math.prod(sizes[: slow[0]])  # cells between two steps along the slow axis
    return sorted(cells, key=lambda index: (index // stride % sizes[slow[0]], index))


def submit_plot(
    engine: Engine, settings: PlotSettings, job: Job, on_cell: CellCallback | None = None, as_result: bool = False
) -> Future[Any]:
    """Check the plot (``BadRequest`` before anything is queued or written), then queue it as one job
    in the engine's fair queue. The future gives a ``PlotResult``; with ``as_result``, the plot as a
    ``Result`` the way A1111's API answers (``PlotResult.as_result``), for the REST API."""
    models = [entry.name for entry in engine.list_models() if not entry.refused]
    settings, _ = settings.checked(engine.limits, models)
    plan = make_plan(settings, engine.limits, models)
    sides: dict[str, int] = {}
    pixels = 0
    for request in plan.requests:
        name = request.model or engine.default_model
        if name not in sides:
            engine.manager.fetch(name)  # downloads never hold the device: all of them before the job queues
            sides[name] = 0 if request.width and request.height else engine.native_size(name)
        pixels += (request.width or sides[name]) * (request.height or sides[name])
    if pixels > MAX_GRID_PIXELS:
        raise BadRequest(f"the grid would be {pixels / 1e6:.0f} megapixels, more than {MAX_GRID_PIXELS / 1e6:.0f}")
    size = f"{settings.x.type} x {settings.y.type} x {settings.z.type} plot of {len(plan.requests)} cells"

    def work() -> Any:
        made = run(engine, settings, job, on_cell)
        return made.as_result() if as_result else made

    return engine.submit_work(job, settings.base.model, work, size)


def plot(
    engine: Engine, settings: PlotSettings, job: Job | None = None, on_cell: CellCallback | None = None
) -> PlotResult:
    """Make the plot and wait for it (scripts and tests)."""
    from ..engine import Job

    result: PlotResult = submit_plot(engine, settings, job or Job(), on_cell).result()
    return result


def run(engine: Engine, settings: PlotSettings, job: Job, on_cell: CellCallback | None = None) -> PlotResult:
    """Make the plot ``settings`` describe, on the device thread (inside ``engine.submit_work``)."""
    started = time.perf_counter()
    models = [entry.name for entry in engine.list_models() if not entry.refused]
    plan = make_plan(settings, engine.limits, models, random.Random())
    settings = settings.replace(base=plan.base)
    notes = list(plan.notes)
    done: dict[int, PlotCell] = {}
    stopped = False
    for index in plan.order:
        if job.interrupted:
            stopped = True
            break
        try:
            made = engine.run_now(plan.requests[index], job, save=settings.save)
        except Interrupted:
            stopped = True
            break
        job.state = "running"  # run_now marks each picture's end "done": the plot is not, and Stop must still work
        notes += [note for note in made.notes if note not in notes]
        path = made.paths[0] if made.paths else None
        done[index] = PlotCell(
            index, made.images[0], made.infotexts[0], made.seeds[0], made.request, made.model, made.model_hash, path
        )
        if on_cell is not None:
            on_cell(len(done), len(plan.requests), done[index])
    cells = [done[index] for index in sorted(done)]
    result = PlotResult(None, "", None, cells, len(plan.requests), plan.labels, settings, notes=notes, stopped=stopped)
    if cells:
        _draw(engine, plan, settings, done, result)
    if stopped:
        notes.append(f"stopped after {len(cells)} of {len(plan.requests)} cells: the grid has the cells done")
    job.images = ([result.grid] if result.grid else []) + [cell.image for cell in cells]
    job.paths = [p for p in [result.grid_path, *(cell.path for cell in cells)] if p is not None]
    job.state = "interrupted" if stopped else "done"
    result.seconds = time.perf_counter() - started
    return result


def _draw(engine: Engine, plan: Plan, settings: PlotSettings, done: dict[int, PlotCell], result: PlotResult) -> None:
    xs, ys, zs = plan.labels
    pictures = [done[index].image if index in done else None for index in range(len(plan.requests))]
    drawn = draw_grid(pictures, xs, ys, zs, settings.draw_legend)
    first = done[min(done)]
    result.grid, result.boxes = drawn.image, drawn.boxes
    result.grid_infotext = grid_infotext(first.infotext, settings, plan)
    if not settings.save:
        return
    fields = first.request.fields() | {"model": first.model, "seed": first.seed, "xyz": settings.to_dict()}
    try:
        result.grid_path = engine.outputs.save(drawn.image, result.grid_infotext, fields, first.seed)
    except OSError as exc:
        log.error("could not save the X/Y/Z grid: %s", exc)
        result.notes.append(f"the grid was not saved to {engine.outputs.root}: {exc.strerror or exc}")


def grid_infotext(first: str, settings: PlotSettings, plan: Plan) -> str:
    """The first cell's infotext with the plot's keys (A1111's names) added to its parameters line, so
    PNG Info and Reuse on the grid give the first cell's settings and say how the plot varied them."""
    extra: dict[str, str] = {"Script": SCRIPT}
    for name, axis, kind, values in zip(NAMES, settings.axes, plan.kinds, plan.values, strict=True):
        if kind.label == "Nothing":
            continue
        extra[f"{name} Type"] = kind.label
        extra[f"{name} Values"] = axis.values
        if kind.label in SEED_KINDS and not settings.keep_random_seeds:
            extra[f"Fixed {name} Values"] = ", ".join(str(value) for value in values)
    return first + "".join(f", {key}: {_quoted(value)}" for key, value in extra.items())


def _quoted(text: str) -> str:
    """A value as A1111 writes one that holds a comma, colon, quote or line break: JSON-quoted."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


# A1111's axis list as its X/Y/Z script numbers it (``script_args`` carry indexes into it), for text
# to image and for image to image: the two differ where one mode has an axis the other lacks.
A1111_TXT2IMG_AXES = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R", "Prompt order",
    "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho", "Eta",
    "Clip skip", "Denoising", "Initial noise multiplier", "Extra noise", "Hires upscaler", "VAE", "Styles",
    "UniPC Order", "Face restore", "Token merging ratio", "Token merging ratio high-res",
    "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at",
    "RNG source",
)  # fmt: skip
A1111_IMG2IMG_AXES = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho", "Eta",
    "Clip skip", "Denoising", "Initial noise multiplier", "Extra noise", "Cond. Image Mask Weight", "VAE", "Styles",
    "UniPC Order", "Face restore", "Token merging ratio", "Token merging ratio high-res",
    "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at",
    "RNG source",
)  # fmt: skip
SCRIPT_NAMES = ("x/y/z plot", "xyz plot", "xyz_grid")


def from_a1111_script(script_name: Any, script_args: Any, base_request: Txt2Img) -> PlotSettings | None:
    """The plot an A1111 REST call asks for with ``script_name: "x/y/z plot"`` and its positional
    ``script_args`` (x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type,
    z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    ...); None when the call names no script or another one. A type is an index into A1111's axis list
    for the request's mode, or an axis label; a kind Atelier does not plot is refused by name."""
    if not isinstance(script_name, str) or script_name.strip().lower() not in SCRIPT_NAMES:
        return None
    args = list(script_args) if isinstance(script_args, (list, tuple)) else None
    if args is None or len(args) < 9:
        raise BadRequest(
            "script_args of the X/Y/Z plot must be a list starting x_type, x_values, x_values_dropdown, y_type, "
            f"y_values, y_values_dropdown, z_type, z_values, z_values_dropdown; got {str(script_args)[:120]}"
        )
    mode_axes = A1111_IMG2IMG_AXES if base_request.mode != "txt2img" else A1111_TXT2IMG_AXES
    problems: list[str] = []
    axes: list[Axis] = []
    for position, name in enumerate(NAMES):
        kind, text, dropdown = args[3 * position : 3 * position + 3]
        try:
            axes.append(Axis(_a1111_label(name, kind, mode_axes), _a1111_values(name, text, dropdown)))
        except BadRequest as exc:
            problems += exc.problems
    if problems:
        raise BadRequest(problems)
    # A1111's defaults where a client sends fewer: legend on, no lone images, no sub-grids, seeds fixed
    options = [bool(value) for value in args[9:13]] + [True, False, False, False][len(args[9:13]) :]
    draw_legend, include_lone_images, _, no_fixed_seeds = options
    x, y, z = axes
    return PlotSettings(base_request, x, y, z, draw_legend, keep_random_seeds=no_fixed_seeds,
                        include_cells=include_lone_images)  # fmt: skip


def _a1111_label(name: str, kind: Any, mode_axes: tuple[str, ...]) -> str:
    if isinstance(kind, str) and not kind.strip().lstrip("-").isdigit():
        label = kind.strip()
    elif isinstance(kind, (int, str)) and not isinstance(kind, bool) and 0 <= int(kind) < len(mode_axes):
        label = mode_axes[int(kind)]
    else:
        raise BadRequest(f"{name} axis: type {kind!r} is not an index of A1111's axis list (0-{len(mode_axes) - 1})")
    try:
        return kind_of(label).label
    except BadRequest:
        supported = ", ".join(axis for axis in mode_axes if axis.lower() in {label.lower() for label in LABELS})
        raise BadRequest(f"{name} axis: Atelier cannot plot {label!r}; it plots {supported}") from None


def _a1111_values(name: str, text: Any, dropdown: Any) -> str:
    """The values as one text: A1111 takes choices (samplers, models) from the dropdown list unless
    its "csv mode" is on, so a list there wins over an empty text."""
    if isinstance(dropdown, list) and dropdown and not (isinstance(text, str) and text.strip()):
        return ", ".join(json.dumps(str(v)) if "," in str(v) else str(v) for v in dropdown)
    if text is None:
        return ""
    if not isinstance(text, (str, int, float)) or isinstance(text, bool):
        raise BadRequest(f"{name} axis: values must be text, got {type(text).__name__}")
    return str(text)
