"""What a user relies on when sharing a server: the login, file serving, launch warnings, secrets, uploads.

Two in-process servers serve the module, each on its own tmp folders laid out like a real install
(``models/``, ``outputs/`` and ``data/`` side by side): a plain one and one with ``--auth`` (a user
from the flag and one from an ``--auth-file``). Both are started with ``--listen``, so the launch
warnings can be checked, but Gradio's ``launch`` is wrapped to bind 127.0.0.1 anyway: the tests
never expose a server to the network. Requests that must be sent byte for byte (encoded ``..``)
go through ``http.client``, which does not normalise paths the way httpx does.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
import httpx
import pytest
from conftest import WarningRecords, free_port
from gradio_client import Client
from gradio_client.exceptions import AppError, AuthenticationError
from PIL import Image

import launch

TIMEOUT = 60  # seconds for one HTTP call: a wedged server fails the test instead of hanging the suite
USER, PASSWORD = "artist", "s3cret-Pa55w0rd"  # distinctive, so a leak is visible in any response
FILE_USER, FILE_PASSWORD = "guest", "f1le-only-pa55"  # a user that only the --auth-file knows
PRIVATE_MODEL = "private-sketchbook.safetensors"  # a name only a logged-in user may see
SECRET = "TOP-SECRET-CONTENT-7f3a"  # written into every file that must never be served


@dataclass
class Server:
    app: Any
    port: int
    root: Path
    requested_host: str  # what launch asked Gradio to bind (the test binds 127.0.0.1 regardless)
    warnings: list[str] = field(default_factory=list)  # WARNING records of the "atelier" logger at launch

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"


def _serve(root: Path, *extra: str) -> Server:
    """``launch.serve`` with the given flags, capturing its warnings and the host it asked for."""
    (root / "models").mkdir(parents=True)
    (root / "models" / PRIVATE_MODEL).write_bytes(b"not really weights " + SECRET.encode())
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(root / "outputs"), "--data-dir", str(root / "data"),
         "--models-dir", str(root / "models"), "--model", "builtin:demo", "--api", *extra]
    )  # fmt: skip
    original_launch = gr.Blocks.launch
    requested: list[str] = []

    def loopback_launch(self: gr.Blocks, *args: Any, **kwargs: Any) -> Any:
        requested.append(kwargs.get("server_name", ""))
        kwargs["server_name"] = "127.0.0.1"  # never expose a test server, whatever --listen asks for
        return original_launch(self, *args, **kwargs)

    records = WarningRecords()
    logger = logging.getLogger("atelier")
    logger.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gr.Blocks, "launch", loopback_launch)
            app = launch.serve(args, prevent_thread_lock=True)
    finally:
        logger.removeHandler(records)
    return Server(app, port, root, requested[0], records.messages)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(tmp_path_factory.mktemp("open"), "--listen")
    yield running
    running.app.close()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("locked")
    users = root / "users.txt"
    users.write_text(f"# people who may draw\n{FILE_USER}:{FILE_PASSWORD}\n", encoding="utf-8")
    running = _serve(root, "--listen", "--auth", f"{USER}:{PASSWORD}", "--auth-file", str(users))
    yield running
    running.app.close()


@pytest.fixture(scope="module")
def generated(auth_server: Server) -> Path:
    """An image generated (and saved) through the REST API of the locked server."""
    response = httpx.post(
        f"{auth_server.url}/sdapi/v1/txt2img",
        json={"prompt": "a private sketch", "steps": 2, "width": 64, "height": 64, "seed": 5, "save_images": True},
        auth=(USER, PASSWORD),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    saved = sorted(auth_server.outputs.rglob("*.png"))
    assert len(saved) == 1, saved
    return saved[0]


def _raw_get(server: Server, target: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (no dot-segment removal, no re-encoding)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextmanager
def _logged_in(server: Server, user: str = USER, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A cookie-keeping client logged in through the page's login form."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        response = client.post("/login", data={"username": user, "password": password})
        assert response.status_code == 200, response.text
        yield client


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC recomputed)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _png_with_text_bomb() -> bytes:
    """An 8x8 PNG with a zTXt chunk of ~200 KB that inflates to 200 MB."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    body = b"parameters\0\0" + zlib.compress(b"a" * (200 * 1024 * 1024), 9)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    return png[:33] + chunk + png[33:]  # right after IHDR


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _still_answers(server: Server, auth: tuple[str, str] | None = None) -> None:
    response = httpx.get(f"{server.url}/sdapi/v1/samplers", auth=auth, timeout=10)
    assert response.status_code == 200


