"""Property tests of request validation: ``checked`` is total, honest and idempotent.

For any values of any fields (huge and negative ints, nan and inf, unicode and path-like text, None,
bools, lists, bytes...), ``Txt2Img/Img2Img/Inpaint(...).checked(limits)`` either

- returns a request whose every field is within its documented range, changed only where a note
  says so (sizes rounded to a multiple of 8, sampler and schedule in their canonical names), and that
  is a fixed point: checking it again changes nothing and gives no notes; or
- raises ``BadRequest`` whose problems name every offending field, and only offending fields,

and never raises anything else. Which fields offend is decided by an oracle written from the
documented ranges, independently of ``pipelines/requests.py`` (sampler and schedule names are
defined by ``samplers.resolve``, which the oracle calls for text only).

Requests are drawn valid-looking field by field, then 0 to 3 fields are replaced by hostile values,
so both the accepting and the refusing paths are exercised. Values that once crashed validation
(non-text sampler names, ints beyond float range or beyond Python's 4300-digit str() limit,
non-bool inpaint flags) are kept as fixed examples at the end.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from pipelines import samplers
from pipelines.errors import BadRequest
from pipelines.requests import (
    MASKED_CONTENT,
    MAX_SEED,
    REFERENCE_MODES,
    RESIZE_MODES,
    Img2Img,
    Inpaint,
    Limits,
    Txt2Img,
)

IMAGE = Image.new("RGB", (8, 8), (120, 30, 200))
MASK = Image.new("L", (8, 8), 255)
LIMITS = (Limits(), Limits(max_pixels=512 * 512, max_steps=30, max_prompt_chars=50))
PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# Fields whose values must be whole numbers, with their ranges (``None``: taken from the limits).
WHOLE = {"steps": (1, None), "batch_size": (1, None), "batch_count": (1, None), "clip_skip": (1, 12),
         "seed": (-1, MAX_SEED), "mask_blur": (0, 64), "only_masked_padding": (0, 256),
         "subseed": (-1, MAX_SEED)}  # fmt: skip
TEXT = ("prompt", "negative_prompt", "model")
# How a problem may refer to a field (problems say "unknown sampler", "size WxH", "needs an init image").
ALIASES = {"sampler_name": ("sampler",), "schedule_type": ("schedule",), "width": ("width", "size"),
           "height": ("height", "size"), "init_image": ("init image",), "mask": ("mask image",)}  # fmt: skip
NOTED = {"width", "height", "sampler_name", "schedule_type"}  # the only fields ``checked`` may rewrite
MAX_DIGITS = 4000  # the fixed examples below go past Python's 4300-digit str() limit


def field_names(cls: type[Txt2Img]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _limit(name: str, limits: Limits) -> int:
    return {"steps": limits.max_steps, "batch_size": limits.max_batch_size, "batch_count": limits.max_batch_count}[name]


# -- strategies ------------------------------------------------------------------------------------------------
PATHLIKE = st.sampled_from(
    ["../../etc/passwd", "/etc/passwd", "C:\\Windows\\system32", "..\\..\\boot.ini", "a/../../b", "~/.ssh/id_rsa",
     "\x00", "file:///etc/passwd", "models/../outputs", "%2e%2e%2f", "con", "NUL:", "ＤＰＭ＋＋", "\u212a_euler"]
)  # fmt: skip
BIG_INTS = st.sampled_from([2**31, -(2**31) - 1, 2**32, 2**63, -(2**63), 2**64 + 1, 10**308, 10**400, -(10**400)])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 1e-320, 7.5, 0.5, 1.0000000001])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | BIG_INTS
    | FLOATS
    | st.text(max_size=40)
    | PATHLIKE
    | st.binary(max_size=8)
)


def huge_ints(max_digits: int = MAX_DIGITS) -> st.SearchStrategy[int]:
    """Ints of up to ``max_digits`` digits, either sign (built: statistics would print a 4000-digit bound)."""
    return st.builds(lambda digits, sign: sign * 7 * 10**digits, st.integers(0, max_digits), st.sampled_from([1, -1]))


ANY = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(st.text(max_size=5), inner, max_size=2)
    ),
    max_leaves=4,
) | st.sampled_from([IMAGE, MASK, Image, object(), float, b"\x89PNG", frozenset({1})])

_SAMPLER_SPELLINGS = [
    spelling
    for sampler in samplers.SAMPLERS
    for name in (sampler.name, *sampler.aliases)
    for spelling in (name, name.lower(), name.upper(), f"  {name} ", name.replace(" ", "_"), f"{name} Karras",
                     f"{name} exponential")
]  # fmt: skip
_SCHEDULE_SPELLINGS = [*samplers.SCHEDULE_TYPES, "", None, "karras", "EXPONENTIAL", "automatic"]


def _whole_range(name: str, limits: Limits) -> tuple[int, int]:
    low, high = WHOLE[name]
    return low, _limit(name, limits) if high is None else high


def valid_looking(name: str, limits: Limits) -> st.SearchStrategy[Any]:
    """In-range values for one field, boundaries and non-canonical spellings included.

    Sizes may still be refused together (too many pixels for the limits) and be rounded (notes).
    """
    if name in TEXT:
        return st.text(max_size=30) | PATHLIKE | st.just("x" * limits.max_prompt_chars)
    if name in WHOLE:
        low, high = _whole_range(name, limits)
        return st.integers(low, high) | st.sampled_from([low, high])
    size = st.sampled_from([0, 64, 512, 513, 767, 4092, 4096]) | st.integers(64, 1100)
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "sampler_name": st.sampled_from(_SAMPLER_SPELLINGS),
        "schedule_type": st.sampled_from(_SCHEDULE_SPELLINGS),
        "cfg_scale": st.floats(0, 30) | st.integers(0, 30) | st.sampled_from([0.0, 30.0, 30]),
        "width": size,
        "height": size,
        "init_image": st.just(IMAGE),
        "mask": st.just(MASK),
        "denoising_strength": st.floats(0, 1) | st.sampled_from([0, 1, 0.0, 1.0]),
        "resize_mode": st.sampled_from(RESIZE_MODES),
        "masked_content": st.sampled_from(MASKED_CONTENT),
        "invert_mask": st.booleans(),
        "only_masked": st.booleans(),
        "reference_image": st.none() | st.just(IMAGE),
        "reference_hash": st.sampled_from(["", "0123456789abcdef"]),
        "reference_mode": st.sampled_from(REFERENCE_MODES),
        "reference_strength": st.floats(0, 2) | st.sampled_from([0, 2, 0.0, 2.0]),
        "reference_fidelity": st.floats(0, 1) | st.sampled_from([0, 1]),
        "reference_start": st.floats(0, 0.5) | st.just(0),
        "reference_end": st.floats(0.6, 1) | st.just(1),
        "subseed_strength": st.floats(0, 1) | st.sampled_from([0, 1]),
        "seed_resize_from_w": st.sampled_from([-1, 0, 64, 4096]) | st.integers(64, 1100),
        "seed_resize_from_h": st.sampled_from([-1, 0, 64, 4096]) | st.integers(64, 1100),
        "enable_hr": st.booleans(),
        "hr_scale": st.floats(1, 4) | st.sampled_from([1, 4, 2.0]),
        "hr_resize_x": st.sampled_from([0, 64, 4096]) | st.integers(64, 1100),
        "hr_resize_y": st.sampled_from([0, 64, 4096]) | st.integers(64, 1100),
        "hr_upscaler": st.sampled_from(["Latent", "Lanczos", "None", "4x-UltraSharp"]),
        "hr_second_pass_steps": st.sampled_from([0, 1, limits.max_steps]),
    }
    return strategies[name]


def near_miss(name: str, limits: Limits) -> st.SearchStrategy[Any]:
    """Values just outside a field's range, or almost its spelling."""
    if name in TEXT:
        return st.just("x" * (limits.max_prompt_chars + 1))
    if name in WHOLE:
        low, high = _whole_range(name, limits)
        return st.sampled_from([low - 1, high + 1, float(low), float(high), str(low), True, False])
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "sampler_name": st.sampled_from(["", "Euler z", "DPM++", "DPM++ 2M Cosine", "Karras", "k_euler_aa"]),
        "schedule_type": st.sampled_from([" Karras", "Cosine", "Karras ", "Automatic!", "Simple"]),
        "cfg_scale": st.sampled_from([30.0000001, -1e-9, 31, -1, 1e308, True]),
        "width": st.sampled_from([60, 63, 4097, 4100, -8, 64.0, "512", True]),
        "height": st.sampled_from([60, 63, 4097, 4100, -8, 64.0, "512", True]),
        "init_image": st.sampled_from([None, "image.png", b"\x89PNG"]),
        "mask": st.sampled_from([None, "mask.png"]),
        "denoising_strength": st.sampled_from([1.0000001, -1e-300, 2, -1, True]),
        "resize_mode": st.sampled_from(["Just resize", "stretch", "just  resize", ""]),
        "masked_content": st.sampled_from(["Fill", "blur", "original "]),
        "invert_mask": st.booleans(),
        "only_masked": st.booleans(),
        "reference_image": st.sampled_from(["reference.png", b"\x89PNG", 3]),
        "reference_hash": st.sampled_from(["0123456789ABCDEF", "../x", "g" * 16, 12]),
        "reference_mode": st.sampled_from(["Reference-only", "reference_only", "canny", ""]),
        "reference_strength": st.sampled_from([2.0000001, -1e-9, 3, True]),
        "reference_fidelity": st.sampled_from([1.0000001, -1, True]),
        "reference_start": st.sampled_from([-0.1, 1.5, True]),
        "reference_end": st.sampled_from([1.01, -1, True]),
        "subseed_strength": st.sampled_from([1.0000001, -1e-9, 2, True]),
        "seed_resize_from_w": st.sampled_from([1, 63, 4097, 64.0, "512", True]),
        "seed_resize_from_h": st.sampled_from([1, 63, 4097, 64.0, "512", True]),
        "enable_hr": st.sampled_from([1, 0, "yes", None]),
        "hr_scale": st.sampled_from([0.99, 4.01, -1, True]),
        "hr_resize_x": st.sampled_from([1, 63, 4097, 64.0, "512", True]),
        "hr_resize_y": st.sampled_from([1, 63, 4097, 64.0, "512", True]),
        "hr_upscaler": st.sampled_from(["", 3, None]),
        "hr_second_pass_steps": st.sampled_from([-1, limits.max_steps + 1, 2.0, True]),
    }
    return strategies[name]


