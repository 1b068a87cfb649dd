"""Prompt styles, negative-prompt presets and saved settings: the built-in library and the user's own.

User presets live in one human-readable JSON file (``<data-dir>/presets.json``, versioned schema).
Every change re-reads the file under a lock, applies the change and writes a temp file that is
fsynced and renamed over the old one, after the old one is copied to ``presets.json.bak``; so two
browser tabs saving at once both keep their preset, and a crash leaves the old file or the new one.
A damaged file is moved aside (never deleted) and the backup, or nothing, is used instead; a file
with some bad entries is copied aside as it was, and the good entries are kept. What an entry may
hold, and how large, is checked by ``presets.validation``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from pipelines.files import damaged_name
from presets.validation import (
    MAX_FILE_BYTES,
    MAX_PRESETS,
    check_entry,
    sort_entries,
    summarise,
    too_many,
)
from presets.validation import MAX_NAME as MAX_NAME  # re-exported: callers know them as presets.store's
from presets.validation import PresetError as PresetError
from presets.validation import check_name as check_name

log = logging.getLogger(__name__)

SCHEMA = "atelier-presets"
VERSION = 1
LIBRARY = Path(__file__).parent / "library"
KINDS = ("style", "negative", "settings")
_SECTIONS = {"style": "styles", "negative": "negatives", "settings": "settings"}


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


Preset = Style | NegativePreset | SavedSettings
_CLASSES: dict[str, type[Preset]] = {"style": Style, "negative": NegativePreset, "settings": SavedSettings}
_Builtin = TypeVar("_Builtin", Style, NegativePreset)


@dataclass
class ImportReport:
    """What an import did, and why each refused entry was refused."""

    added: int = 0
    replaced: int = 0
    skipped: int = 0
    refused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.added} added, {self.replaced} replaced, {self.skipped} skipped"
        return text + (f", {len(self.refused)} refused: {summarise(self.refused)}" if self.refused else "")


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
        self._unrepaired: FileState | None = None  # the file state a repair failed on
        self._read_state: FileState | None = None  # the file state ``_read_data`` was read from
        self._read_data: dict[str, Any] = {}
        self._user()  # read the user's file now, so what is wrong with it is known (and logged) at start

    # -- reading ----------------------------------------------------------------------------
    def styles(self) -> list[Style]:
        return _merged(copy.deepcopy(self._builtin_styles), [Style(**s) for s in self._user()["styles"]])

    def negatives(self) -> list[NegativePreset]:
        return _merged(copy.deepcopy(self._builtin_negatives), [NegativePreset(**n) for n in self._user()["negatives"]])

    def saved(self) -> list[SavedSettings]:
        return [SavedSettings(**copy.deepcopy(s)) for s in self._user()["settings"]]

    @overload
    def get(self, kind: Literal["style"], name: str) -> Style: ...
    @overload
    def get(self, kind: Literal["negative"], name: str) -> NegativePreset: ...
    @overload
    def get(self, kind: Literal["settings"], name: str) -> SavedSettings: ...
    @overload
    def get(self, kind: str, name: str) -> Preset: ...
    def get(self, kind: str, name: str) -> Preset:
        found: dict[str, Preset] = {item.name: item for item in self.items(kind)}
        if name not in found:
            known = ", ".join(found) or "none"
            raise PresetError(f"there is no {kind} preset called {name!r}; known: {known}")
        return found[name]

    def entries(self) -> list[dict[str, Any]]:
        """Every preset as ``{"name", "kind", "builtin"}``, for pickers and the API."""
        return [
            {"name": item.name, "kind": kind, "builtin": item.builtin} for kind in KINDS for item in self.items(kind)
        ]

    def items(self, kind: str) -> list[Style] | list[NegativePreset] | list[SavedSettings]:
        _check_kind(kind)
        readers: dict[str, Callable[[], list[Style] | list[NegativePreset] | list[SavedSettings]]] = {
            "style": self.styles, "negative": self.negatives, "settings": self.saved,
        }  # fmt: skip
        return readers[kind]()

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
    def save(self, kind: str, item: Preset, overwrite: bool = False) -> None:
        _check_kind(kind)
        if not isinstance(item, _CLASSES[kind]):
            raise PresetError(f"a {kind} preset must be a {_CLASSES[kind].__name__}, got {type(item).__name__}")
        item.name = check_name(item.name)
        item.builtin = False
        if isinstance(item, SavedSettings):
            item.updated = time.strftime("%Y-%m-%dT%H:%M:%S")
        section_name = _SECTIONS[kind]
        record = check_entry(section_name, {k: v for k, v in asdict(item).items() if k != "builtin"})

        def change(data: dict[str, Any]) -> None:
            section = data[section_name]
            existing = [i for i, entry in enumerate(section) if entry["name"] == item.name]
            if existing and not overwrite:
                raise PresetExists(f"a {kind} preset called {item.name!r} exists; save with overwrite to replace it")
            if existing:
                section[existing[0]] = record
            elif len(section) >= MAX_PRESETS:
                raise PresetError(
                    f"you have {len(section):,} {section_name}, the most Atelier keeps ({MAX_PRESETS:,}); "
                    f"delete some to save {item.name!r}"
                )
            else:
                section.append(record)

        self._change(change)

    def delete(self, kind: str, name: str) -> None:
        _check_kind(kind)
        builtin_names = {
            "style": {style.name for style in self._builtin_styles},
            "negative": {preset.name for preset in self._builtin_negatives},
        }.get(kind, set())

        def change(data: dict[str, Any]) -> None:
            section = data[_SECTIONS[kind]]
            if not any(entry["name"] == name for entry in section):
                builtin = name in builtin_names
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
        return copy.deepcopy(self._user())

    def import_bundle(self, bundle: Any, overwrite: bool = False) -> ImportReport:
        """Add presets from a bundle; existing names are kept unless ``overwrite``.

        A bad entry is refused (the report says why) and the rest imports; a bundle with nothing
        usable in it is a ``PresetError`` and changes nothing.
        """
        incoming = _validated(bundle)
        report = ImportReport()

        def change(current: dict[str, Any]) -> None:
            for section in _SECTIONS.values():
                good, refused = sort_entries(section, incoming[section], room=len(incoming[section]))
                report.refused += refused
                _merge(section, current[section], good, overwrite, report)
            if report.refused and not (report.added or report.replaced or report.skipped):
                raise PresetError(f"nothing was imported: {summarise(report.refused)}")

        self._change(change)
        return report

    def import_styles_csv(self, text: str, overwrite: bool = False) -> ImportReport:
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
        """The user's presets, checked; read again only when the file has changed. The page asks at
        every keystroke (the preview composes the chosen styles), and every save puts a new file in
        place, so the file's identity says when the copy in hand is stale. Callers do not change it."""
        # the file lock too: a reader that finds the file damaged moves it aside, which must not race
        # another reader doing the same, or a writer that has just put a good file in its place
        with self._lock, _file_lock(self.path):
            state = _signature(self.path)
            if state is None or state != self._read_state:
                self._read_data = self._read()
                self._read_state = _signature(self.path)  # reading may have repaired or replaced it
            return self._read_data

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Read, change and write the file as one step, so concurrent saves never lose each other."""
        with self._lock, _file_lock(self.path):
            data = self._read()
            change(data)
            self._write(data, limit=MAX_FILE_BYTES)

    def _read(self, from_backup: bool = False) -> dict[str, Any]:
        if not self.path.exists():
            return _empty()
        try:
            size = self.path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise PresetError(f"it is {size:,} bytes; the limit is {MAX_FILE_BYTES:,}")
            data = _validated(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, PresetError) as exc:
            return self._set_aside_damaged(exc, from_backup)
        clean, refused = _sorted(data)
        if refused and _signature(self.path) != self._unrepaired:
            self._keep_good_entries(clean, refused)
        return clean

    def _set_aside_damaged(self, exc: Exception, from_backup: bool) -> dict[str, Any]:
        aside = damaged_name(self.path)
        try:
            os.replace(self.path, aside)
        except OSError as move_failed:  # a read-only data folder: start with no user presets, say why
            self._report(f"Your presets file was damaged ({exc}) and could not be moved aside ({move_failed}).")
            return _empty()
        self.problem = f"Your presets file was damaged ({exc}); it was moved to {aside.name}."
        log.error(self.problem)
        if self.backup.exists() and not from_backup:
            shutil.copy2(self.backup, self.path)
            self.problem += " The last good copy (presets.json.bak) was restored."
            return self._read(from_backup=True)
        return _empty()

    def _keep_good_entries(self, clean: dict[str, Any], refused: list[str]) -> None:
        """Copy the file aside as it is, then write only its good entries (once: the next read is clean).
        Where the folder cannot be written the file stays as it is, its good entries are still used,
        and the repair is not tried again until the file changes."""
        left_out = f"{len(refused)} preset(s) in your presets file could not be used and were left out"
        try:
            aside = damaged_name(self.path)
            shutil.copy2(self.path, aside)
            self._write(clean, backup=False)  # the .bak stays the last good copy; this one is kept aside
        except OSError as exc:
            self._unrepaired = _signature(self.path)
            self._report(f"{left_out} ({summarise(refused)}); the file could not be repaired ({exc}).")
            return
        self._report(f"{left_out} ({summarise(refused)}); the file as it was is kept as {aside.name}.")

    def _report(self, problem: str) -> None:
        """Show ``problem`` on the page and log it, once however often the file is read."""
        if problem != self.problem:
            self.problem = problem
            log.error(problem)

    def _write(self, data: dict[str, Any], limit: int | None = None, backup: bool = True) -> None:
        # encoded before any file exists, so text that cannot be written leaves nothing behind
        payload = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        if limit is not None and len(payload) > limit:
            raise PresetError(f"the presets file would be {len(payload):,} bytes; the limit is {limit:,}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=".presets-")
        try:
            with os.fdopen(descriptor, "wb") as temp:
                temp.write(payload)
                temp.flush()
                os.fsync(temp.fileno())
            if backup and self.path.exists():
                shutil.copy2(self.path, self.backup)
            os.replace(temp_name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        _fsync_folder(self.path.parent)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PresetError(f"preset kind must be one of {', '.join(KINDS)}, got {kind!r}")


FileState = tuple[int, int, int]


def _signature(path: Path) -> FileState | None:
    """What tells one state of a file from the next (None when it cannot be read): a save renames a
    new file into place, so the inode changes even within one tick of the clock."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "version": VERSION, "styles": [], "negatives": [], "settings": []}


