"""Reference-only and AdaIN guidance: a picture steers a generation without any extra weights.

At every UNet call a "write" pass runs the reference first: its latent, noised to the call's
timestep, through the same UNet with the same text (and SDXL's added conditions). The write pass
records the keys and values of each transformer block's self-attention, projections of what it
reads (reference-only), and the per-channel mean and spread of each ResNet block's output (AdaIN).
The real "read" pass then lets every self-attention look at the reference's tokens beside its
own, and/or moves each ResNet output's statistics toward the reference's.

Everything is installed on the pipeline's UNet for one job by ``reference_installed`` and taken off
in its ``finally``: the original processor objects go back on their modules, every hook is
removed, no attribute is left behind. The write pass runs at batch 1 (2 rows with classifier-free
guidance: the negative and positive text of the first picture) with noise from a generator of its
own, so a batch of 4 gets the pictures of 4 single runs with those seeds.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import images
from ..errors import BadRequest

log = logging.getLogger(__name__)

REFERENCE_MODES = ("reference-only", "reference-adain", "reference-adain+attn")
_ATTENDING = ("reference-only", "reference-adain+attn")
_ADAIN = ("reference-adain", "reference-adain+attn")
# The reference's noise comes from a generator of its own, seeded the same for every job: the
# pictures' seeds and the batch size must not change what the reference looks like to the UNet.
NOISE_SEED = 1_000_003
_EPS = 1e-6
# ControlNet residuals belong to the pictures being drawn, not to the reference.
_PICTURE_ONLY = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)
# UNet arguments that hold one row per picture (times two with guidance): the write pass takes its rows.
_PER_ROW = ("timestep", "encoder_hidden_states", "class_labels", "timestep_cond", "attention_mask",
            "added_cond_kwargs", "encoder_attention_mask")  # fmt: skip


@dataclass(frozen=True)
class Reference:
    """A picture to follow and how closely.

    ``strength`` (0..2) scales the effect: attention to the reference's tokens is weighted by it
    (2 = as if the reference were shown twice) and AdaIN moves the statistics that far toward the
    reference's, up to 1 (exactly them). 0 installs nothing. ``fidelity`` (0..1, sd-webui-controlnet's
    "Style Fidelity", its ``threshold_a``) is how much the negative side of classifier-free
    guidance leaves the reference out, which makes guidance push toward it; it does nothing
    without guidance. ``start``/``end`` are the share of the denoising steps where it applies.
    """

    image: Image.Image
    mode: str = "reference-only"
    strength: float = 1.0
    fidelity: float = 0.5
    start: float = 0.0
    end: float = 1.0

    def checked(self) -> Reference:
        """This reference with an RGB image; ``BadRequest`` listing every bad value otherwise."""
        problems = []
        if not isinstance(self.image, Image.Image):
            problems.append(f"the reference image must be a picture, got {type(self.image).__name__}")
        if self.mode not in REFERENCE_MODES:
            problems.append(f"reference mode {self.mode!r} is unknown; modes are {', '.join(REFERENCE_MODES)}")
        for name, high in (("strength", 2), ("fidelity", 1), ("start", 1), ("end", 1)):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= high:
                problems.append(f"reference {name} must be a number from 0 to {high}, got {value!r}")
        if _is_number(self.start) and _is_number(self.end) and self.start >= self.end:
            problems.append(f"reference start ({self.start}) must be below its end ({self.end})")
        if problems:
            raise BadRequest(problems)
        return replace(self, image=self.image.convert("RGB")) if self.image.mode != "RGB" else self


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@contextmanager
def reference_installed(
    pipe: Any,
    reference: Reference,
    *,
    width: int,
    height: int,
    do_classifier_free_guidance: bool,
    total_steps: int,
) -> Iterator[None]:
    """Guide every ``pipe(...)`` call made inside the block by ``reference``.

    ``width``/``height`` are the size the pipeline draws at (the reference is cropped and resized to
    it); ``total_steps`` is the number of denoising steps it runs (img2img: steps x strength), which
    ``start``/``end`` are shares of. ``do_classifier_free_guidance`` says whether the UNet's batch
    is [negative rows, positive rows]; a pipeline that knows better (guidance-distilled UNets turn
    guidance off) is believed instead. Hold the device lock: the UNet is shared by every view.
    """
    reference = reference.checked()
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    problems = [
        f"{name} must be a positive multiple of {factor}, got {value!r}"
        for name, value in (("width", width), ("height", height))
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % factor
    ]
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        problems.append(f"total_steps must be a whole number of at least 1, got {total_steps!r}")
    if problems:
        raise BadRequest(problems)
    if reference.strength == 0:
        yield  # no effect asked for: nothing touches the UNet, so the pictures are the plain ones
        return
    unet = pipe.unet
    latent = _encode(pipe, reference.image, width, height)
    guide = _Guide(pipe, reference, latent, cfg=do_classifier_free_guidance, total_steps=total_steps)
    replaced: list[tuple[Any, Any]] = []  # (attention module, its own processor)
    handles: list[Any] = []
    try:
        if reference.mode in _ATTENDING:
            for name, attention in _self_attentions(unet):
                replaced.append((attention, attention.processor))
                attention.set_processor(_ReferenceAttention(guide, name, attention.processor))
        if reference.mode in _ADAIN:
            for name, block in _resnets(unet):
                handles.append(block.register_forward_hook(guide.adain_hook(name)))
        handles.append(unet.register_forward_pre_hook(guide.before_unet, with_kwargs=True))
        handles.append(unet.register_forward_hook(guide.after_unet))
        log.info(
            "reference guidance %s: strength %.2f, fidelity %.2f, steps %.0f%%-%.0f%% of %d, %d attentions, %d hooks",
            reference.mode, reference.strength, reference.fidelity, reference.start * 100, reference.end * 100,
            total_steps, len(replaced), len(handles),
        )  # fmt: skip
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attention, processor in replaced:
            attention.set_processor(processor)
        guide.forget()


def _self_attentions(unet: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    """The self-attention (attn1) of every transformer block: what reference-only extends."""
    from diffusers.models.attention import BasicTransformerBlock

    for name, block in unet.named_modules():
        if isinstance(block, BasicTransformerBlock) and not block.only_cross_attention:
            yield f"{name}.attn1", block.attn1


def _resnets(unet: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    from diffusers.models.resnet import ResnetBlock2D

    for name, block in unet.named_modules():
        if isinstance(block, ResnetBlock2D):
            yield name, block


@torch.no_grad()
def _encode(pipe: Any, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The reference as the UNet's clean latent (float32, on the CPU), at the size drawn."""
    picture = images.fit(image, width, height, "crop and resize")
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    vae = pipe.vae
    # SDXL's fp16 VAE overflows; its pipelines run it in float32 for encoding, and so does this.
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        latent = vae.encode(pixels.to(pipe._execution_device, vae.dtype)).latent_dist.mean.float().cpu()
    finally:
        if upcast:
            vae.to(torch.float16)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        channels = latent.shape[1]
        shift = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        spread = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        return (latent - shift) * config.scaling_factor / spread
    return latent * config.scaling_factor