def hostile(name: str, limits: Limits) -> st.SearchStrategy[Any]:
    """Near misses or anything at all."""
    if name in ("width", "height"):  # a product of two huge sides is slow to check: keep them moderate
        return near_miss(name, limits) | ANY | huge_ints(MAX_DIGITS // 2)
    return near_miss(name, limits) | ANY | huge_ints()


@st.composite
def raw_requests(draw: st.DrawFn, cls: type[Txt2Img]) -> tuple[dict[str, Any], Limits]:
    limits = draw(st.sampled_from(LIMITS))
    names = field_names(cls)
    fields = {name: draw(valid_looking(name, limits), label=name) for name in names}
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True), label="hostile fields"):
        fields[name] = draw(hostile(name, limits), label=f"hostile {name}")
    return fields, limits


# -- the oracle ------------------------------------------------------------------------------------------------
def _whole(value: Any) -> bool:
    return type(value) is int  # bool is not a whole number of steps


def _real(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _rounded(side: int) -> int:
    return max(64, round(side / 8) * 8) if side else 0


def offending(cls: type[Txt2Img], fields: dict[str, Any], limits: Limits) -> tuple[set[str], set[str]]:
    """(fields that must be reported, fields that may be reported too) by the documented rules."""
    must: set[str] = set()
    may: set[str] = set()
    for name in TEXT:
        value = fields[name]
        if not isinstance(value, str) or len(value) > limits.max_prompt_chars:
            must.add(name)
    for name, (low, high) in WHOLE.items():
        if name in fields:
            top = _limit(name, limits) if high is None else high
            if not (_whole(fields[name]) and low <= fields[name] <= top):
                must.add(name)
    if not (_real(fields["cfg_scale"]) and 0 <= fields["cfg_scale"] <= 30):
        must.add("cfg_scale")
    sides = {}
    for name in ("width", "height"):
        value = fields[name]
        if not (_whole(value) and (value == 0 or limits.min_side <= value <= limits.max_side)):
            must.add(name)
        else:
            sides[name] = _rounded(value)
    if len(sides) == 2 and sides["width"] * sides["height"] > limits.max_pixels:
        must |= {"width", "height"}
    sampler, schedule = fields["sampler_name"], fields["schedule_type"]
    if not isinstance(sampler, str):
        must.add("sampler_name")
    else:
        try:
            samplers.resolve(sampler, "Automatic")
        except KeyError:
            must.add("sampler_name")
    named_schedule = isinstance(schedule, str) and schedule.lower() in {t.lower() for t in samplers.SCHEDULE_TYPES}
    if not (schedule in (None, "") or named_schedule):
        # Reported only when the sampler is known: one message covers the pair.
        (may if "sampler_name" in must else must).add("schedule_type")
    if issubclass(cls, Img2Img):
        if not isinstance(fields["init_image"], Image.Image):
            must.add("init_image")
        if not (_real(fields["denoising_strength"]) and 0 <= fields["denoising_strength"] <= 1):
            must.add("denoising_strength")
        if not (isinstance(fields["resize_mode"], str) and fields["resize_mode"] in RESIZE_MODES):
            must.add("resize_mode")
    if issubclass(cls, Inpaint):
        if not isinstance(fields["mask"], Image.Image):
            must.add("mask")
        if not (isinstance(fields["masked_content"], str) and fields["masked_content"] in MASKED_CONTENT):
            must.add("masked_content")
        for name in ("invert_mask", "only_masked"):
            if not isinstance(fields[name], bool):
                must.add(name)
    _reference_offences(fields, must)
    _variation_and_hires_offences(cls, fields, limits, must)
    return must, may


def _variation_and_hires_offences(cls: type[Txt2Img], fields: dict[str, Any], limits: Limits, must: set[str]) -> None:
    if not (_real(fields["subseed_strength"]) and 0 <= fields["subseed_strength"] <= 1):
        must.add("subseed_strength")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if not (_whole(fields[name]) and (fields[name] <= 0 or 64 <= fields[name] <= 4096)):
            must.add(name)
    if issubclass(cls, Img2Img):
        return  # the hires fields are text to image's, unused (and unchecked) in the other modes
    if not isinstance(fields["enable_hr"], bool):
        must.add("enable_hr")
        return
    if not fields["enable_hr"]:
        return
    if not (_real(fields["hr_scale"]) and 1 <= fields["hr_scale"] <= 4):
        must.add("hr_scale")
    for name in ("hr_resize_x", "hr_resize_y"):
        if not (_whole(fields[name]) and (fields[name] == 0 or limits.min_side <= fields[name] <= limits.max_side)):
            must.add(name)
    if not (_whole(fields["hr_second_pass_steps"]) and 0 <= fields["hr_second_pass_steps"] <= limits.max_steps):
        must.add("hr_second_pass_steps")
    if not (_real(fields["denoising_strength"]) and 0 <= fields["denoising_strength"] <= 1):
        must.add("denoising_strength")
    if not (isinstance(fields["hr_upscaler"], str) and fields["hr_upscaler"]):
        must.add("hr_upscaler")


def _reference_offences(fields: dict[str, Any], must: set[str]) -> None:
    if not (fields["reference_image"] is None or isinstance(fields["reference_image"], Image.Image)):
        must.add("reference_image")
    digest = fields["reference_hash"]
    if not (isinstance(digest, str) and set(digest) <= set("0123456789abcdef")):
        must.add("reference_hash")
    if not (isinstance(fields["reference_mode"], str) and fields["reference_mode"] in REFERENCE_MODES):
        must.add("reference_mode")
    for name, high in (("reference_strength", 2), ("reference_fidelity", 1), ("reference_start", 1),
                       ("reference_end", 1)):  # fmt: skip
        if not (_real(fields[name]) and 0 <= fields[name] <= high):
            must.add(name)
    if not {"reference_start", "reference_end"} & must and fields["reference_start"] >= fields["reference_end"]:
        must |= {"reference_start", "reference_end"}


def _names(problem: str, name: str) -> bool:
    """Whether a problem names a field, in the part of it before the echoed value."""
    head = re.split(r", got |'", problem, maxsplit=1)[0]
    aliases = (name, *ALIASES.get(name, ()))
    return any(re.search(rf"(?<!\w){re.escape(alias)}(?!\w)", head) for alias in aliases)


# -- the properties --------------------------------------------------------------------------------------------
def _snapshot(request: Txt2Img) -> dict[str, Any]:
    return {name: getattr(request, name) for name in field_names(type(request))}


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _event(name: str) -> None:
    if currently_in_test_context():  # the known-bug tests call check() outside Hypothesis
        event(name)


def check(cls: type[Txt2Img], fields: dict[str, Any], limits: Limits) -> None:
    request = cls(**fields)
    before = _snapshot(request)
    must, may = offending(cls, fields, limits)
    try:
        result, notes = request.checked(limits)
    except BadRequest as exc:
        _event("refused")
        problems = exc.problems
        assert must, f"refused a valid request: {problems}"
        assert problems and all(isinstance(p, str) and p for p in problems)
        unnamed = [name for name in must if not any(_names(p, name) for p in problems)]
        assert unnamed == [], f"problems {problems} do not name {unnamed}"
        stray = [p for p in problems if not any(_names(p, name) for name in must | may)]
        assert stray == [], f"problems {stray} name no offending field (offending: {sorted(must)})"
    else:
        _event("accepted with notes" if notes else "accepted as is")
        assert not must, f"accepted offending fields {sorted(must)}: {[fields[n] for n in sorted(must)]!r}"
        assert type(result) is cls
        assert_in_range(result, limits)
        after = _snapshot(result)
        for name, value in after.items():
            if name not in NOTED:
                assert _same(value, fields[name]), f"{name} changed from {fields[name]!r} to {value!r}"
        for side in ("width", "height"):
            assert after[side] == _rounded(fields[side])
            if after[side] != fields[side]:
                assert any(side in note for note in notes), notes
        assert len(notes) <= 3 and all(isinstance(n, str) and n for n in notes)
        again, more_notes = result.checked(limits)
        assert more_notes == []
        assert all(_same(value, getattr(again, name)) for name, value in after.items()), "not a fixed point"
    after_call = _snapshot(request)
    assert all(_same(value, after_call[name]) for name, value in before.items()), "checked() changed its input"


def assert_in_range(request: Txt2Img, limits: Limits) -> None:
    for name in TEXT:
        assert isinstance(getattr(request, name), str) and len(getattr(request, name)) <= limits.max_prompt_chars
    for name, (low, high) in WHOLE.items():
        if hasattr(request, name):
            value = getattr(request, name)
            assert _whole(value) and low <= value <= (_limit(name, limits) if high is None else high), (name, value)
    assert _real(request.cfg_scale) and 0 <= request.cfg_scale <= 30
    for side in (request.width, request.height):
        assert _whole(side) and (side == 0 or (limits.min_side <= side <= limits.max_side and side % 8 == 0))
    assert request.width * request.height <= limits.max_pixels
    assert request.sampler_name in samplers.sampler_names()
    sampler, _ = samplers.resolve(request.sampler_name)
    assert request.schedule_type in samplers.SCHEDULE_TYPES and request.schedule_type in sampler.schedules
    if isinstance(request, Img2Img):
        assert isinstance(request.init_image, Image.Image)
        assert _real(request.denoising_strength) and 0 <= request.denoising_strength <= 1
        assert request.resize_mode in RESIZE_MODES
    if isinstance(request, Inpaint):
        assert isinstance(request.mask, Image.Image) and request.masked_content in MASKED_CONTENT
        assert isinstance(request.invert_mask, bool) and isinstance(request.only_masked, bool)


def _defaults(cls: type[Txt2Img]) -> dict[str, Any]:
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    return (
        fields
        | ({"init_image": IMAGE} if issubclass(cls, Img2Img) else {})
        | ({"mask": MASK} if issubclass(cls, Inpaint) else {})
    )


@PROPERTY_SETTINGS
@given(raw_requests(Txt2Img))
@example(({**_defaults(Txt2Img), "width": 513, "height": 4092}, Limits()))
@example(({**_defaults(Txt2Img), "sampler_name": "k_euler_a Karras"}, Limits()))
@example(({**_defaults(Txt2Img), "width": 7 * 10**2000, "height": -(10**2000)}, Limits()))
def test_txt2img_checked_is_total_and_honest(drawn: tuple[dict[str, Any], Limits]) -> None:
    check(Txt2Img, *drawn)


@PROPERTY_SETTINGS
@given(raw_requests(Img2Img))
def test_img2img_checked_is_total_and_honest(drawn: tuple[dict[str, Any], Limits]) -> None:
    check(Img2Img, *drawn)


@PROPERTY_SETTINGS
@given(raw_requests(Inpaint))
def test_inpaint_checked_is_total_and_honest(drawn: tuple[dict[str, Any], Limits]) -> None:
    check(Inpaint, *drawn)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([Txt2Img, Img2Img, Inpaint]), st.data())
