"""Start Atelier: parse flags, build the engine, hand it to the web UI, serve.

Heavy imports (torch, diffusers, gradio) happen after the flags are parsed, so ``--help`` is instant,
and the default model loads in the background after the page already answers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from webui.guard import LoginBrake

log = logging.getLogger("atelier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Atelier: a Stable Diffusion studio in your browser.")
    web = parser.add_argument_group("web server")
    web.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    web.add_argument(
        "--listen", action="store_true", help="serve on all network interfaces (0.0.0.0), not just this machine"
    )
    web.add_argument("--share", action="store_true", help="also make a temporary public gradio.live link")
    web.add_argument("--auth", action="append", default=[], metavar="USER:PASS", help="require a login (repeatable)")
    web.add_argument("--auth-file", type=Path, help="file with one USER:PASS per line")
    web.add_argument("--api", action="store_true", help="serve the A1111-compatible REST API under /sdapi/v1")
    web.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="extra host names the server answers to (a reverse proxy's name, a DNS alias); localhost, and with"
        " --listen this machine's names and any IP address, always work; '*' turns the check off (repeatable)",
    )
    web.add_argument(
        "--cors-allow-origins",
        action="append",
        default=[],
        metavar="ORIGIN[,ORIGIN]",
        help="web sites (like https://www.photopea.com) whose pages may call this server from the browser;"
        " pages elsewhere are refused (repeatable)",
    )
    web.add_argument("--queue-size", type=int, default=64, help="jobs that may wait for the GPU at once")
    web.add_argument(
        "--image-url-allow",
        default="",
        metavar="HOST[,HOST]",
        help="hosts a prompt's {image:https://...} may fetch a reference from; '*' = any public address (never"
        " this machine or its network unless the host is named); default: links are refused",
    )
    folders = parser.add_argument_group("folders")
    folders.add_argument("--models-dir", type=Path, default=Path("models"), help="checkpoints and diffusers folders")
    folders.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="where images are saved")
    folders.add_argument("--data-dir", type=Path, default=Path("data"), help="settings and presets")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--model", default="", help="initial model (default: first local one, else the demo)")
    engine.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    engine.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    engine.add_argument("--medvram", action="store_true", help="keep only the active part of the model on the GPU")
    engine.add_argument("--lowvram", action="store_true", help="stream weights to the GPU layer by layer (slowest)")
    engine.add_argument("--xformers", action="store_true", help="use xformers attention on CUDA when installed")
    engine.add_argument("--max-models", type=int, default=3, help="models kept loaded at once")
    standards = parser.add_argument_group("content standards (README: what each mark proves)")
    standards.add_argument(
        "--no-ai-mark", action="store_true",
        help="leave out the XMP 'made by a trained algorithm' mark that every file carries by default",
    )  # fmt: skip
    standards.add_argument("--c2pa-cert", type=Path, help="sign every file's C2PA manifest with this certificate chain")
    standards.add_argument("--c2pa-key", type=Path, help="the private key of --c2pa-cert")
    standards.add_argument("--watermark", default="", metavar="MESSAGE",
                           help="invisible watermark in every picture: 12 hex digits or 6 letters")  # fmt: skip
    standards.add_argument(
        "--safety-check", default="off", choices=["off", "on", "required"],
        help="blur pictures the local safety checker (models/safety-checker) flags; 'required': callers cannot"
        " turn it off",
    )  # fmt: skip
    standards.add_argument("--blocked-terms", type=Path, metavar="FILE",
                           help="refuse prompts with a term or phrase of this file (one a line)")  # fmt: skip
    return parser.parse_args(argv)


def credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``--auth`` values and ``--auth-file`` lines as (user, password) pairs; bad entries stop the launch."""
    entries = list(args.auth)
    if args.auth_file:
        lines = args.auth_file.read_text(encoding="utf-8").splitlines()
        entries += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    pairs = []
    for entry in entries:
        user, colon, password = entry.partition(":")
        if not colon or not user or not password:
            raise SystemExit(f"--auth entries must look like USER:PASS, got {entry!r}")
        pairs.append((user, password))
    return pairs


def build_engine(args: argparse.Namespace) -> Any:
    from pipelines.engine import Engine
    from pipelines.errors import BadRequest
    from pipelines.settings import EngineSettings

    offload = "sequential" if args.lowvram else "model" if args.medvram else "none"
    settings = EngineSettings(
        models_dir=args.models_dir,
        outputs_dir=args.outputs_dir,
        default_model=args.model,
        device=args.device,
        precision=args.precision,
        attention="xformers" if args.xformers else "sdpa",
        offload=offload,
        max_models=args.max_models,
        max_queue=args.queue_size,
        image_url_allow=args.image_url_allow,
        ai_mark=not args.no_ai_mark,
        c2pa_cert=args.c2pa_cert,
        c2pa_key=args.c2pa_key,
        watermark=args.watermark,
        safety_check=args.safety_check,
        blocked_terms=args.blocked_terms,
    )
    try:
        return Engine(settings)
    except BadRequest as exc:  # a certificate, key, watermark or term list the owner named is unusable
        raise SystemExit(f"cannot start: {exc}") from exc


