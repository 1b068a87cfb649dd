"""Writing a trained LoRA as A1111 and ComfyUI read one: kohya's key layout, kohya's ``ss_*``
training metadata, and the tensor hash A1111 looks the file up by.

Layout (kohya's for SD 1.x/2.x models, whose UNet kohya names the diffusers way): one entry per
changed layer, named by the part and the module path with dots turned into underscores,

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight  (rank, in)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight    (out, rank)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha             ()
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                   ...

and the change it makes is ``up @ down * alpha / rank``, exactly peft's ``lora_B @ lora_A *
lora_alpha / r``. Text-encoder names always carry ``text_model_``: transformers 5 flattened
``CLIPTextModel`` (its modules are ``encoder.layers...``), but every reader of these files expects
the nested names older versions had.

SDXL files differ in two ways. The text encoders are ``lora_te1_`` and ``lora_te2_``. The UNet is
named the way the original (Stability's "sgm") UNet numbers its blocks, because kohya's trainer
builds that UNet for SDXL: ``input_blocks`` and ``output_blocks`` are flat lists, one entry per
resnet (with the attention after it as ``.1``), the first input block being the stem convolution
and each downsampler taking an entry of its own; ``middle_block.1`` is the middle attention:

    diffusers  down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q
    kohya      lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q    (2 layers per block)
    diffusers  mid_block.attentions.0...          kohya  lora_unet_middle_block_1_...
    diffusers  up_blocks.0.attentions.2...        kohya  lora_unet_output_blocks_2_1_...

These are the names A1111 and ComfyUI match SDXL LoRA files by, and the ones diffusers' kohya
reader (``_maybe_map_sgm_blocks_to_diffusers``) numbers back; both directions depend on the UNet's
layers per block (2 in every SDXL; the tests' tiny SDXL has 1).

The metadata holds what the training used, as strings (safetensors metadata is text only), and
``sshs_model_hash``: SHA-256 of the bytes after the header, what A1111 shows and matches pictures'
``Lora hashes`` by (the same number ``LoraLibrary.short_hash`` computes). Nothing in it depends on
the clock, so the same training writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..files import replace_file

if TYPE_CHECKING:
    from .data import DataSet
    from .train import TrainSettings

PART_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
SDXL_PART_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# The version names kohya writes in ``ss_base_model_version``, by the model manager's family.
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "demo": "atelier_demo"}
_SAFETENSORS_DTYPES = {torch.float16: ("F16", 2), torch.bfloat16: ("BF16", 2), torch.float32: ("F32", 4)}

Layers = Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # (part, module) -> (down, up)
_BLOCK_ATTENTION = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MIDDLE_ATTENTION = re.compile(r"^mid_block\.attentions\.0\.(.+)$")


def sgm_unet_name(module_name: str, layers_per_block: int = 2) -> str:
    """A diffusers UNet module inside an attention block, named in the original UNet's block
    numbering (see the module note): ``down_blocks.1.attentions.0.x`` -> ``input_blocks.4.1.x``."""
    found = _BLOCK_ATTENTION.match(module_name)
    if found:
        kind, block, layer, rest = found.groups()
        per_block = layers_per_block + 1  # the resnets, and the downsampler or upsampler's place
        if kind == "down_blocks":
            return f"input_blocks.{1 + int(block) * per_block + int(layer)}.1.{rest}"
        return f"output_blocks.{int(block) * per_block + int(layer)}.1.{rest}"
    found = _MIDDLE_ATTENTION.match(module_name)
    if found:
        return f"middle_block.1.{found.group(1)}"
    raise ValueError(f"{module_name!r} is not in an attention block: SDXL LoRA names cover those only here")


def naming(family: str, unet_config: Any) -> tuple[bool, int]:
    """(SDXL, the UNet's layers per block) for a model of ``family`` (the model manager's): what
    the names in its LoRA files depend on."""
    sdxl = family == "sdxl"
    return sdxl, int(unet_config.layers_per_block) if sdxl else 2


def kohya_name(part: str, module_name: str, sdxl: bool = False, layers_per_block: int = 2) -> str:
    """The flat kohya name of one layer: ``lora_unet_down_blocks_0_..._to_q`` (SD 1.x/2.x),
    ``lora_unet_input_blocks_4_1_..._to_q`` (SDXL, whose UNet has ``layers_per_block``)."""
    prefixes = SDXL_PART_PREFIXES if sdxl else PART_PREFIXES
    if part not in prefixes:
        raise ValueError(f"LoRA files hold the UNet and the text encoders only, not {part!r}")
    if part != "unet" and not module_name.startswith("text_model."):
        module_name = f"text_model.{module_name}"
    if part == "unet" and sdxl:
        module_name = sgm_unet_name(module_name, layers_per_block)
    return prefixes[part] + module_name.replace(".", "_")


def kohya_state_dict(
    layers: Layers, alpha: float, dtype: torch.dtype, sdxl: bool = False, layers_per_block: int = 2
) -> dict[str, torch.Tensor]:
    """``layers`` (peft's ``lora_A``/``lora_B`` weights by part and module) as kohya's entries, on
    the CPU in ``dtype``; every layer gets ``alpha`` (its scale is ``alpha / rank``)."""
    tensors: dict[str, torch.Tensor] = {}
    for (part, module_name), (down, up) in sorted(layers.items()):
        name = kohya_name(part, module_name, sdxl, layers_per_block)
        tensors[f"{name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return tensors


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the bytes a safetensors file of ``tensors`` holds after its header. Metadata lives
    in the header, so the hash is the same with any metadata (kohya's ``sshs_model_hash``)."""
    from safetensors.torch import save

    data = save(tensors)
    (header_bytes,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_bytes :]).hexdigest()


