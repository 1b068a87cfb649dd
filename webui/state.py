"""Per-app state of the page: the user's saved settings and which session runs which job."""

from __future__ import annotations

import json
import logging
import os
import reprlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pipelines.engine import Job
from pipelines.files import damaged_name, replace_file
from pipelines.outputs import FORMATS

log = logging.getLogger(__name__)


MAX_MODELS_RANGE = (1, 8)
RAM_BUDGET_GB_RANGE = (0, 16384)  # 16 TiB: more than any machine this runs on
THEMES = ("light", "dark")
MAX_SETTINGS_BYTES = 64 * 1024  # the file holds four short values; a bigger one is not ours


class SettingError(ValueError):
    """A setting's value is not one it allows; the message names the value and what is allowed."""


@dataclass(frozen=True)
class UiSettings:
    """What the Settings tab saves in ``<data-dir>/settings.json``. Every value is checked when made,
    so one that exists can always be written and applied."""

    max_models: int = 3
    ram_budget_gb: float = 0.0  # 0: half the machine's memory
    image_format: str = "png"
    theme: str = "light"

    def __post_init__(self) -> None:
        problems = []
        for name in (f.name for f in fields(self)):
            try:
                object.__setattr__(self, name, check_setting(name, getattr(self, name)))
            except SettingError as exc:
                problems.append(str(exc))
        if problems:
            raise SettingError("; ".join(problems))


def check_setting(name: str, value: object) -> int | float | str:
    """``value`` in the type ``UiSettings`` stores for ``name``, or SettingError."""
    if name == "max_models":
        return _whole_number(name, value, *MAX_MODELS_RANGE)
    if name == "ram_budget_gb":
        return _number(name, value, *RAM_BUDGET_GB_RANGE, unit=" (GB)")
    if name == "image_format":
        return _choice(name, value, tuple(FORMATS))
    if name == "theme":
        return _choice(name, value, THEMES)
    raise SettingError(f"there is no setting named {_shown(name)}")


def _whole_number(name: str, value: object, low: int, high: int) -> int:
    # a slider sends 3.0; NaN and the infinities are not whole, so they stay floats and are refused
    number = int(value) if isinstance(value, float) and value.is_integer() else value
    # bool is an int to Python, never to a user
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise SettingError(f"{name} must be a whole number from {low} to {high}, got {_shown(value)}")
    return number


def _number(name: str, value: object, low: int, high: int, unit: str) -> float:
    # NaN fails every comparison, so the range check refuses it along with the infinities
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SettingError(f"{name} must be a number from {low} to {high}{unit}, got {_shown(value)}")
    return float(value)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    """The value as a message shows it: a raw request may send a megabyte of text."""
    return reprlib.repr(value)


class SettingsStore:
    """``settings.json`` in the data folder. A damaged file or a bad value never stops the app:
    it is reported in ``problem`` (for the Settings tab) and in the log, the original is kept aside
    as ``settings.damaged-*.json``, and defaults stand in for what could not be read."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "settings.json"
        self.problem = ""  # what went wrong reading the file; kept until a save writes a good one

    def load(self) -> UiSettings:
        try:
            raw = self._read()
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
            self._set_aside(f"could not be read ({exc})")
            return UiSettings()
        kept: dict[str, Any] = {}  # each value checked by check_setting
        refused = []
        for name in (f.name for f in fields(UiSettings)):
            if name in raw:
                try:
                    kept[name] = check_setting(name, raw[name])
                except SettingError as exc:
                    refused.append(str(exc))
        settings = UiSettings(**kept)
        # with the original aside, the good values are written back so the next start keeps them
        if refused and self._set_aside(f"had bad values ({'; '.join(refused)}); defaults are used for those"):
            self._write_repaired(settings)
        return settings

    def _read(self) -> dict[str, Any]:
        """The file's JSON object; empty when there is no file. OSError or ValueError when damaged."""
        if not self.path.exists():
            return {}
        with open(self.path, "rb") as file:
            content = file.read(MAX_SETTINGS_BYTES + 1)
        if len(content) > MAX_SETTINGS_BYTES:
            raise ValueError(f"larger than {MAX_SETTINGS_BYTES} bytes")
        raw = json.loads(content.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        return raw

    def _set_aside(self, what_happened: str) -> bool:
        """Report the file's problem and move it aside (never over an earlier one); False if it could not move."""
        aside = damaged_name(self.path)
        moved = True
        try:
            os.replace(self.path, aside)
            self.problem = f"Your settings file {what_happened}; it was moved to {aside.name}."
        except OSError as exc:  # a read-only data folder: still start, with defaults
            self.problem = f"Your settings file {what_happened}; it could not be moved aside ({exc})."
            moved = False
        log.error("%s (%s)", self.problem, self.path)
        return moved

    def _write_repaired(self, settings: UiSettings) -> None:
        """Keep the good values for the next start; the original is already aside."""
        try:
            self._write(settings)
        except OSError as exc:
            log.error("could not write the repaired settings to %s: %s", self.path, exc)

    def save(self, settings: UiSettings) -> None:
        """Write the settings; a good file is there now, so a problem found at load is over."""
        self._write(settings)
        self.problem = ""

    def _write(self, settings: UiSettings) -> None:
        """Atomic write: a crash leaves the old file or the new one, never half of one."""
        replace_file(self.path, json.dumps(asdict(settings), indent=2, allow_nan=False).encode("utf-8"))


T = TypeVar("T")


class JobBoard:
    """Which browser session runs which job, so Stop only ever stops the clicker's own job.

    A session holds one job of each ``kind``: a LoRA training ("train") runs for minutes beside the
    pictures its owner keeps generating, and the Train tab's Stop must not end a picture, nor the
    picture's Stop the training."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str, kind: str = "generate") -> Job:
        job = Job()
        with self._lock:
            self._jobs[session, kind] = job
        return job

    def stop(self, session: str, kind: str = "generate") -> bool:
        with self._lock:
            job = self._jobs.get((session, kind))
        if job is None or job.state in ("done", "failed", "interrupted"):
            return False
        job.interrupt()
        return True

    def skip(self, session: str) -> bool:
        """Skip the rest of the clicker's current batch (their own job only)."""
        with self._lock:
            job = self._jobs.get((session, "generate"))
        if job is None or job.state != "running":
            return False
        job.skip()
        return True

    def stream(self, session: str, updates: Callable[[Job], Iterator[T]], kind: str = "generate") -> Iterator[T]:
        """The page's updates of a new job of the session's (``updates(job)``); if the page stops
        listening (the browser went away), a job still queued or running is stopped."""
        job = self.start(session, kind)
        try:
            yield from updates(job)
        finally:
            if job.state in ("queued", "running"):
                job.interrupt()
            self.finish(session, job, kind)

    def finish(self, session: str, job: Job, kind: str = "generate") -> None:
        with self._lock:
            if self._jobs.get((session, kind)) is job:
                del self._jobs[session, kind]
