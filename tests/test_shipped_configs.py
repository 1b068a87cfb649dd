"""The config-only diffusers folders Atelier ships for single-file checkpoints (pipelines/configs).

``from_single_file(path, config=<folder>, local_files_only=True)`` takes every architecture
detail from these folders, so a wrong value would only show up as a confusing shape error (or
silently wrong images) when a user loads a multi-GB checkpoint. These tests build every
component on the meta device (no memory, no weights) and compare parameter counts with the
published sizes of the official models, and pin the values that do not change parameter counts
(prediction type, VAE scaling factor, attention upcasting, ...).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parent.parent / "pipelines" / "configs"

# Parameter counts of the official models (stable-diffusion-v1-5/stable-diffusion-v1-5,
# stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0) as diffusers and
# transformers instantiate them. The SD2 text encoder is OpenCLIP ViT-H's text tower without its
# last block (SD2 conditions on the penultimate layer), hence 23 layers.
UNET_SD1 = 859_520_964
UNET_SD2 = 865_910_724
UNET_SDXL = 2_567_463_684
VAE = 83_653_863
CLIP_L = 123_060_480
OPENCLIP_H_23 = 340_387_840
OPENCLIP_BIGG_PROJ = 694_659_840

EXPECTED = {
    "sd1": {
        "pipeline": "StableDiffusionPipeline",
        "scheduler": "PNDMScheduler",
        "params": {"unet": UNET_SD1, "vae": VAE, "text_encoder": CLIP_L},
    },
    "sd2": {
        "pipeline": "StableDiffusionPipeline",
        "scheduler": "DDIMScheduler",
        "params": {"unet": UNET_SD2, "vae": VAE, "text_encoder": OPENCLIP_H_23},
    },
    "sdxl": {
        "pipeline": "StableDiffusionXLPipeline",
        "scheduler": "EulerDiscreteScheduler",
        "params": {"unet": UNET_SDXL, "vae": VAE, "text_encoder": CLIP_L, "text_encoder_2": OPENCLIP_BIGG_PROJ},
    },
}
FAMILIES = sorted(EXPECTED)
TOLERANCE = 0.005  # 0.5 %

SD_COMPONENTS = {
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
    "scheduler": None,  # checked separately
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_COMPONENTS = {
    "scheduler": None,
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _read(family: str, *parts: str) -> dict:
    return json.loads(CONFIGS.joinpath(family, *parts).read_text())


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(family: str, component: str) -> torch.nn.Module:
    """Instantiate one component from the shipped folder on the meta device (no real memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = str(CONFIGS / family)
    with torch.device("meta"):
        if component == "unet":
            model = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        elif component == "vae":
            model = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        else:
            library, class_name = _read(family, "model_index.json")[component]
            assert library == "transformers"
            cls = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}[
                class_name
            ]
            model = cls(CLIPTextConfig.from_pretrained(folder, subfolder=component, local_files_only=True))
    assert all(p.device.type == "meta" for p in model.parameters())
    return model


@pytest.mark.parametrize(
    ("family", "component"),
    [(family, component) for family in FAMILIES for component in EXPECTED[family]["params"]],
)
def test_parameter_count_matches_official_model(family: str, component: str) -> None:
    expected = EXPECTED[family]["params"][component]
    got = _count(_build(family, component))
    assert got == pytest.approx(expected, rel=TOLERANCE), f"{family}/{component}: {got:,} parameters, want {expected:,}"


