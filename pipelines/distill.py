"""Distilling a many-step model into a one-step one: the teacher's sampled pictures, a low-rank
adapter on the student's UNet, and the loop that teaches it to draw them in a single step.

Direct distillation: the teacher (a model, its sampler, steps and CFG scale) turns (noise, prompt)
pairs into finished latents; the student is the same UNet plus a small trained weight change, and
learns to map that noise, at the last timestep, straight to the teacher's latents. The teacher's
sampler is deterministic, so the map is a function and one step can learn it; the guidance is baked
in, so the student runs without CFG: one UNet call per picture.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import prompts, samplers, scenes

log = logging.getLogger(__name__)

LAST_TIMESTEP = 999  # trailing timesteps: every one-step sampler starts (and ends) here


@dataclass(frozen=True)
class Teacher:
    """How the teacher draws: sampler (A1111 name), schedule type, steps and CFG scale."""

    sampler: str = "DPM++ 2M"
    schedule: str = "Automatic"
    steps: int = 12
    cfg_scale: float = 7.0


def live_prompts(rng: random.Random, count: int) -> list[str]:
    """Prompts the live model learns from: half in the plain wording the evaluation and the page's
    examples use, half the training captions' many wordings (sizes, backgrounds, objects, words
    left out), so it follows what people type and not only one template."""
    found = []
    for _ in range(count):
        if rng.random() < 0.5:
            place = rng.choice(("", *scenes.PLACES))
            size = rng.choice(("", "", *scenes.SIZES))
            found.append(scenes.prompt_for(rng.choice(scenes.SHAPES), rng.choice(list(scenes.COLOURS)), place, size))
        else:
            found.append(scenes.caption(scenes.random_scene(rng), rng))
    return found


@torch.no_grad()
def encode(pipe: Any, texts: list[str], negative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings as the engine makes them (A1111 syntax), with empty-negative ones when asked."""
    conds, unconds = [], []
    for text in texts:
        embeds = prompts.encode_prompts(pipe, text, "", do_cfg=negative)
        conds.append(embeds["prompt_embeds"])
        if negative:
            unconds.append(embeds["negative_prompt_embeds"])
    return torch.cat(conds), torch.cat(unconds) if negative else None


@torch.no_grad()
def teacher_latents(pipe: Any, texts: list[str], noise: torch.Tensor, teacher: Teacher) -> torch.Tensor:
    """The teacher's finished latents (scaled, as the UNet sees them) for each prompt and noise."""
    cond, uncond = encode(pipe, texts, teacher.cfg_scale > 1)
    pipe.scheduler = samplers.build_scheduler(pipe.scheduler.config, teacher.sampler, teacher.schedule)
    pipe.set_progress_bar_config(disable=True)
    size = noise.shape[-1] * pipe.vae_scale_factor
    result = pipe(
        prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(), num_inference_steps=teacher.steps,
        guidance_scale=teacher.cfg_scale, height=size, width=size, output_type="latent",
    )  # fmt: skip
    return result.images.float()


class Delta(torch.nn.Module):
    """A trained change to one layer's weight: low rank (up @ down) where that is smaller than the
    weight itself, the whole matrix where it is not (a rank-r change to a 64x64 layer costs as much)
    or where ``rank`` is 0."""

    def __init__(self, shape: torch.Size, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.shape = tuple(shape)
        outputs, inputs = shape[0], math.prod(shape[1:])
        self.low_rank = rank > 0 and rank * (outputs + inputs) < outputs * inputs
        if self.low_rank:
            # up starts at zero so the student starts as the teacher's UNet, exactly.
            self.down = torch.nn.Parameter(torch.randn(rank, inputs, generator=generator) / math.sqrt(inputs))
            self.up = torch.nn.Parameter(torch.zeros(outputs, rank))
        else:
            self.full = torch.nn.Parameter(torch.zeros(outputs, inputs))

    def forward(self) -> torch.Tensor:
        matrix = self.up @ self.down if self.low_rank else self.full
        return matrix.reshape(self.shape)


class Adapted(torch.nn.Module):
    """A Linear or Conv2d whose weight is the frozen original plus a ``Delta``."""

    def __init__(self, base: torch.nn.Linear | torch.nn.Conv2d, delta: Delta) -> None:
        super().__init__()
        self.base, self.delta = base, delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight + self.delta()
        if isinstance(self.base, torch.nn.Conv2d):
            return self.base._conv_forward(x, weight, self.base.bias)
        return F.linear(x, weight, self.base.bias)


def adapt(unet: torch.nn.Module, rank: int, seed: int) -> dict[str, Delta]:
    """Puts a ``Delta`` on every Linear and Conv2d of ``unet`` (frozen); returns them by layer name."""
    unet.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    deltas: dict[str, Delta] = {}
    layers = [(n, m) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    for name, layer in layers:
        deltas[name] = Delta(layer.weight.shape, rank, generator)
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, Adapted(layer, deltas[name]))
    return deltas


def delta_tensors(deltas: dict[str, Delta]) -> dict[str, torch.Tensor]:
    """The deltas' parameters by flat name ("<layer>.up", ".down" or ".full"), for a file."""
    return {f"{name}.{key}": value.detach() for name, d in deltas.items() for key, value in d.named_parameters()}


def pack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The deltas as stored: low-rank factors in fp16, whole matrices in int8 with one fp32 scale per
    output row (half of fp16's bytes; a change is small and even, so 1/254 of a row's largest
    element is far below what moves a picture)."""
    packed = {}
    for name, tensor in tensors.items():
        if name.endswith(".full"):
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            packed[name + "_int8"] = (tensor / scale).round().clamp(-127, 127).to(torch.int8).contiguous()
            packed[name + "_scale"] = scale.float().contiguous()
        else:
            packed[name] = tensor.half().contiguous()
    return packed


def unpack(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = {name: tensor for name, tensor in packed.items() if not name.endswith(("_int8", "_scale"))}
    for name in packed:
        if name.endswith(".full_int8"):
            base = name.removesuffix("_int8")
            tensors[base] = packed[name].float() * packed[base + "_scale"]
    return tensors


@torch.no_grad()
def merge(unet: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Adds deltas (as ``delta_tensors`` or ``unpack`` give them) into ``unet``'s weights (no adapter
    is left: it runs as fast as before); returns how many layers changed. Unknown layer names are
    an error: a file for another UNet."""
    layers = {name.rsplit(".", 1)[0] for name in tensors}
    for name in sorted(layers):
        weight = unet.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)
        if f"{name}.full" in tensors:
            change = tensors[f"{name}.full"]
        else:
            change = tensors[f"{name}.up"].float() @ tensors[f"{name}.down"].float()
        # Added in fp32: an fp16 model would round the small change away against its weights.
        weight.copy_((weight.float() + change.float().reshape(weight.shape)).to(weight.dtype))
    return len(layers)


