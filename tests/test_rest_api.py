"""The A1111-compatible REST API (``--api``) as real clients see it.

A user's script talks to Atelier with the public ``webuiapi`` client, mostly with its default
arguments (it sends many A1111-only fields that must be accepted, never a 422). Raw ``httpx`` is
used only where a status code or a malformed body matters. Images are checked with ``sd-parsers``,
a public reader of A1111 metadata. One plain server and one with ``--auth`` serve the module, each
on its own tmp folders; sizes and steps are tiny so the whole file runs in well under a minute.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from conftest import free_port
from PIL import Image, ImageDraw

import launch

TIMEOUT = 120  # seconds for one HTTP call: a wedged server fails the test instead of hanging the suite
USER, PASSWORD = "u", "pa55-w0rd-secret"  # a distinctive password, so a leak is visible in any response
OTHER, OTHER_PASSWORD = "v", "an0ther-secret"  # a second user of the same server
PROMPT, NEGATIVE = "a lighthouse at dusk, oil on canvas", "blurry, low quality"


@dataclass
class Server:
    app: Any
    port: int
    outputs: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/sdapi/v1"


def _serve(tmp: Path, *extra: str) -> Server:
    port = free_port()
    args = launch.parse_args(
        ["--port", str(port), "--outputs-dir", str(tmp / "outputs"), "--data-dir", str(tmp / "data"),
         "--models-dir", str(tmp / "models"), "--api", *extra]
    )  # fmt: skip
    (tmp / "models").mkdir(parents=True, exist_ok=True)
    return Server(launch.serve(args, prevent_thread_lock=True), port, tmp / "outputs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(tmp_path_factory.mktemp("api"))
    yield running
    running.app.close()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = _serve(
        tmp_path_factory.mktemp("api-auth"), "--auth", f"{USER}:{PASSWORD}", "--auth", f"{OTHER}:{OTHER_PASSWORD}"
    )
    yield running
    running.app.close()


@pytest.fixture(scope="module")
def api(server: Server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


@pytest.fixture(scope="module")
def sample(api: webuiapi.WebUIApi) -> webuiapi.WebUIApiResult:
    """One Atelier PNG with known parameters, shared by the metadata tests."""
    return api.txt2img(
        prompt=PROMPT, negative_prompt=NEGATIVE, seed=1234, steps=5, cfg_scale=6.5, width=128, height=128,
        sampler_name="DPM++ 2M", scheduler="Karras",
    )  # fmt: skip


def _post(server: Server, route: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base}/{route}", timeout=TIMEOUT, **kwargs)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _scene() -> tuple[Image.Image, Image.Image]:
    """A red picture with a blue square, and a white mask square over the blue one's centre."""
    picture = Image.new("RGB", (128, 128), (200, 30, 30))
    ImageDraw.Draw(picture).rectangle([32, 32, 96, 96], fill=(20, 40, 220))
    mask = Image.new("RGB", (128, 128), (0, 0, 0))
    ImageDraw.Draw(mask).rectangle([48, 48, 80, 80], fill=(255, 255, 255))
    return picture, mask


def _infotext_fields(text: str) -> dict[str, str]:
    last = text.splitlines()[-1]
    return dict(part.split(": ", 1) for part in last.split(", ") if ": " in part)


# -- 1. txt2img -----------------------------------------------------------------------------------
def test_txt2img_batch_seeds_sizes_and_png_infotext(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a red apple", negative_prompt="blurry", seed=7, batch_size=2, steps=4,
                         width=128, height=64)  # fmt: skip
    info = result.info
    assert isinstance(info, dict), f"info must be a JSON string, got {result.json.get('info')!r}"
    assert info["all_seeds"] == [7, 8]
    assert info["seed"] == 7
    assert (info["width"], info["height"], info["steps"]) == (128, 64, 4)
    assert info["sampler_name"] == "Euler a"  # webuiapi's default sampler
    assert info["sd_model_name"] == "builtin:demo"
    assert info["prompt"] == "a red apple" and info["negative_prompt"] == "blurry"
    assert info["all_prompts"] == ["a red apple"] * 2
    assert result.parameters["prompt"] == "a red apple"  # the request, echoed back
    assert len(result.images) == 2
    for image, seed, text in zip(result.images, [7, 8], info["infotexts"], strict=True):
        assert image.format == "PNG"
        assert image.size == (128, 64)
        assert image.info["parameters"] == text
        lines = text.splitlines()
        assert lines[0] == "a red apple"
        assert lines[1] == "Negative prompt: blurry"
        fields = _infotext_fields(text)
        assert fields["Seed"] == str(seed)
        assert fields["Steps"] == "4" and fields["Size"] == "128x64" and fields["Sampler"] == "Euler a"
    assert "Seed: 8" in result.images[1].info["parameters"]
    # different seeds in one batch give different pictures
    assert np.abs(_rgb(result.images[0]) - _rgb(result.images[1])).mean() > 1


