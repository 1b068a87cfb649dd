"""The one GPU queue, as its callers see it: the REST API, the Gradio script endpoints and the engine.

Covers: a REST client that hangs up stops its job; a bounded queue refuses extra work (503 with
``Retry-After`` over REST, a readable error over Gradio, ``QueueFull`` in the engine) and takes work
again once it drains; REST and Gradio requests are served in the order they arrived; the engine reports
queue positions and ``/progress`` counts running + waiting jobs; a prompt past the 75-token window is
read whole; an interrupted REST job answers 409 and saves nothing.

Real parts only: servers from ``launch.serve`` on 127.0.0.1 (one ordinary, one with ``--queue-size 1``),
raw ``httpx`` where status codes matter, ``gradio_client`` for the Gradio endpoints, and real engines on
the built-in demo model. "Long" jobs are long by steps and batch count (minutes on a CPU), never by
sleeping; each test stops whatever it left running, so a failure cannot keep the device busy for the next.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import free_port
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

import launch
from pipelines.engine import Engine, Job
from pipelines.errors import Interrupted, QueueFull
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

TIMEOUT = 120  # seconds for one call or wait: a wedged server fails the test instead of hanging the suite
# Sizes are always explicit: the default model's native size may change (128 px demo, 64 px trained one).
# A long job is many cheap steps: minutes in all, yet a stop (checked after each step) lands within a
# fraction of a second. Its first batch alone takes far longer than any test waits before stopping it,
# so a stopped job never gets to save a picture.
LONG_FIELDS = {"steps": 150, "width": 128, "height": 128, "seed": 1}
LONG = LONG_FIELDS | {"n_iter": 20}  # REST (A1111) names batch_count n_iter
LONG_REQUEST = LONG_FIELDS | {"batch_count": 20}
SHORT = {"steps": 2, "width": 64, "height": 64, "seed": 1}
# 100 distinct words, each one CLIP token: 100 tokens, 25 past the 75-token window.
LONG_PROMPT = """apple river mountain castle garden window candle forest meadow bridge lantern harbor violin feather
pebble thunder island desert glacier canyon orchard cottage village market temple tower ocean valley cloud
sunset morning winter summer autumn spring shadow mirror silver golden copper marble velvet silk cotton wool
leather paper glass stone iron wooden crystal ember smoke storm breeze rain snow frost dust sand clay moss
fern rose tulip lily daisy maple willow cedar pine oak birch palm cactus bamboo tiger eagle falcon dolphin
whale rabbit fox wolf bear horse sparrow owl swan heron salmon turtle beetle butterfly dragon knight wizard
sailor farmer"""
WORDS = LONG_PROMPT.split()


@dataclass
class Server:
    app: Any
    port: int
    outputs: Path
    client: Client

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/sdapi/v1"


class Background:
    """A call made on its own thread, as a second client would make it; keeps its outcome and end time."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = 0.0
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # handed to the test thread by wait()
            self.error = exc
        finally:
            self.finished = time.perf_counter()  # taken here, when the answer arrived, not when the test looked

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float = TIMEOUT) -> Any:
        self._thread.join(timeout)
        assert self.done, f"the call did not return within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def _serve(tmp: Path, *extra: str) -> Server:
    port = free_port()
    (tmp / "models").mkdir(parents=True, exist_ok=True)
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"),
         "--models-dir", str(tmp / "models"), "--api", *extra]
    )  # fmt: skip
    app = launch.serve(args, prevent_thread_lock=True)
    running = Server(app, port, tmp / "outputs", Client(f"http://127.0.0.1:{port}/", verbose=False))
    # The model loads in the background after start; one tiny job waits for it, so the tests' timings
    # measure the queue, not the first load.
    assert _txt2img(running, "warm up").status_code == 200
    return running


def _close(server: Server) -> None:
    _drain(server)
    server.client.close()
    server.app.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(tmp_path_factory.mktemp("queue"))
    yield running
    _close(running)


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(tmp_path_factory.mktemp("queue-1"), "--queue-size", "1")
    yield running
    _close(running)


