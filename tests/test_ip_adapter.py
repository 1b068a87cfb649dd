"""IP-Adapter through diffusers, with a tiny adapter made here for the demo model's UNet.

No IP-Adapter is published for the demo model, so each test writes one: a small random CLIP image
encoder (saved with ``save_pretrained``) and an adapter file with the keys diffusers' loader reads
(``image_proj.proj/norm`` and ``ip_adapter.<n>.to_k_ip/to_v_ip`` for every cross-attention, numbered
1, 3, 5, ... in the UNet's processor order). Random weights cannot follow a picture's content; what
is checked is that the adapter reaches the pictures, scales, batches, and leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import pixels
from PIL import Image

from pipelines import samplers
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.guidance import ip_adapter
from pipelines.guidance.ip_adapter import IpAdapterFiles, find_ip_adapter, ip_adapter_installed, missing_message

SIDE = 64
STEPS = 8
BLUE = Image.new("RGB", (SIDE, SIDE), (30, 80, 225))


def make_tiny_adapter(unet: Any, root: Path, seed: int = 0, spread: float = 0.02) -> None:
    """A random IP-Adapter for ``unet`` in the ``demo_models`` layout under ``root``. With weights of
    ``spread`` 0.02 the change grows with the scale from 0 to 1; at 0.2 a scale of 0.3 already
    gives a different picture."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    embed = 32
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=embed,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(root / "demo_models" / "image_encoder")
    text_width = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed)
    weights = {
        "image_proj.proj.weight": torch.randn(4 * text_width, embed, generator=generator) * spread,
        "image_proj.proj.bias": torch.zeros(4 * text_width),
        "image_proj.norm.weight": torch.ones(text_width),
        "image_proj.norm.bias": torch.zeros(text_width),
    }
    cross = [name.removesuffix(".processor") for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in enumerate(cross):
        width = unet.get_submodule(name).to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * index + 1}.{part}.weight"] = (
                torch.randn(width, text_width, generator=generator) * spread
            )
    save_file(
        {key: value.half() for key, value in weights.items()}, root / "demo_models" / "ip-adapter_demo.safetensors"
    )


@pytest.fixture
def demo(engine: Engine) -> Iterator[Any]:
    with engine._device_lock:  # the UNet is shared: no other job may run while a test changes it
        yield engine.manager.get("builtin:demo")


@pytest.fixture
def files(demo: Any, tmp_path: Path) -> IpAdapterFiles:
    make_tiny_adapter(demo.pipe.unet, tmp_path / "ip-adapter")
    found = find_ip_adapter("demo", tmp_path)
    assert found is not None
    return found


def draw(
    engine: Engine, model: Any, seeds: list[int], files: IpAdapterFiles | None = None, scale: float = 1.0, **extra: Any
) -> list[Image.Image]:
    mode = "img2img" if "image" in extra else "txt2img"
    pipe = engine.manager.view(model, mode, samplers.build_scheduler(model.pipe.scheduler.config, "DDIM"))
    call = dict(
        prompt="a circle",
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        num_images_per_prompt=len(seeds),
        height=SIDE,
        width=SIDE,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        **extra,
    )
    if files is None:
        return pipe(**call).images
    with ip_adapter_installed(pipe, files, BLUE, scale) as added:
        assert set(added) == {"ip_adapter_image"}
        return pipe(**call, **added).images


def largest_difference(first: list[Image.Image], second: list[Image.Image]) -> int:
    return max(int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(first, second, strict=True))


def unet_state(unet: Any) -> dict[str, Any]:
    """What an adapter could leave on the shared UNet: processors (by identity), parts, config, hooks."""
    return {
        "processors": {name: id(processor) for name, processor in unet.attn_processors.items()},
        "attributes": {name: sorted(vars(module)) for name, module in unet.named_modules()},
        "submodules": {name: sorted(module._modules) for name, module in unet.named_modules()},
        "parameters": sorted(name for name, _ in unet.named_parameters()),
        "encoder_hid_proj": (unet.encoder_hid_proj, "encoder_hid_proj" in vars(unet)),
        "config": (unet.config.encoder_hid_dim_type, dict(unet.config)),
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()),
    }


def test_it_is_found_in_the_models_folder_only_when_complete(demo: Any, tmp_path: Path) -> None:
    assert find_ip_adapter("demo", tmp_path) is None
    root = tmp_path / "ip-adapter"
    make_tiny_adapter(demo.pipe.unet, root)
    found = find_ip_adapter("demo", tmp_path)
    assert found == IpAdapterFiles(
        root / "demo_models/ip-adapter_demo.safetensors", root / "demo_models/image_encoder", "models folder"
    )
    (root / "demo_models/image_encoder/model.safetensors").rename(root / "demo_models/image_encoder/pytorch_model.bin")
    assert find_ip_adapter("demo", tmp_path) is None  # pickled weights are never read
    assert find_ip_adapter("sd2", tmp_path) is None