def test_txt2img_batch_count_and_random_seed(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a blue boat", n_iter=2, steps=4, width=64, height=64)  # seed=-1: random
    info = result.info
    assert len(result.images) == 2
    first = info["seed"]
    assert first != -1 and 0 <= first < 2**32
    assert info["all_seeds"] == [first, (first + 1) % 2**32]
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert f"Seed: {first + 1 if first + 1 < 2**32 else 0}" in result.images[1].info["parameters"]


def test_the_same_seed_gives_the_same_image(api: webuiapi.WebUIApi) -> None:
    runs = [api.txt2img(prompt="a green hill", seed=99, steps=4, width=64, height=64) for _ in range(2)]
    assert np.array_equal(_rgb(runs[0].image), _rgb(runs[1].image))


# -- 2. img2img and inpaint -----------------------------------------------------------------------
def test_img2img_uses_the_init_image_and_denoising_strength(api: webuiapi.WebUIApi) -> None:
    picture, _ = _scene()
    unchanged = api.img2img(images=[picture], prompt="a flag", denoising_strength=0.0, steps=8, width=128,
                            height=128, seed=3)  # fmt: skip
    assert np.array_equal(_rgb(unchanged.image), _rgb(picture)), "denoising_strength 0 must keep the picture"
    redrawn = api.img2img(images=[picture], prompt="a flag", denoising_strength=0.6, steps=8, width=128,
                          height=128, seed=3)  # fmt: skip
    assert redrawn.image.size == (128, 128)
    assert redrawn.info["denoising_strength"] == 0.6
    assert "Denoising strength: 0.6" in redrawn.image.info["parameters"]
    assert "Seed: 3" in redrawn.image.info["parameters"]
    assert np.abs(_rgb(redrawn.image) - _rgb(picture)).mean() > 1, "denoising_strength 0.6 changed nothing"


INPAINT_CASES = {
    # webuiapi's defaults: inpainting_fill=0 ("fill"), inpaint_full_res=True, padding 0, mask_blur 4
    "webuiapi defaults": ({}, "fill", "Only masked"),
    "original, only masked": ({"inpainting_fill": 1, "inpaint_full_res_padding": 16}, None, "Only masked"),
    "latent noise, whole picture": ({"inpainting_fill": 2, "inpaint_full_res": False}, "latent noise", None),
}


@pytest.mark.parametrize("case", list(INPAINT_CASES))
def test_inpaint_keeps_pixels_outside_the_mask(api: webuiapi.WebUIApi, case: str) -> None:
    options, content, area = INPAINT_CASES[case]
    picture, mask = _scene()
    result = api.img2img(images=[picture], mask_image=mask, denoising_strength=0.9, prompt="a yellow star", steps=6,
                         width=128, height=128, seed=5, **options)  # fmt: skip
    out, original = _rgb(result.image), _rgb(picture)
    assert result.image.size == (128, 128)
    far = np.ones((128, 128), dtype=bool)
    far[24:105, 24:105] = False  # the mask is 48..80; blur 4 reaches a few pixels past it
    assert np.array_equal(out[far], original[far]), "pixels well outside the mask changed"
    assert np.abs(out[56:73, 56:73] - original[56:73, 56:73]).mean() > 5, "the masked area was not redrawn"
    fields = _infotext_fields(result.image.info["parameters"])
    assert fields["Mask blur"] == "4"
    assert fields.get("Inpaint area") == area
    assert fields.get("Masked content") == content


# -- 3. models, samplers, options -----------------------------------------------------------------
def test_models_samplers_schedulers(api: webuiapi.WebUIApi) -> None:
    assert "builtin:demo" in [model["title"] for model in api.get_sd_models()]
    names = [sampler["name"] for sampler in api.get_samplers()]
    assert {"DPM++ 2M", "Euler a"} <= set(names)
    schedulers = [entry["name"] for entry in api.get_schedulers()]
    assert {"Automatic", "Karras"} <= set(schedulers)
    assert "DPM++ 2M" in api.util_get_sampler_names()


def test_options_switch_the_model_and_refuse_unknown_ones(api: webuiapi.WebUIApi, server: Server) -> None:
    assert api.set_options({"sd_model_checkpoint": "builtin:demo"}) is None
    assert api.get_options()["sd_model_checkpoint"] == "builtin:demo"
    refused = _post(server, "options", json={"sd_model_checkpoint": "no-such-model.safetensors"})
    assert 400 <= refused.status_code < 500
    body = refused.json()
    assert "no-such-model.safetensors" in body["detail"] and "builtin:demo" in body["detail"]
    assert api.get_options()["sd_model_checkpoint"] == "builtin:demo"  # unchanged by the refusal
    override = {"sd_model_checkpoint": "nope.ckpt"}
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "override_settings": override}
    bad_override = _post(server, "txt2img", json=payload)
    assert 400 <= bad_override.status_code < 500
    assert "nope.ckpt" in bad_override.json()["detail"]


