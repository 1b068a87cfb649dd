"""The settings file and the Settings tab's Save: nothing invalid is written or applied, and no
settings file, however damaged, stops the app from starting."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from pipelines.engine import Engine
from pipelines.settings import EngineSettings
from presets.store import PresetLibrary
from webui.app import Studio, build_studio
from webui.state import SettingError, SettingsStore, UiSettings

GOOD: dict[str, Any] = {"max_models": 2, "ram_budget_gb": 1.5, "image_format": "webp", "theme": "dark"}


def _studio(root: Path) -> Studio:
    """The whole page on its own folders, built the way ``launch.py`` builds it at every start."""
    engine = Engine(EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs"))
    return build_studio(engine, SettingsStore(root / "data"), PresetLibrary(root / "data"))


def _save(studio: Studio, *values: Any) -> Any:
    """Press Save the way a raw ``/queue/join`` request does: Gradio's own preprocessing, then the handler."""
    (save,) = [fn for fn in studio.app.fns.values() if _is_click_on(studio, fn.targets, "Save settings")]
    return asyncio.run(studio.app.process_api(block_fn=save, inputs=list(values), state=SessionState(studio.app)))


def _is_click_on(studio: Studio, targets: list[tuple[int | None, str]], label: str) -> bool:
    buttons = [studio.app.blocks.get(block) for block, event in targets if event == "click" and block is not None]
    return any(isinstance(button, gr.Button) and button.value == label for button in buttons)


def _shown_on_page(studio: Studio) -> str:
    return "\n".join(str(b.value) for b in studio.app.blocks.values() if isinstance(b, gr.Markdown))


def _aside(data: Path) -> list[Path]:
    return sorted(data.glob("settings.damaged-*.json"))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ((3, math.nan, "png", "light"), "nan"),
        ((3, math.inf, "png", "light"), "inf"),
        ((3, 1e308, "png", "light"), "1e+308"),
        ((3, -1, "png", "light"), "-1"),
        ((9, 1, "png", "light"), "9"),
        ((2.5, 1, "png", "light"), "2.5"),
    ],
)
def test_a_bad_value_on_the_page_is_refused_before_anything_is_written_or_applied(
    tmp_path: Path, values: tuple[Any, ...], named: str
) -> None:
    studio = _studio(tmp_path)
    _save(studio, *GOOD.values())
    settings_file = tmp_path / "data" / "settings.json"
    before = settings_file.read_bytes()

    with pytest.raises(gr.Error) as refused:
        _save(studio, *values)
    assert named in str(refused.value)  # Gradio's bounds or the settings' own checks, naming the value either way
    assert settings_file.read_bytes() == before
    assert studio.engine.settings.max_models == 2
    assert studio.engine.settings.ram_budget_bytes == int(1.5 * 1024**3)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"max_models": 2, "ram_budget_gb": NaN, "image_format": "webp", "theme": "dark"}', "nan"),
        ('{"max_models": 2, "ram_budget_gb": Infinity, "image_format": "webp", "theme": "dark"}', "inf"),
        ('{"max_models": 2, "ram_budget_gb": 1e308, "image_format": "webp", "theme": "dark"}', "1e+308"),
        ('{"max_models": 2, "ram_budget_gb": ' + "9" * 400 + ', "image_format": "webp", "theme": "dark"}', "999"),
        ('{"max_models": 2, "ram_budget_gb": "lots", "image_format": "webp", "theme": "dark"}', "'lots'"),
        ('{"max_models": 2, "ram_budget_gb": [1], "image_format": "webp", "theme": "dark"}', "[1]"),
    ],
    ids=["nan", "infinity", "1e308", "400-digits", "a-string", "a-list"],
)
def test_a_bad_value_in_the_file_never_stops_the_app_from_starting(tmp_path: Path, text: str, named: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "settings.json").write_text(text)

    studio = _studio(tmp_path)  # what every start does; this raised before

    engine = studio.engine
    assert engine.settings.ram_budget_bytes == 0, "the bad value's default is used"
    assert engine.settings.max_models == 2 and engine.outputs.image_format == "webp", "the good values are kept"
    assert [p.read_text() for p in _aside(data)] == [text], "the original file was not kept aside"
    assert named in _shown_on_page(studio) and "from 0 to" in _shown_on_page(studio)
    repaired = SettingsStore(data)
    assert repaired.load() == UiSettings(max_models=2, image_format="webp", theme="dark")
    assert repaired.problem == ""
    _studio(tmp_path)  # the next start is clean too
    assert len(_aside(data)) == 1


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"[" * 100_000, b"\xff\xfe\x00", b'{"theme": "' + b"x" * 2_000_000 + b'"}'],
    ids=["not-json", "not-an-object", "nested-too-deep", "not-utf8", "huge"],
)
def test_a_damaged_file_is_reported_kept_aside_and_defaults_used(tmp_path: Path, content: bytes) -> None:
    store = SettingsStore(tmp_path)
    store.path.write_bytes(content)
    assert store.load() == UiSettings()
    assert [p.read_bytes() for p in _aside(tmp_path)] == [content]
    assert "settings.damaged-" in store.problem
    store.save(UiSettings(**GOOD))  # a save writes a good file and the report is over
    assert store.problem == "" and SettingsStore(tmp_path).load() == UiSettings(**GOOD)


