"""The prompts-from-a-list and dataset controls of the Text to Image tab (being built)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines.engine import Engine
from presets.store import PresetLibrary

from .state import JobBoard
from .widgets import GenerationWidgets


def build_batch_controls(engine: Engine, widgets: GenerationWidgets) -> Any:
    """Built inside the tab, below its columns; returns what ``wire_batch`` needs."""
    return None


def wire_batch(
    engine: Engine, library: PresetLibrary, jobs: JobBoard, widgets: GenerationWidgets, controls: Any,
    model_picker: gr.Dropdown,
) -> None:  # fmt: skip
    """Connects the list's Run to the engine; Stop is the tab's own."""
