"""Benchmark live mode's one-step picture on real model sizes: sd-turbo's architecture (SD 2.x) and
sdxl-turbo's (SDXL) at 512 px, random weights, against the same pipeline called straight on
diffusers in the same run.

    python bench/turbo.py                   # cuda when there is one, else cpu (sd-turbo only)
    python bench/turbo.py --device cuda --families sd2 sdxl

Per family, the median of ``--runs`` pictures each way after a warm-up, in alternating rounds of five:

* ``raw_s``: ``pipe(prompt, num_inference_steps=1, guidance_scale=1.0)`` with the LCM scheduler,
  fp16 on a GPU: the least diffusers needs for this picture.
* ``engine_s``: ``Engine.generate`` of the live request (``live_request``: LCM, 1 step, CFG 1, no
  CFG pass) for a model folder named "...-turbo": the request's validation, the prompt parser,
  the cached view and the decode to a PIL picture.
* ``slot_s``: the same picture through a ``LiveSlot`` (what the page's live road calls): the engine
  plus the slot's hand-over to the device thread.
* ``engine_ratio``: ``engine_s / raw_s`` (target <= 1.1).

Random weights draw noise; the time is the same as trained ones'. The configs are the ones
``pipelines/configs`` ships for single-file checkpoints. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pipelines import loading, samplers
from pipelines.engine import Engine
from pipelines.live import LiveSlot, live_request
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

SIDE = 512
SEED = 3
PROMPT = "a photo of a cat on a red sofa"


def random_pipeline(family: str, device: str, dtype: torch.dtype) -> Any:
    """The family's shipped configs (sd1, sd2, sdxl) with random weights, built straight on ``device``."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = loading.CONFIGS_DIR / family
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
        if family == "sdxl":
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2"))
    scheduler = loading.build_untrained_demo().scheduler
    pipe: Any
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=loading.clip_tokenizer(),
            tokenizer_2=loading.clip_tokenizer("!"), unet=unet, scheduler=scheduler,
        )  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=loading.clip_tokenizer("!" if family == "sd2" else "<|endoftext|>"),
            unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    return pipe.to(dtype=dtype)


def seconds(run: Callable[[], Any], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def family_figures(family: str, device: str, runs: int) -> dict[str, Any]:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = random_pipeline(family, device, dtype)
    pipe.scheduler = samplers.build_scheduler(pipe.scheduler.config, "LCM")
    pipe.set_progress_bar_config(disable=True)  # the engine shows none either

    def raw() -> Any:
        generator = torch.Generator(device).manual_seed(SEED)
        return pipe(PROMPT, num_inference_steps=1, guidance_scale=1.0, height=SIDE, width=SIDE, generator=generator)

    name = f"{family}-turbo-random"
    with tempfile.TemporaryDirectory(prefix="atelier-turbo-") as folder_name:
        models = Path(folder_name)
        pipe.save_pretrained(models / name, safe_serialization=True)  # kept in memory: a GPU has room for both
        engine = Engine(EngineSettings(models_dir=models, outputs_dir=models / "outputs", device=device))
        request = live_request(Txt2Img(prompt=PROMPT, width=SIDE, height=SIDE, seed=SEED), 1, name)
        slot = LiveSlot(engine, f"bench-{family}", seed=SEED)
        asked = iter(range(10**6))
        ways: dict[str, Callable[[], Any]] = {
            "raw": raw,
            "engine": lambda: engine.generate(request),
            # A new prompt each time: the slot answers a repeated request from its last frame.
            "slot": lambda: slot.ask(request.replace(prompt=f"{PROMPT} {next(asked)}"), 120),
        }
        for run in ways.values():  # warm-up: the engine's load, kernels chosen, caches filled
            run()
        # Alternating rounds: a GPU's clocks and a CPU's neighbours drift over a minute.
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(max(1, runs // 5)):
            for way, run in ways.items():
                times[way] += [seconds(run, device) for _ in range(min(5, runs))]
        slot.close()
        engine.close()
    medians = {way: statistics.median(spent) for way, spent in times.items()}
    return {
        "raw_s": round(medians["raw"], 4),
        "engine_s": round(medians["engine"], 4),
        "slot_s": round(medians["slot"], 4),
        "engine_ratio": round(medians["engine"] / medians["raw"], 3),
        "engine_pictures_per_s": round(1 / medians["engine"], 2),
        "settings": {"sampler": request.sampler_name, "steps": request.steps, "cfg": request.cfg_scale},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--families", nargs="+", default=["sd2"], choices=["sd2", "sdxl"])
    parser.add_argument("--runs", type=int, default=20, help="pictures per way, in rounds of 5")
    args = parser.parse_args()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                               "torch": torch.__version__, "size": SIDE}  # fmt: skip
    for family in args.families:
        figures = family_figures(family, args.device, args.runs)
        results[family] = figures
        print(f"{family} turbo architecture, {SIDE} px, 1 step on {results['device']}: {figures}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
