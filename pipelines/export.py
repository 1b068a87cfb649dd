"""Saving a diffusers SD 1.x pipeline as one A1111/LDM-layout ``.safetensors`` checkpoint.

A1111, ComfyUI, Forge and most model sites exchange Stable Diffusion models as a single file whose
tensor names follow the original LDM code (``model.diffusion_model.*`` for the UNet,
``first_stage_model.*`` for the VAE, ``cond_stage_model.transformer.text_model.*`` for CLIP).
Exporting to that layout lets a model merged or fine-tuned in Atelier be used by those tools, and
lets Atelier's own single-file loader read it back. The name mapping is derived from the UNet and
VAE configs (number of levels, ``layers_per_block``, which blocks have attention), not from a table
written for the 4-level SD 1.5 UNet, so the tiny demo architecture exports the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."

# A prefix map: diffusers module path -> (LDM module path, renames of the module's direct children).
_PrefixMap = dict[str, tuple[str, dict[str, str]]]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers.
_VAE_CONV_PROJECTIONS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")
_LONGEST_PREFIX = 5  # "down_blocks.0.downsamplers.0.conv" has five parts


def save_single_file(pipe: Any, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe``'s UNet, VAE and text encoder to ``path`` as one A1111-layout checkpoint.

    ``dtype`` converts the floating-point tensors (``torch.float16`` halves the file, as most
    shared checkpoints are); ``None`` keeps each tensor's dtype. The file is written under a
    temporary name in the target folder and only then moved into place, so a crash or a full disk
    never leaves a truncated checkpoint that other tools would try to load. An existing file is
    never replaced: a user's models are not ours to overwrite.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path.name}: single-file checkpoints are written as .safetensors only")
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another name (existing models are never overwritten)")
    _require_sd1(pipe)
    tensors: dict[str, torch.Tensor] = {}
    sections = (
        (UNET_PREFIX, _unet_prefix_map(pipe.unet.config), pipe.unet.state_dict()),
        (VAE_PREFIX, _vae_prefix_map(pipe.vae.config), pipe.vae.state_dict()),
    )
    for ldm_prefix, prefix_map, state_dict in sections:
        for name, tensor in state_dict.items():
            tensors[ldm_prefix + _rename(name, prefix_map)] = tensor
    for name, tensor in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.``); older versions still nest it.
        tensors[TEXT_ENCODER_PREFIX + name.removeprefix("text_model.")] = tensor
    expected = sum(len(m.state_dict()) for m in (pipe.unet, pipe.vae, pipe.text_encoder))
    if len(tensors) != expected:
        raise ValueError(f"key mapping collided: {expected} tensors became {len(tensors)} names")
    ldm = {name: _finish(name, tensor, dtype) for name, tensor in tensors.items()}
    _write_atomically(ldm, path)
    log.info("exported %d tensors to %s (%.1f MB)", len(tensors), path, path.stat().st_size / 1e6)
    return path


def _finish(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A detached, contiguous CPU tensor in the requested dtype, VAE attention projections as 1x1 convs."""
    if tensor.ndim == 2 and ".mid.attn_1." in name and name.endswith(_VAE_CONV_PROJECTIONS):
        tensor = tensor[:, :, None, None]
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.detach().to("cpu").contiguous()


def _require_sd1(pipe: Any) -> None:
    """Refuse what this layout cannot hold, rather than write a file no tool reads correctly."""
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe.unet.config, "addition_embed_type", None):
        raise ValueError("SDXL export is not supported: only SD 1.x-family pipelines can be exported")
    unet = pipe.unet.config
    if unet.cross_attention_dim == 1024 or unet.use_linear_projection:
        raise ValueError("SD 2.x export is not supported (its OpenCLIP text encoder has another layout)")
    if type(pipe.text_encoder).__name__ != "CLIPTextModel":
        raise ValueError(f"unsupported text encoder {type(pipe.text_encoder).__name__}; SD 1.x uses CLIPTextModel")
    if unet.class_embed_type or unet.mid_block_type != "UNetMidBlock2DCrossAttn" or unet.time_cond_proj_dim:
        raise ValueError("this UNet has parts an SD 1.x checkpoint has no names for; it cannot be exported")
    if not isinstance(unet.layers_per_block, int):
        raise ValueError("per-level layers_per_block has no A1111 layout; SD 1.x uses one number for all levels")
    if len(unet.down_block_types) != len(unet.up_block_types):
        raise ValueError("the UNet's down and up paths have different numbers of levels")


