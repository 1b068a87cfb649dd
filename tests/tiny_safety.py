"""A tiny safety checker for tests: diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision tower,
a projection and concept embeddings) small enough to build in a second, that flags one colour.

A CLIP tower with random weights pools its patches by near-uniform attention, so its embedding is
the picture's average: a demo picture is ~90 % background, and a red shape on white embeds almost
like a blue shape on white (measured: cosines to a solid red picture overlap across colours). So the
first layer is set by hand to look for the colour instead of averaging: each patch is embedded as
its colour's distance from the flagged colour, and the class token's attention goes to the patches
nearest that colour, as a max-pool. Every other weight stays random from a fixed seed. The concept
embedding is then, honestly, the checker's own embedding of a solid picture of the flagged colour,
and the threshold is set halfway between the lowest cosine of flagged-colour pictures (solid and
demo-like shapes on white) and the highest cosine of every other demo colour and background, with
a margin that is asserted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil

from pipelines.scenes import BACKGROUNDS, COLOURS, PLACES, SHAPES, SIZES, Scene, render

log = logging.getLogger(__name__)

SEED = 20240622
IMAGE_SIDE = 64  # the demo's native side: pictures are seen at full detail
PATCH = 4  # a demo "small" shape (radius 7 px) still fills whole patches
HIDDEN = 32
PROJECTION = 16
TOLERANCE = 0.18  # colour distance (0-1 per channel) that counts as "about the flagged colour"
ANCHOR = 2.0  # weight of the "this patch is the flagged colour" channel against the colour distance
SHARPNESS = 40.0  # attention logit scale: the few flagged patches win over a whole background
MIN_MARGIN = 0.1  # cosine gap between flagged and other pictures that the build insists on
NEVER = 2.0  # a threshold no cosine reaches: the unused concept slots never fire


@dataclass(frozen=True)
class Calibration:
    flagged_min: float  # lowest cosine of a flagged-colour picture to the concept embedding
    others_max: float  # highest cosine of any other colour's picture
    threshold: float


def tiny_config() -> CLIPConfig:
    vision = {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 1,
        "image_size": IMAGE_SIDE,
        "patch_size": PATCH,
    }
    text = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 1,
            "num_attention_heads": 1, "vocab_size": 64, "max_position_embeddings": 16,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # fmt: skip
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=PROJECTION)


def tiny_processor() -> CLIPImageProcessorPil:
    # The standard CLIP normalisation, as the real checker's preprocessor_config.json has it.
    side = {"shortest_edge": IMAGE_SIDE}
    return CLIPImageProcessorPil(size=side, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})


def build_checker(folder: Path, flagged_rgb: tuple[int, int, int]) -> Path:
    """Write a tiny checker that flags pictures showing ``flagged_rgb`` into ``folder`` (config.json,
    model.safetensors, preprocessor_config.json, the hub checker's layout) and return the folder."""
    torch.manual_seed(SEED)
    model = StableDiffusionSafetyChecker(tiny_config()).eval()
    processor = tiny_processor()
    _look_for_colour(model, processor, flagged_rgb)
    calibration = _set_concepts(model, processor, flagged_rgb)
    log.info("tiny safety checker for %s: %s", flagged_rgb, calibration)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@torch.no_grad()
def _look_for_colour(model: StableDiffusionSafetyChecker, processor: CLIPImageProcessorPil, rgb: tuple) -> None:
    """Set the first layer so the class token reads the patches nearest ``rgb`` (see module doc)."""
    vision: Any = model.vision_model  # typed loosely by torch: its submodules are reached by name
    mean = torch.tensor(processor.image_mean)
    std = torch.tensor(processor.image_std)
    target = torch.tensor(rgb, dtype=torch.float32) / 255
    # Patch embedding: channels 1-3 the patch's mean colour minus the target, in tolerance units, and
    # channels 4-6 their negatives (so the layer norms see a zero-mean colour part); channel 0 is the
    # anchor, a constant carried by the position embedding.
    conv = torch.zeros_like(vision.embeddings.patch_embedding.weight)
    position = torch.zeros_like(vision.embeddings.position_embedding.weight)
    for channel in range(3):
        gain = std[channel] / (TOLERANCE * PATCH * PATCH)
        offset = (mean[channel] - target[channel]) / TOLERANCE
        conv[1 + channel, channel] = gain
        conv[4 + channel, channel] = -gain
        position[1:, 1 + channel] = offset
        position[1:, 4 + channel] = -offset
    position[1:, 0] = ANCHOR
    vision.embeddings.patch_embedding.weight.copy_(conv)
    vision.embeddings.position_embedding.weight.copy_(position)
    vision.embeddings.class_embedding.zero_()  # the class token starts empty; layer norms leave it at 0
    for norm in (vision.pre_layrnorm, vision.post_layernorm, *(layer.layer_norm1 for layer in vision.encoder.layers)):
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    first, *rest = vision.encoder.layers
    attention = first.self_attn
    eye = torch.eye(HIDDEN)
    # Query: a constant pointing at the anchor; key: the anchor channel. A patch of the target colour
    # keeps the whole anchor after the layer norm, any other patch only a share of it.
    attention.q_proj.weight.zero_()
    attention.q_proj.bias.zero_()
    attention.q_proj.bias[0] = SHARPNESS
    attention.k_proj.weight.zero_()
    attention.k_proj.weight[0, 0] = 1.0
    attention.k_proj.bias.zero_()
    attention.v_proj.weight.copy_(eye)
    attention.v_proj.bias.zero_()
    attention.out_proj.weight.copy_(eye)
    attention.out_proj.bias.zero_()
    # The remaining blocks add nothing: the pooled output is what the first attention read.
    first.mlp.fc2.weight.zero_()
    first.mlp.fc2.bias.zero_()
    for layer in rest:
        layer.self_attn.out_proj.weight.zero_()
        layer.self_attn.out_proj.bias.zero_()
        layer.mlp.fc2.weight.zero_()
        layer.mlp.fc2.bias.zero_()


@torch.no_grad()
def embed(model: StableDiffusionSafetyChecker, processor: CLIPImageProcessorPil, images: list) -> torch.Tensor:
    """The checker's unit image embeddings, computed the way its ``forward`` does."""
    pixels = processor(images=images, return_tensors="pt").pixel_values
    embeds = model.visual_projection(model.vision_model(pixels)[1])
    return torch.nn.functional.normalize(embeds, dim=-1)


def demo_like(rgb: tuple[int, int, int], background: str = "white") -> list[Image.Image]:
    """Pictures as the demo draws them: every shape, place and size in ``rgb`` on ``background``."""
    name = next((n for n, v in COLOURS.items() if v == rgb), None)
    if name is None:
        raise ValueError(f"{rgb} is not one of the demo's colours")
    return [render(Scene(s, name, p, z, background)) for s in SHAPES for p in PLACES for z in SIZES]


@torch.no_grad()
def _set_concepts(model: StableDiffusionSafetyChecker, processor: CLIPImageProcessorPil, rgb: tuple) -> Calibration:
    concept = embed(model, processor, [Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), rgb)])[0]
    flagged = [Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), rgb)]
    if rgb in COLOURS.values():
        flagged += demo_like(rgb)
    others = [Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), v) for v in (*COLOURS.values(), *BACKGROUNDS.values())]
    others = [im for im in others if im.getpixel((0, 0)) != rgb]
    others += [im for v in COLOURS.values() if v != rgb for im in demo_like(v)]
    flagged_min = float((embed(model, processor, flagged) @ concept).min())
    others_max = float((embed(model, processor, others) @ concept).max())
    margin = flagged_min - others_max
    if margin < MIN_MARGIN:
        raise AssertionError(f"tiny checker for {rgb} separates poorly: flagged >= {flagged_min:.3f}, "
                             f"others <= {others_max:.3f} (margin {margin:.3f} < {MIN_MARGIN})")  # fmt: skip
    threshold = (flagged_min + others_max) / 2
    model.concept_embeds[0] = concept
    model.concept_embeds_weights[0] = threshold
    model.concept_embeds_weights[1:] = NEVER
    model.special_care_embeds_weights[:] = NEVER
    return Calibration(flagged_min, others_max, threshold)
