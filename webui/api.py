"""AUTOMATIC1111-compatible REST API under ``/sdapi/v1`` (``--api``): same engine, same GPU queue.

Clients written for A1111 (webuiapi, chat bots, Krita and Photoshop plugins) send many fields
Atelier does not use; those are accepted and ignored (logged once each), never a 422. Errors are
4xx JSON bodies that say what was wrong. With ``--auth`` the API wants HTTP basic credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image

from pipelines import infotext, samplers
from pipelines.engine import Engine, Job, Result
from pipelines.errors import AtelierError, BadRequest, QueueFull
from pipelines.outputs import UNREADABLE, Finish, image_metadata, png_bytes
from pipelines.requests import MASKED_CONTENT, RESIZE_MODES, Img2Img, Inpaint, Txt2Img
from pipelines.xyz.job import from_a1111_script, submit_plot
from presets.store import PresetError, PresetLibrary

from .api_lists import add_list_routes
from .guard import LoginBrake, client_address, too_many_failures

log = logging.getLogger(__name__)

MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_BODY_BYTES = 150 * 2**20  # two 50 MB pictures in base64, with room for the rest
DISCONNECT_POLL_SECONDS = 0.25
# A1111 request field -> Atelier field, for fields that mean the same under another name.
RENAMED = {"n_iter": "batch_count", "scheduler": "schedule_type", "inpainting_mask_invert": "invert_mask",
           "inpaint_full_res": "only_masked", "inpaint_full_res_padding": "only_masked_padding"}  # fmt: skip
USED = {"prompt", "negative_prompt", "styles", "seed", "sampler_name", "sampler_index", "batch_size", "steps",
        "cfg_scale", "width", "height", "denoising_strength", "clip_skip", "override_settings", "send_images",
        "save_images", "init_images", "resize_mode", "mask", "mask_blur", "inpainting_fill", "include_init_images",
        "alwayson_scripts", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "enable_hr",
        "hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscaler", "hr_second_pass_steps", "script_name",
        "script_args", "safety_check", *RENAMED}  # fmt: skip
# sd-webui-controlnet's reference modules -> Atelier's reference modes; any "ip-adapter..." module is IP-Adapter.
CONTROLNET_MODULES = {"reference_only": "reference-only", "reference_adain": "reference-adain",
                      "reference_adain+attn": "reference-adain+attn"}  # fmt: skip
# threshold_a values that mean "not set": the extension's -1, and webuiapi's default (made for other modules)
UNSET_THRESHOLDS = (-1, 64)


_NOBODY = object()  # the owner of a job no REST call started


class ApiState:
    """What the API remembers between calls: fields already reported as ignored, and who started
    which running REST job (with --auth, a REST user may stop and watch only its own jobs)."""

    def __init__(self, per_user: bool) -> None:
        self.ignored: set[str] = set()
        # With --auth each user has their own jobs; without it there is one anonymous user, who may stop
        # any job (A1111's behaviour).
        self.per_user = per_user
        self.owners: dict[str, str | None] = {}  # REST job id -> the user that started it

    def owns(self, user: str | None, job: Job) -> bool:
        # one lookup: the job may finish (and leave ``owners``) on the event loop meanwhile
        return not self.per_user or self.owners.get(job.id, _NOBODY) == user

    def note_ignored(self, payload: dict[str, Any]) -> None:
        new = sorted(set(payload) - USED - self.ignored)
        if new:
            self.ignored.update(new)
            log.info("REST API: ignoring fields Atelier does not use: %s", ", ".join(new))


def error(status: int, kind: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail, "errors": detail}, status_code=status)


def decode_image(data: Any, what: str) -> Image.Image:
    """A base64 image (data URLs too) -> RGB/L PIL image, with a pixel limit against decompression bombs."""
    if not isinstance(data, str) or not data.strip():
        raise BadRequest(f"{what} must be a base64-encoded image, got {type(data).__name__}")
    raw_text = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(raw_text, validate=False)
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            raise BadRequest(f"{what} is {image.width}x{image.height}: larger than {MAX_UPLOAD_PIXELS} pixels")
        image.load()
    except BadRequest:
        raise
    except Image.DecompressionBombError as exc:
        raise BadRequest(f"{what} is larger than {MAX_UPLOAD_PIXELS} pixels ({exc})") from exc
    except (binascii.Error, OSError, ValueError) as exc:
        raise BadRequest(f"{what} is not a readable image ({exc})") from exc
    return image


def encode_png(
    image: Image.Image, text: str, fields: dict[str, Any] | None = None, finish: Finish | None = None
) -> str:
    """A base64 PNG carrying A1111's infotext and, like saved files, Atelier's full request; ``finish``
    (the engine's ``outputs.finish``) adds the marks every file leaving the server carries."""
    return base64.b64encode(png_bytes(image, text, fields, finish)).decode()


def _number(payload: dict[str, Any], name: str, kind: Callable[[Any], Any], default: Any) -> Any:
    value = payload.get(name, default)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(1e400), float(10**400)
        raise BadRequest(f"{name} must be a number, got {value!r}") from exc


def build_request(payload: dict[str, Any], library: PresetLibrary, mode: str) -> Txt2Img:
    """A1111 JSON -> Atelier request; styles applied the way A1111 applies them."""
    prompt, negative = str(payload.get("prompt") or ""), str(payload.get("negative_prompt") or "")
    styles = payload.get("styles") or []
    if not isinstance(styles, list) or not all(isinstance(style, str) for style in styles):
        raise BadRequest(f"styles must be a list of style names, got {json.dumps(styles)[:80]}")
    if styles:
        known = {s.name for s in library.styles()}
        try:
            prompt, negative = library.compose(
                prompt, negative, [s for s in styles if s in known], [s for s in styles if s not in known]
            )
        except PresetError as exc:
            raise BadRequest(str(exc)) from exc
    settings = payload.get("override_settings") or {}
    if not isinstance(settings, dict):
        raise BadRequest(f"override_settings must be an object of setting names and values, got {settings!r:.80}")
    fields: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative,
        "model": str(settings.get("sd_model_checkpoint") or ""),
        "sampler_name": str(payload.get("sampler_name") or payload.get("sampler_index") or samplers.DEFAULT_SAMPLER),
        "schedule_type": str(payload.get("scheduler") or "Automatic"),
        "steps": _number(payload, "steps", int, 50), "cfg_scale": _number(payload, "cfg_scale", float, 7.0),
        # A size left out is 0: the engine uses the model's native size (or the init image's).
        "width": _number(payload, "width", int, 0), "height": _number(payload, "height", int, 0),
        "seed": _number(payload, "seed", int, -1), "batch_size": _number(payload, "batch_size", int, 1),
        "batch_count": _number(payload, "n_iter", int, 1),
        "clip_skip": _number(payload, "clip_skip", int, int(settings.get("CLIP_stop_at_last_layers") or 1)),
        "subseed": _number(payload, "subseed", int, -1),
        "subseed_strength": _number(payload, "subseed_strength", float, 0.0),
        "seed_resize_from_w": _number(payload, "seed_resize_from_w", int, -1),
        "seed_resize_from_h": _number(payload, "seed_resize_from_h", int, -1),
    }  # fmt: skip
    fields |= reference_unit(payload.get("alwayson_scripts"))
    if mode == "txt2img":
        return Txt2Img(**fields, **_hires_fields(payload))
    images = payload.get("init_images") or []
    if not isinstance(images, list) or not images:
        raise BadRequest("img2img needs init_images: a list with one base64 image")
    # A1111's 3 is "just resize (latent upscale)": the nearest Atelier has is "just resize".
    resize = _number(payload, "resize_mode", int, 0)
    fields |= {
        "init_image": decode_image(images[0], "init_images[0]").convert("RGB"),
        "denoising_strength": _number(payload, "denoising_strength", float, 0.75),
        "resize_mode": RESIZE_MODES[resize if 0 <= resize < 3 else 0],
    }
    if payload.get("mask") in (None, ""):
        return Img2Img(**fields)
    fill = _number(payload, "inpainting_fill", int, 1)
    return Inpaint(
        **fields,
        mask=decode_image(payload["mask"], "mask"),
        mask_blur=_number(payload, "mask_blur", int, 4),
        only_masked=bool(payload.get("inpaint_full_res", True)),
        only_masked_padding=_number(payload, "inpaint_full_res_padding", int, 32),
        masked_content=MASKED_CONTENT[fill] if 0 <= fill < len(MASKED_CONTENT) else "original",
        invert_mask=bool(_number(payload, "inpainting_mask_invert", int, 0)),
    )


