"""LoRA per job: prompt tags, the LoRA folder, hashes, and applying LoRAs to the demo model.

No LoRA is published for the demo model, so the tests write their own: one in diffusers/peft layout
(a peft ``LoraConfig`` on the UNet's attention, saved with ``save_lora_weights``) and one in kohya's
layout (``lora_unet_...``/``lora_te_...`` with ``lora_down``/``lora_up``/``alpha``, including a 3x3
convolution as LyCORIS' LoCon writes it). Random weights cannot draw anything in particular; what is
checked is that each file reaches the pictures (and the text encoder), scales with its weight, and
that the model is exactly as loaded once the job is over.
"""

from __future__ import annotations

import copy
import hashlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import pixels

from pipelines import loading, samplers
from pipelines.errors import BadRequest
from pipelines.lora import LoraLibrary, LoraTag, applied, extract, without_tags
from pipelines.lora.apply import lora_layers
from pipelines.lora.files import read_tensors
from pipelines.manager import PipelineManager
from pipelines.settings import EngineSettings

SIDE = 64
STEPS = 4
PROMPT = "a red circle at the top"
METHODS = ["fused", "adapters"]


# -- LoRA files made here --------------------------------------------------------------------
def write_peft_lora(unet: Any, path: Path, seed: int = 0) -> None:
    """A rank-4 LoRA on the UNet's attention projections, in the layout diffusers' training
    scripts save: peft state dict -> diffusers names -> ``save_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    with loading.building_modules():  # a server's engine may be loading a model on its own thread
        model = copy.deepcopy(unet)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:  # peft starts B at zero (no change); both get fixed random values
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True
    )


def write_kohya_lora(unet: Any, text_encoder: Any, path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA: UNet attention, a 1x1 projection, a 3x3 ResNet convolution (LoCon) and
    every text-encoder attention/MLP layer; rank 4, alpha 2 (scale 0.5)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(flat: str, module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Conv2d):
            down_shape: tuple[int, ...] = (4, module.in_channels, *module.kernel_size)
            up_shape: tuple[int, ...] = (module.out_channels, 4, 1, 1)
        else:
            assert isinstance(module, torch.nn.Linear)
            down_shape, up_shape = (4, module.in_features), (module.out_features, 4)
        tensors[f"{flat}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.1
        tensors[f"{flat}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.1
        tensors[f"{flat}.alpha"] = torch.tensor(2.0)

    unet_targets = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0", "proj_in", "resnets.0.conv1")
    for name, module in unet.named_modules():
        if name.endswith(unet_targets):
            add("lora_unet_" + name.replace(".", "_"), module)
    for name, module in text_encoder.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
            # kohya names the text encoder from transformers 4's layout, with its ``text_model``.
            add("lora_te_text_model_" + name.replace(".", "_"), module)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return tensors


# -- fixtures --------------------------------------------------------------------------------
@dataclass
class Demo:
    manager: PipelineManager
    model: Any

    @property
    def pipe(self) -> Any:
        return self.model.pipe


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo model in a manager of its own: nothing here can leave state on the session engine."""
    root = tmp_path_factory.mktemp("lora-models")
    manager = PipelineManager(EngineSettings(models_dir=root, outputs_dir=root / "outputs"))
    return Demo(manager, manager.get("builtin:demo"))


def view(demo: Demo, mode: str = "txt2img") -> Any:
    scheduler = samplers.build_scheduler(demo.pipe.scheduler.config, "Euler a")
    return demo.manager.view(demo.model, mode, scheduler)


@pytest.fixture(scope="module")
def library(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> LoraLibrary:
    folder = tmp_path_factory.mktemp("models") / "Lora"
    (folder / "styles").mkdir(parents=True)
    write_peft_lora(demo.pipe.unet, folder / "ink.safetensors")
    write_kohya_lora(demo.pipe.unet, demo.pipe.text_encoder, folder / "styles" / "kohya-star.safetensors")
    return LoraLibrary(folder)


@pytest.fixture
def pipe(demo: Demo) -> Iterator[Any]:
    pipe = view(demo)
    yield pipe
    # Whatever a test did, the next one starts from the model as loaded.
    assert not _peft_layers(pipe), "a test left LoRA layers on the model"


def generate(pipe: Any, prompt: str = PROMPT, seed: int = 3) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    result = pipe(prompt, num_inference_steps=STEPS, height=SIDE, width=SIDE, generator=generator, output_type="np")
    return np.asarray(result.images[0])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _peft_layers(pipe: Any) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        f"{part}.{name}"
        for part in ("unet", "text_encoder")
        for name, module in getattr(pipe, part).named_modules()
        if isinstance(module, BaseTunerLayer)
    ]


