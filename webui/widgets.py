"""Widgets every generation tab has, built by one function and mapped to request fields by name."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines import samplers
from pipelines.engine import Engine
from presets.store import PresetLibrary

from .lora_ui import build_lora_controls
from .presets_ui import PresetControls, build_preset_controls, wire_style_controls
from .reference_ui import build_reference_controls

ICONS = Path(__file__).parent / "icons"
TOKEN_WINDOW = 75  # CLIP's 77 positions minus the start and end markers


@dataclass
class GenerationWidgets:
    """The shared controls of one tab. ``fields`` maps request field names to their widgets."""

    mode: str
    fields: dict[str, gr.components.Component]
    generate: gr.Button
    skip: gr.Button  # ends the current batch early, keeps it, and goes on with the next
    stop: gr.Button
    dice: gr.Button
    recycle: gr.Button
    prompt_tokens: gr.Markdown
    negative_tokens: gr.Markdown
    results: gr.Gallery
    infotext: gr.Textbox
    status: gr.Markdown
    send_img2img: gr.Button
    send_inpaint: gr.Button
    reuse_seed: gr.Button
    reuse_all: gr.Button
    session: gr.State  # the last result of this tab: [{"path", "seed", "infotext", "fields"}, ...]
    selected: gr.State  # index of the result picked in the results gallery
    presets: PresetControls
    reference: gr.Accordion
    reveal: gr.Button  # shown when the safety check blurred a picture of the last result
    revealed: gr.HTML  # the flagged original, inline: never a file, never in Gradio's cache

    @property
    def result_outputs(self) -> list[Any]:
        """What a job that shows a new result updates: its pictures and their entries, and the reveal."""
        return [self.results, self.infotext, self.status, self.session, self.selected, self.reveal, self.revealed]

    def no_reveal(self) -> dict[Any, Any]:
        """For a new result without flagged pictures (a plot, a list, a kept frame): the last result's
        flagged original goes, with its button."""
        return {self.reveal: gr.Button(visible=False), self.revealed: ""}


def grid_size(size: tuple[int, int]) -> tuple[int, int]:
    """A picture's size on the 8-pixel grid, within the size sliders' range."""
    width, height = (max(64, min(2048, side // 8 * 8)) for side in size)
    return width, height


def token_text(engine: Engine, text: str) -> str:
    """A1111's counter: tokens over the room of the chunks they fill. A prompt longer than one chunk
    is encoded in several (nothing is cut); the counter says so, since each chunk is read apart."""
    if not text:  # the empty boxes of a fresh page: no need to build the tokenizer before serving
        return f"<span class='tokens'>0/{TOKEN_WINDOW} tokens</span>"
    tokens, chunks = engine.count_tokens(text)
    if chunks > 1:
        return f"<span class='tokens'>{tokens}/{TOKEN_WINDOW * chunks} tokens, in {chunks} chunks</span>"
    return f"<span class='tokens'>{tokens}/{TOKEN_WINDOW} tokens</span>"


def build_prompt_boxes(engine: Engine, mode: str) -> tuple[gr.Textbox, gr.Textbox, gr.Markdown, gr.Markdown]:
    prompt = gr.Textbox(
        label="Prompt", lines=3, placeholder="a watercolor fox in a snowy forest", elem_id=f"{mode}-prompt"
    )
    prompt_tokens = gr.Markdown(token_text(engine, ""), elem_classes=["token-counter"], elem_id=f"{mode}-prompt-tokens")
    negative = gr.Textbox(
        label="Negative prompt", lines=2, placeholder="blurry, low quality", elem_id=f"{mode}-negative"
    )
    negative_tokens = gr.Markdown(token_text(engine, ""), elem_classes=["token-counter"])
    return prompt, negative, prompt_tokens, negative_tokens  # counted as they change by wire_style_controls


def build_sampling_controls(native_size: int, mode: str) -> dict[str, gr.components.Component]:
    with gr.Row():
        sampler = gr.Dropdown(
            samplers.sampler_names(),
            value=samplers.DEFAULT_SAMPLER,
            label="Sampler",
            scale=2,
            elem_id=f"{mode}-sampler",
        )
        schedule = gr.Dropdown(list(samplers.SCHEDULE_TYPES), value=samplers.DEFAULT_SCHEDULE, label="Schedule type")
    with gr.Row():
        steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id=f"{mode}-steps")
        cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG scale", elem_id=f"{mode}-cfg")
    with gr.Row():
        width = gr.Slider(64, 2048, value=native_size, step=8, label="Width", elem_id=f"{mode}-width")
        height = gr.Slider(64, 2048, value=native_size, step=8, label="Height", elem_id=f"{mode}-height")
    with gr.Row():
        batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{mode}-batch-count")
        batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{mode}-batch-size")
    return {
        "sampler_name": sampler,
        "schedule_type": schedule,
        "steps": steps,
        "cfg_scale": cfg,
        "width": width,
        "height": height,
        "batch_count": batch_count,
        "batch_size": batch_size,
    }


def build_variation_controls(mode: str) -> dict[str, gr.components.Component]:
    """A1111's "Extra" seed options: a variation seed blended in, and noise drawn as for another size."""
    with gr.Accordion("Variation seed", open=False, elem_id=f"{mode}-variation"):
        with gr.Row():
            subseed = gr.Number(-1, label="Variation seed (-1: random)", precision=0, minimum=-1, scale=2)
            strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength", scale=3)
        with gr.Row():
            from_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width", info="0: off")
            from_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height", info="0: off")
    return {"subseed": subseed, "subseed_strength": strength, "seed_resize_from_w": from_w,
            "seed_resize_from_h": from_h}  # fmt: skip


