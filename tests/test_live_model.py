"""The live demo model draws in one step, fits its size budget, and its build is deterministic.

The shipped weights are judged by their pixels (``pipelines.scenes.analyse``); the build runs a
few steps on a handful of teacher pictures only: CI never distils from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines import distill, live_model, loading, scenes
from pipelines.errors import BadRequest


@pytest.fixture(scope="module")
def demo() -> object:
    return loading.load_folder(loading.DEMO_FOLDER, torch.float32)


def one_step(pipe: object, prompt: str, seeds: range) -> list[scenes.Reading]:
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    images = pipe(  # type: ignore[operator]
        prompt, num_inference_steps=1, guidance_scale=1.0, num_images_per_prompt=len(generators),
        generator=generators, height=64, width=64,
    ).images  # fmt: skip
    return [scenes.analyse(image) for image in images]


def test_the_shipped_live_weights_are_within_five_megabytes_with_their_recipe(demo: object) -> None:
    folder = live_model.SHIPPED
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size <= live_model.MAX_BYTES
    tensors = load_file(folder / live_model.WEIGHTS)
    # Whole-matrix changes in int8 with fp32 row scales, low-rank factors (if any) in fp16.
    assert {tensor.dtype for tensor in tensors.values()} <= {torch.int8, torch.float32, torch.float16}
    changed = {name.rsplit(".", 1)[0] for name in distill.unpack(tensors)}
    layers = demo.unet.named_modules()  # type: ignore[attr-defined]
    assert changed == {name for name, m in layers if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    record = json.loads((folder / live_model.RECORD).read_text())
    assert record["recipe"]["seed"] == 0 and record["steps_done"] == record["recipe"]["student"]["steps"]


def test_the_live_model_draws_a_red_circle_red_in_one_step(demo: object) -> None:
    before = {name: tensor.clone() for name, tensor in demo.unet.state_dict().items()}  # type: ignore[attr-defined]
    live = live_model.load_live(demo)
    readings = one_step(live, "a red circle", range(2))
    assert [r.colour for r in readings] == ["red", "red"]
    assert [r.place for r in readings] == ["centre", "centre"]
    assert type(live.scheduler).__name__ == "LCMScheduler"
    # The demo itself is left as it was: the live model has its own UNet.
    after = demo.unet.state_dict()  # type: ignore[attr-defined]
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert live.unet is not demo.unet and live.vae is demo.vae  # type: ignore[attr-defined]
    # Like the demo, it requires no safety-checker model: each mode view would warn in the log.
    assert live.config.requires_safety_checker is False


def test_missing_live_weights_name_the_file_and_the_build_command(demo: object, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match=r"live\.safetensors.*pipelines\.live_model"):
        live_model.load_live(demo, tmp_path)


def test_merged_deltas_draw_what_the_trained_adapters_drew(demo: object) -> None:
    pipe = loading.load_folder(loading.DEMO_FOLDER, torch.float32)
    deltas = distill.adapt(pipe.unet, rank=4, seed=3)
    with torch.no_grad():
        for delta in deltas.values():  # stands in for training: every delta non-zero
            for parameter in delta.parameters():
                parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(parameter.numel()))
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context, _ = distill.encode(pipe, ["a blue square", "a star"], negative=False)
    with torch.no_grad():
        adapted = distill.x0_at_last_step(pipe.unet, pipe.scheduler.config, noise, context)
        merged_unet = demo.unet.__class__.from_config(demo.unet.config)  # type: ignore[attr-defined]
        merged_unet.load_state_dict(demo.unet.state_dict())  # type: ignore[attr-defined]
        assert distill.merge(merged_unet, distill.delta_tensors(deltas)) == len(deltas)
        merged = distill.x0_at_last_step(merged_unet, pipe.scheduler.config, noise, context)
        plain = distill.x0_at_last_step(demo.unet, pipe.scheduler.config, noise, context)  # type: ignore[attr-defined]
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert (adapted - plain).abs().mean() > 1e-3
    assert any(d.low_rank for d in deltas.values()) and any(not d.low_rank for d in deltas.values())


def test_the_build_is_deterministic_from_a_seed_resumed_or_not(tmp_path: Path) -> None:
    recipe = live_model.Recipe(
        seed=5, pairs=4, shard_size=4, rank=4, teacher=distill.Teacher(steps=2),
        student=distill.StudentSchedule(steps=2, batch_size=2),
    )  # fmt: skip
    work = tmp_path / "work"  # the teacher's pictures are drawn once, shared by both builds
    whole = live_model.build(tmp_path / "whole", recipe, work, checkpoint_every=1, eval_every=0)
    first = (whole / live_model.WEIGHTS).read_bytes()
    resumed = live_model.build(tmp_path / "resumed", recipe, tmp_path / "work2", checkpoint_every=1,
                               eval_every=0, stop_at=1)  # fmt: skip
    step_one = (resumed / live_model.WEIGHTS).read_bytes()
    assert json.loads((resumed / live_model.RECORD).read_text())["steps_done"] == 1
    live_model.build(resumed, recipe, tmp_path / "work2", resume=True, checkpoint_every=1, eval_every=0)
    assert (resumed / live_model.WEIGHTS).read_bytes() == first != step_one
    pairs = torch.load(work / "pairs-5-0000.pt")
    assert pairs["latents"].shape == (4, 4, 16, 16) and len(pairs["prompts"]) == 4
    assert torch.equal(pairs["latents"], torch.load(tmp_path / "work2" / "pairs-5-0000.pt")["latents"])
    with pytest.raises(ValueError, match="another recipe"):
        live_model.build(resumed, live_model.Recipe(seed=5, pairs=8), tmp_path / "work2", resume=True)
