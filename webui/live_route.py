"""The page's fast road for live frames in Text to Image.

A Gradio event costs about a tenth of a second on a small CPU before and after the work (every
watched widget is sent and preprocessed, the picture is written to Gradio's cache and fetched again),
which is as long as a one-step frame itself. So in Text to Image the page's own script posts the
watched fields, by name, to ``FRAME_PATH`` the moment they change and shows the answer, a picture
inline, itself. Requests still go through the session's ``LiveSlot``: a burst of keys runs its newest
request only, the others come back at once with 204. Inpaint's canvas keeps the Gradio event (its
strokes are pictures the page would have to upload first).

The road answers to the same people as the page: with ``--auth`` the login's cookie is required,
and the HTTP guard's Host and Origin checks run before it, as for every request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from gradio.utils import get_upload_folder
from PIL import Image
from starlette.concurrency import run_in_threadpool

from pipelines.engine import Engine
from pipelines.errors import AtelierError, BadRequest
from pipelines.live import LiveSessions
from presets.store import PresetError, PresetLibrary

from .shown import data_url

log = logging.getLogger(__name__)

FRAME_PATH = "/atelier/live-frame"
FRAME_TIMEOUT_SECONDS = 300  # a first frame may wait for a model to load
KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")  # the page's own random key for its live slot
MAX_BODY_BYTES = 256 * 1024  # the fields are text and numbers: a prompt of 10,000 words fits


class LiveRoad:
    """The route and the sessions behind it, shared with the tab's Keep button."""

    def __init__(self, engine: Engine, library: PresetLibrary | None, fields: list[str]) -> None:
        self.engine = engine
        self.library = library
        self.fields = frozenset(fields)  # the watched Text to Image fields the page may send
        self.sessions = LiveSessions(engine)

    @classmethod
    def for_tab(cls, engine: Engine, library: PresetLibrary | None, widgets: Any) -> LiveRoad:
        """The road for a Text to Image tab's watched fields."""
        from .live_ui import watched_names

        return cls(engine, library, watched_names(widgets))

    def routes(self) -> list[Any]:
        """The route, built on a scratch app and handed to Gradio's own at launch."""
        scratch = FastAPI()
        known = len(scratch.router.routes)
        scratch.add_api_route(FRAME_PATH, self.frame, methods=["POST"], include_in_schema=False)
        return scratch.router.routes[known:]

    def slot_key(self, user: str | None, key: str) -> str:
        return f"{user or ''}:{key}:txt2img"

    async def frame(self, request: Request) -> Response:
        user, refused = await _user(request)
        if refused is not None:
            return refused
        try:
            body = await _body(request)
            key = str(body.get("key", ""))
            if not KEY.fullmatch(key):
                raise BadRequest("key must be 16-64 letters, digits, '-' or '_' (the page makes one)")
            # Off the event loop: the request's checks and a reference picture's decoding take time.
            slot = self.sessions.slot(self.slot_key(user, key))
            ticket = await run_in_threadpool(lambda: slot.submit(self._request(body)))
        except PresetError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        except AtelierError as exc:  # a bad field, a blocked term (422); the server stopping (503)
            return JSONResponse({"detail": str(exc)}, status_code=exc.http_status)
        try:  # shielded: a closed page leaves the frame to finish for the slot
            outcome = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(ticket.future)), FRAME_TIMEOUT_SECONDS)
        except (TimeoutError, asyncio.TimeoutError):
            return JSONResponse({"detail": "still waiting for the device"}, status_code=503)
        if outcome.error is not None:
            status = outcome.error.http_status if isinstance(outcome.error, AtelierError) else 500
            return JSONResponse({"detail": str(outcome.error)}, status_code=status)
        if outcome.frame is None:  # superseded before it started: the newer request shows its own picture
            return Response(status_code=204)
        from .live_ui import readout

        # The fastest PNG: a live frame is shown once and replaced; Keep saves the full-quality file.
        picture = await run_in_threadpool(
            functools.partial(data_url, outcome.frame.image, self.engine.outputs.finish, compress_level=1)
        )
        return JSONResponse({"image": picture, "readout": readout(slot, outcome.frame)})

    def _request(self, body: dict[str, Any]) -> Any:
        from .live_ui import live_request_for

        fields = body.get("fields")
        if not isinstance(fields, dict) or not set(fields) <= self.fields:
            unknown = sorted(set(fields or {}) - self.fields) if isinstance(fields, dict) else fields
            raise BadRequest(f"fields must be an object of Text to Image fields; not known: {unknown!r}")
        values = dict(fields)
        values["reference_image"] = _uploaded(values.get("reference_image"))
        model = str(body.get("model") or self.engine.default_model)
        return live_request_for(
            self.engine, "txt2img", values, model, body.get("steps"),
            (_names(body.get("styles")), _names(body.get("negatives"))), self.library,
        )  # fmt: skip


