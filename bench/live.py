"""Benchmark live mode: how soon a change shows, how many frames per second typing gets, and the
few-step picture's time against a 20-step one.

    python bench/live.py                    # about 90 s on a 2-core CPU (demo model, 64 px)
    python bench/live.py --model builtin:demo-live --steps 1
    python bench/live.py --no-browser       # skip the Chromium measurements
    OMP_NUM_THREADS=1 python bench/live.py  # on a machine others are using too (see below)

Figures, per live step count (LCM, CFG 1.5 on the demo; one step without CFG on turbo/live models):

* ``engine_p50_s`` / ``engine_p95_s``: a change handed to a session's ``LiveSlot`` to its finished
  picture, in this process (the device work, the slot and the engine's queue).
* ``endpoint_p50_s`` / ``endpoint_p95_s``: a ``/live`` call through ``gradio_client`` to its decoded
  picture: the engine plus Gradio's queue, HTTP and the PNG.
* ``page_p50_s`` / ``page_p95_s``: in Chromium, a change of the Text to Image prompt with Live on to
  the new picture on the page (the page's script posting the fields to the live road, the picture
  coming back inline, the browser showing it).
* ``typing_fps``: frames finished per second while a prompt is typed at ``--cps`` keys a second
  into the slot for ``--typing-seconds``; ``page_typing_fps``: pictures the page showed per second
  while Chromium typed the same way.
* ``generate_wait_s``: how long a normal Generate (20 steps) waits for the device while a session
  types with Live on at the largest live step count (live yields: at most the running frame's step).
* ``steps4_s`` / ``steps20_s``: one picture with LCM 4 steps (the live default) and with the tab's
  default (DPM++ 2M Karras, 20 steps, CFG 7), through ``Engine.generate``.

Targets: page p50 <= 0.15 s at 64 px and 1 step; >= 5 frames per second while typing. The machine's
load average and torch's thread count go into the JSON: other work on a small CPU slows every figure,
and with two torch threads on two busy cores it slows them several times over (OpenMP's threads wait
for each other), so on a shared machine measure with ``OMP_NUM_THREADS=1``. The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr
import torch

from pipelines import live
from pipelines.engine import Engine, Job
from pipelines.live import LiveSlot, live_request
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings
from presets.store import PresetLibrary
from webui.generation import build_txt2img_tab
from webui.live_route import LiveRoad
from webui.live_ui import build_live_controls, decoded_png, register_live_api, wire_live
from webui.state import JobBoard

LATENCY_TARGET_S = 0.15
FPS_TARGET = 5.0
SIZE = 64
SEED = 3
COLOURS, SHAPES = ("red", "blue", "green", "yellow"), ("circle", "star", "square")
PROMPTS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
TYPED = "a red circle on the left of a white picture, then a blue star on the right"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def spread(values: list[float], prefix: str) -> dict[str, float]:
    median, high = statistics.median(values), percentile(values, 0.95)
    return {f"{prefix}_p50_s": round(median, 4), f"{prefix}_p95_s": round(high, 4)}


def frame(model: str, prompt: str, steps: int) -> Txt2Img:
    return live_request(Txt2Img(prompt=prompt, width=SIZE, height=SIZE, seed=SEED), steps, model)


def engine_latency(engine: Engine, model: str, steps: int, changes: int) -> list[float]:
    slot = LiveSlot(engine, f"bench-{steps}", seed=SEED)
    slot.ask(frame(model, "a grey picture", steps), 120)  # the first frame of a step count sets up its scheduler
    latencies = []
    for index in range(changes):
        outcome = slot.ask(frame(model, PROMPTS[index % len(PROMPTS)], steps), 60)
        assert outcome.frame is not None, outcome
        latencies.append(outcome.frame.latency)
    slot.close()
    return latencies


def typing_fps(engine: Engine, model: str, steps: int, seconds: float, cps: float) -> float:
    """Frames per second while a prompt is typed one key at a time into the slot."""
    slot = LiveSlot(engine, f"typist-{steps}", seed=SEED)
    started = time.perf_counter()
    keys = 0
    while time.perf_counter() - started < seconds:
        keys += 1
        ticket = slot.submit(frame(model, TYPED[: 3 + keys % (len(TYPED) - 3)], steps))
        time.sleep(max(0.0, started + keys / cps - time.perf_counter()))
    ticket.wait(60)
    done = [f for f in slot.frames if f.finished >= started]
    slot.close()
    return len(done) / max(done[-1].finished - started, 1e-6) if done else 0.0


def generate_wait(engine: Engine, model: str, steps: int) -> float:
    """How long a normal Generate waits for the device while someone types with Live on."""
    slot = LiveSlot(engine, "typist-wait", seed=SEED)
    typing = threading.Event()
    typing.set()

    def type_on() -> None:
        keys = 0
        while typing.is_set():
            keys += 1
            slot.submit(frame(model, TYPED[: 3 + keys % (len(TYPED) - 3)], steps))
            time.sleep(0.05)

    typist = threading.Thread(target=type_on, daemon=True)
    typist.start()
    time.sleep(1.0)
    job = Job()
    future = engine.submit(Txt2Img(prompt="a blue square", width=SIZE, height=SIZE, seed=SEED, model=model), job)
    asked = time.perf_counter()
    future.result(120)
    typing.clear()
    typist.join()
    slot.close()
    return job.started - asked


def steps_compare(engine: Engine, model: str) -> tuple[float, float]:
    four = frame(model, "a red star", live.DEFAULT_STEPS)
    twenty = Txt2Img(prompt="a red star", width=SIZE, height=SIZE, seed=SEED, model=model)  # the tab's defaults
    times: dict[int, list[float]] = {4: [], 20: []}
    for _ in range(3):
        for steps, request in ((4, four), (20, twenty)):
            started = time.perf_counter()
            engine.generate(request)
            times[steps].append(time.perf_counter() - started)
    return statistics.median(times[4]), statistics.median(times[20])


def serve(engine: Engine, data: Path, port: int) -> Any:
    """The Text to Image tab with live mode, and ``/live``, as the studio wires them."""
    library = PresetLibrary(data)
    with gr.Blocks(analytics_enabled=False) as app:
        model = gr.Dropdown([engine.default_model], value=engine.default_model, label="Model")
        with gr.Tab("Text to Image"):
            widgets = build_txt2img_tab(engine, library)
            controls = build_live_controls(engine, widgets, fast_road=True)
        road = LiveRoad.for_tab(engine, library, widgets)
        wire_live(engine, JobBoard(), widgets, controls, model, library, road)
        register_live_api(engine)
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                       _frontend=False, app_kwargs={"routes": road.routes()})  # fmt: skip
    return app


def endpoint_latency(url: str, steps: int, changes: int) -> list[float]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(prompt="a grey picture", steps=steps, api_name="/live")
    latencies = []
    for index in range(changes):
        started = time.perf_counter()
        answer = client.predict(prompt=PROMPTS[index % len(PROMPTS)], steps=steps, seed=SEED, api_name="/live")
        decoded_png(answer["image"])
        latencies.append(time.perf_counter() - started)
    client.close()
    return latencies


SHOWN_SOURCE = "() => { const i = document.querySelector('#txt2img-live-image img'); return i ? i.src : ''; }"
# Records every picture the live image shows, as it shows it.
WATCH_SHOWN = """() => {
  window.liveShown = [];
  const root = document.querySelector('#txt2img-live-image');
  const note = () => {
    const image = root.querySelector('img');
    const last = window.liveShown[window.liveShown.length - 1];
    if (image && image.src && last !== image.src) window.liveShown.push(image.src);
  };
  const watched = {subtree: true, childList: true, attributes: true, attributeFilter: ['src']};
  new MutationObserver(note).observe(root, watched);
}"""


def page_figures(
    url: str, step_counts: list[int], changes: int, seconds: float, cps: float
) -> dict[int, dict[str, Any]]:
    """Prompt change to picture on the page, and pictures shown per second while typing, in Chromium."""
    from playwright.sync_api import sync_playwright

    chromium_path = shutil.which("chromium") or "/usr/bin/chromium"
    figures: dict[int, dict[str, Any]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#txt2img-live-toggle", timeout=60_000)
        page.locator("#txt2img-seed input").fill(str(SEED))
        page.locator("#txt2img-live-toggle input[type=checkbox]").check()
        prompt = page.get_by_label("Prompt", exact=True).first
        for steps in step_counts:
            steps_box = page.locator("#txt2img-live-steps input[type=number]")
            steps_box.fill(str(steps))
            steps_box.press("Enter")
            latencies = []
            for index in range(changes + 1):
                before = page.evaluate(SHOWN_SOURCE)
                started = time.perf_counter()
                prompt.fill(PROMPTS[index % len(PROMPTS)] + f" {steps}")
                page.wait_for_function(f"(before) => ({SHOWN_SOURCE})() !== before", arg=before, timeout=60_000)
                latencies.append(time.perf_counter() - started)
            figures[steps] = spread(latencies[1:], "page")  # the first one waits for the step count's own change
            prompt.fill("")
            page.wait_for_timeout(500)  # the empty prompt's picture
            page.evaluate(WATCH_SHOWN)
            started = time.perf_counter()
            for count, key in enumerate(TYPED, start=1):
                if time.perf_counter() - started > seconds:
                    break
                prompt.press_sequentially(key)
                time.sleep(max(0.0, started + count / cps - time.perf_counter()))
            shown = page.evaluate("() => window.liveShown.length")
            figures[steps]["page_typing_fps"] = round(shown / (time.perf_counter() - started), 2)
        browser.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:demo")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--changes", type=int, default=12)
    parser.add_argument("--cps", type=float, default=10.0, help="keys a second while typing")
    parser.add_argument("--typing-seconds", type=float, default=3.0)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    browser = not args.no_browser and shutil.which("chromium") is not None
    results: dict[str, Any] = {"model": args.model, "size": SIZE, "torch_threads": torch.get_num_threads(),
                               "load_average": round(os.getloadavg()[0], 2)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as folder:
        root = Path(folder)
        engine = Engine(EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs",
                                       default_model=args.model))  # fmt: skip
        engine.warm_up()
        per_steps: dict[int, dict[str, Any]] = {}
        for steps in args.steps:
            figures = spread(engine_latency(engine, args.model, steps, args.changes), "engine")
            figures["typing_fps"] = round(typing_fps(engine, args.model, steps, args.typing_seconds, args.cps), 2)
            per_steps[steps] = figures
        results["generate_wait_s"] = round(generate_wait(engine, args.model, max(args.steps)), 4)
        four, twenty = steps_compare(engine, args.model)
        results |= {"steps4_s": round(four, 4), "steps20_s": round(twenty, 4),
                    "steps4_speedup": round(twenty / four, 2)}  # fmt: skip
        port = free_port()
        app = serve(engine, root / "data", port)
        url = f"http://127.0.0.1:{port}/"
        try:
            for steps in args.steps:
                per_steps[steps] |= spread(endpoint_latency(url, steps, args.changes), "endpoint")
            if browser:
                seen = page_figures(url, args.steps, args.changes, args.typing_seconds, args.cps)
                for steps, figures in seen.items():
                    per_steps[steps] |= figures
        finally:
            app.close()
            engine.close()
    for steps, figures in per_steps.items():
        print(f"{steps} step(s): " + ", ".join(f"{name} {value}" for name, value in figures.items()))
    print(f"a Generate while someone types live waited {results['generate_wait_s']:.3f}s for the device")
    print(f"one picture: LCM 4 steps {results['steps4_s']:.3f}s, DPM++ 2M 20 steps {results['steps20_s']:.3f}s")
    one = per_steps.get(1, {})
    results |= {
        "steps": {str(steps): figures for steps, figures in per_steps.items()},
        "latency_target_s": LATENCY_TARGET_S, "fps_target": FPS_TARGET,
        "page_p50_1_step_s": one.get("page_p50_s"), "typing_fps_1_step": one.get("typing_fps"),
    }  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