def _hires_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """A1111's hires fix fields, under their names (an unset upscaler is A1111's default, Latent)."""
    return {
        "enable_hr": bool(payload.get("enable_hr", False)),
        "hr_scale": _number(payload, "hr_scale", float, 2.0),
        "hr_resize_x": _number(payload, "hr_resize_x", int, 0),
        "hr_resize_y": _number(payload, "hr_resize_y", int, 0),
        "hr_upscaler": str(payload.get("hr_upscaler") or "Latent"),
        "hr_second_pass_steps": _number(payload, "hr_second_pass_steps", int, 0),
        "denoising_strength": _number(payload, "denoising_strength", float, 0.7),
    }


def reference_unit(scripts: Any) -> dict[str, Any]:
    """Reference fields from an sd-webui-controlnet unit in ``alwayson_scripts.controlnet.args`` (the
    shape webuiapi's ``ControlNetUnit`` sends): module, image, weight, threshold_a (style fidelity),
    guidance_start/end. Units that are not enabled are skipped; only reference modules run here."""
    if scripts in (None, {}):
        return {}
    if not isinstance(scripts, dict):
        raise BadRequest(f"alwayson_scripts must be an object of script names, got {json.dumps(scripts)[:80]}")
    controlnet = scripts.get("controlnet") or scripts.get("ControlNet")
    if controlnet is None:
        return {}
    units = controlnet.get("args") if isinstance(controlnet, dict) else None
    if not isinstance(units, list) or not all(isinstance(unit, dict) for unit in units):
        raise BadRequest("alwayson_scripts.controlnet.args must be a list of ControlNet units (objects)")
    enabled = [unit for unit in units if unit.get("enabled", True) and str(unit.get("module", "none")) != "none"]
    if not enabled:
        return {}
    if len(enabled) > 1:
        raise BadRequest(f"one reference unit per request: {len(enabled)} ControlNet units are enabled")
    unit = enabled[0]
    module = str(unit.get("module"))
    known = ", ".join([*CONTROLNET_MODULES, "ip-adapter"])
    if module not in CONTROLNET_MODULES and not module.startswith("ip-adapter"):
        raise BadRequest(f"ControlNet module {module!r} is not available here; Atelier runs {known}")
    picture = unit.get("image") or unit.get("input_image")
    if isinstance(picture, dict):  # the extension also takes {"image": ..., "mask": ...}
        picture = picture.get("image")
    if not picture:
        raise BadRequest(f"the {module} unit needs an image (base64)")
    fidelity = _number(unit, "threshold_a", float, 0.5)
    return {
        "reference_image": decode_image(picture, "alwayson_scripts.controlnet.args[].image").convert("RGB"),
        "reference_mode": CONTROLNET_MODULES.get(module, "ip-adapter"),
        "reference_strength": _number(unit, "weight", float, 1.0),
        "reference_fidelity": 0.5 if fidelity in UNSET_THRESHOLDS else fidelity,
        "reference_start": _number(unit, "guidance_start", float, 0.0),
        "reference_end": _number(unit, "guidance_end", float, 1.0),
    }


