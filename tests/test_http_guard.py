"""The front door every HTTP request passes: Host, Origin, Content-Type, the login brake, upload caps.

What an attacker tried against ``launch.py --listen --api --auth alice:secret`` (and once without
``--auth``) on 127.0.0.1, replayed with real HTTP requests against in-process servers, next to the
real clients that must keep working: ``webuiapi``, ``gradio_client`` and a same-origin page request.
``--listen`` is asked for but Gradio is told to bind 127.0.0.1 anyway: tests never expose a server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
import webuiapi
from conftest import WarningRecords, free_port
from gradio_client import Client

import launch
from webui import guard
from webui.guard import GuardPolicy, LoginBrake

TIMEOUT = 60
USER, PASSWORD = "alice", "secret-pa55"
EVIL = "http://evil.example"
ALLOWED_ORIGIN = "https://www.photopea.com"  # a web app the owner allowed with --cors-allow-origins
EXTRA_HOST = "studio.lan"  # a name the owner allowed with --allowed-hosts


@dataclass
class Server:
    app: Any
    port: int
    outputs: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _serve(root: Path, *extra: str, brake: LoginBrake | None = None) -> Server:
    """``brake``: the login brake to use instead of one on the real clock."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(root / "outputs"), "--data-dir", str(root / "data"),
         "--models-dir", str(root / "models"), "--model", "builtin:demo", "--api", "--listen", *extra]
    )  # fmt: skip
    original_launch = gr.Blocks.launch

    def loopback_launch(self: gr.Blocks, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_name"] = "127.0.0.1"  # never expose a test server, whatever --listen asks for
        return original_launch(self, *args, **kwargs)

    records = WarningRecords()
    logging.getLogger("atelier").addHandler(records)
    logging.getLogger("webui").addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gr.Blocks, "launch", loopback_launch)
            if brake is not None:
                patch.setattr(guard, "build_policy", _with_brake(guard.build_policy, brake))
            app = launch.serve(args, prevent_thread_lock=True)
    finally:
        logging.getLogger("atelier").removeHandler(records)
        logging.getLogger("webui").removeHandler(records)
    return Server(app, port, root / "outputs", records.messages)


def _with_brake(build_policy: Callable[..., GuardPolicy], brake: LoginBrake) -> Callable[..., GuardPolicy]:
    def build(*args: Any, **kwargs: Any) -> GuardPolicy:
        policy = build_policy(*args, **kwargs)
        policy.brake = brake
        return policy

    return build


