"""Live mode: the latest-wins slot, yielding to normal jobs, Keep, the page's handlers and ``/live``.

Frames are 64 px with LCM at 1-4 steps on the built-in demo model.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from conftest import free_port, pixels
from gradio_client import Client
from PIL import Image, ImageDraw

from pipelines import live, scenes
from pipelines.engine import Engine, Job
from pipelines.errors import BadRequest
from pipelines.live import LiveFrame, LiveSlot, live_request
from pipelines.outputs import read_metadata
from pipelines.requests import Img2Img, Inpaint, Txt2Img
from pipelines.standards import xmp
from presets.store import PresetLibrary
from webui.generation import build_inpaint_tab, build_txt2img_tab
from webui.live_ui import LiveControls, build_live_controls, decoded_png, register_live_api, sketch_of, wire_live
from webui.state import JobBoard
from webui.widgets import GenerationWidgets

DEMO = "builtin:demo"
SEED = 3  # a seed the demo draws these prompts right with, at four LCM steps


def frame_request(prompt: str, steps: int = 4, **fields: Any) -> Txt2Img:
    return live_request(Txt2Img(prompt=prompt, width=64, height=64, **fields), steps, DEMO)


def test_live_request_uses_few_steps_and_no_extras() -> None:
    request = live_request(Txt2Img(prompt="x", steps=30, cfg_scale=7, batch_size=4, enable_hr=True), 4, DEMO)
    assert (request.sampler_name, request.steps, request.cfg_scale) == ("LCM", 4, live.DEFAULT_CFG)
    assert (request.batch_size, request.batch_count, request.enable_hr) == (1, 1, False)
    fast = live_request(Txt2Img(prompt="x"), 1, "stabilityai/sd-turbo")
    assert (fast.cfg_scale, live.default_steps("stabilityai/sd-turbo"), live.default_steps(DEMO)) == (1.0, 1, 4)
    # Image to image runs steps * strength: asking for 6 at 0.75 runs the 4 wanted.
    sketch = live_request(Img2Img(init_image=Image.new("RGB", (64, 64)), denoising_strength=0.75), 4, DEMO)
    assert sketch.steps == 6 and int(sketch.steps * 0.75) == 4
    assert live_request(Img2Img(init_image=Image.new("RGB", (8, 8)), denoising_strength=0.29), 29, DEMO).steps == 101
    with pytest.raises(TypeError, match="Inpaint"):
        live_request(Inpaint(), 4, DEMO)


def test_bad_input_is_refused_at_submit_and_nothing_runs(engine: Engine) -> None:
    slot = LiveSlot(engine, "bad", seed=SEED)
    with pytest.raises(BadRequest, match="width must be between 64 and 4096, got 8"):
        slot.submit(frame_request("a red circle").replace(width=8))
    assert slot.submitted == 0 and not slot.busy


def test_ten_quick_changes_run_at_most_two_and_show_the_last(engine: Engine) -> None:
    slot = LiveSlot(engine, "burst", seed=SEED)
    # Typing over a prompt: the first change asks for a red star, the last for a blue circle.
    typed = ["a red star", "a red sta", "a red", "a re", "a ", "a b", "a blu", "a blue", "a blue ci", "a blue circle"]
    tickets = [slot.submit(frame_request(prompt)) for prompt in typed]
    outcomes = [ticket.wait(60) for ticket in tickets]
    ran = [outcome for outcome in outcomes if outcome.frame is not None]
    assert 1 <= len(ran) <= 2 and len(slot.frames) == len(ran)
    assert all(outcome.superseded for outcome in outcomes if outcome.frame is None)
    last = outcomes[-1].frame
    assert last is not None and last.request.prompt == "a blue circle"
    assert slot.latest is last and slot.superseded == 10 - len(ran)
    assert scenes.analyse(last.image).colour == "blue"  # the picture of the last words, not of the first
    assert last.latency >= last.seconds > 0 and slot.fps() > 0


def test_the_fixed_seed_keeps_the_picture_until_the_input_changes(engine: Engine) -> None:
    slot = LiveSlot(engine, "seed", seed=SEED)
    first, changed, back = (slot.ask(frame_request(p), 60).frame for p in ("a red star", "a red circle", "a red star"))
    assert first is not None and changed is not None and back is not None and back is not first  # drawn again
    assert first.seed == back.seed == SEED and "Seed: 3," in first.infotext
    assert np.array_equal(pixels(first.image), pixels(back.image))
    assert np.abs(pixels(first.image) - pixels(changed.image)).mean() > 2


def test_a_repeated_change_draws_nothing_new(engine: Engine) -> None:
    """Pages send a change event twice now and then; toggling Live off and on asks again as well."""
    slot = LiveSlot(engine, "repeat", seed=SEED)
    first = slot.submit(frame_request("a yellow square"))
    assert slot.submit(frame_request("a yellow square")) is first  # pending or running: the same ticket
    shown = first.wait(60).frame
    assert slot.ask(frame_request("a yellow square"), 60).frame is shown and len(slot.frames) == 1
    running = slot.submit(frame_request("a yellow circle"))
    while slot.running is not running and not running.done:
        time.sleep(0.001)
    slot.submit(frame_request("a yellow star"))  # waits behind the circle
    assert slot.submit(frame_request("a yellow circle")) is running  # undone: the star is dropped
    assert (
        running.wait(60).frame is not None
        and not slot.busy
        and [f.request.prompt for f in slot.frames][-1] == ("a yellow circle")
    )


def test_keep_saves_the_frame_with_its_infotext_and_frames_alone_save_nothing(engine: Engine) -> None:
    slot = LiveSlot(engine, "keep", seed=SEED)
    before = engine.outputs.page(limit=10_000)[1]
    with pytest.raises(BadRequest, match="no live picture to keep yet"):
        slot.keep()
    frame = slot.ask(frame_request("a green triangle", steps=2), 60).frame
    assert frame is not None and engine.outputs.page(limit=10_000)[1] == before
    path = slot.keep()
    assert engine.outputs.page(limit=10_000)[1] == before + 1 and path.suffix == ".png"
    meta = read_metadata(path)
    assert meta["parameters"] == frame.infotext
    assert meta["parameters"].startswith("a green triangle\nSteps: 2, Sampler: LCM,") and "Seed: 3," in frame.infotext
    assert np.array_equal(pixels(Image.open(path)), pixels(frame.image))


def test_a_normal_job_waits_for_at_most_one_live_frame(engine: Engine) -> None:
    """Two sessions type without pause while someone presses Generate: no live frame starts between
    the Generate and its job's start, and at most one was running when it came."""
    slots = [LiveSlot(engine, f"typist-{n}", seed=SEED) for n in range(2)]
    typing = threading.Event()
    typing.set()

    def type_on(slot: LiveSlot) -> None:
        count = 0
        while typing.is_set():
            count += 1
            slot.submit(frame_request(f"a red circle {count}", steps=2))
            time.sleep(0.01)

    typists = [threading.Thread(target=type_on, args=(slot,), daemon=True) for slot in slots]
    for thread in typists:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while sum(len(slot.frames) for slot in slots) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        job = Job()
        future = engine.submit(Txt2Img(prompt="a blue square", steps=4, width=64, height=64, seed=1), job)
        asked = time.perf_counter()  # the job is in the queue now
        future.result(60)
        deadline = time.monotonic() + 30
        while not any(f.started > job.started for slot in slots for f in slot.frames) and time.monotonic() < deadline:
            time.sleep(0.02)  # live goes on after the job (a frame cannot start while the job runs)
    finally:
        typing.clear()
        for thread in typists:
            thread.join()
        for slot in slots:
            slot.close()
    frames: list[LiveFrame] = [frame for slot in slots for frame in slot.frames]
    assert len(frames) >= 4 and all(slot.frames for slot in slots)  # the two sessions took turns
    started_while_waiting = [f for f in frames if asked < f.started < job.started]
    running_when_asked = [f for f in frames if f.started < asked < f.finished]
    assert started_while_waiting == [] and len(running_when_asked) <= 1
    assert any(f.started > job.started for f in frames), "live stopped after the normal job"