class _Guide:
    """One job's guidance state: the reference latent, what the write pass recorded, the step."""

    def __init__(self, pipe: Any, reference: Reference, latent: torch.Tensor, *, cfg: bool, total_steps: int) -> None:
        unet = pipe.unet
        channels = latent.shape[1]
        in_channels = int(unet.config.in_channels)
        if in_channels not in (channels, 2 * channels + 1):
            raise BadRequest(f"reference guidance supports UNets with {channels} or {2 * channels + 1} input channels "
                             f"(an inpainting UNet), not {in_channels}")  # fmt: skip
        alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise BadRequest(
                f"reference guidance needs a DDPM-family sampler; {type(pipe.scheduler).__name__} has none"
            )
        self.pipe = pipe
        self.reference = reference
        self.latent = latent
        self.declared_cfg = cfg
        # Noise levels of the training schedule, as log sigma: fractional timesteps (Karras and
        # other sigma schedules) are placed between them the way k-diffusion schedulers do.
        alphas = alphas.detach().double().cpu()
        self.log_sigmas = (((1 - alphas) / alphas) ** 0.5).log()
        self.generator = torch.Generator("cpu").manual_seed(NOISE_SEED)
        self.signature = inspect.signature(type(unet).forward)
        self.total_steps = total_steps
        self.step = -1  # index of the denoising step the UNet is called for
        self.last_timestep: float | None = None
        self.phase = "off"  # "write" during the reference pass, "read" during the real one
        self.cfg = cfg
        self.attention_bank: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows: dict[tuple[int, torch.device, bool], torch.Tensor] = {}
        self.warned = False

    # -- the UNet call ------------------------------------------------------------------
    def before_unet(self, unet: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: count the step; when guidance is on for it, run the write pass."""
        bound = self.signature.bind(unet, *args, **kwargs).arguments
        sample: torch.Tensor = bound["sample"]
        timestep = bound["timestep"]
        now = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if now != self.last_timestep:  # second-order samplers and PLMS call again at one timestep
            self.step += 1
            self.last_timestep = now
        self.forget()
        share = self.step / self.total_steps
        if not self.reference.start <= share < self.reference.end:
            return
        self.cfg = self._cfg_now(sample.shape[0])
        rows = [0, sample.shape[0] // 2] if self.cfg else [0]
        write: dict[str, Any] = {}
        for name, value in bound.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                write.update(value)
            elif name not in ("self", "sample", *_PICTURE_ONLY):
                write[name] = _take_rows(value, rows, sample.shape[0]) if name in _PER_ROW else value
        write["sample"] = self._noised(now, len(rows), sample)
        self.phase = "write"
        try:
            unet.forward(**write)  # forward itself, not the module: this hook must not run again
        finally:
            self.phase = "read"

    def after_unet(self, unet: Any, args: tuple[Any, ...], output: Any) -> None:
        self.forget()  # the banks hold activations of a whole UNet pass: free them at once

    def forget(self) -> None:
        self.phase = "off"
        self.attention_bank.clear()
        self.moments.clear()

    def _cfg_now(self, batch: int) -> bool:
        try:
            cfg = bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # a pipeline without the property: the caller's word
            cfg = self.declared_cfg
        if cfg != self.declared_cfg and not self.warned:
            log.warning("reference guidance: the pipeline %s classifier-free guidance; following it",
                        "uses" if cfg else "does not use")  # fmt: skip
            self.warned = True
        if cfg and batch % 2:
            raise RuntimeError(f"a UNet batch of {batch} rows cannot be negative and positive halves")
        return cfg

    def _noised(self, timestep: float, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The reference at ``timestep``'s noise level, in the UNet's input form (q_sample)."""
        latent = self.latent
        if like.shape[-2:] != latent.shape[-2:]:
            raise RuntimeError(f"the reference was prepared for latents of {tuple(latent.shape[-2:])}, "
                               f"the pipeline draws {tuple(like.shape[-2:])}: pass the size it draws at")  # fmt: skip
        noise = torch.randn(latent.shape, generator=self.generator, dtype=torch.float32)
        position = min(max(timestep, 0.0), len(self.log_sigmas) - 1.0)
        low = math.floor(position)
        high = min(low + 1, len(self.log_sigmas) - 1)
        log_sigma = torch.lerp(self.log_sigmas[low], self.log_sigmas[high], position - low)
        alpha_bar = float(1 / (1 + log_sigma.exp() ** 2))
        noised = math.sqrt(alpha_bar) * latent + math.sqrt(1 - alpha_bar) * noise
        if like.shape[1] != latent.shape[1]:
            # An inpainting UNet also reads a mask and the masked picture: nothing masked, the whole reference.
            noised = torch.cat([noised, torch.zeros_like(latent[:, :1]), latent], dim=1)
        return noised.to(like.device, like.dtype).expand(rows, -1, -1, -1)

    # -- what the read pass uses ---------------------------------------------------------
    def bank_rows(self, batch: int, device: torch.device) -> torch.Tensor:
        """For each row of the real batch, the write pass's row with the same text."""
        key = (batch, device, self.cfg)
        if key not in self.rows:  # asked by every attention of every call: made once per job
            rows = torch.arange(batch) // (batch // 2) if self.cfg else torch.zeros(batch, dtype=torch.long)
            self.rows[key] = rows.to(device)
        return self.rows[key]

    def blend_unconditional(self, guided: torch.Tensor, plain: Callable[[slice], torch.Tensor]) -> torch.Tensor:
        """Style fidelity: the negative rows take ``fidelity`` of their result without the reference."""
        fidelity = self.reference.fidelity
        if not self.cfg or fidelity == 0:
            return guided
        half = slice(0, guided.shape[0] // 2)
        negative = fidelity * plain(half) + (1 - fidelity) * guided[half]
        return torch.cat([negative.to(guided.dtype), guided[guided.shape[0] // 2 :]])

    def adain_hook(self, name: str) -> Callable[[torch.nn.Module, Any, torch.Tensor], torch.Tensor | None]:
        def hook(block: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if self.phase == "write":
                self.moments[name] = _moments(output.float())
            elif self.phase == "read" and name in self.moments:
                return self._adain(output, *self.moments[name])
            return None

        return hook

    def _adain(self, features: torch.Tensor, mean_ref: torch.Tensor, std_ref: torch.Tensor) -> torch.Tensor:
        rows = self.bank_rows(features.shape[0], features.device)
        values = features.float()
        mean, std = _moments(values)
        # 1 gives exactly the reference's statistics; going past them (strength 2) only breaks the
        # picture, so above 1 the attention part alone grows (sd-webui-controlnet caps it too).
        amount = min(self.reference.strength, 1.0)
        target_mean = mean + amount * (mean_ref[rows] - mean)
        gain = (std_ref[rows] / std) ** amount
        moved = ((values - mean) * gain + target_mean).to(features.dtype)
        return self.blend_unconditional(moved, lambda rows: features[rows])


def _moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row, per-channel mean and standard deviation over the picture."""
    var, mean = torch.var_mean(features, dim=(2, 3), keepdim=True, correction=0)
    return mean, (var + _EPS).sqrt()


def _take_rows(value: Any, rows: list[int], batch: int) -> Any:
    """``value`` cut to ``rows`` wherever it holds one entry per row of the batch."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {key: _take_rows(item, rows, batch) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take_rows(item, rows, batch) for item in value)
    return value


class _ReferenceAttention:
    """attn1's processor for one job. The write pass runs plain self-attention and banks its keys
    and values; the read pass attends to its own tokens and the reference's together (keys and
    values ``cat([x, bank])``)."""

    def __init__(self, guide: _Guide, name: str, original: Any) -> None:
        self.guide = guide
        self.name = name
        self.original = original
        accepted = inspect.signature(original.__call__).parameters.values()
        self.passes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted)
        self.accepted = {p.name for p in accepted}

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        guide = self.guide
        if guide.phase != "off" and encoder_hidden_states is None and attention_mask is None:
            if guide.phase == "write":
                key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
                guide.attention_bank[self.name] = (key, value)  # projected once, read at every row
                return self._finish(attn, hidden_states, _heads(attn, attn.to_q(hidden_states), key, value))
            bank = guide.attention_bank.get(self.name)
            if bank is not None:
                return self._finish(attn, hidden_states, self._attend(attn, hidden_states, *bank))
        return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def _plain(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The module's own processor, given what ``Attention.forward`` would have given it."""
        passed = kwargs if self.passes_all else {k: v for k, v in kwargs.items() if k in self.accepted}
        return self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **passed
        )

    def _attend(
        self, attn: Any, hidden_states: torch.Tensor, bank_key: torch.Tensor, bank_value: torch.Tensor
    ) -> torch.Tensor:
        """Attention over the picture's tokens and the reference's, before the output projection."""
        guide = self.guide
        rows = guide.bank_rows(hidden_states.shape[0], hidden_states.device)
        query, own_key, own_value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        key = torch.cat([own_key, bank_key[rows]], dim=1)
        value = torch.cat([own_value, bank_value[rows]], dim=1)
        bias = None
        strength = guide.reference.strength
        if strength != 1:
            # log(strength) added to the reference tokens' scores counts each of them ``strength`` times.
            bias = torch.zeros(1, 1, 1, key.shape[1], dtype=query.dtype, device=query.device)
            bias[..., own_key.shape[1] :] = math.log(strength)
        guided = _heads(attn, query, key, value, bias)
        # The output projection is affine, so blending before it is blending after it, for one projection.
        return guide.blend_unconditional(guided, lambda half: _heads(attn, query[half], own_key[half], own_value[half]))

    @staticmethod
    def _finish(attn: Any, hidden_states: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        out = attn.to_out[1](attn.to_out[0](attended))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _heads(
    attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head scaled dot-product attention of projected tokens, heads joined again."""
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
