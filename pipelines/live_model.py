"""The built-in live model: the demo model distilled to draw in one step, and the command that builds it.

    python -m pipelines.live_model --seed 0          # see the recipe record for how long it takes

has the built-in demo (the teacher, ``Teacher``'s sampler, steps and CFG scale) draw pictures
from random noise and prompts, then trains a weight change on the demo's own UNet (low rank
where that is smaller; ``pipelines.distill``) so that ONE step from the same noise, without CFG,
gives the teacher's picture. It writes the change (safetensors, int8 and fp16: under 5 MB) and the recipe
record ``training.json`` to ``pipelines/assets/demo-live``: ``load_live`` applies them to the
demo model and gives the pipeline ``builtin:demo-live`` runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import distill, loading
from .errors import BadRequest
from .files import replace_folder

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "assets" / "demo-live"
WEIGHTS = "live.safetensors"
RECORD = "training.json"
MAX_BYTES = 5_000_000  # what the live model may add to the download
# What a request to the live model should use: one step, no CFG (it is baked in), LCM's sampler
# (any sampler with trailing timesteps gives the same one-step picture).
LIVE_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {"steps": 1, "cfg_scale": 1.0, "sampler_name": "LCM", "schedule_type": "Automatic"}
)


@dataclass(frozen=True)
class Recipe:
    """Everything a build depends on besides the demo model's weights."""

    seed: int = 0
    teacher: distill.Teacher = field(default_factory=distill.Teacher)
    pairs: int = 2048  # teacher pictures, drawn in shards of ``shard_size``
    shard_size: int = 128
    # 0: every layer's whole weight change (4.2 MB in int8). A rank-32 change (3.2 MB) learnt the
    # teacher's shapes too slowly: after 150 steps the loss stood at 0.14, and one step drew 59% of
    # training pictures' shapes as the teacher did (stars and squares came out round).
    rank: int = 0
    student: distill.StudentSchedule = field(default_factory=distill.StudentSchedule)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _shard(pipe: Any, recipe: Recipe, index: int, path: Path) -> None:
    """Teacher pictures number ``index * shard_size`` on, from (seed, index) alone."""
    rng = random.Random(f"live-{recipe.seed}-{index}")
    texts = distill.live_prompts(rng, recipe.shard_size)
    side = pipe.unet.config.sample_size
    generator = torch.Generator().manual_seed(recipe.seed * 100_003 + index)
    noise = torch.randn(recipe.shard_size, pipe.unet.config.in_channels, side, side, generator=generator)
    latents = torch.cat([
        distill.teacher_latents(pipe, texts[start : start + 64], noise[start : start + 64], recipe.teacher)
        for start in range(0, len(texts), 64)
    ])  # fmt: skip
    context, _ = distill.encode(pipe, texts, negative=False)
    staging = path.with_suffix(".partial")
    torch.save({"noise": noise, "context": context, "latents": latents, "prompts": texts}, staging)
    staging.rename(path)


