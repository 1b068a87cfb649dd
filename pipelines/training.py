"""Training loops for Stable-Diffusion-format models: the autoencoder, then the denoiser with its
text encoder.

They take any stream of (images, captions) batches, so the same loops that build the built-in
demo model from procedural pictures can fine-tune a model on an artist's own images later. Each
loop is bounded by steps and by wall-clock time, keeps an exponential moving average of the
weights (what gets saved: it draws cleaner pictures than the raw weights), and reports through a
callback instead of printing.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# (images in [-1, 1] shaped (B, 3, H, W), their captions)
Batch = tuple[torch.Tensor, list[str]]
# (step, steps, figures) after each logged step
Report = Callable[[int, int, dict[str, float]], None]


@dataclass
class Schedule:
    """How long and how fast a loop trains."""

    steps: int
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05  # cosine decay ends at this share of the learning rate
    max_seconds: float = math.inf  # stop early (keeping what was learnt) once this much time passed
    ema_decay: float = 0.995  # 0: no moving average. Short runs need a short memory: the
    # average of a model that is still changing fast is blurrier than any of its states.
    log_every: int = 50
    checkpoint_every: int = 0  # 0: no checkpoints, only the end result

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        floor = self.final_lr_fraction
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Ema:
    """A moving average of a module's weights; its decay ramps up so early steps count less."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.average = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.average.parameters(), module.parameters(), strict=True):
            average.lerp_(current.detach(), 1 - decay)


def train_autoencoder(
    vae: Any,
    batches: Iterator[Batch],
    schedule: Schedule,
    latent_penalty: float = 1e-4,
    spread: float = 0.01,
    subject_weight: float = 0.0,
    report: Report | None = None,
) -> Any:
    """Teaches ``vae`` (diffusers ``AutoencoderKL``) to reconstruct the batches' images.

    It is trained as a plain autoencoder on the posterior's mean, whose spread is then pinned at
    ``spread``: a short run with KL's sampled latents ends with a wide posterior and a blurry,
    colour-shifted decoder (seen here: std 0.48 against latents of std 0.9 after 1,200 steps),
    and pipelines that sample from the posterior (img2img, inpaint) would feed that noise on.
    Loss: squared error plus a quarter of the absolute error (keeps flat colours exact), and a
    small penalty on the latents' size in place of KL's. ``subject_weight`` above 0 counts the
    pixels that differ from a picture's border colour that many times more: on pictures that are
    mostly flat background the plain loss is won on the background, and the decoder shifted the
    colours of big shapes (seen here: green on grey came back grey, yellow came back orange).
    Returns the trained model, frozen; with ``schedule.ema_decay`` above 0, its moving average.
    """
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=schedule.learning_rate, weight_decay=0.0)
    ema = Ema(vae, schedule.ema_decay) if schedule.ema_decay else None
    started = time.perf_counter()
    for step in range(schedule.steps):
        _set_lr(optimizer, schedule.learning_rate * schedule.lr_factor(step))
        images, _ = next(batches)
        latents = vae.encode(images).latent_dist.mean
        decoded = vae.decode(latents).sample
        mse = F.mse_loss(decoded, images)
        error = (decoded - images).pow(2) + 0.25 * (decoded - images).abs()
        if subject_weight:
            weights = 1.0 + subject_weight * _off_border(images)
            error = error * weights / weights.mean(dim=(1, 2, 3), keepdim=True)
        loss = error.mean() + latent_penalty * latents.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if ema:
            ema.update(vae)
        if _should_stop(step, schedule, started, report, {"loss": loss.item(), "mse": mse.item()}):
            break
    trained = ema.average if ema else vae.eval().requires_grad_(False)
    pin_spread(trained, spread)
    return trained


def _off_border(images: torch.Tensor, tolerance: float = 0.1) -> torch.Tensor:
    """1 where a pixel differs from its picture's border colour (the median of its edge pixels)."""
    edges = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    border = edges.median(dim=2).values[:, :, None, None]
    return ((images - border).abs().amax(dim=1, keepdim=True) > tolerance).float()


@torch.no_grad()
def pin_spread(vae: Any, spread: float) -> None:
    """Make the posterior's standard deviation ``spread`` for every input (its log-variance half
    of ``quant_conv`` outputs a constant)."""
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:] = 0.0
    vae.quant_conv.bias[channels:] = 2 * math.log(spread)


@torch.no_grad()
def latent_scale(vae: Any, batches: Iterator[Batch], count: int = 8) -> float:
    """The factor that gives the autoencoder's latents unit variance (SD's ``scaling_factor``)."""
    latents = torch.cat([vae.encode(next(batches)[0]).latent_dist.mean for _ in range(count)])
    return float(1.0 / latents.std())