def _unet_prefix_map(config: Any) -> _PrefixMap:
    """diffusers -> LDM module paths for an SD 1.x-style UNet of any depth.

    LDM numbers the UNet's blocks in one flat sequence per side: each level contributes
    ``layers_per_block`` input blocks (resnet ``.0``, attention ``.1``) followed by its downsampler,
    and ``layers_per_block + 1`` output blocks, the last of which also holds the upsampler, at
    ``.1`` when the level has no attention and ``.2`` when it does.
    """
    layers = config.layers_per_block
    stride = layers + 1
    levels = len(config.down_block_types)
    prefixes: _PrefixMap = {
        "conv_in": ("input_blocks.0.0", {}),
        "time_embedding.linear_1": ("time_embed.0", {}),
        "time_embedding.linear_2": ("time_embed.2", {}),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", {}),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET),
        "conv_norm_out": ("out.0", {}),
        "conv_out": ("out.2", {}),
    }
    for level in range(levels):
        for layer in range(layers):
            block = 1 + stride * level + layer
            prefixes[f"down_blocks.{level}.resnets.{layer}"] = (f"input_blocks.{block}.0", _UNET_RESNET)
            prefixes[f"down_blocks.{level}.attentions.{layer}"] = (f"input_blocks.{block}.1", {})
        prefixes[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{stride * (level + 1)}.0.op", {})
        for layer in range(stride):
            block = stride * level + layer
            prefixes[f"up_blocks.{level}.resnets.{layer}"] = (f"output_blocks.{block}.0", _UNET_RESNET)
            prefixes[f"up_blocks.{level}.attentions.{layer}"] = (f"output_blocks.{block}.1", {})
        upsampler_slot = 2 if "CrossAttn" in config.up_block_types[level] else 1
        prefixes[f"up_blocks.{level}.upsamplers.0"] = (f"output_blocks.{stride * level + layers}.{upsampler_slot}", {})
    return prefixes


def _vae_prefix_map(config: Any) -> _PrefixMap:
    """diffusers -> LDM module paths for the KL autoencoder; LDM numbers decoder levels in reverse."""
    levels = len(config.block_out_channels)
    prefixes: _PrefixMap = {
        "quant_conv": ("quant_conv", {}),
        "post_quant_conv": ("post_quant_conv", {}),
    }
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.conv_in"] = (f"{side}.conv_in", {})
        prefixes[f"{side}.conv_out"] = (f"{side}.conv_out", {})
        prefixes[f"{side}.conv_norm_out"] = (f"{side}.norm_out", {})
        prefixes[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", _VAE_ATTENTION)
        for index in range(2):
            prefixes[f"{side}.mid_block.resnets.{index}"] = (f"{side}.mid.block_{index + 1}", _VAE_RESNET)
    for level in range(levels):
        for layer in range(config.layers_per_block):
            encoder_block = f"encoder.down.{level}.block.{layer}"
            prefixes[f"encoder.down_blocks.{level}.resnets.{layer}"] = (encoder_block, _VAE_RESNET)
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0"] = (f"encoder.down.{level}.downsample", {})
        ldm_level = levels - 1 - level
        for layer in range(config.layers_per_block + 1):
            decoder_block = f"decoder.up.{ldm_level}.block.{layer}"
            prefixes[f"decoder.up_blocks.{level}.resnets.{layer}"] = (decoder_block, _VAE_RESNET)
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0"] = (f"decoder.up.{ldm_level}.upsample", {})
    return prefixes


def _rename(name: str, prefixes: _PrefixMap) -> str:
    """The LDM name of one diffusers tensor: its longest mapped module path, then child renames."""
    parts = name.split(".")
    for length in range(min(_LONGEST_PREFIX, len(parts) - 1), 0, -1):
        module = ".".join(parts[:length])
        if module in prefixes:
            target, children = prefixes[module]
            rest = ".".join(parts[length:])
            for old, new in children.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            return f"{target}.{rest}"
    raise ValueError(f"no A1111 name for tensor {name!r}; this architecture cannot be exported")


def _write_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then move it into place.

    The move uses a hard link where the filesystem has them, because linking fails if ``path``
    appeared meanwhile (``os.replace`` would silently overwrite it); elsewhere (FAT, some network
    shares) it checks once more and falls back to ``os.replace``.
    """
    from safetensors.torch import save_file

    # A model should get the user's usual permissions, but safetensors (like tempfile.mkstemp) writes
    # private 0600 files. A placeholder created with 0666 shows what the umask allows, thread-safely.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        mode = stat.S_IMODE(temp.stat().st_mode)
        save_file(tensors, str(temp), metadata={"format": "pt"})
        temp.chmod(mode)
        with temp.open("rb+") as file:
            os.fsync(file.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            raise FileExistsError(f"{path} appeared while exporting; it was left untouched") from None
        except OSError:
            if path.exists():
                raise FileExistsError(f"{path} appeared while exporting; it was left untouched") from None
            os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
