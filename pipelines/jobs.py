"""What a caller holds while the engine works for it: the job (its progress and its Stop and Skip
switches), the progress reports, and the finished result."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .requests import Request


@dataclass
class Progress:
    job_id: str
    step: int  # steps done over the whole job (all batches)
    total: int
    eta_seconds: float
    preview: Image.Image | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(eq=False)  # a job is itself: queues find it by identity
class Job:
    """One caller's generation: its progress, and the switch that stops it."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued, running, done, interrupted, failed
    step: int = 0
    total: int = 0
    started: float = 0.0
    preview: Image.Image | None = None
    images: list[Image.Image] = field(default_factory=list)  # finished so far, for callers that poll
    paths: list[Path] = field(default_factory=list)  # where finished images were saved, when they were
    safety_check: bool | None = None  # the caller's wish (None: the server's setting decides)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _skip: threading.Event = field(default_factory=threading.Event, repr=False)

    def interrupt(self) -> None:
        self._stop.set()

    def skip(self) -> None:
        """Finish the batch on the device now, as it is, and go on with the next (A1111's Skip)."""
        self._skip.set()

    @property
    def skipping(self) -> bool:
        return self._skip.is_set()

    def skip_done(self) -> None:
        """The skipped batch is over: the next one runs in full."""
        self._skip.clear()

    @property
    def interrupted(self) -> bool:
        return self._stop.is_set()


@dataclass
class Result:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    request: Request
    model: str
    model_hash: str
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # where each image was saved, when it was
    subseeds: list[int] = field(default_factory=list)  # each image's variation seed (used when its strength > 0)
    # Pictures the safety check blurred, by their place in ``images``: the originals, for the owner's
    # reveal in the page; never saved, never sent by the API.
    hidden: dict[int, Image.Image] = field(default_factory=dict)
