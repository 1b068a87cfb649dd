"""The pictures a LoRA learns from: which files, which caption each gets, and the sizes they are
trained at.

A data set comes from a folder on the server or from uploaded files (both are a list of paths
here). Each picture's caption comes from, in this order: the lines typed in (one per picture, in
the pictures' order), a ``.txt`` file with the picture's name (among the uploads, or beside the
picture on disk: kohya's sidecars), a ``metadata.jsonl`` beside it (``{"file_name", "text"}``
rows: the layout the studio's own dataset maker writes), or the file's name
(``teal_circle-03.png`` -> "teal circle"). A trigger word goes in front of every caption.

Everything is checked here, before a job queues: one ``BadRequest`` lists every problem found, so
an artist fixes the data set once, not one error at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import BadRequest
from ..images import fit

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
METADATA_FILE = "metadata.jsonl"
MAX_IMAGES = 2000
MAX_FOLDER_DEPTH = 4
MAX_CAPTION_CHARS = 2000
MAX_PROBLEMS_SHOWN = 12  # a folder of 500 broken files gets a readable message, not 500 lines
_NAME_NUMBER = re.compile(r"(^\d+[-_ ]+)|([-_ (]+\d+\)?$)")  # "003-cat", "cat_03", "cat (2)"


@dataclass(frozen=True)
class Example:
    """One training picture and its caption (trigger word included)."""

    image: Image.Image  # RGB, as read
    caption: str
    source: str  # file name, for messages
    folder: str  # the folder it came from ("upload" for uploaded files), for the file's metadata


@dataclass
class DataSet:
    examples: list[Example]
    caption_sources: Counter[str] = field(default_factory=Counter)  # "typed", "sidecar", "metadata", "file name"

    @property
    def captions(self) -> list[str]:
        return [example.caption for example in self.examples]

    def folders(self) -> dict[str, int]:
        """Pictures per source folder, in first-seen order (kohya's ``ss_dataset_dirs``)."""
        return dict(Counter(example.folder for example in self.examples))

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """How often each comma-separated tag occurs, per folder (kohya's ``ss_tag_frequency``, what
        A1111's LoRA card shows as the training tags)."""
        frequency: dict[str, Counter[str]] = {}
        for example in self.examples:
            tags = [tag.strip() for tag in example.caption.split(",") if tag.strip()]
            frequency.setdefault(example.folder, Counter()).update(tags)
        return {folder: dict(counts) for folder, counts in frequency.items()}

    def digest(self) -> str:
        """SHA-256 over every picture's pixels and caption, in order: the same data set gives the same
        digest whatever the files are called or wherever they lie."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(f"{example.image.width}x{example.image.height}\n".encode())
            digest.update(example.image.tobytes())
            digest.update(example.caption.encode("utf-8") + b"\n")
        return digest.hexdigest()


def folder_files(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (a few levels deep), sorted by path, or ``BadRequest``."""
    root = Path(str(folder).strip()).expanduser()
    if not str(folder).strip():
        return []
    if not root.is_dir():
        raise BadRequest(f"the folder {str(folder)!r} does not exist on the server (or is not a folder)")
    found: list[Path] = []
    for here, dirs, names in os.walk(root, followlinks=False):
        depth = len(Path(here).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_FOLDER_DEPTH else []
        found += [Path(here) / name for name in sorted(names) if not name.startswith(".")]
        if len(found) > 4 * MAX_IMAGES:
            break
    return found


def collect(files: list[Path], typed_captions: str = "", trigger: str = "", min_side: int = 32) -> DataSet:
    """The pictures among ``files`` with their captions (see the module note), or one ``BadRequest``
    naming every picture that cannot be used and why. Pictures keep the order they are given in."""
    images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    problems = [
        f"{path.name} is not a picture ({', '.join(IMAGE_SUFFIXES)}) or a caption file ({CAPTION_SUFFIX})"
        for path in files
        if path.suffix.lower() not in (*IMAGE_SUFFIXES, CAPTION_SUFFIX) and path.name != METADATA_FILE
    ]
    if not images:
        raise BadRequest(["no pictures to learn from: upload some or name a folder that has some", *problems])
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"{len(images)} pictures is more than this studio trains on at once ({MAX_IMAGES})")
    lines = [line.strip() for line in (typed_captions or "").splitlines() if line.strip()]
    if lines and len(lines) != len(images):
        problems.append(
            f"{len(images)} pictures but {len(lines)} caption lines: type one caption per picture, in the "
            "pictures' order, or leave the captions empty to use .txt files or the file names"
        )
    pictures: list[tuple[Path, Image.Image]] = []
    for path in images:
        picture, problem = _read(path, min_side)
        if problem:
            problems.append(problem)
        elif picture is not None:
            pictures.append((path, picture))
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"and {len(problems) - len(shown)} more problems")
        raise BadRequest(shown)
    # Caption files among the given files, or beside the pictures on disk (a script's list of paths).
    beside = [p.with_suffix(CAPTION_SUFFIX) for p, _ in pictures] + [p.parent / METADATA_FILE for p, _ in pictures]
    known = set(files)
    files = [*files, *(path for path in dict.fromkeys(beside) if path not in known and path.is_file())]
    sidecars = _sidecars(files)
    listed = _metadata_captions(files)
    data = DataSet([])
    for index, (path, picture) in enumerate(pictures):
        if lines:
            caption, source = lines[index], "typed"
        elif path.stem.lower() in sidecars:
            caption, source = _read_caption(sidecars[path.stem.lower()]), "sidecar"
        elif (path.parent, path.name) in listed:
            caption, source = listed[path.parent, path.name], "metadata"
        else:
            caption, source = caption_from_name(path.stem), "file name"
        data.examples.append(Example(picture, with_trigger(caption, trigger), path.name, _folder_label(path)))
        data.caption_sources[source] += 1
    return data


