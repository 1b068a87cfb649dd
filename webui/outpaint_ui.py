"""Outpainting controls of the Inpaint tab (being built)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .widgets import GenerationWidgets


def build_outpaint_controls(editor: gr.ImageEditor) -> Any:
    """Built in the Inpaint tab's left column, below the mask options; returns what ``wire_outpaint`` needs."""
    return None


def wire_outpaint(controls: Any, widgets: GenerationWidgets) -> None:
    """Connects the controls once the tab's widgets (size sliders ...) exist."""