def encoded_images(result: Result, finish: Finish) -> list[str]:
    fields = result.request.fields() | {"model": result.model}
    triples = zip(result.images, result.infotexts, result.seeds, strict=True)
    return [encode_png(image, text, fields | {"seed": seed}, finish) for image, text, seed in triples]


def response(result: Result, payload: dict[str, Any], engine: Engine) -> dict[str, Any]:
    request = result.request
    subseeds = result.subseeds or [-1] * len(result.seeds)
    info = {
        "prompt": request.prompt, "all_prompts": [request.prompt] * len(result.seeds),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(result.seeds),
        "seed": result.seeds[0], "all_seeds": result.seeds, "subseed": subseeds[0], "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength, "width": request.width, "height": request.height,
        "sampler_name": request.sampler_name,
        "scheduler": request.schedule_type, "cfg_scale": request.cfg_scale, "steps": request.steps,
        "batch_size": request.batch_size, "restore_faces": False, "sd_model_name": result.model,
        "sd_model_hash": result.model_hash, "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": getattr(request, "denoising_strength", None), "clip_skip": request.clip_skip,
        "infotexts": result.infotexts, "styles": payload.get("styles") or [], "notes": result.notes,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "is_using_inpainting_conditioning": False,
        "version": infotext.VERSION,
    }  # fmt: skip
    send = payload.get("send_images", True)
    images = encoded_images(result, engine.outputs.finish) if send else []
    if payload.get("include_init_images") and isinstance(request, Img2Img) and request.init_image is not None:
        images += [encode_png(request.init_image, "")]  # the caller's own picture, sent back: not ours to mark
    parameters = {k: v for k, v in payload.items() if k not in ("init_images", "mask")}
    parameters |= {"width": request.width, "height": request.height}  # the size used, when left to the model
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


