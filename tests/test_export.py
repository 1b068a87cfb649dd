"""Single-file export: the file has A1111's names, and Atelier's own loader reads back the same model.

The round trip goes through the real checkpoint path (header sniffing, family detection,
``from_single_file`` with the shipped config), so a naming mistake that diffusers would silently
skip shows up as a weight mismatch or a different picture.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipelines.checkpoints import Family, detect_family, read_header
from pipelines.export import save_single_file
from pipelines.loading import build_untrained_demo, load_single_file


def _assert_same_weights(original: torch.nn.Module, reloaded: torch.nn.Module) -> None:
    expected, actual = original.state_dict(), reloaded.state_dict()
    assert sorted(actual) == sorted(expected)
    different = [name for name, tensor in expected.items() if not torch.equal(tensor, actual[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _config(model: torch.nn.Module, **overrides) -> dict:
    """A model's config with changes. Drops diffusers' private keys: ``from_config`` discards every key
    listed in ``_use_default_values``, so an override of such a key would otherwise be silently lost."""
    return {k: v for k, v in model.config.items() if not k.startswith("_")} | overrides


def _image(pipe) -> np.ndarray:
    """Four demo steps, on one thread: the model is tiny, and on a busy 2-core machine torch's default
    two threads spin-wait on each other, turning 0.1 s into 30 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(pipe)
    finally:
        torch.set_num_threads(threads)


def _generate(pipe) -> np.ndarray:
    result = pipe(
        "a lighthouse at dusk",
        num_inference_steps=4,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return result.images[0]


@pytest.fixture(scope="module")
def demo():
    return build_untrained_demo()


@pytest.fixture(scope="module")
def exported(demo, tmp_path_factory) -> Path:
    return save_single_file(demo, tmp_path_factory.mktemp("export") / "demo.safetensors")


@pytest.fixture(scope="module")
def reloaded(exported):
    pipe, family = load_single_file(exported, torch.float32)
    assert family == Family("demo", inpainting=False)
    return pipe


def test_export_is_detected_as_the_demo_family(exported):
    assert detect_family(read_header(exported)) == Family("demo", inpainting=False)


def test_round_trip_keeps_every_weight(demo, reloaded):
    for component in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(demo, component), getattr(reloaded, component))


def test_round_trip_draws_the_same_picture(demo, reloaded):
    before = _image(demo)
    assert before.shape == (64, 64, 3)
    assert before.std() > 0.01  # a blank image would make the comparison meaningless
    # diffusers leaves single-file weights as views into the memory-mapped file, at addresses only
    # 4-byte aligned; torch's CPU matmul takes another kernel for those, so identical weights can
    # round differently in the last bit. Close as loaded; bit-identical once in ordinary memory.
    np.testing.assert_allclose(_image(reloaded), before, rtol=0, atol=1e-4)
    for component in (reloaded.unet, reloaded.vae, reloaded.text_encoder):
        for tensor in (*component.parameters(), *component.buffers()):
            tensor.data = tensor.data.clone()
    np.testing.assert_array_equal(_image(reloaded), before)