class ManualClock:
    """A monotonic clock that moves only when told: the brake's waits stay exact however slow the machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(
        tmp_path_factory.mktemp("open"), "--cors-allow-origins", ALLOWED_ORIGIN, "--allowed-hosts", EXTRA_HOST
    )
    yield running
    running.app.close()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(tmp_path_factory.mktemp("locked"), "--auth", f"{USER}:{PASSWORD}")
    yield running
    running.app.close()


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*.png")) if folder.exists() else set()


# -- 3. cross-site requests and DNS rebinding ----------------------------------------------------------------
def test_a_cross_site_text_plain_post_does_not_reach_the_api(open_server: Server) -> None:
    """What a web page can send without a CORS preflight: text/plain, from its own origin."""
    base = f"{open_server.url}/sdapi/v1"
    before = _files(open_server.outputs)
    body = '{"prompt":"csrf","steps":1,"width":64,"height":64,"save_images":true}'
    forged = httpx.post(
        f"{base}/txt2img", content=body, headers={"Origin": EVIL, "Content-Type": "text/plain"}, timeout=TIMEOUT
    )
    assert forged.status_code == 403, forged.text
    assert "evil.example" in forged.json()["detail"]
    for route, content in (("options", '{"sd_model_checkpoint": "builtin:demo"}'), ("interrupt", "")):
        response = httpx.post(
            f"{base}/{route}", content=content, headers={"Origin": EVIL, "Content-Type": "text/plain"}
        )
        assert response.status_code == 403, (route, response.text)
    # the same body without an Origin, but not declared as JSON: refused too, and says what to send
    plain = httpx.post(f"{base}/txt2img", content=body, headers={"Content-Type": "text/plain"}, timeout=TIMEOUT)
    assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
    # a page of this server (same origin) and an origin the owner allowed still get through
    own = httpx.post(f"{base}/png-info", json={"image": ""}, headers={"Origin": open_server.url}, timeout=TIMEOUT)
    assert own.status_code == 422  # reached the route: it complains about the image, not the origin
    allowed = httpx.get(f"{base}/samplers", headers={"Origin": ALLOWED_ORIGIN}, timeout=TIMEOUT)
    assert allowed.status_code == 200
    assert allowed.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert _files(open_server.outputs) == before


def test_dns_rebinding_hosts_are_refused(open_server: Server) -> None:
    url = f"{open_server.url}/sdapi/v1/options"
    rebound = httpx.get(url, headers={"Host": f"rebind.evil.example:{open_server.port}"}, timeout=TIMEOUT)
    assert rebound.status_code == 400 and "--allowed-hosts" in rebound.json()["detail"]
    page = httpx.get(f"{open_server.url}/", headers={"Host": "rebind.evil.example"}, timeout=TIMEOUT)
    assert page.status_code == 400
    # the names this server answers to with --listen, and the one the owner added
    for host in ("localhost", "127.0.0.1", "[::1]", socket.gethostname(), EXTRA_HOST, "192.168.1.20"):
        response = httpx.get(url, headers={"Host": f"{host}:{open_server.port}"}, timeout=TIMEOUT)
        assert response.status_code == 200, (host, response.text)


def test_real_clients_still_work(open_server: Server) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=open_server.port)
    result = api.txt2img(prompt="a red square", steps=1, width=64, height=64, seed=3)
    assert result.image.size == (64, 64)
    assert api.interrupt() is None  # a bodiless POST without a Content-Type, as webuiapi sends it
    client = Client(open_server.url, verbose=False)
    try:
        assert client.predict(api_name="/list_presets")
    finally:
        client.close()
    page = httpx.get(f"{open_server.url}/", headers={"Origin": open_server.url}, timeout=TIMEOUT)
    assert page.status_code == 200 and "Text to Image" in page.text


@pytest.mark.browser
def test_the_page_logs_in_and_generates_in_a_real_browser(auth_server: Server, browser: Any) -> None:
    """Chromium sends Origin with the page's own POSTs (login, queue): they must pass the guard."""
    page = browser.new_page()
    try:
        page.goto(auth_server.url)
        page.locator("input[type=text]").fill(USER)
        page.locator("input[type=password]").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#txt2img-generate", timeout=60_000)
        page.get_by_label("Prompt", exact=True).first.fill("a red star")
        page.locator("#txt2img-generate").click()
        page.locator("#txt2img-status").get_by_text("Done in").wait_for(timeout=60_000)
        assert page.locator("#txt2img-results img[src*='gradio_api/file=']").count() >= 1
    finally:
        page.close()


# -- 7. nothing about the API is shown before a login --------------------------------------------------------
def test_api_descriptions_need_a_login(auth_server: Server) -> None:
    for route in ("/openapi.json", "/sdapi/docs"):
        assert httpx.get(f"{auth_server.url}{route}", timeout=TIMEOUT).status_code == 401, route
        allowed = httpx.get(f"{auth_server.url}{route}", auth=(USER, PASSWORD), timeout=TIMEOUT)
        assert allowed.status_code == 200, route
    schema = httpx.get(f"{auth_server.url}/openapi.json", auth=(USER, PASSWORD), timeout=TIMEOUT).json()
    assert "/sdapi/v1/txt2img" in schema["paths"]
    login_page = httpx.get(f"{auth_server.url}/", timeout=TIMEOUT).text
    assert '"auth_required":true' in login_page.replace(" ", "")
    assert "list_presets" not in login_page and "save_preset" not in login_page
    with httpx.Client(base_url=auth_server.url, timeout=TIMEOUT) as browser:
        assert browser.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        assert "list_presets" in browser.get("/").text  # after the login the page documents its endpoints


# -- 9. a cap on files per upload request ---------------------------------------------------------------------
def test_an_upload_of_too_many_files_is_refused_with_a_reason(open_server: Server) -> None:
    url = f"{open_server.url}/gradio_api/upload"
    many = [("files", (f"f{i}.txt", b"x")) for i in range(200)]
    refused = httpx.post(url, files=many, timeout=TIMEOUT)
    assert refused.status_code == 413, refused.text
    assert "too many files" in refused.text.lower() and "at most" in refused.text
    few = httpx.post(url, files=[("files", (f"f{i}.txt", b"x")) for i in range(3)], timeout=TIMEOUT)
    assert few.status_code == 200 and len(few.json()) == 3


