"""Textual-inversion embeddings: files in ``models/embeddings`` used by writing their name in a prompt.

A file's name without its suffix is the word that calls it, as in A1111 (matched as a whole word, in
any case). Formats read: A1111's ``{"string_to_param": {"*": tensor}}`` (``.pt`` or ``.safetensors``),
single-tensor files (diffusers' ``{"<token>": tensor}``, kohya's ``emb_params``) and SDXL's
``{"clip_l": tensor, "clip_g": tensor}``. Pickles are read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers. Nothing here touches a model: the encoder puts the
vectors in place of the word for one call.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BadRequest
from .weights import BREAK, parse_weights

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")
MAX_VECTORS = 75  # one chunk: an embedding is never split across two
SINGLE = ""  # key of the vectors of a file made for one text encoder (SD 1.x / 2.x)
SDXL_KEYS = ("clip_l", "clip_g")  # text_encoder (CLIP ViT-L) and text_encoder_2 (OpenCLIP bigG)


@dataclass(frozen=True, eq=False)  # compared by identity: one object per loaded file
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # SINGLE, or "clip_l" and "clip_g": (count, width) float32 on the CPU
    sha256: str

    @property
    def count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def short_hash(self) -> str:
        """What A1111 writes in ``TI hashes``: the first 12 hex digits of the file's SHA-256."""
        return self.sha256[:12]

    def for_encoder(self, key: str, width: int) -> torch.Tensor:
        """The vectors for the text encoder called ``key`` ("clip_l" or "clip_g"), checked against its width."""
        # A1111 gives an SD 1.x model the "clip_l" half of an SDXL file, and a one-encoder file to CLIP-L.
        vectors = self.vectors.get(key, self.vectors.get(SINGLE) if key == "clip_l" else None)
        if vectors is None:
            raise BadRequest(
                f"embedding '{self.name}' ({self.path.name}) has no '{key}' vectors: it was made for a model with "
                f"one text encoder (SD 1.x/2.x), and this model (SDXL) needs vectors for both of its encoders"
            )
        if vectors.shape[1] != width:
            raise BadRequest(
                f"embedding '{self.name}' ({self.path.name}) has vectors of width {vectors.shape[1]}, but this "
                f"model's text encoder takes width {width}: the file was made for another model family"
            )
        return vectors


