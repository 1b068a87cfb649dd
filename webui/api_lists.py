"""A1111's listing routes for the power tools, in A1111's shapes: upscalers, latent upscale modes,
scripts, textual-inversion embeddings and LoRA files (what ``webuiapi``'s ``get_*`` calls read)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pipelines.engine import Engine
from pipelines.errors import AtelierError
from pipelines.upscale.upscalers import latent_names

SCRIPTS = ["x/y/z plot"]  # the scripts ``script_name`` runs here


def add_list_routes(router: APIRouter, engine: Engine) -> None:
    def upscalers() -> list[dict[str, Any]]:
        files = engine.upscalers.model_files()
        return [
            {"name": name, "model_name": name if name in files else None,
             "model_path": str(files[name]) if name in files else None, "model_url": None, "scale": 4}
            for name in engine.upscalers.image_names()
        ]  # fmt: skip

    def embeddings() -> dict[str, Any]:
        loaded: dict[str, Any] = {}
        skipped: dict[str, Any] = {}
        for name in engine.embeddings.names():
            try:
                found = engine.embeddings.get(name)
            except AtelierError as exc:  # a damaged or foreign file: listed apart with the reason
                skipped[name] = {"error": str(exc)}
                continue
            width = int(next(iter(found.vectors.values())).shape[1])
            loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": width,
                            "vectors": found.count}  # fmt: skip
        return {"loaded": loaded, "skipped": skipped}

    def loras() -> list[dict[str, Any]]:
        return [
            {"name": entry.stem, "alias": entry.name, "path": str(entry.path), "metadata": {}}
            for entry in engine.loras.files()
        ]

    router.add_api_route("/upscalers", upscalers, methods=["GET"])
    router.add_api_route("/latent-upscale-modes", lambda: [{"name": name} for name in latent_names()], methods=["GET"])
    router.add_api_route("/scripts", lambda: {"txt2img": SCRIPTS, "img2img": SCRIPTS}, methods=["GET"])
    router.add_api_route("/embeddings", embeddings, methods=["GET"])
    router.add_api_route("/loras", loras, methods=["GET"])
    router.add_api_route("/refresh-loras", lambda: None, methods=["POST"])  # the folder is read on every listing
