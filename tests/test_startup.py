"""The first second after start: scripts, bots and the page all send at once, over fresh starts.

Each start is a new ``launch.py`` process, because what broke lives in a process's first imports
and loads: two threads resolving diffusers' lazy modules at once answered 500.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from gradio_client import Client
from PIL import Image

from pipelines import loading

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FAST = {"steps": 2, "width": 64, "height": 64, "seed": 1}


@contextmanager
def _started(tmp: Path, *extra: str) -> Iterator[tuple[str, Path]]:
    """A fresh ``launch.py --api`` process; yields its URL as soon as the page answers, and its log."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"server-{port}.log"
    command = [sys.executable, "launch.py", "--api", "--port", str(port), "--models-dir", str(tmp / "models"),
               "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"), *extra]  # fmt: skip
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as sink:
        server = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while not _answers(url):
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the page did not answer within 120 s"
                time.sleep(0.05)
            yield url, log
        finally:
            server.terminate()
            server.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _at_once(works: list[Callable[[], Any]]) -> list[Any]:
    """Run every work on its own thread, all released together; each outcome or its exception."""
    start = threading.Barrier(len(works))
    outcomes: list[Any] = [None] * len(works)

    def run(slot: int) -> None:
        start.wait()
        try:
            outcomes[slot] = works[slot]()
        except Exception as exc:  # compared by the test, with the others
            outcomes[slot] = exc

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return outcomes


def _rest(url: str, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    answer = httpx.post(f"{url}/sdapi/v1/{path}", json=payload, timeout=300)
    return answer.status_code, answer.json()


def _picture_side(rest_answer: tuple[int, Any]) -> int:
    status, body = rest_answer
    assert status == 200, body
    return Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).width


def _script(url: str) -> dict[str, Any]:
    client = Client(url + "/", verbose=False)
    try:
        return client.predict(prompt="a blue square", steps=2, width=64, height=64, save=False, api_name="/txt2img")
    finally:
        client.close()


def _log_problems(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if any(w in line for w in ("ERROR", "Traceback", "Failed"))]


def test_every_front_door_gets_its_picture_in_the_first_second_over_fresh_starts(tmp_path: Path) -> None:
    for start in range(3):
        with _started(tmp_path / f"start-{start}") as (url, log):
            outcomes = _at_once(
                [
                    lambda: _picture_side(_rest(url, "txt2img", {"prompt": "a red circle", **FAST})),
                    lambda: _picture_side(_rest(url, "txt2img", {"prompt": "a green star", **FAST, "seed": 2})),
                    lambda: len(_script(url)["images"]),
                    lambda: httpx.get(url, timeout=60).status_code,
                ]
            )
            assert outcomes == [64, 64, 1, 200], log.read_text()[-4000:]
            text = log.read_text()
            assert text.count("loading model builtin:demo") == 1, text[-4000:]
            assert _log_problems(log) == []


def test_a_model_switch_while_requests_wait_serves_each_with_its_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(loading.DEMO_FOLDER, models / "demo-copy")
    with _started(tmp_path, "--model", "builtin:demo") as (url, log):

        def switch() -> int:
            time.sleep(0.2)  # behind the first requests, ahead of the last
            return httpx.post(
                f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "demo-copy"}, timeout=300
            ).status_code

        outcomes = _at_once(
            [
                lambda: _rest(url, "txt2img", {"prompt": "a red circle", **FAST}),
                switch,
                lambda: (time.sleep(0.5), _rest(url, "txt2img", {"prompt": "a red circle", **FAST}))[1],
            ]
        )
        assert outcomes[1] == 200
        for status, body in (outcomes[0], outcomes[2]):
            assert status == 200, body
        text = log.read_text()
        assert text.count("loading model builtin:demo") == 1, text[-4000:]
        assert text.count("loading model demo-copy") == 1, text[-4000:]
        assert _log_problems(log) == []