def mount_api(
    app: FastAPI,
    engine: Engine,
    library: PresetLibrary,
    users: list[tuple[str, str]],
    flags: dict[str, Any],
    brake: LoginBrake | None = None,
) -> None:
    """Add the routes to Gradio's FastAPI app (they do not pass Gradio's login: basic auth guards them)."""
    guard = _auth_guard(users, brake or LoginBrake())
    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(guard)])
    state = ApiState(per_user=bool(users))

    def generate(mode: str) -> Callable[..., Any]:
        async def route(request: Request, user: str | None = Depends(guard)) -> Any:
            payload = await _json(request)
            if isinstance(payload, JSONResponse):
                return payload
            state.note_ignored(payload)
            job = Job()
            state.owners[job.id] = user
            try:
                job_request = build_request(payload, library, mode)
                job.safety_check = _safety_wish(payload)
                save = bool(payload.get("save_images"))
                submit = _submitter(engine, payload, job_request, job, save)
                result = await _unless_gone(request, job, submit)
            except AtelierError as exc:
                return _error_for(exc)
            finally:
                del state.owners[job.id]
            return response(result, payload, engine)

        return route

    router.add_api_route("/txt2img", generate("txt2img"), methods=["POST"], summary="Text to image (A1111 fields)")
    router.add_api_route("/img2img", generate("img2img"), methods=["POST"], summary="Image to image / inpaint")
    _add_info_routes(router, engine, library, flags)
    add_list_routes(router, engine)
    _add_job_routes(router, engine, state, guard)
    app.include_router(router)

    def docs() -> Any:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="Atelier REST API")

    # The schema and its page describe every route: with --auth, only for those who may call them.
    login = [Depends(guard)]
    app.add_api_route("/sdapi/docs", docs, methods=["GET"], include_in_schema=False, dependencies=login)
    app.add_api_route("/openapi.json", app.openapi, methods=["GET"], include_in_schema=False, dependencies=login)


def _safety_wish(payload: dict[str, Any]) -> bool | None:
    """``safety_check`` (true/false) in a request: the caller's wish; the server's ``required`` wins."""
    wish = payload.get("safety_check")
    if wish is not None and not isinstance(wish, bool):
        raise BadRequest(f"safety_check must be true or false, got {wish!r}")
    return wish


def _submitter(engine: Engine, payload: dict[str, Any], request: Txt2Img, job: Job, save: bool) -> Callable[[], Any]:
    """How a REST call runs: as one picture job, or as the script it names (A1111's ``script_name``:
    the X/Y/Z plot, whose grid comes first among the images). Other scripts are refused by name."""
    plot = from_a1111_script(payload.get("script_name"), payload.get("script_args"), request)
    if plot is not None:
        settings = plot.replace(save=save)
        return lambda: submit_plot(engine, settings, job, as_result=True)
    if payload.get("script_name"):
        raise BadRequest(f"script {payload['script_name']!r} is not available here; Atelier runs 'x/y/z plot'")
    return lambda: engine.submit(request, job, save=save)


def _error_for(exc: AtelierError) -> JSONResponse:
    response = error(exc.http_status if exc.http_status in (503, 507) or exc.http_status < 500 else 500,
                     type(exc).__name__, str(exc))  # fmt: skip
    if isinstance(exc, QueueFull):
        response.headers["Retry-After"] = "30"
    return response


