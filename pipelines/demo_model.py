"""The built-in demo model: its architecture, its training data, and the command that rebuilds it.

    python -m pipelines.demo_model --seed 0          # about 3.6 hours on 2 CPU cores

trains a small Stable-Diffusion-format model on ``scenes`` pictures and writes it, in diffusers
folder layout with fp16 safetensors, to ``pipelines/assets/demo-model``: the folder Atelier loads
as ``builtin:demo`` through the same code as any local model.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import loading, scenes, training
from .files import replace_folder
from .loading import DEMO_FOLDER, clip_tokenizer

log = logging.getLogger(__name__)

SHIPPED = DEMO_FOLDER
# The architecture, in diffusers/transformers config files (the single-file loader reads them too):
# 64 px pictures through a 4x autoencoder (16x16 latents: cheap to train and run on a CPU); a
# 4.2M-parameter UNet with cross-attention at both of its levels, since colour, shape and place
# words all have to reach the pixels; a narrow 2-layer text encoder over CLIP's own vocabulary, so
# token counts match every other model. DDPM's linear noise schedule with v-prediction, not SD's
# schedule: at SD's last step 6.8% of the picture is left in the noise, and a model trained on it
# learnt to put things where the starting noise hinted, ignoring place words (place 20%, chance);
# here 0.6% is left, and v-prediction still says where things go at nearly pure noise (predicting
# the noise says next to nothing there). Both are scheduler config every diffusers sampler reads.
ARCHITECTURE = Path(__file__).parent / "configs" / "demo"


def scene_batches(seed: int, batch_size: int) -> Iterator[training.Batch]:
    """An endless stream of procedural pictures in [-1, 1] with one caption each."""
    rng = random.Random(seed)
    while True:
        drawn = [scenes.random_scene(rng) for _ in range(batch_size)]
        pixels = np.stack([np.asarray(scenes.render(scene), dtype=np.float32) for scene in drawn])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0
        yield images, [scenes.caption(scene, rng) for scene in drawn]


@torch.no_grad()
def round_trip_fidelity(vae: Any, seed: int = 5) -> float:
    """Share of colour x shape x place scenes that read back as drawn after ``vae`` encodes and
    decodes them: what the denoiser can reach at best, since it draws through this decoder."""
    rng = random.Random(seed)
    right = 0
    combinations = list(itertools.product(scenes.COLOURS, scenes.SHAPES, scenes.PLACES))
    for colour, shape, place in combinations:
        background = rng.choice(scenes.backgrounds_for(colour))
        scene = scenes.Scene(shape, colour, place, rng.choice(list(scenes.SIZES)), background)
        pixels = torch.from_numpy(np.asarray(scenes.render(scene), dtype=np.float32)).permute(2, 0, 1)[None]
        decoded = vae.decode(vae.encode(pixels / 127.5 - 1.0).latent_dist.mean).sample.clamp(-1, 1)
        picture = Image.fromarray(((decoded[0].permute(1, 2, 0) + 1.0) * 127.5).round().byte().numpy())
        reading = scenes.analyse(picture)
        right += (reading.colour, reading.shape, reading.place) == (colour, shape, place)
    return right / len(combinations)


def untrained(seed: int) -> Any:
    """The demo architecture with fresh weights drawn from ``seed`` (torch's global generator)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers.models.clip.configuration_clip import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPTextModel

    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(ARCHITECTURE, subfolder="vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(ARCHITECTURE, subfolder="text_encoder")),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ARCHITECTURE, subfolder="unet")),
        scheduler=PNDMScheduler.from_config(PNDMScheduler.load_config(ARCHITECTURE, subfolder="scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@dataclass(frozen=True)
class Stage:
    """One stage of denoiser training, warm-restarted from the weights the stage before wrote."""

    steps: int
    noisy_weight: float = 0.0  # train_denoiser's: how much the noisiest steps, where place is decided, count
    clean_share: float = 0.0  # train_denoiser's: share of each batch drawn from the clean steps, where corners form


STAGES = (
    Stage(3000, noisy_weight=1.0),  # where things go and their colours; shapes stay blobs
    Stage(2000, noisy_weight=0.1),  # the places settle (all five)
    Stage(2000),  # the shapes: the irreducible error of the noisiest steps no longer drowns them
    Stage(2000),  # squares and circles still mixed up one time in five: their corners form last,
    Stage(500, clean_share=0.5),  # at the clean end, which min-SNR weighs least; half the batch there
)
RECORD = "training.json"  # in the model folder: how it was trained, so a stopped build can resume


def build(
    out: Path,
    seed: int = 0,
    vae_steps: int = 2500,
    stages: tuple[Stage, ...] = STAGES,
    batch_size: int = 32,
    max_minutes: float = float("inf"),
    report: training.Report | None = None,
    resume: bool = False,
) -> Path:
    """Trains the demo model from ``seed`` and writes it to ``out`` (replaced only when complete).

    The autoencoder is trained first, alone (on a quarter of the batch: its steps cost most per
    picture); then the denoiser and text encoder on its latents, in ``stages``: each warms up and
    decays its learning rate afresh from the fp16 weights the one before wrote (a warm restart:
    the first stage ends with a small learning rate and the prompt only half learnt), on its own
    seed, so a build resumed after a finished stage trains exactly what an unbroken one does.
    A checkpoint is written to ``out`` every 500 denoiser steps, so a stopped run leaves a model;
    ``resume`` picks up after the last stage ``out/training.json`` records.
    """
    started = time.perf_counter()
    recipe = {"seed": seed, "autoencoder_steps": vae_steps, "batch_size": batch_size}
    record: dict[str, Any] = (
        _read_record(out, recipe, stages) if resume else {**recipe, "denoiser_stages": [], "minutes": 0.0}
    )
    if not record.get("autoencoder_done"):
        save(_train_autoencoder(seed, vae_steps, batch_size, report), out)
        record["autoencoder_done"] = True
        started = _write_record(out, record, started)

    def checkpoint(step: int, averaged: dict[str, torch.nn.Module]) -> None:
        live = pipe.unet, pipe.text_encoder
        pipe.unet, pipe.text_encoder = averaged["unet"], averaged["text_encoder"]
        save(pipe, out)
        pipe.unet, pipe.text_encoder = live
        log.info("checkpoint at step %d written to %s", step, out)

    if len(record["denoiser_stages"]) >= len(stages):
        log.info("%s already has all %d denoiser stages: nothing to train", out, len(stages))
    for number, stage in enumerate(stages):
        if number < len(record["denoiser_stages"]):
            continue
        pipe = _stage_start(out)
        torch.manual_seed(seed * 1000 + number)  # the same draws whether resumed or not
        left = max_minutes * 60 - (time.perf_counter() - started)
        schedule = training.Schedule(
            stage.steps, learning_rate=6e-4, warmup_steps=200 if number == 0 else 100, max_seconds=left,
            checkpoint_every=500,
        )  # fmt: skip
        pictures = scene_batches(seed + 3 + 10 * number, batch_size)
        training.train_denoiser(
            pipe, pictures, schedule, noisy_weight=stage.noisy_weight, clean_share=stage.clean_share, report=report,
            checkpoint=checkpoint,
        )  # fmt: skip
        save(pipe, out)
        record["denoiser_stages"].append(asdict(stage))
        started = _write_record(out, record, started)
        log.info("denoiser stage %d (%s) done; %.0f minutes in all; written to %s", number + 1, stage,
                 record["minutes"], out)  # fmt: skip
    return out


def _write_record(out: Path, record: dict[str, Any], started: float) -> float:
    """Adds the minutes since ``started`` to ``record`` and writes it; returns the new start."""
    record["minutes"] = round(record["minutes"] + (time.perf_counter() - started) / 60, 1)
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return time.perf_counter()


def _train_autoencoder(seed: int, steps: int, batch_size: int, report: training.Report | None) -> Any:
    """A fresh pipeline from ``seed`` with its autoencoder trained and its latent scale set."""
    started = time.perf_counter()
    pipe = untrained(seed)
    schedule = training.Schedule(steps, learning_rate=1e-3, ema_decay=0.0)
    pictures = scene_batches(seed + 1, max(1, batch_size // 4))
    pipe.vae = training.train_autoencoder(pipe.vae, pictures, schedule, subject_weight=4.0, report=report)
    scale = training.latent_scale(pipe.vae, scene_batches(seed + 2, 32))
    pipe.vae.register_to_config(scaling_factor=scale)
    log.info(
        "autoencoder trained in %.0f s: latent scale %.3f, %.2f/255 mean error on new pictures, %.1f%% of "
        "them read back as drawn",
        time.perf_counter() - started,
        scale,
        training.reconstruction_error(pipe.vae, scene_batches(seed + 4, 32)),
        100 * round_trip_fidelity(pipe.vae),
    )
    return pipe


def _stage_start(out: Path) -> Any:
    """The model as the last stage saved it (fp16 weights, computed in fp32)."""
    return loading.load_folder(out, torch.float32)


def _read_record(out: Path, recipe: dict[str, int], stages: tuple[Stage, ...]) -> dict[str, Any]:
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume: {out / RECORD} cannot be read ({exc})") from exc
    differs = {key: (record.get(key), value) for key, value in recipe.items() if record.get(key) != value}
    if differs:
        raise ValueError(f"cannot resume: {out} was trained with other settings (theirs, yours): {differs}")
    done = record["denoiser_stages"]
    if done != [asdict(stage) for stage in stages[: len(done)]]:
        raise ValueError(f"cannot resume: {out} was trained in other stages (theirs: {done}; yours: {stages})")
    return record


def save(pipe: Any, out: Path) -> None:
    """Writes ``pipe`` as an fp16 diffusers folder, swapping it in whole so ``out`` is never half-written."""
    # Copies, so a checkpoint mid-training leaves the modules being trained in full precision.
    copies = {name: copy.deepcopy(getattr(pipe, name)).half() for name in ("unet", "vae", "text_encoder")}
    # From its own module: diffusers' __init__ shows type checkers a dummy class without methods.
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

    saved = StableDiffusionPipeline(**{**pipe.components, **copies}, requires_safety_checker=False)
    replace_folder(Path(out), lambda staging: saved.save_pretrained(staging, safe_serialization=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild Atelier's built-in demo model from a seed.")
    parser.add_argument("--out", type=Path, default=SHIPPED, help="folder to write (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument(
        "--steps",
        default=",".join(str(stage.steps) for stage in STAGES),
        help="denoiser training steps of each stage, comma-separated (fewer numbers: only the first stages)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the build in --out after its last stage")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop early, keeping what was learnt")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    def report(step: int, steps: int, figures: dict[str, float]) -> None:
        log.info("step %d/%d %s", step + 1, steps, " ".join(f"{k}={v:.4g}" for k, v in figures.items()))

    steps = [int(number) for number in args.steps.split(",")]
    if len(steps) > len(STAGES):
        parser.error(f"--steps: {len(steps)} stages given, the build has {len(STAGES)}")
    stages = tuple(replace(stage, steps=count) for stage, count in zip(STAGES, steps, strict=False))
    build(args.out, args.seed, args.vae_steps, stages, args.batch_size, args.max_minutes, report, args.resume)


if __name__ == "__main__":
    main()
