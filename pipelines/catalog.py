"""What models exist: the built-in demo, files in the models folder, and curated hub repos.

Names are what a user picks and what requests carry: ``builtin:demo``, a path relative to the
models folder (``myModel.safetensors``, ``sub/folder-model``), or a hub id (``org/name``). A name
never reaches outside the models folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .checkpoints import PICKLE_SUFFIXES
from .errors import BadRequest, ModelUnavailable

log = logging.getLogger(__name__)

BUILTIN_DEMO = "builtin:demo"
BUILTIN_LIVE = "builtin:demo-live"  # the demo distilled to draw in one step (pipelines/live_model.py)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_MAX_SCAN = 10_000  # files looked at per models-folder scan, so a huge folder cannot stall the page
_MAX_DEPTH = 4
# Folders of add-ons that sit beside the checkpoints (A1111's layout): their files are not models.
ADD_ON_FOLDERS = frozenset({"lora", "lycoris", "embeddings", "esrgan", "realesrgan", "ip-adapter", "safety-checker"})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "builtin", "folder", "single_file" or "hub"
    location: str  # a path, or the hub repo id
    size_bytes: int | None = None
    refused: str = ""  # why this entry cannot be loaded; empty when it can
    native_size: int = 0  # known before download for curated hub models; 0 = read it from the config
    cached: bool = False  # a hub model already in the local Hugging Face cache

    @property
    def title(self) -> str:
        if self.location == BUILTIN_LIVE:
            return "Atelier demo (live, 1 step): the demo distilled for live mode (built in, 64 px)"
        if self.source == "builtin":
            return "Atelier demo: coloured shapes, sun, house, tree (built in, 64 px, no download)"
        if self.source == "hub" and self.cached:
            return f"{self.name} (downloaded)"
        if self.source == "hub" and self.size_bytes:
            return f"{self.name} (download ~{self.size_bytes / 1e9:.1f} GB)"
        return self.name


# Hub models offered in the picker before anything is downloaded, with their fp16 download size.
CURATED_HUB: tuple[ModelEntry, ...] = tuple(
    ModelEntry(repo, "hub", repo, size, native_size=native)
    for repo, size, native in (
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", 2_130_000_000, 512),
        ("stabilityai/stable-diffusion-2-1", 2_580_000_000, 768),
        ("stabilityai/sd-turbo", 2_580_000_000, 512),
        ("stabilityai/stable-diffusion-xl-base-1.0", 6_940_000_000, 1024),
        ("stabilityai/sdxl-turbo", 6_940_000_000, 512),
    )
)


def with_cache_state(entry: ModelEntry) -> ModelEntry:
    """The entry marked ``cached`` when its files are already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    from .loading import snapshot_complete

    found = try_to_load_from_cache(entry.location, "model_index.json")
    return dataclasses.replace(entry, cached=isinstance(found, str) and snapshot_complete(Path(found).parent))


def list_local(models_dir: Path) -> list[ModelEntry]:
    """Checkpoints and diffusers folders under ``models_dir``, sorted by name.

    Symlinked folders are followed (artists often link models kept elsewhere), to a bounded depth
    so a link cycle cannot hang the scan.
    """
    entries: list[ModelEntry] = []
    seen = 0
    for root, dirs, files in os.walk(models_dir, followlinks=True):
        folder = Path(root)
        depth = len(folder.relative_to(models_dir).parts)
        name = folder.relative_to(models_dir).as_posix()
        if "model_index.json" in files and depth > 0:
            entries.append(ModelEntry(name, "folder", str(folder)))
            dirs.clear()  # a diffusers folder's subfolders are its components, not more models
            continue
        if depth >= _MAX_DEPTH:
            dirs.clear()
        if depth == 0:
            dirs[:] = [child for child in dirs if child.lower() not in ADD_ON_FOLDERS]
        dirs.sort()
        for file in sorted(files):
            seen += 1
            path = folder / file
            suffix = path.suffix.lower()
            relative = path.relative_to(models_dir).as_posix()
            if suffix not in (".safetensors", *PICKLE_SUFFIXES):
                continue
            try:
                size = path.stat().st_size
            except OSError as exc:  # a dangling link (an unplugged drive), an unreadable file
                log.warning("skipping %s: %s", path, exc)
                continue
            if suffix == ".safetensors":
                entries.append(ModelEntry(relative, "single_file", str(path), size))
            else:
                reason = "pickle checkpoint: not loaded for safety, convert it to .safetensors"
                entries.append(ModelEntry(relative, "single_file", str(path), size, refused=reason))
        if seen >= _MAX_SCAN:
            break
    return sorted(entries, key=lambda entry: entry.name.lower())


def resolve(name: str, models_dir: Path) -> ModelEntry:
    """The entry a model name refers to; raises ``BadRequest`` for names that try to leave the folder."""
    if name in (BUILTIN_DEMO, BUILTIN_LIVE):
        return ModelEntry(name, "builtin", name)
    relative = PurePosixPath(name.replace("\\", "/"))
    if not name or relative.is_absolute() or ".." in relative.parts or ":" in name or "\x00" in name:
        raise BadRequest(f"model name {name!r} must be a name inside the models folder, a hub id or {BUILTIN_DEMO}")
    # Lexically inside the folder (no "..", not absolute); links the user put there are followed.
    path = models_dir / relative
    if path.exists():
        if path.is_dir():
            return ModelEntry(name, "folder", str(path))
        return ModelEntry(name, "single_file", str(path), path.stat().st_size)
    if _HUB_ID.match(name):
        curated = {entry.name: entry for entry in CURATED_HUB}
        return curated.get(name, ModelEntry(name, "hub", name))
    known = [BUILTIN_DEMO, BUILTIN_LIVE] + [entry.name for entry in list_local(models_dir)]
    raise ModelUnavailable(name, f"no such file in {models_dir} and not a hub id; known models: {', '.join(known)}")
