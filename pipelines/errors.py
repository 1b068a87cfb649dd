"""Typed errors of the engine.

Each front door (web page, REST API, scripts) turns these into its own message: the page into a
``gr.Error``, the API into a 4xx/5xx with the same text. Messages name the offending values.
"""

from __future__ import annotations


class AtelierError(Exception):
    """Base of every error the engine raises on purpose."""

    http_status = 500


class BadRequest(AtelierError, ValueError):
    """A request field is out of range or inconsistent; the message says which and why."""

    http_status = 422

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class ModelUnavailable(AtelierError):
    """A model cannot be found, downloaded or loaded. The message says what to do instead."""

    http_status = 404

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(f"Model '{model}' is not available: {reason}")


class ModelRefused(ModelUnavailable):
    """A file the engine will not load on purpose (pickle checkpoints, unknown architectures)."""

    http_status = 415


class OutOfMemory(AtelierError):
    """The device ran out of memory; the engine has freed what it could."""

    http_status = 507


class QueueFull(AtelierError):
    """Too many jobs are already waiting for the device; the caller should try again later."""

    http_status = 503


class ShuttingDown(QueueFull):
    """The engine is closing (its server is stopping): it takes no new work."""


class Interrupted(AtelierError):
    """The job was stopped by its owner. The unfinished batch is discarded; batches that finished
    before the stop are in ``job.images`` (and saved, when saving was asked for)."""

    http_status = 409


class SafetyUnavailable(AtelierError):
    """The owner requires the safety check and its model is missing: nothing is drawn unchecked."""

    http_status = 503
