"""Atelier's Gradio page and HTTP API: thin front doors onto the engine in ``pipelines``."""
