"""Presets on every generation tab: styles and negative presets with a preview of the final prompt,
explicit undoable apply, and saved settings (load, save with an overwrite question)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.blocks import Block

from presets.store import PresetError, PresetExists, PresetLibrary, SavedSettings

# Fields that hold pictures: never saved in presets, never filled from a picture's parameters text.
PICTURES = ("init_image", "mask", "reference_image")

STACKING_NOTE = (
    "Each preset adds words to the negative prompt. Stacking many narrows what the model will draw, "
    "and every word costs tokens (see the counter)."
)


@dataclass
class PresetControls:
    styles: gr.Dropdown
    negatives: gr.Dropdown
    preview: gr.Markdown
    apply: gr.Button
    undo: gr.Button
    undo_state: gr.State  # (prompt, negative) before the last apply
    saved: gr.Dropdown
    load: gr.Button
    name: gr.Textbox
    save: gr.Button
    confirm: gr.Row
    confirm_text: gr.Markdown
    overwrite: gr.Button
    cancel: gr.Button


def style_names(library: PresetLibrary) -> list[str]:
    return [style.name for style in library.styles()]


def negative_names(library: PresetLibrary) -> list[str]:
    return [preset.name for preset in library.negatives()]


def saved_names(library: PresetLibrary) -> list[str]:
    return [saved.name for saved in library.saved()]


def build_preset_controls(library: PresetLibrary, mode: str) -> PresetControls:
    with gr.Accordion("Styles and negative presets", open=False, elem_id=f"{mode}-presets"):
        with gr.Row():
            styles = gr.Dropdown(
                style_names(library), value=[], multiselect=True, label="Styles", elem_id=f"{mode}-styles"
            )
            negatives = gr.Dropdown(
                negative_names(library), value=[], multiselect=True, label="Negative presets", info=STACKING_NOTE,
                elem_id=f"{mode}-negatives",
            )  # fmt: skip
        preview = gr.Markdown("", elem_classes=["preset-preview"], elem_id=f"{mode}-final-prompt")
        with gr.Row():
            apply = gr.Button("Apply to prompt boxes", size="sm")
            undo = gr.Button("Undo apply", size="sm")
    with gr.Accordion("Saved settings", open=False, elem_id=f"{mode}-saved-settings"):
        with gr.Row(equal_height=True):
            saved = gr.Dropdown(
                saved_names(library), value=None, label="Saved settings", scale=3, elem_id=f"{mode}-saved"
            )
            load = gr.Button("Load", scale=1, elem_id=f"{mode}-load-preset")
        with gr.Row(equal_height=True):
            name = gr.Textbox(
                label="Save current settings as",
                placeholder="my portrait setup",
                scale=3,
                elem_id=f"{mode}-preset-name",
            )
            save = gr.Button("Save", scale=1, variant="primary", elem_id=f"{mode}-save-preset")
        with gr.Row(visible=False) as confirm:
            confirm_text = gr.Markdown("")
            overwrite = gr.Button("Overwrite", variant="stop", size="sm", elem_id=f"{mode}-overwrite-preset")
            cancel = gr.Button("Keep the old one", size="sm")
    return PresetControls(
        styles,
        negatives,
        preview,
        apply,
        undo,
        gr.State(None),
        saved,
        load,
        name,
        save,
        confirm,
        confirm_text,
        overwrite,
        cancel,
    )


def final_prompt_text(
    library: PresetLibrary,
    count: Callable[[str], tuple[int, int]],
    prompt: str,
    negative: str,
    styles: list[str],
    negatives: list[str],
) -> str:
    """The prompt and negative the chosen presets produce, with what they cost in tokens."""
    if not styles and not negatives:
        return ""
    try:
        final, final_negative = library.compose(prompt or "", negative or "", styles or [], negatives or [])
    except PresetError as exc:
        return f"⚠️ {exc}"
    return (
        f"**Generate will use** ({_tokens(count(final))}): {final or '(empty)'}  \n"
        f"**Negative** ({_tokens(count(final_negative))}): {final_negative or '(empty)'}"
    )


def wire_style_controls(
    library: PresetLibrary,
    count: Callable[[str], tuple[int, int]],
    controls: PresetControls,
    boxes: tuple[gr.Textbox, gr.Textbox],
    counters: tuple[gr.Markdown, gr.Markdown],
    counter_text: Callable[[str], str],
) -> None:
    """The final-prompt preview and the boxes' token counters, in one request per change: each key
    press sends it, and on a small CPU every request takes time from a live frame."""
    prompt, negative = boxes
    inputs = [prompt, negative, controls.styles, controls.negatives]

    def preview(text: str, negative_text: str, styles: list[str], negatives: list[str]) -> tuple[str, str, str]:
        final = final_prompt_text(library, count, text, negative_text, styles, negatives)
        return final, counter_text(text or ""), counter_text(negative_text or "")

    outputs = [controls.preview, *counters]
    for trigger in (prompt.change, negative.change, controls.styles.change, controls.negatives.change):
        trigger(preview, inputs, outputs, queue=False, show_progress="hidden", trigger_mode="always_last")

    def apply(text: str, negative_text: str, styles: list[str], negatives: list[str]) -> tuple[Any, ...]:
        if not styles and not negatives:
            raise gr.Error("Pick a style or a negative preset first.")
        final, final_negative = library.compose(text or "", negative_text or "", styles, negatives)
        return final, final_negative, [], [], (text, negative_text)

    controls.apply.click(apply, inputs, [prompt, negative, controls.styles, controls.negatives, controls.undo_state])

    def undo(previous: tuple[str, str] | None) -> tuple[Any, ...]:
        if not previous:
            raise gr.Error("Nothing to undo.")
        return previous[0], previous[1], None

    controls.undo.click(undo, controls.undo_state, [prompt, negative, controls.undo_state])


def settings_of(fields: dict[str, Any], styles: list[str], negatives: list[str], model: str) -> dict[str, Any]:
    """What a saved preset keeps: every request field except pictures, plus model and presets."""
    kept = {name: value for name, value in fields.items() if name not in PICTURES}
    return kept | {"model": model, "styles": list(styles or []), "negatives": list(negatives or [])}


def save_settings(library: PresetLibrary, name: str, mode: str, settings: dict[str, Any], overwrite: bool) -> str:
    """Save; ``PresetExists`` propagates so the page can ask before overwriting."""
    library.save("settings", SavedSettings(name=name, mode=mode, settings=settings), overwrite=overwrite)
    return name.strip()


def fill_fields(widgets: dict[str, gr.components.Component], fields: dict[str, Any]) -> list[Any]:
    """New values for ``widgets`` from saved fields, by name; fields the source lacks stay as they are."""
    values = []
    for name in widgets:
        value = fields.get(name, gr.skip())
        if name == "only_masked" and isinstance(value, bool):
            value = "Only masked" if value else "Whole picture"
        values.append(value)
    return values


def wire_saved_settings(
    library: PresetLibrary,
    mode: str,
    controls: PresetControls,
    fields: dict[str, gr.components.Component],
    model_picker: gr.Dropdown,
    saved_pickers: list[gr.Dropdown],
) -> None:
    """Load restores every field by name; Save asks before replacing a preset of the same name."""
    restorable = {name: widget for name, widget in fields.items() if name not in PICTURES}
    restorable |= {"model": model_picker, "styles": controls.styles, "negatives": controls.negatives}

    def load(name: str | None) -> list[Any]:
        if not name:
            raise gr.Error("Pick a saved preset to load.")
        try:
            preset = library.get("settings", name)
        except PresetError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Loaded “{name}”.")
        return fill_fields(restorable, preset.settings)

    controls.load.click(load, controls.saved, list(restorable.values()))
    # a set of inputs hands ``save`` one dict of every value; typed as Gradio's parameter (a set of Blocks)
    inputs: set[Block] = {controls.name, model_picker, controls.styles, controls.negatives, *fields.values()}

    def save(data: dict[Any, Any], overwrite: bool) -> list[Any]:
        values = {name: data[widget] for name, widget in fields.items()}
        settings = settings_of(values, data[controls.styles], data[controls.negatives], data[model_picker] or "")
        try:
            name = save_settings(library, data[controls.name] or "", mode, settings, overwrite)
        except PresetExists:
            question = f"A preset called **{data[controls.name].strip()}** exists. Replace it?"
            return [gr.Row(visible=True), question, *[gr.skip()] * len(saved_pickers)]
        except PresetError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Saved “{name}”.")
        names = saved_names(library)
        pickers = [
            gr.Dropdown(choices=names, value=name) if p is controls.saved else gr.Dropdown(choices=names)
            for p in saved_pickers
        ]
        return [gr.Row(visible=False), "", *pickers]

    outputs = [controls.confirm, controls.confirm_text, *saved_pickers]
    controls.save.click(lambda data: save(data, False), inputs, outputs)
    controls.overwrite.click(lambda data: save(data, True), inputs, outputs)
    controls.cancel.click(lambda: gr.Row(visible=False), None, controls.confirm)


def register_preset_api(library: PresetLibrary) -> None:
    """Named endpoints for scripts (``gradio_client``): list, save, apply and delete presets."""

    def list_presets() -> list[dict[str, Any]]:
        """Every preset: name, kind (style, negative, settings) and whether it is built in."""
        return library.entries()

    def save_preset(
        name: str, prompt: str = "", negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
        sampler_name: str = "DPM++ 2M", width: int = 512, height: int = 512, seed: int = -1, overwrite: bool = False,
    ) -> str:  # fmt: skip
        """Save text-to-image settings under ``name``; an existing name needs overwrite=True."""
        try:
            settings = {
                "prompt": prompt, "negative_prompt": negative_prompt, "steps": int(steps),
                "cfg_scale": float(cfg_scale), "sampler_name": sampler_name, "width": int(width),
                "height": int(height), "seed": int(seed),
            }  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise gr.Error(
                f"steps, width, height and seed must be whole numbers and cfg_scale a number (got steps={steps!r}, "
                f"cfg_scale={cfg_scale!r}, width={width!r}, height={height!r}, seed={seed!r})"
            ) from exc
        try:
            return save_settings(library, name, "txt2img", settings, overwrite)
        except PresetError as exc:
            raise gr.Error(str(exc)) from exc

    def apply_preset(name: str) -> dict[str, Any]:
        """All settings of a saved preset, or a style's / negative preset's texts."""
        name = _same_as_saved(name)
        for kind in ("settings", "style", "negative"):
            try:
                item = library.get(kind, name)
            except PresetError:
                continue
            return {"kind": kind, **(item.settings if isinstance(item, SavedSettings) else vars(item))}
        raise gr.Error(f"there is no preset called {name!r}")

    def delete_preset(name: str) -> str:
        """Delete a user preset (saved settings first, then styles and negative presets)."""
        name = _same_as_saved(name)
        for kind in ("settings", "style", "negative"):
            if any(item.name == name and not item.builtin for item in library.items(kind)):
                try:
                    library.delete(kind, name)
                except PresetError as exc:  # another tab or script deleted it a moment ago
                    raise gr.Error(str(exc)) from exc
                return name
        raise gr.Error(f"there is no user preset called {name!r} (built-in presets cannot be deleted)")

    for function in (list_presets, save_preset, apply_preset, delete_preset):
        gr.api(function, api_name=function.__name__)


def _same_as_saved(name: Any) -> Any:
    """A name as ``check_name`` stores it (NFC, trimmed), so scripts find presets by the name they saved."""
    return unicodedata.normalize("NFC", name).strip() if isinstance(name, str) else name


def _tokens(counted: tuple[int, int]) -> str:
    """A1111's counter: the tokens over the room of the 75-token chunks they fill."""
    tokens, chunks = counted
    return f"{tokens}/{75 * chunks} tokens"
