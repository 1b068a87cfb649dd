"""What the UNet is told about each training picture besides its noisy latents, per model family.

SD 1.x/2.x (and the demo model): the caption through the text encoder, exactly as the pipeline
encodes a prompt (its last hidden states, or the clip-skip layer the pipeline picks).

SDXL: the caption through both text encoders as ``StableDiffusionXLPipeline.encode_prompt`` does
it (each encoder's penultimate hidden states, side by side; the pooled, projected output of the
second), plus six numbers per picture the UNet was trained with ("micro-conditioning"):

    (original height, original width, crop top, crop left, target height, target width)

The original size is the picture's as read; the target size is its training size (the square, or
its aspect bucket); the crop is where the training size's window sits in the picture once scaled to
cover it, which is how ``data.prepared`` centre-crops (PIL's ``ImageOps.fit``). A model told "this
was cropped" learns to draw cut-off subjects less often, the reason SDXL has these numbers.

Encoded captions are kept when the text encoders are frozen: each caption is encoded once.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)
Sizes = list[tuple[int, int]]  # (width, height) per picture


@dataclass
class Encoded:
    """Captions as the UNet takes them."""

    context: torch.Tensor  # (batch, tokens, width): the cross-attention's ``encoder_hidden_states``
    pooled: torch.Tensor | None = None  # SDXL: the second text encoder's projected output, (batch, width)


def micro_conditions(original: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """SDXL's six size numbers for a picture of ``original`` (width, height) trained at ``target``
    (width, height) after scaling it to cover the target and cutting the middle out."""
    (width, height), (target_width, target_height) = original, target
    scale = max(target_width / width, target_height / height)
    left = round((width * scale - target_width) / 2)
    top = round((height * scale - target_height) / 2)
    return height, width, max(0, top), max(0, left), target_height, target_width


class PromptConditioning:
    """SD 1.x/2.x: the captions through the text encoder, as the pipeline encodes prompts."""

    text_encoders: tuple[str, ...] = ("text_encoder",)

    def __init__(self, view: Any, device: torch.device, frozen: bool) -> None:
        self.view = view  # a pipeline view whose text encoders are the ones being trained (or the frozen ones)
        self.device = device
        self.frozen = frozen
        self._kept: dict[str, Encoded] = {}

    def encode(self, captions: list[str]) -> Encoded:
        embeds, _ = self.view.encode_prompt(captions, self.device, 1, False)
        return Encoded(embeds)

    @torch.no_grad()
    def keep(self, captions: list[str]) -> None:
        """Encode every distinct caption once, when the text encoders are not trained."""
        if self.frozen:
            for caption in dict.fromkeys(captions):
                self._kept[caption] = self.encode([caption])

    def captions(self, captions: list[str]) -> Encoded:
        if not self.frozen:
            return self.encode(captions)
        kept = [self._kept[caption] for caption in captions]
        pooled = [item.pooled for item in kept if item.pooled is not None]
        return Encoded(torch.cat([item.context for item in kept]), torch.cat(pooled) if pooled else None)

    def unet_inputs(self, captions: list[str], indices: list[int]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``encoder_hidden_states`` and any further UNet arguments for the pictures ``indices``
        captioned ``captions``."""
        return self.captions(captions).context, {}

    def clear(self) -> None:
        self._kept.clear()


class SdxlConditioning(PromptConditioning):
    """SDXL: both text encoders, the pooled embedding and each picture's size numbers."""

    text_encoders = ("text_encoder", "text_encoder_2")

    def __init__(self, view: Any, device: torch.device, frozen: bool, originals: Sizes, targets: Sizes) -> None:
        super().__init__(view, device, frozen)
        rows = [micro_conditions(original, target) for original, target in zip(originals, targets, strict=True)]
        self.time_ids = torch.tensor(rows, dtype=torch.float32).reshape(-1, TIME_IDS)  # one row per picture

    def encode(self, captions: list[str]) -> Encoded:
        embeds, _, pooled, _ = self.view.encode_prompt(
            prompt=captions, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return Encoded(embeds, pooled)

    def unet_inputs(self, captions: list[str], indices: list[int]) -> tuple[torch.Tensor, dict[str, Any]]:
        encoded = self.captions(captions)
        time_ids = self.time_ids[indices].to(self.device, encoded.context.dtype)
        return encoded.context, {"added_cond_kwargs": {"text_embeds": encoded.pooled, "time_ids": time_ids}}


def sdxl_problems(name: str, pipe: Any) -> list[str]:
    """Why this trainer cannot train the SDXL-family model ``pipe`` (empty: it can)."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
        return [f"{name} has one text encoder (an SDXL refiner?): train a LoRA on an SDXL base model"]
    config = pipe.unet.config
    if not isinstance(config.layers_per_block, int):
        return [f"{name}'s UNet has a different number of layers per block ({config.layers_per_block}): "
                "LoRA files cannot name its layers"]  # fmt: skip
    expected = pipe.unet.add_embedding.linear_1.in_features
    given = config.addition_time_embed_dim * TIME_IDS + pipe.text_encoder_2.config.projection_dim
    if expected != given:
        return [f"{name}'s UNet takes {expected} added conditioning numbers, not the {given} of an SDXL base "
                "model (size and crop with the pooled text): training it is not supported"]  # fmt: skip
    return []


def conditioning_for(
    family: str, view: Any, device: torch.device, frozen: bool, originals: Sizes, targets: Sizes
) -> PromptConditioning:
    """The conditioning a model of ``family`` trains with, the pictures being ``originals`` in size
    and trained at ``targets`` (both (width, height), one per picture)."""
    if family == "sdxl":
        return SdxlConditioning(view, device, frozen, originals, targets)
    return PromptConditioning(view, device, frozen)


def text_encoder_parts(family: str) -> tuple[str, ...]:
    """The pipeline's text encoders a model of ``family`` encodes captions with."""
    return SdxlConditioning.text_encoders if family == "sdxl" else PromptConditioning.text_encoders


@torch.no_grad()
def encode_pictures(vae: Any, pictures: Iterable[Image.Image], device: torch.device) -> list[torch.Tensor]:
    """Each picture (at its training size) as the UNet's latents, scaled as the pipelines scale them.
    A float16 autoencoder whose config asks for float32 (SDXL's overflows to NaN in float16; the
    pipelines upcast it to decode) encodes through a float32 copy."""
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = copy.deepcopy(vae).float()
    scale = vae.config.scaling_factor
    latents = []
    for picture in pictures:
        pixels = _to_tensor(picture).to(device, vae.dtype)
        latents.append(vae.encode(pixels[None]).latent_dist.mean[0] * scale)
    return latents


def _to_tensor(image: Image.Image) -> torch.Tensor:
    import numpy as np

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    return pixels.permute(2, 0, 1) / 127.5 - 1.0