# -- 4. png-info, styles, flags, memory -----------------------------------------------------------
def test_png_info_reads_an_atelier_png(api: webuiapi.WebUIApi, sample: webuiapi.WebUIApiResult) -> None:
    infotext = sample.info["infotexts"][0]
    result = api.png_info(sample.image)
    assert result.info == infotext
    params = result.json["parameters"]
    assert str(params["Seed"]) == "1234"
    assert str(params["Steps"]) == "5"
    assert params["Sampler"] == "DPM++ 2M"
    assert (str(params["Size-1"]), str(params["Size-2"])) == ("128", "128")
    # A1111's /png-info names the prompts "Prompt" and "Negative prompt" (parse_generation_parameters)
    assert params.get("Prompt") == PROMPT, f"A1111 clients read parameters['Prompt']; got keys {sorted(params)}"
    assert params.get("Negative prompt") == NEGATIVE


def test_png_info_of_an_image_without_parameters(api: webuiapi.WebUIApi) -> None:
    result = api.png_info(Image.new("RGB", (16, 16), (1, 2, 3)))
    assert result.info == ""


def test_prompt_styles_have_builtin_styles_and_negative_presets(api: webuiapi.WebUIApi) -> None:
    styles = api.get_prompt_styles()
    by_name = {style["name"]: style for style in styles}
    assert "{prompt}" in by_name["Photograph"]["prompt"]
    assert "bad hands" in by_name["Hands"]["negative_prompt"]
    assert all(set(style) >= {"name", "prompt", "negative_prompt"} for style in styles)