def test_valid_requests_are_accepted_as_they_are(cls: type[Txt2Img], data: st.DataObject) -> None:
    """Requests built from in-range values and canonical names come back unchanged, without notes."""
    sampler = data.draw(st.sampled_from(samplers.SAMPLERS))
    fields: dict[str, Any] = {
        "prompt": data.draw(st.text(max_size=50)), "negative_prompt": data.draw(st.text(max_size=50)),
        "model": data.draw(st.text(max_size=20)), "sampler_name": sampler.name,
        "schedule_type": data.draw(st.sampled_from(sampler.schedules)), "steps": data.draw(st.integers(1, 150)),
        "cfg_scale": data.draw(st.floats(0, 30)), "width": 8 * data.draw(st.integers(8, 256)),
        "height": 8 * data.draw(st.integers(8, 256)), "seed": data.draw(st.integers(-1, MAX_SEED)),
        "batch_size": data.draw(st.integers(1, 8)), "batch_count": data.draw(st.integers(1, 100)),
        "clip_skip": data.draw(st.integers(1, 12)),
    }  # fmt: skip
    if fields["width"] * fields["height"] > Limits().max_pixels:
        fields["height"] = 64
    if issubclass(cls, Img2Img):
        fields |= {"init_image": IMAGE, "denoising_strength": data.draw(st.floats(0, 1)),
                   "resize_mode": data.draw(st.sampled_from(RESIZE_MODES))}  # fmt: skip
    if issubclass(cls, Inpaint):
        fields |= {"mask": MASK, "mask_blur": data.draw(st.integers(0, 64)), "invert_mask": data.draw(st.booleans()),
                   "only_masked": data.draw(st.booleans()), "only_masked_padding": data.draw(st.integers(0, 256)),
                   "masked_content": data.draw(st.sampled_from(MASKED_CONTENT))}  # fmt: skip
    request = cls(**fields)
    result, notes = request.checked(Limits())
    assert notes == []
    assert _snapshot(result) == _snapshot(request)


