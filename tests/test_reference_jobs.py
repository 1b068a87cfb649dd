"""Reference images through every front door: the engine, the A1111 REST API (webuiapi's ControlNet
units), the Gradio endpoints, the infotext and "reuse", on the demo model.

The guidance itself (colours followed, batches, nothing left installed) is tested in
test_reference_guidance.py; where a reference comes from (tags, links, the store) in
test_reference_sources.py. Here: that the pieces are wired, and what a user gets back.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from conftest import free_port, pixels
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

import launch
from pipelines import infotext
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.outputs import read_metadata
from pipelines.requests import Img2Img, Txt2Img
from pipelines.settings import EngineSettings
from webui.pnginfo_tab import fields_from_image

FAST = {"steps": 8, "width": 64, "height": 64, "cfg_scale": 7.0, "sampler_name": "DDIM", "schedule_type": "Automatic"}
BLUE = (30, 60, 220)
TIMEOUT = 120


def blue_circle() -> Image.Image:
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse([12, 12, 52, 52], fill=BLUE)
    return picture


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine with outputs of its own: tests here read the store and the gallery they write."""
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"))
    yield engine
    engine.close()


def test_a_reference_is_recorded_kept_once_and_named_in_the_note(own_engine: Engine) -> None:
    first = own_engine.generate(Txt2Img(prompt="a circle", seed=3, reference_image=blue_circle(), **FAST), save=True)
    again = own_engine.generate(Txt2Img(prompt="a circle", seed=4, reference_image=blue_circle(), **FAST), save=True)
    params = infotext.parse_infotext(first.infotexts[0])
    assert params["Reference"] == "reference-only"  # auto: the demo has no IP-Adapter
    assert params["Reference strength"] == "1" and params["Reference fidelity"] == "0.5"
    digest = params["Reference hash"]
    assert len(digest) == 16 and infotext.parse_infotext(again.infotexts[0])["Reference hash"] == digest
    kept = list(own_engine.references.folder.glob("*.png"))
    assert [path.stem for path in kept] == [digest]  # one file for the picture used twice
    assert np.array_equal(pixels(Image.open(kept[0])), pixels(blue_circle()))
    assert "reference: tab upload" in first.notes
    assert any("reference mode: reference-only" in note for note in first.notes)
    plain = own_engine.generate(Txt2Img(prompt="a circle", seed=3, **FAST))
    assert not np.array_equal(pixels(plain.images[0]), pixels(first.images[0]))
    assert "Reference" not in infotext.parse_infotext(plain.infotexts[0])


def test_the_image_tag_is_taken_out_of_the_prompt_the_model_reads(own_engine: Engine) -> None:
    tagged = own_engine.generate(Txt2Img(prompt="a circle, {image}", seed=5, reference_image=blue_circle(), **FAST))
    untagged = own_engine.generate(Txt2Img(prompt="a circle", seed=5, reference_image=blue_circle(), **FAST))
    assert tagged.request.prompt == "a circle" and tagged.infotexts[0].startswith("a circle\n")
    assert np.array_equal(pixels(tagged.images[0]), pixels(untagged.images[0]))
    with pytest.raises(BadRequest, match=r"\{image\} uses the tab's reference image, but none was uploaded"):
        own_engine.generate(Txt2Img(prompt="a circle {image}", **FAST))


def test_a_gallery_picture_is_a_reference_by_its_file_name(own_engine: Engine) -> None:
    saved = own_engine.generate(Txt2Img(prompt="a blue square", seed=8, **FAST), save=True).paths[0]
    named = own_engine.generate(Txt2Img(prompt=f"a circle {{image:{saved.name}}}", seed=6, **FAST))
    given = own_engine.generate(Txt2Img(prompt="a circle", seed=6, reference_image=Image.open(saved), **FAST))
    assert np.array_equal(pixels(named.images[0]), pixels(given.images[0]))
    assert any(saved.name in note for note in named.notes)
    with pytest.raises(BadRequest, match=r"no-such-picture\.png"):
        own_engine.generate(Txt2Img(prompt="a circle {image:no-such-picture.png}", **FAST))