def test_it_is_found_in_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--h94--IP-Adapter"
    snapshot = repo / "snapshots" / ("0" * 40)
    for name in ("sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder/config.json"):
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert find_ip_adapter("sdxl", tmp_path / "models") is None  # its encoder's weights are missing
    (snapshot / "sdxl_models/image_encoder/model.safetensors").write_bytes(b"x")
    found = find_ip_adapter("sdxl", tmp_path / "models")
    assert found == IpAdapterFiles(
        snapshot / "sdxl_models/ip-adapter_sdxl.safetensors",
        snapshot / "sdxl_models/image_encoder",
        "Hugging Face cache",
    )


def test_the_missing_message_says_what_to_download_and_where(tmp_path: Path) -> None:
    message = missing_message("sd1", tmp_path)
    for needle in (
        "h94/IP-Adapter",
        "models/ip-adapter_sd15.safetensors",
        "models/image_encoder/config.json",
        str(tmp_path / "ip-adapter"),
        "hf download",
        "reference-only",
    ):
        assert needle in message, (needle, message)
    assert "sdxl_models/ip-adapter_sdxl_vit-h.safetensors" in missing_message("sdxl", tmp_path)
    assert "no IP-Adapter is published for sd2" in missing_message("sd2", tmp_path)
    assert str(tmp_path / "ip-adapter" / "demo_models") in missing_message("demo", tmp_path)


def test_it_changes_the_picture_and_leaves_nothing_behind(engine: Engine, demo: Any, files: IpAdapterFiles) -> None:
    unet = demo.pipe.unet
    state = unet_state(unet)
    before = draw(engine, demo, [0, 1])
    guided = draw(engine, demo, [0, 1], files)
    assert largest_difference(guided, before) > 40
    assert unet_state(unet) == state
    assert largest_difference(draw(engine, demo, [0, 1]), before) == 0


def test_scale_zero_is_about_no_adapter_and_scale_orders_the_change(
    engine: Engine, demo: Any, files: IpAdapterFiles
) -> None:
    plain = pixels(draw(engine, demo, [2])[0])
    change = [float(np.abs(pixels(draw(engine, demo, [2], files, s)[0]) - plain).mean()) for s in (0.0, 0.3, 1.0)]
    assert change[0] <= 1 / 255 and change[0] < change[1] < change[2], change


def test_a_batch_gives_the_pictures_of_single_runs(engine: Engine, demo: Any, files: IpAdapterFiles) -> None:
    """Within 1/255, like plain diffusers on this CPU (see test_reference_guidance)."""
    batch = draw(engine, demo, [3, 4], files)
    assert largest_difference(batch, [draw(engine, demo, [seed], files)[0] for seed in (3, 4)]) <= 1


def test_img2img_is_guided_too(engine: Engine, demo: Any, files: IpAdapterFiles) -> None:
    start = Image.new("RGB", (SIDE, SIDE), (200, 30, 30))
    state = unet_state(demo.pipe.unet)
    plain = draw(engine, demo, [5], image=start, strength=0.7)
    assert largest_difference(draw(engine, demo, [5], files, image=start, strength=0.7), plain) > 15
    assert unet_state(demo.pipe.unet) == state


def test_a_kept_image_encoder_draws_the_same(engine: Engine, demo: Any, files: IpAdapterFiles) -> None:
    """A caller may keep the encoder between jobs instead of loading it for each."""
    encoder = ip_adapter.load_image_encoder(files, demo.pipe.unet.dtype, "cpu")
    pipe = engine.manager.view(demo, "txt2img", samplers.build_scheduler(demo.pipe.scheduler.config, "DDIM"))
    call = dict(prompt="a circle", num_inference_steps=STEPS, height=SIDE, width=SIDE, guidance_scale=7.0)
    with ip_adapter_installed(pipe, files, BLUE, 1.0, image_encoder=encoder) as added:
        assert pipe.image_encoder is encoder
        kept = pipe(**call, **added, generator=torch.Generator().manual_seed(6)).images
    assert pipe.image_encoder is None
    assert largest_difference(kept, draw(engine, demo, [6], files)) <= 1


def test_bad_values_are_refused_and_a_failed_job_leaves_nothing(
    engine: Engine, demo: Any, files: IpAdapterFiles
) -> None:
    pipe = engine.manager.view(demo, "txt2img", samplers.build_scheduler(demo.pipe.scheduler.config, "DDIM"))
    state = unet_state(demo.pipe.unet)
    registered = dict(pipe.config)
    with pytest.raises(BadRequest) as refused, ip_adapter_installed(pipe, files, "blue.png", 3):  # type: ignore[arg-type]
        pass
    assert refused.value.problems == [
        "the IP-Adapter image must be a picture, got str",
        "the IP-Adapter scale must be from 0 to 2, got 3",
    ]
    guided = ip_adapter_installed(pipe, files, BLUE, "high")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="a number from 0 to 2, got 'high'"), guided:
        pass
    with pytest.raises(RuntimeError, match="stopped"), ip_adapter_installed(pipe, files, BLUE, 0.5):
        assert unet_state(demo.pipe.unet) != state
        raise RuntimeError("stopped")
    assert unet_state(demo.pipe.unet) == state
    assert pipe.image_encoder is None and dict(pipe.config) == registered