# -- the page and the endpoint -----------------------------------------------------------------
class LivePage:
    """Two tabs of the studio with live mode wired, in a small page of their own, served for ``/live``."""

    def __init__(self, engine: Engine, library: PresetLibrary) -> None:
        with gr.Blocks(analytics_enabled=False) as self.app:
            self.model = gr.Dropdown([DEMO], value=DEMO, label="Model")
            with gr.Tab("Text to Image"):
                self.txt2img = build_txt2img_tab(engine, library)
                self.txt2img_live = build_live_controls(engine, self.txt2img)
            with gr.Tab("Inpaint"):
                self.inpaint = build_inpaint_tab(engine, library)
                self.inpaint_live = build_live_controls(engine, self.inpaint)
            for widgets, controls in ((self.txt2img, self.txt2img_live), (self.inpaint, self.inpaint_live)):
                wire_live(engine, JobBoard(), widgets, controls, self.model, library)
            register_live_api(engine)

    def handler(self, name: str, output: Any) -> Any:
        """The function of the page's ``name`` event that updates ``output``, to call as Gradio does."""
        for function in self.app.fns.values():
            if function.name == name and any(block is output for block in function.outputs):
                return function.fn
        raise LookupError(name)

    def frame(self, widgets: GenerationWidgets, controls: LiveControls, session: str, **values: Any) -> Any:
        data = {widget: widget.value for widget in widgets.fields.values()}
        data |= {widgets.fields[name]: value for name, value in values.items()}
        data |= {self.model: DEMO, controls.toggle: True, controls.steps: 4}
        data |= {widgets.presets.styles: [], widgets.presets.negatives: []}
        answer = asyncio.run(self.handler("frame", controls.image)(data, gr.Request(session_hash=session)))
        if answer.get(controls.image, gr.skip()) != gr.skip():  # a picture: the file Gradio hands out
            data_file = Path(answer[controls.image]).read_bytes()
            assert xmp.is_ai_marked(data_file), "a live frame leaves the server marked like a saved file"
            answer[controls.image] = Image.open(io.BytesIO(data_file))
        return answer


