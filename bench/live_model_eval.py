"""Does the live demo model draw what it is asked in ONE step? Judged by its pixels, and printed.

    python bench/live_model_eval.py                        # the shipped live weights, ~1 minute on 2 cores
    python bench/live_model_eval.py --weights path/to/folder --seeds 3 --sampler Euler

The prompts, seeds and judge of ``bench/demo_model_eval.py`` (every colour x shape x place, read
back by ``pipelines.scenes.analyse``), drawn through the engine like any request, but with the
live model's settings (1 step, CFG 1: ``pipelines.live_model.LIVE_SETTINGS``). The live model is
the demo with the distilled change merged, written to a temporary folder the engine loads as a
local model. Printed: the three accuracies against the live targets, with the worst misses, the
same figures for the plain demo at the same settings, and the time one picture takes; the last
line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import demo_model, live_model, loading, scenes
from pipelines.engine import Engine
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

TARGETS = {"colour": 0.90, "shape": 0.85, "place": 0.80}


def _demo_eval() -> Any:
    """``bench/demo_model_eval.py`` as a module: its accuracy and misses are the ones used here."""
    spec = importlib.util.spec_from_file_location("demo_model_eval", Path(__file__).with_name("demo_model_eval.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folders(weights: Path) -> tuple[Path, str, str]:
    """A temporary models folder holding the live model (merged) and the demo, as local folders."""
    root = Path(tempfile.mkdtemp(prefix="live-eval-"))
    demo = loading.load_folder(loading.DEMO_FOLDER, torch.float32)
    demo_model.save(live_model.load_live(demo, weights), root / "demo-live")
    demo_model.save(demo, root / "demo")
    return root, "demo-live", "demo"


def drawings(engine: Engine, model: str, seeds: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for colour, shape, place in itertools.product(scenes.COLOURS, scenes.SHAPES, scenes.PLACES):
        prompt = scenes.prompt_for(shape, colour, place)
        result = engine.generate(Txt2Img(prompt, model=model, seed=1000, batch_size=seeds, **settings))
        for image in result.images:
            found.append({"colour": colour, "shape": shape, "place": place, "read": scenes.analyse(image)})
    return found


def picture_seconds(engine: Engine, model: str, settings: dict[str, Any], runs: int = 7) -> float:
    engine.generate(Txt2Img("a blue square", model=model, seed=1, **settings))  # warm
    times = []
    for seed in range(runs):
        started = time.perf_counter()
        engine.generate(Txt2Img("a red star on the left", model=model, seed=seed, **settings))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--weights", type=Path, default=live_model.SHIPPED, help="folder with the live weights")
    parser.add_argument("--seeds", type=int, default=3, help="pictures per prompt")
    parser.add_argument("--sampler", default=live_model.LIVE_SETTINGS["sampler_name"])
    parser.add_argument("--no-demo", action="store_true", help="skip the plain demo's figures at the same settings")
    args = parser.parse_args()
    judge = _demo_eval()
    root, live, demo = folders(args.weights)
    engine = Engine(EngineSettings(outputs_dir=root / "outputs", models_dir=root))
    settings = {**live_model.LIVE_SETTINGS, "sampler_name": args.sampler}
    started = time.perf_counter()
    found = drawings(engine, live, args.seeds, settings)
    figures: dict[str, Any] = {"settings": settings, "pictures": len(found), **judge.accuracy(found)}
    for key, target in TARGETS.items():
        verdict = "ok" if figures[key] >= target else "BELOW TARGET"
        print(f"{key:>7} accuracy {figures[key]:6.1%} (target {target:.0%}, {verdict}); misses: "
              f"{judge.misses(found, key)}")  # fmt: skip
    if not args.no_demo:
        figures["demo_same_settings"] = judge.accuracy(drawings(engine, demo, args.seeds, settings))
        print(f"the plain demo at the same settings: {figures['demo_same_settings']}")
    figures["picture_seconds"] = picture_seconds(engine, live, settings)
    print(f"one {engine.native_size(live)} px picture, {settings}: {figures['picture_seconds']:.3f} s")
    figures["eval_seconds"] = time.perf_counter() - started
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
