"""The Presets tab: browse and search every preset, edit, rename, duplicate, delete, import, export."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from presets.store import NegativePreset, Preset, PresetError, PresetLibrary, SavedSettings, Style

KIND_LABELS = {"style": "Style", "negative": "Negative preset", "settings": "Saved settings"}


@dataclass
class PresetsTab:
    table: gr.Dataframe
    changed: list[Any]  # events after which every preset picker on the page should refresh


def rows(library: PresetLibrary, query: str = "") -> list[list[str]]:
    wanted = (query or "").strip().lower()
    found = []
    for kind in ("style", "negative", "settings"):
        for item in library.items(kind):
            text = _text(item)
            if wanted and wanted not in f"{item.name} {text}".lower():
                continue
            found.append([item.name, KIND_LABELS[kind], "built in" if item.builtin else "yours", text[:120]])
    return found


def _text(item: Preset) -> str:
    if isinstance(item, Style):
        return f"{item.prompt} | {item.negative_prompt}"
    if isinstance(item, NegativePreset):
        return item.negative_prompt
    return str(item.settings.get("prompt", ""))


def build_presets_tab(library: PresetLibrary) -> PresetsTab:
    if library.problem:
        gr.Markdown(f"⚠️ {library.problem}")
    with gr.Row():
        query = gr.Textbox(label="Search presets", placeholder="name or words", scale=4)
        refresh = gr.Button("Refresh", scale=1)
    table = gr.Dataframe(rows(library), headers=["name", "kind", "source", "text"], interactive=False, wrap=True)
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### Edit or create")
            kind = gr.Radio(["style", "negative"], value="style", label="Kind")
            name = gr.Textbox(label="Name", elem_id="preset-editor-name")
            prompt = gr.Textbox(label="Style prompt (use {prompt} for the user's words)", lines=2)
            negative = gr.Textbox(label="Negative prompt", lines=2)
            description = gr.Textbox(label="Description")
            settings_view = gr.Code(label="Saved settings", language="json", interactive=False, visible=False)
            with gr.Row():
                save = gr.Button("Save", variant="primary")
                delete = gr.Button("Delete", variant="stop")
            with gr.Row():
                new_name = gr.Textbox(label="New name", scale=3)
                rename = gr.Button("Rename", scale=1)
                duplicate = gr.Button("Duplicate", scale=1)
        with gr.Column():
            gr.Markdown("### Import and export")
            upload = gr.File(label="Atelier presets (.json) or A1111 styles.csv", file_types=[".json", ".csv"])
            replace = gr.Checkbox(False, label="Replace presets that have the same name")
            import_button = gr.Button("Import")
            report = gr.Markdown("")
            with gr.Row():
                export_json = gr.Button("Export my presets (.json)")
                export_csv = gr.Button("Export styles.csv")
            download = gr.File(label="Download", interactive=False)
    editor = [kind, name, prompt, negative, description, settings_view]
    listing = (lambda q: rows(library, q), query, table)
    query.submit(*listing)
    refresh.click(*listing)

    def select(evt: gr.SelectData, shown: Any) -> list[Any]:
        row = shown.values.tolist()[evt.index[0]] if hasattr(shown, "values") else shown[evt.index[0]]
        kind_key = {label: key for key, label in KIND_LABELS.items()}[row[1]]
        item = library.get(kind_key, row[0])
        if isinstance(item, SavedSettings):
            code = json.dumps(item.settings, indent=2, ensure_ascii=False)
            return [gr.Radio(value="style"), item.name, "", "", "", gr.Code(value=code, visible=True)]
        text = item.prompt if isinstance(item, Style) else ""
        return [kind_key, item.name, text, item.negative_prompt, item.description, gr.Code(visible=False)]

    table.select(select, table, editor)
    changed = _wire_editing(library, query, table, editor, new_name, [save, delete, rename, duplicate])
    changed.append(_wire_exchange(library, query, table, upload, replace, import_button, report))
    export_json.click(
        lambda: _export(json.dumps(library.export_bundle(), indent=2, ensure_ascii=False), ".json"), None, download
    )
    export_csv.click(lambda: _export(library.export_styles_csv(), ".csv", "styles"), None, download)
    return PresetsTab(table, changed)


def _wire_editing(
    library: PresetLibrary,
    query: gr.Textbox,
    table: gr.Dataframe,
    editor: list[Any],
    new_name: gr.Textbox,
    buttons: list[Any],
) -> list[Any]:
    kind, name, prompt, negative, description, _ = editor
    save, delete, rename, duplicate = buttons

    def guarded(action: Any) -> Any:
        def run(*values: Any) -> list[list[str]]:
            try:
                message = action(*values)
            except PresetError as exc:
                raise gr.Error(str(exc)) from exc
            gr.Info(message)
            return rows(library, values[-1])

        return run

    def save_item(kind_key: str, item_name: str, text: str, negative_text: str, about: str, _: str) -> str:
        item = (
            Style(item_name, text, negative_text, about)
            if kind_key == "style"
            else NegativePreset(item_name, negative_text, about)
        )
        library.save(kind_key, item, overwrite=True)
        return f"Saved {kind_key} “{item.name}”."

    def kind_of(item_name: str) -> str:
        user = [
            k
            for k in ("settings", "style", "negative")
            if any(i.name == item_name and not i.builtin for i in library.items(k))
        ]
        if not user:
            raise PresetError(
                f"“{item_name}” is not one of your presets (built-in ones can be duplicated, then edited)"
            )
        return user[0]

    def delete_item(item_name: str, _: str) -> str:
        library.delete(kind_of(item_name), item_name)
        return f"Deleted “{item_name}”."

    def rename_item(item_name: str, target: str, _: str) -> str:
        library.rename(kind_of(item_name), item_name, target)
        return f"Renamed “{item_name}” to “{target.strip()}”."

    def duplicate_item(item_name: str, target: str, _: str) -> str:
        kinds = [k for k in ("settings", "style", "negative") if any(i.name == item_name for i in library.items(k))]
        if not kinds:
            raise PresetError(f"no preset called “{item_name}”")
        library.duplicate(kinds[0], item_name, target)
        return f"Copied “{item_name}” to “{target.strip()}”."

    return [
        save.click(guarded(save_item), [kind, name, prompt, negative, description, query], table),
        delete.click(guarded(delete_item), [name, query], table),
        rename.click(guarded(rename_item), [name, new_name, query], table),
        duplicate.click(guarded(duplicate_item), [name, new_name, query], table),
    ]


def _wire_exchange(
    library: PresetLibrary, query: gr.Textbox, table: gr.Dataframe, upload: gr.File, replace: gr.Checkbox,
    button: gr.Button, report: gr.Markdown,
) -> Any:  # fmt: skip
    def do_import(path: str | None, overwrite: bool, search: str) -> tuple[str, list[list[str]]]:
        if not path:
            raise gr.Error("Choose a .json or styles.csv file first.")
        try:  # a file that is not UTF-8 text is a ValueError too, reported like any other bad file
            text = Path(path).read_text(encoding="utf-8-sig")
            if path.lower().endswith(".csv"):
                outcome = library.import_styles_csv(text, overwrite)
            else:
                outcome = library.import_bundle(json.loads(text), overwrite)
        except (PresetError, ValueError) as exc:
            raise gr.Error(f"Could not import {Path(path).name}: {exc}") from exc
        if outcome.refused:
            gr.Warning(f"{len(outcome.refused)} preset(s) in {Path(path).name} were refused; the list is below.")
        return f"Imported {Path(path).name}: {outcome.summary()}.", rows(library, search)

    return button.click(do_import, [upload, replace, query], [report, table])


def _export(text: str, suffix: str, stem: str = "atelier-presets") -> str:
    """A fresh file in a temp folder for the browser to download (nothing in the user's folders)."""
    folder = Path(tempfile.mkdtemp(prefix="atelier-export-"))
    path = folder / f"{stem}{suffix}"
    path.write_text(text, encoding="utf-8")
    return str(path)
