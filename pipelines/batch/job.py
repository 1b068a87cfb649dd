"""A prompt list or a dataset as ONE job in the engine's fair queue.

The work runs on the device thread holding the slot (``Engine.submit_work``) and makes its
pictures one batch at a time with ``Engine.run_now``: Stop ends the batch being drawn and keeps
every batch made before it (in the gallery for a list; in the dataset folder, listed in its
``metadata.jsonl``, for a dataset). ``BatchProgress`` says how far the whole job is, since each
``run_now`` counts the steps of its own batch only.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import Interrupted
from ..requests import MAX_SEED, Txt2Img
from .dataset import (
    DATASETS,
    METADATA,
    DatasetSpec,
    DatasetWriter,
    check_spec,
    new_folder,
    parse_classes,
    remove_if_empty,
)
from .prompt_list import Style, parse_lines, requests_from

if TYPE_CHECKING:
    from ..engine import Engine, Job, Result


@dataclass
class Picture:
    """One finished picture of the job."""

    image: Image.Image
    path: Path | None  # where it was saved (None when saving failed: the notes say why)
    seed: int
    infotext: str
    fields: dict[str, Any]  # the request fields that made it, with its seed


@dataclass
class BatchProgress:
    """How far a job is, for a page that polls while the device thread appends."""

    total: int = 0  # pictures the job makes when it is not stopped
    pictures: list[Picture] = field(default_factory=list)  # finished so far, in order
    current: str = ""  # what is being drawn now (a line's number and prompt, or a class)

    @property
    def done(self) -> int:
        return len(self.pictures)


@dataclass
class BatchResult:
    pictures: list[Picture]
    total: int
    notes: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    folder: Path | None = None  # a dataset's folder
    name: str = ""  # a dataset's name: the one asked for, or the free one next to it

    @property
    def images(self) -> list[Image.Image]:
        return [picture.image for picture in self.pictures]

    @property
    def paths(self) -> list[Path]:
        return [picture.path for picture in self.pictures if picture.path is not None]

    @property
    def metadata(self) -> Path | None:
        return self.folder / METADATA if self.folder is not None else None


@dataclass(frozen=True)
class _Batch:
    """One ``run_now`` call: a request of one batch, and what it belongs to."""

    request: Txt2Img
    label: str  # "line 3" or the dataset class
    caption: str = ""  # a dataset's caption for the metadata


def prompt_list(engine: Engine, text: str, base: Txt2Img, job: Job | None = None) -> BatchResult:
    """Every line of ``text`` over ``base``, saved to the gallery like any generation."""
    return submit_prompt_list(engine, text, base, job).result()


def submit_prompt_list(
    engine: Engine, text: str, base: Txt2Img, job: Job | None = None, progress: BatchProgress | None = None,
    style: Style | None = None,
) -> Future[BatchResult]:  # fmt: skip
    """Queue a list as one job; bad lines (their numbers named) and a full queue raise here."""
    lines = parse_lines(text)
    requests = requests_from(lines, base, engine.limits, style)
    batches = [
        _Batch(_one_batch(request, index), f"line {line.number}")
        for line, request in zip(lines, requests, strict=True)
        for index in range(request.batch_count)
    ]
    return _submit(engine, batches, job, progress, dataset=None)


def make_dataset(
    engine: Engine, classes: str, name: str, per_prompt: int, base: Txt2Img, job: Job | None = None
) -> BatchResult:
    """``per_prompt`` pictures of every class of ``classes`` in a new dataset folder (see ``dataset``)."""
    return submit_dataset(engine, dataset_spec(engine, classes, name, per_prompt, base), job).result()


def dataset_spec(
    engine: Engine, classes: str, name: str, per_prompt: Any, base: Txt2Img, style: Style | None = None
) -> DatasetSpec:
    """The dataset's settings, each class's request checked like the list's lines (line numbers named)."""
    parsed = parse_classes(classes)
    spec = check_spec(name, parsed, per_prompt, base, style)
    requests_from([entry.line for entry in parsed], base.replace(batch_count=1), engine.limits, style)
    return spec


def submit_dataset(
    engine: Engine, spec: DatasetSpec, job: Job | None = None, progress: BatchProgress | None = None
) -> Future[BatchResult]:
    """Queue a dataset as one job. Seeds run on from the base seed (a random one for -1) over every
    picture of every class, so no two pictures share one; a class whose line sets ``--seed`` counts
    from its own."""
    first = spec.base.seed if spec.base.seed != -1 else random.randint(0, MAX_SEED)
    batch_size = max(1, spec.base.batch_size)
    batches: list[_Batch] = []
    for number, entry in enumerate(spec.classes):
        request = entry.request(spec.base, spec.style).replace(batch_count=1)
        own = entry.line.fields.get("seed", -1)
        seed = own if own != -1 else first + number * spec.per_prompt
        for start in range(0, spec.per_prompt, batch_size):
            size = min(batch_size, spec.per_prompt - start)
            shifted = request.replace(batch_size=size, seed=(seed + start) % (MAX_SEED + 1))
            batches.append(_Batch(shifted, entry.label, entry.caption))
    return _submit(engine, batches, job, progress, dataset=spec)


