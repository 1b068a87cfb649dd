"""Typed requests, one per mode, shared by the web page, the REST API, scripts and tests.

Validation happens here, before any model is touched, and reports every problem at once with the
offending values (the way diffusers' ``check_inputs`` does). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from . import samplers
from .errors import BadRequest

MAX_SEED = 2**32 - 1
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
# "auto": IP-Adapter when its files are present for the model's family, else reference-only.
REFERENCE_MODES = ("auto", "reference-only", "reference-adain", "reference-adain+attn", "ip-adapter")


@dataclass(frozen=True)
class Limits:
    """Ranges a request must fit. The engine sets ``max_pixels`` from the device's memory."""

    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 100
    min_side: int = 64
    max_side: int = 4096
    max_pixels: int = 2048 * 2048
    max_prompt_chars: int = 20_000
    # The server's content rule for prompts (the owner's blocked terms): the problem with a prompt, or
    # None. Here, so that every request checked anywhere (a list's lines, a plot's cells) obeys it.
    prompt_problem: Callable[[str], str | None] | None = None


@dataclass
class Txt2Img:
    """Text to image. ``width``/``height`` of 0 mean "the model's native size"."""

    mode: ClassVar[str] = "txt2img"

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    sampler_name: str = samplers.DEFAULT_SAMPLER
    schedule_type: str = samplers.DEFAULT_SCHEDULE
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 0
    height: int = 0
    seed: int = -1
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    # A reference picture guides the generation (issue 17); the prompt may name one with {image...}.
    reference_image: Image.Image | None = None
    reference_hash: str = ""  # a reference kept beside the outputs, by the hash its infotext records
    reference_mode: str = "auto"
    reference_strength: float = 1.0
    reference_fidelity: float = 0.5  # "style fidelity": how much the unconditional pass keeps its own way
    reference_start: float = 0.0  # the fraction of the steps where the reference starts / stops guiding
    reference_end: float = 1.0
    # Variation seeds (A1111's subseed): the noise of ``subseed`` blended into the seed's by
    # ``subseed_strength``, so a picture can be nudged without losing it. ``seed_resize_from_w/h``
    # draws the noise as for that size, so a seed keeps its composition at another size.
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # Hires fix (text to image only): a first pass at width x height, upscaled by ``hr_upscaler`` to
    # ``hr_scale`` times (or to hr_resize_x x hr_resize_y), then redrawn by an image-to-image pass of
    # ``hr_second_pass_steps`` steps (0: as many as the first) at ``denoising_strength``.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    denoising_strength: float = 0.7

    def fields(self) -> dict[str, Any]:
        """Every field except images, as plain values (for infotext, JSON and presets)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), Image.Image)
        }

    def replace(self, **changes: Any) -> Txt2Img:
        return dataclasses.replace(self, **changes)

    def checked(self, limits: Limits = Limits()) -> tuple[Txt2Img, list[str]]:
        """Return a normalised copy and notes about what was adjusted, or raise ``BadRequest``.

        Sizes that are not a multiple of 8 are rounded (and a note says so); everything else that
        is wrong is an error, all of them listed together.
        """
        problems: list[str] = []
        notes: list[str] = []
        changes: dict[str, Any] = {}
        _check_text(self, limits, problems)
        _check_numbers(self, limits, problems)
        try:
            sampler, schedule = samplers.resolve(self.sampler_name, self.schedule_type)
        except KeyError as exc:
            problems.append(exc.args[0])
        else:
            # Record what actually runs, in A1111's names, so the infotext reproduces the image.
            if schedule not in sampler.schedules:
                notes.append(f"{sampler.name} has no {schedule} schedule here: using Automatic")
                schedule = "Automatic"
            if (sampler.name, schedule) != (self.sampler_name, self.schedule_type):
                changes.update(sampler_name=sampler.name, schedule_type=schedule)
        for side in ("width", "height"):
            value = getattr(self, side)
            if not _is_int(value) or value == 0:
                continue
            if not limits.min_side <= value <= limits.max_side:
                problems.append(f"{side} must be between {limits.min_side} and {limits.max_side}, got {_shown(value)}")
            elif value % 8:
                rounded = max(limits.min_side, round(value / 8) * 8)
                notes.append(f"{side} {value} is not a multiple of 8: using {rounded}")
                changes[side] = rounded
        width, height = changes.get("width", self.width), changes.get("height", self.height)
        sides_in_range = all(_is_int(s) and limits.min_side <= s <= limits.max_side for s in (width, height))
        if sides_in_range and width * height > limits.max_pixels:  # a side out of range is reported above
            problems.append(
                f"size {width}x{height} is {width * height} pixels, more than this device allows "
                f"({limits.max_pixels}); use a smaller size or --medvram"
            )
        _check_reference(self, problems)
        _check_variation(self, problems)
        self._check_mode(limits, problems)
        if problems:
            raise BadRequest(problems)
        return (self.replace(**changes) if changes else self), notes

    def _check_mode(self, limits: Limits, problems: list[str]) -> None:
        """Checks of one mode's own fields; subclasses extend (and skip the hires fix, which is this mode's)."""
        if not isinstance(self.enable_hr, bool):
            problems.append(f"enable_hr must be true or false, got {_shown(self.enable_hr)}")
        elif self.enable_hr:
            _check_hires(self, limits, problems)


@dataclass
class Img2Img(Txt2Img):
    """Image to image: ``init_image`` is redrawn, ``denoising_strength`` says how much."""

    mode: ClassVar[str] = "img2img"

    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    resize_mode: str = "just resize"

    def _check_mode(self, limits: Limits, problems: list[str]) -> None:
        # The hires fields are text to image's: a picture's parameters reused here may carry them, unused.
        if not isinstance(self.init_image, Image.Image):
            problems.append(f"{self.mode} needs an init image, got {type(self.init_image).__name__}")
        if not _is_number(self.denoising_strength) or not 0.0 <= self.denoising_strength <= 1.0:
            problems.append(f"denoising_strength must be between 0 and 1, got {_shown(self.denoising_strength)}")
        if self.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {_shown(self.resize_mode)}")


@dataclass
class Inpaint(Img2Img):
    """Inpainting: white in ``mask`` is redrawn, black is kept, as in A1111."""

    mode: ClassVar[str] = "inpaint"

    mask: Image.Image | None = None
    mask_blur: int = 4
    invert_mask: bool = False
    only_masked: bool = False
    only_masked_padding: int = 32
    masked_content: str = "original"
    # A1111's default for inpainting: redraw fully unless the artist asks for less.
    denoising_strength: float = field(default=0.75)

    def _check_mode(self, limits: Limits, problems: list[str]) -> None:
        super()._check_mode(limits, problems)
        if not isinstance(self.mask, Image.Image):
            problems.append(f"inpaint needs a mask image, got {type(self.mask).__name__}")
        if not _is_int(self.mask_blur) or not 0 <= self.mask_blur <= 64:
            problems.append(f"mask_blur must be between 0 and 64, got {_shown(self.mask_blur)}")
        if not _is_int(self.only_masked_padding) or not 0 <= self.only_masked_padding <= 256:
            problems.append(f"only_masked_padding must be between 0 and 256, got {_shown(self.only_masked_padding)}")
        if self.masked_content not in MASKED_CONTENT:
            problems.append(
                f"masked_content must be one of {', '.join(MASKED_CONTENT)}, got {_shown(self.masked_content)}"
            )
        for name in ("invert_mask", "only_masked"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {_shown(getattr(self, name))}")


Request = Txt2Img  # every mode's request is a Txt2Img (Img2Img and Inpaint extend it)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if _is_int(value):
        return True  # exact: an int too big for a float fails the range check that follows, not isfinite()
    return isinstance(value, float) and math.isfinite(value)


def _shown(value: Any) -> str:
    """A value for a message: its repr, shortened. Never raises (ints over 4300 digits have no str())."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 100 else f"{text[:97]}..."