def test_a_damaged_file_that_cannot_be_moved_still_lets_the_app_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SettingsStore(tmp_path)
    store.path.write_text('{"ram_budget_gb": NaN}')

    def refuse(*args: Any) -> None:
        raise PermissionError("read-only folder")

    monkeypatch.setattr("webui.state.os.replace", refuse)  # tests run as root here, which chmod cannot stop
    assert store.load() == UiSettings()
    assert "read-only folder" in store.problem
    assert store.path.read_text() == '{"ram_budget_gb": NaN}'


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_models", 0, "max_models must be a whole number from 1 to 8, got 0"),
        ("max_models", True, "max_models must be a whole number from 1 to 8, got True"),
        ("max_models", "3", "max_models must be a whole number from 1 to 8, got '3'"),
        ("max_models", math.nan, "max_models must be a whole number from 1 to 8, got nan"),
        ("ram_budget_gb", -0.5, "ram_budget_gb must be a number from 0 to 16384 (GB), got -0.5"),
        ("ram_budget_gb", -math.inf, "ram_budget_gb must be a number from 0 to 16384 (GB), got -inf"),
        ("ram_budget_gb", None, "ram_budget_gb must be a number from 0 to 16384 (GB), got None"),
        ("image_format", "gif", "image_format must be one of png, jpeg, webp, got 'gif'"),
        ("theme", "blue", "theme must be one of light, dark, got 'blue'"),
    ],
)
def test_every_setting_is_checked_with_a_message_naming_the_value_and_what_is_allowed(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(SettingError) as refused:
        UiSettings(**{field: value})
    assert str(refused.value) == message


def test_good_values_are_kept_in_their_stored_type() -> None:
    from_page: dict[str, Any] = {"max_models": 4.0, "ram_budget_gb": 2, "image_format": "jpeg", "theme": "dark"}
    settings = UiSettings(**from_page)  # a slider gives 4.0, a number box may give 2
    assert settings == UiSettings(4, 2.0, "jpeg", "dark")
    assert isinstance(settings.max_models, int) and isinstance(settings.ram_budget_gb, float)
    assert json.loads(json.dumps(asdict(settings))) == {"max_models": 4, "ram_budget_gb": 2.0,
                                                        "image_format": "jpeg", "theme": "dark"}  # fmt: skip


@pytest.mark.parametrize("budget", [math.nan, -1, 1.5, 2**64], ids=["nan", "negative", "fraction", "2**64"])
def test_engine_settings_refuse_a_budget_that_is_not_a_byte_count(budget: Any) -> None:
    with pytest.raises(ValueError, match="ram_budget_bytes"):
        EngineSettings(ram_budget_bytes=budget)


def test_the_page_reports_a_settings_file_it_cannot_move_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, engine: Engine
) -> None:
    store = SettingsStore(tmp_path)
    store.path.write_text('{"ram_budget_gb": NaN}')

    real_replace = os.replace

    def refuse(source: Any, target: Any) -> None:
        # Only in the settings folder: os is one module, and Gradio moves the page's icons into its
        # cache with os.replace while the page is built (the first build in a process does).
        if Path(source).parent == tmp_path:
            raise PermissionError("read-only folder")
        real_replace(source, target)

    monkeypatch.setattr("webui.state.os.replace", refuse)
    with caplog.at_level(logging.ERROR, logger="webui.state"):
        build_studio(engine, store, PresetLibrary(tmp_path))
    reports = [record for record in caplog.records if "settings file" in record.getMessage()]
    assert len(reports) == 1, [record.getMessage() for record in reports]
