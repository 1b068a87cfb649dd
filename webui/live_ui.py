"""Live mode in Text to Image and Inpaint, and the ``/live`` endpoint.

While the tab's Live box is ticked, every change of the prompt, the negative prompt, a slider, the
seed or the canvas draws a new picture with a few-step sampler (``pipelines.live``). Gradio keeps
only the newest change while a frame runs (``trigger_mode="always_last"``) and the session's
``LiveSlot`` drops requests that have not started, so stale input never runs. In Inpaint the canvas,
strokes and all, is redrawn by image to image: the rough strokes become the picture. Live frames
are not saved; Keep saves the one shown, with its infotext.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import io
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from pipelines import live
from pipelines.engine import Engine
from pipelines.errors import AtelierError, BadRequest
from pipelines.live import LiveFrame, LiveSessions, LiveSlot
from pipelines.requests import Img2Img, Txt2Img
from presets.store import PresetError, PresetLibrary

from .api import decode_image, encode_png
from .endpoints import GPU_WAITERS
from .generation import _editor_images, request_from
from .live_route import KEEP_SCRIPT, LiveRoad, frame_html, page_script
from .shown import shown_file
from .state import JobBoard
from .widgets import GenerationWidgets

log = logging.getLogger(__name__)

FRAME_TIMEOUT_SECONDS = 300  # a first frame may wait for a model to load
# Fields a live frame sets itself (sampler, steps, one picture) or does not use (the mask, the hires
# fix): changing them draws nothing new.
NOT_WATCHED = {
    "sampler_name", "schedule_type", "steps", "cfg_scale", "batch_count", "batch_size", "enable_hr", "hr_upscaler",
    "hr_second_pass_steps", "hr_scale", "hr_resize_x", "hr_resize_y", "mask", "mask_blur", "only_masked",
    "only_masked_padding", "masked_content", "invert_mask",
}  # fmt: skip
# The demo model's colours first: sketching in them, it knows what it is looking at.
SKETCH_COLOURS: list[str | tuple[str, float]] = [
    "#dc1e23",
    "#fa8c14",
    "#f5dc28",
    "#28a53c",
    "#1e50e1",
    "#8c32b9",
    "#ffffff",
    "#000000",
]
MASK_BRUSH = gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24)  # the tab's own inpaint brush
SKETCH_BRUSH = gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults", default_size=12)


@dataclass
class LiveControls:
    """A tab's live controls: the switch, the steps, Keep, the speed readout and the live picture."""

    mode: str
    toggle: gr.Checkbox
    steps: gr.Slider
    keep: gr.Button
    readout: gr.Markdown | None  # None where the page's script writes the readout (``live_route``)
    image: gr.Image | gr.HTML
    key: gr.Textbox  # the page script's slot key, for Keep (hidden)


def build_live_controls(engine: Engine, widgets: GenerationWidgets, fast_road: bool = False) -> LiveControls:
    """Build the controls; they are moved under the tab's Generate row, where the eye already is.
    With ``fast_road`` the page's own script draws the frames (``live_route``): the picture and its
    readout are then one HTML box the script fills."""
    mode = widgets.mode
    steps_value = live.default_steps(engine.default_model)
    with gr.Group(elem_id=f"{mode}-live") as group:
        with gr.Row(equal_height=True):
            toggle = gr.Checkbox(False, label="Live", elem_id=f"{mode}-live-toggle", scale=1, min_width=80,
                                 info="draw as you type" + (" and paint" if mode == "inpaint" else ""))  # fmt: skip
            steps = gr.Slider(1, live.MAX_STEPS, value=steps_value, step=1, label="Live steps", scale=3,
                              elem_id=f"{mode}-live-steps")  # fmt: skip
            keep = gr.Button("Keep", size="sm", scale=1, min_width=80, elem_id=f"{mode}-live-keep")
        key = gr.Textbox(visible=False)
        readout: gr.Markdown | None = None
        image: gr.Image | gr.HTML
        if fast_road:
            image = gr.HTML(frame_html(f"{mode}-live-image"), elem_id=f"{mode}-live-image", visible=False)
        else:
            readout = gr.Markdown("", elem_id=f"{mode}-live-readout", elem_classes=["job-status"])
            image = gr.Image(label="Live", interactive=False, visible=False, height=320, format="png",
                             elem_id=f"{mode}-live-image")  # fmt: skip
    _move_under_generate(group, widgets)
    return LiveControls(mode, toggle, steps, keep, readout, image, key)