async def _unless_gone(request: Request, job: Job, submit: Callable[[], Future[Result]]) -> Result:
    """Queue the job and wait for it without holding a thread; stop it if the client hangs up
    first, so a script that gave up does not keep the GPU (or its place in the queue) from others."""
    from starlette.concurrency import run_in_threadpool

    future = asyncio.wrap_future(await run_in_threadpool(submit))  # checks and downloads, no waiting
    while True:
        done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return future.result()
        if not job.interrupted and await request.is_disconnected():
            log.info("REST client hung up: stopping its job %s", job.id)
            job.interrupt()


def _auth_guard(users: list[tuple[str, str]], brake: LoginBrake) -> Callable[..., str | None]:
    """HTTP basic auth, read as UTF-8 (RFC 7617; FastAPI's HTTPBasic only reads ASCII), compared as bytes.

    Returns the user's name (None without --auth). Wrong credentials count against the client's
    address in ``brake``, shared with the page's login form."""
    accounts = [(user.encode(), password.encode()) for user, password in users]

    def guard(request: Request) -> str | None:
        if not accounts:
            return None
        login_needed = HTTPException(
            401, "this server needs a user name and password", {"WWW-Authenticate": 'Basic charset="UTF-8"'}
        )
        if "authorization" not in request.headers:  # a first call without credentials is no guess
            raise login_needed
        address = client_address(request.scope)
        wait = brake.admit(address)
        if wait > 0:
            detail, seconds = too_many_failures(address, wait)
            raise HTTPException(429, detail, {"Retry-After": str(seconds)})
        given = _basic_credentials(request.headers["authorization"])
        if given is not None and any(_same(given, account) for account in accounts):
            brake.succeeded(address)
            return given[0].decode(errors="replace")
        brake.failed(address, "REST API")
        raise login_needed

    return guard


def _basic_credentials(header: str) -> tuple[bytes, bytes] | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(token.strip(), validate=True).partition(b":")
    except (ValueError, binascii.Error):
        return None
    return (user, password) if colon else None


def _same(given: tuple[bytes, bytes], account: tuple[bytes, bytes]) -> bool:
    # Both parts compared every time (& not and): the answer's timing does not tell which was wrong.
    return secrets.compare_digest(given[0], account[0]) & secrets.compare_digest(given[1], account[1])


async def _json(request: Request) -> dict[str, Any] | JSONResponse:
    too_big = error(413, "PayloadTooLarge", f"the body is larger than {MAX_BODY_BYTES // 2**20} MB")
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        return too_big
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: chunked bodies have no length header
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return too_big
    try:
        payload = json.loads(bytes(body) or b"{}")
    except RecursionError:
        return error(400, "BadRequest", "the body is nested too deeply to read")
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, "BadRequest", f"the body is not valid JSON ({exc})")
    if not isinstance(payload, dict):
        return error(400, "BadRequest", f"the body must be a JSON object, got {type(payload).__name__}")
    return payload


