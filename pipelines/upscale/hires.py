"""The hires fix: a first pass at the model's own size, an upscale, and an img2img second pass.

The sizes follow A1111's txt2img rules (``calculate_target_resolution``):

- ``hr_resize_x`` and ``hr_resize_y`` both 0: the first pass times ``hr_scale``;
- one of them 0: the other side follows the first pass's aspect ratio;
- both set: the picture is enlarged until it covers ``hr_resize_x``x``hr_resize_y`` (keeping its
  aspect) and the excess is cut off evenly on both sides ("crop and resize").

A1111 works those sizes out in latent cells of 8 pixels, so every side here is a multiple of 8
(rounded down, as A1111's integer division does). The second pass runs exactly ``hr_second_pass_steps``
steps (0: as many as the first pass) whatever the denoising strength: A1111 always asks its img2img
sampler for that many steps in the hires pass, by stretching the schedule to
``steps / strength`` and running its tail. diffusers' img2img runs ``int(num_inference_steps *
strength)`` steps, so the schedule given to it is the shortest one whose tail is that long.

Nothing here imports torch at module level: request checking can use the size rules cheaply.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from ..errors import BadRequest
from .upscalers import DEFAULT_UPSCALER, IMAGE_RESAMPLERS, UpscalerLibrary, is_latent, latent_names

if TYPE_CHECKING:
    import torch

LATENT_CELL = 8  # A1111 sizes the hires pass in latent cells of this many pixels
MAX_HR_SCALE = 4.0  # A1111's slider; pipelines.requests allows the same
MAX_HR_STEPS = 150  # A1111's slider
# Arguments of a first-pass call that the plan decides for the second pass (its noise too: img2img
# draws its own from the generators).
_PLAN_OWNS = frozenset({"image", "strength", "num_inference_steps", "width", "height", "output_type", "latents"})


class SizeLimits(Protocol):
    """What ``pipelines.requests.Limits`` provides (not imported: requests imports this module)."""

    @property
    def min_side(self) -> int: ...
    @property
    def max_side(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...


@dataclass(frozen=True)
class _Limits:
    min_side: int = 64
    max_side: int = 4096
    max_pixels: int = 2048 * 2048


@dataclass(frozen=True)
class HiresPlan:
    """Everything the second pass needs, worked out before anything runs."""

    first_width: int  # the first pass's size
    first_height: int
    upscale_width: int  # the first pass is enlarged to this...
    upscale_height: int
    width: int  # ...then cut to this, centred: the final picture
    height: int
    upscaler: str  # canonical A1111 name
    steps: int  # steps the second pass runs (0: denoising strength 0, the upscale is the result)
    denoising_strength: float
    hr_scale: float = 2.0  # as asked, for the infotext
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_second_pass_steps: int = 0

    @property
    def latent(self) -> bool:
        """Whether the first pass must hand over latents (``output_type="latent"``) rather than pictures."""
        return is_latent(self.upscaler)

    @property
    def first_output_type(self) -> str:
        """The ``output_type`` the first pass's diffusers call needs for this plan."""
        return "latent" if self.latent else "pil"

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the final picture in the enlarged one, on 8-pixel cells.

        An odd number of surplus cells leaves the extra one at the right/bottom, as A1111 does."""
        left = (self.upscale_width - self.width) // LATENT_CELL // 2 * LATENT_CELL
        top = (self.upscale_height - self.height) // LATENT_CELL // 2 * LATENT_CELL
        return left, top, left + self.width, top + self.height

    @property
    def schedule_steps(self) -> int:
        """``num_inference_steps`` for diffusers' img2img call, so that it runs ``steps`` steps."""
        return schedule_steps(self.steps, self.denoising_strength)

    def infotext_params(self) -> dict[str, Any]:
        """The hires keys A1111 writes in the infotext (``Size`` stays the first pass's size)."""
        params: dict[str, Any] = {"Denoising strength": self.denoising_strength}
        if self.hr_resize_x or self.hr_resize_y:
            params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
        else:
            params["Hires upscale"] = self.hr_scale
        if self.hr_second_pass_steps:
            params["Hires steps"] = self.hr_second_pass_steps
        params["Hires upscaler"] = self.upscaler
        return params