def test_links_are_refused_unless_the_server_allows_them(own_engine: Engine) -> None:
    with pytest.raises(BadRequest, match="--image-url-allow"):
        own_engine.generate(Txt2Img(prompt="a circle {image:https://example.com/blue.png}", **FAST))


def test_reuse_brings_the_reference_back_from_the_saved_picture(own_engine: Engine) -> None:
    from webui.reference_ui import kept_reference

    result = own_engine.generate(Txt2Img(prompt="a circle", seed=9, reference_image=blue_circle(), **FAST), save=True)
    fields = fields_from_image(str(result.paths[0]))
    assert fields["reference_mode"] == "reference-only" and len(fields["reference_hash"]) == 16
    assert np.array_equal(pixels(kept_reference(own_engine, fields)), pixels(blue_circle()))
    assert kept_reference(own_engine, {"prompt": "no reference"}) is None
    # The same fields from the infotext alone (another tool kept only the text): the hash is read too.
    text_fields = infotext.request_fields(infotext.parse_infotext(read_metadata(result.paths[0])["parameters"]))
    assert text_fields["reference_hash"] == fields["reference_hash"]
    # A request naming the hash, without the picture, draws what the picture drew.
    again = own_engine.generate(Txt2Img(prompt="a circle", seed=9, reference_hash=fields["reference_hash"], **FAST))
    assert np.array_equal(pixels(again.images[0]), pixels(result.images[0]))


def test_reference_values_are_checked_with_what_is_allowed(own_engine: Engine) -> None:
    bad = Txt2Img(
        prompt="a circle", reference_image=blue_circle(), reference_mode="canny", reference_strength=3.0,
        reference_start=0.8, reference_end=0.2, **FAST,
    )  # fmt: skip
    with pytest.raises(BadRequest) as caught:
        own_engine.generate(bad)
    message = str(caught.value)
    assert "reference_mode must be one of auto, reference-only" in message and "got 'canny'" in message
    assert "reference_strength must be between 0 and 2, got 3.0" in message
    assert "reference_start (0.8) must come before reference_end (0.2)" in message


def test_ip_adapter_without_its_files_says_what_to_download(own_engine: Engine) -> None:
    request = Txt2Img(prompt="a circle", reference_image=blue_circle(), reference_mode="ip-adapter", **FAST)
    with pytest.raises(BadRequest, match="ip-adapter"):
        own_engine.generate(request)


def test_image_to_image_follows_a_reference_too(own_engine: Engine) -> None:
    start = Image.new("RGB", (64, 64), (200, 30, 30))
    plain = own_engine.generate(Img2Img(prompt="a circle", seed=2, init_image=start, denoising_strength=0.9, **FAST))
    guided = own_engine.generate(
        Img2Img(prompt="a circle", seed=2, init_image=start, denoising_strength=0.9, reference_image=blue_circle(),
                **FAST)
    )  # fmt: skip
    assert not np.array_equal(pixels(plain.images[0]), pixels(guided.images[0]))


def test_the_hires_fix_redraws_with_the_reference_too(own_engine: Engine) -> None:
    # At denoising strength 1 the second pass draws the final picture afresh: a reference that guided
    # only the first pass leaves almost no trace (0.2 of 255 on average, measured), one that guides
    # both changes it as much as it changes a picture drawn at that size directly (about 90).
    asked = {"prompt": "a red circle", "seed": 2, "enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Lanczos",
             "denoising_strength": 1.0, **FAST}  # fmt: skip
    plain = own_engine.generate(Txt2Img(**asked)).images[0]
    guided = own_engine.generate(Txt2Img(**asked, reference_image=blue_circle())).images[0]
    assert plain.size == guided.size == (128, 128)
    assert np.abs(pixels(plain).astype(float) - pixels(guided)).mean() > 20


