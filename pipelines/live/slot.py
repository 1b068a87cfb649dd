"""A live session's slot: the newest request wins, one frame at a time, and live always yields.

``LiveSlot.submit`` files a request and returns a ``LiveTicket`` at once. A request that has not
started when a newer one comes is dropped (its ticket says it was superseded) and never runs; the
slot runs at most one frame at a time. Frames go through ``Engine.submit_work`` + ``run_now``, the
one fair queue everyone's jobs use, but a frame is handed to that queue only while the device is
idle (no job runs, none waits). A frame that gets the device after someone has started waiting
steps aside at once, and a running frame stops at the end of its current step when someone starts
waiting. So a normal job waits for at most the one live frame running when it came, and usually
for one step of it. A frame that stepped aside goes back to its slot, unless something newer is there.

Slots know nothing of each other (there is no shared state): after each frame a slot pauses for a
few milliseconds before it hands the next, which lets another slot that waits for an idle device
find one, so live sessions take turns. Live frames are never saved; ``keep`` saves the latest one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import AtelierError, BadRequest, Interrupted, ShuttingDown
from ..jobs import Job, Progress
from ..requests import MAX_SEED, Txt2Img

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger(__name__)

POLL_SECONDS = 0.002  # how often a waiting frame looks for an idle device: milliseconds of latency at most
TURN_SECONDS = 3 * POLL_SECONDS  # the pause after a frame, long enough for another waiting slot to see the idle device
HISTORY = 64  # recent frames kept for the readout and for tests
FPS_WINDOW = 10  # frames the frame rate is measured over
FPS_GAP_SECONDS = 1.0  # a longer pause between two frames starts a new run of frames


@dataclass(eq=False)  # a job is itself: the engine's queue finds it by identity
class LiveJob(Job):
    """A live frame's job: the engine runs it like any other; slots tell it apart to yield to the rest."""

    session: str = ""


@dataclass(frozen=True)
class LiveFrame:
    """One finished live picture and its timings (``time.perf_counter`` seconds)."""

    ticket: int
    image: Image.Image
    infotext: str
    seed: int
    request: Txt2Img  # as it ran: sizes filled in, sampler names as the infotext writes them
    model: str
    model_hash: str
    requested: float  # when the request reached the slot
    started: float  # when the device began it
    finished: float
    notes: tuple[str, ...] = ()

    @property
    def latency(self) -> float:
        """From the request to the finished picture: what the artist waits."""
        return self.finished - self.requested

    @property
    def seconds(self) -> float:
        """Device time of the frame alone."""
        return self.finished - self.started


@dataclass(frozen=True)
class LiveOutcome:
    """How a ticket ended: a frame, superseded by a newer request, or an error."""

    ticket: int
    frame: LiveFrame | None = None
    superseded: bool = False
    error: Exception | None = None


class LiveTicket:
    """One submitted request; ``wait`` (or awaiting ``future``) gives how it ended."""

    def __init__(self, number: int, request: Txt2Img) -> None:
        self.number = number
        self.request = request
        self.requested = time.perf_counter()
        # A future, so that an async page handler can await it without holding a thread.
        self.future: Future[LiveOutcome] = Future()

    def resolve(self, outcome: LiveOutcome) -> None:
        with contextlib.suppress(InvalidStateError):  # the first word stands: a late error never replaces a frame
            self.future.set_result(outcome)

    @property
    def done(self) -> bool:
        return self.future.done()

    def wait(self, timeout: float | None = None) -> LiveOutcome:
        """The outcome; ``TimeoutError`` when it has not come within ``timeout`` seconds."""
        try:
            return self.future.result(timeout)
        except FutureTimeout as exc:
            raise TimeoutError(f"live request {self.number} has not finished within {timeout} s") from exc