def _txt2img(server: Server, prompt: str, timeout: float = TIMEOUT, **fields: Any) -> httpx.Response:
    payload = SHORT | {"prompt": prompt} | fields
    return httpx.post(f"{server.base}/txt2img", json=payload, timeout=timeout)


def _gradio_txt2img(server: Server, prompt: str) -> dict[str, Any]:
    job = server.client.submit(prompt=prompt, steps=2, width=64, height=64, seed=1, save=False, api_name="/txt2img")
    return job.result(timeout=TIMEOUT)


def _progress(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.base}/progress", timeout=TIMEOUT).json()


def _wait_for(
    server: Server, ready: Callable[[dict[str, Any]], bool], what: str, timeout: float = TIMEOUT
) -> dict[str, Any]:
    deadline, seen = time.perf_counter() + timeout, {}
    while time.perf_counter() < deadline:
        seen = _progress(server)
        if ready(seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen within {timeout} s; last /progress: {_without_image(seen)}")


def _without_image(progress: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in progress.items() if key != "current_image"}


def _running(progress: dict[str, Any]) -> bool:
    """The long job has left the queue and is on the device (its first step need not be done)."""
    return progress["state"].get("sampling_steps") == LONG["steps"] * LONG["n_iter"]


def _count(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda progress: progress["state"]["job_count"] == n


def _idle(progress: dict[str, Any]) -> bool:
    return progress["progress"] == 0.0 and progress["state"]["job_count"] == 0


def _drain(server: Server) -> None:
    """Stop the running job, and each queued one as it starts, until the server is idle."""
    deadline = time.perf_counter() + TIMEOUT
    while not _idle(_progress(server)) and time.perf_counter() < deadline:
        httpx.post(f"{server.base}/interrupt", timeout=TIMEOUT)
        time.sleep(0.1)


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


# -- 1. a REST client that hangs up -----------------------------------------------------------------
def test_a_rest_client_that_hangs_up_stops_its_job(server: Server) -> None:
    before = _files(server.outputs)
    try:
        with pytest.raises(httpx.ReadTimeout):  # the script gives up after 2 s; httpx closes the connection
            _txt2img(server, "a script that gives up", timeout=2, save_images=True, **LONG)
        # Left alone the job would run for minutes; stopped, it ends within a step or two.
        idle = _wait_for(server, _idle, "the job of the client that hung up ended", timeout=30)
    finally:
        _drain(server)
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0
    assert _files(server.outputs) == before, "the abandoned job saved images"
    after = _txt2img(server, "the next script")
    assert after.status_code == 200, after.text
    assert json.loads(after.json()["info"])["all_seeds"] == [1]


# -- 2. a full queue --------------------------------------------------------------------------------
def test_a_full_queue_refuses_rest_and_gradio_and_accepts_again_when_drained(small_queue: Server) -> None:
    running = Background(lambda: _txt2img(small_queue, "the running job", **LONG))
    try:
        _wait_for(small_queue, _running, "the long job running")
        waiting = Background(lambda: _txt2img(small_queue, "the waiting job"))
        _wait_for(small_queue, _count(2), "one job running and one waiting")

        refused = _txt2img(small_queue, "one too many")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        detail = refused.json()["detail"]
        assert "the queue is full" in detail and "limit 1" in detail, detail

        with pytest.raises(AppError) as gradio_refused:
            _gradio_txt2img(small_queue, "one too many, from a script")
        message = str(gradio_refused.value)
        # the engine's words, not Gradio's own "Queue is full" (its queue has room: nothing waits there)
        assert "the queue is full" in message and "limit 1" in message, message
        assert _progress(small_queue)["state"]["job_count"] == 2, "a refused request took a place in the queue"
    finally:
        _drain(small_queue)  # stops the long job; the waiting one may be stopped too
    assert running.wait().status_code == 409
    assert waiting.wait().status_code in (200, 409)

    again = _txt2img(small_queue, "after the rush")
    assert again.status_code == 200, again.text
    assert len(_gradio_txt2img(small_queue, "after the rush, from a script")["images"]) == 1


def test_a_waiting_rest_client_that_hangs_up_gives_its_place_back(small_queue: Server) -> None:
    """``_unless_gone`` promises a script that gave up does not keep "its place in the queue" from others."""
    running = Background(lambda: _txt2img(small_queue, "the running job", **LONG))
    try:
        _wait_for(small_queue, _running, "the long job running")
        with pytest.raises(httpx.ReadTimeout):  # waits behind the long job, gives up after 2 s
            _txt2img(small_queue, "a script that gives up while waiting", timeout=2)
        # The server notices within a poll (0.25 s); the place should be free well before this.
        freed = _wait_for(small_queue, _count(1), "the place of the client that hung up given back", timeout=10)
        assert _running(freed)
        taker = Background(lambda: _txt2img(small_queue, "the next script"))
        _wait_for(small_queue, _count(2), "the next script waiting in the freed place")
        assert not taker.done, f"the next script was refused: {taker.result and taker.result.text}"
    finally:
        _drain(small_queue)
    assert running.wait().status_code == 409
    assert taker.wait().status_code in (200, 409)


@pytest.fixture(scope="module")
def one_place_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    tmp = tmp_path_factory.mktemp("engine-queue-1")
    settings = EngineSettings(models_dir=tmp / "models", outputs_dir=tmp / "outputs", default_model="builtin:demo",
                              max_queue=1)  # fmt: skip
    engine = Engine(settings)
    engine.load()
    return engine


def _wait_running(engine: Engine, job: Job) -> None:
    deadline = time.perf_counter() + TIMEOUT
    while engine.current_job is not job:
        assert time.perf_counter() < deadline, f"job {job.id} did not start: state {job.state}"
        time.sleep(0.05)


def test_the_engine_refuses_past_max_queue_and_accepts_again(one_place_engine: Engine) -> None:
    engine, long_job, waiting = one_place_engine, Job(), Job()
    running = engine.submit(Txt2Img("the running job", **LONG_REQUEST), long_job)
    try:
        _wait_running(engine, long_job)
        queued = engine.submit(Txt2Img("the waiting job", **SHORT), waiting)  # max_queue counts waiting jobs only
        with pytest.raises(QueueFull, match=r"the queue is full.*limit 1"):
            engine.submit(Txt2Img("one too many", **SHORT))
        assert engine.queue_length == 1, "the refused job took a place in the queue"
    finally:
        long_job.interrupt()
    with pytest.raises(Interrupted):
        running.result(timeout=TIMEOUT)
    assert len(queued.result(timeout=TIMEOUT).images) == 1
    assert engine.queue_length == 0
    assert engine.generate(Txt2Img("after the rush", **SHORT)).seeds == [1]


# -- 3. one fair order for every front door ---------------------------------------------------------
def test_rest_and_gradio_requests_are_served_in_arrival_order(server: Server) -> None:
    # The page, the Gradio endpoints and the REST API all hand their jobs to the engine, which keeps one
    # first-in-first-out list of waiting jobs and runs them one at a time on a single device thread.
    # So whatever the front door, the job that asked first runs (and answers) first.
    blocker = Background(lambda: _txt2img(server, "the running job", **LONG))
    try:
        _wait_for(server, _running, "the long job running")
        first_rest = Background(lambda: _txt2img(server, "first, over REST"))
        _wait_for(server, _count(2), "the first REST request waiting")
        gradio = Background(lambda: _gradio_txt2img(server, "second, from a Gradio script"))
        _wait_for(server, _count(3), "the Gradio request waiting")
        second_rest = Background(lambda: _txt2img(server, "third, over REST"))
        # /progress counts the running job and every waiting one, whichever door it came through.
        _wait_for(server, _count(4), "the second REST request waiting")
        httpx.post(f"{server.base}/interrupt", timeout=TIMEOUT)  # stops only the running job
        first, second, third = first_rest.wait(), gradio.wait(), second_rest.wait()
    finally:
        _drain(server)
    assert blocker.wait().status_code == 409
    assert first.status_code == 200 and third.status_code == 200, (first.text, third.text)
    assert json.loads(first.json()["info"])["prompt"] == "first, over REST"
    assert second["infotexts"][0].startswith("second, from a Gradio script")
    assert json.loads(third.json()["info"])["prompt"] == "third, over REST"
    assert first_rest.finished < gradio.finished < second_rest.finished, "served out of arrival order"
    assert _idle(_progress(server))


# -- 4. queue positions -----------------------------------------------------------------------------
def test_the_engine_reports_queue_positions(engine: Engine) -> None:
    long_job, second, third = Job(), Job(), Job()
    running = engine.submit(Txt2Img("the running job", **LONG_REQUEST), long_job)
    try:
        _wait_running(engine, long_job)
        futures = [engine.submit(Txt2Img(f"waiting {n}", **SHORT), job) for n, job in ((1, second), (2, third))]
        # Position = jobs that run before this one starts, the running one included.
        assert [engine.queue_position(job) for job in (long_job, second, third)] == [-1, 1, 2]
        assert engine.queue_length == 2
    finally:
        long_job.interrupt()
    with pytest.raises(Interrupted):
        running.result(timeout=TIMEOUT)
    assert [len(future.result(timeout=TIMEOUT).images) for future in futures] == [1, 1]
    assert [engine.queue_position(job) for job in (long_job, second, third)] == [-1, -1, -1]
    assert engine.queue_length == 0


def test_progress_counts_the_running_job_and_the_waiting_ones(server: Server) -> None:
    assert _progress(server)["state"]["job_count"] == 0
    blocker = Background(lambda: _txt2img(server, "the running job", **LONG))
    try:
        running = _wait_for(server, _running, "the long job running")
        assert running["state"]["job_count"] == 1
        waiting = [Background(lambda n=n: _txt2img(server, f"waiting {n}")) for n in (1, 2)]
        counted = _wait_for(server, _count(3), "one running and two waiting")
        assert _running(counted)  # the count is reported beside the running job
    finally:
        _drain(server)
    assert blocker.wait().status_code == 409
    assert all(call.wait().status_code in (200, 409) for call in waiting)
    assert _idle(_progress(server))


# -- 5. long prompts ---------------------------------------------------------------------------------
def _picture(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB")


def test_a_long_prompt_is_read_whole_and_kept_verbatim(server: Server) -> None:
    long_prompt = " ".join(WORDS)
    whole = _txt2img(server, long_prompt)
    info = json.loads(whole.json()["info"])
    assert not [note for note in info["notes"] if "ignored" in note or "tokens" in note], info["notes"]
    assert info["infotexts"][0].startswith(long_prompt + "\n"), "the infotext keeps the prompt as written"
    # The words past the 75th change the picture: they are read, not cut as diffusers alone would.
    head = _picture(_txt2img(server, " ".join(WORDS[:75])))
    assert np.abs(np.asarray(_picture(whole), np.int16) - np.asarray(head, np.int16)).mean() > 0.5


# -- 6. an interrupted REST job -----------------------------------------------------------------------
def test_an_interrupted_rest_job_answers_409_and_saves_nothing(server: Server) -> None:
    before = _files(server.outputs)
    call = Background(lambda: _txt2img(server, "a job someone stops", save_images=True, **LONG))
    try:
        _wait_for(server, _running, "the long job running")
        assert httpx.post(f"{server.base}/interrupt", timeout=TIMEOUT).status_code == 200
        answer = call.wait()
    finally:
        _drain(server)
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["error"] == "Interrupted"
    assert "stopped" in body["detail"]
    assert _files(server.outputs) == before, "the interrupted job saved images"
    assert _idle(_progress(server))