def teacher_pairs(pipe: Any, recipe: Recipe, work: Path) -> distill.Pairs:
    """The teacher's pictures, drawn once into ``work`` (shards already there are kept)."""
    work.mkdir(parents=True, exist_ok=True)
    shards = -(-recipe.pairs // recipe.shard_size)
    loaded = []
    for index in range(shards):
        path = work / f"pairs-{recipe.seed}-{index:04d}.pt"
        if not path.exists():
            started = time.perf_counter()
            _shard(pipe, recipe, index, path)
            log.info("teacher shard %d/%d drawn in %.0f s", index + 1, shards, time.perf_counter() - started)
        loaded.append(torch.load(path))
    return distill.Pairs(*(torch.cat([s[key] for s in loaded]) for key in ("noise", "context", "latents")))


def build(
    out: Path = SHIPPED,
    recipe: Recipe | None = None,
    work: Path | None = None,
    resume: bool = False,
    max_minutes: float = float("inf"),
    checkpoint_every: int = 50,
    eval_every: int = 100,
    stop_at: int = 0,
) -> Path:
    """Distils the demo model into the live model's weights in ``out``.

    ``work`` keeps the teacher's pictures and the student's checkpoint (optimizer and all), so a
    stopped build continues with ``resume`` where it was and trains exactly what an unbroken one
    does; ``out`` is rewritten at every checkpoint, so a stopped build leaves a working model.
    ``eval_every`` (0: never) checkpoints the one-step figures are measured and recorded;
    ``stop_at`` (0: never) stops after that step, as ``max_minutes`` does at the first checkpoint past it.
    """
    recipe = recipe or Recipe()
    work = Path(work) if work else out.parent / f".{out.name}-build"
    state_path = work / f"student-{recipe.seed}.pt"
    started = begun = time.perf_counter()
    record: dict[str, Any] = {"recipe": recipe.record(), "steps_done": 0, "minutes": 0.0, "figures": []}
    if resume and state_path.exists():
        saved_record = json.loads((work / RECORD).read_text())
        if saved_record["recipe"] != recipe.record():
            raise ValueError(f"cannot resume: {work} was built with another recipe ({saved_record['recipe']})")
        record = saved_record
    elif not resume:
        state_path.unlink(missing_ok=True)
    pipe = loading.load_folder(loading.DEMO_FOLDER, torch.float32)
    pairs = teacher_pairs(pipe, recipe, work)
    torch.manual_seed(recipe.seed)
    deltas = distill.adapt(pipe.unet, recipe.rank, recipe.seed)
    optimizer = distill.optimizer_for(deltas, recipe.student)
    first = 0
    if resume and state_path.exists():
        state = torch.load(state_path)
        for name, delta in deltas.items():
            delta.load_state_dict(state["deltas"][name])
        optimizer.load_state_dict(state["optimizer"])
        first = state["step"]
        log.info("resuming the student at step %d", first)

    def on_step(step: int, loss: float) -> bool:
        nonlocal started
        if step % 10 == 0:
            log.info("student step %d/%d loss %.4f", step, recipe.student.steps, loss)
        last = step in (recipe.student.steps, stop_at)
        if step % checkpoint_every == 0 or last:
            torch.save({"deltas": {n: d.state_dict() for n, d in deltas.items()}, "optimizer": optimizer.state_dict(),
                        "step": step}, state_path)  # fmt: skip
            record["steps_done"] = step
            if eval_every and (step % eval_every == 0 or last):
                figures = distill.one_step_figures(pipe)
                record["figures"].append({"step": step, **figures})
                log.info("one step at student step %d: %s", step, figures)
            record["minutes"] = round(record["minutes"] + (time.perf_counter() - started) / 60, 1)
            started = time.perf_counter()
            write(out, distill.delta_tensors(deltas), record)
            (work / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        out_of_time = time.perf_counter() - begun > max_minutes * 60 and step % checkpoint_every == 0
        return out_of_time or step == stop_at

    distill.train_student(pipe, deltas, optimizer, pairs, recipe.student, recipe.seed, first, on_step)
    return out


def write(out: Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """The weights (``distill.pack``) and the record, swapped into ``out`` whole."""

    def fill(staging: Path) -> None:
        save_file(distill.pack(tensors), staging / WEIGHTS, {"format": "pt"})
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (staging / WEIGHTS).chmod(0o644)

    replace_folder(out, fill)


def is_built(folder: Path = SHIPPED) -> bool:
    return (folder / WEIGHTS).exists()


def load_live(demo: Any, folder: Path = SHIPPED) -> Any:
    """The live model: a new pipeline sharing ``demo``'s text encoder, autoencoder and tokenizer,
    with its own copy of the UNet carrying the distilled change (merged: no extra cost per step)
    and an LCM scheduler (its one step from the last timestep is the picture the student learnt).
    ``demo`` itself is left as it was."""
    from diffusers import LCMScheduler

    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise BadRequest([f"the live demo model's weights are missing: {path} (build them with "
                          "`python -m pipelines.live_model --seed 0`)"])  # fmt: skip
    unet = copy.deepcopy(demo.unet)
    distill.merge(unet, distill.unpack(load_file(path)))
    scheduler = LCMScheduler.from_config(demo.scheduler.config)
    # The demo has no safety checker to require (Atelier's own check is apart): without this, each
    # view of the live model warned about it in the log, once a frame.
    return type(demo)(**{**demo.components, "unet": unet, "scheduler": scheduler}, requires_safety_checker=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build Atelier's one-step live demo model from a seed.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=SHIPPED, help="folder to write (default: the shipped model)")
    parser.add_argument("--work", type=Path, help="teacher pictures and checkpoints (default: .<out>-build beside it)")
    parser.add_argument("--resume", action="store_true", help="continue a stopped build from its checkpoint")
    parser.add_argument("--pairs", type=int, default=Recipe.pairs, help="teacher pictures to draw")
    parser.add_argument("--steps", type=int, default=distill.StudentSchedule.steps, help="student training steps")
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop at a checkpoint after this")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads or os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or int(os.environ["OMP_NUM_THREADS"]))
    recipe = Recipe(seed=args.seed, pairs=args.pairs, student=distill.StudentSchedule(steps=args.steps))
    build(args.out, recipe, args.work, args.resume, args.max_minutes)


if __name__ == "__main__":
    main()
