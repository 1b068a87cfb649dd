"""The PNG Info tab: the parameters inside any image (Atelier, A1111, Forge, SD.Next, ...), and
"send to" buttons that fill every field they know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from pipelines import infotext
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.outputs import UNREADABLE, read_metadata
from pipelines.standards import MIMES, watermark, xmp
from pipelines.standards.c2pa_sign import describe, read_manifest

from .presets_ui import PICTURES, fill_fields
from .reference_ui import kept_reference
from .widgets import GenerationWidgets, grid_size


def fields_from_image(path: str | None) -> dict[str, Any]:
    """Request fields stored in an image: Atelier's own JSON when present (lossless), else the
    A1111 infotext parsed. Empty when the image carries neither."""
    return _read_fields(path)[0]


def _read_fields(path: str | None) -> tuple[dict[str, Any], str]:
    """The image's request fields, and the parser's notes on what it could not read ("" if none)."""
    if not path:
        return {}, ""
    metadata = read_metadata(Path(path))  # Gradio hands over file paths as text
    ours = metadata.get("atelier")
    if isinstance(ours, dict) and ours:  # any JSON may sit in the chunk; only an object holds fields
        return dict(ours), ""
    text = metadata.get("parameters", "")
    if not text:
        return {}, ""
    parsed = infotext.parse_infotext(text)
    return infotext.request_fields(parsed), str(parsed.get("notes", ""))


def parameters_text(path: str) -> str:
    """The image's parameters text as the tab shows it: the part the parser reads, and a line saying
    what was left out, so a huge chunk neither floods the browser nor looks complete when it is not."""
    metadata = read_metadata(Path(path))
    text = metadata.get("parameters")
    if isinstance(text, str) and text:
        if len(text) <= infotext.MAX_TEXT:
            return text
        return f"{text[: infotext.MAX_TEXT]}\n\n[{len(text) - infotext.MAX_TEXT:,} more characters not shown or read]"
    if "parameters" in metadata.get("unreadable", ()):
        return "This image's generation parameters are too long or damaged to read."
    return "No generation parameters found in this image."


def text_chunks(path: str) -> str:
    """Every text chunk of the file, for images from tools that do not write A1111's format."""
    try:
        with Image.open(path) as image:
            chunks = {k: v for k, v in (getattr(image, "text", {}) or {}).items() if k != "atelier"}
    except UNREADABLE as exc:
        return f"Not a readable image: {exc}"
    return json.dumps(chunks, indent=2, ensure_ascii=False)[:20_000] if chunks else ""


def provenance_text(path: Path) -> str:
    """What the file says of its making: the XMP AI-source mark and a C2PA manifest, if any."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"Cannot read the file: {exc}"
    lines = ["- **AI-source mark (XMP):** " + ("made by a trained algorithm (IPTC trainedAlgorithmicMedia)"
                                               if xmp.is_ai_marked(data) else "none")]  # fmt: skip
    mime = MIMES.get(_kind(data), "")
    summary = read_manifest(data, mime) if mime else None
    if summary is not None:
        lines += ["- **C2PA manifest:**", *(f"    - {line}" for line in describe(summary))]
    else:
        lines.append("- **C2PA manifest:** none")
    return "\n".join(lines)


def _kind(data: bytes) -> str:
    try:
        return xmp.kind(data)
    except ValueError:
        return ""


def watermark_text(path: str | None, message: str) -> str:
    """Whether the picture carries the invisible watermark with ``message``."""
    if not path:
        raise gr.Error("Drop an image first.")
    try:
        wanted = watermark.Watermark.parse(message or "")
        with Image.open(path) as picture:
            picture.load()
            if min(picture.size) < watermark.MIN_SIDE:
                size = f"{picture.width}x{picture.height}"
                return f"No watermark can be read: {size} is below the {watermark.MIN_SIDE} px it needs."
            found = watermark.matches(picture, wanted)
    except BadRequest as exc:
        raise gr.Error(str(exc)) from exc
    except UNREADABLE as exc:
        raise gr.Error(f"Not a readable image: {exc}") from exc
    if found:
        return f"✔ The watermark {wanted.label} is in this picture."
    return f"✘ The watermark {wanted.label} is not in this picture (or it was resized, cropped or re-compressed)."


def build_png_info_tab(engine: Engine, tabs: gr.Tabs, targets: list[GenerationWidgets]) -> None:
    with gr.Row(equal_height=False):
        image = gr.Image(label="Drop an image", type="filepath", sources=["upload", "clipboard"], height=360)
        with gr.Column():
            parameters = gr.Textbox(
                label="Parameters", lines=8, interactive=False, buttons=["copy"], elem_id="pnginfo-parameters"
            )
            with gr.Row():
                buttons = {w.mode: gr.Button(f"Send to {_label(w.mode)}", size="sm") for w in targets}
                as_reference = gr.Button("Use as reference", size="sm", elem_id="pnginfo-send-reference")
            provenance = gr.Markdown("", elem_id="pnginfo-provenance")
            with gr.Row(equal_height=True):
                message = gr.Textbox(label="Watermark message to look for (12 hex digits or 6 letters)", scale=3,
                                     elem_id="pnginfo-watermark-message")  # fmt: skip
                check = gr.Button("Check watermark", size="sm", scale=1, elem_id="pnginfo-check-watermark")
            watermark_note = gr.Markdown("", elem_id="pnginfo-watermark")
            with gr.Accordion("All text stored in the file", open=False):
                chunks = gr.Code(language="json", interactive=False)

    def read(path: str | None) -> tuple[str, str, str, str]:
        if not path:
            return "", "", "", ""
        return parameters_text(path), text_chunks(path), provenance_text(Path(path)), ""

    image.change(read, image, [parameters, chunks, provenance, watermark_note])
    check.click(watermark_text, [image, message], watermark_note)
    for widgets in targets:
        wire_send(engine, image, buttons[widgets.mode], widgets, tabs)
    first = targets[0]

    def use_as_reference(path: str | None) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("Drop an image first.")
        return path, gr.Accordion(open=True), gr.Tabs(selected=first.mode)

    as_reference.click(use_as_reference, image, [first.fields["reference_image"], first.reference, tabs])


def wire_send(engine: Engine, image: gr.Image, button: gr.Button, target: GenerationWidgets, tabs: gr.Tabs) -> None:
    """Fill the target tab's fields from the image's parameters (and its picture, for picture tabs)."""
    fields = {name: widget for name, widget in target.fields.items() if name not in PICTURES}
    outputs = [*fields.values(), target.fields["reference_image"]]
    with_picture = "init_image" in target.fields
    if with_picture:
        outputs.append(target.fields["init_image"])

    def send(path: str | None) -> list[Any]:
        if not path:
            raise gr.Error("Drop an image first.")
        values, notes = _read_fields(path)
        if notes:
            gr.Warning(notes)
        if not values and not with_picture:
            raise gr.Error("This image carries no generation parameters.")
        if with_picture:
            with Image.open(path) as picture:
                values["width"], values["height"] = grid_size(picture.size)
        filled = [*fill_fields(fields, values), kept_reference(engine, values)]
        return [*filled, *([path] if with_picture else []), gr.Tabs(selected=target.mode)]

    button.click(send, image, [*outputs, tabs])


def _label(mode: str) -> str:
    return {"txt2img": "Text to Image", "img2img": "Image to Image", "inpaint": "Inpaint"}[mode]