def build_hires_controls(engine: Engine) -> dict[str, gr.components.Component]:
    """The hires fix: a first pass at the model's size, upscaled, then redrawn by an image-to-image pass."""
    with gr.Accordion("Hires fix", open=False, elem_id="txt2img-hires"):
        enable = gr.Checkbox(False, label="Hires fix: draw at the model's size, upscale, redraw the details",
                             elem_id="txt2img-enable-hr")  # fmt: skip
        with gr.Row():
            upscaler = gr.Dropdown(engine.upscaler_names(), value="Latent", label="Upscaler", scale=2)
            steps = gr.Slider(
                0, 150, value=0, step=1, label="Hires steps", info="0: as many as the first pass", scale=2
            )
            strength = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength", scale=2)
        with gr.Row():
            scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by")
            resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to", info="0: upscale by")
            resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to", info="0: upscale by")
    return {"enable_hr": enable, "hr_upscaler": upscaler, "hr_second_pass_steps": steps,
            "denoising_strength": strength, "hr_scale": scale, "hr_resize_x": resize_x,
            "hr_resize_y": resize_y}  # fmt: skip


def build_generation_widgets(
    engine: Engine, library: PresetLibrary, mode: str, mode_controls: Any = None
) -> GenerationWidgets:
    """Prompt boxes, sampling controls, seed, Generate/Stop and the results panel of one tab.

    ``mode_controls`` builds the tab's own controls (init image, mask ...) in the left column and
    returns ``{request_field: widget}``.
    """
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            prompt, negative, prompt_tokens, negative_tokens = build_prompt_boxes(engine, mode)
            fields: dict[str, gr.components.Component] = {"prompt": prompt, "negative_prompt": negative}
            presets = build_preset_controls(library, mode)
            build_lora_controls(engine, mode, prompt)
            wire_style_controls(
                library,
                engine.count_tokens,
                presets,
                (prompt, negative),
                (prompt_tokens, negative_tokens),
                functools.partial(token_text, engine),
            )
            if mode_controls is not None:
                fields |= mode_controls()
            reference, reference_fields = build_reference_controls(engine, mode)
            fields |= reference_fields
            with gr.Accordion("Sampling", open=True):
                fields |= build_sampling_controls(engine.native_size(), mode)
                with gr.Row(equal_height=True):
                    fields["seed"] = gr.Number(
                        -1, label="Seed (-1: random)", precision=0, scale=4, minimum=-1, elem_id=f"{mode}-seed"
                    )
                    # Icons, not emoji: a browser without an emoji font showed an empty box.
                    dice = gr.Button(
                        "", icon=ICONS / "dice.svg", scale=0, min_width=48, elem_classes=["tool-button"],
                        elem_id=f"{mode}-random-seed",
                    )  # fmt: skip
                    recycle = gr.Button(
                        "", icon=ICONS / "reuse-seed.svg", scale=0, min_width=48, elem_classes=["tool-button"],
                        elem_id=f"{mode}-reuse-seed",
                    )  # fmt: skip
                fields |= build_variation_controls(mode)
                fields["clip_skip"] = gr.Slider(1, 12, value=1, step=1, label="Clip skip")
            if mode == "txt2img":
                fields |= build_hires_controls(engine)
        with gr.Column(scale=6):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", scale=3, elem_id=f"{mode}-generate")
                skip = gr.Button("Skip", scale=1, elem_id=f"{mode}-skip")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{mode}-stop")
            status = gr.Markdown("", elem_classes=["job-status"], elem_id=f"{mode}-status")
            results = gr.Gallery(
                label="Results", columns=2, height="auto", object_fit="contain", interactive=False,
                elem_id=f"{mode}-results", elem_classes=["results-gallery"],
            )  # fmt: skip
            infotext = gr.Textbox(
                label="Parameters", lines=4, interactive=False, buttons=["copy"], elem_id=f"{mode}-infotext"
            )
            with gr.Row():
                send_img2img = gr.Button("Send to Image to Image", size="sm")
                send_inpaint = gr.Button("Send to Inpaint", size="sm")
                reuse_seed = gr.Button("Reuse seed", size="sm")
                reuse_all = gr.Button("Reuse all parameters", size="sm")
            reveal = gr.Button("Show the flagged picture", size="sm", visible=False, elem_id=f"{mode}-reveal")
            revealed = gr.HTML("", elem_id=f"{mode}-revealed")
    dice.click(lambda: -1, None, fields["seed"], queue=False, show_progress="hidden")
    return GenerationWidgets(
        mode, fields, generate, skip, stop, dice, recycle, prompt_tokens, negative_tokens, results, infotext, status,
        send_img2img, send_inpaint, reuse_seed, reuse_all, gr.State([]), gr.State(0), presets, reference, reveal,
        revealed,
    )  # fmt: skip
