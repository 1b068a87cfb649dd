"""Upscalers for the hires fix, by A1111's names.

Three kinds, as in A1111: latent upscalers (the first pass's latents are interpolated, nothing is
decoded), plain image resampling ("None", "Lanczos", "Nearest") and upscaler models (ESRGAN,
Real-ESRGAN...) read from ``models/ESRGAN`` and ``models/RealESRGAN``. Models are run through
spandrel, an optional extra (``pip install 'atelier[upscalers]'``) imported only when a model file
is used. Only ``.safetensors`` files are listed: pickled ``.pth`` files can run code when loaded.

Nothing here imports torch at module level, so request checking can use the names cheaply.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import BadRequest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentMode:
    """How A1111 interpolates latents for one "Latent ..." upscaler (torch.nn.functional.interpolate)."""

    name: str
    mode: str
    antialias: bool


# A1111's latent upscale modes, in the order its hires dropdown shows them.
LATENT_MODES: tuple[LatentMode, ...] = (
    LatentMode("Latent", "bilinear", False),
    LatentMode("Latent (antialiased)", "bilinear", True),
    LatentMode("Latent (bicubic)", "bicubic", False),
    LatentMode("Latent (bicubic antialiased)", "bicubic", True),
    LatentMode("Latent (nearest)", "nearest", False),
    LatentMode("Latent (nearest-exact)", "nearest-exact", False),
)
# "None" upscales nothing itself; A1111 then resizes to the target with Lanczos, and so do we.
IMAGE_RESAMPLERS: tuple[tuple[str, Image.Resampling], ...] = (
    ("None", Image.Resampling.LANCZOS),
    ("Lanczos", Image.Resampling.LANCZOS),
    ("Nearest", Image.Resampling.NEAREST),
)
DEFAULT_UPSCALER = "Latent"  # A1111's default hires upscaler
MODEL_FOLDERS = ("ESRGAN", "RealESRGAN")
INSTALL_HINT = "pip install 'atelier[upscalers]'"
TILE = 192  # input pixels per tile for upscaler models: bounds memory on large pictures
TILE_OVERLAP = 24  # context each tile sees beyond its own pixels, so seams do not show
MAX_MODEL_PASSES = 3  # a 2x model is run at most three times (8x) before the final resize, as in A1111


def latent_names() -> list[str]:
    return [mode.name for mode in LATENT_MODES]


def is_latent(name: str) -> bool:
    """Whether ``name`` (any case) is a latent upscaler: those need the first pass's latents."""
    return _canonical(name, latent_names()) is not None


def latent_mode(name: str) -> LatentMode:
    canonical = _canonical(name, latent_names())
    for mode in LATENT_MODES:
        if mode.name == canonical:
            return mode
    raise BadRequest(f"'{name}' is not a latent upscaler; latent upscalers: {', '.join(latent_names())}")


