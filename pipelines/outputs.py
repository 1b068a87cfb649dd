"""The outputs folder: every generated image, with its parameters, never overwritten.

The folder is the gallery's only source of truth. Images are written to ``<root>/<YYYY-MM-DD>/``
as ``NNNNN-<seed>.<ext>`` through a temp file and a hard link that fails rather than replace an
existing file, so a crash leaves either no file or a complete one. Deleting moves a file to
``<root>/.trash/`` from where it can be restored.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .files import claim, free_name, synced_temp

log = logging.getLogger(__name__)

Finish = Callable[[bytes], bytes]  # a file's bytes -> the bytes written (the standards' marks)

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4"}
FRAMES = "-frames"  # an animation's frames live in "<number>-<seed>-frames/" beside its clip
TRASH = ".trash"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_NUMBERED = re.compile(r"^(\d{5,})-")
MAX_METADATA_CHARS = 128 * 1024  # far above any real infotext; bounds what parsing a hostile file costs
# what Pillow raises on a damaged or hostile file, from opening it to reading its text and EXIF
UNREADABLE = (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError, struct.error, RecursionError)


@dataclass(frozen=True)
class GalleryItem:
    path: Path
    modified: float
    prompt: str


class OutputStore:
    def __init__(self, root: Path, image_format: str = "png", finish: Finish | None = None) -> None:
        self.root = Path(root)
        self.image_format = image_format
        # Every file's bytes pass here before they are written: the AI-source mark, a C2PA manifest.
        self.finish: Finish = finish or _unchanged
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
        temp_path = synced_temp(
            folder, suffix, lambda file: file.write(self.encode(image, infotext, fields, self.image_format))
        )
        try:
            with self._lock:
                number = self._next_number(folder)
                while True:
                    target = folder / f"{number:05d}-{seed}{suffix}"
                    try:
                        claim(temp_path, target)
                        break
                    except FileExistsError:
                        number += 1
        finally:
            temp_path.unlink(missing_ok=True)
        self._prompts[target] = (target.stat().st_mtime, _prompt_of(infotext))
        return target

    def animation_folder(self, seed: int) -> tuple[Path, str]:
        """A new folder for an animation's frames in today's folder, numbered like the images, and the
        name its clip takes beside it (``<stem>.mp4``): ``<number>-<seed>-frames/``."""
        folder = self.root / time.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            number = self._next_number(folder)
            while True:
                stem = f"{number:05d}-{seed}"
                try:
                    (folder / f"{stem}{FRAMES}").mkdir()  # exclusive: another process's clip keeps its folder
                    return folder / f"{stem}{FRAMES}", stem
                except FileExistsError:
                    number += 1

    def save_frame(self, image: Image.Image, infotext: str, fields: dict[str, Any], folder: Path, index: int) -> Path:
        """One animation frame as ``frame-NNNNN.png`` with its infotext, written whole or not at all."""
        target = folder / f"frame-{index:05d}.png"
        temp_path = synced_temp(folder, ".png", lambda file: file.write(self.encode(image, infotext, fields, "png")))
        try:
            claim(temp_path, target)
        finally:
            temp_path.unlink(missing_ok=True)
        return target

    def save_batch(
        self, images: list[Image.Image], texts: list[str], seeds: list[int], fields: dict[str, Any], notes: list[str]
    ) -> list[Path]:
        """Save a batch; a full or read-only disk costs the files (said in ``notes``), never the images in hand."""
        paths = []
        for image, text, seed in zip(images, texts, seeds, strict=True):
            try:
                paths.append(self.save(image, text, fields | {"seed": seed}, seed))
            except OSError as exc:
                log.error("could not save image with seed %d: %s", seed, exc)
                notes.append(f"image with seed {seed} was not saved to {self.root}: {exc.strerror or exc}")
        return paths

    def encode(self, image: Image.Image, infotext: str, fields: dict[str, Any], image_format: str = "png") -> bytes:
        """A picture file's bytes as every door gives them out: infotext, then ``finish`` (the marks)."""
        buffer = io.BytesIO()
        _write_image(buffer, image, image_format, infotext, fields)
        return self.finish(buffer.getvalue())

    def _next_number(self, folder: Path) -> int:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1

    # -- reading ----------------------------------------------------------------------------
    def page(self, query: str = "", offset: int = 0, limit: int = 48) -> tuple[list[GalleryItem], int]:
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
        """Images in the day folders, newest first. Links are never followed, to folders or to files:
        whatever they point at lies outside what the gallery may show."""
        found: list[tuple[Path, float]] = []
        if not self.root.is_dir():
            return found
        with os.scandir(self.root) as days:
            folders = [Path(d.path) for d in days if not d.name.startswith(".") and d.is_dir(follow_symlinks=False)]
        for folder in folders:
            with os.scandir(folder) as entries:
                for entry in entries:
                    visible = not entry.name.startswith(".") and Path(entry.name).suffix.lower() in SUFFIXES
                    if visible and entry.is_file(follow_symlinks=False):
                        found.append((Path(entry.path), entry.stat(follow_symlinks=False).st_mtime))
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
        """True for image paths inside the outputs folder (trash included) that reach no link on the
        way: acting on one can only ever touch the folder's own files. Guards file serving."""
        relative = self._relative(path)
        return relative is not None and relative.suffix.lower() in SUFFIXES

    def _relative(self, path: Path) -> Path | None:
        """Where ``path`` lies under the root, or None when it lies elsewhere or gets there through a
        link (a linked folder, a linked file, or ``..`` after a link). The root itself may be a link."""
        try:
            written = Path(os.path.abspath(path))  # ".." removed as written, as if nothing were a link
            real_root, real_path = Path(os.path.realpath(self.root)), Path(os.path.realpath(path))
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            return None
        for root in (Path(os.path.abspath(self.root)), real_root):
            if written.is_relative_to(root):
                relative = written.relative_to(root)
                # the system's reading of the path must be the written one: then no link was on the way
                return relative if real_path == real_root / relative else None
        return None

    # -- deleting ---------------------------------------------------------------------------
    def delete(self, path: Path) -> Path:
        """Move an image to the trash; returns where it went."""
        relative = self._relative(path)
        if relative is None or relative.suffix.lower() not in SUFFIXES or TRASH in relative.parts:
            raise ValueError(f"{path} is not an image in the outputs folder")
        source = self.root / relative
        target = free_name(self.root / TRASH / relative)
        self._move(source, target)
        self._prompts.pop(source, None)
        return target

    def restore(self, trashed: Path) -> Path:
        """Put a trashed image back where it was (next to it if that name is taken again)."""
        relative = self._relative(trashed)
        if relative is None or relative.parts[:1] != (TRASH,) or relative.suffix.lower() not in SUFFIXES:
            raise ValueError(f"{trashed} is not an image in the trash folder")
        target = free_name(self.root.joinpath(*relative.parts[1:]))
        self._move(self.root / relative, target)
        return target

    def _move(self, source: Path, target: Path) -> None:
        """Move one file within the folder; refuses when the target's folders are links (out of it)."""
        if not source.is_file():  # with no link on the way, this is the file itself
            raise ValueError(f"{source} is not a file")
        if self._relative(target) is None:
            raise ValueError(f"{target} lies behind a link out of the outputs folder; nothing was moved")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)

    def trash(self) -> list[Path]:
        folder = self.root / TRASH
        if self._relative(folder) is None or not folder.is_dir():
            return []
        return sorted((p for p in folder.rglob("*") if p.is_file() and self._relative(p) is not None), reverse=True)