# -- 1. --auth guards the page, the Gradio endpoints, the REST API and the files -------------------------------
def test_without_login_the_page_is_only_a_login_form(auth_server: Server) -> None:
    page = httpx.get(f"{auth_server.url}/", timeout=TIMEOUT)
    assert page.status_code == 200  # Gradio's login form
    assert '"auth_required":true' in page.text.replace(" ", "")
    assert '"components":[]' in page.text.replace(" ", "")
    assert PRIVATE_MODEL not in page.text and "Text to Image" not in page.text
    for route in ("/config", "/gradio_api/info", "/gradio_api/openapi.json", "/gradio_api/login_check"):
        assert httpx.get(f"{auth_server.url}{route}", timeout=TIMEOUT).status_code == 401, route
    wrong = httpx.post(f"{auth_server.url}/login", data={"username": USER, "password": "guess"}, timeout=TIMEOUT)
    assert wrong.status_code == 400
    assert "access-token" not in " ".join(wrong.cookies.keys())
    # positive control: after a login the app's config (with the model picker) is served
    with _logged_in(auth_server) as client:
        config = client.get("/config")
        assert config.status_code == 200 and PRIVATE_MODEL in config.text
    with _logged_in(auth_server, FILE_USER, FILE_PASSWORD) as client:
        assert client.get("/config").status_code == 200


def test_gradio_endpoints_need_the_login(auth_server: Server) -> None:
    with pytest.raises(AuthenticationError):
        Client(auth_server.url, verbose=False)
    with pytest.raises(Exception, match=r"(?i)login|credential|auth"):
        Client(auth_server.url, auth=(USER, "wrong"), verbose=False)
    for route in ("/gradio_api/call/list_presets", "/gradio_api/queue/join", "/gradio_api/upload"):
        response = httpx.post(f"{auth_server.url}{route}", json={"data": []}, timeout=TIMEOUT)
        assert response.status_code == 401, (route, response.status_code)
    client = Client(auth_server.url, auth=(USER, PASSWORD), verbose=False)
    try:
        presets = client.predict(api_name="/list_presets")
    finally:
        client.close()
    assert any(preset["builtin"] for preset in presets)