@pytest.fixture(scope="module")
def page(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePage]:
    built = LivePage(engine, PresetLibrary(tmp_path_factory.mktemp("live-data")))
    yield built
    built.app.close()


def test_the_live_controls_sit_under_generate(page: LivePage) -> None:
    column = page.txt2img.results.parent
    assert column is not None
    order = [getattr(child, "elem_id", None) for child in column.children]
    assert order.index("txt2img-live") == 1  # right under the row of Generate, above the status and results


def test_typing_in_the_tab_shows_a_frame_and_its_speed(page: LivePage) -> None:
    controls = page.txt2img_live
    off = asyncio.run(
        page.handler("frame", controls.image)(
            {w: w.value for w in [*page.txt2img.fields.values(), controls.toggle, controls.steps, page.model]}
            | {page.txt2img.presets.styles: [], page.txt2img.presets.negatives: []},
            gr.Request(session_hash="quiet"),
        )
    )
    assert list(off.values()) == [gr.skip(), gr.skip()]  # Live is off: nothing is drawn
    shown = page.frame(page.txt2img, controls, "typist", prompt="a red star", seed=SEED, width=64, height=64)
    assert scenes.analyse(shown[controls.image]).colour == "red"
    assert "fps" in shown[controls.readout] and "4 steps LCM · seed 3" in shown[controls.readout]
    kept = page.handler("keep", page.txt2img.results)("", gr.Request(session_hash="typist"))
    path = kept[page.txt2img.results][0]
    assert read_metadata(path)["parameters"] == kept[page.txt2img.infotext]
    assert kept[page.txt2img.infotext].startswith("a red star\nSteps: 4, Sampler: LCM, Schedule type: Automatic, CFG")
    assert np.array_equal(pixels(Image.open(path)), pixels(shown[controls.image]))
    refused = page.frame(page.txt2img, controls, "typist", prompt="x", width=8, height=64)
    assert refused[controls.readout].startswith("Live paused: width must be between 64 and 4096, got 8")


