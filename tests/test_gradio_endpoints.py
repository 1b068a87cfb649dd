"""The script API as a user's script sees it: ``gradio_client.Client`` against a live in-process server.

One server (with its own models, outputs and data folders) serves the whole module; every test uses
preset names of its own, so the tests do not depend on their order. The restart test replaces the
server with a new one on the same data folder, and later tests use the new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from gradio_client import Client
from gradio_client.exceptions import AppError

import launch
from presets.store import LIBRARY, PresetLibrary

PUBLIC = {
    "/txt2img",
    "/img2img",
    "/inpaint",
    "/animate",
    "/prompts_from_list",
    "/make_dataset",
    "/xyz_plot",
    "/live",
    "/train_lora",
    "/list_presets",
    "/save_preset",
    "/apply_preset",
    "/delete_preset",
}
SETTINGS = ["prompt", "negative_prompt", "steps", "cfg_scale", "sampler_name", "width", "height", "seed"]
PYTHON_TYPES = {"name": "str", "prompt": "str", "negative_prompt": "str", "steps": "int", "cfg_scale": "float",
                "sampler_name": "str", "width": "int", "height": "int", "seed": "int", "overwrite": "bool"}  # fmt: skip
HIDDEN_ERROR = "has not enabled verbose error reporting"  # what a client sees when the app raised a non-gr.Error
CALL_TIMEOUT = 60  # seconds; a wedged server fails the test instead of hanging the suite


class Server:
    """The real ``launch.serve`` on a free port, restartable on the same folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.app: Any = None
        self.client: Client | None = None
        self.url = ""
        self.start()

    def start(self) -> None:
        port = free_port()
        args = launch.parse_args(
            ["--port", str(port), "--outputs-dir", str(self.root / "outputs"), "--data-dir", str(self.data_dir),
             "--models-dir", str(self.root / "models")]
        )  # fmt: skip
        self.app = launch.serve(args, prevent_thread_lock=True)
        self.url = f"http://127.0.0.1:{port}/"
        self.client = Client(self.url, verbose=False)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.app is not None:
            self.app.close()
            self.app = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("gradio-api"))
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Client:
    assert server.client is not None
    return server.client


def _call(client: Client, api_name: str, **arguments: Any) -> Any:
    """``client.predict`` with a deadline: what a careful script does."""
    return client.submit(**arguments, api_name=api_name).result(timeout=CALL_TIMEOUT)


def _save(client: Client, name: str, **settings: Any) -> Any:
    return _call(client, "/save_preset", name=name, **settings)


def _apply(client: Client, name: str) -> Any:
    return _call(client, "/apply_preset", name=name)


def _delete(client: Client, name: str) -> Any:
    return _call(client, "/delete_preset", name=name)


def _listed(client: Client) -> list[dict[str, Any]]:
    return _call(client, "/list_presets")


