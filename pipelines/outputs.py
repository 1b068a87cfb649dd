"""The outputs folder: every generated image, with its parameters, never overwritten.

The folder is the gallery's only source of truth. Images are written to ``<root>/<YYYY-MM-DD>/``
as ``NNNNN-<seed>.<ext>`` through a temp file and a hard link that fails rather than replace an
existing file, so a crash leaves either no file or a complete one. Deleting moves a file to
``<root>/.trash/`` from where it can be restored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

log = logging.getLogger(__name__)

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
TRASH = ".trash"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_NUMBERED = re.compile(r"^(\d{5,})-")


@dataclass(frozen=True)
class GalleryItem:
    path: Path
    modified: float
    prompt: str


class OutputStore:
    def __init__(self, root: Path, image_format: str = "png") -> None:
        self.root = Path(root)
        self.image_format = image_format
        self._lock = threading.Lock()  # numbering within this process; the link guards across processes
        self._prompts: dict[Path, tuple[float, str]] = {}  # path -> (mtime, prompt): a cache, never the truth

    # -- writing ----------------------------------------------------------------------------
    def save(self, image: Image.Image, infotext: str, fields: dict[str, Any], seed: int) -> Path:
        """Write one image with its infotext (and Atelier's full request as JSON in PNGs)."""
        if self.image_format not in FORMATS:
            raise ValueError(f"image format must be one of {', '.join(FORMATS)}, got {self.image_format!r}")
        folder = self.root / time.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".jpg" if self.image_format == "jpeg" else f".{self.image_format}"
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writing-", suffix=suffix, delete=False) as temp:
            temp_path = Path(temp.name)
            try:
                _write_image(temp, image, self.image_format, infotext, fields)
                temp.flush()
                os.fsync(temp.fileno())
            except BaseException:
                temp_path.unlink(missing_ok=True)
                raise
        try:
            with self._lock:
                number = self._next_number(folder)
                while True:
                    target = folder / f"{number:05d}-{seed}{suffix}"
                    try:
                        _claim(temp_path, target)
                        break
                    except FileExistsError:
                        number += 1
        finally:
            temp_path.unlink(missing_ok=True)
        self._prompts[target] = (target.stat().st_mtime, _prompt_of(infotext))
        return target

    def _next_number(self, folder: Path) -> int:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1

    # -- reading ----------------------------------------------------------------------------
    def list(self, query: str = "", offset: int = 0, limit: int = 48) -> tuple[list[GalleryItem], int]:
        """One page of images, newest first, optionally only those whose prompt contains ``query``."""
        items = []
        wanted = query.strip().lower()
        for path, modified in self._scan():
            prompt = self._prompt(path, modified)
            if wanted and wanted not in prompt.lower():
                continue
            items.append(GalleryItem(path, modified, prompt))
        return items[offset : offset + limit], len(items)

    def _scan(self) -> list[tuple[Path, float]]:
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for entry in os.scandir(folder):
                visible = not entry.name.startswith(".") and Path(entry.name).suffix.lower() in SUFFIXES
                if visible and entry.is_file(follow_symlinks=False):  # links could point outside the folder
                    found.append((Path(entry.path), entry.stat().st_mtime))
        found.sort(key=lambda item: (item[1], item[0].name), reverse=True)
        return found

    def _prompt(self, path: Path, modified: float) -> str:
        cached = self._prompts.get(path)
        if cached and cached[0] == modified:
            return cached[1]
        prompt = _prompt_of(read_metadata(path).get("parameters", ""))
        self._prompts[path] = (modified, prompt)
        return prompt

    def contains(self, path: Path) -> bool:
        """True for image files inside the outputs folder (trash included); guards file serving."""
        try:
            resolved = Path(path).resolve()
        except OSError:
            return False
        return resolved.is_relative_to(self.root.resolve()) and resolved.suffix.lower() in SUFFIXES

    # -- deleting ---------------------------------------------------------------------------
    def delete(self, path: Path) -> Path:
        """Move an image to the trash; returns where it went."""
        path = Path(path)
        if not self.contains(path) or TRASH in path.resolve().relative_to(self.root.resolve()).parts:
            raise ValueError(f"{path} is not an image in the outputs folder")
        target = self._free_name(self.root / TRASH / path.resolve().relative_to(self.root.resolve()))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        self._prompts.pop(path, None)
        return target

    def restore(self, trashed: Path) -> Path:
        """Put a trashed image back where it was (next to it if that name is taken again)."""
        trashed = Path(trashed)
        relative = trashed.resolve().relative_to((self.root / TRASH).resolve())
        target = self._free_name(self.root / relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(trashed, target)
        return target

    def trash(self) -> list[Path]:
        folder = self.root / TRASH
        return sorted((p for p in folder.rglob("*") if p.is_file()), reverse=True) if folder.is_dir() else []

    @staticmethod
    def _free_name(path: Path) -> Path:
        candidate, index = path, 1
        while candidate.exists():
            candidate = path.with_name(f"{path.stem}-{index}{path.suffix}")
            index += 1
        return candidate


def _claim(temp_path: Path, target: Path) -> None:
    """Give the written temp file its final name, failing with FileExistsError rather than overwrite."""
    try:
        os.link(temp_path, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (exFAT, some network shares): exclusive create, then copy
        with open(target, "xb") as final:
            try:
                with open(temp_path, "rb") as source:
                    shutil.copyfileobj(source, final)
                final.flush()
                os.fsync(final.fileno())
            except BaseException:
                target.unlink(missing_ok=True)  # a half-copied file must not appear in the gallery
                raise


def _write_image(file: Any, image: Image.Image, image_format: str, infotext: str, fields: dict[str, Any]) -> None:
    if image_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
        info.add_text("atelier", json.dumps(fields, ensure_ascii=False, default=str))
        image.save(file, format="PNG", pnginfo=info)
        return
    exif = Image.Exif()
    # A1111 and its readers keep the infotext in EXIF UserComment, UTF-16 with a "UNICODE" header.
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
    image.convert("RGB").save(file, format=FORMATS[image_format], exif=exif.tobytes(), quality=95)


def read_metadata(path: Path) -> dict[str, Any]:
    """``parameters`` (infotext) and, for Atelier's PNGs, ``atelier`` (request fields) of an image file."""
    try:
        with Image.open(path) as image:
            return image_metadata(image)
    except (OSError, ValueError, SyntaxError) as exc:
        log.warning("cannot read metadata of %s: %s", path, exc)
        return {}


def image_metadata(image: Image.Image) -> dict[str, Any]:
    """The same, from an opened image: PNG text chunks, else EXIF UserComment (JPEG, WebP)."""
    text = dict(getattr(image, "text", {}) or {})
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except (OSError, ValueError, SyntaxError):
        comment = None
    metadata: dict[str, Any] = {}
    if "parameters" in text:
        metadata["parameters"] = text["parameters"]
    elif isinstance(comment, bytes):
        metadata["parameters"] = _decode_user_comment(comment)
    if "atelier" in text:
        try:
            metadata["atelier"] = json.loads(text["atelier"])
        except json.JSONDecodeError:
            log.warning("an image has a damaged Atelier metadata chunk")
    return metadata


def _decode_user_comment(raw: bytes) -> str:
    header, body = raw[:8], raw[8:]
    if header.startswith(b"UNICODE"):
        return body.decode("utf-16-be", errors="replace")
    return body.decode("utf-8", errors="replace").rstrip("\0")


def _prompt_of(text: str) -> str:
    """The prompt part of an infotext, read the way the infotext parser reads it."""
    from .infotext import parse_infotext

    return parse_infotext(text)["prompt"] if text else ""
