"""Where a reference image comes from: the tab's upload, a picture named in the prompt, or a link.

A prompt may carry one tag: ``{image}`` (the tab's upload), ``{image:NAME}`` (a gallery picture or a
stored reference, by file name) or ``{image:https://...}`` (a link, only for hosts the server allows;
fetched by ``links``). The tag is taken out of the text the model reads.

References are kept beside the outputs in ``<outputs>/.references/<hash>.png``, named by a hash of
their pixels, so the infotext can name one and Reuse can bring it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import BadRequest
from ..files import claim, synced_temp
from ..outputs import OutputStore
from .links import LINK_TIMEOUT_S, MAX_LINK_BYTES, MAX_REDIRECTS, UrlPolicy, fetch_image
from .pictures import MAX_REFERENCE_PIXELS, READABLE_FORMATS, as_rgb, decode_picture

log = logging.getLogger(__name__)

REFERENCES = ".references"  # a dot-folder: the gallery scanner skips it
_TAG = re.compile(r"\{\s*(?i:image)\s*(?::\s*(?P<value>[^{}|\n]*?)\s*)?\}")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHORT_HASH = re.compile(r"^[0-9a-f]{16}$")
_STORED_NAME = re.compile(r"^[0-9a-f]{16}\.png$")


# -- tags in the prompt ---------------------------------------------------------------------
@dataclass(frozen=True)
class ImageTag:
    """One ``{image...}`` tag found in a prompt."""

    kind: str  # "tab" | "name" | "url"
    value: str  # "" | file name | the URL
    text: str  # the tag exactly as written


def split_image_tags(prompt: str) -> tuple[str, list[ImageTag]]:
    """The prompt without its image tags (and the commas and spaces they leave), and the tags in order.
    Other braces, such as dynamic prompts' ``{a|b}``, stay as they are."""
    matches = list(_TAG.finditer(prompt))
    tags = [_tag(match) for match in matches]
    text = prompt
    for match in reversed(matches):  # from the end, so earlier positions stay valid
        text = _cut(text, match.start(), match.end())
    return text, tags


def _tag(match: re.Match[str]) -> ImageTag:
    value = match.group("value") or ""
    if not value:
        return ImageTag("tab", "", match.group(0))
    return ImageTag("url" if _SCHEME.match(value) else "name", value, match.group(0))


def _cut(text: str, start: int, end: int) -> str:
    """``text`` without ``text[start:end]``, tidied so "a, {image}, b" reads "a, b" and "a, {image}" reads "a"."""
    left, right = text[:start].rstrip(" \t"), text[end:].lstrip(" \t")
    spaced = len(left) < start or len(right) < len(text) - end
    line_start = not left or left.endswith("\n")
    if right.startswith(",") and (line_start or left.endswith(",")):
        right = right[1:].lstrip(" \t")
    if left.endswith(",") and (not right or right.startswith("\n")):
        left = left[:-1].rstrip(" \t")
    inside_line = left and right and not left.endswith("\n") and not right.startswith("\n")
    return left + (" " if spaced and inside_line else "") + right


# -- the reference store --------------------------------------------------------------------
def pixel_hash(image: Image.Image) -> str:
    """sha256 (hex) of ``b"RGB <width>x<height>\\n"`` followed by the raw RGB bytes: the same picture
    gives the same hash however it was encoded."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


class ReferenceStore:
    """Reference images beside the outputs, one PNG per picture, named by the first 16 hex digits of
    its pixel hash; written once (temp file + hard link), never overwritten, never duplicated."""

    def __init__(self, outputs_root: Path) -> None:
        self.folder = Path(outputs_root) / REFERENCES

    def put(self, image: Image.Image) -> str:
        """Keep ``image`` (as RGB); returns its short hash, the name the infotext records."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        short = pixel_hash(rgb)[:16]
        target = self.folder / f"{short}.png"
        if os.path.lexists(target):
            return short
        self.folder.mkdir(parents=True, exist_ok=True)
        temp_path = synced_temp(self.folder, ".png", lambda file: rgb.save(file, format="PNG"))
        try:
            with contextlib.suppress(FileExistsError):  # another job kept the same picture meanwhile
                claim(temp_path, target)
        finally:
            temp_path.unlink(missing_ok=True)
        log.info("reference image kept as %s", target)
        return short

    def get(self, short_hash: str) -> Image.Image:
        """The stored picture with this short hash, as RGB."""
        wanted = short_hash.strip().lower()
        if not _SHORT_HASH.match(wanted):
            raise BadRequest(f"a reference hash is 16 hexadecimal digits, got {short_hash!r}")
        path = self.folder / f"{wanted}.png"
        if path.is_symlink() or not path.is_file():  # a link could point anywhere on the disk
            raise BadRequest(f"no reference image with hash {wanted} in {self.folder}")
        image = decode_picture(path, f"reference {path.name}", MAX_REFERENCE_PIXELS, ("PNG",))
        if pixel_hash(image)[:16] != wanted:
            raise BadRequest(f"reference {path.name} is damaged: its pixels no longer match its hash")
        return image

    def uploads(self) -> list[Path]:
        """The stored pictures, newest first."""
        if self.folder.is_symlink() or not self.folder.is_dir():
            return []
        found: list[tuple[float, str, Path]] = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if _STORED_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, Path(entry.path)))
        return [path for _, _, path in sorted(found, reverse=True)]


