"""Atelier's Gradio page: thin front doors onto the engine in ``pipelines``.

``build_app(engine, settings_store, preset_library)`` is imported lazily so that ``import webui``
stays cheap.
"""

from __future__ import annotations

from typing import Any


def build_app(engine: Any, settings: Any, library: Any) -> Any:
    from .app import build_app as build

    return build(engine, settings, library)


def extra_routes(app: Any) -> list[Any]:
    from .app import extra_routes as routes

    return routes(app)
