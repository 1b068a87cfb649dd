"""Per-app state of the page: the user's saved settings and which session runs which job."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipelines.engine import Job
from pipelines.outputs import FORMATS

log = logging.getLogger(__name__)


@dataclass
class UiSettings:
    """What the Settings tab saves in ``<data-dir>/settings.json``."""

    max_models: int = 3
    ram_budget_gb: float = 0.0  # 0: half the machine's memory
    image_format: str = "png"
    theme: str = "light"


class SettingsStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "settings.json"

    def load(self) -> UiSettings:
        if not self.path.exists():
            return UiSettings()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            known = {f.name for f in fields(UiSettings)}
            settings = UiSettings(**{k: v for k, v in raw.items() if k in known})
            if settings.image_format not in FORMATS or settings.theme not in ("light", "dark"):
                raise ValueError(f"unknown image format {settings.image_format!r} or theme {settings.theme!r}")
            float(settings.ram_budget_gb), int(settings.max_models)
            return settings
        except (OSError, ValueError, TypeError) as exc:
            # Keep the damaged file for the user to look at (never over an earlier one); use defaults.
            aside = self.path.with_name(f"settings.damaged-{time.strftime('%Y%m%d-%H%M%S')}.json")
            number = 2
            while aside.exists():
                aside = aside.with_name(f"settings.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{number}.json")
                number += 1
            log.error("settings file %s is damaged (%s); moved it to %s", self.path, exc, aside)
            os.replace(self.path, aside)
            return UiSettings()

    def save(self, settings: UiSettings) -> None:
        """Atomic write: a crash leaves the old file or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(settings), indent=2)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, encoding="utf-8") as temp:
            temp.write(text)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp.name, self.path)


class JobBoard:
    """Which browser session runs which job, so Stop only ever stops the clicker's own job."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Job:
        job = Job()
        with self._lock:
            self._jobs[session] = job
        return job

    def stop(self, session: str) -> bool:
        with self._lock:
            job = self._jobs.get(session)
        if job is None or job.state in ("done", "failed", "interrupted"):
            return False
        job.interrupt()
        return True

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]