def test_header_uses_a1111_names(exported, demo):
    header = read_header(exported)
    assert header["model.diffusion_model.input_blocks.0.0.weight"] == [64, 4, 3, 3]
    assert header["model.diffusion_model.out.2.weight"] == [4, 64, 3, 3]
    assert header["model.diffusion_model.time_embed.0.weight"] == [256, 64]
    assert header["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == [64, 64]
    assert header["model.diffusion_model.input_blocks.2.0.op.weight"] == [64, 64, 3, 3]
    assert header["model.diffusion_model.middle_block.1.proj_in.weight"] == [128, 128, 1, 1]
    assert header["model.diffusion_model.input_blocks.3.0.skip_connection.weight"] == [128, 64, 1, 1]
    assert header["model.diffusion_model.output_blocks.0.0.in_layers.2.weight"] == [128, 256, 3, 3]
    # Every up level has attention, so the upsampler sits in slot 2 after the resnet and the attention.
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in header
    assert not any(key.startswith("model.diffusion_model.output_blocks.3.2.") for key in header)  # the last level
    assert header["first_stage_model.decoder.conv_out.weight"] == [3, 32, 3, 3]
    assert header["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"] == [64, 32, 1, 1]
    assert header["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == [32, 64, 1, 1]
    assert header["first_stage_model.encoder.mid.attn_1.q.weight"] == [64, 64, 1, 1]  # 1x1 conv, as LDM stores it
    assert header["first_stage_model.decoder.mid.attn_1.proj_out.weight"] == [64, 64, 1, 1]
    assert header["cond_stage_model.transformer.text_model.final_layer_norm.weight"] == [64]
    assert header["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == [49408, 64]
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(name.startswith(prefixes) for name in header)
    assert not [name for name in header if "down_blocks" in name or "resnets" in name or "mid_block" in name]
    assert not [name for name in header if name.startswith("first_stage_model.") and ".to_" in name]
    expected = sum(len(getattr(demo, c).state_dict()) for c in ("unet", "vae", "text_encoder"))
    assert len(header) == expected


def test_refuses_to_overwrite_an_existing_file(demo, tmp_path):
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"a user's model")
    with pytest.raises(FileExistsError):
        save_single_file(demo, target)
    assert target.read_bytes() == b"a user's model"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.safetensors"]  # no temporary file left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_file_is_complete_and_not_private(demo, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    target = save_single_file(demo, tmp_path / "half.safetensors", dtype=torch.float16)
    assert [p.name for p in tmp_path.iterdir()] == ["half.safetensors"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with safe_open(str(target), "pt") as file:
        assert file.metadata() == {"format": "pt"}
        assert file.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
        assert file.get_tensor("first_stage_model.encoder.conv_in.weight").dtype == torch.float16


def test_inpainting_export_round_trips(demo, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(1)
        unet = UNet2DConditionModel.from_config(_config(demo.unet, in_channels=9))
    components = {k: v for k, v in demo.components.items() if k != "unet"}
    inpaint = StableDiffusionInpaintPipeline(**components, unet=unet, requires_safety_checker=False)
    path = save_single_file(inpaint, tmp_path / "demo-inpainting.safetensors")

    assert detect_family(read_header(path)) == Family("demo", inpainting=True)
    pipe, family = load_single_file(path, torch.float32)
    assert family.inpainting
    assert isinstance(pipe, StableDiffusionInpaintPipeline)
    assert pipe.unet.config.in_channels == 9
    assert pipe.unet.conv_in.weight.shape[1] == 9
    _assert_same_weights(unet, pipe.unet)
    _assert_same_weights(demo.vae, pipe.vae)


@pytest.mark.parametrize(
    ("down", "up", "layers"),
    [
        (("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"), 1),
        (("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), 3),
    ],
)
def test_mapping_follows_the_config(demo, tmp_path, down, up, layers):
    """Other depths and layer counts: diffusers' own LDM converter must read our names back exactly."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    channels = (32, 64, 64)[: len(down)]
    unet_shape = {"down_block_types": down, "up_block_types": up, "block_out_channels": channels}
    unet = UNet2DConditionModel.from_config(_config(demo.unet, layers_per_block=layers, **unet_shape))
    vae_shape = {
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (16, 32),
    }
    vae = AutoencoderKL.from_config(_config(demo.vae, layers_per_block=layers, **vae_shape))
    pipe = SimpleNamespace(unet=unet, vae=vae, text_encoder=demo.text_encoder)
    checkpoint = load_file(save_single_file(pipe, tmp_path / "odd.safetensors"))

    for original, converted in (
        (unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))),
        (vae, convert_ldm_vae_checkpoint(checkpoint, dict(vae.config))),
    ):
        expected = original.state_dict()
        assert sorted(converted) == sorted(expected)
        assert all(torch.equal(converted[name], tensor) for name, tensor in expected.items())


def test_refuses_sd2_and_sdxl(demo, tmp_path):
    from diffusers import UNet2DConditionModel

    sd2_unet = UNet2DConditionModel.from_config(_config(demo.unet, use_linear_projection=True))
    assert sd2_unet.config.use_linear_projection
    with pytest.raises(ValueError, match="SD 2"):
        save_single_file(SimpleNamespace(**{**demo.components, "unet": sd2_unet}), tmp_path / "sd2.safetensors")
    with pytest.raises(ValueError, match="SDXL"):
        sdxl = SimpleNamespace(**demo.components, text_encoder_2=demo.text_encoder)
        save_single_file(sdxl, tmp_path / "sdxl.safetensors")
    assert not list(tmp_path.iterdir())