def x0_at_last_step(unet: Any, scheduler_config: Any, noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The picture (latents) one step from pure noise predicts: what every one-step sampler returns."""
    alphas = _alphas(scheduler_config)
    alpha, sigma = alphas[LAST_TIMESTEP].sqrt(), (1 - alphas[LAST_TIMESTEP]).sqrt()
    timesteps = torch.full((noise.shape[0],), LAST_TIMESTEP)
    predicted = unet(noise, timesteps, context).sample
    if scheduler_config.get("prediction_type") == "v_prediction":
        return alpha * noise - sigma * predicted
    return (noise - sigma * predicted) / alpha


def _alphas(config: Any) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod


@dataclass
class Pairs:
    """Teacher examples: starting noise, prompt embeddings, finished latents (all on the CPU)."""

    noise: torch.Tensor
    context: torch.Tensor
    latents: torch.Tensor

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen = torch.randint(0, self.noise.shape[0], (size,), generator=generator)
        return self.noise[chosen], self.context[chosen], self.latents[chosen]


@dataclass
class StudentSchedule:
    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 1.5e-3  # low-rank factors
    full_learning_rate: float = 5e-4  # whole-matrix deltas: each element is a weight of its own
    warmup_steps: int = 10

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_for(deltas: dict[str, Delta], schedule: StudentSchedule) -> torch.optim.Optimizer:
    low = [p for d in deltas.values() if d.low_rank for p in d.parameters()]
    full = [p for d in deltas.values() if not d.low_rank for p in d.parameters()]
    groups = [{"params": low, "lr": schedule.learning_rate, "base": schedule.learning_rate},
              {"params": full, "lr": schedule.full_learning_rate, "base": schedule.full_learning_rate}]  # fmt: skip
    return torch.optim.AdamW([group for group in groups if group["params"]], weight_decay=0.0)


def train_student(
    pipe: Any,
    deltas: dict[str, Delta],
    optimizer: torch.optim.Optimizer,
    pairs: Pairs,
    schedule: StudentSchedule,
    seed: int,
    first_step: int = 0,
    on_step: Callable[[int, float], bool] | None = None,
) -> int:
    """Trains ``deltas`` (already on ``pipe.unet``) so that one step from the pairs' noise gives the
    teacher's latents. Each step's batch is drawn from (seed, step) alone, so a run resumed at
    ``first_step`` trains exactly what an unbroken one does. ``on_step(step, loss)`` after each step
    may return True to stop; returns the number of steps done in all."""
    parameters = [p for d in deltas.values() for p in d.parameters()]
    pipe.unet.train()
    step = first_step
    for step in range(first_step, schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = group["base"] * schedule.lr_factor(step)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        noise, context, latents = pairs.batch(schedule.batch_size, generator)
        predicted = x0_at_last_step(pipe.unet, pipe.scheduler.config, noise, context)
        loss = F.mse_loss(predicted, latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if on_step and on_step(step + 1, loss.item()):
            return step + 1
    pipe.unet.eval()
    return max(step + 1, first_step)


def eval_prompts() -> list[tuple[str, str, str]]:
    """Every colour x shape x place, as ``bench/demo_model_eval.py`` asks for them."""
    return list(itertools.product(scenes.COLOURS, scenes.SHAPES, scenes.PLACES))


@torch.no_grad()
def one_step_figures(pipe: Any, seed: int = 1000, limit: int = 0) -> dict[str, float]:
    """Colour, shape and place accuracy of one-step pictures (no CFG) over the evaluation's prompts,
    one noise each, judged by ``scenes.analyse``: the figure a build watches, in seconds."""
    wanted = eval_prompts()[: limit or None]
    texts = [scenes.prompt_for(shape, colour, place) for colour, shape, place in wanted]
    context, _ = encode(pipe, texts, negative=False)
    side = pipe.unet.config.sample_size
    noise = torch.randn(
        len(texts), pipe.unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(seed)
    )
    was_training = pipe.unet.training
    pipe.unet.eval()
    latents = x0_at_last_step(pipe.unet, pipe.scheduler.config, noise, context)
    pipe.unet.train(was_training)
    readings = [scenes.analyse(image) for image in decode(pipe, latents)]
    keys = {"colour": 0, "shape": 1, "place": 2}
    return {
        key: sum(getattr(r, key) == w[index] for r, w in zip(readings, wanted, strict=True)) / len(wanted)
        for key, index in keys.items()
    }


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    array = ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return [Image.fromarray(np.ascontiguousarray(picture)) for picture in array]