def test_the_sketch_becomes_the_picture(page: LivePage) -> None:
    """Inpaint's live mode redraws the canvas with its strokes: the square goes where it is painted."""
    places = []
    for box in ((4, 20, 28, 44), (36, 20, 60, 44)):
        stroke = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        ImageDraw.Draw(stroke).rectangle(box, fill=(30, 80, 225, 255))
        canvas = {"background": Image.new("RGB", (64, 64), (248, 248, 245)), "layers": [stroke], "composite": None}
        shown = page.frame(page.inpaint, page.inpaint_live, "painter", init_image=canvas, prompt="a blue square",
                           seed=SEED, width=64, height=64, denoising_strength=0.6)  # fmt: skip
        drawn = scenes.analyse(shown[page.inpaint_live.image])
        assert (drawn.colour, drawn.shape) == ("blue", "square")
        places.append(drawn.place)
    assert places == ["left", "right"]


def test_strokes_on_an_empty_canvas_are_a_sketch_on_white() -> None:
    stroke = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(stroke).rectangle((4, 20, 28, 44), fill=(30, 80, 225, 255))
    sketch = sketch_of({"background": None, "layers": [stroke], "composite": None})
    assert sketch is not None and sketch.getpixel((10, 30)) == (30, 80, 225) and sketch.getpixel((50, 30)) == (255,) * 3
    half = Image.new("RGBA", (64, 64), (200, 30, 30, 128))  # a see-through picture lies on white
    see_through = sketch_of({"background": half, "layers": []})
    assert see_through is not None and see_through.getpixel((0, 0)) == (227, 142, 142)
    assert sketch_of(None) is None and sketch_of({"background": None, "layers": []}) is None


@pytest.fixture(scope="module")
def client(page: LivePage) -> Iterator[Client]:
    port = free_port()
    page.app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    connected = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield connected
    connected.close()


def test_the_live_endpoint_returns_a_picture_with_its_infotext(client: Client) -> None:
    # A seed the demo draws blue with in 2 LCM steps (34 of 36 prompts come out right at 2 steps, so a
    # random seed would make this test fail now and then).
    answer = client.predict(prompt="a blue circle", steps=2, seed=SEED, api_name="/live")
    picture = decoded_png(answer["image"])
    assert picture.size == (64, 64) and not answer["superseded"] and 0 < answer["seconds"] < 30
    assert scenes.analyse(picture).colour == "blue"
    assert answer["infotext"].startswith("a blue circle\nSteps: 2, Sampler: LCM,")
    first = client.predict(prompt="a blue circle", steps=2, api_name="/live")
    again = client.predict(prompt="a blue circle", steps=2, api_name="/live")  # the caller's seed stays
    assert again["seed"] == first["seed"]
    assert np.array_equal(pixels(decoded_png(again["image"])), pixels(decoded_png(first["image"])))
    with pytest.raises(Exception, match="steps must be a whole number from 1 to 8, got 50"):
        client.predict(prompt="x", steps=50, api_name="/live")


def test_a_burst_of_endpoint_calls_runs_only_the_newest(client: Client) -> None:
    calls = [client.submit(prompt=f"a red square {n}", steps=4, api_name="/live") for n in range(6)]
    answers = [call.result(timeout=60) for call in calls]
    drawn = [answer for answer in answers if answer["image"]]
    dropped = [answer for answer in answers if answer["superseded"]]
    assert len(drawn) + len(dropped) == 6 and drawn and dropped
    assert all(answer["image"] == "" and "superseded" in answer["note"] for answer in dropped)
