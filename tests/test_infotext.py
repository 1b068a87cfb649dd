"""Reading A1111 infotexts back: Atelier's own, real files from other tools, and hand-written text."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.infotext import MAX_TEXT, infotext, parameter_pairs, parse_infotext, request_fields
from pipelines.outputs import read_metadata
from pipelines.requests import Img2Img, Inpaint, Txt2Img

HERE = Path(__file__).resolve().parent
FIXTURES = next(
    (
        folder
        for folder in (
            HERE / "fixtures" / "images-from-other-tools",
            HERE.parents[1] / "shared" / "fixtures" / "images-from-other-tools",
        )
        if folder.is_dir()
    ),
    None,
)
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="images-from-other-tools fixtures not found")

TRICKY_PROMPT = (
    'a "quoted" cat, sitting: on a mat, (masterpiece:1.2), 猫 café 🦊\n'
    "second line, Steps: 3, Seed: 4, Size: 5x5\n"
    "  indented, back\\slash, {red|blue}, trailing space "
)
TRICKY_NEGATIVE = "blurry, low quality: 1.4\nNegative prompt: not a header here\nwatermark"


def _round_trip(request: Txt2Img, model_name: str = "v1-5.safetensors") -> dict[str, Any]:
    text = infotext(request, request.seed, request.width, request.height, model_name, "6ce0161689")
    return request_fields(parse_infotext(text))


def _without_model(request: Txt2Img) -> dict[str, Any]:
    return {key: value for key, value in request.fields().items() if key != "model"}


# What the form holds before "reuse parameters": every value the infotext carries is different,
# so a field the reader forgets (or does not reset to A1111's default) shows up as a mismatch.
DIRTY: dict[str, Any] = {
    "prompt": "old",
    "negative_prompt": "old",
    "sampler_name": "LMS",
    "schedule_type": "Exponential",
    "steps": 99,
    "cfg_scale": 1.5,
    "width": 1024,
    "height": 1024,
    "seed": 1,
    "clip_skip": 3,
}
DIRTY_IMG2IMG = DIRTY | {"denoising_strength": 0.01}
DIRTY_INPAINT = DIRTY_IMG2IMG | {
    "mask_blur": 63,
    "invert_mask": True,
    "only_masked": True,
    "only_masked_padding": 32,  # written only for "Only masked"; whole-picture infotexts keep the form's
    "masked_content": "fill",
}


@pytest.mark.parametrize(
    "request_",
    [
        Txt2Img(prompt="a lighthouse at dusk", seed=5, width=512, height=768),
        Txt2Img(
            prompt=TRICKY_PROMPT,
            negative_prompt=TRICKY_NEGATIVE,
            sampler_name="Euler a",
            schedule_type="Automatic",
            steps=33,
            cfg_scale=7.1234567,
            width=640,
            height=448,
            seed=4294967295,
            clip_skip=2,
        ),
        Txt2Img(prompt="", negative_prompt="", seed=0, width=64, height=64, schedule_type="Exponential"),
        Txt2Img(prompt="ends with a newline\n", negative_prompt=" leading space", seed=7, width=512, height=512),
        Img2Img(
            prompt="a barn, oil painting",
            negative_prompt="people",
            sampler_name="DPM++ 2M SDE",
            denoising_strength=0.35,
            cfg_scale=4.5,
            seed=12,
            width=768,
            height=512,
        ),
        Inpaint(prompt=TRICKY_PROMPT, seed=3, width=512, height=512, mask_blur=8, denoising_strength=0.9),
        Inpaint(
            prompt="a red door",
            negative_prompt="blurry",
            sampler_name="UniPC",
            schedule_type="Karras",
            seed=77,
            width=512,
            height=640,
            mask_blur=0,
            only_masked=True,
            only_masked_padding=48,
            masked_content="latent noise",
            invert_mask=True,
            denoising_strength=1.0,
        ),
    ],
    ids=["plain", "tricky", "empty", "whitespace", "img2img", "inpaint-defaults", "inpaint-all"],
)
def test_round_trip_gives_back_the_request(request_: Txt2Img) -> None:
    fields = _round_trip(request_, model_name="sub/anime-v3.safetensors")
    assert fields["model"] == "anime-v3"  # the name as the infotext writes it
    dirty = {Txt2Img: DIRTY, Img2Img: DIRTY_IMG2IMG, Inpaint: DIRTY_INPAINT}[type(request_)]
    rebuilt = type(request_)(**dirty).replace(**{k: v for k, v in fields.items() if k != "model"})
    assert _without_model(rebuilt) == _without_model(request_)


def test_random_prompts_round_trip_exactly() -> None:
    alphabet = [*'ab ,:"\\\n\t{}()=é猫🦊\u2028', "Steps: 1", "Size: 2x3", "Negative prompt:"]
    rng = random.Random(1234)
    for _ in range(300):
        prompt, negative = ("".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(2))
        if any(line.lstrip().startswith("Negative prompt:") for line in prompt.split("\n")):
            continue  # a prompt line that starts like the negative prompt is ambiguous in A1111's format too
        request = Txt2Img(prompt=prompt, negative_prompt=negative, seed=rng.randint(0, 2**32 - 1), width=8, height=8)
        fields = _round_trip(request)
        assert (fields["prompt"], fields["negative_prompt"], fields["seed"]) == (prompt, negative, request.seed)


def test_writer_keeps_every_digit_of_a_float_and_a1111s_short_form() -> None:
    text = infotext(Img2Img(cfg_scale=7.1234567, denoising_strength=0.75), 1, 64, 64, "m", "h")
    assert "CFG scale: 7.1234567," in text and "Denoising strength: 0.75," in text
    assert "CFG scale: 7," in infotext(Txt2Img(cfg_scale=7.0), 1, 64, 64, "m", "h")


A1111_DUCK = {
    "prompt": "photo of a duck",
    "negative_prompt": "monochrome",
    "Steps": "15",
    "Sampler": "UniPC",
    "CFG scale": "5",
    "Seed": "235284042",
    "Size-1": "512",
    "Size-2": "400",
    "Model hash": "c0d1994c73",
    "Model": "realistic_realisticVisionV20_v20",
}


@needs_fixtures
@pytest.mark.parametrize("name", ["automatic1111_cropped.png", "automatic1111_cropped.jpg", "text_after_idat.png"])
def test_a1111_files_give_their_parameters(name: str) -> None:
    assert FIXTURES is not None
    parsed = parse_infotext(read_metadata(FIXTURES / name)["parameters"])
    assert parsed == A1111_DUCK
    assert request_fields(parsed) == {
        "prompt": "photo of a duck",
        "negative_prompt": "monochrome",
        "steps": 15,
        "sampler_name": "UniPC",
        "schedule_type": "Automatic",
        "cfg_scale": 5.0,
        "seed": 235284042,
        "width": 512,
        "height": 400,
        "model": "realistic_realisticVisionV20_v20",
        "clip_skip": 1,
        "enable_hr": False,  # a picture without hires keys had no hires pass: reusing it turns hires off
    }


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fooocus1_cropped.png", {"prompt": "a smiling goldfish", "negative_prompt": ""}),  # JSON: prompts only
        ("invokeai_sdmeta1.png", {"prompt": "", "negative_prompt": ""}),  # no "parameters" chunk
        ("empty_file.png", {"prompt": "", "negative_prompt": ""}),
        ("empty_image.png", {"prompt": "", "negative_prompt": ""}),
    ],
)
def test_other_tools_and_malformed_files_never_raise(name: str, expected: dict[str, str]) -> None:
    assert FIXTURES is not None
    parsed = parse_infotext(read_metadata(FIXTURES / name).get("parameters", ""))
    assert parsed == expected
    assert request_fields(parsed) == expected


def test_old_sampler_names_carry_the_schedule() -> None:
    text = "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512"
    assert parse_infotext(text)["Sampler"] == "DPM++ 2M Karras"
    fields = request_fields(parse_infotext(text))
    assert (fields["sampler_name"], fields["schedule_type"]) == ("DPM++ 2M", "Karras")
    fields = request_fields({"Sampler": "DPM++ 2M SDE Karras", "Schedule type": "Automatic"})
    assert (fields["sampler_name"], fields["schedule_type"]) == ("DPM++ 2M SDE", "Karras")
    fields = request_fields({"Sampler": "Euler", "Schedule type": "Exponential"})
    assert (fields["sampler_name"], fields["schedule_type"]) == ("Euler", "Exponential")


def test_unknown_samplers_are_dropped_and_unknown_schedules_fall_back() -> None:
    fields = request_fields(parse_infotext("x\nSteps: 20, Sampler: Restart, Schedule type: Karras, Seed: 9"))
    assert "sampler_name" not in fields and "schedule_type" not in fields
    assert fields["steps"] == 20 and fields["seed"] == 9
    fields = request_fields({"Sampler": "Euler", "Schedule type": "Align Your Steps"})
    assert (fields["sampler_name"], fields["schedule_type"]) == ("Euler", "Automatic")


def test_quoted_values_keep_commas_colons_and_newlines() -> None:
    text = (
        "a cat\n"
        'Steps: 20, Lora hashes: "add_detail: 7c6bad76eb54, more_art: 42", Sampler: Euler, '
        'Template: "line one,\\nline \\"two\\": yes", Empty: "", Seed: 3 , Model: "my: model"'
    )
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54, more_art: 42"
    assert parsed["Template"] == 'line one,\nline "two": yes'
    assert parsed["Empty"] == ""
    assert (parsed["Sampler"], parsed["Seed"], parsed["Model"]) == ("Euler", "3", "my: model")
    assert parsed["prompt"] == "a cat"


def test_prompt_and_negative_prompt_may_span_lines() -> None:
    text = (
        "masterpiece, a castle,\r\non a hill\r\n\r\nat dawn\r\n"
        "Negative prompt: blurry,\r\nwatermark\r\n"
        "Steps: 30, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 512x768, Clip skip: 2\r\n"
    )
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "masterpiece, a castle,\non a hill\n\nat dawn"
    assert parsed["negative_prompt"] == "blurry,\nwatermark"
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Clip skip"]) == ("512", "768", "2")
    fields = request_fields(parsed)
    assert (fields["width"], fields["height"], fields["clip_skip"], fields["cfg_scale"]) == (512, 768, 2, 6.5)


def test_a_last_line_with_two_pairs_is_prompt_text() -> None:
    parsed = parse_infotext("a portrait\nstyle: baroque, light: soft")
    assert parsed == {"prompt": "a portrait\nstyle: baroque, light: soft", "negative_prompt": ""}
    parsed = parse_infotext("a portrait\nNegative prompt: ugly\nstyle: baroque, light: soft")
    assert parsed == {"prompt": "a portrait", "negative_prompt": "ugly\nstyle: baroque, light: soft"}
    assert request_fields(parsed) == {"prompt": "a portrait", "negative_prompt": "ugly\nstyle: baroque, light: soft"}
    assert parse_infotext("Steps: 20, Seed: 1, Size: 64x64")["prompt"] == ""  # three pairs: parameters


def test_empty_and_odd_text() -> None:
    assert parse_infotext("") == {"prompt": "", "negative_prompt": ""}
    assert parse_infotext("{red|blue} car")["prompt"] == "{red|blue} car"  # braces but not JSON
    assert parse_infotext("Negative prompt: ugly") == {"prompt": "", "negative_prompt": "ugly"}
    parsed = parse_infotext("x\nSteps: 20, Hires resize: 1024x1536, Seed: 1")
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("1024", "1536")


def test_a1111_inpaint_parameters() -> None:
    text = (
        "a door\nSteps: 20, Sampler: Euler, Seed: 5, Size: 512x512, Denoising strength: 0.6, Mask blur: 4, "
        "Inpaint area: Only masked, Masked area padding: 32, Masked content: latent noise, "
        "Mask mode: Inpaint not masked"
    )
    fields = request_fields(parse_infotext(text))
    assert fields["denoising_strength"] == 0.6 and fields["mask_blur"] == 4
    assert fields["only_masked"] is True and fields["only_masked_padding"] == 32
    assert fields["masked_content"] == "latent noise" and fields["invert_mask"] is True
    whole = request_fields(parse_infotext("a door\nSteps: 20, Seed: 5, Mask blur: 4"))
    assert (whole["only_masked"], whole["invert_mask"], whole["masked_content"]) == (False, False, "original")
    assert "only_masked" not in request_fields(parse_infotext("a door\nSteps: 20, Seed: 5, Size: 8x8"))


def test_bad_values_are_skipped_not_raised() -> None:
    text = (
        "x\nSteps: many, CFG scale: nan, Seed: 12x, Size: big, Clip skip: 2.5, Mask blur: 4.0, "
        "Denoising strength: inf, Inpaint area: Everywhere, Masked content: glitter, Model: "
    )
    fields = request_fields(parse_infotext(text))
    assert fields == {"prompt": "x", "negative_prompt": "", "mask_blur": 4, "invert_mask": False, "enable_hr": False}
    odd: list[Any] = [None, [], "text", {"Steps": object()}, {"Sampler": 5, "Seed": True}, {"Steps": "1e400"}]
    for params in odd:
        assert request_fields(params) in ({}, {"clip_skip": 1, "enable_hr": False})


def test_random_text_never_raises() -> None:
    alphabet = [*'aZ0 ,:"\\\n\r{}x-', "Steps: ", "Negative prompt:", "Size: 5x5", '"\\u12']
    rng = random.Random(99)
    for _ in range(500):
        parsed = parse_infotext("".join(rng.choices(alphabet, k=rng.randint(0, 40))))
        assert isinstance(parsed["prompt"], str) and isinstance(request_fields(parsed), dict)


# The pair pattern this parser used to run (A1111's, one-letter keys allowed): the reference for what a
# parameters line holds. It backtracks (quadratic on long lines), so it only ever reads short ones here.
A1111_PAIR = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
LINE_PIECES = st.sampled_from([*'aZ9_é猫 -/:,"\\\t\r', "\u00a0", "Steps", ": ", ", ", '\\"', '"a, b"'])


@settings(max_examples=600, deadline=None)
@given(line=st.lists(LINE_PIECES, max_size=40).map("".join))
def test_the_scanner_reads_a_line_as_a1111s_pattern_does(line: str) -> None:
    assert parameter_pairs(line) == A1111_PAIR.findall(line)


@settings(max_examples=300, deadline=None)
@given(line=st.text(max_size=80))
def test_the_scanner_reads_any_text_as_a1111s_pattern_does(line: str) -> None:
    line = line.replace("\n", " ")  # the parameters line is one line
    assert parameter_pairs(line) == A1111_PAIR.findall(line)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300) | st.lists(LINE_PIECES | st.just("\n"), max_size=60).map("".join))
def test_any_text_parses_without_raising(text: str) -> None:
    parsed = parse_infotext(text)
    assert isinstance(parsed["prompt"], str) and isinstance(parsed["negative_prompt"], str)
    assert all(isinstance(value, str) for value in parsed.values())
    assert isinstance(request_fields(parsed), dict)


def test_text_past_the_bound_is_not_read_and_the_result_says_so() -> None:
    prompt = "a long prompt, " * (MAX_TEXT // 20)
    text = f"{prompt}\nNegative prompt: blurry\n{'more, ' * (MAX_TEXT // 5)}\nSteps: 20, Seed: 1, Size: 64x64"
    parsed = parse_infotext(text)
    assert (parsed["prompt"], parsed["negative_prompt"]) == (prompt, "blurry")  # whole lines within the bound
    assert f"{len(text):,} characters" in parsed["notes"] and "not read" in parsed["notes"]
    assert request_fields(parsed) == {"prompt": prompt, "negative_prompt": "blurry"}
    exactly = "x\n" + "y" * (MAX_TEXT - 2)
    assert "notes" not in parse_infotext(exactly) and parse_infotext(exactly)["prompt"] == exactly
    assert "notes" in parse_infotext(exactly + "z")


@pytest.mark.parametrize("atelier", ["[1, 2]", '"text"', "{}", "{damaged"])
def test_send_to_falls_back_to_the_infotext_when_ateliers_chunk_holds_no_fields(tmp_path: Path, atelier: str) -> None:
    from PIL import Image, PngImagePlugin

    from webui.pnginfo_tab import fields_from_image

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 7, Seed: 3, Size: 64x96")
    info.add_text("atelier", atelier)
    Image.new("RGB", (8, 8)).save(tmp_path / "odd.png", pnginfo=info)
    fields = fields_from_image(str(tmp_path / "odd.png"))
    assert (fields["prompt"], fields["steps"], fields["seed"], fields["height"]) == ("a cat", 7, 3, 96)