def _move_under_generate(group: gr.Group, widgets: GenerationWidgets) -> None:
    """Put ``group`` right below the Generate row of the tab's results column (it was built below the tab)."""
    row = widgets.generate.parent
    column = getattr(row, "parent", None)
    if row is None or column is None or group.parent is None or row not in column.children:
        log.warning("live controls of %s stay below the tab: the results column was not found", widgets.mode)
        return
    group.parent.children.remove(group)
    column.children.insert(column.children.index(row) + 1, group)
    group.parent = column


def wire_live(
    engine: Engine,
    jobs: JobBoard,
    widgets: GenerationWidgets,
    controls: LiveControls,
    model_picker: gr.Dropdown,
    library: PresetLibrary | None = None,
    road: LiveRoad | None = None,
) -> None:
    """Wire the tab's live mode. With ``library``, chosen styles apply to live frames as to Generate.
    With ``road`` (Text to Image) the page's script sends the frames (``live_route``); otherwise
    Gradio events do. ``jobs`` is not needed: live frames yield to every job in the engine."""
    del jobs
    if road is not None:
        _wire_road(road, widgets, controls, model_picker)
        sessions = road.sessions
    else:
        sessions = LiveSessions(engine)
        _wire_frames(engine, sessions, widgets, controls, model_picker, library)
    _wire_switch(widgets, controls)
    model_picker.change(
        lambda name: live.default_steps(name or engine.default_model), model_picker, controls.steps, queue=False
    )
    _wire_keep(sessions, widgets, controls, road)


def _triggers(widgets: GenerationWidgets, controls: LiveControls, model_picker: gr.Dropdown) -> tuple[list, list]:
    """The watched fields and what fires a frame: any of them, the presets, the switch, the steps, the model."""
    watched: list[Any] = [w for name, w in widgets.fields.items() if _watched(widgets.mode, name)]
    presets = [widgets.presets.styles, widgets.presets.negatives]
    triggers = [w.change for w in (*watched, *presets, controls.toggle, controls.steps, model_picker)]
    return watched, triggers


def _wire_road(road: LiveRoad, widgets: GenerationWidgets, controls: LiveControls, model_picker: gr.Dropdown) -> None:
    """Every watched change runs the page's script, which posts the fields to the road: no Gradio event."""
    watched, triggers = _triggers(widgets, controls, model_picker)
    script = page_script(watched_names(widgets), f"{widgets.mode}-live-image")
    inputs = [controls.toggle, controls.steps, model_picker, widgets.presets.styles, widgets.presets.negatives]
    gr.on(triggers, None, inputs=[*inputs, *watched], js=script, queue=False, show_progress="hidden")


