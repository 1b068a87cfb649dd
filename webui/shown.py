"""Pictures the page shows that are not saved outputs: progress previews, live frames, training
samples, a revealed original, and pictures a full disk kept from being saved.

Each still reaches the person as a file (Gradio writes what it is given to its cache; a browser's
"save image" makes a file of an inline picture), so each leaves the server with the marks a saved
file has: the engine's ``outputs.finish`` (the AI-source XMP, and the C2PA manifest when set up).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from gradio import processing_utils
from gradio.utils import get_upload_folder
from PIL import Image

from pipelines.outputs import Finish, png_bytes


def shown_file(
    image: Image.Image, finish: Finish, name: str = "picture", infotext: str = "", *, compress_level: int = 6
) -> str:
    """A marked PNG in Gradio's upload folder, which Gradio hands out as it is (a picture object it
    would encode itself, without the marks)."""
    data = png_bytes(image, infotext, finish=finish, compress_level=compress_level)
    return processing_utils.save_bytes_to_cache(data, f"{name}.png", get_upload_folder())


def data_url(image: Image.Image, finish: Finish, *, compress_level: int = 6) -> str:
    """An inline picture for the page's own HTML, marked like a file."""
    data = png_bytes(image, finish=finish, compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


class ShownFiles:
    """What a gallery shows over one job that updates it many times (previews, samples): saved files
    stay as they are (marked when written); each picture in memory becomes a marked file once, for
    as long as it stays on show."""

    def __init__(self, finish: Finish, name: str = "picture") -> None:
        self.finish, self.name = finish, name
        # by the picture's id and infotext; the picture is kept so that its id stays its own
        self._files: dict[tuple[int, str], tuple[Image.Image, str]] = {}

    def __call__(self, pictures: Sequence[Image.Image | Path | str], infotexts: Sequence[str] = ()) -> list[str]:
        """The files for the gallery; ``infotexts``, when given, go with the pictures in memory (a
        saved file has its own)."""
        texts = list(infotexts) or [""] * len(pictures)
        on_show: dict[tuple[int, str], tuple[Image.Image, str]] = {}
        files = []
        for picture, text in zip(pictures, texts, strict=True):
            if not isinstance(picture, Image.Image):
                files.append(str(picture))
                continue
            key = (id(picture), text)
            known = self._files.get(key) or (picture, shown_file(picture, self.finish, self.name, text))
            on_show[key] = known
            files.append(known[1])
        self._files = on_show  # a long job's earlier previews are let go
        return files
