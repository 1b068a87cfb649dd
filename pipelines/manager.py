"""The cache of loaded models and the mode views made from them.

The manager owns the only lasting references to model weights. A model is loaded once; its
text-to-image, image-to-image and inpainting pipelines are views made by ``from_pipe`` that share
every module, so switching mode costs about a millisecond and no memory. Recently used models stay
in memory within budgets (count, RAM bytes, device bytes); the least recently used is moved off the
device, then dropped, and dropping really frees it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import catalog, loading
from .checkpoints import file_hash
from .errors import BadRequest, ModelRefused
from .settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass
class ModelStats:
    """Per-model figures since the engine started."""

    hits: int = 0
    misses: int = 0
    load_seconds: float = 0.0
    bytes_held: int = 0
    location: str = "not loaded"  # "device", "cpu" or "not loaded"


@dataclass
class LoadedModel:
    entry: catalog.ModelEntry
    pipe: Any  # text-to-image pipeline, or an inpainting one for inpainting checkpoints
    inpainting: bool
    family: str
    model_hash: str
    size_bytes: int
    on_device: bool = False
    modes: tuple[str, ...] = field(default=("txt2img", "img2img", "inpaint"))
    views: dict[str, Any] = field(default_factory=dict, repr=False)  # by mode; see PipelineManager.view

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def native_size(self) -> int:
        unet = self.pipe.unet.config
        return int(unet.sample_size * self.pipe.vae_scale_factor)


class PipelineManager:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.device = torch.device(settings.resolved_device())
        self.dtype = settings.resolved_dtype()
        self.stats: dict[str, ModelStats] = {}
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()  # loads and evictions never race each other
        self._hashes: dict[tuple[str, int, int], str] = {}  # hashing a 7 GB file once per session is enough
        self.loading = ""  # the model being loaded now, so a page can say why a job waits

    # -- loading ---------------------------------------------------------------------------
    def fetch(self, name: str, progress: loading.DownloadProgress | None = None) -> None:
        """Download a hub model into the HF cache, holding no lock: a long download must not stall
        generations of models that are already here."""
        if name in self._models:
            return
        entry = catalog.resolve(name, self.settings.models_dir)
        if entry.source == "hub":
            loading.fetch_hub(entry.location, self.dtype, progress)

    def get(self, name: str, progress: loading.DownloadProgress | None = None) -> LoadedModel:
        """The loaded model called ``name``, loading it (and evicting others) when needed.

        Callers hold the engine's device lock: moving weights under a running job would break it.
        """
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self.stats[name].hits += 1
                self._models.move_to_end(name)
            else:
                started = time.perf_counter()
                self.loading = name
                try:
                    model = self._load(catalog.resolve(name, self.settings.models_dir), progress)
                finally:
                    self.loading = ""
                stats = self.stats.setdefault(name, ModelStats())  # only names that loaded get a row
                stats.misses += 1
                stats.load_seconds += time.perf_counter() - started
                self._models[name] = model
            self._make_room(keep=name)
            if not model.on_device:
                try:
                    self._to_device(model)
                except torch.OutOfMemoryError:
                    self._to_cpu(model)
                    self._free()
                    raise
            self._refresh_stats()
            return model

    def _load(self, entry: catalog.ModelEntry, progress: loading.DownloadProgress | None) -> LoadedModel:
        if entry.refused:
            raise ModelRefused(entry.name, entry.refused)
        log.info("loading model %s from %s", entry.name, entry.location)
        family, inpainting, model_hash = "demo", False, "demo000000"
        if entry.source == "builtin":
            pipe = loading.load_builtin_demo(self.dtype)
            model_hash = self._folder_hash(loading.DEMO_FOLDER) if loading.demo_is_trained() else model_hash
            if entry.name == catalog.BUILTIN_LIVE:
                from . import live_model

                pipe = live_model.load_live(pipe)
                model_hash = self._hash(live_model.SHIPPED / live_model.WEIGHTS)
        elif entry.source == "folder":
            pipe = loading.load_folder(Path(entry.location), self.dtype)
            family, inpainting = _family_of(pipe), pipe.unet.config.in_channels == 9
            model_hash = self._folder_hash(Path(entry.location))
        elif entry.source == "single_file":
            pipe, detected = loading.load_single_file(Path(entry.location), self.dtype)
            family, inpainting = detected.name, detected.inpainting
            model_hash = self._hash(Path(entry.location))
        else:
            pipe = loading.load_hub(entry.location, self.dtype, progress)
            family, inpainting = _family_of(pipe), pipe.unet.config.in_channels == 9
            model_hash = self._folder_hash(Path(pipe.name_or_path)) if pipe.name_or_path else ""
        _patch_clip_skip(pipe)
        pipe.set_progress_bar_config(disable=True)
        modes = ("inpaint",) if inpainting else ("txt2img", "img2img", "inpaint")
        size = sum(_module_bytes(module) for module in _modules(pipe))
        return LoadedModel(entry, pipe, inpainting, family, model_hash, size, modes=modes)

    def _hash(self, path: Path) -> str:
        info = path.stat()
        key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_hash(path)
        return self._hashes[key]

    def _folder_hash(self, folder: Path) -> str:
        """A1111 hashes checkpoint files; a folder model is hashed by its UNet weights file."""
        weights = sorted(folder.glob("unet/*.safetensors"))
        return self._hash(weights[0]) if weights else ""

    # -- views ------------------------------------------------------------------------------
    def view(self, model: LoadedModel, mode: str, scheduler: Any, own: bool = False) -> Any:
        """A pipeline for ``mode`` sharing every module of ``model``, with ``scheduler``.

        The view is kept with the model and handed out again with the next scheduler: building one
        walks every module (``from_pipe`` casts the whole pipeline), 9 ms of a 64 px live frame on a
        CPU and 20 ms of SD 2's 512 px one-step frame on a GPU. Callers that change a view's modules
        ask for an ``own`` one. Views are used on the device thread only, one job at a time."""
        if mode not in model.modes:
            raise BadRequest(
                f"{model.name} is an inpainting checkpoint: use it in inpaint mode, or pick a regular model for {mode}"
            )
        # Offload hooks belong to the view that set them: each job sets them on a view of its own.
        if own or self.settings.offload != "none":
            return self._new_view(model, mode, scheduler)
        pipe = model.views.get(mode)
        if pipe is None:
            pipe = model.views[mode] = self._new_view(model, mode, scheduler)
        pipe.scheduler = scheduler  # diffusers' setattr records it in the view's config as well
        return pipe

    def _new_view(self, model: LoadedModel, mode: str, scheduler: Any) -> Any:
        import diffusers

        views = loading.VIEW_CLASSES["sdxl" if model.family == "sdxl" else "sd"]
        # dtype passed on purpose: some from_pipe paths cast shared modules to float32 otherwise.
        pipe = getattr(diffusers, views[mode]).from_pipe(model.pipe, scheduler=scheduler, dtype=self.dtype)
        pipe.set_progress_bar_config(disable=True)
        if self.settings.offload == "model" and self.device.type != "cpu":
            pipe.enable_model_cpu_offload(device=self.device)
        elif self.settings.offload == "sequential" and self.device.type != "cpu":
            pipe.enable_sequential_cpu_offload(device=self.device)
        return pipe

    # -- memory -----------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        """A snapshot, readable without waiting for a load in progress."""
        return list(self._models.copy().values())

    def unload(self, name: str | None = None) -> list[str]:
        """Drop one model (or all with ``None``) and free its memory. Returns the names dropped."""
        with self._lock:
            names = [name] if name is not None else list(self._models)
            dropped = [n for n in names if self._models.pop(n, None) is not None]
            self._free()
            self._refresh_stats()
            return dropped

    def _make_room(self, keep: str) -> None:
        """Evict least recently used models until the count and byte budgets hold."""
        budgets = self.settings.resolved_budgets()
        evicted = False
        while len(self._models) > 1:
            in_ram = [m for m in self._models.values() if not m.on_device or self.device.type == "cpu"]
            ram = sum(m.size_bytes for m in in_ram)
            if len(self._models) <= budgets.max_models and ram <= budgets.ram_bytes:
                break
            victim = next(m for n, m in self._models.items() if n != keep)
            log.info("evicting %s (%d models, %.2f GB in RAM)", victim.name, len(self._models), ram / 1e9)
            del self._models[victim.name]
            evicted = True
        if self.device.type != "cpu":
            on_device = [m for m in self._models.values() if m.on_device and m.name != keep]
            kept = self._models[keep].size_bytes
            while on_device and kept + sum(m.size_bytes for m in on_device) > budgets.device_bytes:
                self._to_cpu(on_device.pop(0))
                evicted = True
        if evicted:
            self._free()

    def _to_device(self, model: LoadedModel) -> None:
        if self.device.type != "cpu" and self.settings.offload == "none":
            model.pipe.to(self.device)
            if self.settings.attention == "xformers":
                _enable_xformers(model.pipe)
        model.on_device = True

    def _to_cpu(self, model: LoadedModel) -> None:
        log.info("moving %s off the device to RAM", model.name)
        model.pipe.to("cpu")
        model.on_device = False

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _refresh_stats(self) -> None:
        for name, stats in self.stats.items():
            model = self._models.get(name)
            stats.bytes_held = model.size_bytes if model else 0
            if model is None:
                stats.location = "not loaded"
            else:
                stats.location = "device" if model.on_device and self.device.type != "cpu" else "cpu"


def _modules(pipe: Any) -> Iterator[torch.nn.Module]:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            yield component


def _module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _family_of(pipe: Any) -> str:
    width = pipe.unet.config.cross_attention_dim
    if type(pipe).__name__.startswith("StableDiffusionXL"):
        return "sdxl"
    return {768: "sd1", 1024: "sd2", 64: "demo"}.get(width, "other")


def _patch_clip_skip(pipe: Any) -> None:
    """transformers >= 5.6 flattened CLIPTextModel, but diffusers' clip-skip path still reads
    ``text_encoder.text_model`` (diffusers issue 14124). Point it at the model itself, on this
    instance only and without registering a submodule (that would loop the state dict)."""
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None and "text_model" not in dir(encoder) and hasattr(encoder, "final_layer_norm"):
        object.__setattr__(encoder, "text_model", encoder)


def _enable_xformers(pipe: Any) -> None:
    try:
        pipe.enable_xformers_memory_efficient_attention()
    except (ImportError, ModuleNotFoundError, ValueError, RuntimeError) as exc:
        log.warning("xformers requested but not usable (%s); using torch SDPA attention", exc)
