"""Several people on one server, each in their own browser: real Chromium pages against a live server.

Covers what one user sees while others use the same GPU: two users generating at once each get
their own result, and the one served second is told it waits, never shown the other one's steps;
a started job does not go back to "waiting"; Stop on one page stops only that page's job; a browser
closed mid-generation frees the GPU and leaves no file behind; a prompt past the 75-token window is
counted in chunks and read whole; an image that could not be saved is still shown, with a note; a full queue is told in
the page and clears; a few people opening the page of a server with a small queue see no error.

Each user is a separate browser context, so a separate Gradio session, as two people on two
machines would be. The servers run a local random-weight copy of the demo model: these tests need
a model that runs, not a good picture.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ARTIFACTS, free_port, set_slider, shot
from PIL import Image

import launch
from pipelines.standards import xmp

GENERATE, STOP = "#txt2img-generate", "#txt2img-stop"
STATUS = "#txt2img-status [data-testid=markdown]"  # the job's own text, not Gradio's progress overlay
INFOTEXT = "#txt2img-infotext textarea"
RESULT_IMAGE = "#txt2img-results img[src*='gradio_api/file=']"
WAITING = re.compile(r"Waiting for the GPU(…|: (\d+) jobs? ahead of yours\.)")
STEP = re.compile(r"Step (\d+)/(\d+)")
# Generous: the test machine may be busy with other work, and steps are slow on its CPU then.
PAGE_TIMEOUT_MS = 120_000
JOB_TIMEOUT_MS = 240_000
IDLE_WITHIN_S = 30.0
# Every change of the status text, with its time, kept in the page: the test reads the whole story
# afterwards instead of polling and perhaps missing a short "waiting" moment.
RECORD_STATUS = """
window.__statuses = [];
new MutationObserver(() => {
  const shown = document.querySelector('#txt2img-status [data-testid=markdown]');
  const text = shown ? shown.innerText.trim() : '';
  const seen = window.__statuses;
  if (text && (!seen.length || seen[seen.length - 1][1] !== text)) seen.push([Date.now(), text]);
}).observe(document, {childList: true, subtree: true, characterData: true});
"""
# 100 distinct words of one CLIP token each: two 75-token chunks.
PROMPT_100 = """apple river mountain castle forest garden bridge window candle mirror violin guitar piano trumpet drum
lantern compass anchor harbor island desert valley meadow canyon glacier volcano ocean lagoon canal tower temple
palace cottage barn lighthouse windmill chimney balcony staircase fountain tiger zebra rabbit falcon dolphin turtle
penguin giraffe monkey squirrel pumpkin cherry lemon banana carrot onion pepper tomato melon grape hammer ladder
bucket basket rope kettle spoon blanket pillow curtain silver golden purple orange crimson velvet marble copper
bronze crystal sunset morning winter summer autumn spring thunder rainbow shadow cloud kitten puppy horse camel
eagle parrot spider beetle salmon lobster"""
WORDS = PROMPT_100.split()

pytestmark = pytest.mark.browser


@dataclass
class Server:
    url: str
    outputs: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the demo's architecture with random weights, as a diffusers folder.

    These tests need a model that runs, not a good picture; a local folder is what the server picks
    by default, whether or not the trained built-in demo's files are present.
    """
    from pipelines import loading

    folder = tmp_path_factory.mktemp("models")
    loading.build_untrained_demo().save_pretrained(folder / "demo-untrained", safe_serialization=True)
    return folder


def _serve(tmp: Path, models: Path, outputs: Path, *extra: str) -> tuple[Any, Server]:
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(outputs), "--data-dir", str(tmp / "data"),
         "--models-dir", str(models), "--api", *extra]
    )  # fmt: skip
    app = launch.serve(args, prevent_thread_lock=True)
    server = Server(f"http://127.0.0.1:{port}/", outputs)
    # One tiny job through the REST API: the model is loaded before any test starts timing a page.
    tiny = {"prompt": "warm up", "width": 64, "height": 64, "steps": 1, "save_images": False}
    response = httpx.post(f"{server.url}sdapi/v1/txt2img", json=tiny, timeout=JOB_TIMEOUT_MS / 1000)
    assert response.status_code == 200, response.text
    return app, server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("many-users")
    app, server = _serve(tmp, models, tmp / "outputs")
    yield server
    app.close()


@pytest.fixture(scope="module")
def cramped(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[Server]:
    """A server with room for one waiting job and an outputs folder that cannot be made.

    ``blocker`` is a regular file, so making ``blocker/outputs`` fails whoever runs the tests (root too).
    """
    tmp = tmp_path_factory.mktemp("cramped")
    (tmp / "blocker").write_text("a file where a folder should be\n", encoding="utf-8")
    app, server = _serve(tmp, models, tmp / "blocker" / "outputs", "--queue-size", "1")
    yield server
    app.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Any]]:
    """Opens the studio as a new user: a fresh browser context each time (its own cookies, its own session)."""
    contexts: list[Any] = []

    def open_page(url: str) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(RECORD_STATUS)
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector(GENERATE, timeout=PAGE_TIMEOUT_MS)
        return page

    yield open_page
    for context in contexts:
        context.close()  # a context a test closed itself is skipped


