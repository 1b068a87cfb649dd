"""The LoRA files an artist keeps in ``models/Lora``: listing, finding by name, hashing, reading.

Only ``.safetensors`` files are read: a pickle (``.pt``, ``.ckpt``, ``.bin``) can run code when it
is loaded, so one is named in the error that asks for it and never opened.

A file's name is its path under the folder without the suffix (``styles/ink wash``); a file is
also found by its bare stem (``ink wash``) when no other file shares that stem.

The hash the infotext records is A1111's LoRA hash: the SHA-256 of the file's tensor bytes (the
bytes after the safetensors header, so editing a file's metadata does not change it), first 12 hex
digits. Sites that look a LoRA up by hash from a picture's parameters expect exactly this one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..checkpoints import PICKLE_SUFFIXES
from ..errors import BadRequest
from .tags import LoraTag

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
_MAX_DEPTH = 8  # symlinked folders are followed; a link cycle must not hang the scan
_MAX_FILES = 20_000
_MAX_LISTED = 40  # names an error message lists before it says how many more there are
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit on a header's size


@dataclass(frozen=True)
class LoraFile:
    name: str  # path under the folder, posix separators, without the suffix
    path: Path
    size: int

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).name


@dataclass(frozen=True)
class _Scan:
    files: list[LoraFile]
    refused: dict[str, Path]  # pickle files by name, so asking for one says why it is not used


class LoraLibrary:
    """The LoRA folder, read afresh on each listing (a file dropped in is usable at once), with the
    hashes and the parsed tensors of recently used files kept in memory."""

    def __init__(self, folder: Path, cached_files: int = 8) -> None:
        self.folder = Path(folder)
        self.cached_files = cached_files
        self._lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._tensors: OrderedDict[tuple[str, int, int], dict[str, torch.Tensor]] = OrderedDict()

    # -- listing and finding -------------------------------------------------------------------
    def files(self) -> list[LoraFile]:
        return self._scan().files

    def names(self) -> list[str]:
        """Every file's name, sorted case-blind (what a picker lists)."""
        return [entry.name for entry in self.files()]

    def find(self, name: str) -> Path:
        """The file ``name`` refers to. Raises ``BadRequest`` naming the files there are."""
        return self._find(self._scan(), name)

    def resolve(self, tags: Iterable[LoraTag]) -> list[tuple[Path, LoraTag]]:
        """The file of each tag, all problems reported at once (before a job queues)."""
        scan = self._scan()
        found: list[tuple[Path, LoraTag]] = []
        problems: list[str] = []
        for tag in tags:
            try:
                found.append((self._find(scan, tag.name), tag))
            except BadRequest as exc:
                problems += exc.problems
        if problems:
            raise BadRequest(problems)
        return found

    def _find(self, scan: _Scan, name: str) -> Path:
        wanted = name.strip().replace("\\", "/").removesuffix(SUFFIX)
        by_name = {entry.name: entry for entry in scan.files}
        if wanted in by_name:
            return by_name[wanted].path
        same_stem = [entry for entry in scan.files if entry.stem == wanted]
        if len(same_stem) == 1:
            return same_stem[0].path
        if len(same_stem) > 1:
            choices = ", ".join(entry.name for entry in same_stem)
            raise BadRequest(f"LoRA '{name}' is ambiguous: write one of {choices}")
        folded = [entry for entry in scan.files if wanted.lower() in (entry.name.lower(), entry.stem.lower())]
        if len(folded) == 1:
            return folded[0].path
        refused = scan.refused.get(wanted)
        if refused is not None:
            raise BadRequest(
                f"LoRA '{name}' is {refused.name}, a pickle file: it is not loaded for safety, convert it to {SUFFIX}"
            )
        raise BadRequest(f"unknown LoRA '{name}': {self._available(scan.files)}")

    def _available(self, files: list[LoraFile]) -> str:
        if not files:
            return f"no LoRA files in {self.folder} (put .safetensors files there)"
        names = [entry.name for entry in files]
        more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
        return f"available LoRAs in {self.folder}: {', '.join(names[:_MAX_LISTED])}{more}"

    def _scan(self) -> _Scan:
        files: list[LoraFile] = []
        refused: dict[str, Path] = {}
        if not self.folder.is_dir():
            return _Scan(files, refused)
        seen = 0
        for root, dirs, names in os.walk(self.folder, followlinks=True):
            here = Path(root)
            if len(here.relative_to(self.folder).parts) >= _MAX_DEPTH:
                dirs.clear()
            dirs.sort()
            for file_name in sorted(names):
                seen += 1
                path = here / file_name
                suffix = path.suffix.lower()
                relative = path.relative_to(self.folder).with_suffix("").as_posix()
                if suffix in PICKLE_SUFFIXES:
                    refused[relative] = path
                    continue
                if suffix != SUFFIX:
                    continue
                try:
                    files.append(LoraFile(relative, path, path.stat().st_size))
                except OSError as exc:  # a dangling link, an unreadable file: listed by nobody
                    log.warning("skipping LoRA %s: %s", path, exc)
            if seen >= _MAX_FILES:
                log.warning("stopped listing %s after %d files", self.folder, seen)
                break
        return _Scan(sorted(files, key=lambda entry: entry.name.lower()), refused)

    # -- hashes ----------------------------------------------------------------------------
    def short_hash(self, path: Path) -> str:
        """A1111's LoRA hash (see the module note), computed once per file version."""
        key = _key(path)
        with self._lock:
            known = self._hashes.get(key)
        if known is None:
            known = tensor_bytes_sha256(path)[:12]
            with self._lock:
                self._hashes[key] = known
        return known

    def infotext_value(self, loras: Iterable[tuple[Path, LoraTag]]) -> str:
        """The ``Lora hashes`` value, unquoted: ``name: 0123456789ab, other: ba9876543210``. Names
        lose ':' and ',' so the value reads back as pairs."""
        pairs = []
        for path, tag in loras:
            name = tag.name.replace(":", "").replace(",", "")
            pairs.append(f"{name}: {self.short_hash(path)}")
        return ", ".join(pairs)

    # -- tensors ---------------------------------------------------------------------------
    def tensors(self, path: Path) -> dict[str, torch.Tensor]:
        """The file's tensors, kept for the last few files used (by path, size and modification
        time, so an edited file is read again). Callers must not change the dict or its tensors."""
        key = _key(path)
        with self._lock:
            cached = self._tensors.get(key)
            if cached is not None:
                self._tensors.move_to_end(key)
                return cached
        loaded = read_tensors(path)
        with self._lock:
            self._tensors[key] = loaded
            self._tensors.move_to_end(key)
            while len(self._tensors) > self.cached_files:
                self._tensors.popitem(last=False)
        return loaded

    def forget(self) -> None:
        """Drop the kept tensors (memory pressure, or a test that wants a cold start)."""
        with self._lock:
            self._tensors.clear()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors on the CPU. Raises ``BadRequest`` naming the file when it is not a
    readable safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix.lower() != SUFFIX:
        raise BadRequest(f"{path.name} is not a {SUFFIX} file: only {SUFFIX} LoRA files are loaded")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadRequest(f"{path.name} is not a readable {SUFFIX} file: {exc}") from exc
    if not tensors:
        raise BadRequest(f"{path.name} holds no tensors: it is not a LoRA")
    return tensors


def tensor_bytes_sha256(path: Path, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    """SHA-256 of a safetensors file's bytes after its header (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise BadRequest(f"{path.name} is too short to be a {SUFFIX} file")
        (header_bytes,) = struct.unpack("<Q", head)
        if header_bytes > _HEADER_LIMIT:
            raise BadRequest(f"{path.name} is not a {SUFFIX} file (its header size is {header_bytes} bytes)")
        file.seek(8 + header_bytes)
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _key(path: Path) -> tuple[str, int, int]:
    try:
        info = path.stat()
    except OSError as exc:
        raise BadRequest(f"LoRA file {path.name} cannot be read: {exc.strerror or exc}") from exc
    return str(path.resolve()), info.st_size, info.st_mtime_ns
