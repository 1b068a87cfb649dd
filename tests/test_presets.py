"""Presets: the built-in styles and negative presets, A1111's style rules, the user's presets file
(round trips, overwrite prompts, names, durability under concurrent saves, damaged files) and the
styles.csv / bundle exchange formats. No model is needed."""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import multiprocessing
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from presets import store
from presets.store import (
    MAX_NAME,
    SCHEMA,
    VERSION,
    ImportReport,
    NegativePreset,
    PresetError,
    PresetExists,
    PresetLibrary,
    SavedSettings,
    Style,
    check_name,
    merge_style,
)

LIBRARY_DIR = Path(store.__file__).parent / "library"
FIRST_NEGATIVES = ["Hands", "Anatomy", "Faces", "Quality", "Composition"]

TAB_SETTINGS: dict[str, Any] = {
    "model": "runwayml/stable-diffusion-v1-5",
    "prompt": "猫の肖像 🐱, café au lait fur, «soft light»",
    "negative_prompt": "blurry, lowres",
    "styles": ["Photograph", "Cinematic"],
    "negatives": ["Hands", "Quality"],
    "sampler_name": "DPM++ 2M",
    "schedule_type": "Karras",
    "steps": 28,
    "cfg_scale": 6.5,
    "width": 768,
    "height": 512,
    "seed": -1,
    "batch_size": 2,
    "batch_count": 3,
    "clip_skip": 2,
    "denoising_strength": 0.45,
    "mask_blur": 4,
    "only_masked": True,
    "only_masked_padding": 32,
    "masked_content": "original",
    "invert_mask": False,
}


@pytest.fixture
def lib(tmp_path: Path) -> PresetLibrary:
    return PresetLibrary(tmp_path)


def _user_styles(library: PresetLibrary) -> list[Style]:
    return [s for s in library.styles() if not s.builtin]


def _file(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "presets.json").read_text(encoding="utf-8"))