def _ask(page: Any, prompt: str, *, seed: int, steps: int, size: int, batch_size: int = 1) -> None:
    """Fill the text-to-image form as a user would."""
    page.locator("#txt2img-prompt textarea").fill(prompt)
    page.locator("#txt2img-seed input").fill(str(seed))
    sliders = {"txt2img-steps": steps, "txt2img-width": size, "txt2img-height": size, "txt2img-batch-size": batch_size}
    for elem_id, value in sliders.items():
        set_slider(page, elem_id, value)


def _wait_status(page: Any, text: str | re.Pattern[str], timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    """Wait until the page's status shows ``text``; return the whole status then."""
    from playwright.sync_api import expect

    expect(page.locator(STATUS)).to_contain_text(text, timeout=timeout_ms)
    return page.locator(STATUS).inner_text()


def _history(page: Any) -> list[tuple[float, str]]:
    """Every status text the page showed, oldest first, with the browser's clock in milliseconds."""
    return [(stamp, text) for stamp, text in page.evaluate("window.__statuses")]


def _fetch_image(page: Any) -> Image.Image:
    """The one picture in the page's results, as the browser would load it."""
    return Image.open(io.BytesIO(_fetch_bytes(page))).convert("RGB")


def _fetch_bytes(page: Any) -> bytes:
    """The file of the one picture in the page's results."""
    from playwright.sync_api import expect

    expect(page.locator(RESULT_IMAGE), "the results should show one image").to_have_count(1, timeout=30_000)
    source = page.locator(RESULT_IMAGE).first.get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    return bytes(response.body())


def _trigger_id(page: Any, selector: str) -> int:
    """Gradio's id of the button with this elem_id: its clicks name it as ``trigger_id``."""
    elem_id = selector.removeprefix("#")
    found = page.evaluate(
        "id => window.gradio_config.components.filter(c => c.props && c.props.elem_id === id).map(c => c.id)", elem_id
    )
    assert len(found) == 1, f"expected one component {selector}, found {found}"
    return found[0]


def _click_and_wait_for_answer(page: Any, selector: str) -> None:
    """Click a button whose handler runs outside the queue, and return once the server answered it."""
    trigger = _trigger_id(page, selector)

    def is_that_click(response: Any) -> bool:
        body = response.request.post_data or ""
        return "/run/predict" in response.url and body.startswith("{") and json.loads(body).get("trigger_id") == trigger

    with page.expect_response(is_that_click, timeout=PAGE_TIMEOUT_MS) as answer:
        page.locator(selector).click()
    assert answer.value.ok, f"{selector}: HTTP {answer.value.status}"


def _files(root: Path) -> set[Path]:
    """Every file under ``root``, temp files included: a half-written one counts too."""
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def _progress(server: Server) -> dict[str, Any]:
    response = httpx.get(f"{server.url}sdapi/v1/progress", timeout=30)
    response.raise_for_status()
    return response.json()


def _shot(page: Any, name: str) -> None:
    shot(page, f"many-users-{name}")


def test_two_users_at_once_each_get_their_own_result(open_page: Callable[[str], Any], server: Server) -> None:
    first, second = open_page(server.url), open_page(server.url)
    # Different step counts too: a page showing "Step n/<the other's count>" shows the other's job.
    asks = {
        "first": (first, "a red boat on a calm lake", 1111, 40),  # long enough to outlast the second click
        "second": (second, "a green fox in deep snow", 2222, 14),
    }
    for page, prompt, seed, steps in asks.values():
        _ask(page, prompt, seed=seed, steps=steps, size=64)
    first.locator(GENERATE).click()
    second.locator(GENERATE).click()
    for page, _, seed, _ in asks.values():
        assert f"seeds {seed}" in _wait_status(page, "Done in")
    _shot(first, "01-first-user")
    _shot(second, "02-second-user")

    finished_at = {}
    for name, (page, prompt, seed, steps) in asks.items():
        other_prompt = next(ask[1] for other, ask in asks.items() if other != name)
        shown = page.locator(INFOTEXT).input_value()
        assert prompt in shown and f"Seed: {seed}," in shown, f"{name} user's page shows {shown!r}"
        assert other_prompt not in shown, f"{name} user's page shows the other user's prompt: {shown!r}"
        assert _fetch_image(page).size == (64, 64), f"{name} user's page should show its image"
        history = _history(page)
        totals = {int(match[2]) for _, text in history for match in STEP.finditer(text)}
        assert totals <= {steps}, f"{name} user's page showed steps of another job: {history}"
        finished_at[name] = next(stamp for stamp, text in history if text.startswith("Done in"))

    # One GPU: the user served last waited for the other, and the page said so.
    last = max(finished_at, key=finished_at.get)
    history = _history(asks[last][0])
    waits = [WAITING.search(text) for _, text in history]
    first_step = next((i for i, (_, text) in enumerate(history) if STEP.search(text)), len(history))
    assert any(waits[:first_step]), f"the {last} user's page never said it was waiting: {history}"
    ahead = {int(match[2]) for match in waits if match and match[2]}
    assert ahead <= {1}, f"only one other user was ahead, the {last} user's page said {ahead}: {history}"


def test_a_started_job_never_says_it_is_waiting_again(open_page: Callable[[str], Any], server: Server) -> None:
    page = open_page(server.url)
    _ask(page, "a paper boat on a puddle", seed=9, steps=10, size=64)
    page.locator(GENERATE).click()
    _wait_status(page, "Done in")
    shown = [text for _, text in _history(page)]
    started = next((i for i, text in enumerate(shown) if STEP.search(text)), None)
    assert started is not None, f"the page never showed the job's steps: {shown}"
    # Once its steps have run, a job is not waiting for the GPU, nor loading a model.
    back = [text for text in shown[started:] if WAITING.search(text) or text.startswith("Loading the model")]
    assert not back, f"after its steps the status went back to {back}: {shown}"


def test_stop_on_one_page_stops_only_that_pages_job(open_page: Callable[[str], Any], server: Server) -> None:
    owner, bystander = open_page(server.url), open_page(server.url)
    steps = 60  # long enough that the other user's Stop lands while it runs, even on a fast machine
    _ask(owner, "a slow sunrise over hills", seed=31, steps=steps, size=64)
    owner.locator(GENERATE).click()
    _wait_status(owner, "Step")
    _click_and_wait_for_answer(bystander, STOP)
    running = owner.locator(STATUS).inner_text()
    match = STEP.search(running)
    assert match and int(match[1]) < steps, f"the job had ended before the other user's Stop: {running!r}"

    ended = _wait_status(owner, re.compile(r"Done in|Stopped at"))
    assert ended.startswith("Done in") and "seeds 31" in ended, f"another user's Stop stopped this job: {ended!r}"
    assert _fetch_image(owner).size == (64, 64)
    history = _history(owner)
    assert not any("Stopped" in text for _, text in history), f"another user's Stop stopped this job: {history}"
    assert _history(bystander) == [], "Stop with no job of one's own should show nothing"

    # The owner's own Stop does stop it, long before its 150 steps.
    _ask(owner, "a slow sunrise over hills", seed=32, steps=150, size=64)
    owner.locator(GENERATE).click()
    _wait_status(owner, "Step")
    owner.locator(STOP).click()
    stopped = _wait_status(owner, "Stopped at step", timeout_ms=60_000)
    _shot(owner, "03-stopped")
    match = re.search(r"Stopped at step (\d+) of 150", stopped)
    assert match and int(match[1]) < 150, stopped


def test_a_browser_closed_mid_generation_ends_its_job(open_page: Callable[[str], Any], server: Server) -> None:
    leaving = open_page(server.url)
    # 150 steps of a batch of two: minutes of work, far more than the time allowed below.
    _ask(leaving, "a long night of falling snow", seed=5, steps=150, size=128, batch_size=2)
    before = _files(server.outputs)
    leaving.locator(GENERATE).click()
    # Closed in the middle of denoising: once a step is done, and with it the time one step takes.
    running = _wait_status(leaving, re.compile(r"Step [1-9]\d*/150"))
    timing = re.search(r"Step (\d+)/150 · ([\d.]+)s", running)
    assert timing, running
    step_seconds = float(timing[2]) / int(timing[1])
    assert _progress(server)["state"]["job_count"] == 1, "the job should be running now"
    leaving.context.close()

    # The step under way when the browser went away still ends; on a busy machine that takes a while.
    allowed = IDLE_WITHIN_S + 3 * step_seconds
    deadline = time.monotonic() + allowed
    progress = _progress(server)
    while (progress["progress"], progress["state"]["job_count"]) != (0.0, 0) and time.monotonic() < deadline:
        time.sleep(0.5)
        progress = _progress(server)
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0, (
        f"the job of a closed browser still runs {allowed:.0f}s later: {progress['state']}"
    )
    assert _files(server.outputs) == before, "a job whose browser went away saved files"

    staying = open_page(server.url)
    _ask(staying, "a warm morning after", seed=6, steps=2, size=64)
    staying.locator(GENERATE).click()
    assert "seeds 6" in _wait_status(staying, "Done in")
    assert _fetch_image(staying).size == (64, 64)


def test_a_long_prompt_is_counted_in_chunks_and_read_whole(open_page: Callable[[str], Any], server: Server) -> None:
    page = open_page(server.url)
    _ask(page, " ".join(WORDS), seed=7, steps=2, size=64)
    counter = page.locator("#txt2img-prompt-tokens")
    from playwright.sync_api import expect

    expect(counter).to_contain_text(f"{len(WORDS)}/150 tokens, in 2 chunks", timeout=10_000)
    page.locator(GENERATE).click()
    status = _wait_status(page, "Done in")
    _shot(page, "04-token-chunks")
    assert "ignored" not in status, f"nothing is cut any more, yet the page says so: {status!r}"
    infotext = page.locator("#txt2img-infotext textarea").input_value()
    assert infotext.startswith(" ".join(WORDS) + "\n"), "the infotext keeps the whole prompt"


def test_an_image_that_could_not_be_saved_is_shown_with_a_note(
    open_page: Callable[[str], Any], cramped: Server
) -> None:
    page = open_page(cramped.url)
    _ask(page, "a lantern in the rain", seed=4242, steps=2, size=64)
    page.locator(GENERATE).click()
    status = _wait_status(page, "Done in")
    _shot(page, "05-not-saved")
    assert re.search(r"image with seed 4242 was not saved", status), status
    shown = _fetch_bytes(page)
    assert Image.open(io.BytesIO(shown)).size == (64, 64), "the image must still be shown"
    assert xmp.is_ai_marked(shown), "a picture kept from a failed save leaves the server marked all the same"
    assert cramped.outputs.parent.is_file(), "the blocker file should still be there, not replaced by a folder"


def test_a_full_queue_is_told_in_the_page_and_clears(open_page: Callable[[str], Any], cramped: Server) -> None:
    page = open_page(cramped.url)
    _ask(page, "a quiet pond", seed=8, steps=2, size=64)
    answers: list[int] = []

    def long_rest_job() -> None:
        job = {"prompt": "a script's long job", "width": 128, "height": 128, "steps": 150, "save_images": False}
        answers.append(httpx.post(f"{cramped.url}sdapi/v1/txt2img", json=job, timeout=600).status_code)

    # One job runs and one waits: the queue (room for one) is full.
    scripts = [threading.Thread(target=long_rest_job, daemon=True) for _ in range(2)]
    for expected, script in enumerate(scripts, start=1):
        script.start()
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while _progress(cramped)["state"]["job_count"] < expected and time.monotonic() < deadline:
            time.sleep(0.2)
    assert _progress(cramped)["state"]["job_count"] == 2, "two REST jobs should be in: one running, one waiting"

    try:
        page.locator(GENERATE).click()
        toast = page.locator("[data-testid=toast-body]").filter(has_text="queue is full")
        toast.wait_for(timeout=PAGE_TIMEOUT_MS)
        # The engine's own refusal, which says why, not a generic one from the web framework.
        assert "waiting for the GPU" in toast.first.inner_text(), toast.first.inner_text()
        page.wait_for_timeout(1000)  # only for the screenshot: the toast slides in
        page.screenshot(path=str(ARTIFACTS / "many-users-06-queue-full.png"))  # it floats: no full-page shot
        assert page.locator(RESULT_IMAGE).count() == 0
    finally:
        # Stop the scripts' jobs the way a script would: the running one, then the one that took its place.
        while any(script.is_alive() for script in scripts):
            httpx.post(f"{cramped.url}sdapi/v1/interrupt", timeout=30)
            for script in scripts:
                script.join(0.5)
    assert len(answers) == 2, "both scripts should have had an answer (their jobs were stopped)"

    page.locator(GENERATE).click()
    assert "seeds 8" in _wait_status(page, "Done in")
    assert _fetch_image(page).size == (64, 64)


def test_a_few_people_opening_the_page_of_a_small_queue_see_no_error(browser: Any, cramped: Server) -> None:
    """``--queue-size`` bounds the jobs waiting for the GPU; people who only open the page are no jobs."""
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(4)]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:  # all at once, as when a link is shared with a few people
            page.goto(cramped.url, wait_until="commit")
        for page in pages:
            page.wait_for_selector(GENERATE, timeout=PAGE_TIMEOUT_MS)
        pages[-1].wait_for_timeout(2000)  # the events a page sends as it opens have been answered by now
        errors = [page.locator("[data-testid=toast-body]").all_inner_texts() for page in pages]
        if any(errors):
            _shot(next(page for page, shown in zip(pages, errors, strict=True) if shown), "07-busy-on-open")
        assert not any(errors), f"opening the page showed errors: {errors}"
    finally:
        for context in contexts:
            context.close()
