"""Benchmark animation: seconds per frame against one image-to-image picture of the same size and steps.

    python bench/animate.py             # about a minute on a 2-core CPU (demo model, 64 px, 36 frames)
    python bench/animate.py --frames 12 # a short clip: its first frame (a full text-to-image) weighs more

Figures (medians over ``--runs`` clips, measured in one process so drift hits both):

* ``per_frame_s``: a clip's time (planning, warps, colour matching, noise, diffusion, saving every frame's
  PNG and the MP4) divided by its frames, at cadence 1.
* ``img2img_s``: one ``Engine.generate`` of an Img2Img request with the same size, steps and strength.
* ``overhead``: ``per_frame_s / img2img_s`` at cadence 1; the target is at most 1.1.
* ``cadence2_ratio``: per-frame time at cadence 2 over one img2img; the target is at most 0.6.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from pipelines.animation.settings import AnimationSettings
from pipelines.engine import Engine
from pipelines.requests import Img2Img
from pipelines.settings import EngineSettings

OVERHEAD_TARGET = 1.1
CADENCE_TARGET = 0.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as folder:
        engine = Engine(EngineSettings(models_dir=Path(folder) / "models", outputs_dir=Path(folder) / "outputs"))
        engine.warm_up()
        settings = AnimationSettings(
            prompts='{"0": "a red circle on the left", "12": "a red circle on the right"}', max_frames=args.frames,
            steps=args.steps, seed=5, zoom="0: (1.02)", diffusion_cadence=1,
        )  # fmt: skip
        strength = 1 - 0.65  # the default strength schedule keeps 65% of the last frame
        picture = Image.new("RGB", (64, 64), (200, 60, 40))
        single = Img2Img(prompt="a red circle", steps=args.steps, seed=5, init_image=picture,
                         denoising_strength=strength, width=64, height=64)  # fmt: skip
        times: dict[str, list[float]] = {"img2img": [], "cadence1": [], "cadence2": []}
        for _ in range(args.runs):
            started = time.perf_counter()
            for _ in range(4):
                engine.generate(single)
            times["img2img"].append((time.perf_counter() - started) / 4)
            for cadence in (1, 2):
                started = time.perf_counter()
                engine.animate(settings.replace(diffusion_cadence=cadence))
                times[f"cadence{cadence}"].append((time.perf_counter() - started) / args.frames)
        engine.close()
    img2img, cadence1, cadence2 = (statistics.median(times[key]) for key in ("img2img", "cadence1", "cadence2"))
    figures = {
        "frames": args.frames, "steps": args.steps, "img2img_s": round(img2img, 4), "per_frame_s": round(cadence1, 4),
        "overhead": round(cadence1 / img2img, 3), "overhead_target": OVERHEAD_TARGET,
        "cadence2_per_frame_s": round(cadence2, 4), "cadence2_ratio": round(cadence2 / img2img, 3),
        "cadence2_target": CADENCE_TARGET,
    }  # fmt: skip
    print(f"one img2img: {img2img:.3f}s; a clip's frame at cadence 1: {cadence1:.3f}s "
          f"({figures['overhead']:.2f}x, target <= {OVERHEAD_TARGET}); at cadence 2: {cadence2:.3f}s "
          f"({figures['cadence2_ratio']:.2f}x, target <= {CADENCE_TARGET})")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
