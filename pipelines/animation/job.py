"""An animation as one device job: plan -> for each diffused frame (warp the last one, match its
colours to the first, add noise, diffuse with the blended prompt) -> the cadence in-betweens ->
save every frame -> write the clip.

The engine runs it like a generation: it waits in the same queue and holds the device slot for the
whole clip. Stop keeps the frames made so far and still writes the clip from them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .. import infotext, lora, prompts, samplers
from ..errors import BadRequest
from ..requests import Img2Img
from ..standards import flagged_note
from .clips import write_clip
from .colour import ColourReference, match_colours
from .motion import add_noise, combined, tween, warp
from .noise import lerp, travel_noise
from .plan import FramePlan, plan_frames
from .settings import AnimationSettings, parse_prompts

if TYPE_CHECKING:
    from ..engine import Engine, Job
    from ..manager import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class AnimationResult:
    frames: list[Image.Image]
    paths: list[Path]  # every frame's PNG, in order
    clip: Path | None  # None when Stop came before the first frame
    settings: AnimationSettings  # with the seed that was used
    notes: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0


FrameCallback = Callable[[int, int, Image.Image], None]  # frames done, frames in all, the newest frame


def check_loras(engine: Engine, settings: AnimationSettings) -> None:
    """Every keyframe's LoRA tags well formed and their files there: ``BadRequest`` before the clip queues."""
    for prompt, _ in parse_prompts(settings.prompts).values():
        engine.loras.resolve(lora.extract(prompt)[1])


def run(
    engine: Engine, settings: AnimationSettings, notes: list[str], job: Job, on_frame: FrameCallback | None
) -> AnimationResult:
    """Make the clip ``settings`` describe (already checked), on the device thread."""
    started = time.perf_counter()
    plans = plan_frames(settings)
    settings = settings.replace(seed=plans[0].seed)
    model = engine.manager.get(settings.model or engine.default_model)
    if "txt2img" not in model.modes:
        raise BadRequest(f"{model.name} is an inpainting checkpoint: animate with a regular model")
    width, height = settings.width or model.native_size, settings.height or model.native_size
    job.state, job.started, job.step, job.total, job.images, job.paths = "running", started, 0, len(plans), [], []
    painter = _Painter(engine, model, settings, width, height)
    folder, stem = engine.outputs.animation_folder(settings.seed)
    made: dict[int, Image.Image] = {}
    shown: dict[int, Image.Image] = {}
    flagged: list[bool] = []  # by frame, when the safety check ran
    saved: list[Path] = []
    previous = 0
    try:
        for plan in plans:
            if not plan.diffused:
                continue
            if job.interrupted:
                break
            made[plan.index] = painter.frame(plan, made.get(previous), plans[previous + 1 : plan.index + 1])
            for between in plans[previous + 1 : plan.index]:
                since, until = plans[previous + 1 : between.index + 1], plans[between.index + 1 : plan.index + 1]
                made[between.index] = tween(
                    made[previous], made[plan.index], since, until, between.cadence_weight, settings.border
                )
            for index in range(len(saved), plan.index + 1):
                text = _frame_infotext(settings, plans[index], width, height, model, _used_files(engine, plans[index]))
                fields = {"animation": settings.to_dict(), "frame": index, "seed": plans[index].seed}
                # The frame as it may be shown (safety check, watermark); the next frame still grows from made[].
                screened = engine.standards.screen([made[index]])
                shown[index] = screened.images[0]
                notes += [note for note in screened.notes if note not in notes]
                flagged += screened.flagged
                saved.append(engine.outputs.save_frame(shown[index], text, fields, folder, index))
                job.step, job.preview = index + 1, shown[index]
                if on_frame is not None:
                    on_frame(index + 1, len(plans), shown[index])
            previous = plan.index
    finally:
        painter.close()  # the last frame's LoRAs come off however the clip ends
    if note := flagged_note(flagged):
        notes.append(note.replace("picture", "frame"))
    frames = [shown[index] for index in range(len(saved))]
    job.images, job.paths = frames, saved
    clip_path = folder.parent / f"{stem}.{settings.clip_format}"
    clip = write_clip(frames, clip_path, settings.fps, engine.outputs.finish) if frames else None
    stopped = len(frames) < len(plans)
    job.state = "interrupted" if stopped else "done"
    if stopped:
        notes.append(f"stopped after {len(frames)} of {len(plans)} frames: the clip has the frames made so far")
    return AnimationResult(frames, saved, clip, settings, notes, stopped, time.perf_counter() - started)