async def _user(request: Request) -> tuple[str | None, Response | None]:
    """The logged-in user as Gradio knows them, or a 401 when the page needs a login and has none."""
    app = request.app
    if getattr(app, "auth_dependency", None) is not None:
        user = app.auth_dependency(request)
        user = await user if asyncio.iscoroutine(user) else user
    elif getattr(app, "auth", None):
        cookie_id = getattr(app, "cookie_id", "")
        token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
            f"access-token-unsecure-{cookie_id}"
        )
        user = app.tokens.get(token)
    else:
        return None, None
    if not user:
        return None, JSONResponse({"detail": "log in first"}, status_code=401)
    return str(user), None


async def _body(request: Request) -> dict[str, Any]:
    if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest("send the fields as application/json")
    too_big = BadRequest(f"the request is larger than the {MAX_BODY_BYTES} bytes a live frame takes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    raw = bytearray()
    async for part in request.stream():  # counted as it comes: a huge body is never held whole
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise too_big
    try:
        body = json.loads(bytes(raw))
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise BadRequest(f"styles must be a list of names, got {value!r}")
    return value


def _uploaded(value: Any) -> Image.Image | None:
    """The page's reference picture: Gradio's own upload of it, never a path elsewhere on the server."""
    if value in (None, ""):
        return None
    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str):
        raise BadRequest("reference_image must be the page's uploaded picture")
    folder = Path(get_upload_folder()).resolve()
    file = Path(path).resolve()
    if not file.is_relative_to(folder) or not file.is_file():
        raise BadRequest("reference_image must be a picture uploaded to this page")
    try:
        with Image.open(file) as picture:
            return picture.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"reference_image is not a readable picture: {exc}") from exc


def page_script(road_fields: list[str], image_id: str) -> str:
    """The event's script: post the fields by name, show the newest answer. Arguments in the order of
    ``live_ui``'s inputs: Live on, live steps, model, styles, negative presets, then ``road_fields``."""
    return (
        """(on, steps, model, styles, negatives, ...values) => {
  if (!on) return;
  const names = NAMES;
  const live = window.atelierLive = window.atelierLive || {key: KEY(), sent: 0, shown: 0};
  const fields = {};
  names.forEach((name, index) => { fields[name] = values[index]; });
  const seq = ++live.sent;
  const root = (window.gradio_config && window.gradio_config.root) || '';
  const show = (answer) => {
    if (seq < live.shown) return;
    live.shown = seq;
    const box = document.getElementById(IMAGE_ID);
    if (!box) return;
    const picture = box.querySelector('img'), text = box.querySelector('.live-readout');
    if (answer.image && picture) { picture.src = answer.image; picture.hidden = false; }
    if (text) text.textContent = answer.readout || ('Live paused: ' + answer.detail);
  };
  fetch(root + PATH, {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({key: live.key, steps, model, styles, negatives, fields})})
    .then((response) => response.status === 204 ? null : response.json())
    .then((answer) => { if (answer) show(answer); })
    .catch((error) => show({detail: String(error)}));
}""".replace("NAMES", json.dumps(road_fields))
        .replace("IMAGE_ID", json.dumps(image_id))
        .replace("PATH", json.dumps(FRAME_PATH))
        .replace("KEY()", KEY_SCRIPT)
    )


# A random key without crypto.randomUUID, which pages served over plain http on a LAN address lack.
KEY_SCRIPT = (
    "Array.from({length: 32}, () => 'abcdefghijklmnopqrstuvwxyz0123456789'[Math.floor(Math.random() * 36)]).join('')"
)
KEEP_SCRIPT = "(key) => [(window.atelierLive && window.atelierLive.key) || '']"


def frame_html(image_id: str) -> str:
    """The live picture's box before its first frame: the script fills the picture and the readout."""
    readout_id = image_id.replace("-image", "-readout")
    return (
        f'<div class="live-frame"><img alt="live picture" hidden></div>'
        f'<div id="{readout_id}" class="live-readout job-status"></div>'
    )