def _error(call: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the error a call raises in the client; fails if there is none or it is Gradio's blank one."""
    with pytest.raises(AppError) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert HIDDEN_ERROR not in message, "the app raised a plain exception, so the client never saw why"
    return message


# -- what is exposed ----------------------------------------------------------------------------


def test_only_the_documented_endpoints_are_exposed(server: Server, client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == PUBLIC
    assert not api["unnamed_endpoints"]
    # the page's own events exist on the server, but a client cannot find them
    internal = sorted({fn.api_name for fn in server.app.fns.values() if fn.api_name} - {p[1:] for p in PUBLIC})
    assert len(internal) > 20
    for api_name in (internal[0], internal[-1], "apply", "undo"):
        with pytest.raises(ValueError, match="Cannot find a function"):
            client.predict(api_name=f"/{api_name}")


def test_preset_endpoints_have_the_documented_parameters(client: Client) -> None:
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]

    def parameters(endpoint: str) -> list[str]:
        return [p["parameter_name"] for p in endpoints[endpoint]["parameters"]]

    assert parameters("/list_presets") == []
    assert parameters("/save_preset") == ["name", *SETTINGS, "overwrite"]
    assert parameters("/apply_preset") == ["name"]
    assert parameters("/delete_preset") == ["name"]
    save = {p["parameter_name"]: p for p in endpoints["/save_preset"]["parameters"]}
    assert {name: p["python_type"]["type"] for name, p in save.items()} == PYTHON_TYPES
    assert not save["name"]["parameter_has_default"]
    assert save["overwrite"]["parameter_default"] is False


# -- listing and built-ins ----------------------------------------------------------------------


def test_list_presets_has_the_built_in_styles_and_negatives(client: Client) -> None:
    presets = _listed(client)
    assert all(set(entry) == {"name", "kind", "builtin"} for entry in presets)
    assert {"name": "Hands", "kind": "negative", "builtin": True} in presets
    assert {"name": "Watercolor", "kind": "style", "builtin": True} in presets
    shipped = {
        "style": json.loads((LIBRARY / "styles.json").read_text(encoding="utf-8"))["styles"],
        "negative": json.loads((LIBRARY / "negatives.json").read_text(encoding="utf-8"))["negatives"],
    }
    for kind, entries in shipped.items():
        builtin = {entry["name"] for entry in presets if entry["kind"] == kind and entry["builtin"]}
        assert builtin == {entry["name"] for entry in entries}


def test_apply_preset_returns_a_built_in_style_and_negative(client: Client) -> None:
    style = _apply(client, "Watercolor")
    assert style["kind"] == "style"
    assert style["builtin"] is True
    assert "{prompt}" in style["prompt"]
    assert style["prompt"].startswith("watercolor")
    assert style["negative_prompt"]
    negative = _apply(client, "Hands")
    assert negative["kind"] == "negative"
    assert "bad hands" in negative["negative_prompt"]


# -- saving -------------------------------------------------------------------------------------


def test_saved_settings_come_back_whole_and_typed(client: Client) -> None:
    name = "夜の港 🌙"
    settings = {"prompt": "a harbour at night, paper lanterns, 夜景", "negative_prompt": "blurry, text",
                "steps": 28, "cfg_scale": 7, "sampler_name": "Euler a", "width": 640, "height": 384,
                "seed": 3_000_000_000}  # fmt: skip
    assert _save(client, name, **settings) == name
    applied = _apply(client, name)
    assert applied == {"kind": "settings", **settings}
    assert {key: type(value) for key, value in applied.items()} == {
        "kind": str, "prompt": str, "negative_prompt": str, "steps": int, "cfg_scale": float,
        "sampler_name": str, "width": int, "height": int, "seed": int,
    }  # fmt: skip
    assert {"name": name, "kind": "settings", "builtin": False} in _listed(client)


def test_saving_an_existing_name_needs_overwrite(client: Client) -> None:
    name = "Portrait setup"
    _save(client, name, prompt="first", steps=20, cfg_scale=5.5)
    message = _error(_save, client, name, prompt="second", steps=50)
    assert name in message
    assert "exists" in message
    kept = _apply(client, name)
    assert (kept["prompt"], kept["steps"], kept["cfg_scale"]) == ("first", 20, 5.5)

    assert _save(client, name, prompt="second", steps=50, overwrite=True) == name
    replaced = _apply(client, name)
    assert (replaced["prompt"], replaced["steps"], replaced["cfg_scale"]) == ("second", 50, 7.0)
    assert [entry for entry in _listed(client) if entry["name"] == name] == [
        {"name": name, "kind": "settings", "builtin": False}
    ]


def test_concurrent_saves_from_two_scripts_all_land(server: Server) -> None:
    assert server.client is not None
    other = Client(server.url, verbose=False)  # a second script, with its own session
    clients = [server.client, other]
    names = [f"batch {i}" for i in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            done = list(pool.map(lambda i: _save(clients[i % 2], names[i], steps=10 + i), range(len(names))))
        assert done == names
        assert set(names) <= {entry["name"] for entry in _listed(other)}
        assert [_apply(server.client, name)["steps"] for name in names] == [10 + i for i in range(len(names))]
    finally:
        other.close()


@pytest.mark.parametrize(
    ("name", "why"),
    [("../etc", "not allowed"), ("a/b", "not allowed"), ("a\\b", "not allowed"), ("two\nlines", "not allowed"),
     ("..", "not allowed"), ("   ", "needs a name"), ("x" * 81, "at most 80")],
)  # fmt: skip
def test_bad_names_are_refused_with_a_reason(server: Server, client: Client, name: str, why: str) -> None:
    before = _listed(client)
    message = _error(_save, client, name, prompt="escape")
    assert why in message
    assert _listed(client) == before
    assert not [path for path in server.root.rglob("*") if path.name in ("etc", "a", "b")]


# -- deleting -----------------------------------------------------------------------------------


def test_delete_preset_removes_a_user_preset(server: Server, client: Client) -> None:
    name = "Throwaway 🗑"
    _save(client, name, prompt="gone soon")
    assert _delete(client, name) == name
    assert name not in {entry["name"] for entry in _listed(client)}
    assert name in _error(_apply, client, name)
    stored = json.loads((server.data_dir / "presets.json").read_text(encoding="utf-8"))
    assert name not in {entry["name"] for entry in stored["settings"]}
    assert "no user preset" in _error(_delete, client, name)


@pytest.mark.parametrize("name", ["Hands", "Watercolor"])
def test_built_in_presets_cannot_be_deleted(client: Client, name: str) -> None:
    message = _error(_delete, client, name)
    assert name in message
    assert "cannot be deleted" in message
    assert any(entry["name"] == name and entry["builtin"] for entry in _listed(client))
    assert _apply(client, name)["builtin"] is True


def test_unknown_names_get_a_clear_error(client: Client) -> None:
    assert "no preset called 'No such thing'" in _error(_apply, client, "No such thing")
    assert "no user preset called 'No such thing'" in _error(_delete, client, "No such thing")


# -- persistence --------------------------------------------------------------------------------


def test_presets_survive_a_restart(server: Server) -> None:
    name = "Survives restarts ✓"
    settings = {"prompt": "lighthouse", "negative_prompt": "fog", "steps": 33, "cfg_scale": 4.5,
                "sampler_name": "DDIM", "width": 768, "height": 512, "seed": 42}  # fmt: skip
    assert server.client is not None
    _save(server.client, name, **settings)
    old_url = server.url

    server.restart()
    assert server.url != old_url
    assert server.client is not None
    assert _apply(server.client, name) == {"kind": "settings", **settings}
    assert {"name": name, "kind": "settings", "builtin": False} in _listed(server.client)

    path = server.data_dir / "presets.json"
    text = path.read_text(encoding="utf-8")
    stored = json.loads(text)
    assert stored["schema"] == "atelier-presets"
    assert stored["version"] == 1
    assert name in text  # human-readable: not \u-escaped
    (entry,) = [entry for entry in stored["settings"] if entry["name"] == name]
    assert entry["settings"] == settings


# -- known problems (strict: these start failing once fixed, so the marker comes off) ------------------


@pytest.mark.parametrize("name", ["Cafe\u0301 crème", "  padded name  "])
def test_a_preset_is_found_by_the_name_it_was_saved_under(client: Client, name: str) -> None:
    _save(client, name, steps=12)
    assert _apply(client, name)["steps"] == 12
    _delete(client, name)


def test_a_number_that_is_not_a_number_gets_a_clear_error(client: Client) -> None:
    assert "steps" in _error(_save, client, "Bad steps", steps="many")


def test_losing_a_delete_race_gets_a_clear_error(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "Deleted twice"
    _save(client, name)
    delete = PresetLibrary.delete

    def other_tab_wins(library: PresetLibrary, kind: str, preset: str) -> None:
        delete(library, kind, preset)  # another tab deletes it between our check and our delete
        delete(library, kind, preset)

    monkeypatch.setattr(PresetLibrary, "delete", other_tab_wins)
    assert name in _error(_delete, client, name)


def _png(image: Any) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_txt2img_endpoint_returns_pngs_with_their_parameters(client: Client) -> None:
    import base64
    import io

    from PIL import Image

    result = _call(client, "/txt2img", prompt="a red circle", seed=11, steps=4, width=64, height=64, batch_size=2)
    assert result["seeds"] == [11, 12]
    second = Image.open(io.BytesIO(base64.b64decode(result["images"][1])))
    assert second.size == (64, 64)
    assert second.text["parameters"] == result["infotexts"][1]
    assert "Seed: 12," in result["infotexts"][1] and result["infotexts"][1].startswith("a red circle\n")


def test_inpaint_endpoint_keeps_pixels_outside_the_mask(client: Client) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    picture = Image.new("RGB", (64, 64), (30, 60, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    result = _call(
        client, "/inpaint", init_image=_png(picture), mask=_png(mask), prompt="a yellow dot", mask_blur=0,
        denoising_strength=1.0, steps=4, seed=2,
    )  # fmt: skip
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB"), dtype=np.int16)
    assert np.array_equal(out[:20], np.full((20, 64, 3), (30, 60, 200)))
    assert np.abs(out[26:38, 26:38] - np.array((30, 60, 200))).mean() > 10


def test_generation_endpoints_explain_bad_input(client: Client) -> None:
    assert "steps must be between 1 and 150, got 500" in _error(_call, client, "/txt2img", prompt="x", steps=500)
    assert "not a readable image" in _error(_call, client, "/img2img", init_image="bm90IGFuIGltYWdl", prompt="x")