@dataclass(frozen=True)
class Run:
    """What a training run did, besides its settings and data, for its file's metadata."""

    steps_done: int
    model_name: str
    model_hash: str
    family: str  # the model manager's: sd1, sd2, sdxl, demo
    prediction: str  # the scheduler's prediction type
    mixed_precision: str  # kohya's spelling: fp16, bf16 or no (the model's own precision, float32)
    sizes: list[tuple[int, int]]  # each picture's training size
    probe_before: float
    probe_after: float


def kohya_fields(settings: TrainSettings, data: DataSet, run: Run) -> dict[str, Any]:
    """The ``ss_*`` entries kohya's trainer writes, filled from this run (what A1111's and ComfyUI's
    LoRA cards show: rank, alpha, steps, resolution, seed, the training tags, the base model)."""
    count = len(data.examples)
    per_epoch = math.ceil(count / settings.batch_size)
    rate, done = settings.learning_rate, run.steps_done
    text_rate = rate if settings.train_text_encoder else 0.0
    trigger = f"trigger word: {settings.trigger_word.strip()}; " if settings.trigger_word.strip() else ""
    comment = f"{trigger}trained in Atelier; probe loss {run.probe_before:.4f} -> {run.probe_after:.4f}"
    fields: dict[str, Any] = {
        "ss_network_module": "networks.lora", "ss_network_dim": settings.rank, "ss_network_alpha": settings.alpha,
        "ss_learning_rate": rate, "ss_unet_lr": rate, "ss_text_encoder_lr": text_rate,
        "ss_max_train_steps": settings.steps, "ss_steps": done, "ss_epoch": math.ceil(done / per_epoch),
        "ss_num_epochs": math.ceil(settings.steps / per_epoch), "ss_num_batches_per_epoch": per_epoch,
        "ss_batch_size_per_device": settings.batch_size, "ss_total_batch_size": settings.batch_size,
        "ss_gradient_accumulation_steps": 1, "ss_num_train_images": count, "ss_num_reg_images": 0,
        "ss_resolution": f"({settings.resolution}, {settings.resolution})", "ss_seed": settings.seed,
        "ss_output_name": settings.name, "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01)",
        "ss_lr_scheduler": "constant", "ss_lr_warmup_steps": 0, "ss_max_grad_norm": 1.0,
        "ss_mixed_precision": run.mixed_precision, "ss_cache_latents": True,
        "ss_enable_bucket": settings.buckets, "ss_shuffle_caption": False, "ss_keep_tokens": 0,
        "ss_flip_aug": False, "ss_color_aug": False, "ss_random_crop": False, "ss_caption_dropout_rate": 0.0,
        "ss_sd_model_name": run.model_name, "ss_sd_model_hash": run.model_hash,
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(run.family, run.family),
        "ss_v2": run.family == "sd2", "ss_v_parameterization": run.prediction == "v_prediction",
        "ss_tag_frequency": data.tag_frequency(),
        "ss_dataset_dirs": {folder: {"n_repeats": 1, "img_count": n} for folder, n in data.folders().items()},
        "ss_dataset_hash": data.digest(), "ss_training_comment": comment,
    }  # fmt: skip
    if settings.buckets:
        fields["ss_bucket_info"] = {"buckets": dict(Counter(f"{w}x{h}" for w, h in run.sizes))}
    return fields


def training_metadata(fields: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``ss_*`` entries as strings (dicts and lists as JSON, in a fixed key order) plus the tensor
    hash. ``fields`` are written as given, under their own names."""
    metadata: dict[str, str] = {}
    for key, value in sorted(fields.items()):
        if value is None:
            continue
        metadata[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    metadata["sshs_model_hash"] = tensor_hash(tensors)
    return metadata


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write the file whole or not at all (a temp file beside it, synced, then renamed over any
    older version: a picker listing the folder meanwhile sees the old file or the new one).
    Returns the file's size in bytes."""
    data = serialized(tensors, metadata)
    replace_file(path, data)
    return len(data)


def serialized(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``tensors`` with ``metadata``, the same bytes every time.

    safetensors' own writer keeps the metadata in a Rust hash map, whose order changes from call to
    call; here its header (tensor entries and offsets) is kept and the metadata is put in, sorted."""
    from safetensors.torch import save

    plain = save(tensors)
    (length,) = struct.unpack("<Q", plain[:8])
    header = json.loads(plain[8 : 8 + length])
    header.pop("__metadata__", None)
    text = json.dumps({"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + plain[8 + length :]


def predicted_bytes(shapes: Mapping[tuple[str, str], tuple[int, int]], rank: int, dtype: torch.dtype,
                    metadata_bytes: int = 3000, sdxl: bool = False, layers_per_block: int = 2) -> int:  # fmt: skip
    """The size of the file a LoRA of ``rank`` on layers of (in, out) ``shapes`` takes, before it
    is trained: its tensors' bytes plus its header (names and shapes; the metadata estimated)."""
    name, itemsize = _SAFETENSORS_DTYPES[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for (part, module_name), (fan_in, fan_out) in sorted(shapes.items()):
        stem = kohya_name(part, module_name, sdxl, layers_per_block)
        for suffix, shape in (
            (".alpha", []),
            (".lora_down.weight", [rank, fan_in]),
            (".lora_up.weight", [fan_out, rank]),
        ):
            size = itemsize * math.prod(shape)
            header[stem + suffix] = {"dtype": name, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + metadata_bytes + offset