def _unchanged(data: bytes) -> bytes:
    return data


def _write_image(file: Any, image: Image.Image, image_format: str, infotext: str, fields: dict[str, Any]) -> None:
    if image_format == "png":
        write_png(file, image, infotext, fields)
        return
    exif = Image.Exif()
    # A1111 and its readers keep the infotext in EXIF UserComment, UTF-16 with a "UNICODE" header.
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
    image.convert("RGB").save(file, format=FORMATS[image_format], exif=exif.tobytes(), quality=95)


def write_png(
    file: Any, image: Image.Image, infotext: str = "", fields: dict[str, Any] | None = None, compress_level: int = 6
) -> None:
    """The picture as a PNG with A1111's infotext (``parameters``, when there is one) and Atelier's
    request fields (``atelier``, when given).

    PIL keeps a save's options on the picture while it writes (``encoderinfo``), and options left
    there by another thread's save of the same picture win over this one's: a live frame kept while
    the page encoded it was written without its infotext. So every save writes from its own copy."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    if fields is not None:
        info.add_text("atelier", json.dumps(fields, ensure_ascii=False, default=str))
    image.copy().save(file, format="PNG", pnginfo=info, compress_level=compress_level)


def png_bytes(
    image: Image.Image,
    infotext: str = "",
    fields: dict[str, Any] | None = None,
    finish: Finish | None = None,
    compress_level: int = 6,
) -> bytes:
    """``write_png``'s file in memory, through ``finish`` when given (the engine's ``finish`` adds
    the marks every file leaving the server carries)."""
    buffer = io.BytesIO()
    write_png(buffer, image, infotext, fields, compress_level)
    return finish(buffer.getvalue()) if finish is not None else buffer.getvalue()


def first_frame(clip: Path) -> Path | None:
    """The first frame's PNG of an animation's clip (it carries the parameters), or None."""
    try:
        frame = clip.with_name(f"{clip.stem}{FRAMES}") / "frame-00000.png"
        return frame if frame.is_file() and not frame.is_symlink() else None
    except (OSError, ValueError):  # a name no file can have (a NUL byte, too long)
        return None


def read_metadata(path: Path | str) -> dict[str, Any]:
    """``parameters`` (infotext) and, for Atelier's PNGs, ``atelier`` (request fields) of an image file;
    ``unreadable`` names any of the two the file has but that could not be read. An animation's clip
    gives its first frame's."""
    path = first_frame(Path(path)) or path
    try:
        with Image.open(path) as image:
            return image_metadata(image)
    except UNREADABLE as exc:
        log.warning("cannot read metadata of %s: %s", path, exc)
        return {}