class _Painter:
    """Makes diffused frames: the model's views, its sampler, and the prompt embeddings met so far."""

    def __init__(self, engine: Engine, model: LoadedModel, settings: AnimationSettings, width: int, height: int):
        self.settings, self.width, self.height = settings, width, height
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, settings.sampler_name, settings.schedule_type)
        self.text_view = engine.manager.view(model, "txt2img", scheduler)
        self.image_view = engine.manager.view(model, "img2img", scheduler)
        self.device = engine.manager.device
        self.engine, self.model = engine, model
        self._embeddings: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._first: ColourReference | None = None
        # The LoRAs of the frame's keyframe prompt stay on while consecutive frames ask for the same.
        self._loras = contextlib.ExitStack()
        self._lora_tags: list[lora.LoraTag] = []

    def close(self) -> None:
        self._loras.close()

    def frame(self, plan: FramePlan, last: Image.Image | None, motions: list[FramePlan]) -> Image.Image:
        """Frame 0 from noise; every later one from the last diffused frame moved by the camera."""
        if last is None or plan.denoising_strength >= 1.0:  # strength 0 keeps nothing of the last frame
            picture = self._draw(plan)
            self._first = self._first or ColourReference(picture)
            return picture
        start = warp(last, combined(motions, last.size), self.settings.border)
        if self._first is not None and self.settings.colour_coherence != "None":
            start = match_colours(start, self._first, self.settings.colour_coherence)
        start = add_noise(start, plan.noise, plan.seed)
        if int(self.settings.steps * plan.denoising_strength) < 1:  # keeps all of the last frame
            return start
        return self._draw(plan, start)

    def _draw(self, plan: FramePlan, start: Image.Image | None = None) -> Image.Image:
        self._use_loras(lora.extract(plan.prompt)[1])
        call: dict[str, Any] = self._prompt(plan) | {
            "num_inference_steps": self.settings.steps,
            "guidance_scale": plan.cfg_scale,
            "generator": torch.Generator("cpu").manual_seed(plan.seed),
            "height": self.height,
            "width": self.width,
        }
        if start is None:
            channels = self.text_view.unet.config.in_channels
            shape = (
                1,
                channels,
                self.height // self.text_view.vae_scale_factor,
                self.width // self.text_view.vae_scale_factor,
            )
            noise = travel_noise(plan.seed, plan.next_seed, plan.seed_weight, shape, self.text_view.unet.dtype)
            return self.text_view(**call, latents=noise.to(self.device)).images[0]
        return self.image_view(**call, image=start, strength=plan.denoising_strength).images[0]

    def _use_loras(self, tags: list[lora.LoraTag]) -> None:
        """The keyframe prompt's LoRAs on the model (a travelling frame uses the keyframe it leaves)."""
        if tags == self._lora_tags:
            return
        self._loras.close()  # the last keyframe's come off first
        self._lora_tags = []
        resolved = self.engine.loras.resolve(tags)
        self._loras.enter_context(lora.applied(self.model.pipe, resolved, self.engine.loras))
        self._lora_tags = tags

    def _prompt(self, plan: FramePlan) -> dict[str, torch.Tensor]:
        """The text embeddings of the frame: the two keyframes' prompts blended by the plan's weight,
        read as Generate reads them (weights, BREAK, embeddings, any length; LoRA tags taken out)."""
        first = self._embed(plan.prompt, plan.negative_prompt)
        if not plan.prompt_weight:
            return first
        second = self._embed(plan.next_prompt, plan.next_negative_prompt)
        first, second = self._padded(first, second), self._padded(second, first)
        return {name: lerp(first[name], second[name], plan.prompt_weight) for name in first}

    def _embed(self, prompt: str, negative: str) -> dict[str, torch.Tensor]:
        key = (prompt, negative)
        if key not in self._embeddings:
            text = lora.extract(prompt)[0]
            self._embeddings[key] = prompts.encode_prompts(self.text_view, text, negative, 1, self.engine.embeddings)
        return self._embeddings[key]

    def _padded(self, embeds: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``embeds`` as long as ``other`` (prompts of more chunks are longer): empty-prompt chunks
        added, as Generate pads the shorter of a prompt and its negative."""
        empty = self._embed("", "")["prompt_embeds"]
        padded = dict(embeds)
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            missing = (other[name].shape[1] - embeds[name].shape[1]) // empty.shape[1]
            if missing > 0:
                padded[name] = torch.cat([embeds[name], *[empty] * missing], dim=1)
        return padded


def _used_files(engine: Engine, plan: FramePlan) -> dict[str, str]:
    """The infotext keys Generate adds for the files a prompt uses ("TI hashes", "Lora hashes"), for
    the keyframe prompt the frame was drawn with."""
    used = engine.embeddings.infotext(plan.prompt, plan.negative_prompt)
    if loras := engine.loras.resolve(lora.extract(plan.prompt)[1]):
        used["Lora hashes"] = engine.loras.infotext_value(loras)
    return used


def _frame_infotext(
    settings: AnimationSettings, plan: FramePlan, width: int, height: int, model: LoadedModel, used: dict[str, str]
) -> str:
    """A frame's parameters in A1111's form, as an image-to-image picture with this frame's values,
    and the animation's own keys after them."""
    request = Img2Img(
        prompt=plan.prompt, negative_prompt=plan.negative_prompt, sampler_name=settings.sampler_name,
        schedule_type=settings.schedule_type, steps=settings.steps, cfg_scale=plan.cfg_scale,
        denoising_strength=round(plan.denoising_strength, 4),
    )  # fmt: skip
    text = infotext.infotext(request, plan.seed, width, height, model.name, model.model_hash, extra=used)
    extra = f", Frame: {plan.index}, Frames: {settings.max_frames}, FPS: {settings.fps:g}"
    if plan.prompt_weight:
        extra += f", Prompt travel: {plan.prompt_weight:.3f}"
    return text + extra