def _check_text(request: Txt2Img, limits: Limits, problems: list[str]) -> None:
    for name in ("prompt", "negative_prompt", "model"):
        value = getattr(request, name)
        if not isinstance(value, str):
            problems.append(f"{name} must be text, got {type(value).__name__}")
        elif len(value) > limits.max_prompt_chars:
            problems.append(f"{name} is {len(value)} characters long; the limit is {limits.max_prompt_chars}")
        elif name == "prompt" and limits.prompt_problem is not None and (problem := limits.prompt_problem(value)):
            problems.append(problem)


def _check_reference(request: Txt2Img, problems: list[str]) -> None:
    if request.reference_image is not None and not isinstance(request.reference_image, Image.Image):
        problems.append(f"reference_image must be a picture, got {type(request.reference_image).__name__}")
    if request.reference_mode not in REFERENCE_MODES:
        problems.append(
            f"reference_mode must be one of {', '.join(REFERENCE_MODES)}, got {_shown(request.reference_mode)}"
        )
    if not isinstance(request.reference_hash, str) or not all(c in "0123456789abcdef" for c in request.reference_hash):
        problems.append(
            f"reference_hash must be the hex digits an infotext records, got {_shown(request.reference_hash)}"
        )
    ranges = {"reference_strength": 2.0, "reference_fidelity": 1.0, "reference_start": 1.0, "reference_end": 1.0}
    for name, high in ranges.items():
        value = getattr(request, name)
        if not _is_number(value) or not 0.0 <= value <= high:
            problems.append(f"{name} must be between 0 and {high:g}, got {_shown(value)}")
    start, end = request.reference_start, request.reference_end
    if all(_is_number(value) and 0 <= value <= 1 for value in (start, end)) and start >= end:
        problems.append(f"reference_start ({_shown(start)}) must come before reference_end ({_shown(end)})")