def test_the_rest_api_needs_basic_auth(auth_server: Server) -> None:
    base = f"{auth_server.url}/sdapi/v1"
    assert httpx.get(f"{base}/sd-models", timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{base}/sd-models", auth=(USER, "wrong"), timeout=TIMEOUT).status_code == 401
    before = sorted(auth_server.outputs.rglob("*"))
    refused = httpx.post(f"{base}/txt2img", json={"prompt": "x", "steps": 1, "save_images": True}, timeout=TIMEOUT)
    assert refused.status_code == 401
    assert sorted(auth_server.outputs.rglob("*")) == before  # nothing was generated
    assert httpx.get(f"{base}/sd-models", auth=(USER, PASSWORD), timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{base}/sd-models", auth=(FILE_USER, FILE_PASSWORD), timeout=TIMEOUT).status_code == 200
    # the page's login cookie is not a way around basic auth (nor does it need to be)
    with _logged_in(auth_server) as client:
        assert client.get("/sdapi/v1/sd-models").status_code == 401


def test_generated_images_are_served_only_after_a_login(auth_server: Server, generated: Path) -> None:
    target = f"/gradio_api/file={generated}"
    status, body = _raw_get(auth_server, target)
    assert status == 401
    assert not body.startswith(b"\x89PNG")
    assert _raw_get(auth_server, f"/gradio_api/file/{generated}")[0] == 401  # the deprecated spelling too
    with _logged_in(auth_server) as client:
        served = client.get(target)
    assert served.status_code == 200
    assert served.content == generated.read_bytes()


# -- 2. Only the outputs folder (and the app's assets) are served ----------------------------------------------
def _outside_files(server: Server) -> dict[str, Path]:
    """Files a visitor must never get, each containing SECRET."""
    root = server.root
    (root / "data").mkdir(exist_ok=True)
    files = {
        "tmp file": root / "private-notes.txt",
        "data folder": root / "data" / "presets.json",
        "models folder": root / "models" / PRIVATE_MODEL,
        "sibling folder with the outputs' name as prefix": root / "outputs-old" / "00000-1.png",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name != PRIVATE_MODEL:
            path.write_text(json.dumps({"note": SECRET}), encoding="utf-8")
    return files


def _image_in_outputs(server: Server) -> Path:
    folder = server.outputs / "2001-01-01"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "00000-42.png"
    if not path.exists():
        Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    return path


def _attempts(server: Server) -> list[str]:
    files = _outside_files(server)
    outputs = server.outputs.resolve()
    notes = files["tmp file"]
    link = outputs / "2001-01-01" / "00001-7.png"  # a link planted in the outputs folder, pointing out of it
    _image_in_outputs(server)
    if not link.is_symlink():
        os.symlink(notes, link)
    up = "%2e%2e%2f" * 12
    return [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=../../etc/passwd",
        "/gradio_api/file=" + "../" * 12 + "etc/passwd",
        f"/gradio_api/file={up}etc%2fpasswd",
        f"/gradio_api/file={'..%2f' * 12}etc%2fpasswd",
        f"/gradio_api/file={'%252e%252e%252f' * 12}etc%252fpasswd",  # double-encoded
        "/gradio_api/file=%2fetc%2fpasswd",
        "/gradio_api/file=/proc/self/environ",
        f"/gradio_api/file/{'../' * 12}etc/passwd",
        *(f"/gradio_api/file={path}" for path in files.values()),
        *(f"/gradio_api/file={quote(str(path), safe='')}" for path in files.values()),
        *(f"/gradio_api/file/{path}" for path in files.values()),
        f"/gradio_api/file={os.path.relpath(notes)}",  # relative to the server's working folder
        f"/gradio_api/file={outputs}/../{notes.name}",  # out of the allowed folder with ..
        f"/gradio_api/file={outputs}/%2e%2e/{notes.name}",
        f"/gradio_api/file={outputs}/2001-01-01/{up}{quote(str(notes)[1:])}",
        f"/gradio_api/file={outputs}/./2001-01-01/../../{notes.name}",
        f"/gradio_api/file=//{str(notes)[1:]}",
        f"/gradio_api/file={link}",
        f"/gradio_api/file=file://{notes}",
        f"/gradio_api/file=http://127.0.0.1:{server.port}/sdapi/v1/cmd-flags",  # no server-side fetch of itself
        f"/gradio_api/proxy=http://127.0.0.1:{server.port}/sdapi/v1/cmd-flags",
        "/static/../../../../../../etc/passwd",
        f"/assets/{'..%2f' * 12}etc%2fpasswd",
        f"/gradio_api/file={outputs}",  # the folder itself: no listing
    ]


def test_files_outside_the_outputs_folder_are_never_served(server: Server) -> None:
    passwd = Path("/etc/passwd").read_bytes()[:64]
    served = []
    for target in _attempts(server):
        status, body = _raw_get(server, target)
        leaked = SECRET.encode() in body or (passwd and passwd in body) or b"PATH=" in body
        if not 400 <= status < 500 or leaked:
            served.append((target, status, body[:80]))
    assert served == []


def test_files_in_the_outputs_folder_are_served(server: Server) -> None:
    image = _image_in_outputs(server)
    for target in (f"/gradio_api/file={image}", f"/gradio_api/file={quote(str(image), safe='')}"):
        status, body = _raw_get(server, target)
        assert status == 200, target
        assert body == image.read_bytes()
    assert httpx.get(f"{server.url}/", timeout=TIMEOUT).status_code == 200  # and the app's own page
    assert httpx.get(f"{server.url}/theme.css", timeout=TIMEOUT).status_code == 200  # and its assets


# -- 3. Launch warnings ----------------------------------------------------------------------------------------
def test_listen_without_auth_warns_loudly(server: Server) -> None:
    assert server.requested_host == "0.0.0.0"
    text = "\n".join(server.warnings)
    assert "without --auth" in text and "ANYONE" in text
    assert any(set(message) == {"!"} for message in server.warnings)  # the banner lines around it


def test_listen_with_auth_does_not_warn(auth_server: Server) -> None:
    assert auth_server.requested_host == "0.0.0.0"
    assert not any("--auth" in message or "ANYONE" in message for message in auth_server.warnings)


# -- 4. Passwords never leave the server -----------------------------------------------------------------------
def test_no_password_in_cmd_flags_or_anything_else_the_api_reports(auth_server: Server) -> None:
    base = f"{auth_server.url}/sdapi/v1"
    flags = httpx.get(f"{base}/cmd-flags", auth=(USER, PASSWORD), timeout=TIMEOUT)
    assert flags.status_code == 200
    assert flags.json()["auth"] == ["***"]
    bodies = [flags.text]
    for route in ("options", "sd-models", "progress", "prompt-styles", "memory"):
        bodies.append(httpx.get(f"{base}/{route}", auth=(USER, PASSWORD), timeout=TIMEOUT).text)
    with _logged_in(auth_server) as client:
        bodies += [client.get("/config").text, client.get("/").text]
    bodies += [httpx.get(f"{auth_server.url}{route}", timeout=TIMEOUT).text for route in ("/", "/openapi.json")]
    for body in bodies:
        assert PASSWORD not in body and FILE_PASSWORD not in body


# -- 5. Uploaded pictures: a pixel limit, and the server keeps answering ---------------------------------------
@pytest.mark.parametrize("size", [(5000, 5000), (30000, 30000), (2**31 - 1, 2**31 - 1)], ids=lambda s: f"{s[0]}px")
def test_a_png_claiming_a_huge_size_is_refused(server: Server, size: tuple[int, int]) -> None:
    bomb = _b64(_png_claiming(*size))
    response = httpx.post(
        f"{server.url}/sdapi/v1/img2img", json={"init_images": [bomb], "steps": 1, "width": 64}, timeout=TIMEOUT
    )
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert "init_images[0]" in detail
    assert "larger than" in detail or "exceeds limit" in detail, detail  # says why: too many pixels
    _still_answers(server)


def test_a_compressed_text_bomb_is_refused(server: Server) -> None:
    bomb = _b64(_png_with_text_bomb())
    for route, payload in (("img2img", {"init_images": [bomb], "steps": 1}), ("png-info", {"image": bomb})):
        response = httpx.post(f"{server.url}/sdapi/v1/{route}", json=payload, timeout=TIMEOUT)
        assert 400 <= response.status_code < 500, (route, response.text)
        assert "too large" in response.json()["detail"].lower()
    _still_answers(server)


def test_the_gradio_img2img_endpoint_refuses_a_huge_png_too(auth_server: Server) -> None:
    client = Client(auth_server.url, auth=(USER, PASSWORD), verbose=False)
    try:
        with pytest.raises(AppError, match=r"larger than|exceeds limit"):
            client.predict(_b64(_png_claiming(30000, 30000)), api_name="/img2img")
    finally:
        client.close()
    _still_answers(auth_server, (USER, PASSWORD))


@pytest.mark.parametrize(
    ("name", "body"),
    [("steps", '{"prompt": "x", "steps": 1e400}'), ("cfg_scale", '{"prompt": "x", "cfg_scale": 1' + "0" * 400 + "}")],
    ids=["steps=1e400", "cfg_scale=10**400"],
)
def test_hostile_numbers_give_a_4xx_that_names_the_field(server: Server, name: str, body: str) -> None:
    response = httpx.post(
        f"{server.url}/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"}, timeout=TIMEOUT
    )
    _still_answers(server)
    assert 400 <= response.status_code < 500, response.status_code
    assert name in response.json()["detail"]
