"""The Settings tab: memory budgets, what is loaded, saving format, theme; saved in the data folder."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import gradio as gr

from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.files import replace_file
from pipelines.outputs import FORMATS
from pipelines.standards.safety import missing_help

from .state import MAX_MODELS_RANGE, RAM_BUDGET_GB_RANGE, THEMES, SettingError, SettingsStore, UiSettings

log = logging.getLogger(__name__)

THEME_JS = "(theme) => { document.body.classList.toggle('dark', theme === 'dark'); return theme; }"


def apply_settings(engine: Engine, settings: UiSettings) -> None:
    """Settings that take effect at once: the next model load or save sees them."""
    # EngineSettings checks the new values as a whole before the live settings change at all
    checked = dataclasses.replace(
        engine.settings, max_models=settings.max_models, ram_budget_bytes=int(settings.ram_budget_gb * 1024**3)
    )
    engine.settings.max_models = checked.max_models
    engine.settings.ram_budget_bytes = checked.ram_budget_bytes
    engine.outputs.image_format = settings.image_format


def save_settings(engine: Engine, store: SettingsStore, values: dict[str, Any]) -> str:
    """Check every value, then write, then apply: a refused value leaves the file and the engine as they were."""
    try:
        settings = UiSettings(**values)
    except SettingError as exc:
        raise gr.Error(f"Settings not saved: {exc}") from exc
    try:
        store.save(settings)
    except OSError as exc:
        raise gr.Error(f"Settings not saved: cannot write {store.path}: {exc}") from exc
    apply_settings(engine, settings)
    return f"Saved to `{store.path}` and applied: {dataclasses.asdict(settings)}"


def problem_note(store: SettingsStore) -> str:
    """What went wrong reading the settings file, for the top of the tab; empty when nothing did."""
    return f"⚠️ {store.problem}" if store.problem else ""


def loaded_table(engine: Engine) -> list[list[Any]]:
    rows = []
    for name, stats in engine.manager.stats.items():
        rows.append(
            [
                name,
                stats.location,
                round(stats.bytes_held / 1e9, 3),
                stats.hits,
                stats.misses,
                round(stats.load_seconds, 2),
            ]
        )
    return rows


def build_settings_tab(engine: Engine, store: SettingsStore, saved: UiSettings) -> tuple[gr.Radio, gr.Dataframe]:
    """``saved``: the settings the page starts with (the engine already runs with them). Returns the
    theme control (applied when the page loads) and the cache table (refreshed on view)."""
    status = engine.status()
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### Memory")
            max_models = gr.Slider(*MAX_MODELS_RANGE, value=saved.max_models, step=1, label="Models kept loaded")
            ram = gr.Number(
                saved.ram_budget_gb,
                label="RAM budget for models, GB (0: half of this machine's memory)",
                minimum=RAM_BUDGET_GB_RANGE[0],
                maximum=RAM_BUDGET_GB_RANGE[1],
            )
            gr.Markdown("### Saving")
            image_format = gr.Radio(list(FORMATS), value=saved.image_format, label="Image format for new images")
            theme = gr.Radio(list(THEMES), value=saved.theme, label="Theme")
            save = gr.Button("Save settings", variant="primary")
            saved_note = gr.Markdown(lambda: problem_note(store))  # run again at every page load
        with gr.Column():
            gr.Markdown("### Loaded now")
            table = gr.Dataframe(
                loaded_table(engine),
                headers=["model", "where", "GB", "hits", "misses", "load s"],
                interactive=False,
                label="Model cache",
            )
            with gr.Row():
                refresh = gr.Button("Refresh", size="sm")
                unload = gr.Button("Unload all models", size="sm", variant="stop")
            gr.Markdown(
                f"### Device\n{status['device']} · {status['dtype']} · attention {status['attention']} · "
                f"offload {status['offload']}\n\n### Folders\nmodels `{engine.settings.models_dir}` · outputs "
                f"`{engine.settings.outputs_dir}` · settings `{store.path}`\n\nDevice, precision and folders are "
                "set with launch flags (`python launch.py --help`)."
            )

    def save_settings_clicked(models: object, ram_gb: object, fmt: object, chosen_theme: object) -> str:
        # an emptied number box means its default, 0; anything else goes to the checks as sent
        values = {"max_models": models, "ram_budget_gb": 0.0 if ram_gb is None else ram_gb}
        return save_settings(engine, store, values | {"image_format": fmt, "theme": chosen_theme})

    save.click(save_settings_clicked, [max_models, ram, image_format, theme], saved_note)
    build_standards_section(engine, store)
    theme.change(None, theme, None, js=THEME_JS)
    refresh.click(lambda: loaded_table(engine), None, table)
    unload.click(lambda: (engine.manager.unload(), loaded_table(engine))[1], None, table)
    return theme, table


BLOCKED_TERMS_FILE = "blocked-terms.txt"  # in the data folder, beside settings.json


def load_page_terms(engine: Engine, store: SettingsStore) -> tuple[str, str]:
    """The terms kept in Settings, put in force at start: (the file's text, for the box; what is wrong
    with it, or ""). A damaged file is shown to be mended and is not in force; it is never emptied."""
    path = store.path.parent / BLOCKED_TERMS_FILE
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        log.error("blocked terms in %s not used: %s", path, exc)
        return "", f"⚠ `{path}` cannot be read ({exc.strerror or exc}): its terms are **not in force**."
    text = data.decode("utf-8", errors="replace")  # shown as it is, to be mended
    try:
        engine.standards.set_page_terms(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except BadRequest as exc:
        problem = str(exc)
    else:
        return text, ""
    log.error("blocked terms in %s not used: %s", path, problem)
    return text, f"⚠ The terms below are **not in force**: {problem}. Mend them and save."


def build_standards_section(engine: Engine, store: SettingsStore) -> None:
    """Content standards: what this server marks and checks, the owner's blocked terms, the safety check."""
    standards = engine.standards
    path = store.path.parent / BLOCKED_TERMS_FILE
    with gr.Accordion("Content standards", open=False, elem_id="settings-standards"):
        gr.Markdown("\n".join(f"- {line}" for line in standards.describe()) + "\n\nSet with launch flags "
                    "(`--no-ai-mark`, `--c2pa-cert`/`--c2pa-key`, `--watermark`, `--safety-check`).")  # fmt: skip
        if standards.checker is None:
            gr.Markdown(missing_help(engine.settings.models_dir), elem_id="settings-safety-help")
        file_note = f" Terms from `--blocked-terms`: {len(standards.file_terms)}." if standards.file_terms else ""
        kept_terms, problem = load_page_terms(engine, store)
        terms = gr.Textbox(
            kept_terms, lines=6, label="Blocked terms (one term or phrase a line; gore* = gore...)",
            info=f"Prompts containing one are refused, at every door; the negative prompt is not checked.{file_note}",
            elem_id="settings-blocked-terms",
        )  # fmt: skip
        save_terms = gr.Button("Save blocked terms", size="sm")
        note = gr.Markdown(problem, elem_id="settings-blocked-terms-note")

    saving = threading.Lock()  # two owners' saves at once must leave in force the list that is on disk

    def save(text: str) -> str:
        try:
            with saving:
                in_force = standards.set_page_terms(text or "")
                replace_file(path, standards.page_terms.text.encode("utf-8"))
        except BadRequest as exc:
            raise gr.Error(f"Blocked terms not saved: {exc}") from exc
        except OSError as exc:
            raise gr.Error(f"Blocked terms in force but not saved: cannot write {path}: {exc}") from exc
        return f"Saved to `{path}`: {len(in_force)} blocked terms in force."

    save_terms.click(save, terms, note)