def _wire_frames(
    engine: Engine,
    sessions: LiveSessions,
    widgets: GenerationWidgets,
    controls: LiveControls,
    model_picker: gr.Dropdown,
    library: PresetLibrary | None,
) -> None:
    """Every watched change draws a frame. The handler is async and awaits the frame without holding a
    server thread, so it skips Gradio's queue (a few tens of milliseconds less per frame); Gradio still
    sends a session's changes one at a time, the newest of those made meanwhile next."""
    watched, triggers = _triggers(widgets, controls, model_picker)
    presets = [widgets.presets.styles, widgets.presets.negatives]
    readout_box = controls.readout
    assert readout_box is not None, "Gradio-event frames show their speed in the tab's readout"
    unchanged = {controls.image: gr.skip(), readout_box: gr.skip()}

    async def frame(data: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        if not data[controls.toggle]:
            return unchanged
        slot = sessions.slot(_key(request, widgets.mode))
        try:
            values = {name: data[w] for name, w in widgets.fields.items() if _watched(widgets.mode, name)}
            chosen = (data[widgets.presets.styles] or [], data[widgets.presets.negatives] or [])
            model = data[model_picker] or engine.default_model
            wanted = live_request_for(engine, widgets.mode, values, model, data[controls.steps], chosen, library)
            ticket = slot.submit(wanted)
            # Shielded: a timeout or a closed page leaves the frame to finish for the slot.
            waiting = asyncio.shield(asyncio.wrap_future(ticket.future))
            outcome = await asyncio.wait_for(waiting, FRAME_TIMEOUT_SECONDS)
        except (AtelierError, PresetError) as exc:  # shown beside the switch: a toast per keystroke is too loud
            return {readout_box: f"Live paused: {exc}"}
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11
            return {readout_box: "Live: still waiting for the device…"}
        if outcome.error is not None:
            return {readout_box: f"Live paused: {outcome.error}"}
        if outcome.frame is None:  # superseded: the newer change shows its own picture
            return unchanged
        # A file with the marks, written quickly: a live frame is shown once and replaced.
        made, finish = outcome.frame, engine.outputs.finish
        write = functools.partial(shown_file, made.image, finish, "live", made.infotext, compress_level=1)
        return {controls.image: await asyncio.to_thread(write), readout_box: readout(slot, made)}

    gr.on(
        triggers, frame, inputs={model_picker, controls.toggle, controls.steps, *presets, *watched},
        outputs=[controls.image, readout_box], trigger_mode="always_last", queue=False,
        api_visibility="private", show_progress="hidden",
    )  # fmt: skip


def watched_names(widgets: GenerationWidgets) -> list[str]:
    return [name for name in widgets.fields if _watched(widgets.mode, name)]


def _watched(mode: str, name: str) -> bool:
    # In text to image, "denoising_strength" is the hires fix's; in Inpaint it sets how much of the sketch stays.
    return name not in NOT_WATCHED and not (mode == "txt2img" and name == "denoising_strength")


def _key(request: gr.Request, mode: str) -> str:
    return f"{request.session_hash or 'anonymous'}:{mode}"


def _wire_switch(widgets: GenerationWidgets, controls: LiveControls) -> None:
    """The live picture shows while Live is on; in Inpaint the brush offers colours to sketch with."""
    outputs: list[Any] = [controls.image, *([controls.readout] if controls.readout is not None else [])]
    if widgets.mode == "inpaint":
        outputs.append(widgets.fields["init_image"])
    scripted = isinstance(controls.image, gr.HTML)

    def switch(on: bool) -> Any:
        # The readout is the frames' own while Live is on: this event may come back after a frame's.
        if scripted:  # switched off, the box starts empty again; on, it keeps what the script put in
            shown: list[Any] = [gr.HTML(visible=True) if on else gr.HTML(frame_html(f"{widgets.mode}-live-image"),
                                                                         visible=False)]  # fmt: skip
        else:
            shown = [gr.Image(visible=bool(on)), gr.skip() if on else ""]
        if widgets.mode == "inpaint":
            shown.append(gr.ImageEditor(brush=SKETCH_BRUSH if on else MASK_BRUSH))
        return shown if len(shown) > 1 else shown[0]  # Gradio reads a list as one output's value

    controls.toggle.change(switch, controls.toggle, outputs, queue=False, show_progress="hidden")


def _wire_keep(
    sessions: LiveSessions, widgets: GenerationWidgets, controls: LiveControls, road: LiveRoad | None
) -> None:
    outputs = widgets.result_outputs

    def keep(key: str, request: gr.Request) -> dict[Any, Any]:
        # The road's slot is the page script's (its key); a Gradio event's is the session's.
        slot = sessions.get(road.slot_key(request.username, key) if road else _key(request, widgets.mode))
        frame = slot.latest if slot is not None else None
        if slot is None or frame is None:
            raise gr.Error("There is no live picture to keep yet: tick Live and wait for the first picture.")
        try:
            path = slot.keep(frame)
        except (AtelierError, OSError) as exc:
            raise gr.Error(f"Could not keep the live picture: {exc}") from exc
        entry = {"path": str(path), "seed": frame.seed, "infotext": frame.infotext,
                 "fields": frame.request.fields() | {"model": frame.model, "seed": frame.seed}}  # fmt: skip
        return {
            widgets.results: [str(path)], widgets.infotext: frame.infotext, widgets.session: [entry],
            widgets.selected: 0, widgets.status: f"Kept the live picture as {path.name}.",
        } | widgets.no_reveal()  # fmt: skip

    controls.keep.click(keep, controls.key, outputs, queue=False, js=KEEP_SCRIPT if road else None)


def readout(slot: LiveSlot, frame: LiveFrame) -> str:
    """The speed line under the switch: latency of this picture and frames per second lately."""
    steps = frame.request.steps
    if isinstance(frame.request, Img2Img):
        steps = int(steps * frame.request.denoising_strength)
    return (
        f"Live · {frame.latency:.2f} s · {slot.fps():.1f} fps · {steps} step{'s' if steps != 1 else ''} "
        f"{frame.request.sampler_name} · seed {frame.seed}"
    )


def live_request_for(
    engine: Engine,
    mode: str,
    values: dict[str, Any],
    model: str,
    steps: Any,
    chosen: tuple[list[str], list[str]],
    library: PresetLibrary | None,
) -> Txt2Img:
    """A tab's watched field values (by name) as one live frame's request, styles and negative presets
    (``chosen``) applied as Generate applies them."""
    values = dict(values)
    values["prompt"], values["negative_prompt"] = values.get("prompt") or "", values.get("negative_prompt") or ""
    if library is not None:
        values["prompt"], values["negative_prompt"] = library.compose(
            values["prompt"], values["negative_prompt"], *chosen
        )
    wanted = _whole(steps, "live steps")
    if mode == "txt2img":
        return live.live_request(request_from("txt2img", values | {"model": model}), wanted, model)
    if mode != "inpaint":
        raise BadRequest(f"live mode is for Text to Image and Inpaint, not {mode}")
    sketch = sketch_of(values["init_image"])
    values |= {"init_image": None, "mask": None}  # read below, as a sketch: no mask, the whole canvas redrawn
    canvas = request_from("inpaint", values | {"model": model})
    if sketch is None:  # nothing on the canvas yet: draw from the prompt alone
        base: Txt2Img = Txt2Img(**_fields_of(canvas, Txt2Img))
    else:
        base = Img2Img(**_fields_of(canvas, Img2Img)).replace(init_image=sketch)
    return live.live_request(base, wanted, model)


def _fields_of(request: Txt2Img, kind: type[Txt2Img]) -> dict[str, Any]:
    """The fields of ``request`` that a ``kind`` request has."""
    return {field.name: getattr(request, field.name) for field in dataclasses.fields(kind)}


def sketch_of(value: Any) -> Image.Image | None:
    """The editor's picture with every stroke painted on it (white under transparency), or None when
    the canvas is empty. Strokes on a canvas without a picture are painted on white."""
    if not isinstance(value, dict):
        return None
    background, _ = _editor_images(value)  # the picture as the tab reads it, if there is one
    layers = [layer for layer in value.get("layers") or [] if isinstance(layer, Image.Image)]
    if background is None and not layers:
        return None
    size = background.size if background is not None else layers[0].size
    picture = Image.new("RGBA", size, (255, 255, 255, 255))
    if background is not None:  # composited with its own transparency, not the tab's flattened copy
        picture.alpha_composite(value["background"].convert("RGBA"))
    for layer in layers:
        picture.alpha_composite(layer.convert("RGBA").resize(size))
    return picture.convert("RGB")


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise BadRequest(f"{what} must be a whole number from 1 to {live.MAX_STEPS}, got {value!r}")
    if not 1 <= int(value) <= live.MAX_STEPS:
        raise BadRequest(f"{what} must be a whole number from 1 to {live.MAX_STEPS}, got {int(value)}")
    return int(value)


def register_live_api(engine: Engine) -> None:
    """``/live`` for applications that call it per keystroke. Each caller (Gradio session) has a
    slot: in a burst only the newest call runs; an older call that has not started returns at once
    with ``superseded: true`` and no picture."""
    sessions = LiveSessions(engine)

    def live_frame(
        prompt: str, negative_prompt: str = "", seed: int = -1, steps: int = 0, image: str = "", model: str = "",
        width: int = 0, height: int = 0, denoising_strength: float = 0.7, request: gr.Request | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One picture, fast. steps 0 = the model's live default (LCM 4 steps, CFG 1.5; one step for
        turbo/live models); seed -1 = this caller's fixed seed (the picture then changes only with the
        input); image = optional base64 picture to redraw at denoising_strength (image to image);
        width/height 0 = the image's or the model's size. Returns {"image": base64 PNG with its
        infotext, "seconds": request to picture, "infotext", "seed", "superseded", "note"}; a call
        overtaken by a newer one of the same caller before it started returns superseded=true, image ""."""
        name = model or engine.default_model
        try:
            wanted = _whole(steps, "steps") if steps else live.default_steps(name)
            common: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": int(seed),
                                      "width": int(width), "height": int(height)}  # fmt: skip
            base: Txt2Img = Txt2Img(**common)
            if image:
                picture = decode_image(image, "image").convert("RGB")
                base = Img2Img(**common, init_image=picture, denoising_strength=float(denoising_strength))
            slot = sessions.slot((request.session_hash if request else None) or "anonymous")
            outcome = slot.ask(live.live_request(base, wanted, name), FRAME_TIMEOUT_SECONDS)
        except (AtelierError, TimeoutError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        if outcome.error is not None:
            raise gr.Error(str(outcome.error))
        if outcome.frame is None:
            return {"image": "", "seconds": 0.0, "infotext": "", "seed": slot.seed, "superseded": True,
                    "note": "superseded by a newer call before it started; that call returns its picture"}  # fmt: skip
        frame = outcome.frame
        fields = frame.request.fields() | {"model": frame.model, "seed": frame.seed}
        return {
            "image": encode_png(frame.image, frame.infotext, fields, engine.outputs.finish),
            "seconds": round(frame.latency, 4),
            "infotext": frame.infotext, "seed": frame.seed, "superseded": False, "note": "",
        }  # fmt: skip

    gr.api(live_frame, api_name="live", concurrency_limit=GPU_WAITERS, concurrency_id="live")


def decoded_png(data: str) -> Image.Image:
    """A ``/live`` answer's picture as an image (for clients and tests)."""
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