# -- sizes and steps ------------------------------------------------------------------------
def target_size(
    width: int, height: int, hr_scale: float = 2.0, hr_resize_x: int = 0, hr_resize_y: int = 0
) -> tuple[int, int]:
    """The final size of a hires fix of a ``width``x``height`` first pass (multiples of 8)."""
    _, _, final_width, final_height = _sizes(width, height, hr_scale, hr_resize_x, hr_resize_y)
    return final_width, final_height


def upscaled_size(
    width: int, height: int, hr_scale: float = 2.0, hr_resize_x: int = 0, hr_resize_y: int = 0
) -> tuple[int, int]:
    """The size the first pass is enlarged to before the crop (the target size unless both resizes are set)."""
    upscale_width, upscale_height, _, _ = _sizes(width, height, hr_scale, hr_resize_x, hr_resize_y)
    return upscale_width, upscale_height


def _sizes(width: int, height: int, hr_scale: float, resize_x: int, resize_y: int) -> tuple[int, int, int, int]:
    if not resize_x and not resize_y:
        up_x, up_y = int(width * hr_scale), int(height * hr_scale)
        return _cells(up_x), _cells(up_y), _cells(up_x), _cells(up_y)
    if not resize_y:
        up_x, up_y = resize_x, resize_x * height // width
        return _cells(up_x), _cells(up_y), _cells(up_x), _cells(up_y)
    if not resize_x:
        up_x, up_y = resize_y * width // height, resize_y
        return _cells(up_x), _cells(up_y), _cells(up_x), _cells(up_y)
    # Both set: enlarge to cover the target, compared in integers so equal ratios are equal.
    if width * resize_y < resize_x * height:  # the picture is taller than the target: width decides
        up_x, up_y = resize_x, resize_x * height // width
    else:
        up_x, up_y = resize_y * width // height, resize_y
    return _cells(up_x), _cells(up_y), _cells(resize_x), _cells(resize_y)


def _cells(side: int) -> int:
    return side // LATENT_CELL * LATENT_CELL


def second_pass_steps(steps: int, hr_second_pass_steps: int) -> int:
    """Steps of the second pass: ``hr_second_pass_steps``, or the first pass's ``steps`` when it is 0."""
    return hr_second_pass_steps or steps


def schedule_steps(steps: int, strength: float) -> int:
    """The shortest ``num_inference_steps`` for which diffusers' img2img, at ``strength``, runs ``steps``.

    diffusers runs ``int(num_inference_steps * strength)`` steps; A1111's hires pass runs exactly
    its requested steps out of a schedule ``steps / strength`` long. 0 for a strength of 0."""
    if steps <= 0 or strength <= 0:
        return 0
    total = max(steps, math.ceil(steps / strength))
    while int(total * strength) < steps:  # float rounding: 20 / 0.7 * 0.7 may fall short
        total += 1
    while total > steps and int((total - 1) * strength) >= steps:
        total -= 1
    return total


