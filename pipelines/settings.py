"""Engine settings: folders, device, precision, memory budgets. Plain data, cheap to import."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
OFFLOADS = ("none", "model", "sequential")  # "model" is --medvram, "sequential" is --lowvram
MAX_BYTES = 2**63 - 1  # what a signed 64-bit size, as torch and the OS count memory, can hold


@dataclass(frozen=True)
class Budgets:
    max_models: int
    ram_bytes: int
    device_bytes: int


@dataclass
class EngineSettings:
    models_dir: Path = field(default_factory=lambda: Path("models"))
    outputs_dir: Path = field(default_factory=lambda: Path("outputs"))
    image_format: str = "png"  # "png", "jpeg" or "webp"
    default_model: str = ""  # empty: the first local model, else the built-in demo
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    precision: str = "auto"
    attention: str = "sdpa"  # or "xformers" (CUDA only; falls back to SDPA with a warning)
    offload: str = "none"
    max_models: int = 3
    ram_budget_bytes: int = 0  # 0: half of this machine's memory
    device_budget_bytes: int = 0  # 0: 85% of the GPU's memory
    vae_tiling_pixels: int = 1536 * 1536  # decode larger images in tiles to bound VAE memory
    max_queue: int = 64  # jobs that may wait for the device at once, from every front door together
    image_url_allow: str = ""  # hosts {image:https://...} may fetch from ("*": any public address); "": none
    # Content standards (pipelines.standards): the AI-source mark is on unless the owner turns it off.
    ai_mark: bool = True
    c2pa_cert: Path | None = None  # with c2pa_key: every file carries a C2PA manifest signed with them
    c2pa_key: Path | None = None
    watermark: str = ""  # the invisible watermark's 48-bit message (12 hex digits or 6 letters); "": none
    safety_check: str = "off"  # "off", "on" or "required" (callers cannot turn it off)
    blocked_terms: Path | None = None  # one term or phrase per line: prompts with one are refused

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.outputs_dir = Path(self.outputs_dir)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload must be one of {OFFLOADS}, got {self.offload!r}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {self.max_models}")
        for name in ("ram_budget_bytes", "device_budget_bytes"):
            _check_byte_count(name, getattr(self, name))

    def resolved_device(self) -> str:
        import torch

        if self.device != "auto":
            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r} asked for, but torch sees no CUDA GPU")
            return self.device
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def resolved_dtype(self) -> Any:
        import torch

        if self.precision == "auto":
            return torch.float32 if self.resolved_device() == "cpu" else torch.float16
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.precision]

    def resolved_budgets(self) -> Budgets:
        import torch

        ram = self.ram_budget_bytes or _machine_memory_bytes() // 2
        device = self.device_budget_bytes
        if not device:
            device_name = self.resolved_device()
            if device_name.startswith("cuda"):
                device = int(torch.cuda.get_device_properties(torch.device(device_name)).total_memory * 0.85)
            else:
                device = ram
        return Budgets(self.max_models, ram, device)

    def offload_warning(self) -> str:
        """A reason why the offload setting does nothing here, or an empty string."""
        if self.offload != "none" and self.resolved_device() == "cpu":
            return f"--{'medvram' if self.offload == 'model' else 'lowvram'} ignored: there is no GPU to offload from"
        return ""


def _check_byte_count(name: str, value: object) -> None:
    # a NaN or an infinity here would only fail later, in int() at the next model load
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BYTES:
        raise ValueError(f"{name} must be a whole number of bytes from 0 to {MAX_BYTES}, got {value!r}")


def _machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on Windows
        return 16 * 1024**3
