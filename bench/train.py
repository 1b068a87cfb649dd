"""What the studio's LoRA training costs against the same training written directly on diffusers + peft.

    python bench/train.py                  # about a minute on a 2-core CPU
    python bench/train.py --steps 400      # steadier figures
    python bench/train.py --rank 16 --batch-size 4

Both train rank-``--rank`` LoRA on the demo UNet's attention (``to_q``, ``to_k``, ``to_v``,
``to_out.0``) with AdamW, gradient clipping at 1.0, the model's own noise schedule and v-prediction
target, on the same 12 pictures whose latents and caption embeddings are computed once, in the same
process. The reference is the plain loop a diffusers user writes (a copy of the UNet,
``add_adapter``, ``loss.item()`` each step); ours is ``pipelines.lora.train`` as the Train tab runs it
(a job in the engine's queue, progress, Stop checks, seeded noise), without sample pictures. Rounds
alternate (reference, ours, reference, ours, ...) so a machine that gets busier does not favour one;
the best round of each counts.

Target: ours at most 1.1x the reference's time per step. Peak memory: how far each run's memory
rose above where it started (the device's allocations on CUDA, the process's resident set on a
CPU). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import scenes
from pipelines.engine import Engine
from pipelines.lora.train import UNET_TARGETS, TrainProgress, TrainSettings, train
from pipelines.settings import EngineSettings

log = logging.getLogger("bench.train")
TARGET = 1.1


def write_pictures(folder: Path, count: int = 12) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for index in range(count):
        scene = scenes.random_scene(rng)
        path = folder / f"{index:02d}.png"
        scenes.render(scene).save(path)
        path.with_suffix(".txt").write_text(scenes.prompt_for(scene.thing, scene.colour, scene.place))
        paths.append(path)
    return paths


def reference_run(pipe: Any, pictures: list[Path], steps: int, rank: int, batch_size: int, rate: float) -> float:
    """The plain diffusers + peft loop; returns its seconds per step."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    device = pipe.unet.device
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        pixels = torch.stack(
            [torch.from_numpy(np.asarray(_rgb(p), dtype=np.float32)).permute(2, 0, 1) for p in pictures]
        )
        latents = pipe.vae.encode((pixels / 127.5 - 1).to(device, pipe.vae.dtype)).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
        captions = [p.with_suffix(".txt").read_text() for p in pictures]
        context = pipe.encode_prompt(captions, device, 1, False)[0]
    unet = copy.deepcopy(pipe.unet)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_TARGETS)))
    parameters = [p for p in unet.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    optimizer = torch.optim.AdamW(parameters, lr=rate, weight_decay=0.01)
    unet.train()
    started = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, len(pictures), (batch_size,))
        clean = latents[index].float()
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch_size,), device=device)
        noisy = noise_schedule.add_noise(clean, noise, timesteps).to(unet.dtype)
        predicted = unet(noisy, timesteps, context[index]).sample.float()
        loss = F.mse_loss(predicted, noise_schedule.get_velocity(clean, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        loss.item()  # what a loop that logs its loss pays
    _sync(device)
    return (time.perf_counter() - started) / steps


def _rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def ours_run(engine: Engine, pictures: list[Path], steps: int, rank: int, batch_size: int, rate: float) -> float:
    settings = TrainSettings(
        name="bench", steps=steps, rank=rank, batch_size=batch_size, learning_rate=rate, seed=0, sample_every=0,
        overwrite=True,
    )  # fmt: skip
    result = train(engine, settings, pictures, progress=TrainProgress())
    _sync(engine.manager.device)
    return result.loop_seconds / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """The peak memory of what runs inside the block, above what was in use when it began: the
    device's allocations on CUDA, else the process's resident set (sampled every 5 ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss()
            self._highest = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._highest = max(self._highest, _rss())

    def __exit__(self, *_: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 1024**2
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self._highest - self._base) / 1024**2


def _rss() -> int:
    """The process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    engine = Engine(
        EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs", default_model="builtin:demo")
    )
    model = engine.load()
    device = engine.manager.device
    pictures = write_pictures(root / "pictures")
    figures: dict[str, list[float]] = {"reference": [], "ours": []}
    peaks: dict[str, float] = {}
    # One short warm-up each: torch's first backward pass sets up its kernels and memory pools.
    reference_run(model.pipe, pictures, 5, args.rank, args.batch_size, args.lr)
    ours_run(engine, pictures, 5, args.rank, args.batch_size, args.lr)
    for _ in range(args.rounds):
        for name in ("reference", "ours"):
            with PeakMemory(device) as memory:
                if name == "reference":
                    per_step = reference_run(model.pipe, pictures, args.steps, args.rank, args.batch_size, args.lr)
                else:
                    per_step = ours_run(engine, pictures, args.steps, args.rank, args.batch_size, args.lr)
            figures[name].append(per_step)
            peaks[name] = max(peaks.get(name, 0.0), memory.peak_mb)
            log.warning("%-9s %.2f steps/s", name, 1 / per_step)
    best = {name: min(values) for name, values in figures.items()}
    overhead = best["ours"] / best["reference"]
    result = {
        "device": str(device), "steps": args.steps, "rounds": args.rounds, "rank": args.rank,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "ours_steps_per_s": round(1 / best["ours"], 2), "reference_steps_per_s": round(1 / best["reference"], 2),
        "overhead": round(overhead, 3), "target": TARGET, "within_target": overhead <= TARGET,
        "rounds_ours_steps_per_s": [round(1 / v, 2) for v in figures["ours"]],
        "rounds_reference_steps_per_s": [round(1 / v, 2) for v in figures["reference"]],
        "peak_mb_above_start": {name: round(value, 1) for name, value in peaks.items()},
        "peak_kind": "cuda allocated" if device.type == "cuda" else "process resident set",
    }  # fmt: skip
    engine.close()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