def snapshot(pipe: Any) -> dict[str, Any]:
    """Everything a LoRA could leave behind: module classes, state dict keys and tensors (their
    storage, and a copy of their values), and the parts' own attributes."""
    state: dict[str, Any] = {}
    for part in ("unet", "text_encoder"):
        module = getattr(pipe, part)
        tensors = module.state_dict()
        state[part] = {
            "classes": [(name, type(child)) for name, child in module.named_modules()],
            "keys": list(tensors),
            "storage": {key: tensor.data_ptr() for key, tensor in tensors.items()},
            "values": {key: tensor.clone() for key, tensor in tensors.items()},
            "attributes": set(vars(module)),
        }
    return state


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for part, seen in before.items():
        now = after[part]
        assert now["classes"] == seen["classes"], f"{part}: module classes changed"
        assert now["keys"] == seen["keys"], f"{part}: state dict keys changed"
        assert now["storage"] == seen["storage"], f"{part}: weight tensors were replaced"
        assert all(torch.equal(now["values"][key], value) for key, value in seen["values"].items()), part
        assert now["attributes"] == seen["attributes"], f"{part}: {now['attributes'] ^ seen['attributes']}"


# -- tags ------------------------------------------------------------------------------------
def test_tags_are_taken_out_of_the_prompt_with_their_weights() -> None:
    text, tags = extract("a red circle <lora:ink:0.8>, at the top <lyco:styles/kohya-star>\nsecond line")
    assert text == "a red circle , at the top\nsecond line"
    assert tags == [LoraTag("ink", 0.8, 0.8), LoraTag("styles/kohya-star", 1.0, 1.0)]
    # Two numbers: text encoder first, UNet second (A1111's order); keys name either one.
    assert extract("<lora:a:0.25:1.5>")[1] == [LoraTag("a", 0.25, 1.5)]
    assert extract("<lora:a:unet=0.3>")[1] == [LoraTag("a", 1.0, 0.3)]
    assert extract("<LORA:a:te=0:unet=-1>")[1] == [LoraTag("a", 0.0, -1.0)]
    # The same name twice is applied once, with the weights added part by part.
    assert extract("<lora:a:0.5> x <lora:b> <lora:a:0.25:1>")[1] == [LoraTag("a", 0.75, 1.5), LoraTag("b")]
    assert extract("no  tags\there ") == ("no  tags\there ", [])
    assert without_tags("a <lora:x:bad>  cat <lora:y>") == "a cat"  # the token counter's: never raises
    assert LoraTag("a", 0.5, 0.5).text() == "<lora:a:0.5>"
    assert LoraTag("a", 1.0, 0.25).text() == "<lora:a:1:0.25>"
    assert extract(LoraTag("x y", 0.5, 2.0).text())[1] == [LoraTag("x y", 0.5, 2.0)]


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a cat <lora:ink:heavy>", ["<lora:ink:heavy>", "'heavy' is not a number"]),
        ("<lora::0.5>", ["<lora::0.5>", "name is empty"]),
        ("<lora:ink:1:2:3>", ["<lora:ink:1:2:3>", "3 weights"]),
        ("<lora:ink:>", ["<lora:ink:>", "empty"]),
        ("<lora:ink:nan>", ["<lora:ink:nan>", "out of range"]),
        ("<lora:ink:dyn=4>", ["<lora:ink:dyn=4>", "'dyn'"]),
    ],
)
def test_malformed_tags_are_refused_by_name(prompt: str, words: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        extract(prompt)
    assert all(word in str(caught.value) for word in words), str(caught.value)


# -- the folder ------------------------------------------------------------------------------
def test_the_library_lists_and_finds_files(library: LoraLibrary, tmp_path: Path) -> None:
    assert library.names() == ["ink", "styles/kohya-star"]
    star = library.folder / "styles" / "kohya-star.safetensors"
    assert library.find("styles/kohya-star") == star
    assert library.find("kohya-star") == star  # the bare stem, when no other file has it
    assert library.find("Kohya-Star.safetensors") == star
    with pytest.raises(BadRequest) as caught:
        library.resolve([LoraTag("ink"), LoraTag("watercolour")])
    message = str(caught.value)
    assert "unknown LoRA 'watercolour'" in message and "ink, styles/kohya-star" in message
    assert message.count("unknown") == 1

    empty = LoraLibrary(tmp_path / "Lora")
    with pytest.raises(BadRequest, match="no LoRA files in"):
        empty.find("ink")
    (tmp_path / "Lora" / "a").mkdir(parents=True)
    (tmp_path / "Lora" / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / "Lora" / folder / "same.safetensors").write_bytes(b"")
    (tmp_path / "Lora" / "old.pt").write_bytes(b"not opened")
    with pytest.raises(BadRequest, match="ambiguous: write one of a/same, b/same"):
        empty.find("same")
    with pytest.raises(BadRequest, match=r"old\.pt, a pickle file"):
        empty.find("old")
    assert empty.names() == ["a/same", "b/same"]


def test_hashes_are_a1111s_lora_hashes(library: LoraLibrary, tmp_path: Path) -> None:
    loras = library.resolve([LoraTag("ink"), LoraTag("kohya-star", 0.5, 1.0)])
    expected = []
    for path, tag in loras:
        data = path.read_bytes()
        (header,) = struct.unpack("<Q", data[:8])
        expected.append(f"{tag.name}: {hashlib.sha256(data[8 + header :]).hexdigest()[:12]}")
    assert library.infotext_value(loras) == ", ".join(expected)

    # A file's hash follows its contents; the cache notices a rewritten file.
    copy_path = tmp_path / "copy.safetensors"
    copy_path.write_bytes(loras[0][0].read_bytes())
    first = library.short_hash(copy_path)
    assert first == expected[0].split(": ")[1]
    from safetensors.torch import save_file

    save_file({"x.lora_down.weight": torch.ones(2, 2)}, str(copy_path))
    assert library.short_hash(copy_path) != first
    assert library.infotext_value([(copy_path, LoraTag("a:b,c"))]).startswith("abc: ")


# -- applying ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_each_layout_changes_the_picture_and_leaves_no_trace(pipe: Any, library: LoraLibrary, method: str) -> None:
    before = snapshot(pipe)
    plain = generate(pipe)
    changes = {}
    for name in ("ink", "kohya-star"):
        with applied(pipe, library.resolve([LoraTag(name)]), library, method=method) as record:
            assert record.method == method and record.layers > 0
            changes[name] = distance(generate(pipe), plain)
        assert np.array_equal(generate(pipe), plain), f"{name}: the next picture differs"
    assert_unchanged(before, snapshot(pipe))
    assert changes["ink"] > 0.002 and changes["kohya-star"] > 0.002, changes


def test_adapters_wait_while_a_model_is_built_on_another_thread(pipe: Any, library: LoraLibrary) -> None:
    """A load elsewhere in the process (a second engine, a script) patches torch so new modules get
    empty "meta" weights; peft's layers built meanwhile would be empty and the job would fail."""
    from accelerate import init_empty_weights

    with applied(pipe, library.resolve([LoraTag("ink")]), library, method="adapters"):
        expected = generate(pipe)
    inside, done = threading.Event(), threading.Event()

    def build() -> None:
        with loading.building_modules(), init_empty_weights():
            inside.set()
            done.wait(0.5)

    builder = threading.Thread(target=build)
    builder.start()
    assert inside.wait(10)
    try:
        with applied(pipe, library.resolve([LoraTag("ink")]), library, method="adapters"):
            assert np.array_equal(generate(pipe), expected)
    finally:
        done.set()
        builder.join()


def test_weights_scale_the_change_and_the_text_encoder_part_reaches_the_prompt(pipe: Any, library: LoraLibrary) -> None:
    plain = generate(pipe)
    with torch.no_grad():
        embeds = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    distances = {}
    for weight in (0.5, 1.0):
        with applied(pipe, library.resolve([LoraTag("kohya-star", weight, weight)]), library):
            distances[weight] = distance(generate(pipe), plain)
    assert 0 < distances[0.5] < distances[1.0], distances
    # Text encoder only (UNet weight 0): the prompt's embedding moves, and with it the picture.
    with applied(pipe, library.resolve([LoraTag("kohya-star", 1.0, 0.0)]), library), torch.no_grad():
        moved = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
        te_only = generate(pipe)
    assert not torch.equal(moved, embeds) and distance(te_only, plain) > 0
    # UNet only: the embedding is the plain one.
    with applied(pipe, library.resolve([LoraTag("kohya-star", 0.0, 1.0)]), library), torch.no_grad():
        assert torch.equal(pipe.encode_prompt(PROMPT, "cpu", 1, False)[0], embeds)


def test_two_loras_at_once_and_both_methods_agree(pipe: Any, library: LoraLibrary) -> None:
    before = snapshot(pipe)
    plain = generate(pipe)
    both_tags = [LoraTag("ink", 1.0, 0.8), LoraTag("kohya-star", 0.7, 0.7)]
    results = {}
    for method in METHODS:
        with applied(pipe, library.resolve(both_tags), library, method=method) as record:
            results[method] = generate(pipe)
        assert record.parts == {"ink": ["unet"], "kohya-star": ["text_encoder", "unet"]}
    with applied(pipe, library.resolve(both_tags[:1]), library):
        ink_only = generate(pipe)
    assert distance(results["fused"], ink_only) > 0.001 and distance(results["fused"], plain) > 0.002
    # Same change two ways: the fused weights and peft's extra matmuls differ by float rounding only.
    assert np.abs(results["fused"] - results["adapters"]).max() < 2e-3
    assert np.array_equal(generate(pipe), plain)
    assert_unchanged(before, snapshot(pipe))
    # The library's kept tensors are what the files hold: no job wrote into them.
    for path, _ in library.resolve(both_tags):
        fresh = read_tensors(path)
        assert all(torch.equal(library.tensors(path)[key], value) for key, value in fresh.items())


def test_every_view_of_the_model_is_restored(demo: Demo, library: LoraLibrary) -> None:
    txt2img, img2img = view(demo), view(demo, "img2img")
    start = (generate(txt2img) * 255).round().astype(np.uint8)
    plain = generate(txt2img)
    with applied(img2img, library.resolve([LoraTag("ink")]), library):
        shared = generate(txt2img)  # the views share their modules: the LoRA reaches this one too
    assert distance(shared, plain) > 0.002
    assert np.array_equal(generate(txt2img), plain)
    assert np.array_equal((generate(txt2img) * 255).round().astype(np.uint8), start)
    assert not _peft_layers(txt2img)


@pytest.mark.parametrize("method", METHODS)
def test_a_failing_job_still_takes_its_loras_off(pipe: Any, library: LoraLibrary, method: str) -> None:
    before = snapshot(pipe)
    with (
        pytest.raises(RuntimeError, match="stopped"),
        applied(pipe, library.resolve([LoraTag("ink")]), library, method),
    ):
        raise RuntimeError("stopped half-way")
    assert_unchanged(before, snapshot(pipe))


def test_files_that_are_not_loras_for_this_model_are_named(pipe: Any, library: LoraLibrary, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "Lora"
    folder.mkdir()
    ink = library.tensors(library.find("ink"))
    # Made for a bigger model: a block this UNet does not have, and shapes this one's layers lack.
    save_file(
        {
            "lora_unet_down_blocks_3_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 1280, 1, 1),
            "lora_unet_down_blocks_3_attentions_0_proj_in.lora_up.weight": torch.zeros(1280, 4, 1, 1),
        },
        str(folder / "sd15-style.safetensors"),
    )
    wide = {key: torch.zeros(value.shape[0], 320) if "lora.down" in key else value for key, value in ink.items()}
    save_file(wide, str(folder / "wide.safetensors"))
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(folder / "loha.safetensors"))
    (folder / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(folder / "checkpoint.safetensors"))
    files = LoraLibrary(folder)
    before = snapshot(pipe)
    plain = generate(pipe)
    expectations = {
        "sd15-style": "not a LoRA for this model",
        "wide": "do not fit this model's layer",
        "loha": "LoHa",
        "garbage": "not a readable .safetensors file",
        "checkpoint": "not a LoRA: it holds no LoRA weights",
    }
    for name, words in expectations.items():
        # The good file first: a bad second file must leave nothing of the first behind.
        loras = library.resolve([LoraTag("ink")]) + files.resolve([LoraTag(name)])
        with pytest.raises(BadRequest) as caught, applied(pipe, loras, files):
            pass
        assert f"{name}.safetensors" in str(caught.value) and words in str(caught.value), str(caught.value)
    assert np.array_equal(generate(pipe), plain)
    assert_unchanged(before, snapshot(pipe))


def test_kohya_and_diffusers_names_reach_the_same_layers(pipe: Any, library: LoraLibrary) -> None:
    """The kohya file's alpha 2 over rank 4 is folded into its up weights (scale 0.5), and the
    diffusers file's layers keep their own scale 1."""
    raw = library.tensors(library.find("kohya-star"))
    layers = lora_layers(pipe, raw, "kohya-star.safetensors")
    flat = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    down, up = layers["unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert torch.equal(down, raw[f"{flat}.lora_down.weight"])
    assert torch.allclose(up, raw[f"{flat}.lora_up.weight"] * 0.5)
    assert ("text_encoder", "encoder.layers.1.mlp.fc2") in layers
    assert layers["unet", "down_blocks.0.resnets.0.conv1"][0].shape[2:] == (3, 3)  # LoCon's 3x3 down
    ink = lora_layers(pipe, library.tensors(library.find("ink")), "ink.safetensors")
    assert {part for part, _ in ink} == {"unet"} and len(ink) == 4 * 14  # 4 projections x 14 attentions


def test_the_oldest_diffusers_layout_is_read_too(pipe: Any) -> None:
    """Attention-processor files (``save_attn_procs``): unprefixed, ``processor.to_q_lora``."""
    block = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    tensors = {
        f"{block}.processor.to_out_lora.down.weight": torch.ones(2, 64),
        f"{block}.processor.to_out_lora.up.weight": torch.ones(64, 2),
        "text_encoder.encoder.layers.0.self_attn.to_k_lora.down.weight": torch.ones(2, 64),
        "text_encoder.encoder.layers.0.self_attn.to_k_lora.up.weight": torch.ones(64, 2),
    }
    assert set(lora_layers(pipe, tensors, "old.safetensors")) == {
        ("unet", f"{block}.to_out.0"),
        ("text_encoder", "encoder.layers.0.self_attn.k_proj"),
    }


def test_without_room_for_fused_weights_the_adapters_take_over(
    pipe: Any, library: LoraLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = generate(pipe)
    loras = library.resolve([LoraTag("kohya-star")])
    with applied(pipe, loras, library, method="adapters"):
        expected = generate(pipe)
    real_addmm = torch.addmm
    calls = []

    def out_of_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:  # a few layers in: the new weights made so far are dropped
            raise torch.OutOfMemoryError("no room")
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", out_of_memory)
    before = snapshot(pipe)
    with applied(pipe, loras, library) as record:
        assert record.method == "adapters"
        assert np.array_equal(generate(pipe), expected)
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError), applied(pipe, loras, library, method="fused"):
        pass
    monkeypatch.undo()
    assert_unchanged(before, snapshot(pipe))
    assert np.array_equal(generate(pipe), plain)


def test_a_png_made_after_a_lora_job_matches_one_made_before(pipe: Any, library: LoraLibrary) -> None:
    def picture() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(11)
        return pixels(pipe(PROMPT, num_inference_steps=STEPS, height=SIDE, width=SIDE, generator=generator).images[0])

    first = picture()
    with applied(pipe, library.resolve(extract("x <lora:ink:0.6> <lora:kohya-star:1:0.4>")[1]), library):
        assert not np.array_equal(picture(), first)
    assert np.array_equal(picture(), first)


def test_the_engine_reads_tags_records_hashes_and_refuses_unknown_names(tmp_path: Path) -> None:
    from pipelines.engine import Engine
    from pipelines.infotext import parse_infotext
    from pipelines.requests import Txt2Img

    models, outputs = tmp_path / "models", tmp_path / "outputs"
    engine = Engine(EngineSettings(models_dir=models, outputs_dir=outputs, default_model="builtin:demo"))
    try:
        model = engine.load()
        folder = models / "Lora"
        folder.mkdir(parents=True)
        write_peft_lora(model.pipe.unet, folder / "ink.safetensors")
        write_kohya_lora(model.pipe.unet, model.pipe.text_encoder, folder / "star.safetensors")
        base = {"prompt": PROMPT, "steps": STEPS, "width": SIDE, "height": SIDE, "seed": 5}
        tagged = f"{PROMPT} <lora:ink:0.8> <lora:star:1:0.5>"
        plain = engine.generate(Txt2Img(**base))
        with_lora = engine.generate(Txt2Img(**(base | {"prompt": tagged})))
        after = engine.generate(Txt2Img(**base))
        assert np.abs(pixels(with_lora.images[0]) - pixels(plain.images[0])).mean() > 0.5
        assert np.array_equal(pixels(after.images[0]), pixels(plain.images[0]))
        parsed = parse_infotext(with_lora.infotexts[0])
        assert parsed["prompt"] == tagged  # the infotext keeps the prompt as written
        loras = engine.loras.resolve(extract(tagged)[1])
        assert parsed["Lora hashes"] == engine.loras.infotext_value(loras)
        assert "Lora hashes" not in parse_infotext(after.infotexts[0])
        with pytest.raises(BadRequest, match=r"unknown LoRA 'nope': available LoRAs in .*: ink, star"):
            engine.submit(Txt2Img(**(base | {"prompt": "x <lora:nope:1>"})))
    finally:
        engine.close()