def _validated(data: Any) -> dict[str, Any]:
    """A bundle in the current schema with its sections as lists (entries not yet checked), or ``PresetError``."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise PresetError(f'not an Atelier presets file (expected "schema": "{SCHEMA}")')
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise PresetError(f"presets version {data.get('version')!r} is newer than this Atelier understands ({VERSION})")
    result = _empty()
    for section in _SECTIONS.values():
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise PresetError(f"{section} must be a list")
        result[section] = entries
    return result


def _sorted(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The file's good entries (at most ``MAX_PRESETS`` of each kind) and why each other one was left out."""
    clean, refused = _empty(), []
    for section in _SECTIONS.values():
        clean[section], problems = sort_entries(section, data[section], room=MAX_PRESETS)
        refused += problems
    return clean, refused


def _merge(section: str, current: list[dict[str, Any]], good: list[dict[str, Any]], overwrite: bool,
           report: ImportReport) -> None:  # fmt: skip
    """Imported entries into one section of the file, counted in ``report``."""
    names = {entry["name"]: i for i, entry in enumerate(current)}
    for record in good:
        if record["name"] in names and not overwrite:
            report.skipped += 1
        elif record["name"] in names:
            current[names[record["name"]]] = record
            report.replaced += 1
        elif len(current) >= MAX_PRESETS:
            report.refused.append(f"{section} {record['name']!r}: {too_many(section, 0)}")
        else:
            current.append(record)
            names[record["name"]] = len(current) - 1
            report.added += 1


def _merged(builtin: list[_Builtin], user: list[_Builtin]) -> list[_Builtin]:
    """Built-ins first, then the user's; a user preset with a built-in's name replaces it."""
    names = {item.name for item in user}
    return [item for item in builtin if item.name not in names] + user


def _read_library(file: str, section: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((LIBRARY / file).read_text(encoding="utf-8"))[section]
    return entries


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
