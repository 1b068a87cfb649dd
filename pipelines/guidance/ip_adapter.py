"""IP-Adapter through diffusers: an image prompt, installed on a pipeline for one job and taken off after.

Where the files are looked for (never downloaded here), first in the models folder, laid out like
the hub repo ``h94/IP-Adapter`` so a copy of (part of) that repo can be dropped in as it is::

    <models_dir>/ip-adapter/
        models/ip-adapter_sd15.safetensors               SD 1.x
        models/image_encoder/config.json, model.safetensors    its image encoder (OpenCLIP ViT-H/14)
        sdxl_models/ip-adapter_sdxl_vit-h.safetensors    SDXL, with the ViT-H encoder above
        sdxl_models/ip-adapter_sdxl.safetensors          SDXL, with the ViT-bigG encoder below
        sdxl_models/image_encoder/config.json, model.safetensors
        demo_models/ip-adapter_demo.safetensors          the built-in demo model (none is published;
        demo_models/image_encoder/...                    the tests make a tiny one)

then in the Hugging Face cache (``h94/IP-Adapter`` at the same paths). Only safetensors files are
read. SD 2.x has no published IP-Adapter.

Cost per job: diffusers builds the adapter's attention processors and image projection (22M
parameters for SD 1.5, 44 MB in fp16: a fraction of a second) and the image encoder is loaded
(ViT-H: 632M parameters, 1.3 GB in fp16, a few seconds from disk) unless the caller keeps one and
passes it in. The UNet is shared by every view of a model, so everything put on it is taken off in
``finally``; the image encoder and feature extractor are registered on the view only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import BadRequest

log = logging.getLogger(__name__)

HUB_REPO = "h94/IP-Adapter"
FOLDER = "ip-adapter"  # inside the models folder
# family -> (adapter weights, image encoder folder), best first, as paths inside the repo layout.
LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "sd1": (("models/ip-adapter_sd15.safetensors", "models/image_encoder"),),
    "sdxl": (
        ("sdxl_models/ip-adapter_sdxl_vit-h.safetensors", "models/image_encoder"),
        ("sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder"),
    ),
    "demo": (("demo_models/ip-adapter_demo.safetensors", "demo_models/image_encoder"),),
}
_ENCODER_FILES = ("config.json", "model.safetensors")
MAX_SCALE = 2.0


@dataclass(frozen=True)
class IpAdapterFiles:
    weights: Path  # the adapter's .safetensors file
    image_encoder: Path  # a folder with config.json and model.safetensors
    source: str  # "models folder" or "Hugging Face cache"


def find_ip_adapter(family: str, models_dir: Path) -> IpAdapterFiles | None:
    """The IP-Adapter for a model family ("sd1", "sdxl", "demo"), or None when it is not here."""
    root = Path(models_dir) / FOLDER
    layouts = LAYOUT.get(family, ())
    for weights, encoder in layouts:
        if (root / weights).is_file() and all((root / encoder / name).is_file() for name in _ENCODER_FILES):
            return IpAdapterFiles(root / weights, root / encoder, "models folder")
    if family == "demo":
        return None  # nothing published to find in the cache
    from huggingface_hub import try_to_load_from_cache

    for weights, encoder in layouts:
        found = [
            try_to_load_from_cache(HUB_REPO, path) for path in (weights, *(f"{encoder}/{n}" for n in _ENCODER_FILES))
        ]
        if all(isinstance(path, str) for path in found):
            paths = [Path(str(path)) for path in found]
            return IpAdapterFiles(paths[0], paths[1].parent, "Hugging Face cache")
    return None


def missing_message(family: str, models_dir: Path) -> str:
    """What to download, and where to put it, for the IP-Adapter of ``family``."""
    root = Path(models_dir) / FOLDER
    if family not in LAYOUT:
        return (
            f"no IP-Adapter is published for {family} models (there are ones for SD 1.x and SDXL); "
            "use the reference-only mode, which needs no download"
        )
    if family == "demo":
        weights, encoder = LAYOUT["demo"][0]
        return (
            f"the built-in demo model has no published IP-Adapter; put one at {root / weights} with its image "
            f"encoder in {root / encoder}/, or use the reference-only mode, which needs no download"
        )
    weights, encoder = LAYOUT[family][0]
    files = " ".join([weights, *(f"{encoder}/{name}" for name in _ENCODER_FILES)])
    return (
        f"no IP-Adapter for {family} models was found. Download {weights} and the image encoder "
        f"({encoder}/config.json and model.safetensors, about 2.5 GB) from https://huggingface.co/{HUB_REPO} into "
        f"{root}, keeping the repo's paths (so the adapter is {root / weights}), or into the Hugging Face cache with "
        f"`hf download {HUB_REPO} {files}`; or use the reference-only mode, which needs no download"
    )


def load_image_encoder(files: IpAdapterFiles, dtype: torch.dtype, device: torch.device | str) -> Any:
    """The adapter's CLIP image encoder, for a caller that keeps it between jobs."""
    from transformers import CLIPVisionModelWithProjection

    encoder: Any = CLIPVisionModelWithProjection.from_pretrained(files.image_encoder, dtype=dtype, use_safetensors=True)
    return encoder.to(device)