def test_a_wrong_layer_count_is_caught(tmp_path: Path) -> None:
    """The tolerance is tight enough that one text-encoder block more or less fails the check."""
    from transformers import CLIPTextConfig, CLIPTextModel

    for family in ("sd1", "sd2"):
        config = _read(family, "text_encoder", "config.json")
        config["num_hidden_layers"] += 1
        folder = tmp_path / family / "text_encoder"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        with torch.device("meta"):
            model = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder.parent), subfolder="text_encoder"))
        assert _count(model) != pytest.approx(EXPECTED[family]["params"]["text_encoder"], rel=TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_index_lists_the_expected_components(family: str) -> None:
    index = _read(family, "model_index.json")
    assert index["_class_name"] == EXPECTED[family]["pipeline"]
    expected = SDXL_COMPONENTS if family == "sdxl" else SD_COMPONENTS
    components = {k: v for k, v in index.items() if isinstance(v, list)}
    assert set(components) == set(expected)
    for name, entry in expected.items():
        if entry is not None:
            assert components[name] == entry, name
    assert components["scheduler"] == ["diffusers", EXPECTED[family]["scheduler"]]
    # The loader passes tokenizers in, but the entries must stay so diffusers accepts them.
    assert components["tokenizer"] == ["transformers", "CLIPTokenizer"]

    import diffusers

    pipeline_class = getattr(diffusers, index["_class_name"])
    expected_modules, optional_kwargs = map(set, pipeline_class._get_signature_keys(pipeline_class))
    assert set(components) <= expected_modules
    # Every component the pipeline needs is either listed with a real class, or optional.
    for name in expected_modules - set(pipeline_class._optional_components):
        assert name in components and components[name][0] is not None, name
    for name, (library, class_name) in components.items():
        if library is None:
            assert name in pipeline_class._optional_components, name
        else:
            assert hasattr(importlib.import_module(library), class_name), (library, class_name)
    if family == "sdxl":
        assert index["force_zeros_for_empty_prompt"] is True
    else:
        assert index["requires_safety_checker"] is False
    assert set(index) - set(components) - {"_class_name", "_diffusers_version"} <= optional_kwargs


@pytest.mark.parametrize("family", FAMILIES)
def test_scheduler_loads_with_the_named_class(family: str) -> None:
    import diffusers
    from diffusers import SchedulerMixin

    raw = _read(family, "scheduler", "scheduler_config.json")
    assert raw["_class_name"] == EXPECTED[family]["scheduler"]
    cls = getattr(diffusers, raw["_class_name"])
    assert issubclass(cls, SchedulerMixin)
    scheduler = cls.from_pretrained(str(CONFIGS / family), subfolder="scheduler", local_files_only=True)
    assert type(scheduler) is cls
    config = scheduler.config
    assert config.num_train_timesteps == 1000
    assert config.beta_schedule == "scaled_linear"
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    assert config.steps_offset == 1
    assert config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    # Kept for swapping schedulers (DDIM defaults clip_sample to True, PNDM skip_prk_steps to False).
    assert raw["clip_sample"] is False
    assert raw["skip_prk_steps"] is True
    if family == "sdxl":
        assert config.timestep_spacing == "leading"
        assert config.use_karras_sigmas is False


@pytest.mark.parametrize("family", FAMILIES)
def test_architecture_values_parameter_counts_do_not_pin(family: str) -> None:
    unet = _read(family, "unet", "config.json")
    vae = _read(family, "vae", "config.json")
    assert unet["in_channels"] == 4  # the inpainting variants (9) are derived by the loader
    assert unet["out_channels"] == 4
    if family == "sd1":
        assert (unet["cross_attention_dim"], unet["attention_head_dim"]) == (768, 8)
        assert unet["use_linear_projection"] is False
        assert unet["sample_size"] == 64
        assert vae["sample_size"] == 512
    elif family == "sd2":
        assert (unet["cross_attention_dim"], unet["attention_head_dim"]) == (1024, [5, 10, 20, 20])
        assert unet["use_linear_projection"] is True
        assert unet["upcast_attention"] is True  # 768-v fp16 attention overflows otherwise
        assert unet["sample_size"] == 96
        assert vae["sample_size"] == 768
    else:
        assert unet["cross_attention_dim"] == 2048
        assert unet["transformer_layers_per_block"] == [1, 2, 10]
        assert unet["addition_embed_type"] == "text_time"
        assert unet["addition_time_embed_dim"] == 256
        assert unet["projection_class_embeddings_input_dim"] == 2816
        assert unet["sample_size"] == 128
        assert vae["force_upcast"] is True
        assert vae["sample_size"] == 1024
    assert vae["scaling_factor"] == (0.13025 if family == "sdxl" else 0.18215)
    assert vae["latent_channels"] == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_configs_suit_transformers(family: str) -> None:
    from transformers import CLIPTextConfig

    known = {f.name for f in dataclasses.fields(CLIPTextConfig)} | {"model_type"}
    names = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    for name in names:
        raw = _read(family, name, "config.json")
        assert set(raw) <= known, f"{family}/{name}: keys CLIPTextConfig does not know: {set(raw) - known}"
        assert raw["model_type"] == "clip_text_model"
        assert raw["max_position_embeddings"] == 77
        assert raw["vocab_size"] == 49408
        config = CLIPTextConfig.from_pretrained(str(CONFIGS / family), subfolder=name, local_files_only=True)
        act = "quick_gelu" if raw["hidden_size"] == 768 else "gelu"  # OpenAI CLIP vs OpenCLIP
        assert config.hidden_act == act
    if family == "sdxl":
        assert _read(family, "text_encoder_2", "config.json")["projection_dim"] == 1280


@pytest.mark.parametrize("family", FAMILIES)
def test_folders_hold_configs_only(family: str) -> None:
    files = sorted(p.relative_to(CONFIGS / family).as_posix() for p in (CONFIGS / family).rglob("*") if p.is_file())
    expected = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json"]
    expected += ["unet/config.json", "vae/config.json"]
    if family == "sdxl":
        expected.append("text_encoder_2/config.json")
    assert files == sorted(expected)
    for name in files:
        text = (CONFIGS / family / name).read_text()
        assert "_name_or_path" not in json.loads(text)
        assert text.endswith("\n") and text.count("\n") > 5  # pretty-printed
