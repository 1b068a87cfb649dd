"""A1111 prompt syntax: weights, BREAK and long prompts, encoded for SD 1.x (the demo) and SDXL (tiny)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_sdxl_around
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import loading, samplers
from pipelines.engine import Engine
from pipelines.errors import BadRequest
from pipelines.prompts import BREAK, chunk_prompt, count_tokens, encode_prompts, parse_weights

UP, DOWN = 1.1, 1 / 1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red circle", [("a red circle", 1.0)]),
        ("", [("", 1.0)]),
        ("(red)", [("red", UP)]),
        ("[red]", [("red", DOWN)]),
        ("((red))", [("red", UP * UP)]),
        ("[[red]]", [("red", DOWN * DOWN)]),
        ("a (red:1.3) circle", [("a ", 1.0), ("red", 1.3), (" circle", 1.0)]),
        ("(a [b] (c:2))", [("a ", UP), ("b", UP * DOWN), (" ", UP), ("c", 2 * UP)]),
        ("((a:0.5) b)", [("a", 0.5 * UP), (" b", UP)]),
        ("(red)(blue)", [("redblue", UP)]),  # neighbours of equal weight merge
        (r"\(red\) \[x\] a\\b", [(r"(red) [x] a\b", 1.0)]),
        (r"a \(b:1.2\)", [("a (b:1.2)", 1.0)]),
        ("a (b c", [("a ", 1.0), ("b c", UP)]),  # left open: weighs the rest
        ("a [b c", [("a ", 1.0), ("b c", DOWN)]),
        ("a ) b ] c", [("a ) b ] c", 1.0)]),  # nothing open: plain text
        ("a:b (c:d)", [("a:b ", 1.0), ("c:d", UP)]),
        ("(a:1.2.3)", [("a:1.2.3", UP)]),  # not a number: text, and the bracket is a plain one
        ("[a:1.5]", [("a:1.5", DOWN)]),  # explicit weights exist for round brackets only
        ("(a:-1)", [("a", -1.0)]),
        ("red BREAK blue", [("red", 1.0), BREAK, ("blue", 1.0)]),
        ("(red BREAK blue)", [("red", UP), BREAK, ("blue", UP)]),
        ("BREAK red", [BREAK, ("red", 1.0)]),
        ("red BREAKING break", [("red BREAKING break", 1.0)]),  # only the whole upper-case word
    ],
)
def test_the_parser_reads_a1111_syntax(text: str, expected: list[tuple[str, float]]) -> None:
    parsed = parse_weights(text)
    assert [fragment for fragment, _ in parsed] == [fragment for fragment, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="()[]\\")))
def test_a_prompt_without_syntax_is_one_fragment_of_weight_one(text: str) -> None:
    if "BREAK" in text:
        return
    assert parse_weights(text) == [(text, 1.0)]


# -- chunks and the token counter (no model) --------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return loading.clip_tokenizer()


def test_the_counter_ignores_syntax_and_counts_chunks(tokenizer: Any) -> None:
    assert count_tokens(tokenizer, "") == (0, 1)
    assert count_tokens(tokenizer, "a red circle") == (3, 1)
    assert count_tokens(tokenizer, "a ((red:1.4)) [circle]") == (3, 1)
    assert count_tokens(tokenizer, "a red BREAK circle") == (3, 2)
    assert count_tokens(tokenizer, " ".join(["red"] * 75)) == (75, 1)
    assert count_tokens(tokenizer, " ".join(["red"] * 76)) == (76, 2)
    assert count_tokens(tokenizer, " ".join(["red"] * 151)) == (151, 3)


def test_a_full_chunk_breaks_after_a_near_comma(tokenizer: Any) -> None:
    red, blue, comma = (tokenizer.convert_tokens_to_ids(t) for t in ("red</w>", "blue</w>", ",</w>"))
    # The comma stands 10 tokens before the edge: the 10 words after it move to the next chunk.
    near = " ".join(["red"] * 64) + ", " + " ".join(["blue"] * 20)
    first, second = chunk_prompt(tokenizer, near)
    assert first.tokens == [red] * 64 + [comma]
    assert second.tokens == [blue] * 20
    # 30 tokens before the edge is too far (A1111's backtrack is 20): the chunk is cut at 75.
    far = " ".join(["red"] * 44) + ", " + " ".join(["blue"] * 40)
    first, second = chunk_prompt(tokenizer, far)
    assert first.tokens == [red] * 44 + [comma] + [blue] * 30
    assert second.tokens == [blue] * 10


def test_weights_follow_their_tokens_into_chunks(tokenizer: Any) -> None:
    (chunk,) = chunk_prompt(tokenizer, "a (red:1.5) [circle]")
    assert chunk.weights == pytest.approx([1.0, 1.5, DOWN])
    first, second = chunk_prompt(tokenizer, "(red:2) BREAK blue")
    assert (first.weights, second.weights) == ([2.0], [1.0])


# -- SD 1.x: the demo model -----------------------------------------------------------------------


@pytest.fixture
def demo(engine: Engine) -> Iterator[Any]:
    with engine._device_lock:  # the demo's modules are shared with the engine: no job may run meanwhile
        yield engine.manager.get("builtin:demo")


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_a_plain_prompt_encodes_exactly_as_diffusers_does(demo: Any, clip_skip: int) -> None:
    pipe = demo.pipe
    for prompt, negative in [("a red circle, top left", "blurry"), ("a blue square", "")]:
        mine = encode_prompts(pipe, prompt, negative, clip_skip=clip_skip)
        theirs = pipe.encode_prompt(
            prompt, "cpu", 1, True, negative_prompt=negative or None, clip_skip=clip_skip - 1 or None
        )
        assert torch.equal(mine["prompt_embeds"], theirs[0])
        assert torch.equal(mine["negative_prompt_embeds"], theirs[1])
    # Weight syntax that works out at 1 changes nothing either.
    plain = encode_prompts(pipe, "a red circle", "", clip_skip=clip_skip)
    assert torch.equal(encode_prompts(pipe, "a (red:1) circle", "", clip_skip=clip_skip)["prompt_embeds"],
                       plain["prompt_embeds"])  # fmt: skip
    assert set(encode_prompts(pipe, "a red circle", do_cfg=False)) == {"prompt_embeds"}


def test_a_weight_scales_its_token_before_the_mean_is_restored(demo: Any) -> None:
    pipe = demo.pipe
    plain = encode_prompts(pipe, "a red circle", do_cfg=False)["prompt_embeds"][0].double()
    weighted = encode_prompts(pipe, "a (red:1.5) circle", do_cfg=False)["prompt_embeds"][0].double()
    rescale = plain.mean() / (plain * _row_weights(77, {2: 1.5})[:, None]).mean()
    red = 2  # BOS, "a", "red"
    assert torch.allclose(weighted[red], plain[red] * 1.5 * rescale, atol=1e-5)
    others = [i for i in range(77) if i != red]
    assert torch.allclose(weighted[others], plain[others] * rescale, atol=1e-5)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4)
    assert weighted[red].norm() / weighted[1].norm() == pytest.approx(1.5 * plain[red].norm() / plain[1].norm())
    # Square brackets divide by 1.1; nesting multiplies.
    down = encode_prompts(pipe, "a [[red]] circle", do_cfg=False)["prompt_embeds"][0].double()
    ratio = (down[red] / plain[red]) / (down[1] / plain[1])
    assert torch.allclose(ratio, torch.full_like(ratio, DOWN * DOWN), atol=1e-4)


def _row_weights(length: int, weights: dict[int, float]) -> torch.Tensor:
    rows = torch.ones(length, dtype=torch.float64)
    for index, weight in weights.items():
        rows[index] = weight
    return rows


def test_clip_skip_beyond_the_encoder_is_refused(demo: Any) -> None:
    with pytest.raises(BadRequest, match="Clip skip 4"):
        encode_prompts(demo.pipe, "a red circle", clip_skip=4)  # the demo's text encoder has 2 layers


def test_break_and_long_prompts_make_chunks_of_77(demo: Any) -> None:
    pipe = demo.pipe
    broken = encode_prompts(pipe, "a red circle BREAK top left", "blurry")
    assert broken["prompt_embeds"].shape == (1, 154, 64)
    # Each chunk is encoded on its own; the shorter negative is padded with an empty-prompt chunk.
    assert torch.equal(broken["prompt_embeds"][:, 77:], encode_prompts(pipe, "top left")["prompt_embeds"])
    assert torch.equal(
        broken["negative_prompt_embeds"][:, :77], encode_prompts(pipe, "", "blurry")["negative_prompt_embeds"]
    )
    assert torch.equal(broken["negative_prompt_embeds"][:, 77:], encode_prompts(pipe, "", "")["negative_prompt_embeds"])
    long = encode_prompts(pipe, " ".join(["red"] * 100), "")
    assert long["prompt_embeds"].shape == long["negative_prompt_embeds"].shape == (1, 154, 64)


def test_the_tail_of_a_long_prompt_changes_the_picture(engine: Engine, demo: Any) -> None:
    pipe = engine.manager.view(demo, "txt2img", samplers.build_scheduler(demo.pipe.scheduler.config, "Euler a"))
    filler = "a circle in the middle, " + " ".join(["picture"] * 80)
    call = dict(num_inference_steps=4, guidance_scale=7.0, height=64, width=64, output_type="np")

    def draw(**prompts: Any) -> np.ndarray:
        return pipe(**prompts, **call, generator=torch.Generator().manual_seed(3)).images[0]

    red, blue = (encode_prompts(pipe, f"{filler} {colour}", "") for colour in ("red", "blue"))
    assert red["prompt_embeds"].shape[1] == 154
    difference = np.abs(draw(**red) - draw(**blue)).mean()
    assert difference > 0.01, difference
    # diffusers alone cuts the prompt at 77 tokens: the two colours draw the same picture.
    assert np.array_equal(draw(prompt=f"{filler} red"), draw(prompt=f"{filler} blue"))
    # A plain prompt draws the very picture diffusers draws from the text.
    plain = encode_prompts(pipe, "a red circle, top left", "blurry")
    assert np.array_equal(draw(**plain), draw(prompt="a red circle, top left", negative_prompt="blurry"))


# -- SDXL: two text encoders and a pooled embedding -----------------------------------------------


@pytest.fixture(scope="module")
def sdxl() -> Any:
    """An SDXL pipeline with tiny random text encoders (never run)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=16,
    )  # fmt: skip
    return tiny_sdxl_around(unet)