# -- values that once crashed validation, kept as fixed examples ------------------------------------------
@pytest.mark.parametrize(
    ("cls", "changes"),
    [
        pytest.param(Txt2Img, {"sampler_name": None}, id="sampler_name=None"),
        pytest.param(Txt2Img, {"sampler_name": 5}, id="sampler_name=5"),
        pytest.param(Txt2Img, {"sampler_name": b"Euler"}, id="sampler_name=bytes"),
        pytest.param(Txt2Img, {"schedule_type": 5}, id="schedule_type=5"),
        pytest.param(Txt2Img, {"schedule_type": ["Karras"]}, id="schedule_type=list"),
        pytest.param(Txt2Img, {"schedule_type": False}, id="schedule_type=False"),
        pytest.param(Txt2Img, {"cfg_scale": 10**400}, id="cfg_scale=10**400"),
        pytest.param(Img2Img, {"denoising_strength": -(10**400)}, id="denoising_strength=-10**400"),
        pytest.param(Txt2Img, {"steps": 10**5000}, id="steps=10**5000"),
        pytest.param(Txt2Img, {"width": -(10**5000)}, id="width=-10**5000"),
        pytest.param(Txt2Img, {"width": 64, "height": 10**5000}, id="pixels=64*10**5000"),
        pytest.param(Inpaint, {"mask_blur": 10**5000}, id="mask_blur=10**5000"),
        pytest.param(Inpaint, {"invert_mask": "no"}, id="invert_mask='no'"),
        pytest.param(Inpaint, {"only_masked": None}, id="only_masked=None"),
    ],
)
def test_known_bugs(cls: type[Txt2Img], changes: dict[str, Any]) -> None:
    check(cls, _defaults(cls) | changes, Limits())