# -- resolving a prompt's reference ---------------------------------------------------------
@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = MAX_LINK_BYTES
    timeout_s: float = LINK_TIMEOUT_S
    max_pixels: int = MAX_REFERENCE_PIXELS
    max_redirects: int = MAX_REDIRECTS


DEFAULT_LIMITS = FetchLimits()


@dataclass(frozen=True)
class Resolved:
    """The reference a generation uses, and how the note under the picture and the infotext name it."""

    image: Image.Image  # RGB
    label: str  # "tab upload", "gallery 2026-05-09/00012-1234.png", "reference <hash>.png" or the link
    kind: str  # "tab" | "gallery" | "reference" | "url"


def resolve_reference(
    prompt: str,
    tab_image: Image.Image | None,
    *,
    outputs: OutputStore,
    store: ReferenceStore,
    policy: UrlPolicy,
    fetch_limits: FetchLimits = DEFAULT_LIMITS,
) -> tuple[str, Resolved | None]:
    """The prompt the model reads and the reference to use: the tag's picture when the prompt has a tag,
    else the tab's upload, else None."""
    text, tags = split_image_tags(prompt)
    if len(tags) > 1:
        written = ", ".join(tag.text for tag in tags)
        raise BadRequest(f"one reference per picture: found {len(tags)} tags ({written}); keep one")
    if not tags:
        return prompt, (None if tab_image is None else _from_tab(tab_image, fetch_limits.max_pixels))
    tag = tags[0]
    if tag.kind == "tab":
        if tab_image is None:
            raise BadRequest(
                f"{tag.text} uses the tab's reference image, but none was uploaded: upload one, "
                "or name a picture with {image:NAME}"
            )
        return text, _from_tab(tab_image, fetch_limits.max_pixels)
    if tag.kind == "name":
        return text, _find_named(tag.value, outputs, store, fetch_limits.max_pixels)
    limits = fetch_limits
    image = fetch_image(
        tag.value,
        policy,
        limits.max_bytes,
        limits.timeout_s,
        max_pixels=limits.max_pixels,
        max_redirects=limits.max_redirects,
    )
    return text, Resolved(image, tag.value, "url")


def _from_tab(image: Image.Image, max_pixels: int) -> Resolved:
    if image.width * image.height > max_pixels:
        raise BadRequest(f"the reference image is {image.width}x{image.height}: more than {max_pixels} pixels")
    return Resolved(as_rgb(image), "tab upload", "tab")


def _find_named(name: str, outputs: OutputStore, store: ReferenceStore, max_pixels: int) -> Resolved:
    """The newest gallery picture or stored reference called ``name`` (the suffix may be left out)."""
    if "/" in name or "\\" in name or ":" in name or "\0" in name or name in (".", "..") or ".." in name:
        raise BadRequest(
            f"{{image:NAME}} takes the file name of a gallery picture or a stored reference, without "
            f"folders or '..': got {name!r}"
        )
    items, _ = outputs.page(limit=sys.maxsize)
    in_gallery = next((item for item in items if _named(item.path, name) and outputs.contains(item.path)), None)
    in_store = next((path for path in store.uploads() if _named(path, name)), None)
    if in_store is not None and (in_gallery is None or in_store.stat().st_mtime >= in_gallery.modified):
        return Resolved(store.get(in_store.stem), f"reference {in_store.name}", "reference")
    if in_gallery is None:
        raise BadRequest(f"no picture named {name!r} in the gallery or the stored references")
    label = f"gallery {in_gallery.path.relative_to(outputs.root).as_posix()}"
    return Resolved(decode_picture(in_gallery.path, label, max_pixels, READABLE_FORMATS), label, "gallery")


def _named(path: Path, name: str) -> bool:
    return path.name == name or (not Path(name).suffix and path.stem == name)
