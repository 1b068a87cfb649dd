"""Dataset mode: N pictures per prompt, written as an image folder that diffusers' training scripts
and ``datasets.load_dataset("imagefolder", data_dir=...)`` read.

The classes are lines ``class_name: prompt`` (a line without a class name gets a slug of its
prompt as its class; the prompt part may carry the prompt list's ``--options``). The layout::

    <outputs>/datasets/<name>/<class>/<nnnnn>.png
    <outputs>/datasets/<name>/metadata.jsonl
        {"file_name": "<class>/<nnnnn>.png", "text": caption, "label": class, "seed": seed}  (one per line)

``file_name`` is relative to the folder of ``metadata.jsonl``, as ``imagefolder`` reads it; with a
metadata file ``imagefolder`` infers no labels from the folders, so each row names its ``label``.
A picture's PNG is written whole before its metadata row, and each row is flushed to disk as it
is written: a dataset stopped (or cut off) at any point lists exactly the pictures it has.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import BadRequest
from ..files import claim, synced_temp
from ..requests import Txt2Img
from .prompt_list import MAX_LINES, MAX_PICTURES, PromptLine, Style, numbered_lines, parse_line

DATASETS = "datasets"  # the folder under the outputs folder that holds every dataset
METADATA = "metadata.jsonl"
MAX_PER_PROMPT = 1000
MAX_NAME = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A class name written before the first colon: words, digits, spaces, "-" and "_". Anything else
# before a colon ("(red:1.2) circle", "photo: by x") makes the whole line the prompt.
_CLASS = re.compile(r"^([A-Za-z0-9][A-Za-z0-9 _-]*)\s*:\s*(.*)$")
# Folder names Windows refuses whatever follows them; a class is never called that.
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})
_IN_DATASETS = ("batch_size", "batch_count")  # set by "pictures per prompt" and the tab's batch size


@dataclass(frozen=True)
class DatasetClass:
    """One line of the classes: its folder name, its caption and the request fields it sets."""

    label: str  # the class folder's name and the metadata's "label"
    caption: str  # the prompt as written: the metadata's "text"
    line: PromptLine

    def request(self, base: Txt2Img, style: Style | None = None) -> Txt2Img:
        return self.line.request(base, style)


@dataclass(frozen=True)
class DatasetSpec:
    """What to make: the classes, how many pictures each, and the settings every picture shares."""

    name: str
    classes: list[DatasetClass]
    per_prompt: int
    base: Txt2Img  # the tab's settings; each class's line sets its prompt (and any options) over it
    style: Style | None = None  # applied to each class's request; the caption stays the prompt as written
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.per_prompt * len(self.classes)


def slug(text: str, limit: int = 40) -> str:
    """A folder name from free text: lower case letters, digits and single underscores."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit].rstrip("_")
    return f"class_{name}" if name in _RESERVED else name


def parse_classes(text: str, max_lines: int = MAX_LINES) -> list[DatasetClass]:
    """The classes of ``text``; one ``BadRequest`` lists every line's problems with its number."""
    return numbered_lines(
        text, _parse_class, max_lines,
        ("the classes", f"the dataset has more than {max_lines} prompts; make it in parts",
         'the dataset has no prompts: write one "class_name: prompt" per line'),
    )  # fmt: skip


def _parse_class(number: int, line: str) -> DatasetClass:
    matched = _CLASS.match(line)
    named, rest = (matched.group(1).strip(), matched.group(2)) if matched else ("", line)
    fields = parse_line(rest.strip()) if rest.strip() else {}
    caption = fields.get("prompt", "")
    if not caption.strip():
        raise BadRequest(f'class {named or "?"} has no prompt: write "{named or "name"}: a prompt"')
    fixed = [name for name in _IN_DATASETS if name in fields]
    if fixed:
        raise BadRequest(f"--{', --'.join(fixed)} cannot be set per class: use pictures per prompt")
    label = slug(named) if named else slug(caption)
    if not label:
        raise BadRequest(f'no class name can be made from {caption[:40]!r}: write "name: {caption[:40]}"')
    return DatasetClass(label, caption, PromptLine(number, fields))


