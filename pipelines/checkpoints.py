"""Reading single-file checkpoints without loading them: header, family, hash.

A1111-style ``.safetensors`` checkpoints carry no config. The family (SD 1.x, SD 2.x, SDXL, their
inpainting variants, or Atelier's demo architecture) is read from tensor names and shapes in the
file's JSON header, so a 7 GB file is classified in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelRefused, ModelUnavailable

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_FIRST_CROSS_ATTENTION = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_SD2_CROSS_ATTENTION = UNET_PREFIX + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
_SDXL_CROSS_ATTENTION = UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
_SDXL_SECOND_ENCODER = "conditioner.embedders.1.model.ln_final.weight"
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# Cross-attention width -> family, for UNets laid out like SD 1.x/2.x.
_CROSS_ATTENTION_FAMILIES = {768: "sd1", 1024: "sd2", 64: "demo"}


@dataclass(frozen=True)
class Family:
    """What a checkpoint is: the config folder the project ships for it, and whether it inpaints."""

    name: str  # "sd1", "sd2", "sdxl" or "demo": a folder in pipelines/configs
    inpainting: bool

    @property
    def label(self) -> str:
        titles = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "demo": "Atelier demo"}
        return titles[self.name] + (" inpainting" if self.inpainting else "")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelRefused(
            path.name,
            "pickle checkpoints (.ckpt, .pt, .pth, .bin) can run arbitrary code when loaded, so "
            "Atelier does not open them. Use a .safetensors version of this model.",
        )


def read_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the header of a ``.safetensors`` file."""
    try:
        with path.open("rb") as file:
            raw_length = file.read(8)
            if len(raw_length) != 8:
                raise ValueError("file is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw_length)
            if length > min(_MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(file.read(length))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(path.name, f"not a readable .safetensors file ({exc})") from exc
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


def detect_family(shapes: dict[str, list[int]], name: str = "checkpoint") -> Family:
    """Classify an LDM-layout checkpoint from its tensor names and shapes."""
    if _CONV_IN not in shapes:
        raise ModelRefused(
            name,
            "this file has no Stable Diffusion UNet in A1111/LDM layout (no "
            f"'{_CONV_IN}'); it may be a LoRA, a VAE or an embedding, which are not checkpoints",
        )
    inpainting = shapes[_CONV_IN][1] == 9
    if _SDXL_SECOND_ENCODER in shapes or (
        _SDXL_CROSS_ATTENTION in shapes and shapes[_SDXL_CROSS_ATTENTION][-1] == 2048
    ):
        return Family("sdxl", inpainting)
    for key in (_SD2_CROSS_ATTENTION, _FIRST_CROSS_ATTENTION):
        if key in shapes and shapes[key][-1] in _CROSS_ATTENTION_FAMILIES:
            return Family(_CROSS_ATTENTION_FAMILIES[shapes[key][-1]], inpainting)
    widths = sorted({shape[-1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")})
    raise ModelRefused(name, f"unknown architecture (cross-attention widths {widths}); supported: SD 1.x, SD 2.x, SDXL")


def file_hash(path: Path, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    """A1111's model hash: the first 10 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()[:10]