def _check_variation(request: Txt2Img, problems: list[str]) -> None:
    if not _is_int(request.subseed) or not -1 <= request.subseed <= MAX_SEED:
        problems.append(f"subseed must be a whole number between -1 and {MAX_SEED}, got {_shown(request.subseed)}")
    if not _is_number(request.subseed_strength) or not 0.0 <= request.subseed_strength <= 1.0:
        problems.append(f"subseed_strength must be between 0 and 1, got {_shown(request.subseed_strength)}")
    sides = (request.seed_resize_from_w, request.seed_resize_from_h)
    for name, value in zip(("seed_resize_from_w", "seed_resize_from_h"), sides, strict=True):
        if not _is_int(value) or not (value <= 0 or 64 <= value <= 4096):
            problems.append(f"{name} must be 0 (off) or between 64 and 4096 pixels, got {_shown(value)}")


def _check_hires(request: Txt2Img, limits: Limits, problems: list[str]) -> None:
    """The hires fix's own fields; its upscaler name is checked by the engine, which knows the files."""
    if not _is_number(request.hr_scale) or not 1.0 <= request.hr_scale <= 4.0:
        problems.append(f"hr_scale must be between 1 and 4, got {_shown(request.hr_scale)}")
    for name in ("hr_resize_x", "hr_resize_y"):
        value = getattr(request, name)
        if not _is_int(value) or not (value == 0 or limits.min_side <= value <= limits.max_side):
            problems.append(f"{name} must be 0 (use hr_scale) or between {limits.min_side} and {limits.max_side}, "
                            f"got {_shown(value)}")  # fmt: skip
    if not _is_int(request.hr_second_pass_steps) or not 0 <= request.hr_second_pass_steps <= limits.max_steps:
        problems.append(
            f"hr_second_pass_steps must be between 0 (as the first pass) and {limits.max_steps}, "
            f"got {_shown(request.hr_second_pass_steps)}"
        )
    if not _is_number(request.denoising_strength) or not 0.0 <= request.denoising_strength <= 1.0:
        problems.append(f"denoising_strength must be between 0 and 1, got {_shown(request.denoising_strength)}")
    if not isinstance(request.hr_upscaler, str) or not request.hr_upscaler:
        problems.append(f"hr_upscaler must name an upscaler, got {_shown(request.hr_upscaler)}")


def _check_numbers(request: Txt2Img, limits: Limits, problems: list[str]) -> None:
    ranges: dict[str, tuple[float, float]] = {
        "steps": (1, limits.max_steps),
        "batch_size": (1, limits.max_batch_size),
        "batch_count": (1, limits.max_batch_count),
        "clip_skip": (1, 12),
        "seed": (-1, MAX_SEED),
    }
    for name, (low, high) in ranges.items():
        value = getattr(request, name)
        if not _is_int(value):
            problems.append(f"{name} must be a whole number, got {_shown(value)}")
        elif not low <= value <= high:
            problems.append(f"{name} must be between {low} and {high}, got {_shown(value)}")
    if not _is_number(request.cfg_scale) or not 0.0 <= request.cfg_scale <= 30.0:
        problems.append(f"cfg_scale must be between 0 and 30, got {_shown(request.cfg_scale)}")
    for side in ("width", "height"):
        if not _is_int(getattr(request, side)):
            problems.append(f"{side} must be a whole number of pixels, got {_shown(getattr(request, side))}")
