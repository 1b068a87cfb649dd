"""The engine: one object behind the web page, the REST API and scripts.

``Engine.generate`` reads straight through: validate -> pick the model view -> denoise (diffusers
encodes the prompt, denoises and decodes) -> post-process -> result. One generation runs on the
device at a time; a job's owner can watch its progress and stop it.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import catalog, images, infotext, loading, lora, preview, prompts, samplers
from . import seeds as seeds_noise
from .animation import job as animation_job
from .animation.settings import AnimationSettings
from .errors import BadRequest, Interrupted, OutOfMemory, QueueFull, ShuttingDown
from .guidance import job as reference_job
from .guidance.links import UrlPolicy
from .guidance.sources import ReferenceStore
from .jobs import Job, Progress, ProgressCallback, Result
from .manager import LoadedModel, PipelineManager
from .outputs import OutputStore
from .requests import Img2Img, Inpaint, Limits, Request, Txt2Img
from .settings import EngineSettings
from .standards import flagged_note, standards_for
from .upscale import hires
from .upscale.upscalers import UpscalerLibrary

log = logging.getLogger(__name__)

__all__ = ["Engine", "Job", "Progress", "ProgressCallback", "Result"]  # the jobs' types, where callers look


class Engine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.manager = PipelineManager(self.settings)
        self.standards = standards_for(self.settings)
        self.outputs = OutputStore(self.settings.outputs_dir, self.settings.image_format, self.standards.finish)
        self.references = ReferenceStore(self.settings.outputs_dir)
        self.url_policy = UrlPolicy.from_flag(self.settings.image_url_allow)
        self.embeddings = prompts.EmbeddingLibrary(self.settings.models_dir / "embeddings")
        self.upscalers = UpscalerLibrary(self.settings.models_dir, self.manager.device)
        self.loras = lora.LoraLibrary(self.settings.models_dir / "Lora")
        self.limits = Limits(max_pixels=self._pixel_budget(), prompt_problem=self.standards.prompt_problem)
        self.current_job: Job | None = None
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._device_lock = threading.Lock()  # one generation on the device at a time
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-device")
        # Jobs handed to the device thread and not started yet, oldest first. The page, the REST API
        # and scripts all wait here, so they are served in the order they asked: one fair queue.
        self._waiting: list[Job] = []
        self._waiting_lock = threading.Lock()
        self._closed = threading.Event()
        # The device thread's first work: diffusers and transformers imported on one thread, before
        # any load can start (their lazy modules break when two threads resolve them at once). The
        # page answers meanwhile; a request that comes early waits here behind it.
        self._libraries = self._device_thread.submit(loading.import_libraries)
        if warning := self.settings.offload_warning():
            log.warning(warning)

    # -- what is available -----------------------------------------------------------------
    def list_models(self) -> list[catalog.ModelEntry]:
        builtin = [catalog.ModelEntry(name, "builtin", name) for name in (catalog.BUILTIN_DEMO, catalog.BUILTIN_LIVE)]
        hub = [catalog.with_cache_state(entry) for entry in catalog.CURATED_HUB]
        return [*builtin, *catalog.list_local(self.settings.models_dir), *hub]

    def upscaler_names(self) -> list[str]:
        """The hires fix's upscalers, A1111's names first, then the model files in models/ESRGAN."""
        return self.upscalers.names()

    @property
    def default_model(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        local = [entry for entry in catalog.list_local(self.settings.models_dir) if not entry.refused]
        return local[0].name if local else catalog.BUILTIN_DEMO

    def status(self) -> dict[str, Any]:
        return {
            "device": str(self.manager.device),
            "dtype": str(self.manager.dtype).removeprefix("torch."),
            "attention": self.settings.attention,
            "offload": self.settings.offload,
            "default_model": self.default_model,
            "loaded": [m.name for m in self.manager.loaded()],
            "busy": self.busy,
            "stats": {name: vars(stats) for name, stats in self.manager.stats.items()},
        }

    def count_tokens(self, text: str) -> tuple[int, int]:
        """(tokens, chunks): the tokens ``text`` takes once its weights syntax is read, and the
        75-token chunks they are encoded in (start/end markers not counted).

        Every supported family uses CLIP's BPE vocabulary, so this needs no loaded model.
        """
        with self._tokenizer_lock:  # the page asks from many threads; build it once
            if self._tokenizer is None:
                self._tokenizer = loading.clip_tokenizer()
        return prompts.count_tokens(self._tokenizer, lora.without_tags(text), self.embeddings)

    def native_size(self, name: str = "") -> int:
        """The model's native image side in pixels, from its config, without loading weights."""
        entry = catalog.resolve(name or self.default_model, self.settings.models_dir)
        return loading.native_size(entry)

    def load(self, name: str = "", progress: Callable[[int, int, str], None] | None = None) -> LoadedModel:
        """Load a model ahead of use (e.g. when the user picks it), without running anything.

        A download runs right away; the load itself waits for the running job, since making room
        may move that job's weights off the device.
        """
        name = name or self.default_model
        self.manager.fetch(name, progress)
        return self._on_device(self._load_now, name).result()

    def warm_up(self) -> None:
        """Build the tokenizer, load the default model and run it once for one step, so that the
        first picture anyone asks for costs what every later one does (torch's first call on a
        model sets up kernels and memory pools: seconds on a CPU). The run is nobody's job: it is
        not queued, shown in progress, or stopped by anyone's Stop."""
        self.count_tokens("")
        name = self.default_model
        self.manager.fetch(name)
        self._on_device(self._warm_now, name).result()

    def _warm_now(self, name: str) -> None:
        with self._device_lock:
            model = self.manager.get(name)
            if "txt2img" not in model.modes or self.closed:  # an inpainting checkpoint has no text view
                return
            side = max(64, min(model.native_size, 256) // 64 * 64)  # warm, not slow, for big models on a CPU
            request = Txt2Img(prompt="", steps=1, width=side, height=side, model=name)
            try:
                self._run(request, [], Job(), None, 0, time.perf_counter(), save=False)
            except torch.OutOfMemoryError:
                self.manager.unload()  # the first job loads it again, and reports the shortage itself
                log.warning("not enough device memory to warm %s up; it is unloaded", name)
                return
        log.info("model %s is loaded and warm", name)

    def _on_device(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """``work`` on the device thread; ``ShuttingDown`` once the engine is closed."""
        try:
            return self._device_thread.submit(work, *args)
        except RuntimeError as exc:  # the executor refuses new work after close()
            raise ShuttingDown("the server is stopping and takes no new jobs") from exc

    def _load_now(self, name: str) -> LoadedModel:
        with self._device_lock:
            return self.manager.get(name)

    @property
    def busy(self) -> bool:
        return self._device_lock.locked()

    @property
    def loading_model(self) -> str:
        """The model being loaded right now ("" when none), for pages that tell a waiting user why.
        At start the libraries it needs are still being imported: that is part of its load."""
        return self.manager.loading or ("" if self._libraries.done() else self.default_model)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the running job, drop the waiting ones and wait until the device thread has ended,
        so that nothing of this engine is still loading when its owner moves on."""
        self._closed.set()
        with self._waiting_lock:
            for job in self._waiting:
                job.interrupt()
        self.interrupt()
        self._device_thread.shutdown(wait=True, cancel_futures=True)

    # -- generation ------------------------------------------------------------------------
    def generate(
        self,
        request: Request,
        job: Job | None = None,
        on_progress: ProgressCallback | None = None,
        preview_every: int = 0,
        save: bool = False,
    ) -> Result:
        """Run one request. ``save`` writes each image to the outputs folder as its batch finishes."""
        return self.submit(request, job, on_progress, preview_every, save).result()

    def submit(
        self,
        request: Request,
        job: Job | None = None,
        on_progress: ProgressCallback | None = None,
        preview_every: int = 0,
        save: bool = False,
    ) -> Future[Result]:
        """Queue one request and hand back its future at once, so a caller can wait without holding
        a thread. Bad requests and a full queue raise here, before anything is queued."""
        request, notes = self._checked(request)
        job = job or Job()
        queued = time.perf_counter()
        work = functools.partial(self._run, request, notes, job, on_progress, preview_every, queued, save)
        size = f"{request.width}x{request.height}, batch {request.batch_size}"
        return self._queued(job, request.model, work, size)

    def animate(
        self, settings: AnimationSettings, job: Job | None = None, on_frame: animation_job.FrameCallback | None = None
    ) -> animation_job.AnimationResult:
        """Make a clip (see ``pipelines.animation``); every frame is saved as it is made."""
        return self.submit_animation(settings, job, on_frame).result()

    def submit_animation(
        self, settings: AnimationSettings, job: Job | None = None, on_frame: animation_job.FrameCallback | None = None
    ) -> Future[animation_job.AnimationResult]:
        """Queue a clip like a generation: it waits its turn in the same queue and holds the device
        for all its frames. Bad settings raise here, before anything is queued."""
        settings, notes = settings.checked(self.limits)
        self.standards.check_ready()
        animation_job.check_loras(self, settings)
        job = job or Job()
        work = functools.partial(animation_job.run, self, settings, notes, job, on_frame)
        return self._queued(job, settings.model, work, f"{settings.width}x{settings.height}")

    def submit_work(self, job: Job, model: str, work: Callable[[], Any], size: str) -> Future[Any]:
        """Queue a script's work (an X/Y/Z plot, a list of prompts, a dataset) as one job in the one
        fair queue; ``work`` runs on the device thread holding the slot and calls ``run_now`` for each
        picture, so its pictures come out together and one Stop ends them all."""
        return self._queued(job, model, work, size)

    def run_now(
        self,
        request: Request,
        job: Job,
        on_progress: ProgressCallback | None = None,
        preview_every: int = 0,
        save: bool = False,
    ) -> Result:
        """One request, run at once: only from inside work that ``submit_work`` queued (the device
        slot is held). Raises ``BadRequest`` like ``submit`` and ``Interrupted`` when stopped."""
        request, notes = self._checked(request)
        return self._run(request, notes, job, on_progress, preview_every, time.perf_counter(), save)

    def _checked(self, request: Request) -> tuple[Request, list[str]]:
        """The request normalised, with its notes, or ``BadRequest``: its fields, its reference and
        its hires upscaler (whose names depend on the models folder) checked before it queues."""
        request, notes = request.checked(self.limits)
        self.standards.check_ready()  # a required safety check without its model: nothing is drawn
        self.loras.resolve(lora.extract(request.prompt)[1])  # malformed tags, unknown names: 422 before queueing
        request, reference_notes = reference_job.with_reference(request, self.outputs, self.references, self.url_policy)
        if request.enable_hr and not isinstance(request, Img2Img):
            request = request.replace(hr_upscaler=self.upscalers.check(request.hr_upscaler))
        return request, notes + reference_notes

    def _queued(self, job: Job, model: str, work: Callable[[], Any], size: str) -> Future[Any]:
        """Put ``work`` in the one fair queue for the device (after downloading its model, which
        never holds the device), or raise ``QueueFull``/``ShuttingDown`` at once."""
        self.manager.fetch(model or self.default_model)
        with self._waiting_lock:
            if self.closed:  # checked with the queue held: close() stops what waits under the same lock
                raise ShuttingDown("the server is stopping and takes no new jobs")
            waiting = self._still_waiting()
            if len(waiting) >= self.settings.max_queue:
                jobs = "1 job is" if len(waiting) == 1 else f"{len(waiting)} jobs are"
                raise QueueFull(
                    f"the queue is full: {jobs} waiting for the GPU (limit {self.settings.max_queue}); "
                    "try again in a minute"
                )
            self._waiting.append(job)
        # All device work runs on one thread: torch's OpenMP pools are per thread, and a dozen of them
        # (one per server worker that ever generated) made every step 2-3x slower on a small CPU.
        try:
            future = self._on_device(self._generate_now, job, work, size)
        except ShuttingDown:
            self._leave_queue(job)
            raise
        future.add_done_callback(lambda _: self._leave_queue(job))
        return future

    def queue_position(self, job: Job) -> int:
        """How many jobs run before ``job`` starts, the running one included (-1: it is not waiting)."""
        with self._waiting_lock:
            waiting = self._still_waiting()
            return waiting.index(job) + (self.current_job is not None) if job in waiting else -1

    @property
    def queue_length(self) -> int:
        with self._waiting_lock:
            return len(self._still_waiting())

    def _still_waiting(self) -> list[Job]:
        # A job stopped while it waits (its owner left) gives its place up at once; the device
        # thread skips it when its turn comes.
        return [job for job in self._waiting if not job.interrupted]

    def _leave_queue(self, job: Job) -> None:
        with self._waiting_lock:
            if job in self._waiting:
                self._waiting.remove(job)

    def _generate_now(self, job: Job, work: Callable[[], Any], size: str) -> Any:
        """``work`` under the device lock, with the job's state and out-of-memory handling."""
        out_of_memory = ""
        self._leave_queue(job)
        with self._device_lock:
            self.current_job = job
            try:
                return work()
            except Interrupted:
                job.state = "interrupted"
                raise
            except torch.OutOfMemoryError as exc:
                job.state, out_of_memory = "failed", str(exc)
            except Exception:
                job.state = "failed"
                raise
            finally:
                self.current_job = None
            # Outside the except block, so the failed run's tensors (held by the traceback) are gone
            # before memory is freed for the next job.
            log.error("out of device memory: %s", out_of_memory)
            self.manager.unload()
            raise OutOfMemory(
                f"the device ran out of memory at {size}: use a smaller size or batch, or start with --medvram"
            )

    def _run(
        self,
        request: Request,
        notes: list[str],
        job: Job,
        on_progress: ProgressCallback | None,
        preview_every: int,
        queued: float,
        save: bool,
    ) -> Result:
        started = time.perf_counter()
        if self.standards.checks(job.safety_check):
            preview_every = 0  # a preview would show the picture before the safety check has seen it
        if job.interrupted:  # stopped while it waited for the device
            raise Interrupted(f"job {job.id} was stopped before it started")
        model = self.manager.get(request.model or self.default_model)
        loaded = time.perf_counter()
        request = self._sized(request, model)
        if request.reference_image is not None and request.reference_mode == "auto":
            mode = reference_job.best_mode(model.family, self.settings.models_dir)
            request = request.replace(reference_mode=mode)
            notes.append(f"reference mode: {mode} (the best this model has)")
        if isinstance(request, Img2Img) and request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
            notes.append("seed resize applies to text to image only: the init image sets the composition here")
        first_seed = request.seed if request.seed != -1 else random.randint(0, 2**32 - 1)
        first_subseed = request.subseed if request.subseed != -1 else random.randint(0, 2**32 - 1)
        count = request.batch_size * request.batch_count
        seeds = [(first_seed + i) % 2**32 for i in range(count)]
        subseeds = [(first_subseed + i) % 2**32 for i in range(count)]
        job.state, job.started, job.step, job.images, job.paths = "running", time.perf_counter(), 0, [], []
        hires_plan = self._hires_plan(request)
        second_steps = hires_plan.steps if hires_plan else 0
        job.total = (max(1, _steps_per_batch(request)) + second_steps) * request.batch_count
        final_size = (hires_plan.width, hires_plan.height) if hires_plan else (request.width, request.height)
        self._set_vae_tiling(model, *final_size)
        extra = self.embeddings.infotext(request.prompt, request.negative_prompt)
        model_prompt, tags = lora.extract(request.prompt)
        loras = self.loras.resolve(tags)  # again: a file may have gone while the job waited
        if loras:
            extra = {**extra, "Lora hashes": self.loras.infotext_value(loras)}
        # The model reads the prompt without its tags; infotexts and saved fields keep it as written.
        model_request = request.replace(prompt=model_prompt)
        texts = [
            infotext.infotext(request, s, request.width, request.height, model.name, model.model_hash, subseed, extra)
            for s, subseed in zip(seeds, subseeds, strict=True)
        ]
        paths: list[Path] = []
        hidden: dict[int, Image.Image] = {}
        flagged: list[bool] = []
        # Applied once around every batch (and a hires pass); taken off however the job ends.
        with lora.applied(model.pipe, loras, self.loras) as applied_loras:
            for batch in range(request.batch_count):
                span = slice(batch * request.batch_size, (batch + 1) * request.batch_size)
                finished = self._denoise(
                    model, model_request, seeds[span], subseeds[span], job, on_progress, preview_every, hires_plan
                )
                if job.skipping:  # the rest of this batch was skipped: the next one runs in full
                    job.skip_done()
                    notes.append(f"batch {batch + 1} was skipped at step {job.step} and kept as it was")
                # Checked (and watermarked) before anything is saved or sent; originals stay in memory.
                screened = self.standards.screen(finished, job.safety_check)
                finished = screened.images
                notes += [note for note in screened.notes if note not in notes]
                hidden.update({len(job.images) + index: image for index, image in screened.originals.items()})
                flagged += screened.flagged
                if save:
                    fields = request.fields() | {"model": model.name}
                    saved = self.outputs.save_batch(finished, texts[span], seeds[span], fields, notes)
                    paths += saved
                    job.paths += saved
                job.images += finished
        if note := flagged_note(flagged):  # one note for the request's pictures, numbered across batches
            notes.append(note)
            log.warning("safety check: %s", note)
        job.state = "done"
        ended = time.perf_counter()
        timings = {"queue_s": started - queued, "load_s": loaded - started, "generate_s": ended - loaded}
        if loras:
            timings["lora_s"] = applied_loras.apply_seconds + applied_loras.remove_seconds
        return Result(
            list(job.images), seeds, texts, request, model.name, model.model_hash, timings, notes, paths, subseeds,
            hidden,
        )  # fmt: skip

    def _denoise(
        self,
        model: LoadedModel,
        request: Request,
        seeds: list[int],
        subseeds: list[int],
        job: Job,
        on_progress: ProgressCallback | None,
        preview_every: int,
        hires_plan: hires.HiresPlan | None = None,
    ) -> list[Image.Image]:
        """One batch: a fresh scheduler, the mode's view, the diffusers call, then compositing."""
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, request.sampler_name, request.schedule_type)
        pipe = self.manager.view(model, request.mode, scheduler)
        # Steps done before this pass, and the pass's steps (the hires fix's second pass moves both on).
        counted = [job.step, max(1, _steps_per_batch(request))]

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            done_before, per_pass = counted
            # Second-order samplers (Heun, DPM2) and PLMS call back more than once per step.
            calls = max(1, getattr(pipeline, "num_timesteps", per_pass) or per_pass)
            job.step = done_before + min(per_pass, -(-(step + 1) * per_pass // calls))
            elapsed = time.perf_counter() - job.started
            eta = elapsed / job.step * (job.total - job.step) if job.step else 0.0
            if preview_every and job.step % preview_every == 0:
                job.preview = preview.latents_to_image(
                    tensors["latents"], model.family, (request.width, request.height)
                )
            if on_progress:
                on_progress(Progress(job.id, job.step, job.total, eta, job.preview))
            # Checked last, so a Stop or Skip made while this step was reported ends the loop now.
            if job.interrupted or job.skipping:
                pipeline._interrupt = True  # diffusers' documented way to leave the denoising loop
            return tensors

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = {
            "num_inference_steps": request.steps,
            "guidance_scale": request.cfg_scale,
            "num_images_per_prompt": len(seeds),
            "generator": generators,
            "callback_on_step_end": on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
            "height": request.height,
            "width": request.width,
        }
        # A1111's prompt syntax (weights, BREAK, embeddings, any length) read into embeddings here.
        kwargs |= prompts.encode_prompts(
            pipe, request.prompt, request.negative_prompt, request.clip_skip, self.embeddings, request.cfg_scale > 1
        )
        keep_outside: tuple[Image.Image, Image.Image] | None = None  # inpaint: the original and its soft mask
        if isinstance(request, Img2Img):
            original = images.fit(_given(request.init_image), request.width, request.height, request.resize_mode)
            kwargs.update(image=original, strength=request.denoising_strength)
            if isinstance(request, Inpaint):
                mask = images.prepare_mask(
                    _given(request.mask), request.width, request.height, request.invert_mask, request.resize_mode
                )
                soft_mask = images.blur_mask(mask, request.mask_blur)
                start = images.fill_masked(original, mask, request.masked_content, seeds[0])
                kwargs.update(image=start, mask_image=soft_mask)
                if request.only_masked:
                    kwargs["padding_mask_crop"] = request.only_masked_padding
                keep_outside = original, soft_mask
        # With too little strength for even one step, the artist asked for the picture unchanged.
        unchanged = _steps_per_batch(request) < 1
        if unchanged:
            result = [kwargs["image"].copy() for _ in seeds]
        else:
            with (
                reference_job.guided(pipe, model.family, request, kwargs, self.settings.models_dir),
                seeds_noise.varied(pipe, isinstance(request, Img2Img), seeds, subseeds, request.subseed_strength,
                                   (request.seed_resize_from_w, request.seed_resize_from_h), kwargs),
            ):  # fmt: skip
                if hires_plan is not None:
                    kwargs["output_type"] = hires_plan.first_output_type
                result = pipe(**kwargs).images
        if hires_plan is not None and not job.interrupted:
            result = self._hires_pass(model, request, hires_plan, result, kwargs, counted, job, (seeds, subseeds))
        if job.interrupted:
            # diffusers still decodes a half-done image after an interrupt; nobody should get it.
            raise Interrupted(f"job {job.id} was stopped at step {job.step} of {job.total}")
        if keep_outside is not None:
            original, soft_mask = keep_outside
            result = [images.composite(original, image, soft_mask) for image in result]
        return result

    def _hires_pass(
        self,
        model: LoadedModel,
        request: Request,
        plan: hires.HiresPlan,
        first: Any,
        kwargs: dict[str, Any],
        counted: list[int],
        job: Job,
        noise_seeds: tuple[list[int], list[int]],
    ) -> list[Image.Image]:
        """The hires fix's second pass: the first pass's pictures (or latents) upscaled and redrawn by
        the image-to-image view, its noise drawn from the same seeds and variation seeds as A1111's.
        A Skip during the first pass keeps the first pass as it is."""
        if job.skipping:
            return hires.decode_latents(model.pipe, first) if isinstance(first, torch.Tensor) else list(first)
        counted[:] = [counted[0] + request.steps, max(1, plan.steps)]
        scheduler = samplers.build_scheduler(model.pipe.scheduler.config, request.sampler_name, request.schedule_type)
        view = self.manager.view(model, "img2img", scheduler)
        # The first pass's reference came off with its call: it is installed again at the final size.
        second = {name: value for name, value in kwargs.items() if name != "ip_adapter_image"}
        second |= {"width": plan.width, "height": plan.height}
        seeds, subseeds = noise_seeds
        with (
            reference_job.guided(view, model.family, request, second, self.settings.models_dir, plan.steps),
            seeds_noise.varied(view, True, seeds, subseeds, request.subseed_strength, (0, 0), second),
        ):
            return hires.second_pass(view, first, plan, self.upscalers, **second)

    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop the running job (only if it is ``job_id``, when given). True if one was stopped."""
        job = self.current_job
        if job is None or (job_id is not None and job.id != job_id):
            return False
        job.interrupt()
        return True

    def skip(self, job_id: str | None = None) -> bool:
        """Skip the rest of the running job's current batch (only if it is ``job_id``, when given)."""
        job = self.current_job
        if job is None or (job_id is not None and job.id != job_id):
            return False
        job.skip()
        return True

    # -- helpers ---------------------------------------------------------------------------
    def _sized(self, request: Request, model: LoadedModel) -> Request:
        """Fill in a size of 0: the init image's size for img2img/inpaint, else the model's native one."""
        if request.width and request.height:
            return request
        width = height = model.native_size
        if isinstance(request, Img2Img) and request.init_image is not None:
            width, height = (max(64, side // 8 * 8) for side in request.init_image.size)
        sized = request.replace(width=request.width or width, height=request.height or height)
        sized, _ = sized.checked(self.limits)
        return sized

    def _hires_plan(self, request: Request) -> hires.HiresPlan | None:
        """The hires fix's sizes and steps, for a text-to-image request that asks for it."""
        if isinstance(request, Img2Img) or not request.enable_hr:
            return None
        return hires.plan(
            request.width, request.height, steps=request.steps, hr_scale=request.hr_scale,
            hr_resize_x=request.hr_resize_x, hr_resize_y=request.hr_resize_y, hr_upscaler=request.hr_upscaler,
            hr_second_pass_steps=request.hr_second_pass_steps, denoising_strength=request.denoising_strength,
            limits=self.limits, upscalers=self.upscalers,
        )  # fmt: skip

    def _set_vae_tiling(self, model: LoadedModel, width: int, height: int) -> None:
        vae = model.pipe.vae
        if width * height > self.settings.vae_tiling_pixels:
            vae.enable_tiling()
        else:
            vae.disable_tiling()

    def _pixel_budget(self) -> int:
        """Largest image area allowed, from the device's memory (SD needs ~1 GB per megapixel at fp16)."""
        if self.manager.device.type == "cuda":
            gigabytes = torch.cuda.get_device_properties(self.manager.device).total_memory / 1024**3
            return int(max(1.0, gigabytes / 2) * 1024 * 1024)
        return 2048 * 2048


def _given(image: Image.Image | None) -> Image.Image:
    """An image ``Request.checked`` made sure of (it refuses img2img and inpaint requests without one)."""
    if image is None:
        raise BadRequest("this mode needs an image")
    return image


def _steps_per_batch(request: Request) -> int:
    if isinstance(request, Img2Img):
        return int(request.steps * request.denoising_strength)
    return request.steps
