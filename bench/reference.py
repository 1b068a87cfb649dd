"""What reference-only guidance costs: time per picture and extra peak memory, with and without it,
measured in the same run on the same pipeline.

    python bench/reference.py                    # the built-in demo model, 64 px: about 2 minutes on 2 CPU cores
    python bench/reference.py --quick            # fewer runs
    python bench/reference.py --size 512         # also an SD1.5-shaped UNet (random weights) at 512 px,
                                                 # latents out (no decoding); 3 steps on a CPU (~10 min), 20 on a GPU

The reference pass runs the UNet once more per step at 1 picture (2 rows with classifier-free
guidance), so one picture costs about twice as much, and a batch of 4 much less than that. The
target is at most 2.2x for one picture. Peak memory is what one call takes above the memory held
before it: torch's peak allocation on CUDA; on a CPU the peak RSS (reset through
/proc/self/clear_refs, after ``malloc_trim`` hands freed memory back).

The last line is one JSON object with every figure, for scripts and CI logs.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
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

from pipelines import loading, samplers, scenes
from pipelines.engine import Engine
from pipelines.guidance.reference import Reference, reference_installed
from pipelines.settings import EngineSettings

CFG = 7.0


def peak_memory_during(work: Callable[[], Any]) -> int:
    """Bytes above the starting level at the peak of ``work``: torch's allocations on CUDA; on a
    CPU the process's peak RSS, after freed memory is handed back to the system (else the
    allocator's cache from the run before hides this run's peak)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        work()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS starts again from the current RSS
    work()
    return _status_bytes("VmHWM") - start


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def draw(
    pipe: Any, reference: Reference | None, seeds: list[int], side: int, steps: int, decode: bool = True
) -> tuple[Any, float]:
    """The pictures (or latents), and the seconds the reference took to set up before the call."""
    call = dict(
        output_type="pil" if decode else "latent",
        prompt="a circle",
        num_inference_steps=steps,
        guidance_scale=CFG,
        height=side,
        width=side,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    )
    if reference is None:
        return pipe(**call).images, 0.0
    started = time.perf_counter()
    with reference_installed(
        pipe, reference, width=side, height=side, do_classifier_free_guidance=True, total_steps=steps
    ):
        setup = time.perf_counter() - started  # encoding the reference, installing the hooks: once a job
        return pipe(**call).images, setup


def compare(
    pipe: Any, reference: Reference, side: int, steps: int, batch: int, runs: int, decode: bool = True
) -> dict[str, float]:
    """Median seconds per picture without and with the reference, alternating who goes first."""
    times: dict[str, list[float]] = {"plain": [], "reference": [], "setup": []}
    chosen = {"plain": None, "reference": reference}
    for run in range(runs + 1):
        for side_name in ("plain", "reference") if run % 2 else ("reference", "plain"):
            started = time.perf_counter()
            _, setup = draw(pipe, chosen[side_name], list(range(run, run + batch)), side, steps, decode)
            if run:  # the first round warms caches and kernels
                times[side_name].append((time.perf_counter() - started) / batch)
                if chosen[side_name] is not None:
                    times["setup"].append(setup)
    plain, guided = statistics.median(times["plain"]), statistics.median(times["reference"])
    setup = statistics.median(times["setup"])
    seeds = list(range(batch))
    plain_peak = peak_memory_during(lambda: draw(pipe, None, seeds, side, steps, decode))
    guided_peak = peak_memory_during(lambda: draw(pipe, reference, seeds, side, steps, decode))
    return {
        f"b{batch}_plain_peak_mb": plain_peak / 1e6,
        f"b{batch}_plain_s_per_picture": plain,
        f"b{batch}_reference_s_per_picture": guided,
        f"b{batch}_time_ratio": guided / plain,
        f"b{batch}_reference_setup_s": setup,
        f"b{batch}_steps_ratio": (guided - setup / batch) / plain,  # without the once-a-job setup
        f"b{batch}_extra_peak_mb": (guided_peak - plain_peak) / 1e6,
    }


def demo_figures(runs: int, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as temp:
        engine = Engine(EngineSettings(models_dir=Path(temp), outputs_dir=Path(temp) / "out"))
        # Loaded the engine's way, on its device thread. (Loaded on this thread instead, while the
        # engine's thread imports the libraries, the same calls ran 10-40x slower on a 2-core CPU.)
        engine.load("builtin:demo")
        model = engine.manager.get("builtin:demo")
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, "DDIM")
        pipe = engine.manager.view(model, "txt2img", scheduler)
        reference = Reference(scenes.render(scenes.Scene("circle", "blue", "centre", "big", "white")))
        figures: dict[str, float] = {}
        for batch in (1, 4):
            figures |= {f"demo_{key}": value for key, value in compare(pipe, reference, 64, steps, batch, runs).items()}
        return figures


def sd15_figures(side: int, steps: int, runs: int) -> dict[str, float]:
    """An SD1.5-shaped pipeline (shipped configs, random weights): fp16 on CUDA, fp32 on a CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = loading.CONFIGS_DIR / "sd1"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=loading.clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler.from_config(DDIMScheduler.load_config(folder, subfolder="scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if device == "cuda":
        pipe = pipe.to(dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    reference = Reference(scenes.render(scenes.Scene("circle", "blue", "centre", "big", "white")).resize((side, side)))
    # Latents out: decoding 512 px on a CPU takes longer than a few steps and would hide their ratio.
    figures = compare(pipe, reference, side, steps, 1, runs, decode=False)
    return {f"sd15_{side}_{key}": value for key, value in figures.items()} | {f"sd15_{side}_steps": steps}


def report(label: str, figures: dict[str, Any], prefix: str) -> None:
    print(
        f"{label}: {figures[prefix + '_plain_s_per_picture']:.3f} s/picture plain, "
        f"{figures[prefix + '_reference_s_per_picture']:.3f} with reference-only, "
        f"ratio {figures[prefix + '_time_ratio']:.2f} (target <= 2.2; {figures[prefix + '_steps_ratio']:.2f} without "
        f"the {figures[prefix + '_reference_setup_s']:.2f} s of encoding the reference); peak memory of a call "
        f"{figures[prefix + '_plain_peak_mb']:.1f} MB plain, {figures[prefix + '_extra_peak_mb']:+.1f} MB with it"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--size", type=int, default=0, help="also an SD1.5-shaped random UNet at this side (512)")
    parser.add_argument("--steps", type=int, default=0, help="steps for --size (default 20 on CUDA, 3 on a CPU)")
    args = parser.parse_args()
    figures: dict[str, Any] = {"device": "cuda" if torch.cuda.is_available() else "cpu", "quick": args.quick}
    runs = 3 if args.quick else 7
    figures |= demo_figures(runs, steps=20)
    for batch in (1, 4):
        report(f"demo 64 px, 20 DDIM steps, CFG {CFG:g}, batch {batch}", figures, f"demo_b{batch}")
    if args.size:
        steps = args.steps or (20 if torch.cuda.is_available() else 3)
        figures |= sd15_figures(args.size, steps, runs=2 if args.quick else 3)
        report(f"SD1.5-shaped {args.size} px, {steps} DDIM steps, batch 1", figures, f"sd15_{args.size}_b1")
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in figures.items()}))


if __name__ == "__main__":
    main()
