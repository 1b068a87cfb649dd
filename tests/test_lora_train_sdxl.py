"""LoRA training on SDXL models: a tiny random SDXL (two text encoders, pooled text and size
numbers added to the time embedding) saved as a model folder, trained for a few steps at 32 px.

Random weights learn nothing anyone could see, so what is checked is the plumbing: the loss is
finite and the probe loss falls, the file carries kohya's SDXL names (``lora_unet_input_blocks_..``,
``lora_te1_``, ``lora_te2_``) that diffusers' reader numbers back into the same layers with the same
weights, the engine applies it by its tag and the picture changes, the loaded model is left as it
was, the same seed gives the same bytes, and each picture's size numbers reach the UNet.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_sdxl_around
from PIL import Image, ImageDraw

from pipelines import loading
from pipelines.engine import Engine
from pipelines.lora import kohya
from pipelines.lora import train as training
from pipelines.lora.apply import lora_layers
from pipelines.lora.conditioning import SdxlConditioning, micro_conditions, sdxl_problems
from pipelines.lora.data import Example, prepared
from pipelines.lora.files import read_tensors, tensor_bytes_sha256
from pipelines.lora.train import TrainResult, TrainSettings
from pipelines.requests import Txt2Img
from pipelines.settings import EngineSettings

MODEL = "tiny-xl"
PROMPT = "an olive dot"
SDXL_KEY = re.compile(
    r"^lora_(unet_(input_blocks|output_blocks)_\d+_1|unet_middle_block_1|te1_text_model|te2_text_model)_[a-z0-9_]+"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
# What diffusers' kohya reader gives attention layers: ``unet.<block>.processor.to_q_lora.down.weight``.
DIFFUSERS_KEY = re.compile(r"^unet\.(.+?)(?:\.processor)?\.(\w+?)(?:_lora)?\.down\.weight$")


def tiny_sdxl(layers_per_block: int = 1) -> Any:
    """A random SDXL-shaped pipeline, tiny: the test suite's usual one (``layers_per_block`` 1, two
    blocks) or, with 2, one numbered like a real SDXL UNet (three blocks, attention in the last two)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    blocks: dict[str, Any] = dict(
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
    )  # fmt: skip
    if layers_per_block == 2:
        blocks = dict(
            block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * 2),
            up_block_types=(*["CrossAttnUpBlock2D"] * 2, "UpBlock2D"), attention_head_dim=(2, 2, 4),
            transformer_layers_per_block=(1, 1, 2),
        )  # fmt: skip
    unet = UNet2DConditionModel(
        layers_per_block=layers_per_block, sample_size=16, in_channels=4, out_channels=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=16, **blocks,
    )  # fmt: skip
    pipe: Any = tiny_sdxl_around(unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_pictures(folder: Path) -> list[Path]:
    """Olive dots: two square pictures and two wide ones (so buckets and crops differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(4):
        width = 48 if index < 2 else 80
        picture = Image.new("RGB", (width, 48), ("white", "lightblue")[index % 2])
        ImageDraw.Draw(picture).ellipse((8 + 4 * index, 8, 40 + 4 * index, 40), fill=(90, 130, 30))
        path = folder / f"olive dot {index}.png"
        picture.save(path)
        paths.append(path)
    return paths


def draw(engine: Engine, prompt: str, seed: int = 0) -> np.ndarray:
    image = engine.generate(Txt2Img(prompt=prompt, steps=4, width=64, height=64, seed=seed)).images[0]
    return np.asarray(image, dtype=np.int16)


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Lesson:
    engine: Engine
    folder: Path  # the model folder
    pictures: list[Path]
    before: np.ndarray  # PROMPT drawn before training
    result: TrainResult


@pytest.fixture(scope="module")
def lesson(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lesson]:
    """A LoRA on the UNet and both text encoders, aspect buckets on, trained once (12 steps)."""
    root = tmp_path_factory.mktemp("sdxl_train")
    folder = root / "models" / MODEL
    tiny_sdxl().save_pretrained(folder, safe_serialization=True)
    engine = Engine(EngineSettings(models_dir=root / "models", outputs_dir=root / "outputs", default_model=MODEL))
    engine.load()
    pictures = write_pictures(root / "olive")
    before = draw(engine, PROMPT)
    settings = TrainSettings(name="olive xl", steps=12, seed=3, learning_rate=1e-2, buckets=True,
                             train_text_encoder=True, sample_every=12, sample_steps=4)  # fmt: skip
    result = training.train(engine, settings, pictures)
    yield Lesson(engine, folder, pictures, before, result)
    engine.close()


def test_an_sdxl_lora_trains_and_is_usable_by_its_tag_at_once(lesson: Lesson) -> None:
    engine, result = lesson.engine, lesson.result
    assert result.steps_done == 12 and not result.stopped and result.path is not None
    assert len(result.losses) == 12 and all(np.isfinite(result.losses))
    assert np.isfinite(result.probe_loss_before) and result.probe_loss_after < result.probe_loss_before
    assert result.settings.resolution == 32  # the model's native size
    assert [sample.step for sample in result.samples] == [12] and result.samples[0].image.size == (32, 32)
    # The loaded model is as it was; the LoRA, by its tag, changes the picture.
    without = draw(engine, PROMPT)
    assert np.array_equal(without, lesson.before)
    picture = engine.generate(Txt2Img(prompt=f"{PROMPT} <lora:olive xl:1>", steps=4, width=64, height=64, seed=0))
    assert np.abs(np.asarray(picture.images[0], dtype=np.int16) - without).max() > 10
    assert f'Lora hashes: "olive xl: {tensor_bytes_sha256(result.path)[:12]}"' in picture.infotexts[0]
    assert np.array_equal(draw(engine, PROMPT), without)  # and taken off again
    model = engine.manager.get(MODEL)
    assert {part for part, _ in lora_layers(model.pipe, read_tensors(result.path), "x")} == {
        "unet", "text_encoder", "text_encoder_2",
    }  # fmt: skip


def test_the_file_has_kohya_sdxl_names_and_metadata(lesson: Lesson) -> None:
    result = lesson.result
    assert result.path is not None
    tensors = read_tensors(result.path)
    assert all(SDXL_KEY.match(key) for key in tensors), [key for key in tensors if not SDXL_KEY.match(key)]
    stems = {key.split(".")[0] for key in tensors}
    blocks = {re.sub(r"_transformer_blocks_.*", "", stem) for stem in stems if stem.startswith("lora_unet_")}
    # The tiny UNet's attention: down block 1 (input 3), the middle, up block 0 (outputs 0 and 1).
    assert blocks == {
        "lora_unet_input_blocks_3_1", "lora_unet_middle_block_1", "lora_unet_output_blocks_0_1",
        "lora_unet_output_blocks_1_1",
    }  # fmt: skip
    assert len([s for s in stems if s.startswith("lora_unet_")]) == 4 * 2 * 2 * 4  # 4 attentions, 2 deep, 2 each
    assert len([s for s in stems if s.startswith("lora_te1_")]) == len([s for s in stems if s.startswith("lora_te2_")])
    assert len([s for s in stems if s.startswith("lora_te")]) == 2 * 2 * 4  # 2 encoders, 2 layers, q k v out
    assert "lora_te1_text_model_encoder_layers_1_self_attn_out_proj" in stems
    name = "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k"
    assert tensors[f"{name}.lora_down.weight"].shape == (4, 64) and tensors[f"{name}.lora_up.weight"].shape == (64, 4)
    assert float(tensors[f"{name}.alpha"]) == 4.0
    metadata = result.metadata
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_v2"] == "False"
    assert metadata["ss_bucket_info"] == '{"buckets": {"32x32": 2, "40x24": 2}}'
    assert metadata["ss_text_encoder_lr"] == "0.01" and metadata["ss_sd_model_name"] == MODEL
    predicted = training.predicted_size(lesson.engine.manager.get(MODEL), 4, True)
    assert abs(predicted - result.file_bytes) < 0.05 * result.file_bytes


def test_diffusers_loads_the_file_into_the_same_layers_and_the_picture_changes(lesson: Lesson) -> None:
    from diffusers.utils import logging as diffusers_logging
    from peft.tuners.lora import LoraLayer

    assert lesson.result.path is not None
    tensors = read_tensors(lesson.result.path)
    pipe: Any = loading.load_folder(lesson.folder, torch.float32)  # a model of its own: the adapters stay on it
    call = dict(prompt=PROMPT, num_inference_steps=3, height=32, width=32, output_type="np")
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    # diffusers' loggers do not propagate: its warnings (unexpected or missing keys) are caught here.
    handler = Collected()
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    try:
        pipe.load_lora_weights(str(lesson.result.path), adapter_name="olive")
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(handler)
    assert not [m for m in handler.messages if re.search("unexpected|not found|missing", m)], handler.messages
    # Every layer of the file is a LoRA layer in diffusers, holding the file's very weights.
    wrapped: dict[tuple[str, str], Any] = {
        (part, name): layer
        for part in ("unet", "text_encoder", "text_encoder_2")
        for name, layer in getattr(pipe, part).named_modules()
        if isinstance(layer, LoraLayer)
    }
    assert len(wrapped) == len(tensors) // 3
    layer = wrapped["unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"]
    stem = "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k"
    assert torch.equal(layer.lora_A["olive"].weight, tensors[f"{stem}.lora_down.weight"].float())
    assert torch.equal(layer.lora_B["olive"].weight, tensors[f"{stem}.lora_up.weight"].float())
    assert layer.scaling["olive"] == 1.0
    layer = wrapped["unet", "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0"]
    stem = "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_out_0"
    assert torch.equal(layer.lora_B["olive"].weight, tensors[f"{stem}.lora_up.weight"].float())
    changed = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(changed - plain).max() > 0.02


def test_the_same_seed_and_data_give_the_same_bytes(lesson: Lesson) -> None:
    settings = TrainSettings(name="same xl", steps=4, seed=11, learning_rate=1e-3, sample_every=0, overwrite=True,
                             train_text_encoder=True)  # fmt: skip
    first = training.train(lesson.engine, settings, lesson.pictures[:3])
    assert first.path is not None
    data = first.path.read_bytes()
    again = training.train(lesson.engine, settings, lesson.pictures[:3])
    assert again.path == first.path and again.path.read_bytes() == data
    learnt = tensor_bytes_sha256(first.path)
    other = training.train(lesson.engine, TrainSettings(**{**vars(settings), "seed": 12}), lesson.pictures[:3])
    assert other.path is not None and tensor_bytes_sha256(other.path) != learnt


def test_each_picture_gets_its_size_numbers_and_both_text_encoders(lesson: Lesson) -> None:
    # A wide picture trained square: scaled to 64 high, its middle 64 columns kept.
    assert micro_conditions((128, 64), (64, 64)) == (64, 128, 0, 32, 64, 64)
    assert micro_conditions((48, 96), (32, 32)) == (96, 48, 16, 0, 32, 32)
    assert micro_conditions((40, 40), (40, 40)) == (40, 40, 0, 0, 40, 40)
    wide = Image.new("RGB", (128, 64))
    ImageDraw.Draw(wide).rectangle((40, 10, 90, 50), fill="red")
    cut = prepared(Example(wide, "", "wide.png", "x"), (64, 64))
    assert np.array_equal(np.asarray(cut), np.asarray(wide.crop((32, 0, 96, 64))))  # where the numbers say
    pipe = lesson.engine.manager.get(MODEL).pipe
    conditioning = SdxlConditioning(pipe, torch.device("cpu"), True, [(128, 64), (40, 40)], [(64, 64), (40, 40)])
    conditioning.keep(["a dot", "a red dot"])
    context, extra = conditioning.unet_inputs(["a red dot", "a dot"], [1, 0])
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=["a red dot", "a dot"], device="cpu",
                                              do_classifier_free_guidance=False)  # fmt: skip
    assert context.shape == (2, 77, 64) and torch.allclose(context, embeds, atol=1e-6)
    added = extra["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 32) and torch.allclose(added["text_embeds"], pooled, atol=1e-6)
    assert added["time_ids"].tolist() == [[40, 40, 0, 0, 40, 40], [64, 128, 0, 32, 64, 64]]


def test_sdxl_unet_names_are_the_ones_diffusers_numbers_back() -> None:
    """Every attention layer of a UNet numbered like a real SDXL (2 layers per block, attention in
    the last two of three blocks), named the kohya way, comes back to itself through diffusers."""
    from diffusers import StableDiffusionXLPipeline

    unet = tiny_sdxl(layers_per_block=2).unet
    modules = [name for name, layer in unet.named_modules() if name.endswith(training.UNET_TARGETS)]
    layers = {("unet", name): (torch.ones(1, 4), torch.ones(4, 1)) for name in modules}
    tensors = kohya.kohya_state_dict(layers, 1.0, torch.float32, sdxl=True, layers_per_block=2)
    # The names every SDXL LoRA for A1111 and ComfyUI has, input 4 to 8, middle 1, output 0 to 5.
    stems = {re.sub(r"_transformer_blocks_.*", "", key.split(".")[0]) for key in tensors}
    assert stems == {
        "lora_unet_input_blocks_4_1", "lora_unet_input_blocks_5_1", "lora_unet_input_blocks_7_1",
        "lora_unet_input_blocks_8_1", "lora_unet_middle_block_1",
        *(f"lora_unet_output_blocks_{n}_1" for n in range(6)),
    }  # fmt: skip
    state, _ = StableDiffusionXLPipeline.lora_state_dict(dict(tensors), unet_config=unet.config)
    back = set()
    for key in state:
        found = DIFFUSERS_KEY.match(key)
        if found:
            module, projection = found.groups()
            back.add(f"{module}.{'to_out.0' if projection == 'to_out' else projection}")
    assert back == set(modules)
    assert kohya.kohya_name("unet", "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0", True) == (
        "lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_out_0"
    )
    with pytest.raises(ValueError, match="not in an attention block"):
        kohya.sgm_unet_name("down_blocks.0.resnets.0.conv1")


def test_sdxl_models_it_cannot_train_are_refused_with_reasons() -> None:
    refiner = SimpleNamespace(text_encoder=None, text_encoder_2=object(), unet=None)
    assert "one text encoder" in sdxl_problems("refiner", refiner)[0]
    odd = tiny_sdxl()
    odd.unet.register_to_config(addition_time_embed_dim=4)
    assert "takes 80 added conditioning numbers, not the 56" in sdxl_problems("odd", odd)[0]
    assert sdxl_problems("tiny", tiny_sdxl()) == []


# -- on a GPU --------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_on_a_gpu_in_half_precision(tmp_path: Path, precision: str) -> None:
    """The demo model and the tiny SDXL, 50 steps each under autocast: finite losses, a file that
    loads and is applied by its tag."""
    tiny_sdxl().save_pretrained(tmp_path / "models" / MODEL, safe_serialization=True)
    engine = Engine(EngineSettings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", device="cuda",
                                   precision=precision, default_model="builtin:demo"))  # fmt: skip
    pictures = write_pictures(tmp_path / "olive")
    try:
        for model, name in (("builtin:demo", "gpu demo"), (MODEL, "gpu xl")):
            settings = TrainSettings(name=name, model=model, steps=50, seed=0, sample_every=25,
                                     sample_steps=4, train_text_encoder=True)  # fmt: skip
            result = training.train(engine, settings, pictures)
            assert result.path is not None and result.steps_done == 50, model
            assert all(np.isfinite(result.losses)) and np.isfinite(result.probe_loss_after), (model, result.losses)
            loaded = engine.manager.get(model)
            assert loaded.pipe.unet.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
            layers = lora_layers(loaded.pipe, read_tensors(result.path), result.path.name)
            assert all(torch.isfinite(down).all() and torch.isfinite(up).all() for down, up in layers.values())
            request = Txt2Img(prompt=f"a dot <lora:{result.name}:1>", model=model, steps=4, seed=0, width=64, height=64)
            picture = engine.generate(request)
            assert np.asarray(picture.images[0]).std() > 0, model  # not a black (NaN) picture
    finally:
        engine.close()
