"""The optional safety check: a local safety-checker model flags pictures, and flagged pictures are
replaced by a strongly blurred version before anything is saved or sent.

The model is diffusers' ``StableDiffusionSafetyChecker`` in the layout of the hub repository
``CompVis/stable-diffusion-safety-checker`` (a CLIP vision tower, a projection and concept
embeddings with thresholds), put by the owner in ``models/safety-checker/``. Nothing is downloaded:
without the folder the check is simply unavailable, and ``missing_help`` says how to get it.

Unlike diffusers, which replaces a flagged picture with a black one, a flagged picture here is
blurred until its content is unreadable (``blur``): the owner still sees the colours, and the page
may let them reveal the original, which is kept in memory only (the caller's business, not ours).

Modes (``SafetyMode``), set by the server owner:

- ``off``: no check unless a request asks for one (the default, as in A1111);
- ``on``: every picture is checked unless a request turns the check off;
- ``required``: every picture is checked; a request to turn it off is ignored, with a note.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter

from ..errors import BadRequest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HUB_ID = "CompVis/stable-diffusion-safety-checker"
FOLDER_NAME = "safety-checker"  # inside the models folder
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is used
BLUR_CELLS = 8  # a blurred picture keeps this many colour cells along its longer side, no more
BLUR_RADIUS_SHARE = 1 / 8  # then a Gaussian this share of the longer side wide hides the cell edges


class SafetyMode(str, Enum):
    OFF = "off"
    ON = "on"
    REQUIRED = "required"

    @classmethod
    def parse(cls, text: str | SafetyMode) -> SafetyMode:
        """``"off"``, ``"on"`` or ``"required"`` (any case, spaces around ignored)."""
        if isinstance(text, SafetyMode):
            return text
        value = str(text).strip().lower()
        for mode in cls:
            if mode.value == value:
                return mode
        choices = ", ".join(mode.value for mode in cls)
        raise BadRequest(f"safety check mode {text!r} is not one of: {choices}")


REQUIRED_NOTE = "The safety check is required on this server: the request to turn it off was ignored."


def effective(server_mode: SafetyMode | str, requested: bool | None) -> tuple[bool, str | None]:
    """Whether a request's pictures are checked, and a note for the caller when its wish was overruled.

    ``requested`` is the request's own choice (None: it did not say). In ``required`` mode the check
    is on whatever was asked; a caller asking for it off gets the pictures checked anyway and
    ``REQUIRED_NOTE``, not an error, so clients that always send the field keep working.
    """
    mode = SafetyMode.parse(server_mode)
    if mode is SafetyMode.REQUIRED:
        return True, (REQUIRED_NOTE if requested is False else None)
    if requested is not None:
        return bool(requested), None
    return mode is SafetyMode.ON, None


def blur(image: Image.Image) -> Image.Image:
    """The picture blurred until its content is unreadable, at the same size.

    It is first reduced to ``BLUR_CELLS`` colour cells on its longer side, which throws the detail
    away for good (a Gaussian alone could in part be undone), then brought back to full size and
    smoothed so no cell edges show. What is left is the picture's colours where they were.
    """
    mode = image.mode if image.mode in ("RGB", "RGBA", "L") else "RGB"
    source = image.convert(mode)
    width, height = source.size
    scale = BLUR_CELLS / max(width, height)
    cells = (max(1, round(width * scale)), max(1, round(height * scale)))
    coarse = source.resize(cells, Image.Resampling.BOX)
    spread = coarse.resize((width, height), Image.Resampling.BILINEAR)
    return spread.filter(ImageFilter.GaussianBlur(max(width, height) * BLUR_RADIUS_SHARE))


def flagged_note(flags: list[bool]) -> str | None:
    """The note that goes with a result whose pictures were blurred (None when none were)."""
    numbers = [str(index + 1) for index, flagged in enumerate(flags) if flagged]
    if not numbers:
        return None
    if len(flags) == 1:
        return "The safety check flagged this picture: it is blurred."
    if len(numbers) == 1:
        return f"The safety check flagged picture {numbers[0]} of {len(flags)}: it is blurred."
    return f"The safety check flagged pictures {', '.join(numbers)} of {len(flags)}: they are blurred."


def missing_help(models_dir: Path) -> str:
    """What the Settings tab says when there is no checker model: where to put which files."""
    folder = Path(models_dir) / FOLDER_NAME
    return (
        f"The safety check is optional and needs a safety-checker model, which is not installed: there is no "
        f"folder {folder}. To use it, download the Hugging Face model {HUB_ID} and put its files "
        f"{CONFIG_FILE}, {WEIGHT_FILES[0]} and {PROCESSOR_FILE} together in {folder} "
        f"(for example: hf download {HUB_ID} {CONFIG_FILE} {WEIGHT_FILES[0]} {PROCESSOR_FILE} --local-dir "
        f'"{folder}"), then restart Atelier. {WEIGHT_FILES[1]} instead of {WEIGHT_FILES[0]} works too. Nothing is '
        f"downloaded for you, and without the model every other feature works as before."
    )


@dataclass
class Screening:
    """The pictures of one result after the check."""

    images: list[Image.Image]  # what may be saved or sent: flagged pictures blurred, others as they were
    flagged: list[bool]
    originals: dict[int, Image.Image] = field(default_factory=dict)  # flagged originals by index: memory only
    note: str | None = None


class SafetyChecker:
    """A safety-checker model in a folder, loaded on its first check and then kept.

    One lock serialises loading and checking, so two threads checking at once neither load the model
    twice nor share its activations.
    """

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None

    @classmethod
    def find(cls, models_dir: Path, device: str = "cpu") -> SafetyChecker | None:
        """The checker in ``models_dir/safety-checker`` (not loaded yet), or None when that folder is absent."""
        folder = Path(models_dir) / FOLDER_NAME
        return cls(folder, device) if folder.is_dir() else None

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> SafetyChecker:
        """A checker loaded now (to report a broken folder at startup rather than on the first picture)."""
        checker = cls(folder, device)
        checker.ensure_loaded()
        return checker

    missing_help = staticmethod(missing_help)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def missing(self) -> list[str]:
        """The files the folder lacks (empty when it looks complete); reads no weights."""
        present = {
            CONFIG_FILE: (self.folder / CONFIG_FILE).is_file(),
            f"{WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})": self._weights() is not None,
            PROCESSOR_FILE: (self.folder / PROCESSOR_FILE).is_file(),
        }
        return [name for name, there in present.items() if not there]

    def ensure_loaded(self) -> None:
        with self._lock:
            self._load_locked()

    def check(self, images: list[Image.Image]) -> list[bool]:
        """One flag per picture, True when the model flags it. Nothing is blacked out or changed."""
        if not images:
            return []
        with self._lock:
            self._load_locked()
            return self._flags([image.convert("RGB") for image in images])

    def screen(self, images: list[Image.Image]) -> Screening:
        """Check ``images`` and blur the flagged ones: what a caller saves or sends instead of them."""
        flags = self.check(images)
        shown = [blur(image) if flagged else image for image, flagged in zip(images, flags, strict=True)]
        originals = {index: image for index, (image, flagged) in enumerate(zip(images, flags, strict=True)) if flagged}
        if originals:
            log.info("safety check: %d of %d pictures flagged and blurred", len(originals), len(images))
        return Screening(shown, flags, originals, flagged_note(flags))

    def unload(self) -> None:
        """Drop the model (it loads again on the next check)."""
        with self._lock:
            self._model = self._processor = None

    # -- internals ------------------------------------------------------------------------------
    def _weights(self) -> Path | None:
        return next((self.folder / name for name in WEIGHT_FILES if (self.folder / name).is_file()), None)

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        if not self.folder.is_dir():
            raise BadRequest(f"safety checker folder {self.folder} does not exist; {missing_help(self.folder.parent)}")
        lacking = self.missing()
        if lacking:
            raise BadRequest(
                f"safety checker folder {self.folder} is incomplete: missing {', '.join(lacking)} "
                f"(the files of {HUB_ID})"
            )
        weights = self._weights()
        # Imported here: the CLIP and diffusers modules cost a second, and most servers never check.
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessorPil

        try:
            # A .bin file goes through transformers' weights-only loader, which runs no pickled code.
            model: Any = StableDiffusionSafetyChecker.from_pretrained(
                self.folder,
                dtype=torch.float32,
                local_files_only=True,
                use_safetensors=weights is not None and weights.suffix == ".safetensors",
            )
            processor = CLIPImageProcessorPil.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise BadRequest(f"safety checker in {self.folder} could not be loaded: {error}") from error
        self._model = model.to(self.device).eval()
        self._processor = processor
        log.info("safety checker loaded from %s on %s", self.folder, self.device)

    def _flags(self, images: list[Image.Image]) -> list[bool]:
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

        model = self._model
        pixels = self._processor(images=images, return_tensors="pt").pixel_values
        with torch.no_grad():
            pooled = model.vision_model(pixels.to(self.device, torch.float32))[1]
            embeds = model.visual_projection(pooled)
            special = _numpy(cosine_distance(embeds, model.special_care_embeds))
            concepts = _numpy(cosine_distance(embeds, model.concept_embeds))
        special_limits = _numpy(model.special_care_embeds_weights)
        concept_limits = _numpy(model.concept_embeds_weights)
        return [_decide(special[row], special_limits, concepts[row], concept_limits) for row in range(len(images))]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def _decide(special: np.ndarray, special_limits: np.ndarray, concepts: np.ndarray, limits: np.ndarray) -> bool:
    """The flag of one picture, by the rule of diffusers' ``StableDiffusionSafetyChecker.forward``
    (scores rounded to 3 places; once a special-care concept fires, every later score gets +0.01),
    computed here because ``forward`` also blacks out the pictures it flags."""
    adjustment = 0.0
    for cosine, limit in zip(special, special_limits, strict=True):
        if round(float(cosine) - float(limit) + adjustment, 3) > 0:
            adjustment = 0.01
    return any(
        round(float(cosine) - float(limit) + adjustment, 3) > 0 for cosine, limit in zip(concepts, limits, strict=True)
    )