def image_metadata(image: Image.Image) -> dict[str, Any]:
    """The same, from an opened image: PNG text chunks, else EXIF UserComment (JPEG, WebP).
    Never raises for what a file holds: the image may come from anyone."""
    metadata: dict[str, Any] = {}
    unreadable: list[str] = []
    text = _text_chunks(image)
    if "parameters" in text:
        parameters: str | None = text["parameters"]
    else:
        parameters = _user_comment(image)
    if parameters is not None:
        _keep(metadata, unreadable, "parameters", parameters if len(parameters) <= MAX_METADATA_CHARS else None)
    if "atelier" in text:
        _keep(metadata, unreadable, "atelier", _request_fields(text["atelier"]))
    if unreadable:
        log.warning("an image has metadata that cannot be read: %s", ", ".join(unreadable))
        metadata["unreadable"] = unreadable
    return metadata


def _keep(metadata: dict[str, Any], unreadable: list[str], name: str, value: Any) -> None:
    if value is None:
        unreadable.append(name)
    else:
        metadata[name] = value


def _text_chunks(image: Image.Image) -> dict[str, str]:
    try:  # reading a PNG's text decodes the whole file: a damaged one fails here
        chunks = getattr(image, "text", None) or {}
    except UNREADABLE as exc:
        log.warning("cannot read an image's text chunks: %s", exc)
        return {}
    return {key: value for key, value in chunks.items() if isinstance(value, str)}


def _user_comment(image: Image.Image) -> str | None:
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except UNREADABLE:
        return None
    return _decode_user_comment(comment) if isinstance(comment, bytes) else None


def _request_fields(text: str) -> dict[str, Any] | None:
    """Atelier's JSON request fields, or None when they are too long, too deeply nested, or not an object."""
    if len(text) > MAX_METADATA_CHARS:
        return None
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError):  # a chunk of "[[[[..." nests deeper than the parser can follow
        return None
    return fields if isinstance(fields, dict) else None


def _decode_user_comment(raw: bytes) -> str:
    header, body = raw[:8], raw[8:]
    if header.startswith(b"UNICODE"):
        return body.decode("utf-16-be", errors="replace")
    return body.decode("utf-8", errors="replace").rstrip("\0")


def _prompt_of(text: str) -> str:
    """The prompt part of an infotext, read the way the infotext parser reads it."""
    from .infotext import parse_infotext

    return parse_infotext(text)["prompt"] if text else ""