@torch.no_grad()
def reconstruction_error(vae: Any, batches: Iterator[Batch], count: int = 2) -> float:
    """Mean absolute pixel error (0-255 scale) of the autoencoder on pictures it did not train on."""
    errors = []
    for _ in range(count):
        images = next(batches)[0]
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
        errors.append(float((decoded - images).abs().mean()) * 127.5)
    return sum(errors) / len(errors)


def train_denoiser(
    pipe: Any,
    batches: Iterator[Batch],
    schedule: Schedule,
    noise_offset: float = 0.05,
    min_snr_gamma: float = 5.0,
    noisy_weight: float = 0.0,
    clean_share: float = 0.0,
    clean_below: int = 400,
    report: Report | None = None,
    checkpoint: Callable[[int, dict[str, torch.nn.Module]], None] | None = None,
) -> Any:
    """Trains ``pipe.unet`` and ``pipe.text_encoder`` together on the latents of ``pipe.vae``
    (frozen), under ``pipe.scheduler``'s training schedule and prediction type: the noise, or the
    velocity of v-prediction models (SD 2.x 768-v; trained as noise predictors they unlearn).

    An empty caption in the batches is the unconditional case classifier-free guidance uses.
    ``noise_offset`` adds a little noise shared by a whole channel, so the model learns to change
    a picture's overall colour (plain noise barely touches it at the last step of SD's schedule).
    Each step's error counts as the error in the clean picture it implies, weighted
    min(SNR, gamma): min-SNR keeps the nearly clean steps from crowding out layout and colour.
    Under v-prediction ``noisy_weight`` is added: min-SNR weights the noisiest steps ~SNR, nearly
    nothing, and those decide where things go (a noise predictor cannot be given the same floor:
    at SD's last step it would weigh 200 times). ``clean_share`` of each batch is drawn from the
    ``clean_below`` cleanest steps instead of all of them: that is where edges and corners form
    (a square from a circle), and min-SNR leaves them little weight at each step. Returns the
    pipeline with the averaged weights in place; ``checkpoint`` is handed the averaged modules by
    name every ``schedule.checkpoint_every`` steps.
    """
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    # A clean-picture error e is a noise error of e * sqrt(SNR) and a velocity error of e * sqrt(SNR + 1).
    if noise_schedule.config.prediction_type == "v_prediction":
        weights = (snr.clamp(max=min_snr_gamma) + noisy_weight) / (snr + 1)
        target = noise_schedule.get_velocity
    elif noise_schedule.config.prediction_type == "epsilon":
        weights = snr.clamp(max=min_snr_gamma) / snr
        target = _noise_target
    else:
        raise ValueError(f"cannot train prediction type {noise_schedule.config.prediction_type!r}")
    pipe.vae.eval().requires_grad_(False)
    scale = pipe.vae.config.scaling_factor
    trained = [pipe.unet, pipe.text_encoder]
    for module in trained:
        module.train().requires_grad_(True)
    parameters = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=schedule.learning_rate, weight_decay=0.0)
    emas = [Ema(module, schedule.ema_decay) for module in trained]
    started = time.perf_counter()
    for step in range(schedule.steps):
        _set_lr(optimizer, schedule.learning_rate * schedule.lr_factor(step))
        images, captions = next(batches)
        with torch.no_grad():
            latents = pipe.vae.encode(images).latent_dist.mean * scale
            tokens = pipe.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
        noise = torch.randn_like(latents) + noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1)
        timesteps = torch.randint(0, len(alphas), (latents.shape[0],))
        if clean := round(clean_share * len(timesteps)):
            timesteps[:clean] = torch.randint(0, clean_below, (clean,))
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        context = pipe.text_encoder(tokens.input_ids)[0]
        predicted = pipe.unet(noisy, timesteps, context).sample
        errors = F.mse_loss(predicted, target(latents, noise, timesteps), reduction="none").mean(dim=(1, 2, 3))
        loss = (weights[timesteps] * errors).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        for ema, module in zip(emas, trained, strict=True):
            ema.update(module)
        if checkpoint and schedule.checkpoint_every and (step + 1) % schedule.checkpoint_every == 0:
            checkpoint(step + 1, {"unet": emas[0].average, "text_encoder": emas[1].average})
        if _should_stop(step, schedule, started, report, {"loss": loss.item()}):
            break
    pipe.unet, pipe.text_encoder = (ema.average for ema in emas)
    return pipe


def _noise_target(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return noise


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _should_stop(step: int, schedule: Schedule, started: float, report: Report | None, figures: dict) -> bool:
    elapsed = time.perf_counter() - started
    if report and (step % schedule.log_every == 0 or step == schedule.steps - 1):
        report(step, schedule.steps, {**figures, "seconds": elapsed})
    if elapsed > schedule.max_seconds:
        log.warning("training stopped at step %d of %d: %.0f s were up", step + 1, schedule.steps, schedule.max_seconds)
        return True
    return False