def serve(args: argparse.Namespace, prevent_thread_lock: bool = False) -> Any:
    """Build everything and start the server; returns the Gradio app (for tests and benches)."""
    from PIL import Image
    from starlette.middleware import Middleware

    import webui
    from presets.store import PresetLibrary
    from webui.app import CSS
    from webui.guard import HttpGuard, build_policy, split_list
    from webui.state import SettingsStore

    # Uploads are decoded by PIL: refuse decompression bombs well below PIL's own 89-megapixel limit.
    Image.MAX_IMAGE_PIXELS = 4096 * 4096 * 2
    auth = credentials(args)
    policy = build_policy(
        args.listen, split_list(args.allowed_hosts), split_list(args.cors_allow_origins), login_required=bool(auth)
    )
    engine = build_engine(args)
    library = PresetLibrary(args.data_dir)  # logs what is wrong with the user's presets file, if anything
    app = webui.build_app(engine, SettingsStore(args.data_dir), library)
    routes = webui.extra_routes(app) + (_api_routes(args, engine, library, auth, policy.brake) if args.api else [])
    # No cap on Gradio's own queue: it also holds the small events every page sends as it opens,
    # and a cap there turned people away with "busy" while no job waited. The engine caps jobs.
    app.queue(max_size=None, default_concurrency_limit=4)
    app.launch(
        server_name="0.0.0.0" if args.listen else "127.0.0.1",
        server_port=args.port,
        share=args.share,
        auth=auth or None,
        max_file_size="50mb",
        allowed_paths=[str(args.outputs_dir.resolve())],
        prevent_thread_lock=True,
        css=CSS,
        quiet=True,
        # Gradio's own "is localhost reachable" probe gives up after one 3 s HEAD of the page, which a
        # busy CPU (a job on it, a big page to render) can exceed: the server then refused to start.
        # The server is ours and local; the probe exists for notebooks. Skipping it changes nothing else.
        _frontend=False,
        app_kwargs={
            "lifespan": _closes(engine),
            "routes": routes,  # in place before the server answers: no 404s right after start
            "middleware": [Middleware(HttpGuard, policy=policy)],
            "openapi_url": None,  # the REST API serves its own schema, behind --auth (FastAPI's is open)
        },
    )
    if app.share_url:  # the tunnel forwards the link's own Host and Origin
        policy.allow_host(urlsplit(app.share_url).hostname or "")
    if (args.share or args.listen) and not auth:
        _warn_open(args, app.share_url)
    if args.api:
        log.info("REST API (AUTOMATIC1111-compatible) at %ssdapi/v1, documented at %ssdapi/docs", *[app.local_url] * 2)
    log.info("Atelier is running at %s", app.local_url)
    if args.share and not app.share_url:
        log.warning("no public link: Gradio could not create one (offline, or blocked); serving locally only")
    threading.Thread(target=_warm_up, args=(engine,), name="warm-up", daemon=True).start()
    if not prevent_thread_lock:
        app.block_thread()
    return app


def _warn_open(args: argparse.Namespace, share_url: str | None) -> None:
    """The banner for a server others can reach without a login: what they can do, and from where."""
    from webui.guard import network_addresses

    addresses = [f"http://{address}:{args.port}" for address in network_addresses()] if args.listen else []
    reachable = ", ".join([*addresses, *([share_url] if share_url else [])]) or f"port {args.port} of this machine"
    log.warning("!" * 72)
    log.warning("--share/--listen without --auth: ANYONE who can reach this server can use it and see your images")
    log.warning("They can also delete images, edit presets and settings, and drive the API (--api, gradio_client)")
    log.warning("Reachable at %s. Add --auth USER:PASS to require a login.", reachable)
    log.warning("!" * 72)


def _api_routes(
    args: argparse.Namespace, engine: Any, library: Any, auth: list[tuple[str, str]], brake: LoginBrake
) -> list[Any]:
    """The REST API's routes, built on a scratch FastAPI app and handed to Gradio's own at launch."""
    from fastapi import FastAPI

    from webui.api import mount_api

    flags = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    flags["auth"] = ["***"] * len(args.auth)  # never hand passwords to API clients
    scratch = FastAPI()
    known = len(scratch.router.routes)
    mount_api(scratch, engine, library, auth, flags, brake)
    return scratch.router.routes[known:]


def _warm_up(engine: Any) -> None:
    """Load and warm the default model after the page is up, so the first Generate does not wait."""
    try:
        engine.warm_up()
    except Exception as exc:  # the page shows the same error when the user generates
        if not engine.closed:  # a server stopped during its warm-up has nothing to report
            log.error("could not load the default model %s: %s", engine.default_model, exc)


def _closes(engine: Any) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A server lifespan that closes the engine when the server stops: its running job stops and
    nothing of it is still loading when whoever stopped the server goes on (a test, a script)."""

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    return lifespan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    try:
        serve(args)
    except (ValueError, OSError) as exc:  # a bad flag value, a missing auth file, a busy port
        raise SystemExit(f"atelier: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
