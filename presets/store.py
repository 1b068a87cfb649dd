"""Prompt styles, negative-prompt presets and saved settings: the built-in library and the user's own.

User presets live in one human-readable JSON file (``<data-dir>/presets.json``, versioned schema).
Every change re-reads the file under a lock, applies the change and writes a temp file that is
fsynced and renamed over the old one, after the old one is copied to ``presets.json.bak``; so two
browser tabs saving at once both keep their preset, and a crash leaves the old file or the new one.
A damaged file is moved aside (never deleted) and the backup, or nothing, is used instead.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "atelier-presets"
VERSION = 1
LIBRARY = Path(__file__).parent / "library"
MAX_NAME = 80
_JOINERS = "\u200c\u200d"  # zero-width (non-)joiners: format characters that emoji and many scripts need
KINDS = ("style", "negative", "settings")
_SECTIONS = {"style": "styles", "negative": "negatives", "settings": "settings"}


class PresetError(ValueError):
    """A preset operation that cannot be done; the message says why."""


class PresetExists(PresetError):
    """Saving would replace a preset: ask, then call again with ``overwrite=True``."""


@dataclass
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    description: str = ""
    builtin: bool = False


@dataclass
class NegativePreset:
    name: str
    negative_prompt: str = ""
    description: str = ""
    builtin: bool = False


@dataclass
class SavedSettings:
    """Every setting of one tab (request fields plus ``model``, ``styles`` and ``negatives``)."""

    name: str
    mode: str = "txt2img"
    settings: dict[str, Any] = field(default_factory=dict)
    updated: str = ""
    builtin: bool = False


def check_name(name: Any) -> str:
    """A preset name: 1-80 visible characters, any script, no path separators or control characters."""
    if not isinstance(name, str):
        raise PresetError(f"a preset name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise PresetError("a preset needs a name")
    if len(cleaned) > MAX_NAME:
        raise PresetError(f"preset names are at most {MAX_NAME} characters, this one has {len(cleaned)}")
    bad = sorted({c for c in cleaned if c in "/\\" or (unicodedata.category(c).startswith("C") and c not in _JOINERS)})
    if bad or cleaned in (".", ".."):
        shown = ", ".join(repr(c) for c in bad) or repr(cleaned)
        raise PresetError(f"preset name {cleaned!r} contains characters that are not allowed: {shown}")
    return cleaned


def merge_style(style_text: str, user_text: str) -> str:
    """A1111's rule: the user's text replaces ``{prompt}``, or the style is appended after ", "."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", user_text)
    return ", ".join(part for part in (user_text.strip(), style_text.strip()) if part)


