"""The studio page: a top bar, the tabs, and the wiring between them. Handlers only call the engine."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.engine import Engine
from presets.store import PresetLibrary

from .animation_tab import build_animation_tab, register_animation_api
from .batch_ui import build_batch_controls, register_batch_api, wire_batch
from .endpoints import register_generation_api
from .gallery_tab import GalleryWidgets, build_gallery_tab, show_page
from .generation import build_img2img_tab, build_inpaint_tab, build_txt2img_tab, wire_generation, wire_reveal
from .live_route import LiveRoad
from .live_ui import build_live_controls, register_live_api, wire_live
from .pnginfo_tab import build_png_info_tab, fields_from_image
from .presets_tab import PresetsTab, build_presets_tab
from .presets_ui import (
    PICTURES,
    fill_fields,
    negative_names,
    register_preset_api,
    saved_names,
    style_names,
    wire_saved_settings,
)
from .reference_ui import kept_reference
from .settings_tab import THEME_JS, apply_settings, build_settings_tab, loaded_table
from .state import JobBoard, SettingsStore
from .train_tab import build_train_tab, register_train_api
from .widgets import GenerationWidgets, grid_size
from .xyz_ui import build_xyz_controls, register_xyz_api, wire_xyz

PUBLIC_ENDPOINTS = (
    "txt2img",
    "img2img",
    "inpaint",
    "animate",
    "prompts_from_list",
    "make_dataset",
    "xyz_plot",
    "live",
    "train_lora",
    "list_presets",
    "save_preset",
    "apply_preset",
    "delete_preset",
)
TAB_LABELS = ("Text to Image", "Image to Image", "Inpaint", "Animation", "Train", "Gallery", "Presets", "PNG Info",
              "Settings")  # fmt: skip
CSS = """
.token-counter { text-align: right; font-size: 0.8em; opacity: 0.7; }
.token-counter .over { color: #c2410c; opacity: 1; font-weight: 600; }
.tool-button { max-width: 48px; font-size: 1.2em; }
.job-status { min-height: 1.5em; font-size: 0.9em; }
#atelier-title h1 { margin: 0; font-size: 1.5em; }
/* One result fills the panel's width: keep it short enough to be seen whole, not cropped. */
.results-gallery .thumbnail-item { max-height: 520px; }
#txt2img-live-image img, #inpaint-live-image img { width: 100%; height: 100%; object-fit: contain; }
#txt2img-live-image .live-frame { height: 320px; }
#txt2img-live-image .live-frame img { image-rendering: pixelated; }
"""


@dataclass
class TopBar:
    model: gr.Dropdown
    refresh: gr.Button
    device: gr.Markdown


def model_choices(engine: Engine) -> list[tuple[str, str]]:
    loaded = {model.name for model in engine.manager.loaded()}
    return [(entry.title + (" · loaded" if entry.name in loaded else ""), entry.name) for entry in engine.list_models()]


def device_text(engine: Engine) -> str:
    """Cheap enough for a timer: no folder scan, no lock a model load could hold."""
    loaded = ", ".join(model.name for model in engine.manager.loaded()) or "none yet"
    busy = "generating" if engine.busy else "idle"
    dtype = str(engine.manager.dtype).removeprefix("torch.")
    return f"**{engine.manager.device}** · {dtype} · {busy} · loaded: {loaded}"


def build_top_bar(engine: Engine) -> TopBar:
    with gr.Row(equal_height=True):
        gr.Markdown("# Atelier", elem_id="atelier-title")
        model = gr.Dropdown(
            model_choices(engine), value=engine.default_model, label="Model", scale=4, elem_id="model-picker"
        )
        refresh = gr.Button("↻", scale=0, min_width=48, elem_classes=["tool-button"])
        device = gr.Markdown(device_text(engine), elem_id="device-state")
    return TopBar(model, refresh, device)


@dataclass
class Studio:
    """The built page and its parts, so tests can call a tab's handlers directly."""

    app: gr.Blocks
    engine: Engine
    jobs: JobBoard
    top: TopBar
    tabs: dict[str, GenerationWidgets]
    gallery: GalleryWidgets
    handlers: dict[str, Any]
    routes: list[Any]  # HTTP routes beside Gradio's (the live road), handed to the server at launch


def build_app(engine: Engine, settings: SettingsStore, library: PresetLibrary) -> gr.Blocks:
    """The whole page. ``launch.py`` builds the engine and passes it in; nothing here loads a model.
    The page's own HTTP routes ride on the Blocks (``extra_routes``) to the server's launch."""
    studio = build_studio(engine, settings, library)
    studio.app.extra_routes = studio.routes  # type: ignore[attr-defined]
    return studio.app


def extra_routes(app: gr.Blocks) -> list[Any]:
    """The routes ``build_app`` put beside Gradio's, for ``launch(app_kwargs={"routes": ...})``."""
    return list(getattr(app, "extra_routes", []))


def build_studio(engine: Engine, settings: SettingsStore, library: PresetLibrary) -> Studio:
    saved = settings.load()  # read once: a bad file is reported once
    apply_settings(engine, saved)
    jobs = JobBoard()
    # Gradio copies every shown picture into its cache; clear copies older than an hour.
    with gr.Blocks(title="Atelier", delete_cache=(1800, 3600), analytics_enabled=False) as app:
        top = build_top_bar(engine)
        with gr.Tabs() as tabs:
            with gr.Tab(TAB_LABELS[0], id="txt2img"):
                txt2img = build_txt2img_tab(engine, library)
                txt2img_live = build_live_controls(engine, txt2img, fast_road=True)
                xyz = build_xyz_controls(engine, txt2img)
                batch = build_batch_controls(engine, txt2img)
            with gr.Tab(TAB_LABELS[1], id="img2img"):
                img2img = build_img2img_tab(engine, library)
            with gr.Tab(TAB_LABELS[2], id="inpaint"):
                inpaint = build_inpaint_tab(engine, library)
                inpaint_live = build_live_controls(engine, inpaint)
            with gr.Tab(TAB_LABELS[3], id="animation"):
                build_animation_tab(engine, library, jobs)
            with gr.Tab(TAB_LABELS[4], id="train"):
                build_train_tab(engine, jobs)
            with gr.Tab(TAB_LABELS[5], id="gallery") as gallery_tab:
                gallery = build_gallery_tab(engine)
            with gr.Tab(TAB_LABELS[6], id="presets"):
                presets_tab = build_presets_tab(library)
            with gr.Tab(TAB_LABELS[7], id="pnginfo"):
                png_info_area = gr.Column()
            with gr.Tab(TAB_LABELS[8], id="settings") as settings_tab:
                theme, cache_table = build_settings_tab(engine, settings, saved)
        generation_tabs = {w.mode: w for w in (txt2img, img2img, inpaint)}
        with png_info_area:  # built after the tabs it sends to exist
            build_png_info_tab(engine, tabs, list(generation_tabs.values()))
        device_state = top.device, functools.partial(device_text, engine)
        handlers = {
            mode: wire_generation(engine, library, jobs, w, top.model, device_state)
            for mode, w in generation_tabs.items()
        }
        for widgets in generation_tabs.values():
            _wire_results(engine, widgets, img2img, inpaint, tabs)
            wire_reveal(engine, widgets)
        wire_xyz(engine, library, jobs, txt2img, xyz, top.model)
        wire_batch(engine, library, jobs, txt2img, batch, top.model)
        refresh_pickers, pickers = _wire_presets(library, generation_tabs, presets_tab, top.model)
        register_generation_api(engine, library)
        register_animation_api(engine)
        register_batch_api(engine)
        register_xyz_api(engine)
        register_live_api(engine)
        register_train_api(engine)
        road = LiveRoad.for_tab(engine, library, txt2img)
        wire_live(engine, jobs, txt2img, txt2img_live, top.model, library, road)
        wire_live(engine, jobs, inpaint, inpaint_live, top.model, library)
        app.load(refresh_pickers, None, pickers, show_progress="hidden")  # presets saved since the page was built
        _wire_gallery_actions(engine, gallery, txt2img, img2img, inpaint, tabs)
        _wire_top_bar(engine, top, tuple(generation_tabs.values()))
        listing = [gallery.images, gallery.page, gallery.info, gallery.shown]
        gallery_tab.select(lambda q, p: show_page(engine, q, p), [gallery.query, gallery.page], listing)
        settings_tab.select(lambda: loaded_table(engine), None, cache_table)

        def stop_when_closed(request: gr.Request) -> None:  # the tab closed: its job, queued or running, ends
            jobs.stop(request.session_hash or "anonymous")

        app.unload(stop_when_closed)
        app.load(None, theme, None, js=THEME_JS)
        app.load(lambda: device_text(engine), None, top.device, show_progress="hidden")
        gr.Timer(5).tick(lambda: device_text(engine), None, top.device, show_progress="hidden", queue=False)
    _keep_private(app, public=PUBLIC_ENDPOINTS)
    return Studio(app, engine, jobs, top, generation_tabs, gallery, handlers, road.routes())


def _wire_presets(
    library: PresetLibrary, generation_tabs: dict[str, GenerationWidgets], presets_tab: PresetsTab, model: gr.Dropdown
) -> tuple[Any, list[gr.Dropdown]]:
    """Saved settings in every tab, the script endpoints, and pickers that follow the Presets tab."""
    saved_pickers = [w.presets.saved for w in generation_tabs.values()]
    for mode, widgets in generation_tabs.items():
        wire_saved_settings(library, mode, widgets.presets, widgets.fields, model, saved_pickers)
    register_preset_api(library)
    flat = [(w.presets.styles, style_names) for w in generation_tabs.values()]
    flat += [(w.presets.negatives, negative_names) for w in generation_tabs.values()]
    flat += [(picker, saved_names) for picker in saved_pickers]

    def refresh() -> list[Any]:
        return [gr.Dropdown(choices=names(library)) for _, names in flat]

    outputs = [picker for picker, _ in flat]
    for event in presets_tab.changed:
        event.then(refresh, None, outputs)
    return refresh, outputs


def _keep_private(app: gr.Blocks, public: tuple[str, ...]) -> None:
    """Only the documented endpoints are callable by API clients; the rest is the page's own wiring."""
    for block_function in app.fns.values():
        if block_function.api_name not in public:
            block_function.api_visibility = "private"


def _wire_top_bar(engine: Engine, top: TopBar, generation_tabs: tuple[GenerationWidgets, ...]) -> None:
    # Only text to image follows the model's native size; the picture tabs keep their picture's size.
    sizes = [w.fields[side] for w in generation_tabs if w.mode == "txt2img" for side in ("width", "height")]

    def pick(name: str, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        progress(0, desc=f"Loading {name}")
        try:
            engine.load(name, lambda done, total, what: progress((done, max(total, 1)), desc=f"Downloading {what}"))
        except Exception as exc:  # any load failure is shown; the previous model keeps working
            raise gr.Error(f"Could not load {name}: {exc}") from exc
        side = engine.native_size(name)
        return (device_text(engine), gr.Dropdown(choices=model_choices(engine)), *([side] * len(sizes)))

    top.model.input(pick, top.model, [top.device, top.model, *sizes])
    top.refresh.click(
        lambda: (gr.Dropdown(choices=model_choices(engine)), device_text(engine)), None, [top.model, top.device]
    )


def send_to(path: str | None, tab: str) -> tuple[Any, ...]:
    """A picture into another tab, with that tab's size set to the picture's (as A1111 does)."""
    if not path:
        raise gr.Error("Select an image first.")
    with Image.open(path) as image:
        width, height = grid_size(image.size)
    return path, width, height, gr.Tabs(selected=tab)


def send_to_reference(path: str | None, tab: str) -> tuple[Any, ...]:
    """A picture as the reference image of a generation tab, its reference controls opened."""
    if not path:
        raise gr.Error("Select an image first.")
    return path, gr.Accordion(open=True), gr.Tabs(selected=tab)


def _picked(entries: list[dict[str, Any]], selected: int | None) -> dict[str, Any]:
    if not entries:
        raise gr.Error("Generate an image first.")
    return entries[min(int(selected or 0), len(entries) - 1)]


def _image_at(gallery_value: Any, selected: int | None) -> str:
    """File path of the picked result (the Gallery gives (path, caption) pairs or plain paths)."""
    if not gallery_value:
        raise gr.Error("Generate an image first.")
    item = gallery_value[min(int(selected or 0), len(gallery_value) - 1)]
    return item[0] if isinstance(item, (tuple, list)) else item


def _wire_results(
    engine: Engine, widgets: GenerationWidgets, img2img: GenerationWidgets, inpaint: GenerationWidgets, tabs: gr.Tabs
) -> None:
    def select(evt: gr.SelectData, entries: list[dict[str, Any]]) -> tuple[str, int]:
        return (_picked(entries, evt.index)["infotext"], evt.index) if entries else ("", 0)

    widgets.results.select(select, widgets.session, [widgets.infotext, widgets.selected])
    seed = widgets.fields["seed"]
    widgets.recycle.click(lambda entries: _picked(entries, 0)["seed"], widgets.session, seed)
    widgets.reuse_seed.click(
        lambda entries, index: _picked(entries, index)["seed"], [widgets.session, widgets.selected], seed
    )
    reusable = {name: w for name, w in widgets.fields.items() if name not in PICTURES}

    def reuse_all(entries: list[dict[str, Any]], index: int) -> list[Any]:
        fields = _picked(entries, index)["fields"]
        return [*fill_fields(reusable, fields), kept_reference(engine, fields)]

    reference = widgets.fields["reference_image"]
    widgets.reuse_all.click(reuse_all, [widgets.session, widgets.selected], [*reusable.values(), reference])
    for button, target in ((widgets.send_img2img, img2img), (widgets.send_inpaint, inpaint)):
        button.click(
            lambda value, index, tab=target.mode: send_to(_image_at(value, index), tab),
            [widgets.results, widgets.selected],
            [target.fields["init_image"], target.fields["width"], target.fields["height"], tabs],
        )


def _wire_gallery_actions(
    engine: Engine,
    gallery: GalleryWidgets,
    txt2img: GenerationWidgets,
    img2img: GenerationWidgets,
    inpaint: GenerationWidgets,
    tabs: gr.Tabs,
) -> None:
    reusable = {name: w for name, w in txt2img.fields.items() if name not in PICTURES}
    reference = txt2img.fields["reference_image"]

    def reuse(path: str | None) -> list[Any]:
        fields = fields_from_image(path)
        if not fields:
            raise gr.Error("This image carries no generation parameters to reuse.")
        return [*fill_fields(reusable, fields), kept_reference(engine, fields), gr.Tabs(selected="txt2img")]

    gallery.reuse.click(reuse, gallery.selected_path, [*reusable.values(), reference, tabs])
    gallery.send_reference.click(
        lambda path: send_to_reference(path, txt2img.mode),
        gallery.selected_path,
        [reference, txt2img.reference, tabs],
    )
    for button, target in ((gallery.send_img2img, img2img), (gallery.send_inpaint, inpaint)):
        button.click(
            lambda path, tab=target.mode: send_to(path, tab),
            gallery.selected_path,
            [target.fields["init_image"], target.fields["width"], target.fields["height"], tabs],
        )
