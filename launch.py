"""Start Atelier: parse flags, build the engine, hand it to the web UI.

Heavy imports (torch, diffusers, gradio) happen after the flags are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("atelier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Atelier: a Stable Diffusion studio in your browser.")
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="folder of checkpoints and diffusers models"
    )
    parser.add_argument(
        "--model", default="", help="model to start with (default: first local model, else the built-in demo)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    parser.add_argument("--medvram", action="store_true", help="keep only the active part of the model on the GPU")
    parser.add_argument("--lowvram", action="store_true", help="stream weights to the GPU layer by layer (slowest)")
    parser.add_argument("--xformers", action="store_true", help="use xformers attention on CUDA when installed")
    parser.add_argument("--max-models", type=int, default=3, help="models kept loaded at once")
    return parser.parse_args(argv)


def build_engine(args: argparse.Namespace):
    from pipelines.engine import Engine
    from pipelines.settings import EngineSettings

    offload = "sequential" if args.lowvram else "model" if args.medvram else "none"
    settings = EngineSettings(
        models_dir=args.models_dir,
        default_model=args.model,
        device=args.device,
        precision=args.precision,
        attention="xformers" if args.xformers else "sdpa",
        offload=offload,
        max_models=args.max_models,
    )
    return Engine(settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = build_engine(args)
    model = engine.load()
    status = engine.status()
    log.info(
        "engine ready: %s on %s (%s), native size %dpx",
        model.name,
        status["device"],
        status["dtype"],
        model.native_size,
    )
    log.info("models: %s", ", ".join(entry.title for entry in engine.list_models()))
    log.info("the web UI is not built yet; the engine can be driven from Python (see README)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