# -- checking and planning ------------------------------------------------------------------
def hires_problems(
    width: int,
    height: int,
    hr_scale: Any = 2.0,
    hr_resize_x: Any = 0,
    hr_resize_y: Any = 0,
    hr_upscaler: Any = DEFAULT_UPSCALER,
    hr_second_pass_steps: Any = 0,
    denoising_strength: Any = 0.7,
    limits: SizeLimits | None = None,
    known_upscalers: Sequence[str] | None = None,
) -> list[str]:
    """Every problem with a hires request, each naming its value; [] when it can run.

    ``width``/``height`` are the first pass's (already checked). Upscaler model names can only be
    checked against a models folder: pass ``known_upscalers`` (``UpscalerLibrary.names()``) to
    check them, else any text that is not a built-in name is taken to be a model file's name."""
    bounds: SizeLimits = limits or _Limits()
    problems: list[str] = []
    resizes = {"hr_resize_x": hr_resize_x, "hr_resize_y": hr_resize_y}
    for name, value in resizes.items():
        if not _is_int(value) or not 0 <= value <= bounds.max_side:
            problems.append(f"{name} must be 0 (use hr_scale) or a size up to {bounds.max_side}, got {value!r}")
    uses_scale = all(value == 0 for value in resizes.values())
    if uses_scale and (not _is_number(hr_scale) or not 1.0 <= hr_scale <= MAX_HR_SCALE):
        problems.append(f"hr_scale must be between 1 and {MAX_HR_SCALE:g}, got {hr_scale!r}")
    if not _is_int(hr_second_pass_steps) or not 0 <= hr_second_pass_steps <= MAX_HR_STEPS:
        problems.append(
            f"hr_second_pass_steps must be between 0 (as many as the first pass) and {MAX_HR_STEPS}, "
            f"got {hr_second_pass_steps!r}"
        )
    if not _is_number(denoising_strength) or not 0.0 <= denoising_strength <= 1.0:
        problems.append(f"denoising_strength must be between 0 and 1, got {denoising_strength!r}")
    if hr_upscaler is not None and not isinstance(hr_upscaler, str):
        problems.append(f"hr_upscaler must be text, got {type(hr_upscaler).__name__}")
    elif known_upscalers is not None and hr_upscaler and not _named(hr_upscaler, known_upscalers):
        problems.append(f"unknown hr_upscaler {hr_upscaler!r}; known: {', '.join(known_upscalers)}")
    if problems:  # the sizes below need sound numbers
        return problems
    final_width, final_height = target_size(width, height, hr_scale, hr_resize_x, hr_resize_y)
    up_width, up_height = upscaled_size(width, height, hr_scale, hr_resize_x, hr_resize_y)
    asked = f"from {width}x{height}, {_asked(hr_scale, hr_resize_x, hr_resize_y)}"
    for label, side in (("width", final_width), ("height", final_height)):
        if not bounds.min_side <= side <= bounds.max_side:
            problems.append(
                f"the hires fix makes the {label} {side} ({asked}); "
                f"it must be between {bounds.min_side} and {bounds.max_side}"
            )
    if not problems and max(final_width * final_height, up_width * up_height) > bounds.max_pixels:
        problems.append(
            f"the hires fix makes {up_width}x{up_height} pixels ({asked}), "
            f"more than this device allows ({bounds.max_pixels}); "
            "use a smaller hr_scale or resize"
        )
    return problems


def plan(
    width: int,
    height: int,
    *,
    steps: int,
    hr_scale: float = 2.0,
    hr_resize_x: int = 0,
    hr_resize_y: int = 0,
    hr_upscaler: str | None = DEFAULT_UPSCALER,
    hr_second_pass_steps: int = 0,
    denoising_strength: float = 0.7,
    limits: SizeLimits | None = None,
    upscalers: UpscalerLibrary | None = None,
) -> HiresPlan:
    """The plan for a hires fix of a ``width``x``height``, ``steps``-step first pass, or ``BadRequest``
    with every problem. With ``upscalers`` the upscaler name is checked against its models folder."""
    known = upscalers.names() if upscalers is not None else None
    problems = hires_problems(
        width, height, hr_scale, hr_resize_x, hr_resize_y, hr_upscaler, hr_second_pass_steps, denoising_strength,
        limits, known,
    )  # fmt: skip
    if problems:
        raise BadRequest(problems)
    if upscalers is not None:
        upscaler = upscalers.check(hr_upscaler)
    else:  # without a folder only built-in names can be spelled canonically; others are kept as given
        builtins = latent_names() + [name for name, _ in IMAGE_RESAMPLERS]
        upscaler = (_named(hr_upscaler, builtins) if hr_upscaler else None) or hr_upscaler or DEFAULT_UPSCALER
    up_width, up_height, final_width, final_height = _sizes(width, height, hr_scale, hr_resize_x, hr_resize_y)
    return HiresPlan(
        first_width=width,
        first_height=height,
        upscale_width=up_width,
        upscale_height=up_height,
        width=final_width,
        height=final_height,
        upscaler=upscaler,
        steps=second_pass_steps(steps, hr_second_pass_steps) if denoising_strength > 0 else 0,
        denoising_strength=float(denoising_strength),
        hr_scale=float(hr_scale),
        hr_resize_x=hr_resize_x,
        hr_resize_y=hr_resize_y,
        hr_second_pass_steps=hr_second_pass_steps,
    )


