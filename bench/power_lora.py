"""What a LoRA costs a job: load + apply + remove, against one 20-step demo picture, and print the figures.

    python bench/power_lora.py             # about 30 s on a 2-core CPU
    python bench/power_lora.py --runs 9    # steadier medians
    python bench/power_lora.py --sd1       # also apply/remove on a full-size SD1.5 UNet + text encoder
                                           # (random weights, no pictures; about a minute more)

On the built-in demo model, with a kohya-layout LoRA written here (rank 8 on every attention
projection, feed-forward and projection layer of the UNet, and every attention/MLP layer of the
text encoder: the usual trainer's coverage). For each of ``pipelines.lora.applied``'s methods:

* per job: entering and leaving ``applied`` (the file's tensors already in memory, as from the
  second job on; the first read is reported apart as ``cold``);
* per step: a 20-step picture with the LoRA on, against the plain picture.

Target: a job's LoRA cost (apply + remove, plus what the steps pay extra) under 5% of the plain
20-step picture. The last line is one JSON object with every figure.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import samplers
from pipelines.lora import LoraLibrary, LoraTag, applied
from pipelines.manager import PipelineManager
from pipelines.settings import EngineSettings

PROMPT = "a red circle at the top"
SIDE, STEPS = 64, 20
TARGET = 0.05
UNET_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def write_kohya_lora(unet: Any, text_encoder: Any, path: Path, rank: int = 8) -> int:
    """A kohya-layout LoRA over the usual layers; returns how many layers it changes."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, part, targets in (
        ("lora_unet_", unet, UNET_LAYERS),
        ("lora_te_text_model_", text_encoder, TEXT_LAYERS),
    ):
        for name, module in part.named_modules():
            if not name.endswith(targets) or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                continue
            inputs = module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels
            outputs = module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels
            tail = (1, 1) if isinstance(module, torch.nn.Conv2d) else ()
            flat = prefix + name.replace(".", "_")
            tensors[f"{flat}.lora_down.weight"] = torch.randn(rank, inputs, *tail, generator=generator) * 0.05
            tensors[f"{flat}.lora_up.weight"] = torch.randn(outputs, rank, *tail, generator=generator) * 0.05
            tensors[f"{flat}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(tensors, str(path))
    return len(tensors) // 3


def median_seconds(work: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def job_costs(pipe: Any, library: LoraLibrary, runs: int) -> dict[str, dict[str, float]]:
    """Per method: cold (file read) and warm apply + remove seconds, and the split of the warm one."""
    loras = library.resolve([LoraTag("bench", 0.8, 0.8)])
    figures: dict[str, dict[str, float]] = {}
    for method in ("fused", "adapters"):
        library.forget()
        started = time.perf_counter()
        with applied(pipe, loras, library, method=method):
            pass
        cold = time.perf_counter() - started
        applies, removes, totals = [], [], []
        for _ in range(runs):
            started = time.perf_counter()
            with applied(pipe, loras, library, method=method) as record:
                pass
            totals.append(time.perf_counter() - started)
            applies.append(record.apply_seconds)
            removes.append(record.remove_seconds)
        figures[method] = {
            "cold_s": cold,
            "job_s": statistics.median(totals),
            "apply_s": statistics.median(applies),
            "remove_s": statistics.median(removes),
        }
    return figures


def demo_figures(runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="atelier-bench-lora-"))
    manager = PipelineManager(EngineSettings(models_dir=root, outputs_dir=root / "outputs"))
    model = manager.get("builtin:demo")
    pipe = manager.view(model, "txt2img", samplers.build_scheduler(model.pipe.scheduler.config, "Euler a"))
    (root / "Lora").mkdir()
    layers = write_kohya_lora(pipe.unet, pipe.text_encoder, root / "Lora" / "bench.safetensors")
    library = LoraLibrary(root / "Lora")

    def picture() -> None:
        generator = torch.Generator("cpu").manual_seed(1)
        pipe(PROMPT, num_inference_steps=STEPS, height=SIDE, width=SIDE, generator=generator, output_type="np")

    picture()  # warm-up: first-call costs are not the LoRA's
    costs = job_costs(pipe, library, runs)
    figures: dict[str, Any] = {"lora_layers": layers, "runs": runs}
    # Plain and LoRA pictures interleaved, so a neighbour's load on a shared CPU hits both alike.
    plain_times: list[float] = []
    lora_times: dict[str, list[float]] = {"fused": [], "adapters": []}
    loras = library.resolve([LoraTag("bench", 0.8, 0.8)])
    for _ in range(max(3, runs)):
        plain_times.append(median_seconds(picture, 1))
        for method, times in lora_times.items():
            with applied(pipe, loras, library, method=method):
                times.append(median_seconds(picture, 1))
    plain = statistics.median(plain_times)
    figures["picture_s"] = plain
    for method, cost in costs.items():
        with_lora = statistics.median(lora_times[method])
        steps_extra = max(0.0, with_lora - plain)
        figures[method] = cost | {
            "picture_with_lora_s": with_lora,
            "job_share": cost["job_s"] / plain,
            "job_and_steps_share": (cost["job_s"] + steps_extra) / plain,
        }
    return figures


def sd1_figures(runs: int) -> dict[str, Any]:
    """apply/remove on SD1.5's architecture (random weights): how the cost grows with the model."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers.models.clip.configuration_clip import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPTextModel

    configs = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "sd1"
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs, subfolder="unet"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs, subfolder="text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="atelier-bench-lora-sd1-"))
    layers = write_kohya_lora(unet, text_encoder, root / "bench.safetensors", rank=32)
    return {"lora_layers": layers, "rank": 32} | job_costs(pipe, LoraLibrary(root), runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sd1", action="store_true", help="also time apply/remove on a full-size SD1.5 model")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    figures: dict[str, Any] = {"demo": demo_figures(args.runs), "target_share": TARGET}
    demo = figures["demo"]
    print(
        f"demo model, {demo['lora_layers']} LoRA layers; "
        f"plain {STEPS}-step {SIDE} px picture: {demo['picture_s']:.3f} s"
    )
    for method in ("fused", "adapters"):
        row = demo[method]
        verdict = "meets" if row["job_and_steps_share"] < TARGET else "misses"
        print(
            f"  {method:>8}: apply {row['apply_s'] * 1000:7.1f} ms + remove {row['remove_s'] * 1000:6.1f} ms "
            f"(first job, reading the file: {row['cold_s'] * 1000:.1f} ms); picture with LoRA "
            f"{row['picture_with_lora_s']:.3f} s; job share {row['job_share']:.1%}, with the steps' extra "
            f"{row['job_and_steps_share']:.1%} ({verdict} the {TARGET:.0%} target)"
        )
    if args.sd1:
        figures["sd1"] = sd1_figures(max(2, args.runs // 2))
        sd1 = figures["sd1"]
        print(f"SD1.5 architecture, {sd1['lora_layers']} LoRA layers at rank {sd1['rank']}:")
        for method in ("fused", "adapters"):
            row = sd1[method]
            print(f"  {method:>8}: apply {row['apply_s']:.3f} s + remove {row['remove_s']:.3f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
