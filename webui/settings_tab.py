"""The Settings tab: memory budgets, what is loaded, saving format, theme; saved in the data folder."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import gradio as gr

from pipelines.engine import Engine
from pipelines.outputs import FORMATS

from .state import SettingsStore, UiSettings

THEME_JS = "(theme) => { document.body.classList.toggle('dark', theme === 'dark'); return theme; }"


def apply_settings(engine: Engine, settings: UiSettings) -> None:
    """Settings that take effect at once: the next model load or save sees them."""
    engine.settings.max_models = max(1, int(settings.max_models))
    engine.settings.ram_budget_bytes = int(settings.ram_budget_gb * 1024**3)
    engine.outputs.image_format = settings.image_format


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


def build_settings_tab(engine: Engine, store: SettingsStore) -> tuple[gr.Radio, gr.Dataframe]:
    """Returns the theme control (applied when the page loads) and the cache table (refreshed on view)."""
    saved = store.load()
    status = engine.status()
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### Memory")
            max_models = gr.Slider(1, 8, value=saved.max_models, step=1, label="Models kept loaded")
            ram = gr.Number(
                saved.ram_budget_gb, label="RAM budget for models, GB (0: half of this machine's memory)", minimum=0
            )
            gr.Markdown("### Saving")
            image_format = gr.Radio(list(FORMATS), value=saved.image_format, label="Image format for new images")
            theme = gr.Radio(["light", "dark"], value=saved.theme, label="Theme")
            save = gr.Button("Save settings", variant="primary")
            saved_note = gr.Markdown("")
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

    def save_settings(models: float, ram_gb: float | None, fmt: str, chosen_theme: str) -> str:
        settings = UiSettings(int(models), float(ram_gb or 0), fmt, chosen_theme)
        store.save(settings)
        apply_settings(engine, settings)
        return f"Saved to `{store.path}` and applied: {asdict(settings)}"

    save.click(save_settings, [max_models, ram, image_format, theme], saved_note)
    theme.change(None, theme, None, js=THEME_JS)
    refresh.click(lambda: loaded_table(engine), None, table)
    unload.click(lambda: (engine.manager.unload(), loaded_table(engine))[1], None, table)
    return theme, table
