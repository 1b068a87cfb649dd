"""Presets with wrong field types, broken text or absurd sizes: refused one entry at a time with a
message that names the entry, the field and the limit, on save, on import (bundle and styles.csv)
and when the user's file is loaded; the good entries stay, the user's file is never lost, and no
temp file is left behind. No model is needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from presets import store
from presets.store import SCHEMA, VERSION, NegativePreset, PresetError, PresetLibrary, SavedSettings, Style
from presets.validation import MAX_DESCRIPTION, MAX_PRESETS, MAX_TEXT
from webui.presets_tab import rows

# The payloads from the security issue, verbatim.
BAD_PHOTOGRAPH = {"name": "Photograph", "prompt": 123, "negative_prompt": ["x"]}
BAD_SETTINGS = {"name": "badset", "settings": "notadict"}
GOOD_STYLE = {"name": "Good", "prompt": "good {prompt}", "negative_prompt": "bad"}


@pytest.fixture
def lib(tmp_path: Path) -> PresetLibrary:
    return PresetLibrary(tmp_path)


def _bundle(**sections: list[Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "version": VERSION, **sections}


def _temp_files(folder: Path) -> list[Path]:
    return list(folder.glob(".presets-*"))


def _everything_works(lib: PresetLibrary) -> None:
    """What broke for everyone: the built-in style in use, the listings, the Presets tab."""
    photo = lib.get("style", "Photograph")
    assert photo.builtin
    assert lib.compose("a fox", "", ["Photograph"], [])[0] == photo.prompt.replace("{prompt}", "a fox")
    assert rows(lib)
    assert lib.entries()


# -- finding 4: wrong field types ----------------------------------------------------------------


def test_an_imported_style_with_wrong_types_is_refused_and_the_rest_imports(lib: PresetLibrary) -> None:
    report = lib.import_bundle(_bundle(styles=[BAD_PHOTOGRAPH, GOOD_STYLE]))
    assert (report.added, report.replaced, report.skipped) == (1, 0, 0)
    assert len(report.refused) == 1
    assert "Photograph" in report.refused[0] and "prompt" in report.refused[0]
    assert [s.name for s in lib.styles() if not s.builtin] == ["Good"]
    _everything_works(lib)


def test_a_bundle_of_only_bad_entries_is_a_preset_error_and_changes_nothing(lib: PresetLibrary) -> None:
    for bad in ({"styles": [BAD_PHOTOGRAPH]}, {"settings": [BAD_SETTINGS]}):
        with pytest.raises(PresetError, match="nothing was imported"):
            lib.import_bundle(_bundle(**bad))
    assert not lib.path.exists()
    _everything_works(lib)


@pytest.mark.parametrize(
    ("section", "entry", "said"),
    [
        ("styles", BAD_PHOTOGRAPH, "prompt must be text, got int"),
        ("styles", {"name": "N", "negative_prompt": ["x"]}, "negative_prompt must be text, got list"),
        ("styles", {"name": "D", "description": {"a": 1}}, "description must be text, got dict"),
        ("styles", {"name": 5, "prompt": "{prompt}"}, "name must be text, got int"),
        ("styles", "just a string", "must be a JSON object"),
        ("negatives", {"name": "Neg", "negative_prompt": None}, "negative_prompt must be text, got NoneType"),
        ("settings", BAD_SETTINGS, "settings must be a JSON object"),
        ("settings", {"name": "S", "mode": 7, "settings": {}}, "mode must be text, got int"),
        ("settings", {"name": "S", "settings": {"steps": float("nan")}}, "steps"),
        ("settings", {"name": "S", "settings": {"prompt": 12}, "updated": []}, "updated must be text"),
    ],
    ids=[
        "prompt-int",
        "negative-list",
        "description-dict",
        "name-int",
        "not-an-object",
        "negative-none",
        "settings-str",
        "mode-int",
        "nan",
        "updated-list",
    ],
)
def test_each_wrong_field_type_is_named_and_only_that_entry_is_refused(
    lib: PresetLibrary, section: str, entry: Any, said: str
) -> None:
    good = {"styles": GOOD_STYLE, "negatives": {"name": "Good"}, "settings": {"name": "Good", "settings": {}}}
    report = lib.import_bundle(_bundle(**{section: [entry, good[section]]}))
    assert report.added == 1
    assert len(report.refused) == 1 and said in report.refused[0], report.refused
    assert sum(1 for e in lib.entries() if e["name"] == "Good") == 1
    _everything_works(lib)


def test_a_styles_csv_with_bad_rows_imports_the_good_ones(lib: PresetLibrary) -> None:
    text = (
        "name,prompt,negative_prompt\n"
        "Kept,kept {prompt},blurry\n"
        "bad/one,x,\n"
        f"Huge,{'x' * (MAX_TEXT + 1)},\n"
        "Also kept,masterpiece,\n"
    )
    report = lib.import_styles_csv(text)
    assert report.added == 2
    assert len(report.refused) == 2
    assert "bad/one" in report.refused[0]
    assert "Huge" in report.refused[1] and f"{MAX_TEXT + 1:,}" in report.refused[1]
    assert f"the limit is {MAX_TEXT:,}" in report.refused[1]
    assert [s.name for s in lib.styles() if not s.builtin] == ["Kept", "Also kept"]


def _write_file(folder: Path, **sections: list[Any]) -> bytes:
    raw = json.dumps(_bundle(**sections), indent=2).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "presets.json").write_bytes(raw)
    return raw


def test_a_file_on_disk_with_bad_entries_loads_the_good_ones_and_keeps_the_original(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("Older", "older {prompt}"))
    lib.save("style", Style("Newer", "newer {prompt}"))  # presets.json.bak now holds "Older" only
    bak = (tmp_path / "presets.json.bak").read_bytes()
    raw = _write_file(tmp_path, styles=[BAD_PHOTOGRAPH, GOOD_STYLE], settings=[BAD_SETTINGS])

    restarted = PresetLibrary(tmp_path)  # what launch.py does: the problem is known at once
    assert "Photograph" in restarted.problem and "badset" in restarted.problem
    assert [s.name for s in restarted.styles() if not s.builtin] == ["Good"]
    assert restarted.saved() == []
    _everything_works(restarted)
    kept = [p for p in tmp_path.glob("presets.*.json") if p.read_bytes() == raw]
    assert len(kept) == 1 and kept[0].name in restarted.problem
    assert (tmp_path / "presets.json.bak").read_bytes() == bak
    # the cleaned file is written once: later reads find nothing more to set aside
    PresetLibrary(tmp_path).styles()
    assert len(list(tmp_path.glob("presets.*.json"))) == 1
    assert _temp_files(tmp_path) == []


def test_bad_entries_in_a_folder_that_cannot_be_written_still_start_with_the_good_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _write_file(tmp_path, styles=[{"name": "Good", "prompt": "good {prompt}"}, {"name": "Bad", "prompt": 123}])

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(30, "Read-only file system")  # as root, chmod cannot make one: refuse the copy

    monkeypatch.setattr(store.shutil, "copy2", read_only)
    library = PresetLibrary(tmp_path)
    assert "Good" in [style.name for style in library.styles()]
    assert "Bad" not in [style.name for style in library.styles()]
    assert "could not be repaired" in library.problem
    assert list(tmp_path.glob("presets*")) == [tmp_path / "presets.json"]  # no copy made on any of those reads
    assert (tmp_path / "presets.json").read_bytes() == raw


def test_too_many_presets_in_the_file_on_disk_keeps_the_first_ones(tmp_path: Path) -> None:
    styles = [{"name": f"S{i}", "prompt": "{prompt}"} for i in range(MAX_PRESETS + 3)]
    raw = _write_file(tmp_path, styles=styles)
    lib = PresetLibrary(tmp_path)
    assert len([s for s in lib.styles() if not s.builtin]) == MAX_PRESETS
    assert f"{MAX_PRESETS}" in lib.problem
    assert [p.read_bytes() for p in tmp_path.glob("presets.*.json")] == [raw]


# -- finding 8: text that cannot be written --------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        Style("Lone", "\ud800 {prompt}"),
        NegativePreset("Lone", "ugly \udfff"),
        SavedSettings("Lone", settings={"prompt": "a \ud800 cat"}),
        SavedSettings("Lone", settings={"\ud800": 1}),
    ],
    ids=["style", "negative", "settings-value", "settings-key"],
)
def test_a_lone_surrogate_is_a_clear_preset_error_and_leaves_no_temp_file(tmp_path: Path, item: Any) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("Before", "{prompt}"))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("presets.json*")}
    kind = {Style: "style", NegativePreset: "negative", SavedSettings: "settings"}[type(item)]
    with pytest.raises(PresetError, match="surrogate"):
        lib.save(kind, item)
    assert _temp_files(tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.glob("presets.json*")} == before


def test_an_imported_lone_surrogate_is_refused_and_the_rest_imports(lib: PresetLibrary) -> None:
    report = lib.import_bundle(_bundle(styles=[{"name": "Lone", "prompt": "\ud800"}, GOOD_STYLE]))
    assert report.added == 1 and "surrogate" in report.refused[0]
    assert _temp_files(lib.path.parent) == []


def test_a_failed_write_removes_its_temp_file_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("Before", "{prompt}"))
    before = (tmp_path / "presets.json").read_bytes()

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        lib.save("style", Style("After", "{prompt}"))
    assert _temp_files(tmp_path) == []
    assert (tmp_path / "presets.json").read_bytes() == before


# -- finding 9: sizes and counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "item", "field", "cap"),
    [
        ("style", Style("Long", "x" * (MAX_TEXT + 1)), "prompt", MAX_TEXT),
        ("style", Style("Long", "{prompt}", "y" * (10 * 1024 * 1024)), "negative_prompt", MAX_TEXT),
        ("negative", NegativePreset("Long", "ugly", "z" * (MAX_DESCRIPTION + 1)), "description", MAX_DESCRIPTION),
        ("settings", SavedSettings("Long", settings={"prompt": "p" * (MAX_TEXT + 1)}), "prompt", MAX_TEXT),
    ],
    ids=["prompt", "10MB-negative", "description", "settings-prompt"],
)
def test_an_oversized_text_names_its_length_and_the_cap(
    tmp_path: Path, kind: str, item: Any, field: str, cap: int
) -> None:
    lib = PresetLibrary(tmp_path)
    with pytest.raises(PresetError) as refused:
        lib.save(kind, item)
    message = str(refused.value)
    assert field in message and f"{cap:,}" in message, message
    assert not lib.path.exists() and _temp_files(tmp_path) == []


def test_a_prompt_at_the_cap_is_kept(lib: PresetLibrary) -> None:
    lib.save("style", Style("Long but fine", "x" * (MAX_TEXT - 9) + " {prompt}"))
    assert len(lib.get("style", "Long but fine").prompt) == MAX_TEXT


def test_the_preset_count_is_capped_on_import_and_on_save(lib: PresetLibrary) -> None:
    styles = [{"name": f"S{i}", "prompt": "{prompt}"} for i in range(MAX_PRESETS + 2)]
    report = lib.import_bundle(_bundle(styles=styles))
    assert report.added == MAX_PRESETS
    assert len(report.refused) == 2 and f"{MAX_PRESETS:,}" in report.refused[0]
    with pytest.raises(PresetError, match=f"{MAX_PRESETS:,}"):
        lib.save("style", Style("One more", "{prompt}"))
    lib.save("style", Style("S0", "replaced {prompt}"), overwrite=True)  # replacing is still fine
    lib.save("negative", NegativePreset("Other kinds have their own room", "ugly"))
    assert lib.get("style", "S0").prompt == "replaced {prompt}"


def test_a_file_over_the_size_cap_is_set_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MAX_FILE_BYTES", 2_000)
    raw = _write_file(tmp_path, styles=[{"name": f"S{i}", "prompt": "{prompt}"} for i in range(40)])
    assert len(raw) > 2_000
    lib = PresetLibrary(tmp_path)
    assert [s for s in lib.styles() if not s.builtin] == []
    assert "2,000" in lib.problem
    assert [p.read_bytes() for p in tmp_path.glob("presets.damaged-*.json")] == [raw]
    with pytest.raises(PresetError, match="2,000"):
        lib.import_bundle(json.loads(raw))