def _one_batch(request: Txt2Img, index: int) -> Txt2Img:
    """Batch ``index`` of a request as a request of its own, with the seeds it has in the whole run
    (a seed and a variation seed count on by one a picture, as in one run of the whole request)."""
    changes: dict[str, Any] = {"batch_count": 1}
    for name in ("seed", "subseed"):
        value = getattr(request, name, -1)
        if value != -1:
            changes[name] = (value + index * request.batch_size) % (MAX_SEED + 1)
    return request.replace(**changes)


def _submit(
    engine: Engine, batches: list[_Batch], job: Job | None, progress: BatchProgress | None, dataset: DatasetSpec | None
) -> Future[BatchResult]:
    from ..engine import Job

    job = job or Job()
    progress = progress or BatchProgress()
    progress.total = sum(batch.request.batch_size for batch in batches)
    models = list(dict.fromkeys(batch.request.model or engine.default_model for batch in batches))
    for model in models[1:]:  # downloads never hold the device; the first model's is the queue's own
        engine.manager.fetch(model)
    first = batches[0].request
    size = f"{progress.total} pictures, {first.width or 'native'}x{first.height or 'native'}"

    def work() -> BatchResult:
        return _run(engine, batches, job, progress, dataset)

    return engine.submit_work(job, models[0], work, size)


def _run(
    engine: Engine, batches: list[_Batch], job: Job, progress: BatchProgress, dataset: DatasetSpec | None
) -> BatchResult:
    """On the device thread: every batch in order until the end or a Stop."""
    started = time.perf_counter()
    notes: list[str] = list(dataset.notes) if dataset else []
    folder, name, writer = None, "", None
    if dataset is not None:
        folder, name = new_folder(engine.outputs.root / DATASETS, dataset.name)
        writer = DatasetWriter(folder, engine.outputs.encode)
        if name != dataset.name:
            notes.append(f"a dataset called {dataset.name} exists: this one is {name}")
    stopped = False
    try:
        for batch in batches:
            if job.interrupted:
                raise Interrupted(f"job {job.id} was stopped")
            progress.current = f"{batch.label}: {batch.request.prompt}"
            result = engine.run_now(batch.request, job, save=writer is None)
            job.state = "running"  # run_now ends its own batch as "done"; this job goes on
            notes += [f"{batch.label}: {note}" for note in result.notes]
            for picture in _pictures(result, batch, writer, name):
                progress.pictures.append(picture)
    except Interrupted:
        stopped = True
    finally:  # stopped or failed before its first picture: no empty dataset is left behind
        if folder is not None and not progress.pictures and remove_if_empty(folder):
            folder = None
    if stopped:
        notes.append(_stop_note(progress, folder))
    job.images = [picture.image for picture in progress.pictures]
    job.paths = [picture.path for picture in progress.pictures if picture.path is not None]
    job.state = "interrupted" if stopped else "done"
    seconds = time.perf_counter() - started
    return BatchResult(list(progress.pictures), progress.total, notes, stopped, seconds, folder, name)


def _pictures(result: Result, batch: _Batch, writer: DatasetWriter | None, name: str) -> list[Picture]:
    fields = result.request.fields() | {"model": result.model}
    saved = result.paths if len(result.paths) == len(result.images) else [None] * len(result.images)
    pictures = []
    for image, seed, text, path in zip(result.images, result.seeds, result.infotexts, saved, strict=True):
        own = fields | {"seed": seed}
        if writer is not None:
            # The dataset's own parameters after the picture's, where PNG Info shows them.
            text += f", Dataset: {name}, Class: {batch.label}"
            own |= {"dataset": name, "class": batch.label}
            path = writer.add(image, batch.label, batch.caption, seed, text, own)
        pictures.append(Picture(image, path, seed, text, own))
    return pictures


def _stop_note(progress: BatchProgress, folder: Path | None) -> str:
    kept = f"stopped after {progress.done} of {progress.total} pictures"
    if folder is not None:
        return f"{kept}: {folder.name}/metadata.jsonl lists the {progress.done} made"
    return f"{kept}; the finished ones are kept" if progress.done else f"{kept}; nothing was made"