def test_styles_apply_to_the_prompt(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a cat", styles=["Photograph", "Hands"], steps=2, width=64, height=64)
    assert result.info["prompt"].startswith("photo of a cat, natural light")
    assert "bad hands" in result.info["negative_prompt"]


def test_cmd_flags_and_memory(api: webuiapi.WebUIApi, server: Server) -> None:
    flags = api.get_cmd_flags()
    assert flags["api"] is True
    assert flags["port"] == server.port
    assert flags["outputs_dir"] == str(server.outputs)
    memory = api.get_memory()
    assert memory["ram"]["total"] > 0
    assert 0 <= memory["ram"]["free"] <= memory["ram"]["total"]


# -- 5. progress and interrupt --------------------------------------------------------------------
def test_interrupt_stops_a_long_generation_and_the_next_one_works(api: webuiapi.WebUIApi, server: Server) -> None:
    outcome: dict[str, Any] = {}

    def long_job() -> None:
        try:
            outcome["result"] = webuiapi.WebUIApi(host="127.0.0.1", port=server.port).txt2img(
                prompt="a slow painting", steps=150, width=128, height=128, seed=11
            )
        except RuntimeError as exc:  # webuiapi's way of reporting a non-200 answer
            outcome["error"] = exc.args
        outcome["finished"] = time.perf_counter()

    worker = threading.Thread(target=long_job, daemon=True)
    worker.start()
    deadline, progress = time.perf_counter() + 60, {}
    while time.perf_counter() < deadline and "finished" not in outcome:
        progress = httpx.get(f"{server.base}/progress", timeout=TIMEOUT).json()
        if progress["progress"] > 0:
            break
        time.sleep(0.05)
    assert progress.get("progress", 0) > 0, f"no progress seen before the job ended: {progress} {outcome}"
    assert 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == 150
    assert progress["state"]["sampling_step"] >= 1
    assert "current_image" in progress and "eta_relative" in progress
    asked = time.perf_counter()
    api.interrupt()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the interrupted request did not return"
    assert "result" not in outcome, "an interrupted generation returned images"
    status, text = outcome["error"]
    assert status == 409, text
    assert "stopped" in text
    assert outcome["finished"] - asked < 10, "the interrupt took too long"
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    after = api.txt2img(prompt="after the stop", steps=2, width=64, height=64, seed=1)
    assert after.info["all_seeds"] == [1] and after.image.size == (64, 64)


# -- 6. errors ------------------------------------------------------------------------------------
def test_bad_requests_get_4xx_with_reasons_and_the_server_keeps_answering(
    api: webuiapi.WebUIApi, server: Server
) -> None:
    malformed = _post(server, "txt2img", content=b'{"prompt": "x",', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert {"error", "detail"} <= set(malformed.json())

    not_object = _post(server, "txt2img", json=["prompt"])
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["detail"]

    with pytest.raises(RuntimeError) as too_many:
        api.txt2img(prompt="x", steps=500, width=64, height=64)
    status, text = too_many.value.args
    assert 400 <= status < 500
    assert "steps" in text and "500" in text

    garbage = _post(server, "img2img", json={"init_images": ["bm90IGFuIGltYWdl!!"], "steps": 4, "width": 64,
                                             "height": 64})  # fmt: skip
    assert 400 <= garbage.status_code < 500
    assert "not a readable image" in garbage.json()["detail"]

    picture, mask = _scene()
    black = Image.new("L", mask.size, 0)
    empty_mask = _post(server, "img2img", json={"init_images": [_b64_png(picture)], "mask": _b64_png(black),
                                                "steps": 4, "width": 64, "height": 64})  # fmt: skip
    assert 400 <= empty_mask.status_code < 500 and "mask is empty" in empty_mask.json()["detail"]

    no_image = _post(server, "img2img", json={"prompt": "x", "steps": 4})
    assert 400 <= no_image.status_code < 500 and "init_images" in no_image.json()["detail"]

    with pytest.raises(RuntimeError) as unknown:
        api.txt2img(prompt="x", sampler_name="Euler z", steps=4, width=64, height=64)
    status, text = unknown.value.args
    assert 400 <= status < 500
    assert "Euler z" in text and "DPM++ 2M" in text and "Euler a" in text

    nan_steps = _post(server, "txt2img", json={"prompt": "x", "steps": "many"})
    assert 400 <= nan_steps.status_code < 500 and "steps" in nan_steps.json()["detail"]

    # still serving, and still generating
    assert "builtin:demo" in [model["title"] for model in api.get_sd_models()]
    assert api.txt2img(prompt="still here", steps=2, width=64, height=64).image.size == (64, 64)


# -- 7. saving --------------------------------------------------------------------------------------
def _saved(outputs: Path) -> set[Path]:
    return set(outputs.rglob("*.png")) if outputs.exists() else set()


def test_save_images_stores_a_png_with_parameters_and_the_default_stores_nothing(
    api: webuiapi.WebUIApi, server: Server
) -> None:
    before = _saved(server.outputs)
    api.txt2img(prompt="not kept", steps=2, width=64, height=64, seed=21)  # webuiapi default: save_images=False
    assert _saved(server.outputs) == before

    result = api.txt2img(prompt="kept", steps=2, width=64, height=64, seed=22, save_images=True)
    new = sorted(_saved(server.outputs) - before)
    assert len(new) == 1, f"expected one new file, got {new}"
    path = new[0]
    assert path.parent == server.outputs / time.strftime("%Y-%m-%d")
    assert "22" in path.stem
    with Image.open(path) as stored:
        assert stored.format == "PNG"
        assert stored.info["parameters"] == result.info["infotexts"][0]
        assert np.array_equal(_rgb(stored), _rgb(result.image))


# -- 8. --auth ----------------------------------------------------------------------------------------
def test_auth_is_required_and_webuiapi_set_auth_works(auth_server: Server) -> None:
    url = f"{auth_server.base}/sd-models"
    anonymous = httpx.get(url, timeout=TIMEOUT)
    assert anonymous.status_code == 401
    assert anonymous.headers.get("www-authenticate", "").lower().startswith("basic")
    assert httpx.get(url, auth=(USER, "wrong"), timeout=TIMEOUT).status_code == 401
    assert httpx.get(url, auth=("someone", PASSWORD), timeout=TIMEOUT).status_code == 401
    assert httpx.post(f"{auth_server.base}/txt2img", json={"prompt": "x"}, timeout=TIMEOUT).status_code == 401
    assert httpx.get(url, auth=(USER, PASSWORD), timeout=TIMEOUT).status_code == 200

    api = webuiapi.WebUIApi(host="127.0.0.1", port=auth_server.port)
    api.set_auth(USER, PASSWORD)
    assert "builtin:demo" in [model["title"] for model in api.get_sd_models()]
    flags = api.get_cmd_flags()
    assert flags["auth"] == ["***", "***"]  # one per --auth user
    assert PASSWORD not in httpx.get(f"{auth_server.base}/cmd-flags", auth=(USER, PASSWORD), timeout=TIMEOUT).text

    with_args = webuiapi.WebUIApi(host="127.0.0.1", port=auth_server.port, username=USER, password=PASSWORD)
    assert with_args.get_options()["sd_model_checkpoint"] == "builtin:demo"


def test_auth_with_a_non_ascii_password(tmp_path: Path) -> None:
    """RFC 7617 clients (httpx, browsers, curl in a UTF-8 shell) send UTF-8; a wrong login stays a 401."""
    running = _serve(tmp_path, "--auth", "zoë:pässwort")
    try:
        url = f"{running.base}/sd-models"
        assert httpx.get(url, auth=("zoë", "wrong"), timeout=TIMEOUT).status_code == 401
        assert httpx.get(url, auth=("someone", "else"), timeout=TIMEOUT).status_code == 401
        assert httpx.get(url, auth=("zoë", "pässwort"), timeout=TIMEOUT).status_code == 200
    finally:
        running.app.close()


# -- 9. a public metadata reader --------------------------------------------------------------------
def test_sd_parsers_reads_an_atelier_png(sample: webuiapi.WebUIApiResult) -> None:
    from sd_parsers import ParserManager
    from sd_parsers.data import Generators

    buffer = io.BytesIO(base64.b64decode(sample.json["images"][0]))  # the bytes exactly as the API sent them
    found = ParserManager().parse(Image.open(buffer))
    assert found is not None, "sd-parsers found no metadata"
    assert found.generator == Generators.AUTOMATIC1111
    assert found.full_prompt == PROMPT
    assert found.full_negative_prompt == NEGATIVE
    [sampler] = found.samplers
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters["seed"] == "1234"
    assert sampler.parameters["steps"] == "5"
    assert sampler.parameters["cfg_scale"] == "6.5"
    assert sampler.parameters["scheduler"] == "Karras"
    assert sampler.model is not None and sampler.model.name == "demo"
    assert found.metadata["Size"] == "128x128"


def test_an_oversized_body_is_refused(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import webui.api

    monkeypatch.setattr(webui.api, "MAX_BODY_BYTES", 1000)
    body = b'{"prompt": "' + b"x" * 5000 + b'"}'
    url = f"http://127.0.0.1:{server.port}/sdapi/v1/txt2img"
    json_type = {"Content-Type": "application/json"}
    response = httpx.post(url, content=body, headers=json_type, timeout=30)
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    chunked = httpx.post(url, content=iter([body[:600], body[600:]]), headers=json_type, timeout=30)  # no length
    assert chunked.status_code == 413


# -- 10. per-user stop and progress (with --auth) --------------------------------------------------------
def _progress(server: Server, auth: tuple[str, str]) -> dict[str, Any]:
    return httpx.get(f"{server.base}/progress", auth=auth, timeout=TIMEOUT).json()


def test_another_user_can_neither_stop_nor_watch_my_job(auth_server: Server) -> None:
    outcome: dict[str, Any] = {}

    def long_job() -> None:
        payload = {"prompt": "a slow painting", "steps": 150, "width": 128, "height": 128, "seed": 4}
        response = _post(auth_server, "txt2img", json=payload, auth=(USER, PASSWORD))
        outcome["status"] = response.status_code

    worker = threading.Thread(target=long_job, daemon=True)
    worker.start()
    deadline, mine = time.perf_counter() + 60, {}
    while time.perf_counter() < deadline and "status" not in outcome:
        mine = _progress(auth_server, (USER, PASSWORD))
        if mine["progress"] > 0:
            break
        time.sleep(0.05)
    assert mine.get("progress", 0) > 0, f"no progress seen: {mine} {outcome}"
    assert mine["state"]["job"], "the owner sees its job's id"
    theirs = _progress(auth_server, (OTHER, OTHER_PASSWORD))
    assert theirs["progress"] > 0  # the other user sees that something runs ...
    assert not theirs["state"].get("job") and theirs["current_image"] is None  # ... but not whose, nor its picture
    for route in ("interrupt", "skip"):
        assert _post(auth_server, route, auth=(OTHER, OTHER_PASSWORD)).status_code == 200
    step = _progress(auth_server, (USER, PASSWORD))["state"]["sampling_step"]
    time.sleep(1.0)
    still = _progress(auth_server, (USER, PASSWORD))
    assert "status" not in outcome, f"another user's interrupt stopped the job: {outcome}"
    assert still["state"]["sampling_step"] > step and not still["state"]["interrupted"]
    assert _post(auth_server, "interrupt", auth=(USER, PASSWORD)).status_code == 200  # the owner can
    worker.join(timeout=30)
    assert outcome.get("status") == 409


# -- 11. hostile bodies: a 4xx with a reason, never a 500 ------------------------------------------------
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("[" * 100000, "nested"),
        ('{"prompt": "x", "styles": [{"a": 1}]}', "styles"),
        ('{"prompt": "x", "styles": "Photograph"}', "styles"),
        ('{"prompt": "x", "override_settings": "x"}', "override_settings"),
    ],
    ids=["deep nesting", "style objects", "styles string", "override_settings string"],
)
def test_hostile_bodies_get_a_4xx_with_a_reason(server: Server, body: str, reason: str) -> None:
    response = _post(server, "txt2img", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert reason in response.json()["detail"]
    assert httpx.get(f"{server.base}/samplers", timeout=TIMEOUT).status_code == 200


# -- 12. a request without a size gets the model's native size ---------------------------------------------
def test_a_request_without_a_size_gets_the_models_native_size(server: Server) -> None:
    response = _post(server, "txt2img", json={"prompt": "a green triangle", "steps": 1, "seed": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (64, 64)  # the demo model's native size
    info = json.loads(body["info"])
    assert (info["width"], info["height"]) == (64, 64)
    assert (body["parameters"]["width"], body["parameters"]["height"]) == (64, 64)
    assert "Size: 64x64" in info["infotexts"][0]
    one_side = _post(server, "txt2img", json={"prompt": "a green triangle", "steps": 1, "width": 128})
    assert json.loads(one_side.json()["info"])["width"] == 128  # an explicit size is honoured