def _finishes(fn: Callable[..., Any], *args: Any, timeout: float = 2.0) -> Any:
    """Call ``fn`` in a helper thread so a deadlock fails the test instead of hanging the run."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"{getattr(fn, '__name__', fn)}{args} did not return in {timeout}s (deadlock?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _save_names_in_own_process(folder: str, prefix: str, count: int) -> None:
    """Run in a spawned process: its own PresetLibrary on a shared folder, like a second Atelier."""
    library = PresetLibrary(Path(folder))
    for i in range(count):
        library.save("style", Style(f"{prefix}-{i}", f"{prefix} {i} {{prompt}}"))


# -- the built-in library ----------------------------------------------------------------------


def test_builtin_styles_each_have_one_prompt_slot_a_negative_and_a_description(lib: PresetLibrary) -> None:
    styles = lib.styles()
    assert len(styles) >= 12
    assert all(s.builtin for s in styles)
    names = [s.name for s in styles]
    assert len(set(names)) == len(names)
    for style in styles:
        assert style.prompt.count("{prompt}") == 1, style.name
        assert style.negative_prompt.strip(), style.name
        assert "{prompt}" not in style.negative_prompt, style.name
        assert style.description.strip(), style.name
    negatives = [s.negative_prompt for s in styles]
    assert len(set(negatives)) == len(negatives), "each style should carry its own negative part"
    # the files themselves say the same thing (what ships is what loads)
    shipped = json.loads((LIBRARY_DIR / "styles.json").read_text(encoding="utf-8"))["styles"]
    assert [s["name"] for s in shipped] == names


def test_builtin_negative_presets_come_in_order_with_descriptions(lib: PresetLibrary) -> None:
    negatives = lib.negatives()
    names = [n.name for n in negatives]
    assert all(n.builtin for n in negatives)
    assert [name for name in names if name in FIRST_NEGATIVES] == FIRST_NEGATIVES
    assert names[: len(FIRST_NEGATIVES)] == FIRST_NEGATIVES
    for preset in negatives:
        assert preset.description.strip(), preset.name
        assert preset.negative_prompt.strip(), preset.name
    hands = [t.strip() for t in lib.get("negative", "Hands").negative_prompt.split(",")]
    for term in ("bad hands", "extra fingers", "missing fingers", "fused fingers", "bad anatomy"):
        assert term in hands


def test_entries_report_every_builtin_with_kind_and_flag(lib: PresetLibrary) -> None:
    lib.save("settings", SavedSettings("Mine", settings={"steps": 3}))
    listed = lib.entries()
    assert {"name": "Photograph", "kind": "style", "builtin": True} in listed
    assert {"name": "Hands", "kind": "negative", "builtin": True} in listed
    assert {"name": "Mine", "kind": "settings", "builtin": False} in listed
    assert len(listed) == len(lib.styles()) + len(lib.negatives()) + 1
    with pytest.raises(PresetError, match="kind"):
        lib.get("colour", "Photograph")


# -- compose: A1111's style semantics ---------------------------------------------------------


def test_merge_style_follows_a1111() -> None:
    assert merge_style("photo of {prompt}, 35mm", "a cat") == "photo of a cat, 35mm"
    assert merge_style("masterpiece, best quality", "a cat") == "a cat, masterpiece, best quality"
    assert merge_style("masterpiece", "") == "masterpiece"
    assert merge_style("masterpiece", "   ") == "masterpiece"
    assert merge_style("", "a cat") == "a cat"


def test_compose_puts_the_prompt_into_a_style_and_adds_its_negative(lib: PresetLibrary) -> None:
    photo = lib.get("style", "Photograph")
    prompt, negative = lib.compose("a red fox", "", ["Photograph"], [])
    assert prompt == photo.prompt.replace("{prompt}", "a red fox")
    assert prompt.startswith("photo of a red fox, ")
    assert negative == photo.negative_prompt
    prompt, negative = lib.compose("a red fox", "blurry", ["Photograph"], [])
    assert negative == f"blurry, {photo.negative_prompt}"


def test_compose_appends_a_style_without_slot_and_handles_an_empty_prompt(lib: PresetLibrary) -> None:
    lib.save("style", Style("Extra", "masterpiece, best quality", "lowres"))
    assert lib.compose("a cat", "blurry", ["Extra"], []) == ("a cat, masterpiece, best quality", "blurry, lowres")
    prompt, negative = lib.compose("", "", ["Extra"], [])
    assert prompt == "masterpiece, best quality"
    assert negative == "lowres"
    assert not prompt.startswith(",") and not negative.startswith(",")


def test_compose_applies_several_styles_in_order(lib: PresetLibrary) -> None:
    lib.save("style", Style("Extra", "masterpiece", "lowres"))
    photo = lib.get("style", "Photograph")
    first = lib.compose("a cat", "", ["Photograph", "Extra"], [])
    assert first == (photo.prompt.replace("{prompt}", "a cat") + ", masterpiece", photo.negative_prompt + ", lowres")
    second = lib.compose("a cat", "", ["Extra", "Photograph"], [])
    assert second == (photo.prompt.replace("{prompt}", "a cat, masterpiece"), "lowres, " + photo.negative_prompt)


def test_compose_appends_negative_presets_once(lib: PresetLibrary) -> None:
    hands = lib.get("negative", "Hands").negative_prompt
    quality = lib.get("negative", "Quality").negative_prompt
    assert lib.compose("x", "ugly", [], ["Hands", "Quality"]) == ("x", f"ugly, {hands}, {quality}")
    assert lib.compose("x", "", [], ["Hands"]) == ("x", hands)
    _, twice = lib.compose("x", "ugly", [], ["Hands", "Hands"])
    assert twice == f"ugly, {hands}"
    _, present = lib.compose("x", f"ugly, {hands}", [], ["Hands"])
    assert present == f"ugly, {hands}"
    assert present.count("extra fingers") == 1


def test_compose_with_styles_and_negative_presets_together(lib: PresetLibrary) -> None:
    photo = lib.get("style", "Photograph")
    hands = lib.get("negative", "Hands").negative_prompt
    prompt, negative = lib.compose("a hand", "", ["Photograph"], ["Hands"])
    assert prompt == photo.prompt.replace("{prompt}", "a hand")
    assert negative == f"{photo.negative_prompt}, {hands}"


def test_compose_names_an_unknown_preset(lib: PresetLibrary) -> None:
    with pytest.raises(PresetError, match="No such style"):
        lib.compose("a cat", "", ["Photograph", "No such style"], [])
    with pytest.raises(PresetError, match="Gremlins"):
        lib.compose("a cat", "", [], ["Hands", "Gremlins"])


# -- round trips through a restart ------------------------------------------------------------


def test_saved_settings_survive_a_restart_with_every_field_and_unicode(tmp_path: Path) -> None:
    name = "猫の肖像 🐱"
    item = SavedSettings(name, mode="inpaint", settings=copy.deepcopy(TAB_SETTINGS))
    PresetLibrary(tmp_path).save("settings", item)

    restarted = PresetLibrary(tmp_path)
    loaded = restarted.get("settings", name)
    assert isinstance(loaded, SavedSettings)
    assert loaded == item
    assert loaded.settings == TAB_SETTINGS
    assert loaded.mode == "inpaint"
    assert loaded.updated  # stamped on save
    assert not loaded.builtin
    assert restarted.saved() == [item]
    assert restarted.problem == ""


def test_user_style_and_negative_survive_a_restart(tmp_path: Path) -> None:
    style = Style("Aquarelle légère ✨", "aquarelle de {prompt}, 水彩", "photo, 写真", "pour les paysages")
    negative = NegativePreset("Pas de texte", "text, watermark, 文字", "no lettering")
    first = PresetLibrary(tmp_path)
    first.save("style", style)
    first.save("negative", negative)

    restarted = PresetLibrary(tmp_path)
    assert restarted.get("style", style.name) == Style(
        style.name, style.prompt, style.negative_prompt, style.description
    )
    assert restarted.get("negative", negative.name) == NegativePreset(
        negative.name, negative.negative_prompt, negative.description
    )
    assert _user_styles(restarted) == [style]
    assert [n for n in restarted.negatives() if not n.builtin] == [negative]


def test_the_file_is_readable_versioned_json(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("settings", SavedSettings("猫の肖像 🐱", settings={"prompt": "猫"}))
    raw = (tmp_path / "presets.json").read_text(encoding="utf-8")
    data = json.loads(raw)
    assert data["schema"] == SCHEMA == "atelier-presets"
    assert data["version"] == VERSION == 1
    assert "猫の肖像 🐱" in raw, "unicode should be written as is, not as \\u escapes"
    assert raw.count("\n") > 5, "the file should be indented, one value per line"
    assert [s["name"] for s in data["settings"]] == ["猫の肖像 🐱"]
    assert "builtin" not in data["settings"][0]


# -- overwrite, built-ins, rename, duplicate --------------------------------------------------


def test_saving_an_existing_name_asks_first(lib: PresetLibrary) -> None:
    lib.save("style", Style("Mine", "old {prompt}", "old neg"))
    with pytest.raises(PresetExists, match="Mine"):
        lib.save("style", Style("Mine", "new {prompt}", "new neg"))
    assert issubclass(PresetExists, PresetError)
    assert lib.get("style", "Mine").prompt == "old {prompt}"
    lib.save("style", Style("Mine", "new {prompt}", "new neg"), overwrite=True)
    assert lib.get("style", "Mine").prompt == "new {prompt}"
    assert [s.name for s in _user_styles(lib)] == ["Mine"]

    lib.save("settings", SavedSettings("Tab", settings={"steps": 20}))
    with pytest.raises(PresetExists):
        lib.save("settings", SavedSettings("Tab", settings={"steps": 99}))
    assert lib.get("settings", "Tab").settings == {"steps": 20}


def test_a_user_style_with_a_builtin_name_replaces_it_once(lib: PresetLibrary) -> None:
    lib.save("style", Style("Photograph", "my photo of {prompt}", "mine"))
    names = [s.name for s in lib.styles()]
    assert names.count("Photograph") == 1
    mine = lib.get("style", "Photograph")
    assert not mine.builtin
    assert mine.prompt == "my photo of {prompt}"
    assert lib.compose("a cat", "", ["Photograph"], []) == ("my photo of a cat", "mine")
    assert sum(1 for entry in lib.entries() if entry["name"] == "Photograph" and entry["kind"] == "style") == 1


def test_builtins_cannot_be_deleted_or_renamed(lib: PresetLibrary) -> None:
    with pytest.raises(PresetError, match="Photograph"):
        _finishes(lib.delete, "style", "Photograph")
    with pytest.raises(PresetError, match="Hands"):
        _finishes(lib.delete, "negative", "Hands")
    with pytest.raises(PresetError, match="Photograph"):
        _finishes(lib.rename, "style", "Photograph", "Renamed")
    assert lib.get("style", "Photograph").builtin
    assert "Renamed" not in [s.name for s in lib.styles()]


def test_deleting_an_unknown_preset_is_an_error(lib: PresetLibrary) -> None:
    lib.save("style", Style("Mine", "{prompt}"))
    with pytest.raises(PresetError, match="Nobody"):
        _finishes(lib.delete, "style", "Nobody")
    assert [s.name for s in _user_styles(lib)] == ["Mine"]


def test_delete_removes_only_the_named_user_preset(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("A", "a {prompt}"))
    lib.save("style", Style("B", "b {prompt}"))
    _finishes(lib.delete, "style", "A")
    assert [s.name for s in _user_styles(PresetLibrary(tmp_path))] == ["B"]


def test_deleting_a_user_override_brings_back_the_original_builtin(lib: PresetLibrary) -> None:
    original = copy.deepcopy(lib.get("style", "Photograph"))
    edited = lib.get("style", "Photograph")  # the picker's object, edited and saved as the user's own
    edited.prompt = "edited {prompt}"
    lib.save("style", edited)
    assert lib.get("style", "Photograph").prompt == "edited {prompt}"
    _finishes(lib.delete, "style", "Photograph")
    assert lib.get("style", "Photograph") == original
    assert {"name": "Photograph", "kind": "style", "builtin": True} in lib.entries()


def test_rename_moves_a_user_preset_and_refuses_an_existing_name(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("A", "a {prompt}"))
    lib.save("style", Style("B", "b {prompt}"))
    with pytest.raises(PresetExists, match="B"):
        lib.rename("style", "A", "B")
    assert lib.get("style", "A").prompt == "a {prompt}"
    assert lib.get("style", "B").prompt == "b {prompt}"
    lib.rename("style", "A", "  Ä renamed  ")
    restarted = PresetLibrary(tmp_path)
    assert [s.name for s in _user_styles(restarted)] == ["Ä renamed", "B"]
    assert restarted.get("style", "Ä renamed").prompt == "a {prompt}"
    with pytest.raises(PresetError):
        restarted.get("style", "A")
    with pytest.raises(PresetError):
        lib.rename("style", "B", "bad/name")


def test_duplicate_makes_an_independent_copy(lib: PresetLibrary) -> None:
    lib.save("settings", SavedSettings("Original", settings=copy.deepcopy(TAB_SETTINGS)))
    lib.duplicate("settings", "Original", "Copy")
    copied = lib.get("settings", "Copy")
    assert copied.settings == TAB_SETTINGS
    copied.settings["steps"] = 99
    copied.settings["styles"].append("Anime")
    lib.save("settings", copied, overwrite=True)
    assert lib.get("settings", "Copy").settings["steps"] == 99
    assert lib.get("settings", "Original").settings == TAB_SETTINGS
    with pytest.raises(PresetExists):
        lib.duplicate("settings", "Original", "Copy")


def test_duplicating_a_builtin_gives_an_editable_user_copy(lib: PresetLibrary) -> None:
    lib.duplicate("style", "Photograph", "My photo")
    mine = lib.get("style", "My photo")
    builtin = lib.get("style", "Photograph")
    assert not mine.builtin and builtin.builtin
    assert (mine.prompt, mine.negative_prompt) == (builtin.prompt, builtin.negative_prompt)
    lib.save("style", Style("My photo", "changed {prompt}"), overwrite=True)
    assert lib.get("style", "Photograph").prompt == builtin.prompt


def test_an_unknown_kind_is_a_preset_error(lib: PresetLibrary) -> None:
    lib.save("style", Style("Mine", "{prompt}"))
    with pytest.raises(PresetError, match="colour"):
        lib.save("colour", Style("Other", "{prompt}"))
    with pytest.raises(PresetError, match="colour"):
        _finishes(lib.delete, "colour", "Mine")
    with pytest.raises(PresetError, match="colour"):
        lib.rename("colour", "Mine", "Yours")
    with pytest.raises(PresetError, match="colour"):
        lib.duplicate("colour", "Mine", "Yours")
    assert [s.name for s in _user_styles(lib)] == ["Mine"]


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("", "name"),
        ("   ", "name"),
        ("\t\n ", "name"),
        ("a" * (MAX_NAME + 1), str(MAX_NAME)),
        ("x" * 500, str(MAX_NAME)),
        ("portraits/cats", repr("/")),
        ("portraits\\cats", repr("\\")),
        ("two\nlines", repr("\n")),
        ("nul\x00byte", repr("\x00")),
        ("bell\x07", repr("\x07")),
        (".", repr(".")),
        ("..", repr("..")),
    ],
)
def test_bad_names_are_refused_with_a_reason(lib: PresetLibrary, name: str, said: str) -> None:
    with pytest.raises(PresetError, match=re.escape(said)) as caught:
        check_name(name)
    assert len(str(caught.value)) > 10
    with pytest.raises(PresetError):
        lib.save("style", Style(name, "{prompt}"))
    assert not lib.path.exists()


def test_a_name_that_is_not_text_is_refused() -> None:
    with pytest.raises(PresetError, match="text"):
        check_name(None)


@pytest.mark.parametrize(
    "name",
    ["猫の肖像", "🐱 cats", "Café crème", "Ünïcödé Straße", "Пейзаж", "מים", "a" * MAX_NAME, "...dots", "a.b"],
)
def test_unicode_and_ordinary_names_are_allowed(lib: PresetLibrary, name: str) -> None:
    assert check_name(name) == name
    lib.save("negative", NegativePreset(name, "ugly"))
    assert lib.get("negative", name).negative_prompt == "ugly"


@pytest.mark.parametrize("name", ["👩\u200d🎨 Artist", "👨\u200d👩\u200d👧 family", "می\u200cخواهم"])
def test_names_with_joiners_used_by_emoji_and_scripts_are_allowed(name: str) -> None:
    # ZWJ emoji sequences and the Persian zero-width non-joiner are ordinary text, not control characters
    assert check_name(name) == name


def test_names_are_stripped_and_normalised(lib: PresetLibrary) -> None:
    assert check_name("  Spaced out \t") == "Spaced out"
    assert check_name("Cafe\u0301") == "Caf\u00e9"
    lib.save("style", Style("  Padded  ", "{prompt}"))
    assert [s.name for s in _user_styles(lib)] == ["Padded"]
    with pytest.raises(PresetExists):
        lib.save("style", Style("Padded   ", "{prompt}"))


# -- durability -------------------------------------------------------------------------------


def test_each_save_keeps_the_previous_file_as_bak_and_leaves_no_temp_files(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    bak = tmp_path / "presets.json.bak"
    lib.save("style", Style("A", "a {prompt}"))
    first = (tmp_path / "presets.json").read_bytes()
    lib.save("style", Style("B", "b {prompt}"))
    assert bak.read_bytes() == first
    assert [s["name"] for s in json.loads(bak.read_text(encoding="utf-8"))["styles"]] == ["A"]
    second = (tmp_path / "presets.json").read_bytes()
    lib.save("negative", NegativePreset("N", "ugly"))
    assert bak.read_bytes() == second
    assert [s["name"] for s in json.loads(bak.read_text(encoding="utf-8"))["styles"]] == ["A", "B"]
    _finishes(lib.delete, "style", "A")
    assert [s["name"] for s in json.loads(bak.read_text(encoding="utf-8"))["styles"]] == ["A", "B"]
    assert [s["name"] for s in _file(tmp_path)["styles"]] == ["B"]
    assert list(tmp_path.glob(".presets-*")) == []
    assert list(tmp_path.glob("presets.damaged-*")) == []


def test_a_refused_save_does_not_touch_the_files(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("A", "a {prompt}"))
    lib.save("style", Style("B", "b {prompt}"))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("presets.json*")}
    with pytest.raises(PresetExists):
        lib.save("style", Style("A", "changed"))
    with pytest.raises(PresetError):
        lib.save("style", Style("bad/name", "x"))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("presets.json*")} == before
    assert list(tmp_path.glob(".presets-*")) == []


def _save_from_threads(libraries: list[PresetLibrary], threads: int = 8, each: int = 10) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        library = libraries[t % len(libraries)]
        try:
            start.wait()
            for i in range(each):
                library.save("style", Style(f"t{t}-{i}", f"thread {t} save {i} {{prompt}}"))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(w.is_alive() for w in workers), "concurrent saves hung"
    return errors


@pytest.mark.parametrize("instances", [1, 2], ids=["one-library", "two-libraries-one-folder"])
def test_concurrent_saves_keep_every_preset(tmp_path: Path, instances: int) -> None:
    libraries = [PresetLibrary(tmp_path) for _ in range(instances)]
    assert _save_from_threads(libraries) == []
    expected = {f"t{t}-{i}" for t in range(8) for i in range(10)}
    on_disk = [s["name"] for s in _file(tmp_path)["styles"]]
    assert len(on_disk) == 80
    assert set(on_disk) == expected
    assert {s.name for s in _user_styles(PresetLibrary(tmp_path))} == expected
    assert list(tmp_path.glob(".presets-*")) == []
    assert list(tmp_path.glob("presets.damaged-*")) == []
    assert all(lib.problem == "" for lib in libraries)


def test_concurrent_saves_from_separate_processes_keep_every_preset(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    prefixes = ["p0", "p1", "p2"]
    processes = [
        context.Process(target=_save_names_in_own_process, args=(str(tmp_path), prefix, 10)) for prefix in prefixes
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0, 0, 0]
    expected = {f"{prefix}-{i}" for prefix in prefixes for i in range(10)}
    assert {s["name"] for s in _file(tmp_path)["styles"]} == expected
    assert len(_file(tmp_path)["styles"]) == 30
    assert list(tmp_path.glob(".presets-*")) == []


# -- damaged files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [b'{"schema": "atelier-presets", "version": 1, "styles": [{"na', b"\x00\xff\xfe garbage \x89PNG", b"[]", b""],
    ids=["truncated", "binary", "not-an-object", "empty"],
)
def test_a_damaged_file_is_moved_aside_intact_and_builtins_still_load(tmp_path: Path, damage: bytes) -> None:
    (tmp_path / "presets.json").write_bytes(damage)
    lib = PresetLibrary(tmp_path)
    styles = lib.styles()
    assert styles == PresetLibrary(tmp_path / "fresh").styles()
    assert len(styles) >= 12
    aside = list(tmp_path.glob("presets.damaged-*.json"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == damage
    assert "damaged" in lib.problem
    assert aside[0].name in lib.problem
    # and the next save starts a good file without losing what was set aside
    lib.save("style", Style("Fresh", "{prompt}"))
    assert [s["name"] for s in _file(tmp_path)["styles"]] == ["Fresh"]
    assert aside[0].read_bytes() == damage


def test_a_damaged_file_is_replaced_by_the_backup(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("Kept", "kept {prompt}"))
    lib.save("style", Style("Lost", "lost {prompt}"))  # the .bak now holds only "Kept"
    damage = (tmp_path / "presets.json").read_bytes()[:40]
    (tmp_path / "presets.json").write_bytes(damage)

    restarted = PresetLibrary(tmp_path)
    assert [s.name for s in _user_styles(restarted)] == ["Kept"]
    assert restarted.get("style", "Kept").prompt == "kept {prompt}"
    problem = restarted.problem.lower()
    assert "damaged" in problem
    assert "presets.json.bak" in problem or "backup" in problem
    assert [p.read_bytes() for p in tmp_path.glob("presets.damaged-*.json")] == [damage]
    assert _file(tmp_path)["styles"][0]["name"] == "Kept"


def test_a_newer_version_is_set_aside_rather_than_misread(tmp_path: Path) -> None:
    future = json.dumps(
        {"schema": SCHEMA, "version": 99, "styles": [{"name": "Future", "prompt": "{prompt}", "weights": [1, 2]}]}
    ).encode()
    (tmp_path / "presets.json").write_bytes(future)
    lib = PresetLibrary(tmp_path)
    assert "Future" not in [s.name for s in lib.styles()]
    assert _user_styles(lib) == []
    assert "99" in lib.problem
    assert [p.read_bytes() for p in tmp_path.glob("presets.damaged-*.json")] == [future]


def test_a_newer_file_with_a_newer_backup_does_not_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a newer Atelier wrote both files; an older one must refuse both, keep both, and carry on
    future = json.dumps({"schema": SCHEMA, "version": 99, "styles": [{"name": "Future"}]}).encode()
    future_bak = json.dumps({"schema": SCHEMA, "version": 99, "styles": [{"name": "Older future"}]}).encode()
    (tmp_path / "presets.json").write_bytes(future)
    (tmp_path / "presets.json.bak").write_bytes(future_bak)
    caplog.set_level(logging.CRITICAL, logger="presets.store")  # a loop would log a thousand lines
    lib = PresetLibrary(tmp_path)
    try:
        styles = lib.styles()
    except RecursionError:
        styles = None
    if styles is None:
        pytest.fail("reading a refused file whose backup is refused too recursed without end", pytrace=False)
    assert [s for s in styles if not s.builtin] == []
    assert len(styles) >= 12
    assert "99" in lib.problem
    kept = [p.read_bytes() for p in tmp_path.glob("presets*")]
    assert future in kept
    assert future_bak in kept


def test_readers_that_find_the_file_damaged_at_once_all_get_the_builtins(tmp_path: Path) -> None:
    # several tabs (or processes) loading right after a crash: one moves the file aside, none fails
    damage = b'{"schema": "atelier-presets", "styl'
    for trial in range(10):
        folder = tmp_path / str(trial)
        folder.mkdir()
        libraries = [PresetLibrary(folder) for _ in range(6)]  # each reads the (absent) file as it is made
        (folder / "presets.json").write_bytes(damage)
        start = threading.Barrier(len(libraries))
        results: list[Any] = []

        def read(library: PresetLibrary, start: threading.Barrier = start, results: list[Any] = results) -> None:
            start.wait()
            try:
                results.append(len(library.styles()))
            except Exception as exc:
                results.append(exc)

        workers = [threading.Thread(target=read, args=(library,)) for library in libraries]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)
        errors = [r for r in results if isinstance(r, Exception)]
        assert errors == [], f"trial {trial}: concurrent readers of a damaged file failed: {errors[:2]}"
        assert results == [len(libraries[0].styles())] * len(libraries)
        assert [p.read_bytes() for p in folder.glob("presets.damaged-*")] == [damage]


def test_damaged_files_in_the_same_second_are_all_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.time, "strftime", lambda fmt, *args: "20260101-120000")
    first, second = b'{"schema": "atel', b"not json at all"
    (tmp_path / "presets.json").write_bytes(first)
    PresetLibrary(tmp_path).styles()
    (tmp_path / "presets.json").write_bytes(second)
    PresetLibrary(tmp_path).styles()
    kept = sorted(p.read_bytes() for p in tmp_path.glob("presets.damaged-*"))
    assert kept == sorted([first, second]), "a damaged file was overwritten by a later one"


def test_a_bundle_with_the_wrong_schema_is_rejected_and_changes_nothing(tmp_path: Path) -> None:
    lib = PresetLibrary(tmp_path)
    lib.save("style", Style("A", "a {prompt}"))
    lib.save("style", Style("B", "b {prompt}"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for bundle in (
        {"schema": "someone-else", "version": 1, "styles": [{"name": "X"}]},
        {"version": 1, "styles": [{"name": "X"}]},
        {"schema": SCHEMA, "version": 99, "styles": [{"name": "X"}]},
        {"schema": SCHEMA, "version": 1, "styles": "X"},
        {"schema": SCHEMA, "version": 1, "styles": [{"prompt": "no name"}]},
        [{"name": "X"}],
        "atelier-presets",
    ):
        with pytest.raises(PresetError):
            lib.import_bundle(bundle)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert [s.name for s in _user_styles(lib)] == ["A", "B"]
    # a bad name part-way through refuses that entry only, and says why (security issue, finding 4)
    report = lib.import_bundle({"schema": SCHEMA, "version": 1, "styles": [{"name": "Good"}, {"name": "bad/one"}]})
    assert report.added == 1 and len(report.refused) == 1 and "bad/one" in report.refused[0]
    assert [s.name for s in _user_styles(lib)] == ["A", "B", "Good"]


# -- A1111 styles.csv -------------------------------------------------------------------------

A1111_CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    "# styles exported from my old install,,\n"
    'Dreamy,"dreamy photo of {prompt}, soft glow",harsh light\n'
    'Sharp,"sharp focus, 8k, highly detailed","blurry, lowres"\n'
    'Poem,"a quiet line, with a comma\nand a second line, {prompt}","bad, ugly"\n'
    "Bare,masterpiece,\n"
    '"Café ☕ style","coffee shop, {prompt}","text, watermark"\n'
)
A1111_ROWS = [
    Style("Dreamy", "dreamy photo of {prompt}, soft glow", "harsh light"),
    Style("Sharp", "sharp focus, 8k, highly detailed", "blurry, lowres"),
    Style("Poem", "a quiet line, with a comma\nand a second line, {prompt}", "bad, ugly"),
    Style("Bare", "masterpiece", ""),
    Style("Café ☕ style", "coffee shop, {prompt}", "text, watermark"),
]


def test_import_an_a1111_styles_csv(lib: PresetLibrary) -> None:
    report = lib.import_styles_csv(A1111_CSV)
    assert report == ImportReport(added=5)
    assert _user_styles(lib) == A1111_ROWS
    assert not any(s.name.startswith("#") or s.name.startswith("\ufeff") for s in lib.styles())
    # the imported styles work the A1111 way
    assert lib.compose("a cat", "", ["Sharp"], []) == ("a cat, sharp focus, 8k, highly detailed", "blurry, lowres")
    assert lib.compose("a cat", "", ["Dreamy"], [])[0] == "dreamy photo of a cat, soft glow"


def test_import_an_a1111_csv_without_bom_and_with_crlf(lib: PresetLibrary) -> None:
    text = A1111_CSV.lstrip("\ufeff").replace("\n", "\r\n").replace("comma\r\nand", "comma\nand")
    assert lib.import_styles_csv(text).added == 5
    assert _user_styles(lib) == A1111_ROWS


def test_importing_the_csv_twice_skips_or_replaces(lib: PresetLibrary) -> None:
    lib.import_styles_csv(A1111_CSV)
    assert lib.import_styles_csv(A1111_CSV) == ImportReport(skipped=5)
    assert _user_styles(lib) == A1111_ROWS
    changed = A1111_CSV.replace("harsh light", "flat light")
    assert lib.import_styles_csv(changed, overwrite=True) == ImportReport(replaced=5)
    assert lib.get("style", "Dreamy").negative_prompt == "flat light"
    assert len(_user_styles(lib)) == 5


def test_a_csv_with_a_repeated_name_gives_one_style(lib: PresetLibrary) -> None:
    report = lib.import_styles_csv("name,prompt,negative_prompt\nTwice,first {prompt},\nTwice,second {prompt},\n")
    assert report.added + report.skipped == 2 and report.refused == []
    assert [s.name for s in _user_styles(lib)] == ["Twice"]


def test_export_styles_csv_reads_back_every_style(lib: PresetLibrary) -> None:
    lib.import_styles_csv(A1111_CSV)
    text = lib.export_styles_csv()
    assert text.splitlines()[0] == "name,prompt,negative_prompt"
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["name", "prompt", "negative_prompt"]
    rows = [(row["name"], row["prompt"], row["negative_prompt"]) for row in reader]
    styles = lib.styles()
    assert rows == [(s.name, s.prompt, s.negative_prompt) for s in styles]
    names = {row[0] for row in rows}
    assert {"Photograph", "Anime", "Poem", "Café ☕ style"} <= names
    assert sum(s.builtin for s in styles) >= 12
    # and what we export, we (and A1111's reader) can import again
    other = PresetLibrary(lib.path.parent / "other")
    assert other.import_styles_csv(text).added == len(styles)
    assert [(s.name, s.prompt, s.negative_prompt) for s in other.styles()] == [
        (s.name, s.prompt, s.negative_prompt) for s in styles
    ]


@pytest.mark.parametrize(
    "text",
    [
        'Dreamy,"dreamy photo of {prompt}",harsh light\nSharp,"sharp focus",blurry\n',
        "",
        "title,text\nA,b\n",
    ],
    ids=["no-header", "empty", "other-columns"],
)
def test_a_csv_without_the_header_is_refused(lib: PresetLibrary, text: str) -> None:
    with pytest.raises(PresetError, match="name,prompt,negative_prompt"):
        lib.import_styles_csv(text)
    assert _user_styles(lib) == []
    assert not lib.path.exists()


# -- bundles ----------------------------------------------------------------------------------


def _fill(lib: PresetLibrary) -> None:
    lib.save("style", Style("Aquarelle ✨", "aquarelle de {prompt}", "photo", "soft"))
    lib.save("style", Style("Photograph", "my own photo of {prompt}", "mine"))
    lib.save("negative", NegativePreset("Pas de texte", "text, watermark", "no lettering"))
    lib.save("settings", SavedSettings("猫の肖像 🐱", mode="img2img", settings=copy.deepcopy(TAB_SETTINGS)))


def test_a_bundle_reproduces_the_user_presets_in_a_fresh_folder(tmp_path: Path) -> None:
    source = PresetLibrary(tmp_path / "a")
    _fill(source)
    bundle = json.loads(json.dumps(source.export_bundle(), ensure_ascii=False))  # as downloaded and uploaded
    assert bundle["schema"] == SCHEMA and bundle["version"] == VERSION

    target = PresetLibrary(tmp_path / "b")
    assert target.import_bundle(bundle) == ImportReport(added=4)
    restarted = PresetLibrary(tmp_path / "b")
    assert _user_styles(restarted) == _user_styles(source)
    assert [n for n in restarted.negatives() if not n.builtin] == [n for n in source.negatives() if not n.builtin]
    assert restarted.saved() == source.saved()
    assert restarted.get("settings", "猫の肖像 🐱").settings == TAB_SETTINGS
    assert restarted.export_bundle() == source.export_bundle()


def test_importing_a_bundle_keeps_existing_entries_unless_asked(tmp_path: Path) -> None:
    source = PresetLibrary(tmp_path / "a")
    _fill(source)
    bundle = source.export_bundle()

    target = PresetLibrary(tmp_path / "b")
    target.save("style", Style("Aquarelle ✨", "MY aquarelle {prompt}"))
    target.save("settings", SavedSettings("Only here", settings={"steps": 5}))
    assert target.import_bundle(bundle) == ImportReport(added=3, skipped=1)
    assert target.get("style", "Aquarelle ✨").prompt == "MY aquarelle {prompt}"
    assert target.get("settings", "Only here").settings == {"steps": 5}
    assert target.get("negative", "Pas de texte").negative_prompt == "text, watermark"

    assert target.import_bundle(bundle) == ImportReport(skipped=4)
    assert target.import_bundle(bundle, overwrite=True) == ImportReport(replaced=4)
    assert target.get("style", "Aquarelle ✨").prompt == "aquarelle de {prompt}"
    assert target.get("settings", "Only here").settings == {"steps": 5}
    assert len(_user_styles(target)) == 2
    assert sorted(s.name for s in target.saved()) == sorted(["猫の肖像 🐱", "Only here"])


def test_an_older_bundle_without_some_sections_imports(lib: PresetLibrary) -> None:
    bundle = {"schema": SCHEMA, "version": 1, "styles": [{"name": "Old", "prompt": "{prompt}", "unknown": 1}]}
    assert lib.import_bundle(bundle) == ImportReport(added=1)
    assert lib.get("style", "Old") == Style("Old", "{prompt}")