@contextmanager
def ip_adapter_installed(
    pipe: Any, files: IpAdapterFiles, image: Image.Image, scale: float, *, image_encoder: Any = None
) -> Iterator[dict[str, Any]]:
    """Load the adapter into ``pipe`` at ``scale`` (0..2; 0.5 is the usual balance) for the block.

    Yields the keyword arguments to add to the ``pipe(...)`` call: ``{"ip_adapter_image": image}``.
    Afterwards the UNet has its own processor objects, projection and config again, and the pipe its
    own image encoder and feature extractor, so the next job draws what it would have drawn before.
    Hold the device lock: the UNet is shared by every view of the model.
    """
    problems = []
    if not isinstance(image, Image.Image):
        problems.append(f"the IP-Adapter image must be a picture, got {type(image).__name__}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        problems.append(f"the IP-Adapter scale must be a number from 0 to {MAX_SCALE:g}, got {scale!r}")
    elif not 0 <= scale <= MAX_SCALE:
        problems.append(f"the IP-Adapter scale must be from 0 to {MAX_SCALE:g}, got {scale}")
    if not hasattr(pipe, "load_ip_adapter"):
        problems.append(f"{type(pipe).__name__} cannot take an IP-Adapter; use the reference-only mode")
    if problems:
        raise BadRequest(problems)
    saved = _Saved(pipe)
    started = time.perf_counter()
    try:
        if getattr(pipe, "image_encoder", None) is None:
            # Registered before load_ip_adapter, which then neither loads one nor needs a repo layout.
            encoder = image_encoder or load_image_encoder(files, pipe.unet.dtype, pipe._execution_device)
            pipe.register_modules(image_encoder=encoder)
        pipe.load_ip_adapter(
            str(files.weights.parent),
            subfolder="",
            weight_name=files.weights.name,
            image_encoder_folder=None,
            local_files_only=True,
        )
        pipe.set_ip_adapter_scale(float(scale))
        log.info("IP-Adapter %s (%s) loaded in %.2f s at scale %.2f", files.weights.name, files.source,
                 time.perf_counter() - started, scale)  # fmt: skip
        yield {"ip_adapter_image": image.convert("RGB")}
    finally:
        saved.restore(pipe)


class _Saved:
    """What loading an adapter changes on a pipe and its shared UNet, as it was before."""

    _UNET_PARTS = ("encoder_hid_proj", "text_encoder_hid_proj")
    _PIPE_PARTS = ("image_encoder", "feature_extractor")

    def __init__(self, pipe: Any) -> None:
        unet = pipe.unet
        self.processors = [(m, m.processor) for m in unet.modules() if hasattr(m, "set_processor")]
        # nn.Module keeps a part in _modules once a module was assigned, else as a plain attribute.
        self.unet_attributes = {n: unet.__dict__[n] for n in self._UNET_PARTS if n in unet.__dict__}
        self.unet_modules = {n: unet._modules[n] for n in self._UNET_PARTS if n in unet._modules}
        self.hid_dim_type = unet.config.encoder_hid_dim_type
        self.pipe_attributes = {n: pipe.__dict__[n] for n in self._PIPE_PARTS if n in pipe.__dict__}
        self.pipe_config = pipe._internal_dict  # register_to_config replaces it, never changes it

    def restore(self, pipe: Any) -> None:
        unet = pipe.unet
        try:
            pipe.unload_ip_adapter()  # diffusers' own undo first, for anything it knows that this does not
        except Exception:  # a half-done load: the exact restore below still puts everything back
            log.exception("unloading the IP-Adapter failed; restoring the UNet as it was")
        for module, processor in self.processors:
            module.set_processor(processor)
        for name in self._UNET_PARTS:
            unet._modules.pop(name, None)
            unet.__dict__.pop(name, None)
        unet._modules.update(self.unet_modules)
        unet.__dict__.update(self.unet_attributes)
        unet.config.encoder_hid_dim_type = self.hid_dim_type
        for name in self._PIPE_PARTS:
            pipe.__dict__.pop(name, None)
        pipe.__dict__.update(self.pipe_attributes)
        pipe.__dict__["_internal_dict"] = self.pipe_config