class LiveSlot:
    """One live session's latest-wins slot. ``seed`` (random when not given) replaces a request's
    seed of -1, so the picture changes only with the input."""

    def __init__(self, engine: Engine, session: str = "", seed: int | None = None) -> None:
        self.engine = engine
        self.session = session
        self.seed = seed if seed is not None else random.randint(0, MAX_SEED)
        self.frames: deque[LiveFrame] = deque(maxlen=HISTORY)
        self.submitted = 0
        self.superseded = 0  # requests dropped unrun because a newer one came
        self.yielded = 0  # times a frame stepped aside for someone else's job
        self.last_used = time.monotonic()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pending: LiveTicket | None = None
        self._running: LiveTicket | None = None
        self._last: LiveTicket | None = None  # the ticket of the newest frame
        self._pumping = False

    # -- asking ------------------------------------------------------------------------------
    def submit(self, request: Txt2Img) -> LiveTicket:
        """File ``request`` as the newest; a pending older one is superseded. ``BadRequest`` at once
        for a request the engine would refuse; ``ShuttingDown`` once the slot or engine is closed."""
        if request.seed == -1:
            request = request.replace(seed=self.seed)
        request, _ = request.checked(self.engine.limits)
        with self._lock:
            if self._closed.is_set() or self.engine.closed:
                raise ShuttingDown("live mode has ended here: the session or the server closed")
            self.last_used = time.monotonic()
            ticket, dropped = self._same(request)
            start = False
            if ticket is None:
                self.submitted += 1
                ticket = LiveTicket(self.submitted, request)
                dropped, self._pending = self._pending, ticket
                if dropped is not None:
                    self.superseded += 1
                start, self._pumping = not self._pumping, True
        if dropped is not None:
            dropped.resolve(LiveOutcome(dropped.number, superseded=True))
        if start:
            threading.Thread(target=self._pump, name=f"live-{self.session[:12]}", daemon=True).start()
        return ticket

    def _same(self, request: Txt2Img) -> tuple[LiveTicket | None, LiveTicket | None]:
        """The ticket that already draws ``request`` (pages repeat a change event now and then, and a
        change may be undone), and the pending one that this drops; (None, None) when none does.
        With the lock held."""
        pending = self._pending
        if self._running is not None:
            if self._running.request != request:
                return (pending, None) if pending is not None and pending.request == request else (None, None)
            self._drop_pending()
            return self._running, pending
        if pending is not None and pending.request == request:
            return pending, None
        if self._last is not None and self._last.request == request:  # nothing runs: this picture is the newest
            self._drop_pending()
            return self._last, pending
        return None, None

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending = None
            self.superseded += 1

    def ask(self, request: Txt2Img, timeout: float | None = None) -> LiveOutcome:
        """Submit and wait for the outcome."""
        return self.submit(request).wait(timeout)

    @property
    def busy(self) -> bool:
        """A request waits or runs."""
        with self._lock:
            return self._pending is not None or self._running is not None

    @property
    def running(self) -> LiveTicket | None:
        """The ticket whose frame is on the device now."""
        with self._lock:
            return self._running

    @property
    def latest(self) -> LiveFrame | None:
        return self.frames[-1] if self.frames else None

    def fps(self) -> float:
        """Frames per second over the latest unbroken run of frames (up to ``FPS_WINDOW``); with a
        single frame, the rate its latency allows."""
        frames = list(self.frames)[-FPS_WINDOW:]
        if not frames:
            return 0.0
        run = [frames[-1]]
        for frame in reversed(frames[:-1]):
            if run[-1].finished - frame.finished > FPS_GAP_SECONDS:
                break
            run.append(frame)
        span = run[0].finished - run[-1].finished
        if len(run) > 1 and span > 0:
            return (len(run) - 1) / span
        return 1.0 / max(frames[-1].latency, 1e-6)

    def keep(self, frame: LiveFrame | None = None) -> Path:
        """Save ``frame`` (the latest when not given) to the gallery with its infotext."""
        frame = frame or self.latest
        if frame is None:
            raise BadRequest("there is no live picture to keep yet: turn Live on and wait for the first picture")
        fields = frame.request.fields() | {"model": frame.model, "seed": frame.seed}
        return self.engine.outputs.save(frame.image, frame.infotext, fields, frame.seed)

    def close(self) -> None:
        """End the session: a pending request is dropped (superseded); a running frame finishes."""
        with self._lock:
            self._closed.set()
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.resolve(LiveOutcome(pending.number, superseded=True))

    # -- the slot's worker -------------------------------------------------------------------
    def _pump(self) -> None:
        """Hand frames to the engine while requests come; ends when the slot is empty."""
        handed = False
        while True:
            with self._lock:
                if self._pending is None or self._closed.is_set():
                    self._pumping = False
                    return
            if handed:
                self._closed.wait(TURN_SECONDS)  # another slot's turn, if one waits
            if not self._wait_for_turn():
                continue  # closed: the loop ends above
            with self._lock:
                if self._pending is None:
                    continue
                model = self._pending.request.model
                size = f"{self._pending.request.width}x{self._pending.request.height}, live"
            job = LiveJob(session=self.session)
            handed = True
            try:
                self.engine.submit_work(job, model, functools.partial(self._frame, job, model), size).result()
            except Exception as exc:  # given to the ticket it belongs to; the pump goes on
                self._failed(exc)

    def _wait_for_turn(self) -> bool:
        """Wait until the device is idle: no job runs, none waits. False when the slot closed meanwhile."""
        while not self._closed.is_set():
            if self.engine.closed:
                self._failed(ShuttingDown("the server is stopping and takes no new jobs"))
                return False
            if self.engine.queue_length == 0 and self.engine.current_job is None:
                return True
            self._closed.wait(POLL_SECONDS)
        return False

    def _frame(self, job: LiveJob, model: str) -> None:
        """On the device: run the newest request, unless someone else now waits for the device."""
        with self._lock:
            ticket = self._pending
            if ticket is None or self._closed.is_set() or ticket.request.model != model:
                return  # nothing to do, or a new model: the pump hands it again (the queue fetches it)
            if self.engine.queue_length > 0:  # someone came while this frame was handed: their turn first
                self.yielded += 1
                return
            self._pending, self._running = None, ticket
        started = time.perf_counter()
        try:
            result = self.engine.run_now(ticket.request, job, on_progress=functools.partial(self._step, job))
        except Interrupted:
            self._put_back(ticket)
            return
        except AtelierError as exc:
            self._finish(ticket, LiveOutcome(ticket.number, error=exc))
            return
        frame = LiveFrame(
            ticket.number, result.images[0], result.infotexts[0], result.seeds[0], result.request, result.model,
            result.model_hash, ticket.requested, started, time.perf_counter(), tuple(result.notes),
        )  # fmt: skip
        self._finish(ticket, LiveOutcome(ticket.number, frame=frame))

    def _step(self, job: LiveJob, progress: Progress) -> None:
        # Someone started waiting: stop at this step; the frame goes back to the slot to run later.
        if progress.step < progress.total and self.engine.queue_length > 0:
            job.interrupt()

    def _finish(self, ticket: LiveTicket, outcome: LiveOutcome) -> None:
        with self._lock:
            if self._running is ticket:
                self._running = None
            if outcome.frame is not None:
                self.frames.append(outcome.frame)
                self._last = ticket
        ticket.resolve(outcome)

    def _put_back(self, ticket: LiveTicket) -> None:
        """A frame that stepped aside: it waits again, unless a newer request has come meanwhile."""
        with self._lock:
            self._running = None
            self.yielded += 1
            newer = self._pending is not None or self._closed.is_set()
            if not newer:
                self._pending = ticket
            else:
                self.superseded += 1
        if newer:
            ticket.resolve(LiveOutcome(ticket.number, superseded=True))

    def _failed(self, error: Exception) -> None:
        """The frame's work failed outside ``run_now`` (out of memory, a model that will not load, the
        server stopping): its ticket, or the pending one when nothing had started, gets the error."""
        with self._lock:
            ticket = self._running or self._pending
            if ticket is self._running:
                self._running = None
            else:
                self._pending = None
        if ticket is not None:
            log.warning("live frame %d of session %s failed: %s", ticket.number, self.session, error)
            ticket.resolve(LiveOutcome(ticket.number, error=error))


class LiveSessions:
    """The live slots of one front door (the page, the ``/live`` endpoint), one per caller; a slot
    unused for ``idle_seconds`` is closed when another is asked for."""

    def __init__(self, engine: Engine, idle_seconds: float = 900.0) -> None:
        self.engine = engine
        self.idle_seconds = idle_seconds
        self._slots: dict[str, LiveSlot] = {}
        self._lock = threading.Lock()

    def slot(self, key: str) -> LiveSlot:
        now = time.monotonic()
        with self._lock:
            idle = [k for k, s in self._slots.items() if k != key and now - s.last_used > self.idle_seconds]
            stale = [self._slots.pop(k) for k in idle if not self._slots[k].busy]
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = LiveSlot(self.engine, key)
        for old in stale:
            old.close()
        return slot

    def get(self, key: str) -> LiveSlot | None:
        with self._lock:
            return self._slots.get(key)

    def drop(self, key: str) -> None:
        with self._lock:
            slot = self._slots.pop(key, None)
        if slot is not None:
            slot.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)