def caption_from_name(stem: str) -> str:
    """A caption from a file name: separators become spaces and a counting number goes
    (``teal_circle-03`` -> "teal circle", ``007-red car`` -> "red car")."""
    text = _NAME_NUMBER.sub("", stem.strip())
    text = re.sub(r"[_\-.]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def with_trigger(caption: str, trigger: str) -> str:
    """``trigger, caption`` (kohya's convention), not repeated when the caption starts with it."""
    trigger, caption = trigger.strip(), caption.strip()
    if not trigger:
        return caption
    if caption.lower().startswith(trigger.lower()) or not caption:
        return caption or trigger
    return f"{trigger}, {caption}"


def _read(path: Path, min_side: int) -> tuple[Image.Image | None, str]:
    try:
        with Image.open(path) as opened:
            opened.load()
            picture = opened.convert("RGB")
    except Image.DecompressionBombError:
        return None, f"{path.name} is too large to open safely (over {Image.MAX_IMAGE_PIXELS} pixels)"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return None, f"{path.name} cannot be read as a picture ({type(exc).__name__}: {exc})"
    if min(picture.size) < min_side:
        width, height = picture.size
        return None, f"{path.name} is {width}x{height}: too small, pictures need at least {min_side} px on each side"
    return picture, ""


def _sidecars(files: list[Path]) -> dict[str, Path]:
    """Caption files by the stem of the picture they belong to (case-blind: Windows users name freely)."""
    return {path.stem.lower(): path for path in files if path.suffix.lower() == CAPTION_SUFFIX}


def _read_caption(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:MAX_CAPTION_CHARS]
    except OSError as exc:
        raise BadRequest(f"the caption file {path.name} cannot be read: {exc.strerror or exc}") from exc
    # kohya's files are one line; several lines are read as tags of one caption.
    return ", ".join(line.strip() for line in text.splitlines() if line.strip())


def _metadata_captions(files: list[Path]) -> dict[tuple[Path, str], str]:
    """Captions from ``metadata.jsonl`` files, keyed by (folder, file name); bad rows are skipped."""
    captions: dict[tuple[Path, str], str] = {}
    for path in files:
        if path.name != METADATA_FILE:
            continue
        try:
            rows = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        for row in rows:
            try:
                entry = json.loads(row)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("file_name"), str)
                and isinstance(entry.get("text"), str)
            ):
                relative = Path(entry["file_name"])
                captions[(path.parent / relative).parent, relative.name] = entry["text"][:MAX_CAPTION_CHARS]
    return captions


def _folder_label(path: Path) -> str:
    # Gradio keeps each upload in a folder named by a hash: those are all one "upload".
    parent = path.parent.name
    return "upload" if re.fullmatch(r"[0-9a-f]{32,}", parent) or not parent else parent


# -- sizes -----------------------------------------------------------------------------------
def bucket_sizes(resolution: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) pairs of about ``resolution``² pixels, sides multiples of ``step``, from
    1:``max_ratio`` to ``max_ratio``:1 (aspect-ratio buckets, as kohya makes them)."""
    sizes = set()
    side = step
    while side <= resolution * max_ratio:
        other = (resolution * resolution // side) // step * step
        if other >= step and max(side, other) / min(side, other) <= max_ratio:
            sizes.add((side, other))
            sizes.add((other, side))
        side += step
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda bucket: (abs(math.log(bucket[0] / bucket[1]) - aspect), -bucket[0] * bucket[1]))


def training_sizes(data: DataSet, resolution: int, step: int, buckets: bool) -> list[tuple[int, int]]:
    """Each picture's training size: ``resolution`` square (centre-cropped), or its aspect bucket."""
    if not buckets:
        return [(resolution, resolution)] * len(data.examples)
    choices = bucket_sizes(resolution, step)
    return [nearest_bucket(example.image.size, choices) for example in data.examples]


def prepared(example: Example, size: tuple[int, int]) -> Image.Image:
    """The picture scaled to cover ``size`` and centre-cropped to it."""
    return fit(example.image, size[0], size[1], "crop and resize")