def _add_info_routes(router: APIRouter, engine: Engine, library: PresetLibrary, flags: dict[str, Any]) -> None:
    def sd_models() -> list[dict[str, Any]]:
        usable = [e for e in engine.list_models() if not e.refused and (e.source != "hub" or e.cached)]
        return [{"title": e.name, "model_name": e.name, "hash": None, "sha256": None, "filename": e.location,
                 "config": None} for e in usable]  # fmt: skip

    def options() -> dict[str, Any]:
        return {"sd_model_checkpoint": engine.default_model, "samples_format": engine.outputs.image_format,
                "outdir_samples": str(engine.settings.outputs_dir), "CLIP_stop_at_last_layers": 1}  # fmt: skip

    async def set_options(request: Request) -> Any:
        payload = await _json(request)
        if isinstance(payload, JSONResponse):
            return payload
        name = payload.get("sd_model_checkpoint")
        if name:
            from starlette.concurrency import run_in_threadpool

            try:
                await run_in_threadpool(engine.load, str(name))
            except AtelierError as exc:
                return _error_for(exc)
            engine.settings.default_model = str(name)
        return None

    async def png_info(request: Request) -> Any:
        payload = await _json(request)
        if isinstance(payload, JSONResponse):
            return payload
        try:
            image = decode_image(payload.get("image"), "image")
        except BadRequest as exc:
            return error(422, "BadRequest", str(exc))
        try:
            items = {k: v for k, v in (getattr(image, "text", {}) or {}).items() if isinstance(v, str)}
        except UNREADABLE:  # damaged chunks: image_metadata below names them as unreadable
            items = {}
        text = image_metadata(image).get("parameters", "")
        parameters = infotext.parse_infotext(text) if text else {}
        if parameters:  # A1111's /png-info names the prompts "Prompt" and "Negative prompt"
            prompts = {"Prompt": parameters.pop("prompt"), "Negative prompt": parameters.pop("negative_prompt")}
            parameters = prompts | parameters
        items.pop("parameters", None)  # as A1111: items are the image's other text chunks
        return {"info": text, "items": items, "parameters": parameters}

    def styles() -> list[dict[str, str]]:
        found = [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in library.styles()]
        return found + [
            {"name": n.name, "prompt": "", "negative_prompt": n.negative_prompt} for n in library.negatives()
        ]

    def memory() -> dict[str, Any]:
        import torch

        page, pages = _sysconf("SC_PAGE_SIZE"), _sysconf("SC_PHYS_PAGES")
        available = _sysconf("SC_AVPHYS_PAGES")
        ram = {"total": page * pages, "free": page * available, "used": page * (pages - available)}
        if not torch.cuda.is_available():
            return {"ram": ram, "cuda": {"error": "no CUDA device"}}
        free, total = torch.cuda.mem_get_info()
        return {"ram": ram, "cuda": {"system": {"free": free, "used": total - free, "total": total}}}

    router.add_api_route("/sd-models", sd_models, methods=["GET"])
    router.add_api_route("/refresh-checkpoints", lambda: None, methods=["POST"])
    router.add_api_route(
        "/samplers",
        lambda: [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in samplers.SAMPLERS],
        methods=["GET"],
    )
    router.add_api_route(
        "/schedulers",
        lambda: [{"name": n, "label": n, "aliases": None} for n in samplers.SCHEDULE_TYPES],
        methods=["GET"],
    )
    router.add_api_route("/options", options, methods=["GET"])
    router.add_api_route("/options", set_options, methods=["POST"])
    router.add_api_route("/png-info", png_info, methods=["POST"])
    router.add_api_route("/prompt-styles", styles, methods=["GET"])
    router.add_api_route("/cmd-flags", lambda: flags, methods=["GET"])
    router.add_api_route("/memory", memory, methods=["GET"])


def _add_job_routes(router: APIRouter, engine: Engine, state: ApiState, guard: Callable[..., str | None]) -> None:
    """Progress, interrupt and skip. With --auth they act on the caller's own REST jobs only: others'
    jobs show as running, without their id or preview, and cannot be stopped from here."""

    def progress(user: str | None = Depends(guard)) -> dict[str, Any]:
        job = engine.current_job
        if job is None or not job.total:
            idle = {"job_count": engine.queue_length, "interrupted": False}
            return {"progress": 0.0, "eta_relative": 0.0, "state": idle, "current_image": None, "textinfo": None}
        mine = state.owns(user, job)
        done = job.step / job.total
        elapsed = time.perf_counter() - job.started
        preview = encode_png(job.preview, "", None, engine.outputs.finish) if mine and job.preview is not None else None
        state_now: dict[str, Any] = {"skipped": job.skipping, "interrupted": job.interrupted,
                     "job": job.id if mine else "", "job_count": 1 + engine.queue_length, "job_no": 0,
                     "sampling_step": job.step, "sampling_steps": job.total,
                     "job_timestamp": time.strftime("%Y%m%d%H%M%S")}  # fmt: skip
        eta = elapsed / done - elapsed if done else 0.0
        return {"progress": done, "eta_relative": eta, "state": state_now, "current_image": preview,
                "textinfo": f"Step {job.step}/{job.total}"}  # fmt: skip

    def stop(user: str | None = Depends(guard)) -> None:
        job = engine.current_job
        if job is not None and state.owns(user, job):
            engine.interrupt(job.id)

    def skip(user: str | None = Depends(guard)) -> None:
        job = engine.current_job
        if job is not None and state.owns(user, job):
            engine.skip(job.id)

    router.add_api_route("/progress", progress, methods=["GET"])
    router.add_api_route("/interrupt", stop, methods=["POST"])
    router.add_api_route("/skip", skip, methods=["POST"])


def _sysconf(name: str) -> int:
    import os

    try:
        return int(os.sysconf(name))
    except (ValueError, OSError, AttributeError):
        return 0