def test_an_upload_over_the_cap_that_arrives_in_one_piece_is_refused_once() -> None:
    """A small body with many files comes in one message: the app behind must never read it, and the
    client gets one answer, the 413."""
    from webui.guard import HttpGuard, build_policy

    read: list[bytes] = []

    async def upload_route(scope: Any, receive: Any, send: Any) -> None:  # reads the body as Gradio's route does
        message = await receive()
        if message["type"] == "http.request":
            read.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stored"})

    body = b"".join(
        b'--cut\r\nContent-Disposition: form-data; name="files"; filename="f.txt"\r\n\r\nx\r\n' for _ in range(50)
    )
    body += b"--cut--\r\n"
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"multipart/form-data; boundary=cut"),
                         (b"content-length", str(len(body)).encode())]}  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = HttpGuard(upload_route, policy=build_policy(False, [], [], login_required=False))
    # On a thread of its own: a browser test of this module may hold an event loop on this one.
    with ThreadPoolExecutor(1) as worker:
        worker.submit(asyncio.run, guard(scope, receive, send)).result()
    starts = [message["status"] for message in sent if message["type"] == "http.response.start"]
    assert starts == [413]
    assert read == []


def test_guesses_sent_in_parallel_get_no_more_tries_than_guesses_in_a_row() -> None:
    from webui.guard import FREE_FAILURES

    brake = LoginBrake(clock=lambda: 1000.0)  # all at one moment, as a burst of parallel requests
    admitted = [brake.admit("203.0.113.7") == 0 for _ in range(50)]  # none answered yet
    assert sum(admitted) == FREE_FAILURES
    brake.succeeded("203.0.113.7")  # the right password, among the admitted: the address starts afresh
    assert brake.admit("203.0.113.7") == 0


# -- 10. a brake on password guessing --------------------------------------------------------------------------
def test_repeated_failed_logins_are_slowed_down_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()  # a busy CI machine once let the real 1 s wait run out between two requests
    running = _serve(tmp_path, "--auth", f"{USER}:{PASSWORD}", brake=LoginBrake(clock=clock))
    try:
        with caplog.at_level(logging.WARNING):
            with httpx.Client(base_url=running.url, timeout=TIMEOUT) as browser:
                answers = [browser.post("/login", data={"username": USER, "password": f"guess{i}"}) for i in range(5)]
                assert [a.status_code for a in answers] == [400] * 5
                braked = browser.post("/login", data={"username": USER, "password": PASSWORD})
                assert braked.status_code == 429, braked.text  # even the right password waits its turn
                assert braked.headers["retry-after"] == "1"
                rest = httpx.get(f"{running.url}/sdapi/v1/options", auth=(USER, PASSWORD), timeout=TIMEOUT)
                assert rest.status_code == 429  # the same address guessing through the REST API
                clock.now += 0.9
                assert browser.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 429
                clock.now += 0.2
                assert browser.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
            rest_guesses = [
                httpx.get(f"{running.url}/sdapi/v1/options", auth=(USER, f"no{i}"), timeout=TIMEOUT).status_code
                for i in range(6)
            ]
            assert rest_guesses == [401] * 5 + [429]
            clock.now += 1.1
            assert (
                httpx.get(f"{running.url}/sdapi/v1/options", auth=(USER, PASSWORD), timeout=TIMEOUT).status_code == 200
            )
        failures = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
        assert len(failures) >= 10 and all("127.0.0.1" in message for message in failures)
        assert PASSWORD not in caplog.text
    finally:
        running.app.close()


# -- 11. the no-auth banner ------------------------------------------------------------------------------------
def test_the_no_auth_banner_says_what_others_can_do_and_where(open_server: Server) -> None:
    text = "\n".join(open_server.warnings)
    assert "ANYONE" in text
    for power in ("delete", "presets", "settings", "API"):
        assert power in text, power
    assert f":{open_server.port}" in text and "http://" in text
