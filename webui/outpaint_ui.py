"""Outpainting controls of the Inpaint tab: grow the editor's canvas, paint the mask over the new
area, and leave the redrawing to the tab's own Generate."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio import processing_utils
from PIL import Image

from pipelines.errors import BadRequest
from pipelines.outpaint import OVERLAP, SIDES, Extension, blur_reach, extend_canvas, plan_extension
from pipelines.requests import MAX_SEED, Limits

from .widgets import GenerationWidgets

log = logging.getLogger(__name__)

MASK_ALPHA = 150  # the painted area shows the fill through it; any alpha above 0 counts as mask
HELP = (
    "Grows the picture on the chosen sides and paints the mask over the new area (plus a thin band of the "
    "picture, so the seam blends). Check or touch up the mask, then **Generate**. A denoising strength of "
    "**0.8–1.0** suits outpainting; the fill is noise over stretched edge colours, so keep *Masked content* "
    "on *original*. Sides are rounded up to keep the canvas a multiple of 8 pixels."
)


@dataclass
class OutpaintControls:
    editor: gr.ImageEditor
    amounts: dict[str, gr.Slider]  # by side: left, right, up, down
    extend: gr.Button
    note: gr.Markdown


def build_outpaint_controls(editor: gr.ImageEditor) -> OutpaintControls:
    """Built in the Inpaint tab's left column, below the mask options; returns what ``wire_outpaint`` needs."""
    with gr.Accordion("Outpainting (extend the canvas)", open=False, elem_id="inpaint-outpaint"):
        gr.Markdown(HELP, elem_classes=["outpaint-help"])
        amounts: dict[str, gr.Slider] = {}
        for pair in (("left", "right"), ("up", "down")):
            with gr.Row():
                for side in pair:
                    amounts[side] = gr.Slider(
                        0, 512, value=0, step=8, label=side.capitalize(), elem_id=f"inpaint-outpaint-{side}"
                    )
        extend = gr.Button("Extend canvas", elem_id="inpaint-extend-canvas")
        note = gr.Markdown("", elem_id="inpaint-outpaint-note")
    return OutpaintControls(editor, amounts, extend, note)


def wire_outpaint(controls: OutpaintControls, widgets: GenerationWidgets) -> None:
    """Connects the controls once the tab's widgets (size sliders ...) exist."""
    width, height = widgets.fields["width"], widgets.fields["height"]
    # The size sliders cap the canvas: a bigger one would be resized by Generate, touching the original.
    largest = int(getattr(width, "maximum", 2048) or 2048)
    limits = Limits(max_side=min(Limits().max_side, largest))
    editor = controls.editor

    def extend(value: Any, left: float, right: float, up: float, down: float, seed: Any, blur: Any) -> tuple[Any, ...]:
        try:
            grown, plan = extend_editor_value(value, left, right, up, down, seed, blur, limits)
        except BadRequest as exc:
            raise gr.Error(str(exc)) from exc
        shown = {
            key: _png(editor, grown[key]) if key != "layers" else [_png(editor, layer) for layer in grown[key]]
            for key in ("background", "layers", "composite")
        }
        return shown, plan.size[0], plan.size[1], None, _note(plan)

    sides = [controls.amounts[side] for side in SIDES]
    controls.extend.click(
        extend,
        [editor, *sides, widgets.fields["seed"], widgets.fields["mask_blur"]],
        # The uploaded-mask box is cleared: Generate prefers it to the painted mask, and it has the old size.
        [editor, width, height, widgets.fields["mask"], controls.note],
        queue=False, api_visibility="private", show_progress="minimal",
    )  # fmt: skip


def extend_editor_value(
    value: Any,
    left: float,
    right: float,
    up: float,
    down: float,
    seed: Any = -1,
    mask_blur: Any = 4,
    limits: Limits | None = None,
) -> tuple[dict[str, Any], Extension]:
    """The editor value (``background``/``layers``/``composite``, PIL images) of the grown canvas:
    the fill as background, and one layer holding the mask (the new area and its overlap band, plus
    any strokes already painted, moved with the picture). Raises ``BadRequest``."""
    background = value.get("background") if isinstance(value, dict) else None
    if not isinstance(background, Image.Image):
        raise BadRequest("upload a picture to the Inpaint editor before extending its canvas")
    picture = background.convert("RGB")
    plan = plan_extension(picture.size, left, right, up, down, limits)
    # The band must cover what the tab's mask blur spreads, or the fill's noise would show at the seam.
    blur = int(mask_blur) if isinstance(mask_blur, int | float) and mask_blur >= 0 else 0
    overlap = min(64, max(OVERLAP, blur_reach(blur)))
    whole_seed = int(seed) if isinstance(seed, int | float) and 0 <= seed <= MAX_SEED else random.randint(0, MAX_SEED)
    canvas, mask = extend_canvas(picture, plan.left, plan.right, plan.up, plan.down, whole_seed, overlap, limits)
    painted = _painted(value, picture.size)
    if painted is not None:
        mask.paste(255, (plan.left, plan.up), painted)
    layer = Image.new("RGBA", canvas.size, (255, 255, 255, 0))
    layer.putalpha(mask.point(lambda a: MASK_ALPHA if a else 0))
    composite = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
    return {"background": canvas, "layers": [layer], "composite": composite}, plan


def _painted(value: dict[str, Any], size: tuple[int, int]) -> Image.Image | None:
    """Strokes already in the editor, as a 0/255 mask at the picture's size (None when there are none)."""
    mask = Image.new("L", size, 0)
    for layer in value.get("layers") or []:
        if isinstance(layer, Image.Image):
            alpha = layer.convert("RGBA").getchannel("A").resize(size)
            mask.paste(255, (0, 0), alpha.point(lambda a: 255 if a > 0 else 0))
    return mask if mask.getextrema()[1] else None


def _png(editor: gr.ImageEditor, image: Image.Image) -> str:
    """A lossless copy for the page: the editor's own format (WebP) would blur the original's pixels."""
    return processing_utils.save_pil_to_cache(image, editor.GRADIO_CACHE, name="outpaint", format="png")


def _note(plan: Extension) -> str:
    grown = ", ".join(f"{side} {amount}" for side, amount in plan.amounts().items() if amount)
    lines = [f"Canvas now {plan.size[0]}×{plan.size[1]} ({grown} px). Check the mask, then Generate."]
    lines += [f"- {note}" for note in plan.notes]
    return "\n".join(lines)
