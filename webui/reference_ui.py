"""The reference image controls of every generation tab, and bringing a kept reference back."""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines.engine import Engine
from pipelines.errors import AtelierError
from pipelines.guidance import ip_adapter

MODE_CHOICES = [
    ("Auto: IP-Adapter when installed for the model, else reference-only", "auto"),
    ("Reference-only: attends to the picture (any model, no download)", "reference-only"),
    ("AdaIN: matches the picture's colours and contrast", "reference-adain"),
    ("AdaIN + attention: both", "reference-adain+attn"),
    ("IP-Adapter: follows the picture's content (needs its weights)", "ip-adapter"),
]
TAG_HELP = (
    "The picture guides the generation whenever one is here. In the prompt, `{image}` marks where it is "
    "meant; `{image:NAME}` uses a gallery picture or a kept reference by file name instead."
)


def build_reference_controls(engine: Engine, mode: str) -> tuple[gr.Accordion, dict[str, gr.components.Component]]:
    """The accordion and its widgets, keyed by request field."""
    with gr.Accordion("Reference image", open=False, elem_id=f"{mode}-reference") as accordion:
        image = gr.Image(
            label="Reference image", type="pil", sources=["upload", "clipboard"], height=220,
            elem_id=f"{mode}-reference-image",
        )  # fmt: skip
        choice = gr.Dropdown(MODE_CHOICES, value="auto", label="Reference mode", elem_id=f"{mode}-reference-mode")
        with gr.Row():
            strength = gr.Slider(0, 2, value=1, step=0.05, label="Reference strength")
            fidelity = gr.Slider(0, 1, value=0.5, step=0.05, label="Style fidelity (reference-only, AdaIN)")
        gr.Markdown(TAG_HELP, elem_classes=["reference-help"])
        installed, how = availability(engine)
        with gr.Accordion(installed, open=False):
            gr.Markdown(how)
    fields = {
        "reference_image": image, "reference_mode": choice, "reference_strength": strength,
        "reference_fidelity": fidelity,
    }  # fmt: skip
    return accordion, fields


def availability(engine: Engine) -> tuple[str, str]:
    """A line naming the families with an IP-Adapter installed, and what to download for the others."""
    installed, missing, models = [], [], engine.settings.models_dir
    for family, label in (("sd1", "SD 1.x"), ("sdxl", "SDXL")):
        if ip_adapter.find_ip_adapter(family, models) is not None:
            installed.append(label)
        else:
            missing.append(f"**{label}**: {ip_adapter.missing_message(family, models)}")
    line = f"IP-Adapter installed for {' and '.join(installed)}" if installed else "IP-Adapter: not installed"
    return line, "\n\n".join(missing) or "Every IP-Adapter Atelier knows is installed."


def kept_reference(engine: Engine, fields: dict[str, Any]) -> Any:
    """The reference a picture's parameters name (by hash), for "reuse": the kept picture, or None
    when the picture had no reference (reusing its parameters clears the tab's)."""
    digest = fields.get("reference_hash")
    if not digest:
        return None
    try:
        return engine.references.get(str(digest))
    except AtelierError as exc:
        gr.Warning(f"The reference this picture used is not available: {exc}")
        return gr.skip()