class EmbeddingLibrary:
    """The embedding files of one folder (and its subfolders), loaded on first use and cached by
    (path, modification time, size), so an edited file is read again."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()  # the page's token counter and the device thread both read it
        self._loaded: dict[tuple[str, int, int], Embedding] = {}
        self._patterns: dict[tuple[str, ...], re.Pattern[str]] = {}

    def files(self) -> dict[str, Path]:
        """Name (lower case) -> file. A name found twice keeps the safetensors file, then the first in order."""
        if not self.folder.is_dir():
            return {}
        found: dict[str, Path] = {}
        candidates = [p for p in self.folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()]
        rank = {suffix: index for index, suffix in enumerate(SUFFIXES)}
        for path in sorted(candidates, key=lambda p: (rank[p.suffix.lower()], str(p))):
            key = path.stem.lower()
            if key in found:
                log.warning("embedding %s has the same name as %s; using the latter", path, found[key])
                continue
            found[key] = path
        return found

    def names(self) -> list[str]:
        """The words that call an embedding, as their files spell them."""
        return sorted((path.stem for path in self.files().values()), key=str.lower)

    def get(self, name: str) -> Embedding:
        path = self.files().get(name.lower())
        if path is None:
            raise BadRequest(f"no embedding called '{name}' in {self.folder}")
        return self.load(path)

    def load(self, path: Path) -> Embedding:
        try:
            info = path.stat()
        except OSError as exc:
            raise BadRequest(f"embedding file {path} cannot be read: {exc.strerror or exc}") from exc
        key = (str(path.resolve()), info.st_mtime_ns, info.st_size)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _read_embedding(path)
            return self._loaded[key]

    def split(self, text: str) -> list[str | Embedding]:
        """``text`` cut into plain text and the embeddings named in it, in order."""
        return self.splitter()(text)

    def splitter(self) -> Callable[[str], list[str | Embedding]]:
        """:meth:`split` over the folder as it is now, listed once for all the fragments of a prompt."""
        files = self.files()
        if not files:
            return lambda text: [text] if text else []
        pattern = self._pattern(tuple(sorted(files, key=len, reverse=True)))

        def split(text: str) -> list[str | Embedding]:
            pieces: list[str | Embedding] = []
            position = 0
            for match in pattern.finditer(text):
                if match.start() > position:
                    pieces.append(text[position : match.start()])
                pieces.append(self.load(files[match.group(0).lower()]))
                position = match.end()
            if position < len(text):
                pieces.append(text[position:])
            return pieces

        return split

    def used(self, *prompts: str) -> list[Embedding]:
        """The embeddings ``prompts`` call, each once, in order of first use."""
        found: dict[Path, Embedding] = {}
        split = self.splitter()
        for prompt in prompts:
            for fragment, weight in parse_weights(prompt):
                if (fragment, weight) == BREAK:
                    continue
                for piece in split(fragment):
                    if isinstance(piece, Embedding):
                        found.setdefault(piece.path, piece)
        return list(found.values())

    def infotext(self, prompt: str, negative: str = "") -> dict[str, str]:
        """``{"TI hashes": "name: hash12, ..."}`` for the embeddings the prompts use; ``{}`` when none
        (the infotext writer quotes the value, as A1111 does)."""
        used = self.used(prompt, negative)
        if not used:
            return {}
        return {"TI hashes": ", ".join(f"{embedding.name}: {embedding.short_hash}" for embedding in used)}

    def _pattern(self, names: tuple[str, ...]) -> re.Pattern[str]:
        with self._lock:
            if names not in self._patterns:
                words = "|".join(re.escape(name) for name in names)  # longest first: "style-v2" before "style"
                self._patterns = {names: re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)}
            return self._patterns[names]


def _read_embedding(path: Path) -> Embedding:
    """One file's vectors, checked. Errors name the file: the artist meets them when using its word."""
    try:
        data = _read_tensors(path)
    except Exception as exc:  # a damaged or refused file: one message, whatever the reader raised
        why = "it holds more than tensors (only plain weights are read)" if "weights_only" in str(exc) else exc
        raise BadRequest(f"embedding file {path.name} cannot be loaded: {why}") from exc
    vectors = _vectors_of(data, path)
    counts = {int(tensor.shape[0]) for tensor in vectors.values()}
    if len(counts) != 1:
        raise BadRequest(f"embedding file {path.name} has different vector counts for its encoders: {sorted(counts)}")
    count = counts.pop()
    if not 1 <= count <= MAX_VECTORS:
        raise BadRequest(
            f"embedding file {path.name} has {count} vectors; a prompt chunk holds at most {MAX_VECTORS}, "
            "so it cannot be used"
        )
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(8 * 1024 * 1024):
            digest.update(block)
    log.info("loaded embedding %s: %d vectors (%s)", path.stem, count, ", ".join(vectors) or "one encoder")
    return Embedding(path.stem, path, vectors, digest.hexdigest())


def _read_tensors(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _vectors_of(data: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(data, dict):
        raise BadRequest(f"embedding file {path.name} holds a {type(data).__name__}, not a dictionary of tensors")
    if "string_to_param" in data:  # A1111's own training writes this
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise BadRequest(f"embedding file {path.name} has a 'string_to_param' that is not one tensor")
        found = {SINGLE: next(iter(params.values()))}
    elif any(key in data for key in SDXL_KEYS):
        missing = [key for key in SDXL_KEYS if key not in data]
        if missing:
            raise BadRequest(f"embedding file {path.name} is an SDXL embedding without {missing[0]!r} vectors")
        found = {key: data[key] for key in SDXL_KEYS}
    elif "emb_params" in data:
        found = {SINGLE: data["emb_params"]}
    elif len(data) == 1:  # diffusers' learned_embeds: {"<token>": vector}
        found = {SINGLE: next(iter(data.values()))}
    else:
        keys = ", ".join(sorted(map(str, data))[:6])
        raise BadRequest(f"embedding file {path.name} is not a known embedding format (keys: {keys})")
    vectors = {}
    for key, tensor in found.items():
        if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise BadRequest(f"embedding file {path.name} has vectors of an unexpected shape/type: {shape}")
        vectors[key] = (tensor[None] if tensor.ndim == 1 else tensor).detach().to(torch.float32).contiguous()
    return vectors
