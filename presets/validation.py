"""What a preset may hold: the type and size of every field, checked on save, import and load.

A preset reaches the library from the page, from scripts, from a bundle or styles.csv someone
shared, and from the user's own file on disk; whatever its source, a bad entry is refused with a
message naming the entry, the field and the limit, and never reaches the code that uses presets.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

# The caps sit far above real use, so only a mistake or an attack reaches them:
# - A1111-sized prompts are a few KB (CLIP reads 75 tokens, ~300 characters, per chunk). 10,000
#   characters is several times the longest real ones and half the engine's 20,000-character
#   request limit, so a style plus the artist's own words still fits in one request.
MAX_TEXT = 10_000
# Descriptions are one line of help in the pickers (the built-in ones are under 100 characters).
MAX_DESCRIPTION = 1_000
# The largest style packs artists share hold several hundred styles; 2,000 of each kind keeps every
# picker usable, and with real presets (under 1 KB each) the file rewritten on each save about a MB.
MAX_PRESETS = 2_000
# A tab's saved settings have about 25 fields; lists in them (styles, negatives) a handful of names.
MAX_SETTINGS_FIELDS = 200
MAX_LIST_ITEMS = 200
# Preset names: long enough for any real title, short enough for a picker.
MAX_NAME = 80
# Short labels: the tab a saved setting came from, its timestamp, a settings field's name.
MAX_LABEL = 80
# A backstop over everything: real libraries of thousands of presets stay well under 1 MB.
MAX_FILE_BYTES = 16 * 1024 * 1024
# A settings value nests at most this deep (a list of names, a small object): tabs save flat fields.
MAX_DEPTH = 3
# The widest whole number a field may hold (64-bit); seeds and sizes are far smaller.
MAX_INT = 2**63 - 1

_JOINERS = "\u200c\u200d"  # zero-width (non-)joiners: format characters that emoji and many scripts need
# The text fields of each section and the longest each may be; anything else in an entry is dropped.
TEXT_FIELDS: dict[str, dict[str, int]] = {
    "styles": {"prompt": MAX_TEXT, "negative_prompt": MAX_TEXT, "description": MAX_DESCRIPTION},
    "negatives": {"negative_prompt": MAX_TEXT, "description": MAX_DESCRIPTION},
    "settings": {"mode": MAX_LABEL, "updated": MAX_LABEL},
}


class PresetError(ValueError):
    """A preset operation that cannot be done; the message says why."""


def check_name(name: Any) -> str:
    """A preset name: 1-80 visible characters, any script, no path separators or control characters."""
    if not isinstance(name, str):
        raise PresetError(f"a preset name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise PresetError("a preset needs a name")
    if len(cleaned) > MAX_NAME:
        raise PresetError(f"preset names are at most {MAX_NAME} characters, this one has {len(cleaned)}")
    # category C holds control, format and surrogate characters (a lone surrogate cannot be saved)
    bad = sorted({c for c in cleaned if c in "/\\" or (unicodedata.category(c).startswith("C") and c not in _JOINERS)})
    if bad or cleaned in (".", ".."):
        shown = ", ".join(repr(c) for c in bad) or repr(cleaned)
        raise PresetError(f"preset name {cleaned!r} contains characters that are not allowed: {shown}")
    return cleaned


def check_text(value: Any, field: str, limit: int) -> str:
    """Text that fits ``limit`` characters and can be written as UTF-8."""
    if not isinstance(value, str):
        raise PresetError(f"{field} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise PresetError(f"{field} is {len(value):,} characters long; the limit is {limit:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # half of a UTF-16 pair: JSON's "\ud800" decodes to one, and no file can hold it
        raise PresetError(
            f"{field} holds a lone surrogate ({value[exc.start]!r} at position {exc.start}), which is not a character"
        ) from exc
    return value


def check_entry(section: str, entry: Any) -> dict[str, Any]:
    """One preset of ``section`` with its name normalised and unknown fields dropped, or ``PresetError``."""
    if not isinstance(entry, dict):
        raise PresetError(f"each preset must be a JSON object, got {type(entry).__name__}")
    if not isinstance(entry.get("name"), str):
        raise PresetError(f"name must be text, got {type(entry.get('name')).__name__}")
    record: dict[str, Any] = {"name": check_name(entry["name"])}
    for field, limit in TEXT_FIELDS[section].items():
        if field in entry:
            record[field] = check_text(entry[field], field, limit)
    if section == "settings":
        record["settings"] = check_settings(entry.get("settings", {}))
    return {field: record[field] for field in [*entry, *record] if field in record}  # the entry's order


def check_settings(settings: Any) -> dict[str, Any]:
    """Saved tab settings: a JSON object of at most ``MAX_SETTINGS_FIELDS`` plain values."""
    if not isinstance(settings, dict):
        raise PresetError(f"settings must be a JSON object of field: value, got {type(settings).__name__}")
    if len(settings) > MAX_SETTINGS_FIELDS:
        raise PresetError(f"settings has {len(settings):,} fields; the limit is {MAX_SETTINGS_FIELDS:,}")
    for key, value in settings.items():
        check_text(key, "a settings field name", MAX_LABEL)
        _check_value(value, f"settings field {key!r}", MAX_DEPTH)
    return settings


def _check_value(value: Any, field: str, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(value, field, MAX_TEXT)
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise PresetError(f"{field} is {value:.3e}, beyond the largest whole number allowed ({MAX_INT:,})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PresetError(f"{field} must be a finite number, got {value}")
    elif isinstance(value, (list, dict)) and depth > 1:
        _check_container(value, field, depth)
    else:
        raise PresetError(f"{field} must be text, a number, true/false or a short list, got {type(value).__name__}")


def _check_container(value: list[Any] | dict[Any, Any], field: str, depth: int) -> None:
    if len(value) > MAX_LIST_ITEMS:
        raise PresetError(f"{field} has {len(value):,} items; the limit is {MAX_LIST_ITEMS:,}")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict):
            check_text(key, f"a key in {field}", MAX_LABEL)
        _check_value(item, f"{field}[{key!r}]", depth - 1)


def sort_entries(section: str, entries: list[Any], room: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The good entries of a section (at most ``room`` of them) and a message for each one refused."""
    good: list[dict[str, Any]] = []
    refused: list[str] = []
    for number, entry in enumerate(entries, 1):
        try:
            record = check_entry(section, entry)
        except PresetError as exc:
            refused.append(f"{describe(section, number, entry)}: {exc}")
            continue
        if len(good) >= room:
            refused.append(f"{describe(section, number, entry)}: {too_many(section, room)}")
            continue
        good.append(record)
    return good, refused


def describe(section: str, number: int, entry: Any) -> str:
    """How a message names an entry: its place, and its name when it has a printable one."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if isinstance(name, str):
        shown = name if len(name) <= MAX_NAME else name[:MAX_NAME] + "…"
        return f"{section} #{number} ({shown!r})"
    return f"{section} #{number}"


def too_many(section: str, room: int) -> str:
    return f"no room: Atelier keeps at most {MAX_PRESETS:,} {section} ({room:,} left)"


def summarise(problems: list[str], shown: int = 10) -> str:
    """The first few problems, and how many more there are (an import may refuse thousands)."""
    text = "; ".join(problems[:shown])
    return text + (f"; and {len(problems) - shown:,} more" if len(problems) > shown else "")
