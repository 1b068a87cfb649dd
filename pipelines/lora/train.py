"""Teaching the loaded model a subject or a style: a LoRA trained on an artist's pictures, as one job
in the engine's queue, written to ``models/Lora/NAME.safetensors`` and usable at once as
``<lora:NAME:0.8>``.

    check the settings and the data (before anything queues) -> [device slot] encode every picture
    once (the autoencoder is frozen) -> LoRA on the UNet's attention (and the text encoder's, when
    asked) -> AdamW steps on the model's own noise schedule and prediction type -> sample pictures
    every N steps -> write the file in kohya's layout

The loaded model is never changed. The LoRA is trained on a *shadow* of the UNet: new module
objects that share every weight tensor of the loaded ones, so peft's wrappers go into the shadow
and the loaded modules never see them; the shared weights are only read (they are frozen for the
run, and their ``requires_grad`` flags are put back afterwards). Every other job waits for the
device slot meanwhile, as it would for a generation.

SD 1.x/2.x, the demo model and SDXL train alike; what the UNet is told besides the noisy latents
(``conditioning``) and the names in the file (``kohya``) differ by family.

Reproducible: the LoRA's start, the order of the pictures, the noise and the timesteps all come
from the seed, so the same seed and data give the same file, byte for byte, on the same machine.
On a GPU, a float16 or bfloat16 model trains under autocast: the LoRA's own weights stay float32.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from .. import catalog, samplers
from ..errors import BadRequest
from ..loading import building_modules
from . import kohya
from .conditioning import PromptConditioning, conditioning_for, encode_pictures, sdxl_problems, text_encoder_parts
from .data import DataSet, collect, folder_files, prepared, training_sizes
from .files import SUFFIX

if TYPE_CHECKING:
    from ..engine import Engine
    from ..jobs import Job
    from ..manager import LoadedModel

log = logging.getLogger(__name__)

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA example
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "atelier_training"
DEFAULT_LEARNING_RATE = 1e-4
# The built-in demo model is tiny (attention 64-128 wide): at 1e-4 a 400-step run leaves its
# pictures as they were (measured: a new colour not learnt at all), at 1e-3 it learns it. Its own
# build trained at 6e-4 to 1e-3.
DEMO_LEARNING_RATE = 1e-3
SAMPLE_CFG = 7.0
MAX_STEPS = 100_000
MAX_RANK = 256
_BAD_NAME_CHARACTERS = '/\\:<>"|?*'
_HALF = {torch.float16: "fp16", torch.bfloat16: "bf16"}  # kohya's names for mixed precision
_PROBES = 8  # fixed (picture, noise, timestep) triples the loss is measured on before and after


@dataclass(frozen=True)
class TrainSettings:
    """What the Train tab and ``/train_lora`` ask for. Zero means "the model's own value" where noted."""

    name: str
    steps: int = 400
    rank: int = 4
    alpha: float = 0.0  # 0: the rank (scale 1)
    learning_rate: float = 0.0  # 0: the model's default (1e-4; 1e-3 for the built-in demo model)
    resolution: int = 0  # 0: the model's native size
    buckets: bool = False  # aspect-ratio buckets instead of square centre crops
    batch_size: int = 1
    seed: int = -1  # -1: random (the seed used is in the file's metadata)
    train_text_encoder: bool = False
    trigger_word: str = ""
    captions: str = ""  # typed, one per picture; empty: .txt files, metadata.jsonl or file names
    folder: str = ""  # a folder on the server, besides (or instead of) uploaded files
    sample_prompts: str = ""  # one per line; empty: the first caption
    sample_every: int = 100  # 0: no sample pictures
    sample_steps: int = 20
    save_every: int = 0  # 0: the file is written at the end (and at a Stop) only
    save_precision: str = "fp16"
    overwrite: bool = False  # replace a LoRA of the same name (else the name is refused)
    model: str = ""

    def checked(self) -> TrainSettings:
        """These settings with the name tidied, or ``BadRequest`` naming every bad value."""
        problems = name_problems(self.name)
        whole = {"steps": (1, MAX_STEPS), "rank": (1, MAX_RANK), "batch_size": (1, 64), "sample_every": (0, MAX_STEPS),
                 "sample_steps": (1, 150), "save_every": (0, MAX_STEPS), "seed": (-1, 2**32 - 1)}  # fmt: skip
        for key, (low, high) in whole.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{key} must be a whole number from {low} to {high}, got {value!r}")
        if not (self.resolution == 0 or (isinstance(self.resolution, int) and 64 <= self.resolution <= 2048)):
            problems.append(f"resolution must be 0 (the model's native size) or 64 to 2048, got {self.resolution!r}")
        if not (self.learning_rate == 0 or 1e-7 <= self.learning_rate <= 1.0):
            problems.append(f"learning_rate must be 0 (the model's default) or 1e-7 to 1, got {self.learning_rate!r}")
        if not 0 <= self.alpha <= 4 * MAX_RANK:
            problems.append(f"alpha must be 0 (the rank) to {4 * MAX_RANK}, got {self.alpha!r}")
        if self.save_precision not in kohya.SAVE_DTYPES:
            problems.append(
                f"save_precision must be one of {', '.join(kohya.SAVE_DTYPES)}, got {self.save_precision!r}"
            )
        if problems:
            raise BadRequest(problems)
        return replace(self, name=self.name.strip())


def name_problems(name: str) -> list[str]:
    """Why ``name`` cannot name a LoRA file (empty: it can). It must stay one file in the LoRA folder
    and read back from a ``<lora:NAME:0.8>`` tag."""
    name = (name or "").strip()
    if not name:
        return ["give the LoRA a name"]
    bad = sorted({c for c in name if c in _BAD_NAME_CHARACTERS or ord(c) < 32})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return [f"the name {name!r} has path or tag characters ({shown}): use letters, digits, spaces, - and _"]
    if name.startswith(".") or name.endswith("."):
        return [f"the name {name!r} may not start or end with a dot"]
    if len(name) > 100:
        return [f"the name is {len(name)} characters long: 100 at most"]
    return []


@dataclass(frozen=True)
class Sample:
    step: int
    prompt: str
    image: Image.Image


@dataclass
class TrainProgress:
    """What a page shows while the job runs; written by the device thread, read by anyone."""

    phase: str = "queued"  # queued, preparing, training, sampling, saving, done, stopped
    step: int = 0
    total: int = 0
    started: float = 0.0  # when the first step began
    losses: list[float] = field(default_factory=list)  # one per step
    samples: list[Sample] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started if self.started else 0.0

    @property
    def eta_seconds(self) -> float:
        """Time left at the pace so far (sample pictures included, since they recur)."""
        return self.seconds / self.step * (self.total - self.step) if self.step else 0.0


@dataclass
class TrainResult:
    name: str  # what ``<lora:NAME>`` takes (the file's stem)
    path: Path | None  # None when Stop came before the first step
    steps_done: int
    settings: TrainSettings  # with the seed, learning rate, alpha and resolution that were used
    stopped: bool = False
    seconds: float = 0.0  # the whole job: encoding the pictures, the steps, the samples, the file
    loop_seconds: float = 0.0  # the training steps alone (samples drawn meanwhile included)
    file_bytes: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Loss on fixed pictures, noise and timesteps, before and after: a steady measure of learning
    # (the per-step loss swings with each step's random timestep).
    probe_loss_before: float = 0.0
    probe_loss_after: float = 0.0


# -- before the queue ------------------------------------------------------------------------
def default_learning_rate(engine: Engine, model_name: str = "") -> float:
    name = model_name or engine.default_model
    loaded = {model.name: model.family for model in engine.manager.loaded()}
    family = loaded.get(name, "demo" if name == catalog.BUILTIN_DEMO else "")
    return DEMO_LEARNING_RATE if family == "demo" else DEFAULT_LEARNING_RATE


def lora_path(engine: Engine, name: str) -> Path:
    return engine.loras.folder / f"{name.strip()}{SUFFIX}"


def prepare(engine: Engine, settings: TrainSettings, files: list[Path]) -> tuple[TrainSettings, DataSet]:
    """The settings checked and the data set read, or ``BadRequest`` listing every problem (bad
    values, pictures that cannot be used, a caption count that does not match, a taken name)."""
    settings = settings.checked()
    model = settings.model or engine.default_model
    resolution = settings.resolution or engine.native_size(model)
    everything = [*folder_files(settings.folder), *(Path(path) for path in files)]
    data = collect(everything, settings.captions, settings.trigger_word, min_side=max(16, resolution // 2))
    samples = [line for line in settings.sample_prompts.splitlines() if line.strip()] or data.captions[:1]
    check = engine.limits.prompt_problem  # the owner's blocked terms hold for sample pictures too
    if check and (problems := [f"sample prompt: {problem}" for problem in map(check, samples) if problem]):
        raise BadRequest(problems)
    target = lora_path(engine, settings.name)
    if target.exists() and not settings.overwrite:
        raise BadRequest(
            f"a LoRA named {settings.name!r} already exists ({target.name}): confirm replacing it, or pick another name"
        )
    return replace(settings, model=model, resolution=resolution), data


def submit(
    engine: Engine, settings: TrainSettings, files: list[Path], job: Job | None = None,
    progress: TrainProgress | None = None,
) -> Future[TrainResult]:  # fmt: skip
    """Check everything, then queue the training as one job (it waits its turn like a generation and
    holds the device until it ends; ``job.interrupt()`` stops it and keeps what was learnt)."""
    from ..jobs import Job

    settings, data = prepare(engine, settings, files)
    job = job or Job()
    progress = progress or TrainProgress()
    work = functools.partial(run, engine, settings, data, job, progress)
    size = f"LoRA {settings.name!r}: {settings.steps} steps at {settings.resolution}px on {len(data.examples)} pictures"
    return engine.submit_work(job, settings.model, work, size)


def train(
    engine: Engine, settings: TrainSettings, files: list[Path], job: Job | None = None,
    progress: TrainProgress | None = None,
) -> TrainResult:  # fmt: skip
    """``submit`` and wait for the result."""
    return submit(engine, settings, files, job, progress).result()


# -- on the device ---------------------------------------------------------------------------
def run(engine: Engine, settings: TrainSettings, data: DataSet, job: Job, progress: TrainProgress) -> TrainResult:
    """The training job (``submit`` queues it; it runs holding the device slot)."""
    started = time.perf_counter()
    progress.phase = "preparing"
    model = engine.manager.get(settings.model)
    settings = _resolved(engine, model, settings)
    job.state, job.started, job.step, job.total = "running", started, 0, settings.steps
    progress.total = settings.steps
    if job.interrupted:
        job.state, progress.phase = "interrupted", "stopped"
        return TrainResult(settings.name, None, 0, settings, stopped=True, notes=["stopped before training began"])
    trainer = _Trainer(engine, model, settings, data, job, progress)
    try:
        result = trainer.train()
    finally:
        trainer.close()
    result.seconds = time.perf_counter() - started
    job.state = "interrupted" if result.stopped else "done"
    progress.phase = "stopped" if result.stopped else "done"
    return result


def _resolved(engine: Engine, model: LoadedModel, settings: TrainSettings) -> TrainSettings:
    """The settings with every "model's own" value filled in; ``BadRequest`` for a model this
    cannot train."""
    if model.family == "sdxl" and (problems := sdxl_problems(model.name, model.pipe)):
        raise BadRequest(problems)
    if "txt2img" not in model.modes:
        raise BadRequest(f"{model.name} is an inpainting checkpoint: train a LoRA on a regular model")
    if engine.settings.offload != "none" and engine.manager.device.type != "cpu":
        raise BadRequest("training needs the whole model on the GPU: restart without --medvram/--lowvram")
    step = _size_step(model.pipe)
    resolution = max(step, settings.resolution // step * step)
    seed = settings.seed if settings.seed >= 0 else random.randint(0, 2**32 - 1)
    rate = settings.learning_rate or (DEMO_LEARNING_RATE if model.family == "demo" else DEFAULT_LEARNING_RATE)
    return replace(
        settings, resolution=resolution, seed=seed, learning_rate=rate, alpha=settings.alpha or settings.rank
    )


def _size_step(pipe: Any) -> int:
    """Picture sides must be multiples of this: the autoencoder's factor times the UNet's downsamplings."""
    return int(pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1))


def layer_shapes(model: LoadedModel, text_encoder: bool) -> dict[tuple[str, str], tuple[int, int]]:
    """(in, out) features of every layer the LoRA changes, by (part, module name)."""
    shapes: dict[tuple[str, str], tuple[int, int]] = {}
    parts = [("unet", model.pipe.unet, UNET_TARGETS)]
    if text_encoder:
        parts += [(name, getattr(model.pipe, name), TEXT_TARGETS) for name in text_encoder_parts(model.family)]
    for part, module, targets in parts:
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
                shapes[part, name] = (layer.in_features, layer.out_features)
    return shapes


def predicted_size(model: LoadedModel, rank: int, text_encoder: bool, precision: str = "fp16") -> int:
    """Bytes the file of a LoRA of ``rank`` on ``model`` takes (known before training)."""
    shapes = layer_shapes(model, text_encoder)
    naming = kohya.naming(model.family, model.pipe.unet.config)
    return kohya.predicted_bytes(shapes, rank, kohya.SAVE_DTYPES[precision], 3000, *naming)


def _shadow(module: torch.nn.Module) -> torch.nn.Module:
    """New module objects sharing every parameter and buffer of ``module`` (see the module note)."""
    memo: dict[int, Any] = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


class _Trainer:
    """One training run: the shadows with their LoRA, the encoded data, the loop, the file."""

    def __init__(
        self, engine: Engine, model: LoadedModel, settings: TrainSettings, data: DataSet, job: Job,
        progress: TrainProgress,
    ) -> None:  # fmt: skip
        from diffusers import DDPMScheduler

        self.engine, self.model, self.settings, self.data, self.job, self.progress = (
            engine, model, settings, data, job, progress
        )  # fmt: skip
        pipe = model.pipe
        self.device = engine.manager.device
        self.noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction = self.noise_schedule.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise BadRequest(f"{model.name} predicts {self.prediction!r}, which this trainer cannot learn")
        encoders = text_encoder_parts(model.family)
        # Every flag is put back by close(): the loaded model's weights are shared with the shadows.
        self._flags = [
            (p, p.requires_grad) for part in ("unet", *encoders, "vae") for p in getattr(pipe, part).parameters()
        ]
        for parameter, _ in self._flags:
            parameter.requires_grad_(False)
        self.latents: list[torch.Tensor] = []
        self.conditioning: PromptConditioning | None = None  # made once the training sizes are known
        self.sizes: list[tuple[int, int]] = []
        self.generator = torch.Generator().manual_seed(settings.seed)
        try:
            self.unet = self._with_lora(pipe.unet, UNET_TARGETS, self.generator)
            # The text encoders by part name, each a shadow with its LoRA when they are trained.
            self.text_encoders: dict[str, torch.nn.Module] = {part: getattr(pipe, part) for part in encoders}
            if settings.train_text_encoder:
                for part in encoders:
                    self.text_encoders[part] = self._with_lora(self.text_encoders[part], TEXT_TARGETS, self.generator)
            scheduler = samplers.build_scheduler(
                pipe.scheduler.config, samplers.DEFAULT_SAMPLER, samplers.DEFAULT_SCHEDULE
            )
            self.view = engine.manager.view(model, "txt2img", scheduler, own=True)  # it gets the trained parts
            self.view.register_modules(unet=self.unet, **self.text_encoders)
        except BaseException:
            self.close()  # the flags go back however the set-up failed
            raise
        self._written: Path | None = None  # the file this run wrote last (its checkpoints replace it)

    def _with_lora(self, module: torch.nn.Module, targets: tuple[str, ...], generator: torch.Generator) -> Any:
        from peft import LoraConfig, inject_adapter_in_model

        shadow = _shadow(module)
        # peft's hint says int; kohya's alphas may be fractions, and peft computes with any number.
        alpha: Any = self.settings.alpha
        config = LoraConfig(r=self.settings.rank, lora_alpha=alpha, target_modules=list(targets))
        with building_modules(), torch.random.fork_rng(devices=[]):  # peft's start draws from the global generator
            inject_adapter_in_model(config, shadow, adapter_name=ADAPTER)
        for _, layer in _lora_layers(shadow):
            # Our own start, from the seed: kaiming-uniform down (peft's and kohya's), zero up (no change
            # at step 0). Trained in float32 whatever the model's precision.
            down, up = layer.lora_A[ADAPTER].float(), layer.lora_B[ADAPTER].float()
            bound = 1.0 / math.sqrt(down.in_features)
            with torch.no_grad():
                down.weight.copy_((torch.rand(down.weight.shape, generator=generator) * 2 - 1) * bound)
                up.weight.zero_()
            down.weight.requires_grad_(True)
            up.weight.requires_grad_(True)
        return shadow.train()

    def close(self) -> None:
        for parameter, flag in self._flags:
            parameter.requires_grad_(flag)
        self.latents.clear()
        if self.conditioning is not None:
            self.conditioning.clear()

    # -- the run ---------------------------------------------------------------------------
    def train(self) -> TrainResult:
        settings, progress, job = self.settings, self.progress, self.job
        self._check_disk()
        notes = self._encode_data()
        parameters = [p for part in self._trained_parts() for p in part.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.01)
        # float16 weights: the loss is scaled so small gradients survive the backward pass.
        scaler = torch.amp.GradScaler("cuda", enabled=self.unet.dtype == torch.float16 and self.device.type == "cuda")
        probes = self._probes()
        before = self._probe_loss(probes)
        batches = self._batches()
        progress.phase, progress.started = "training", time.perf_counter()
        done = 0
        for step in range(settings.steps):
            if job.interrupted:
                break
            with self._autocast():
                loss = self._loss(next(batches))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            scaler.step(optimizer)
            scaler.update()
            done = step + 1
            progress.losses.append(float(loss.detach()))
            progress.step = job.step = done
            if settings.sample_every and (done % settings.sample_every == 0 or done == settings.steps):
                self._sample(done)
            if settings.save_every and done % settings.save_every == 0 and done < settings.steps:
                self._save(done, before, before)
        loop_seconds = time.perf_counter() - progress.started
        stopped = done < settings.steps
        if stopped:
            notes.append(f"stopped after {done} of {settings.steps} steps: the file holds what was learnt by then")
        if done == 0:
            return TrainResult(settings.name, None, 0, settings, True, losses=[], notes=[*notes, "nothing was saved"])
        after = self._probe_loss(probes)
        progress.phase = "saving"
        path, size, metadata = self._save(done, before, after)
        if path.stem != settings.name:
            notes.append(f"a LoRA named {settings.name!r} appeared meanwhile: this one is saved as {path.stem!r}")
        return TrainResult(
            path.stem, path, done, settings, stopped, file_bytes=size, metadata=metadata, losses=list(progress.losses),
            samples=list(progress.samples), notes=notes, probe_loss_before=before, probe_loss_after=after,
            loop_seconds=loop_seconds,
        )  # fmt: skip

    def _check_disk(self) -> None:
        folder = self.engine.loras.folder
        folder.mkdir(parents=True, exist_ok=True)
        needed = predicted_size(self.model, self.settings.rank, self.settings.train_text_encoder,
                                self.settings.save_precision) * 2  # fmt: skip
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise BadRequest(
                f"not enough disk space in {folder} for a rank-{self.settings.rank} LoRA: it needs about "
                f"{needed // 1024} KB, {free // 1024} KB are free"
            )

    def _trained_parts(self) -> list[torch.nn.Module]:
        return [self.unet, *self.text_encoders.values()] if self.settings.train_text_encoder else [self.unet]

    def _autocast(self) -> AbstractContextManager[Any]:
        """float16/bfloat16 matmuls on a GPU for a half-precision model (the LoRA weights and the
        optimizer stay float32); on the CPU the model's own precision, as it runs."""
        dtype = self.unet.dtype
        if self.device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    @torch.no_grad()
    def _encode_data(self) -> list[str]:
        """Every picture through the frozen autoencoder once; every caption through the frozen text
        encoders once (when they are not trained)."""
        step = _size_step(self.model.pipe)
        sizes = training_sizes(self.data, self.settings.resolution, step, self.settings.buckets)
        self.sizes = sizes
        pictures = (prepared(example, size) for example, size in zip(self.data.examples, sizes, strict=True))
        self.latents += encode_pictures(self.model.pipe.vae, pictures, self.device)
        originals = [example.image.size for example in self.data.examples]
        frozen = not self.settings.train_text_encoder
        self.conditioning = conditioning_for(self.model.family, self.view, self.device, frozen, originals, sizes)
        self.conditioning.keep(self.data.captions)
        resized = sum(example.image.size != size for example, size in zip(self.data.examples, sizes, strict=True))
        return (
            [f"{resized} of {len(sizes)} pictures were scaled and centre-cropped to their training size"]
            if resized
            else []
        )

    def _batches(self) -> Iterator[list[int]]:
        """Picture indices, batch by batch, endlessly: each pass over the data in a new order from the
        seed, a batch only ever holding pictures of one size."""
        while True:
            by_size: dict[tuple[int, int], list[int]] = {}
            for index in torch.randperm(len(self.sizes), generator=self.generator).tolist():
                by_size.setdefault(self.sizes[index], []).append(index)
            size = self.settings.batch_size
            batches = [group[i : i + size] for group in by_size.values() for i in range(0, len(group), size)]
            for order in torch.randperm(len(batches), generator=self.generator).tolist():
                yield batches[order]

    def _loss(
        self, indices: list[int], noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
    ) -> Any:
        latents = torch.stack([self.latents[i] for i in indices]).float()
        if noise is None:
            noise = torch.randn(latents.shape, generator=self.generator)
        if timesteps is None:
            timesteps = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (len(indices),),
                                      generator=self.generator)  # fmt: skip
        noise, timesteps = noise.to(self.device), timesteps.to(self.device)
        noisy = self.noise_schedule.add_noise(latents, noise, timesteps).to(self.unet.dtype)
        captions = [self.data.examples[i].caption for i in indices]
        assert self.conditioning is not None, "the data is encoded before the first loss"
        context, extra = self.conditioning.unet_inputs(captions, indices)
        predicted = self.unet(noisy, timesteps, context, **extra).sample.float()
        if self.prediction == "v_prediction":
            target = self.noise_schedule.get_velocity(latents, noise, timesteps)
        else:
            target = noise if self.prediction == "epsilon" else latents
        return F.mse_loss(predicted, target)

    def _probes(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """Fixed (picture, noise, timestep) triples, timesteps spread over the schedule."""
        generator = torch.Generator().manual_seed(self.settings.seed + 1)
        count = min(_PROBES, max(4, len(self.latents)))
        total = self.noise_schedule.config.num_train_timesteps
        return [
            (k % len(self.latents), torch.randn((1, *self.latents[k % len(self.latents)].shape), generator=generator),
             torch.tensor([int((k + 0.5) * total / count)]))
            for k in range(count)
        ]  # fmt: skip

    @torch.no_grad()
    def _probe_loss(self, probes: list[tuple[int, torch.Tensor, torch.Tensor]]) -> float:
        parts = self._trained_parts()
        for part in parts:
            part.eval()
        with self._autocast():
            losses = [float(self._loss([index], noise, timestep)) for index, noise, timestep in probes]
        for part in parts:
            part.train()
        return sum(losses) / len(losses)

    def _sample(self, step: int) -> None:
        """The sample prompts drawn with the LoRA as it is now (the first caption by default)."""
        from ..prompts import encode_prompts

        prompts = [line.strip() for line in self.settings.sample_prompts.splitlines() if line.strip()]
        prompts = prompts or self.data.captions[:1]
        self.progress.phase = "sampling"
        parts = self._trained_parts()
        for part in parts:
            part.eval()

        def stop_check(pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if self.job.interrupted:
                pipeline._interrupt = True  # diffusers' documented way out of the denoising loop
            return tensors

        try:
            for number, prompt in enumerate(prompts):
                with torch.no_grad():
                    embeds = encode_prompts(self.view, prompt, "", 1, self.engine.embeddings, SAMPLE_CFG > 1)
                image = self.view(
                    **embeds, num_inference_steps=self.settings.sample_steps, guidance_scale=SAMPLE_CFG,
                    generator=torch.Generator("cpu").manual_seed(self.settings.seed + number),
                    height=self.settings.resolution, width=self.settings.resolution, callback_on_step_end=stop_check,
                ).images[0]  # fmt: skip
                if self.job.interrupted:
                    return  # a half-drawn picture is nobody's sample
                image = self.engine.standards.screen([image]).images[0]  # safety check, watermark
                self.progress.samples.append(Sample(step, prompt, image))
                self.job.preview = image
                self.job.images.append(image)
        finally:
            for part in parts:
                part.train()
            self.progress.phase = "training"

    def _save(self, done: int, before: float, after: float) -> tuple[Path, int, dict[str, str]]:
        trained = {"unet": self.unet, **(self.text_encoders if self.settings.train_text_encoder else {})}
        layers = {
            (part, name): (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight)
            for part, module in trained.items()
            for name, layer in _lora_layers(module)
        }
        dtype = kohya.SAVE_DTYPES[self.settings.save_precision]
        tensors = kohya.kohya_state_dict(
            layers, self.settings.alpha, dtype, *kohya.naming(self.model.family, self.model.pipe.unet.config)
        )
        run = kohya.Run(
            done, self.model.name, self.model.model_hash, self.model.family, self.prediction,
            _HALF.get(self.unet.dtype, "no"), self.sizes, before, after,
        )  # fmt: skip
        metadata = kohya.training_metadata(kohya.kohya_fields(self.settings, self.data, run), tensors)
        target = lora_path(self.engine, self.settings.name)
        if target.exists() and not self.settings.overwrite and self._written != target:
            from ..files import free_name

            target = free_name(target)
        size = kohya.write(target, tensors, metadata)
        self._written = target
        log.info("LoRA %s written after %d steps (%d bytes)", target, done, size)
        return target, size, metadata


def _lora_layers(module: torch.nn.Module) -> list[tuple[str, Any]]:
    """peft's LoRA layers in ``module`` by their module names (what the kohya names are made of)."""
    from peft.tuners.lora import LoraLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]
