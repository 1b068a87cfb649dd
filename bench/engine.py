"""Benchmark the engine against raw diffusers, in one process, and print the figures.

    python bench/engine.py            # about 2 minutes on a 2-core CPU
    python bench/engine.py --quick    # under a minute
    python bench/engine.py --gpu      # on a CUDA machine: also a full-size SD1.5-architecture UNet

The last line is one JSON object with every figure, for scripts and CI logs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import loading, samplers
from pipelines.engine import Engine
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raw_call(pipe: Any, request: Txt2Img, seed: int) -> Any:
    """What a diffusers user writes by hand for the same settings as the engine's request."""
    return pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        width=request.width,
        height=request.height,
        generator=[torch.Generator("cpu").manual_seed(seed)],
    ).images


def overhead(engine: Engine, model_name: str, request: Txt2Img, runs: int) -> dict[str, float]:
    """Engine vs raw diffusers on the same loaded pipeline, in alternating order so drift hits both."""
    model = engine.manager.get(model_name)
    raw = model.pipe.__class__(**model.pipe.components)  # same modules, a scheduler of its own
    raw.scheduler = samplers.build_scheduler(model.pipe.scheduler.config, request.sampler_name, request.schedule_type)
    raw.set_progress_bar_config(disable=True)
    times: dict[str, list[float]] = {"raw": [], "engine": []}
    calls = {
        "raw": lambda seed: raw_call(raw, request, seed),
        "engine": lambda seed: engine.generate(request.replace(seed=seed)),
    }
    for run in range(runs + 1):
        # Alternate who goes first, so a warm cache or a clock step favours neither side.
        for side in ("raw", "engine") if run % 2 else ("engine", "raw"):
            started = time.perf_counter()
            calls[side](run)
            if run:  # the first round warms caches
                times[side].append(time.perf_counter() - started)
    raw_times, engine_times = times["raw"], times["engine"]
    raw_median, engine_median = statistics.median(raw_times), statistics.median(engine_times)
    return {"raw_s": raw_median, "engine_s": engine_median, "overhead_ratio": engine_median / raw_median}


def mode_switch(engine: Engine, model_name: str, rounds: int = 60) -> dict[str, float]:
    model = engine.manager.get(model_name)
    base_storages = {t.untyped_storage().data_ptr() for t in _tensors(model.pipe)}
    views, times = [], []
    for index in range(rounds):
        mode = ("txt2img", "img2img", "inpaint")[index % 3]
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, "Euler a")
        started = time.perf_counter()
        views.append(engine.manager.view(model, mode, scheduler))
        times.append(time.perf_counter() - started)
    extra = {}
    for view in views:
        for tensor in _tensors(view):
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in base_storages:
                extra[pointer] = tensor.untyped_storage().nbytes()
    return {"mode_switch_ms": statistics.median(times) * 1000, "mode_switch_extra_bytes": sum(extra.values())}


def _tensors(pipe: Any) -> list[torch.Tensor]:
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def switching(models_dir: Path, rounds: int) -> dict[str, float]:
    """Cold load from disk vs switching back to a model cached in RAM."""
    engine = Engine(EngineSettings(models_dir=models_dir, max_models=2))
    started = time.perf_counter()
    engine.load("a")
    cold = time.perf_counter() - started
    engine.load("b")
    warm_times = []
    for index in range(rounds):
        started = time.perf_counter()
        engine.load("ab"[index % 2])
        warm_times.append(time.perf_counter() - started)
    warm = statistics.median(warm_times)
    return {"cold_load_s": cold, "warm_switch_s": warm, "warm_switch_speedup": cold / warm}


def rss_growth(engine: Engine, generations: int) -> dict[str, float]:
    request = Txt2Img(prompt="memory", steps=4, width=64, height=64)
    for seed in range(5):
        engine.generate(request.replace(seed=seed))
    gc.collect()
    before = rss_bytes()
    for seed in range(generations):
        engine.generate(request.replace(seed=seed, sampler_name=samplers.sampler_names()[seed % 5]))
    gc.collect()
    after = rss_bytes()
    return {"rss_before_mb": before / 1e6, "rss_after_mb": after / 1e6, "rss_growth_ratio": after / before}


def gpu_full_size(steps: int = 20, runs: int = 3) -> dict[str, Any]:
    """A full-size SD1.5-architecture pipeline (shipped config, random weights) at 512x512 fp16."""
    if not torch.cuda.is_available():
        return {"gpu": "none: skipped"}
    from turbo import random_pipeline  # bench/ is on the path when a script of it runs

    pipe = random_pipeline("sd1", "cuda", torch.float16)
    with tempfile.TemporaryDirectory() as models:
        pipe.save_pretrained(Path(models) / "sd15-random", safe_serialization=True)
        del pipe
        torch.cuda.empty_cache()
        engine = Engine(EngineSettings(models_dir=Path(models)))
        request = Txt2Img(prompt="a photo of a cat", steps=steps, width=512, height=512, model="sd15-random")
        figures = overhead(engine, "sd15-random", request, runs)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_raw_it_s": steps / figures["raw_s"],
        "gpu_engine_it_s": steps / figures["engine_s"],
        "gpu_overhead_ratio": figures["overhead_ratio"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs; under a minute")
    parser.add_argument("--gpu", action="store_true", help="also time a full-size SD1.5-architecture UNet on CUDA")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    figures: dict[str, Any] = {"device": "cuda" if torch.cuda.is_available() else "cpu", "quick": args.quick}
    with tempfile.TemporaryDirectory() as temp:
        models = Path(temp)
        demo = loading.build_untrained_demo()
        demo.save_pretrained(models / "a", safe_serialization=True)
        demo.save_pretrained(models / "b", safe_serialization=True)
        del demo
        engine = Engine(EngineSettings(models_dir=models, default_model="a"))
        request = Txt2Img(prompt="a red circle on a blue background", steps=20, model="a", width=128, height=128)
        figures |= overhead(engine, "a", request, runs=5 if args.quick else 15)
        print(
            f"generate 20 steps 128px: raw diffusers {figures['raw_s']:.3f}s, engine {figures['engine_s']:.3f}s, "
            f"overhead ratio {figures['overhead_ratio']:.3f} (target <= 1.03)"
        )
        figures |= mode_switch(engine, "a")
        print(
            f"mode switch: {figures['mode_switch_ms']:.2f} ms (target <= 10), "
            f"extra bytes {figures['mode_switch_extra_bytes']} (target 0)"
        )
        figures |= switching(models, rounds=10)
        print(
            f"cold load {figures['cold_load_s']:.2f}s, warm switch {figures['warm_switch_s'] * 1000:.2f} ms, "
            f"speedup {figures['warm_switch_speedup']:.0f}x (target >= 10)"
        )
        figures |= rss_growth(engine, generations=50)
        print(
            f"RSS {figures['rss_before_mb']:.0f} MB -> {figures['rss_after_mb']:.0f} MB after 50 generations, "
            f"ratio {figures['rss_growth_ratio']:.3f} (target <= 1.05)"
        )
    if args.gpu:
        figures |= gpu_full_size()
        print(f"GPU: {figures}")
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in figures.items()}))


if __name__ == "__main__":
    main()
