"""The page's fast road for live frames (``webui.live_route``) over real HTTP: a picture for the
fields sent by name, 204 for a request a newer one overtook, clear 4xx for bad input, and the same
login as the page."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import serve_studio
from PIL import Image

from pipelines import scenes
from webui.live_route import FRAME_PATH

KEY = "k" * 24


def _frame(client: httpx.Client, url: str, prompt: str, **extra: Any) -> httpx.Response:
    body = {"key": KEY, "steps": 4, "model": "", "styles": [], "negatives": [],
            "fields": {"prompt": prompt, "seed": 3, "width": 64, "height": 64}} | extra  # fmt: skip
    return client.post(url.rstrip("/") + FRAME_PATH, json=body, timeout=120)


def _picture(answer: httpx.Response) -> Image.Image:
    header, _, data = answer.json()["image"].partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app, url = serve_studio(tmp_path_factory.mktemp("live-road"))
    yield url
    app.close()


def test_a_frame_is_the_picture_the_fields_ask_for(open_server: str) -> None:
    with httpx.Client() as client:
        red = _frame(client, open_server, "a red circle")
        assert red.status_code == 200, red.text
        assert scenes.analyse(_picture(red)).colour == "red"
        assert "fps" in red.json()["readout"] and "seed 3" in red.json()["readout"]
        blue = _frame(client, open_server, "a blue square")
        assert scenes.analyse(_picture(blue)).colour == "blue"


def test_a_burst_runs_its_newest_request_and_answers_the_rest_at_once(open_server: str) -> None:
    answers: dict[int, httpx.Response] = {}

    def send(index: int) -> None:
        with httpx.Client() as client:
            answers[index] = _frame(client, open_server, f"a {('red', 'blue', 'green')[index % 3]} star {index}")

    threads = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    codes = [answers[index].status_code for index in range(8)]
    assert set(codes) <= {200, 204} and codes.count(200) <= 3, codes  # the running one, maybe one more, the last
    assert sum(code == 204 for code in codes) >= 5, codes


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"key": "short"}, "key must be"),
        ({"fields": {"prompt": "x", "steps": 50}}, "not known: ['steps']"),
        ({"steps": 99}, "live steps must be a whole number from 1 to 8"),
        ({"fields": {"prompt": "x", "reference_image": {"path": "/etc/passwd"}}}, "uploaded to this page"),
        ({"styles": "cinematic"}, "styles must be a list"),
    ],
)
def test_bad_input_is_a_422_that_says_what_is_wrong(open_server: str, change: dict[str, Any], said: str) -> None:
    with httpx.Client() as client:
        answer = _frame(client, open_server, "a red circle", **change)
    assert answer.status_code == 422 and said in answer.json()["detail"], answer.text


def test_the_body_must_be_json(open_server: str) -> None:
    answer = httpx.post(open_server.rstrip("/") + FRAME_PATH, content=b"key=x", timeout=30,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert answer.status_code == 422 and "application/json" in answer.json()["detail"]


def test_with_auth_the_road_wants_the_pages_login(tmp_path: Path) -> None:
    app, url = serve_studio(tmp_path, "--auth", "ann:secret-pass")
    try:
        with httpx.Client() as client:
            refused = _frame(client, url, "a red circle")
            assert refused.status_code == 401 and "log in" in refused.json()["detail"]
            login = client.post(url.rstrip("/") + "/login", data={"username": "ann", "password": "secret-pass"})
            assert login.status_code == 200, login.text
            answer = _frame(client, url, "a red circle")
            assert answer.status_code == 200 and scenes.analyse(_picture(answer)).colour == "red"
    finally:
        app.close()


def test_another_sites_page_cannot_use_the_road(open_server: str) -> None:
    answer = httpx.post(open_server.rstrip("/") + FRAME_PATH, json={"key": KEY, "fields": {"prompt": "x"}},
                        headers={"Origin": "http://evil.example"}, timeout=30)  # fmt: skip
    assert answer.status_code == 403


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"prompt": "x", "width": "abc"}, "width"),
        ({"prompt": "x", "width": 100000}, "width must be between"),
        ({"prompt": ["x"]}, "prompt must be text"),
    ],
)
def test_what_the_engine_refuses_is_a_422_too(open_server: str, fields: dict[str, Any], said: str) -> None:
    with httpx.Client() as client:
        answer = client.post(
            open_server.rstrip("/") + FRAME_PATH, json={"key": KEY, "steps": 1, "fields": fields}, timeout=60
        )
    assert answer.status_code == 422 and said in answer.json()["detail"], answer.text


def test_a_huge_or_deeply_nested_body_is_refused_unread(open_server: str) -> None:
    url = open_server.rstrip("/") + FRAME_PATH
    headers = {"Content-Type": "application/json"}
    huge = httpx.post(url, content=b"[" * 300_000, headers=headers, timeout=60)
    assert huge.status_code == 422 and "larger than" in huge.json()["detail"]
    nested = httpx.post(url, content=b"[" * 100_000, headers=headers, timeout=60)
    assert nested.status_code == 422 and "not JSON" in nested.json()["detail"]