class PresetLibrary:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "presets.json"
        self.backup = self.path.with_name(self.path.name + ".bak")
        self.problem = ""  # what went wrong reading the user's file, for the page to show
        self._lock = threading.Lock()
        self._builtin_styles = [Style(**s, builtin=True) for s in _read_library("styles.json", "styles")]
        self._builtin_negatives = [
            NegativePreset(**n, builtin=True) for n in _read_library("negatives.json", "negatives")
        ]

    # -- reading ----------------------------------------------------------------------------
    def styles(self) -> list[Style]:
        return _merged(copy.deepcopy(self._builtin_styles), [Style(**s) for s in self._user()["styles"]])

    def negatives(self) -> list[NegativePreset]:
        return _merged(copy.deepcopy(self._builtin_negatives), [NegativePreset(**n) for n in self._user()["negatives"]])

    def saved(self) -> list[SavedSettings]:
        return [SavedSettings(**s) for s in self._user()["settings"]]

    def get(self, kind: str, name: str) -> Style | NegativePreset | SavedSettings:
        found = {item.name: item for item in self.items(kind)}
        if name not in found:
            known = ", ".join(found) or "none"
            raise PresetError(f"there is no {kind} preset called {name!r}; known: {known}")
        return found[name]

    def list(self) -> list[dict[str, Any]]:
        """Every preset as ``{"name", "kind", "builtin"}``, for pickers and the API."""
        return [
            {"name": item.name, "kind": kind, "builtin": item.builtin} for kind in KINDS for item in self.items(kind)
        ]

    def items(self, kind: str) -> list[Any]:
        _check_kind(kind)
        return {"style": self.styles, "negative": self.negatives, "settings": self.saved}[kind]()

    def compose(self, prompt: str, negative: str, styles: list[str], negatives: list[str]) -> tuple[str, str]:
        """The prompt and negative prompt that the chosen styles and negative presets produce."""
        for name in styles:
            style = self.get("style", name)
            prompt = merge_style(style.prompt, prompt)
            negative = merge_style(style.negative_prompt, negative)
        for name in negatives:
            preset = self.get("negative", name)
            if preset.negative_prompt not in negative:
                negative = merge_style(preset.negative_prompt, negative)
        return prompt, negative

    # -- writing ----------------------------------------------------------------------------
    def save(self, kind: str, item: Style | NegativePreset | SavedSettings, overwrite: bool = False) -> None:
        _check_kind(kind)
        item.name = check_name(item.name)
        item.builtin = False
        if isinstance(item, SavedSettings):
            item.updated = time.strftime("%Y-%m-%dT%H:%M:%S")
        record = {k: v for k, v in asdict(item).items() if k != "builtin"}

        def change(data: dict[str, Any]) -> None:
            section = data[_SECTIONS[kind]]
            existing = [i for i, entry in enumerate(section) if entry["name"] == item.name]
            if existing and not overwrite:
                raise PresetExists(f"a {kind} preset called {item.name!r} exists; save with overwrite to replace it")
            if existing:
                section[existing[0]] = record
            else:
                section.append(record)

        self._change(change)

    def delete(self, kind: str, name: str) -> None:
        _check_kind(kind)

        def change(data: dict[str, Any]) -> None:
            section = data[_SECTIONS[kind]]
            if not any(entry["name"] == name for entry in section):
                builtins = {"style": self._builtin_styles, "negative": self._builtin_negatives}.get(kind, [])
                builtin = any(item.name == name for item in builtins)
                raise PresetError(
                    f"{name!r} is built in and cannot be deleted" if builtin else f"no {kind} preset {name!r}"
                )
            data[_SECTIONS[kind]] = [entry for entry in section if entry["name"] != name]

        self._change(change)

    def rename(self, kind: str, old: str, new: str) -> None:
        _check_kind(kind)
        new = check_name(new)

        def change(data: dict[str, Any]) -> None:
            section = data[_SECTIONS[kind]]
            if any(entry["name"] == new for entry in section):
                raise PresetExists(f"a {kind} preset called {new!r} exists already")
            matches = [entry for entry in section if entry["name"] == old]
            if not matches:
                raise PresetError(f"no user {kind} preset called {old!r} (built-in presets cannot be renamed)")
            matches[0]["name"] = new

        self._change(change)

    def duplicate(self, kind: str, name: str, new: str) -> None:
        item = copy.deepcopy(self.get(kind, name))
        item.name = new
        self.save(kind, item)

    # -- exchange ---------------------------------------------------------------------------
    def export_bundle(self) -> dict[str, Any]:
        """The user's presets as one JSON-able bundle (the same schema as the file)."""
        return self._user()

    def import_bundle(self, bundle: Any, overwrite: bool = False) -> dict[str, int]:
        """Add presets from a bundle; existing names are kept unless ``overwrite``. Returns counts."""
        data = _validated(bundle)
        counts = {"added": 0, "replaced": 0, "skipped": 0}

        def change(current: dict[str, Any]) -> None:
            for section in _SECTIONS.values():
                names = {entry["name"]: i for i, entry in enumerate(current[section])}
                for entry in data[section]:
                    entry["name"] = check_name(entry["name"])
                    if entry["name"] in names and not overwrite:
                        counts["skipped"] += 1
                    elif entry["name"] in names:
                        current[section][names[entry["name"]]] = entry
                        counts["replaced"] += 1
                    else:
                        current[section].append(entry)
                        names[entry["name"]] = len(current[section]) - 1
                        counts["added"] += 1

        self._change(change)
        return counts

    def import_styles_csv(self, text: str, overwrite: bool = False) -> dict[str, int]:
        """A1111's styles.csv (name,prompt,negative_prompt; ``#`` rows are comments) as user styles."""
        rows = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        if not rows.fieldnames or "name" not in rows.fieldnames:
            raise PresetError("not an A1111 styles.csv: the first line must be name,prompt,negative_prompt")
        styles = []
        for row in rows:
            name = (row.get("name") or "").strip()
            if not name or name.startswith("#"):
                continue
            styles.append(
                {"name": name, "prompt": row.get("prompt") or "", "negative_prompt": row.get("negative_prompt") or ""}
            )
        return self.import_bundle({"schema": SCHEMA, "version": VERSION, "styles": styles}, overwrite)

    def export_styles_csv(self) -> str:
        """Every style, built-in and user, in A1111's styles.csv format."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "prompt", "negative_prompt"])
        for style in self.styles():
            writer.writerow([style.name, style.prompt, style.negative_prompt])
        return out.getvalue()

    # -- the file ---------------------------------------------------------------------------
    def _user(self) -> dict[str, Any]:
        # the file lock too: a reader that finds the file damaged moves it aside, which must not race
        # another reader doing the same, or a writer that has just put a good file in its place
        with self._lock, _file_lock(self.path):
            return self._read()

    def _change(self, change: Any) -> None:
        """Read, change and write the file as one step, so concurrent saves never lose each other."""
        with self._lock, _file_lock(self.path):
            data = self._read()
            change(data)
            self._write(data)

    def _read(self, from_backup: bool = False) -> dict[str, Any]:
        if not self.path.exists():
            return _empty()
        try:
            return _validated(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, PresetError) as exc:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.path.with_name(f"presets.damaged-{stamp}.json")
            for n in itertools.count(2):
                if not aside.exists():
                    break
                aside = self.path.with_name(f"presets.damaged-{stamp}-{n}.json")
            os.replace(self.path, aside)
            self.problem = f"Your presets file was damaged ({exc}); it was moved to {aside.name}."
            log.error(self.problem)
            if self.backup.exists() and not from_backup:
                shutil.copy2(self.backup, self.path)
                self.problem += " The last good copy (presets.json.bak) was restored."
                return self._read(from_backup=True)
            return _empty()

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=2, ensure_ascii=False)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, prefix=".presets-", delete=False, encoding="utf-8"
        ) as temp:
            temp.write(text + "\n")
            temp.flush()
            os.fsync(temp.fileno())
        if self.path.exists():
            shutil.copy2(self.path, self.backup)
        os.replace(temp.name, self.path)
        _fsync_folder(self.path.parent)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PresetError(f"preset kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "version": VERSION, "styles": [], "negatives": [], "settings": []}


def _validated(data: Any) -> dict[str, Any]:
    """A bundle in the current schema, or ``PresetError`` saying what is wrong with it."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise PresetError(f'not an Atelier presets file (expected "schema": "{SCHEMA}")')
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise PresetError(f"presets version {data.get('version')!r} is newer than this Atelier understands ({VERSION})")
    result = _empty()
    allowed = {"styles": Style, "negatives": NegativePreset, "settings": SavedSettings}
    for section, cls in allowed.items():
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise PresetError(f"{section} must be a list")
        known = set(cls.__dataclass_fields__) - {"builtin"}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise PresetError(f"every entry in {section} needs a name")
            result[section].append({k: v for k, v in entry.items() if k in known})
    return result


def _merged(builtin: list[Any], user: list[Any]) -> list[Any]:
    """Built-ins first, then the user's; a user preset with a built-in's name replaces it."""
    names = {item.name for item in user}
    return [item for item in builtin if item.name not in names] + user


def _read_library(file: str, section: str) -> list[dict[str, Any]]:
    return json.loads((LIBRARY / file).read_text(encoding="utf-8"))[section]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An advisory lock beside the file, so two Atelier processes sharing a data folder take turns."""
    try:
        import fcntl
    except ImportError:  # Windows: the in-process lock is what we have
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".presets.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