def check_spec(
    name: str, classes: list[DatasetClass], per_prompt: Any, base: Txt2Img, style: Style | None = None
) -> DatasetSpec:
    """A dataset's settings checked together; ``BadRequest`` names every bad value."""
    problems = []
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME:
        problems.append(
            f"the dataset name must be 1-{MAX_NAME} letters, digits, '.', '-' or '_' (starting with a letter or "
            f"digit), got {name!r:.80}"
        )
    whole = isinstance(per_prompt, int) and not isinstance(per_prompt, bool)
    if not whole or not 1 <= per_prompt <= MAX_PER_PROMPT:
        problems.append(f"pictures per prompt must be a whole number from 1 to {MAX_PER_PROMPT}, got {per_prompt!r}")
    elif per_prompt * len(classes) > MAX_PICTURES:
        problems.append(
            f"{len(classes)} prompts x {per_prompt} pictures is {per_prompt * len(classes)} pictures; the limit is "
            f"{MAX_PICTURES}"
        )
    if problems:
        raise BadRequest(problems)
    return DatasetSpec(name, classes, per_prompt, base, style)


def new_folder(root: Path, name: str) -> tuple[Path, str]:
    """A new, empty dataset folder ``<root>/<name>``, or ``<name>-1``, ``-2``... when that name is
    taken: an existing dataset is never written into. Made with an exclusive mkdir, so two jobs that
    ask for the same name at once still get a folder each."""
    root.mkdir(parents=True, exist_ok=True)
    candidate, number = name, 0
    while True:
        try:
            (root / candidate).mkdir()
            return root / candidate, candidate
        except FileExistsError:
            number += 1
            candidate = f"{name}-{number}"


class DatasetWriter:
    """Writes one dataset's pictures and their metadata rows, each picture whole before its row."""

    def __init__(self, folder: Path, encode: Callable[[Image.Image, str, dict[str, Any]], bytes]) -> None:
        """``encode``: a picture's PNG bytes with its infotext and the marks (``OutputStore.encode``)."""
        self.folder = folder
        self.encode = encode
        self.metadata = folder / METADATA
        self._counts: dict[str, int] = {}  # pictures written per class folder, for their numbers
        self.rows = 0

    def add(
        self, image: Image.Image, label: str, caption: str, seed: int, infotext: str, fields: dict[str, Any]
    ) -> Path:
        """Write one picture to ``<label>/<nnnnn>.png`` and then its row; returns the picture's path."""
        class_folder = self.folder / label
        class_folder.mkdir(exist_ok=True)
        number = self._counts.get(label, 0)
        temp = synced_temp(class_folder, ".png", lambda file: file.write(self.encode(image, infotext, fields)))
        try:
            while True:
                target = class_folder / f"{number:05d}.png"
                try:
                    claim(temp, target)
                    break
                except FileExistsError:  # someone put a file there: never over it
                    number += 1
        finally:
            temp.unlink(missing_ok=True)
        self._counts[label] = number + 1
        row = {"file_name": f"{label}/{target.name}", "text": caption, "label": label, "seed": seed}
        try:
            with open(self.metadata, "a", encoding="utf-8") as file:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
                file.flush()
                os.fsync(file.fileno())
        except OSError:
            target.unlink(missing_ok=True)  # a picture without its row would not be in the dataset
            raise
        self.rows += 1
        return target


def remove_if_empty(folder: Path) -> bool:
    """Remove a dataset folder that holds no file (empty class folders included); True if it went."""
    try:
        for child in folder.iterdir():
            child.rmdir()  # only empty folders go; a file stops it here
        folder.rmdir()
    except OSError:
        return False
    return True


def read_metadata(folder: Path) -> list[dict[str, Any]]:
    """The rows of a dataset's ``metadata.jsonl`` (none when it has no file yet)."""
    path = Path(folder) / METADATA
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
