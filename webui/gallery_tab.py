"""The Gallery tab: every image in the outputs folder, newest first, paged and searchable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.engine import Engine
from pipelines.outputs import read_metadata

PAGE_SIZE = 48
VIDEOS = (".mp4",)  # animations' clips: played by a video player, not shown as a picture


@dataclass
class GalleryWidgets:
    images: gr.Gallery
    query: gr.Textbox
    page: gr.Number
    info: gr.Markdown
    large: gr.Image
    large_clip: gr.Video  # shown instead of ``large`` when an animation's clip is selected
    parameters: gr.Textbox
    selected_path: gr.State
    reuse: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_reference: gr.Button
    delete: gr.Button
    restore: gr.Button
    refresh: gr.Button
    shown: gr.State  # the outputs paths the grid shows, in order: selection goes by these


def build_gallery_tab(engine: Engine) -> GalleryWidgets:
    with gr.Row():
        query = gr.Textbox(label="Search prompts", placeholder="words in the prompt", scale=4)
        page = gr.Number(1, label="Page", precision=0, minimum=1, scale=1)
        previous = gr.Button("◀ Newer", scale=1)
        following = gr.Button("Older ▶", scale=1)
        refresh = gr.Button("Refresh", scale=1)
    info = gr.Markdown("")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            images = gr.Gallery(
                label="Outputs", columns=6, height=560, allow_preview=False, fit_columns=False,
                interactive=False, object_fit="cover", elem_id="gallery-grid",
            )  # fmt: skip
        with gr.Column(scale=2):
            large = gr.Image(label="Selected", type="filepath", interactive=False, height=360)
            large_clip = gr.Video(label="Selected clip", interactive=False, height=360, visible=False)
            parameters = gr.Textbox(label="Parameters", lines=5, interactive=False, elem_id="gallery-parameters")
            with gr.Row():
                reuse = gr.Button("Reuse parameters", size="sm")
                send_img2img = gr.Button("Send to Image to Image", size="sm")
                send_inpaint = gr.Button("Send to Inpaint", size="sm")
                send_reference = gr.Button("Use as reference", size="sm", elem_id="gallery-send-reference")
            with gr.Row():
                delete = gr.Button("Delete (to trash)", size="sm", variant="stop")
                restore = gr.Button("Restore last deleted", size="sm")
    widgets = GalleryWidgets(
        images, query, page, info, large, large_clip, parameters, gr.State(None),
        reuse, send_img2img, send_inpaint, send_reference, delete, restore, refresh, gr.State([]),
    )  # fmt: skip
    _wire_gallery(engine, widgets, previous, following)
    return widgets


def show_page(engine: Engine, query: str, page: float | None) -> tuple[list[tuple[str, str]], int, str, list[str]]:
    """Thumbnails (path, caption) of one page, the page number shown, a summary line, and the paths."""
    page_number = max(1, int(page or 1))
    items, total = engine.outputs.page(query or "", (page_number - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    if page_number > pages:
        page_number = pages
        items, total = engine.outputs.page(query or "", (page_number - 1) * PAGE_SIZE, PAGE_SIZE)
    found = f"{total} image{'s' if total != 1 else ''}" + (f" matching “{query}”" if query else "")
    thumbnails = [(str(item.path), item.prompt[:80]) for item in items]
    return thumbnails, page_number, f"{found} · page {page_number} of {pages}", [str(item.path) for item in items]


def _wire_gallery(engine: Engine, widgets: GalleryWidgets, previous: gr.Button, following: gr.Button) -> None:
    listing = [widgets.images, widgets.page, widgets.info, widgets.shown]

    def load(query: str, page: float | None) -> tuple[Any, ...]:
        return show_page(engine, query, page)

    for trigger, step in ((widgets.refresh, 0), (previous, -1), (following, 1)):
        trigger.click(lambda q, p, s=step: load(q, max(1, int(p or 1) + s)), [widgets.query, widgets.page], listing)
    widgets.query.submit(lambda q: load(q, 1), widgets.query, listing)

    def select(evt: gr.SelectData, shown: list[str]) -> tuple[Any, ...]:
        # By what the grid shows, not a fresh listing: new images or an unsubmitted search would shift it.
        if not shown or evt.index >= len(shown):
            return None, gr.Video(None, visible=False), "", None
        path = Path(shown[evt.index])
        parameters = read_metadata(path).get("parameters", "")
        if path.suffix.lower() in VIDEOS:
            return gr.Image(None, visible=False), gr.Video(str(path), visible=True), parameters, str(path)
        return gr.Image(str(path), visible=True), gr.Video(None, visible=False), parameters, str(path)

    selection = [widgets.large, widgets.large_clip, widgets.parameters, widgets.selected_path]
    widgets.images.select(select, widgets.shown, selection)

    def delete(path: str | None, query: str, page: float | None, trashed: list[str]) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("Select an image first.")
        try:
            trashed = [*trashed, str(engine.outputs.delete(Path(path)))]
        except (ValueError, OSError) as exc:
            raise gr.Error(f"Could not delete: {exc}") from exc
        gr.Info("Moved to the trash folder: “Restore last deleted” brings it back.")
        return (*load(query, page), None, gr.Video(None, visible=False), "", None, trashed)

    trash = gr.State([])
    widgets.delete.click(
        delete, [widgets.selected_path, widgets.query, widgets.page, trash], [*listing, *selection, trash]
    )

    def restore(trashed: list[str], query: str, page: float | None) -> tuple[Any, ...]:
        if not trashed:
            raise gr.Error("Nothing deleted in this session.")
        try:
            restored = engine.outputs.restore(Path(trashed[-1]))
        except (ValueError, OSError) as exc:  # e.g. restored from another tab already
            raise gr.Error(f"Could not restore: {exc}") from exc
        gr.Info(f"Restored {restored.name}.")
        return (*load(query, page), trashed[:-1])

    widgets.restore.click(restore, [trash, widgets.query, widgets.page], [*listing, trash])