SDXL_KEYS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sdxl_plain_prompts_encode_exactly_as_diffusers_does(sdxl: Any, clip_skip: int, negative: str) -> None:
    mine = encode_prompts(sdxl, "a red circle, top left", negative, clip_skip=clip_skip)
    theirs = sdxl.encode_prompt(
        "a red circle, top left", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt=negative or None, clip_skip=clip_skip - 1 or None,
    )  # fmt: skip
    assert [tuple(mine[key].shape) for key in SDXL_KEYS] == [(1, 77, 64), (1, 77, 64), (1, 32), (1, 32)]
    for key, tensor in zip(SDXL_KEYS, theirs, strict=True):
        assert torch.equal(mine[key], tensor), key


def test_sdxl_chunks_join_both_encoders_and_pool_the_first_chunk(sdxl: Any) -> None:
    first = encode_prompts(sdxl, "a red circle", "blurry")
    long = encode_prompts(sdxl, "a red circle BREAK (top left:1.4)", "blurry")
    assert long["prompt_embeds"].shape == long["negative_prompt_embeds"].shape == (1, 154, 64)
    assert torch.equal(long["prompt_embeds"][:, :77], first["prompt_embeds"])
    assert torch.equal(long["pooled_prompt_embeds"], first["pooled_prompt_embeds"])
    # A weight touches both encoders' halves of its token; pooling ignores weights.
    plain = encode_prompts(sdxl, "a red circle", do_cfg=False)
    weighted = encode_prompts(sdxl, "a (red:1.5) circle", do_cfg=False)
    assert torch.equal(weighted["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])
    for half in (slice(0, 32), slice(32, 64)):
        a, b = plain["prompt_embeds"][0, :, half].double(), weighted["prompt_embeds"][0, :, half].double()
        ratio = (b[2] / a[2]) / (b[1] / a[1])
        assert torch.allclose(ratio, torch.full_like(ratio, 1.5), atol=1e-4)


def test_sdxl_in_another_dtype_matches_diffusers_too(sdxl: Any) -> None:
    half = sdxl.text_encoder.to(torch.bfloat16), sdxl.text_encoder_2.to(torch.bfloat16)
    try:
        mine = encode_prompts(sdxl, "a red circle", "blurry")
        theirs = sdxl.encode_prompt("a red circle", device="cpu", num_images_per_prompt=1,
                                    do_classifier_free_guidance=True, negative_prompt="blurry")  # fmt: skip
        assert mine["prompt_embeds"].dtype == torch.bfloat16
        for key, tensor in zip(SDXL_KEYS, theirs, strict=True):
            assert torch.equal(mine[key], tensor), key
    finally:
        for encoder in half:
            encoder.to(torch.float32)
