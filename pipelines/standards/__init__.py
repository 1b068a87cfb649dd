"""Content standards and provenance: the AI-source mark in every file (XMP, optional C2PA), an
optional invisible watermark, an optional safety check and the owner's blocked terms.

``Standards`` is the engine's one object for all of them, built from the launch flags:

- ``prompt_problem``: the owner's blocked terms, on the prompt as it will run (styles, presets and
  prompt lists already expanded), read by every request's check (``Limits.prompt_problem``), so
  nothing queues with one;
- ``screen``: pixels, right after decoding and before anything is saved or sent: the safety check
  (flagged pictures blurred) and then the invisible watermark;
- ``finish``: the bytes of every file written or returned (PNG, JPEG, WebP, GIF, MP4): the XMP
  DigitalSourceType mark, then the C2PA manifest, which must be the last change to the bytes.

The heavy libraries (imwatermark, c2pa, transformers for the checker) load on first use.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import BadRequest, SafetyUnavailable
from ..infotext import VERSION
from . import xmp
from .blocked import BlockedTerms
from .safety import FOLDER_NAME, SafetyChecker, SafetyMode, effective, flagged_note

__all__ = ["Screened", "Standards", "flagged_note", "model_text", "standards_for"]

if TYPE_CHECKING:
    from ..settings import EngineSettings

log = logging.getLogger(__name__)

SOFTWARE = "Atelier"
SOFTWARE_VERSION = VERSION.removeprefix("atelier-")
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif", "bmff": "video/mp4"}


@dataclass
class Screened:
    """A batch after ``screen``: what may be saved and sent, the notes for the user, and the flagged
    originals by their place in the batch (kept in memory for the owner's reveal, never written)."""

    images: list[Image.Image]
    notes: list[str] = field(default_factory=list)
    originals: dict[int, Image.Image] = field(default_factory=dict)
    flagged: list[bool] = field(default_factory=list)  # by place in the batch; empty: not checked


class Standards:
    def __init__(
        self,
        models_dir: Path,
        mark: bool = True,
        c2pa: tuple[Path, Path] | None = None,
        watermark: str = "",
        safety: str = "off",
        blocked_terms: Path | None = None,
        device: str = "cpu",
    ) -> None:
        """Reads and checks every file named (the C2PA certificate and key, the blocked terms): a bad
        one is a ``BadRequest`` naming it, raised here, at start, not at the first picture."""
        from .watermark import Watermark

        self.mark = xmp.packet(SOFTWARE, SOFTWARE_VERSION) if mark else None
        self.signer = None
        if c2pa is not None:
            from .c2pa_sign import C2paSigner

            self.signer = C2paSigner.load(*c2pa)
        self.watermark = Watermark.parse(watermark) if watermark else None
        self.safety_mode = SafetyMode.parse(safety)
        self.models_dir = Path(models_dir)
        self.device = device
        self._checker: SafetyChecker | None = None
        self._checker_lock = threading.Lock()
        # The owner's list: the launch flag's file, and the terms added in Settings (``set_page_terms``).
        self.file_terms = BlockedTerms.from_file(blocked_terms) if blocked_terms else BlockedTerms()
        self.page_terms = BlockedTerms()
        self.blocked = self.file_terms

    # -- before a job queues ----------------------------------------------------------------
    def check_ready(self) -> None:
        """``SafetyUnavailable`` when the owner requires a safety check this server cannot run."""
        if self.safety_mode is SafetyMode.REQUIRED and self.checker is None:
            raise SafetyUnavailable(self._missing_model())

    def prompt_problem(self, prompt: str) -> str | None:
        """The blocked term in ``prompt`` as a request's problem (``Limits.prompt_problem``), or None.
        Checked as written and as the model reads it: tags taken out and brackets resolved join what
        they split (``go<lora:x:0>re`` and ``(go)(re)`` read "gore")."""
        for text in (prompt, model_text(prompt)):
            try:
                self.blocked.check(text)
            except BadRequest as exc:
                return "; ".join(exc.problems)
        return None

    def _missing_model(self) -> str:
        folder = self.models_dir / FOLDER_NAME
        return f"the safety check is required on this server but its model is missing in {folder}: nothing is drawn"

    def set_page_terms(self, text: str) -> BlockedTerms:
        """The terms the owner keeps in Settings, added to the flag's file (``BadRequest`` for a bad
        line: the lists in force stay as they were). Returns the list now in force."""
        page = BlockedTerms.parse(text, source="the blocked terms in Settings")
        self.page_terms = page
        self.blocked = BlockedTerms((*self.file_terms.terms, *page.terms), source="the blocked terms")
        return self.blocked

    # -- pixels -------------------------------------------------------------------------------
    @property
    def checker(self) -> SafetyChecker | None:
        """The safety-checker model when ``models/safety-checker`` holds one (looked for again after
        the owner adds it, without a restart)."""
        with self._checker_lock:
            if self._checker is None:
                self._checker = SafetyChecker.find(self.models_dir, self.device)
            return self._checker

    def checks(self, safety_check: bool | None = None) -> bool:
        """Whether pictures of a job with this wish go through the safety check."""
        return effective(self.safety_mode, safety_check)[0]

    def screen(self, images: list[Image.Image], safety_check: bool | None = None) -> Screened:
        """The safety check (when on, see ``safety.effective``) then the watermark, on a decoded batch."""
        screened = Screened(list(images))
        on, note = effective(self.safety_mode, safety_check)
        if note:
            screened.notes.append(note)
        if on:
            checker = self.checker
            if checker is None:
                # A check the owner asked for and cannot run must not pass pictures unchecked.
                if self.safety_mode is SafetyMode.REQUIRED:
                    raise SafetyUnavailable(self._missing_model())
                screened.notes.append("the safety check is on but its model is missing: pictures were not checked")
            else:
                result = checker.screen(screened.images)
                screened.images = list(result.images)
                # The caller says which of its pictures were flagged (a batch is one part of a request).
                screened.flagged = [bool(flag) for flag in result.flagged]
                if self.safety_mode is not SafetyMode.REQUIRED:  # required: nobody sees the original
                    screened.originals = dict(result.originals)
        if self.watermark is not None:
            for index, image in enumerate(screened.images):
                screened.images[index], small = self.watermark.apply(image)
                if small and small not in screened.notes:
                    screened.notes.append(small)
        return screened

    # -- bytes --------------------------------------------------------------------------------
    def finish(self, data: bytes) -> bytes:
        """A file's bytes as they leave: the XMP mark, then (last) the C2PA manifest."""
        if self.mark is not None:
            data = xmp.embed(data, self.mark)
        if self.signer is not None:
            mime = MIMES.get(xmp.kind(data), "")
            data = self.signer.sign(data, mime, SOFTWARE, SOFTWARE_VERSION)
        return data

    def describe(self) -> list[str]:
        """What this server does, for Settings and the log."""
        lines = [
            "AI-source mark (XMP DigitalSourceType) in every file: " + ("on" if self.mark else "off"),
            "C2PA manifest: " + ("signed with the owner's certificate" if self.signer else "off"),
            "invisible watermark: " + (f"on ({self.watermark.label})" if self.watermark else "off"),
            f"safety check: {self.safety_mode.value}",
            f"blocked terms: {len(self.blocked)}",
        ]
        return lines


def model_text(prompt: str) -> str:
    """``prompt`` as the text encoder reads it: LoRA and ``{image:...}`` tags out, weights and
    brackets resolved, the pieces joined (BREAK kept as a word)."""
    from ..guidance.sources import split_image_tags
    from ..lora.tags import without_tags
    from ..prompts.weights import BREAK, parse_weights

    pieces = parse_weights(split_image_tags(without_tags(prompt))[0])
    return "".join(" BREAK " if piece == BREAK else piece[0] for piece in pieces)


def standards_for(settings: EngineSettings) -> Standards:
    """The engine's standards from its settings (``BadRequest`` for a bad certificate, key or list)."""
    if (settings.c2pa_cert is None) != (settings.c2pa_key is None):
        from ..errors import BadRequest

        raise BadRequest("C2PA signing needs both the certificate (--c2pa-cert) and its key (--c2pa-key)")
    c2pa = (Path(settings.c2pa_cert), Path(settings.c2pa_key)) if settings.c2pa_cert and settings.c2pa_key else None
    return Standards(
        settings.models_dir, settings.ai_mark, c2pa, settings.watermark, settings.safety_check,
        settings.blocked_terms, "cpu",
    )  # fmt: skip