class UpscalerLibrary:
    """The upscalers a models folder offers, and the one upscaler model kept loaded between jobs.

    ``device`` is where upscaler models run (the engine's device; the CPU by default).
    """

    def __init__(self, models_dir: Path | str, device: Any = "cpu", tile: int = TILE) -> None:
        self.models_dir = Path(models_dir)
        self.device = device
        self.tile = tile
        self._lock = threading.Lock()  # one load at a time; the cache is replaced whole
        self._loaded: tuple[Path, float, Any] | None = None  # file, its mtime, spandrel's descriptor

    # -- names -----------------------------------------------------------------------------
    def model_files(self) -> dict[str, Path]:
        """Upscaler model files by name (the file's stem), sorted as A1111 sorts them (any case)."""
        found: dict[str, Path] = {}
        taken = {name.lower() for name in latent_names() + [name for name, _ in IMAGE_RESAMPLERS]}
        for folder in MODEL_FOLDERS:
            directory = self.models_dir / folder
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.safetensors")):
                # A file called "Lanczos.safetensors" would hide the built-in; the first folder wins a tie.
                if path.is_file() and path.stem.lower() not in taken:
                    found[path.stem] = path
                    taken.add(path.stem.lower())
        return dict(sorted(found.items(), key=lambda item: item[0].lower()))

    def image_names(self) -> list[str]:
        """What A1111's ``/sdapi/v1/upscalers`` lists: the resamplers, then the models."""
        return [name for name, _ in IMAGE_RESAMPLERS] + list(self.model_files())

    def names(self) -> list[str]:
        """Every hires upscaler, in the order of A1111's hires dropdown: latent modes first."""
        return latent_names() + self.image_names()

    def check(self, name: str | None) -> str:
        """The canonical spelling of ``name`` ("" or None: the default), or ``BadRequest`` listing the names."""
        if name is None or name == "":
            return DEFAULT_UPSCALER
        names = self.names()
        canonical = _canonical(name, names) if isinstance(name, str) else None
        if canonical is None:
            shown = repr(name) if isinstance(name, str) else type(name).__name__
            raise BadRequest(f"unknown hr_upscaler {shown}; known: {', '.join(names)}")
        return canonical

    def is_latent(self, name: str) -> bool:
        return is_latent(name)

    # -- upscaling -------------------------------------------------------------------------
    def upscale_latents(self, latents: torch.Tensor, width: int, height: int, name: str) -> torch.Tensor:
        """Latents interpolated to ``width``x``height`` latent cells, the way A1111's mode ``name`` does.

        ``width`` and ``height`` count latent cells (pixels over the VAE's scale factor)."""
        import torch.nn.functional as F

        mode = latent_mode(name)
        # torch's antialias only exists for (bi)linear and bicubic; the modes that set it are those.
        options: dict[str, Any] = {"antialias": True} if mode.antialias else {}
        if mode.mode in ("bilinear", "bicubic"):
            options["align_corners"] = False
        dtype = latents.dtype
        # Half-precision interpolation is missing or coarse on some devices: work in float32.
        resized = F.interpolate(latents.float(), size=(height, width), mode=mode.mode, **options)
        return resized.to(dtype)

    def upscale_image(self, image: Image.Image, width: int, height: int, name: str) -> Image.Image:
        """``image`` brought to exactly ``width``x``height`` with the image upscaler ``name``."""
        canonical = self.check(name)
        if is_latent(canonical):
            names = ", ".join(self.image_names())
            raise BadRequest(f"'{canonical}' upscales latents, not pictures; picture upscalers: {names}")
        image = image.convert("RGB")
        resamplers = dict(IMAGE_RESAMPLERS)
        if canonical in resamplers:
            return image if image.size == (width, height) else image.resize((width, height), resamplers[canonical])
        model = self._model(canonical)
        passes = 0
        # Run the model until the picture covers the target (a 4x model once for 2x, twice for 8x).
        while (image.width < width or image.height < height) and passes < MAX_MODEL_PASSES:
            image = self._run_model(model, image)
            passes += 1
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image

    def unload(self) -> None:
        """Drop the cached upscaler model (the engine calls this when it frees memory)."""
        with self._lock:
            self._loaded = None

    # -- upscaler models ------------------------------------------------------------------
    def _model(self, name: str) -> Any:
        path = self.model_files()[name]
        stamp = path.stat().st_mtime
        with self._lock:
            if self._loaded is not None and self._loaded[:2] == (path, stamp):
                return self._loaded[2]
            self._loaded = None  # the old model goes before the new one arrives: one in memory at a time
            model = self._load(path)
            self._loaded = (path, stamp, model)
            log.info("upscaler %s loaded (%dx)", name, getattr(model, "scale", 0))
            return model

    def _load(self, path: Path) -> Any:
        """spandrel's descriptor for an image-to-image model file, on ``self.device``, ready to run."""
        try:
            import spandrel
        except ImportError as exc:  # torchvision missing, or spandrel itself
            raise BadRequest(
                f"upscaler '{path.stem}' is a model file and needs the spandrel package, which cannot be imported "
                f"here ({exc}): install it with {INSTALL_HINT}, or pick Lanczos or a Latent upscaler"
            ) from exc
        try:
            descriptor = spandrel.ModelLoader().load_from_file(path)
        except spandrel.UnsupportedModelError as exc:
            raise BadRequest(f"upscaler '{path.stem}' ({path}) is not an architecture spandrel knows: {exc}") from exc
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise BadRequest(f"upscaler '{path.stem}' ({path}) could not be read: {exc}") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise BadRequest(f"upscaler '{path.stem}' is a {type(descriptor).__name__}, not an image upscaler")
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise BadRequest(
                f"upscaler '{path.stem}' takes {descriptor.input_channels} channels and gives "
                f"{descriptor.output_channels}: only RGB upscalers can be used"
            )
        descriptor.to(self.device).eval()
        if str(self.device).startswith("cuda") and descriptor.supports_half:
            descriptor.half()
        return descriptor

    def _run_model(self, model: Any, image: Image.Image) -> Image.Image:
        import torch

        dtype = getattr(model, "dtype", torch.float32)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            result = tiled_upscale(model, pixels.to(self.device, dtype), model.scale, self.tile, TILE_OVERLAP)
        array = result[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray((array * 255.0 + 0.5).astype(np.uint8))


def tiled_upscale(
    model: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, scale: int, tile: int, overlap: int
) -> torch.Tensor:
    """``model`` (an upscaler by ``scale``) applied to ``pixels`` (1, C, H, W) one tile at a time.

    Each tile is run with ``overlap`` pixels of its neighbours around it and only its own part of
    the result is kept, so the seams match the whole-picture result wherever the model looks no
    further than ``overlap`` pixels."""
    _, _, height, width = pixels.shape
    if height <= tile and width <= tile:
        return model(pixels)
    rows = []
    for top in range(0, height, tile):
        row = []
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            top_in, left_in = max(top - overlap, 0), max(left - overlap, 0)
            bottom_in, right_in = min(bottom + overlap, height), min(right + overlap, width)
            piece = model(pixels[:, :, top_in:bottom_in, left_in:right_in])
            row.append(
                piece[
                    :,
                    :,
                    (top - top_in) * scale : (bottom - top_in) * scale,
                    (left - left_in) * scale : (right - left_in) * scale,
                ]
            )
        rows.append(row)
    import torch

    return torch.cat([torch.cat(row, dim=3) for row in rows], dim=2)


def _canonical(name: str, names: list[str]) -> str | None:
    """``name`` as spelled in ``names``, matched without regard to case or surrounding spaces."""
    if not isinstance(name, str):
        return None
    wanted = name.strip().lower()
    return next((known for known in names if known.lower() == wanted), None)
