"""Named Gradio endpoints for scripts: ``/txt2img``, ``/img2img``, ``/inpaint``.

Each takes documented, typed parameters (``gradio_client`` shows them with ``view_api()``) and
returns ``{"images": [base64 PNG, ...], "seeds", "infotexts", "notes"}``; the PNGs carry their
infotext. Pictures go in as base64 strings, as in the REST API. They share the GPU slot with the page.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines.engine import Engine, Job
from pipelines.errors import AtelierError
from pipelines.requests import Img2Img, Inpaint, Txt2Img
from presets.store import PresetError, PresetLibrary

from .api import decode_image, encoded_images

# Gradio events that may wait in the engine's queue at once (page and script endpoints together).
# The engine serves its queue in arrival order, REST requests included; each waiter holds a
# server thread, so the rest wait in Gradio's own queue.
GPU_WAITERS = 16


def register_generation_api(engine: Engine, library: PresetLibrary) -> None:
    def run(request: Txt2Img, styles: list[str] | None, save: bool, safety_check: bool | None) -> dict[str, Any]:
        if safety_check is not None and not isinstance(safety_check, bool):
            raise gr.Error(f"safety_check must be true, false or null, got {safety_check!r}")
        try:
            known = {style.name for style in library.styles()}
            chosen = list(styles or [])
            request.prompt, request.negative_prompt = library.compose(
                request.prompt,
                request.negative_prompt,
                [s for s in chosen if s in known],
                [s for s in chosen if s not in known],
            )
            result = engine.generate(request, Job(safety_check=safety_check), save=save)
        except (AtelierError, PresetError) as exc:
            raise gr.Error(str(exc)) from exc
        return {
            "images": encoded_images(result, engine.outputs.finish),
            "seeds": result.seeds,
            "infotexts": result.infotexts,
            "notes": result.notes,
        }

    def txt2img(
        prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0, sampler_name: str = "DPM++ 2M",
        schedule_type: str = "Karras", width: int = 0, height: int = 0, seed: int = -1, batch_size: int = 1,
        batch_count: int = 1, clip_skip: int = 1, model: str = "", styles: list[str] | None = None, save: bool = True,
        reference_image: str = "", reference_mode: str = "auto", reference_strength: float = 1.0,
        subseed: int = -1, subseed_strength: float = 0.0, enable_hr: bool = False, hr_scale: float = 2.0,
        hr_upscaler: str = "Latent", hr_second_pass_steps: int = 0, denoising_strength: float = 0.7,
        safety_check: bool | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Text to image. width/height 0 = the model's native size; seed -1 = random; styles are style or
        negative-preset names; save=True also stores the images in the gallery. reference_image is an
        optional base64 picture to follow (reference_mode: auto, reference-only, reference-adain,
        reference-adain+attn or ip-adapter; reference_strength 0-2); the prompt may also name one with
        {image:NAME}. subseed/subseed_strength: a variation seed blended in (0-1). enable_hr: the hires fix,
        upscaling hr_scale times with hr_upscaler, then redrawing at denoising_strength in
        hr_second_pass_steps steps (0: as many as the first pass). safety_check: true/false asks for the
        safety check or not (None: the server's setting; a server that requires it keeps it on)."""
        request = Txt2Img(
            prompt=prompt, negative_prompt=negative_prompt, model=model, sampler_name=sampler_name,
            schedule_type=schedule_type, steps=int(steps), cfg_scale=float(cfg_scale), width=int(width),
            height=int(height), seed=int(seed), batch_size=int(batch_size), batch_count=int(batch_count),
            clip_skip=int(clip_skip), **_reference(reference_image, reference_mode, reference_strength),
            subseed=int(subseed), subseed_strength=float(subseed_strength), enable_hr=bool(enable_hr),
            hr_scale=float(hr_scale), hr_upscaler=hr_upscaler, hr_second_pass_steps=int(hr_second_pass_steps),
            denoising_strength=float(denoising_strength),
        )  # fmt: skip
        return run(request, styles, save, safety_check)

    def img2img(
        init_image: str, prompt: str = "", negative_prompt: str = "", denoising_strength: float = 0.75,
        steps: int = 20, cfg_scale: float = 7.0, sampler_name: str = "DPM++ 2M", schedule_type: str = "Karras",
        width: int = 0, height: int = 0, seed: int = -1, resize_mode: str = "just resize", model: str = "",
        styles: list[str] | None = None, save: bool = True, reference_image: str = "", reference_mode: str = "auto",
        reference_strength: float = 1.0, subseed: int = -1, subseed_strength: float = 0.0,
        safety_check: bool | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Image to image. init_image is a base64 PNG/JPEG; width/height 0 = the picture's size;
        reference_image/mode/strength, subseed/subseed_strength and safety_check as in /txt2img."""
        request = Img2Img(
            prompt=prompt, negative_prompt=negative_prompt, model=model, sampler_name=sampler_name,
            schedule_type=schedule_type, steps=int(steps), cfg_scale=float(cfg_scale), width=int(width),
            height=int(height), seed=int(seed), init_image=_picture(init_image, "init_image"),
            denoising_strength=float(denoising_strength), resize_mode=resize_mode,
            **_reference(reference_image, reference_mode, reference_strength),
            subseed=int(subseed), subseed_strength=float(subseed_strength),
        )  # fmt: skip
        return run(request, styles, save, safety_check)

    def inpaint(
        init_image: str, mask: str, prompt: str = "", negative_prompt: str = "", denoising_strength: float = 0.75,
        mask_blur: int = 4, only_masked: bool = False, only_masked_padding: int = 32, masked_content: str = "original",
        invert_mask: bool = False, steps: int = 20, cfg_scale: float = 7.0, sampler_name: str = "DPM++ 2M",
        seed: int = -1, model: str = "", styles: list[str] | None = None, save: bool = True,
        reference_image: str = "", reference_mode: str = "auto", reference_strength: float = 1.0,
        safety_check: bool | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Inpaint: mask is a base64 image, white = redraw. Pixels outside the (blurred) mask are kept;
        reference_image/mode/strength and safety_check as in /txt2img."""
        request = Inpaint(
            prompt=prompt, negative_prompt=negative_prompt, model=model, sampler_name=sampler_name, steps=int(steps),
            cfg_scale=float(cfg_scale), seed=int(seed), init_image=_picture(init_image, "init_image"),
            mask=_picture(mask, "mask"), denoising_strength=float(denoising_strength), mask_blur=int(mask_blur),
            only_masked=bool(only_masked), only_masked_padding=int(only_masked_padding),
            masked_content=masked_content, invert_mask=bool(invert_mask),
            **_reference(reference_image, reference_mode, reference_strength),
        )  # fmt: skip
        return run(request, styles, save, safety_check)

    for function in (txt2img, img2img, inpaint):
        gr.api(function, api_name=function.__name__, concurrency_limit=GPU_WAITERS, concurrency_id="gpu")


def _reference(image: str, mode: str, strength: float) -> dict[str, Any]:
    """Reference fields of an endpoint call; no picture leaves the request without one."""
    picture = _picture(image, "reference_image").convert("RGB") if image else None
    return {"reference_image": picture, "reference_mode": mode, "reference_strength": float(strength)}


def _picture(data: str, what: str) -> Any:
    try:
        return decode_image(data, what)
    except AtelierError as exc:
        raise gr.Error(str(exc)) from exc
