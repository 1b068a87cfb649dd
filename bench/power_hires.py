"""Benchmark the hires fix against the same two passes written by hand on diffusers, and print the figures.

    python bench/power_hires.py            # under a minute on a 2-core CPU
    python bench/power_hires.py --runs 7   # steadier medians

A 64 px first pass, Lanczos to 128 px, then an img2img second pass, on the built-in demo model. Our
side is ``Engine.generate`` with ``enable_hr=True`` once the request has that field, else the
engine's manager views plus ``pipelines.upscale.hires.second_pass``. The raw side is a
StableDiffusionPipeline call, a PIL resize and a StableDiffusionImg2ImgPipeline call sharing the same
modules. Target: ours / raw <= 1.05. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import samplers
from pipelines.engine import Engine
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings
from pipelines.upscale import UpscalerLibrary, hires

MODEL = "builtin:demo"
PROMPT = "a red circle"
SIDE, STEPS, HR_STEPS, STRENGTH, CFG = 64, 8, 4, 0.5, 7.0
SAMPLER, SCHEDULE = "Euler", "Automatic"


def raw_hires(txt2img: Any, img2img: Any, seed: int) -> Image.Image:
    """What a diffusers user writes by hand: txt2img, Lanczos to twice the size, img2img."""
    first = txt2img(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        width=SIDE,
        height=SIDE,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    enlarged = first.resize((SIDE * 2, SIDE * 2), Image.Resampling.LANCZOS)
    return img2img(
        prompt=PROMPT,
        image=enlarged,
        strength=STRENGTH,
        num_inference_steps=hires.schedule_steps(HR_STEPS, STRENGTH),  # runs HR_STEPS steps
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


def ours(engine: Engine) -> tuple[str, Callable[[int], Image.Image]]:
    """The engine's hires fix when it has one (a request with ``enable_hr`` that makes a picture twice
    the size), else the second pass ``pipelines.upscale`` provides, on the engine's manager views."""
    if "enable_hr" in {f.name for f in dataclasses.fields(Txt2Img)}:
        fields: dict[str, Any] = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Lanczos",
                                  "hr_second_pass_steps": HR_STEPS, "denoising_strength": STRENGTH}  # fmt: skip
        request = Txt2Img(prompt=PROMPT, model=MODEL, steps=STEPS, cfg_scale=CFG, width=SIDE, height=SIDE,
                          sampler_name=SAMPLER, schedule_type=SCHEDULE, **fields)  # fmt: skip
        probe = engine.generate(request.replace(seed=0, steps=1, hr_second_pass_steps=1)).images[0]
        if probe.size == (SIDE * 2, SIDE * 2):
            return "engine.generate", lambda seed: engine.generate(request.replace(seed=seed)).images[0]
        print(f"the engine takes enable_hr but made {probe.width}x{probe.height}: timing hires.second_pass instead")
    model = engine.manager.get(MODEL)
    library = UpscalerLibrary(engine.settings.models_dir)
    plan = hires.plan(SIDE, SIDE, steps=STEPS, hr_upscaler="Lanczos", hr_second_pass_steps=HR_STEPS,
                      denoising_strength=STRENGTH, upscalers=library)  # fmt: skip

    def run(seed: int) -> Image.Image:
        def scheduler() -> Any:
            return samplers.build_scheduler(model.pipe.scheduler.config, SAMPLER, SCHEDULE)

        kwargs = {"prompt": PROMPT, "num_inference_steps": STEPS, "guidance_scale": CFG, "width": SIDE,
                  "height": SIDE, "generator": [torch.Generator("cpu").manual_seed(seed)]}  # fmt: skip
        first = engine.manager.view(model, "txt2img", scheduler())(**kwargs, output_type=plan.first_output_type)
        img2img = engine.manager.view(model, "img2img", scheduler())
        return hires.second_pass(img2img, first.images, plan, library, **kwargs)[0]

    return "hires.second_pass", run


def measure(engine: Engine, runs: int) -> dict[str, Any]:
    import diffusers

    model = engine.manager.get(MODEL)
    components = model.pipe.components
    txt2img = diffusers.StableDiffusionPipeline(**components)  # same modules, schedulers of their own
    txt2img.scheduler = samplers.build_scheduler(model.pipe.scheduler.config, SAMPLER, SCHEDULE)
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**components)
    img2img.scheduler = samplers.build_scheduler(model.pipe.scheduler.config, SAMPLER, SCHEDULE)
    for pipe in (txt2img, img2img):
        pipe.set_progress_bar_config(disable=True)
    path, our_call = ours(engine)
    calls: dict[str, Callable[[int], Image.Image]] = {"raw": lambda s: raw_hires(txt2img, img2img, s), "ours": our_call}
    times: dict[str, list[float]] = {"raw": [], "ours": []}
    pictures: dict[str, Image.Image] = {}
    for run in range(runs + 1):
        # Alternate who goes first, so a warm cache or a clock step favours neither side.
        for side in ("raw", "ours") if run % 2 else ("ours", "raw"):
            started = time.perf_counter()
            pictures[side] = calls[side](run)
            if run:  # the first round warms caches
                times[side].append(time.perf_counter() - started)
    raw_s, ours_s = statistics.median(times["raw"]), statistics.median(times["ours"])
    same = pictures["raw"].tobytes() == pictures["ours"].tobytes()
    return {
        "path": path,
        "size": f"{SIDE}x{SIDE} -> {SIDE * 2}x{SIDE * 2}",
        "raw_s": raw_s,
        "ours_s": ours_s,
        "ratio": ours_s / raw_s,
        "same_pixels": same,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side after one warm-up (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as models, tempfile.TemporaryDirectory() as outputs:
        engine = Engine(EngineSettings(models_dir=Path(models), outputs_dir=Path(outputs), default_model=MODEL))
        try:
            figures = measure(engine, args.runs)
        finally:
            engine.close()
    print(
        f"hires fix {figures['size']} ({STEPS}+{HR_STEPS} steps, Lanczos, strength {STRENGTH}) via {figures['path']}: "
        f"raw diffusers {figures['raw_s']:.3f}s, ours {figures['ours_s']:.3f}s, ratio {figures['ratio']:.3f} "
        f"(target <= 1.05); same pixels: {figures['same_pixels']}"
    )
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in figures.items()}))


if __name__ == "__main__":
    main()
