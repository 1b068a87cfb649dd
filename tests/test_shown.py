"""webui.shown: pictures the page shows from memory become marked files, each encoded once while it
stays on show, and a long job's earlier previews are let go."""

from __future__ import annotations

import base64
import gc
import weakref
from pathlib import Path

from PIL import Image

from pipelines.standards import xmp
from webui.shown import ShownFiles, data_url, shown_file


def _mark(data: bytes) -> bytes:
    return xmp.mark(data, "Atelier", "test")


def test_each_picture_is_encoded_once_while_on_show_and_let_go_after() -> None:
    encoded: list[int] = []

    def finish(data: bytes) -> bytes:
        encoded.append(len(data))
        return _mark(data)

    files = ShownFiles(finish, "preview")
    first = Image.new("RGB", (16, 16), (200, 30, 30))
    shown = files([first, Path("/saved/00001-3.png")], ["a red circle\nSteps: 4", ""])
    assert shown[1] == "/saved/00001-3.png"  # a saved file is shown as it is
    assert files([first], ["a red circle\nSteps: 4"]) == shown[:1] and len(encoded) == 1  # not again
    with Image.open(shown[0]) as file:
        assert file.info["parameters"] == "a red circle\nSteps: 4"
    assert xmp.is_ai_marked(Path(shown[0]).read_bytes())

    held = weakref.ref(first)
    files([Image.new("RGB", (16, 16), (30, 30, 200))])  # the next preview
    del first
    gc.collect()
    assert held() is None, "a preview no longer on show is still held"
    assert len(encoded) == 2


def test_single_files_and_inline_pictures_carry_the_mark() -> None:
    picture = Image.new("RGB", (8, 8), (10, 200, 10))
    assert xmp.is_ai_marked(Path(shown_file(picture, _mark, "live", compress_level=1)).read_bytes())
    url = data_url(picture, _mark)
    assert url.startswith("data:image/png;base64,")
    assert xmp.is_ai_marked(base64.b64decode(url.partition(",")[2]))