# -- running ------------------------------------------------------------------------------
def second_pass(
    img2img_pipe: Any,
    first: torch.Tensor | Sequence[Image.Image],
    hires: HiresPlan,
    upscalers: UpscalerLibrary,
    **call_kwargs: Any,
) -> list[Image.Image]:
    """Upscale the first pass and redraw it with ``img2img_pipe``; the final pictures.

    ``first`` is what the first pass returned with ``output_type=hires.first_output_type``:
    latents (batch, channels, h, w) for latent upscalers, pictures otherwise (latents are decoded
    first when given). ``call_kwargs`` are the first pass's diffusers arguments (prompt, guidance,
    ``generator``, callbacks...); the image, size, steps, strength, output type and noise come from
    the plan, and arguments the img2img call does not take are left out. Generators are re-seeded
    from their initial seeds, as A1111 draws the hires noise from the picture's own seed, so the
    first pass's generators can be passed again as they are."""
    import torch

    accepted = inspect.signature(img2img_pipe.__call__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    # txt2img-only arguments (SD's guidance_rescale) have no meaning for the img2img call: left out.
    kwargs = {k: v for k, v in call_kwargs.items() if k not in _PLAN_OWNS and (takes_any or k in accepted)}
    if "generator" in kwargs:
        kwargs["generator"] = _reseeded(kwargs["generator"])
    start: torch.Tensor | list[Image.Image]
    if hires.latent:
        if not isinstance(first, torch.Tensor):
            raise TypeError(f"{hires.upscaler} needs the first pass's latents (output_type='latent'), got pictures")
        start = upscaled_latents(img2img_pipe, first, hires, upscalers)
    else:
        pictures = decode_latents(img2img_pipe, first) if isinstance(first, torch.Tensor) else list(first)
        start = [upscaled_picture(picture, hires, upscalers) for picture in pictures]
    if hires.steps == 0:  # denoising strength 0: the upscale itself is the result
        return decode_latents(img2img_pipe, start) if isinstance(start, torch.Tensor) else start
    output = img2img_pipe(
        image=start,
        strength=hires.denoising_strength,
        num_inference_steps=hires.schedule_steps,
        output_type="pil",
        **kwargs,
    )
    return list(output.images)


def upscaled_latents(pipe: Any, latents: torch.Tensor, hires: HiresPlan, upscalers: UpscalerLibrary) -> torch.Tensor:
    """The first pass's latents enlarged with the plan's latent upscaler and cut to the final size."""
    factor = int(pipe.vae_scale_factor)
    enlarged = upscalers.upscale_latents(
        latents, hires.upscale_width // factor, hires.upscale_height // factor, hires.upscaler
    )
    left, top, right, bottom = hires.crop_box
    return enlarged[:, :, top // factor : bottom // factor, left // factor : right // factor]


def upscaled_picture(picture: Image.Image, hires: HiresPlan, upscalers: UpscalerLibrary) -> Image.Image:
    """A first-pass picture enlarged with the plan's picture upscaler and cut to the final size."""
    enlarged = upscalers.upscale_image(picture, hires.upscale_width, hires.upscale_height, hires.upscaler)
    return enlarged if enlarged.size == (hires.width, hires.height) else enlarged.crop(hires.crop_box)


def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Pictures from a pipeline's latents (as its ``output_type="pil"`` would give them)."""
    import torch

    vae = pipe.vae
    config = vae.config
    # SDXL's VAE overflows in float16; its pipelines run it in float32 for the decode, and so do we.
    upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False)
    dtype = vae.dtype
    try:
        if upcast:
            vae.to(torch.float32)
        scaled = latents.to(vae.device, vae.dtype)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean_t = torch.tensor(mean).view(shape).to(scaled)
            std_t = torch.tensor(std).view(shape).to(scaled)
            scaled = scaled * std_t / config.scaling_factor + mean_t
        else:
            scaled = scaled / config.scaling_factor
        with torch.no_grad():
            pixels = vae.decode(scaled, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype)
    return list(pipe.image_processor.postprocess(pixels, output_type="pil"))


def _reseeded(generator: Any) -> Any:
    import torch

    if isinstance(generator, (list, tuple)):
        return [_reseeded(one) for one in generator]
    if isinstance(generator, torch.Generator):
        return torch.Generator(generator.device).manual_seed(generator.initial_seed())
    return generator


def _asked(hr_scale: Any, hr_resize_x: Any, hr_resize_y: Any) -> str:
    return f"resize {hr_resize_x}x{hr_resize_y}" if hr_resize_x or hr_resize_y else f"hr_scale {hr_scale:g}"


def _named(name: str, names: Sequence[str]) -> str | None:
    wanted = name.strip().lower()
    return next((known for known in names if known.lower() == wanted), None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