def test_the_hires_strength_of_a_text_to_image_request_does_not_shorten_its_reference(own_engine: Engine) -> None:
    # Without the hires fix the strength does nothing: the reference guides all the steps either way
    # (it was counted as image-to-image's share of the steps, and the guidance stopped early).
    asked = {"prompt": "a red circle", "seed": 2, "reference_image": blue_circle(), **FAST}
    usual = own_engine.generate(Txt2Img(**asked, denoising_strength=0.7)).images[0]
    other = own_engine.generate(Txt2Img(**asked, denoising_strength=0.3)).images[0]
    assert np.array_equal(pixels(usual), pixels(other))


# -- the front doors -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("reference-server")
    (tmp / "models").mkdir()
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"),
         "--models-dir", str(tmp / "models"), "--api"]
    )  # fmt: skip
    app = launch.serve(args, prevent_thread_lock=True)
    yield port, tmp / "outputs"
    app.close()


def test_webuiapi_controlnet_reference_unit_guides_the_picture(server: tuple[int, Path]) -> None:
    port, _ = server
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    common: dict[str, Any] = {"prompt": "a circle", "seed": 12, "steps": 8, "width": 64, "height": 64,
                              "sampler_name": "DDIM", "cfg_scale": 7}  # fmt: skip
    unit = webuiapi.ControlNetUnit(image=blue_circle(), module="reference_only", weight=1.0)
    # Fresh dicts each call: webuiapi adds the units to its shared default ``alwayson_scripts`` dict.
    guided = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **common)
    plain = api.txt2img(alwayson_scripts={}, **common)
    params = infotext.parse_infotext(guided.info["infotexts"][0])
    assert params["Reference"] == "reference-only" and params["Reference fidelity"] == "0.5"  # webuiapi's 64: unset
    assert not np.array_equal(pixels(guided.image), pixels(plain.image))
    adain = webuiapi.ControlNetUnit(image=blue_circle(), module="reference_adain", threshold_a=0.2, weight=0.5)
    params = infotext.parse_infotext(
        api.txt2img(controlnet_units=[adain], alwayson_scripts={}, **common).info["infotexts"][0]
    )
    assert (params["Reference"], params["Reference strength"], params["Reference fidelity"]) == (
        "reference-adain", "0.5", "0.2",
    )  # fmt: skip


def test_other_controlnet_modules_get_a_422_naming_the_available_ones(server: tuple[int, Path]) -> None:
    port, _ = server
    unit = webuiapi.ControlNetUnit(image=blue_circle(), module="canny", model="control_canny")
    payload = {"prompt": "a circle", "steps": 2, "width": 64, "height": 64,
               "alwayson_scripts": {"controlnet": {"args": [unit.to_dict()]}}}  # fmt: skip
    answer = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=payload, timeout=TIMEOUT)
    assert answer.status_code == 422  # BadRequest, as for every bad field
    assert "'canny' is not available here; Atelier runs reference_only, reference_adain" in answer.json()["detail"]
    payload["alwayson_scripts"]["controlnet"]["args"] = [{"module": "reference_only", "enabled": True}]
    answer = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=payload, timeout=TIMEOUT)
    assert answer.status_code == 422 and "needs an image" in answer.json()["detail"]
    disabled = unit.to_dict() | {"enabled": False}
    payload["alwayson_scripts"]["controlnet"]["args"] = [disabled]
    assert httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=payload, timeout=TIMEOUT).status_code == 200


def test_gradio_endpoint_takes_a_reference(server: tuple[int, Path]) -> None:
    port, _ = server
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    try:
        answer = client.predict(
            prompt="a circle", steps=8, width=64, height=64, seed=12, sampler_name="DDIM", schedule_type="Automatic",
            reference_image=b64(blue_circle()), reference_mode="reference-only", reference_strength=1.0,
            save=False, api_name="/txt2img",
        )  # fmt: skip
        assert infotext.parse_infotext(answer["infotexts"][0])["Reference"] == "reference-only"
        assert "reference: tab upload" in answer["notes"]
        with pytest.raises(AppError, match="reference_mode must be one of"):
            client.predict(
                prompt="a circle", steps=2, width=64, height=64, reference_image=b64(blue_circle()),
                reference_mode="depth", api_name="/txt2img",
            )  # fmt: skip
    finally:
        client.close()
