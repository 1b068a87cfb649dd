"""The LoRA and embedding pickers of a generation tab: they write the tag or the name into the
prompt, where the artist sees and edits it, as A1111's networks panel does."""

from __future__ import annotations

import gradio as gr

from pipelines.engine import Engine
from pipelines.lora import LoraTag


def build_lora_controls(engine: Engine, mode: str, prompt: gr.Textbox) -> None:
    with gr.Accordion("LoRA and embeddings", open=False, elem_id=f"{mode}-networks"):
        gr.Markdown(
            "LoRA files from `models/Lora`, embeddings from `models/embeddings`. A LoRA goes into the "
            "prompt as `<lora:NAME:WEIGHT>` (applied for this job only); an embedding is used by its name.",
            elem_classes=["hint"],
        )
        with gr.Row(equal_height=True):
            lora = gr.Dropdown(engine.loras.names(), label="LoRA", scale=3, elem_id=f"{mode}-lora")
            weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="Weight", scale=2)
            add_lora = gr.Button("Add", size="sm", scale=0, min_width=80, elem_id=f"{mode}-add-lora")
        with gr.Row(equal_height=True):
            embedding = gr.Dropdown(engine.embeddings.names(), label="Embedding", scale=5)
            add_embedding = gr.Button("Add", size="sm", scale=0, min_width=80)
        refresh = gr.Button("Refresh the lists", size="sm")

    def with_lora(text: str, name: str | None, strength: float) -> str:
        if not name:
            raise gr.Error("Pick a LoRA first (files in models/Lora).")
        return _appended(text, LoraTag(name, strength, strength).text())

    def with_embedding(text: str, name: str | None) -> str:
        if not name:
            raise gr.Error("Pick an embedding first (files in models/embeddings).")
        return _appended(text, name)

    def lists() -> tuple[dict, dict]:
        return gr.update(choices=engine.loras.names()), gr.update(choices=engine.embeddings.names())

    add_lora.click(with_lora, [prompt, lora, weight], prompt, queue=False, show_progress="hidden")
    add_embedding.click(with_embedding, [prompt, embedding], prompt, queue=False, show_progress="hidden")
    refresh.click(lists, None, [lora, embedding], queue=False, show_progress="hidden")


def _appended(text: str, addition: str) -> str:
    text = (text or "").rstrip()
    return f"{text}, {addition}" if text and not text.endswith(",") else f"{text} {addition}".strip()
