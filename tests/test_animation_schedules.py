"""Deforum schedules: constants, expressions of t, interpolation between keyframes, errors that name
the keyframe, and proof that no text can run code, reach an attribute, or take long to evaluate."""

from __future__ import annotations

import builtins
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.animation.schedules import (
    MAX_EXPRESSION_CHARS,
    evaluate_constant,
    evaluate_schedule,
    parse_frame,
    parse_schedule,
    schedule_table,
)
from pipelines.errors import BadRequest


def problems_of(text: str, frames: int = 30, name: str = "zoom") -> str:
    with pytest.raises(BadRequest) as caught:
        evaluate_schedule(text, frames, name)
    return str(caught.value)


# -- constants and interpolation -------------------------------------------------------------------


def test_a_constant_holds_at_every_frame() -> None:
    assert evaluate_schedule("0: (0.65)", 5) == [0.65] * 5


def test_constants_are_interpolated_linearly_between_keyframes() -> None:
    values = evaluate_schedule("0: (0), 10: (1), 20: (-1)", 25)
    assert values[0] == 0.0 and values[10] == 1.0 and values[20] == -1.0
    assert values[5] == pytest.approx(0.5)
    assert values[15] == pytest.approx(0.0)
    assert values[21:] == [-1.0] * 4  # the last keyframe holds to the end


def test_frames_before_the_first_keyframe_take_its_value() -> None:
    assert evaluate_schedule("5: (2), 10: (4)", 8)[:6] == [2.0] * 6


def test_an_expression_of_t_is_evaluated_at_every_frame() -> None:
    values = evaluate_schedule("0: (1.02+0.002*sin(2*3.14*t/30))", 40)
    assert values == pytest.approx([1.02 + 0.002 * math.sin(2 * 3.14 * t / 30) for t in range(40)])


def test_deforums_default_zoom_schedule() -> None:
    values = evaluate_schedule("0: (1.0025+0.002*sin(1.25*3.14*t/30))", 120)
    assert values[60] == pytest.approx(1.0025 + 0.002 * math.sin(1.25 * 3.14 * 60 / 30))


def test_an_expression_runs_until_the_next_keyframe_and_a_constant_lerps_into_an_expression() -> None:
    values = evaluate_schedule("0: (t), 10: (3), 20: (t*2)", 25)
    assert values[:10] == [float(t) for t in range(10)]  # expression: evaluated, not interpolated
    assert values[10] == 3.0
    assert values[15] == pytest.approx(3 + (40 - 3) * 0.5)  # constant -> the expression's value at 20
    assert values[20:] == [40.0, 42.0, 44.0, 46.0, 48.0]


def test_a_keyframe_after_the_end_is_still_interpolated_towards() -> None:
    assert evaluate_schedule("0: (0), 100: (1)", 11)[10] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "text",
    ["0:(1), 10:(2)", "0: 1, 10: 2", ' "0": (1) , "10" : (2) , ', "10:(2),0:(1)", "0:(1),\n10:(2)"],
)
def test_deforum_spellings_are_accepted(text: str) -> None:
    assert evaluate_schedule(text, 11) == pytest.approx([1 + t / 10 for t in range(11)])


def test_a_single_bare_value_is_keyframe_zero() -> None:
    assert evaluate_schedule("1.5", 3) == [1.5, 1.5, 1.5]


def test_keyframes_may_be_constant_expressions() -> None:
    assert parse_frame('"120-1"') == 119
    assert [k.frame for k in parse_schedule("0:(1), 2*5:(2)").keyframes] == [0, 10]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sin(t)", math.sin(3)),
        ("cos(t)", math.cos(3)),
        ("tan(t)", math.tan(3)),
        ("asin(t/4)", math.asin(0.75)),
        ("acos(t/4)", math.acos(0.75)),
        ("atan(t)", math.atan(3)),
        ("sqrt(t)", math.sqrt(3)),
        ("abs(-t)", 3.0),
        ("exp(t)", math.exp(3)),
        ("log(t)", math.log(3)),
        ("log(8, 2)", 3.0),
        ("floor(t/2)", 1.0),
        ("ceil(t/2)", 2.0),
        ("min(t, 2, 5)", 2.0),
        ("max(t, 2, 5)", 5.0),
        ("pow(t, 2)", 9.0),
        ("t**2 % 4", 1.0),
        ("-t + +2", -1.0),
        ("2*pi + e", 2 * math.pi + math.e),
        ("7/2", 3.5),
    ],
)
def test_every_allowed_function_and_operator(expression: str, expected: float) -> None:
    assert evaluate_schedule(f"3: ({expression})", 4) == pytest.approx([expected] * 4)


# -- errors name the keyframe and what is wrong ----------------------------------------------------


def test_an_unknown_name_is_named_with_its_keyframe() -> None:
    message = problems_of("0: (1), 30: (1+x)")
    assert "zoom keyframe 30" in message and "'x' is not allowed" in message and "t, pi, e" in message


def test_every_bad_keyframe_is_reported_at_once() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_schedule("0: (1+), 10: (y), 20: (2)", "angle")
    assert len(caught.value.problems) == 2
    assert "angle keyframe 0" in caught.value.problems[0] and "not a valid expression" in caught.value.problems[0]
    assert "angle keyframe 10" in caught.value.problems[1]


def test_division_by_zero_names_the_frame() -> None:
    message = problems_of("0: (1), 5: (1/(t-7))")
    assert "keyframe 5" in message and "division by zero" in message and "at frame 7" in message


def test_a_value_with_no_real_result_names_the_frame() -> None:
    message = problems_of("0: (sqrt(t-3))", 10)
    assert "is not a real number" in message and "at frame 0" in message


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("", "is empty"),
        ("0: (1), 0: (2)", "keyframe 0 is given twice"),
        ("0: (1", "never closed"),
        ("0: 1)", "closes nothing"),
        ("0: (1), 10", "write it as 'frame: (value)'"),
        ("a: (1)", "keyframe 'a' is not a frame number"),
        ("-1: (1)", "must be a frame from 0"),
        ("2.5: (1)", "not a whole frame number"),
        ("0: ()", "not allowed: tuples"),
        ("0: ('1')", "only numbers are allowed"),
        ("0: (1 < 2)", "comparisons"),
        ("0: (2 // 1)", "'//' is not allowed"),
        ("0: (sin(1, 2))", "sin() takes 1 argument, got 2"),
        ("0: (sin(x=1))", "named arguments"),
        ("0: (1e999)", "too large"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text: str, wanted: str) -> None:
    assert wanted in problems_of(text)


def test_text_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(BadRequest, match="must be text"):
        parse_schedule(1.0)


def test_the_number_of_frames_is_checked() -> None:
    with pytest.raises(BadRequest, match="number of frames"):
        evaluate_schedule("0: (1)", 0)


def test_a_constant_expression_is_evaluated_and_reported() -> None:
    assert evaluate_constant("120-1") == 119.0
    with pytest.raises(BadRequest, match="'t' is not allowed"):
        evaluate_constant("t")


# -- safety: nothing is executed, nothing is slow --------------------------------------------------

HOSTILE = [
    "__import__('os')",
    "().__class__.__bases__[0].__subclasses__()",
    "t.real",
    "t.__class__",
    "(lambda: 1)()",
    "lambda: 1",
    "[x for x in (1, 2)]",
    "{x for x in (1, 2)}",
    "{x: 1 for x in (1, 2)}",
    "sum(x for x in (1, 2))",
    "open('/etc/passwd')",
    "eval('1')",
    "exec('1')",
    "globals()",
    "__builtins__",
    "getattr(t, 'real')",
    "(t := 1)",
    "f'{t}'",
    "1 if t else 2",
    "t[0]",
    "*t",
    "'a' * 10",
    "9**9**9",
    "10**10**10",
    "pow(9, 9**9)",
    "2**99999",
    "t ** 100000",
    "(2**1000)**(2**1000)",
    "1" + "0" * 900,
    "-" * 500 + "1",
    "(" * 300 + "1" + ")" * 300,
    "1+" * 400 + "1",
    "x" * (MAX_EXPRESSION_CHARS + 1),
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_hostile_expressions_are_refused_quickly(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(BadRequest) as caught:
        evaluate_schedule(f"0: ({expression})", 1000, "zoom")
    assert time.perf_counter() - started < 1.0
    assert caught.value.problems and all(p.startswith("zoom keyframe 0") for p in caught.value.problems)


@pytest.mark.parametrize(
    "template",
    [
        "__import__('os').system('touch {path}')",
        "__import__('pathlib').Path('{path}').touch()",
        "open('{path}', 'w')",
    ],
)
def test_code_that_would_leave_a_file_leaves_none(template: str, tmp_path: Path) -> None:
    canary = tmp_path / "ran"
    message = problems_of("0: (" + template.format(path=canary) + ")")
    assert "not allowed" in message
    assert not canary.exists()


def test_attribute_access_lambdas_and_comprehensions_have_their_own_messages() -> None:
    assert "attribute access" in problems_of("0: (t.real)")
    assert "lambda" in problems_of("0: (lambda: 1)")
    assert "comprehensions" in problems_of("0: ([x for x in (1, 2)])")
    assert "exponent" in problems_of("0: (9**9**9)")
    assert "the function '__import__' is not allowed" in problems_of("0: (__import__('os'))")


def test_evaluation_never_calls_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert evaluate_schedule("0: (1+sin(t)), 10: (2)", 20)[0] == 1.0
    assert problems_of("0: (__import__('os'))")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="t0123456789.+-*/%()eipsnaqrtlogcxm_ ,:[]'\"", max_size=60))
def test_any_text_gives_numbers_or_bad_request(text: str) -> None:
    """No text makes the parser raise anything but BadRequest, or give a value that is not finite."""
    try:
        values = evaluate_schedule(text, 8)
    except BadRequest as exc:
        assert exc.problems
    else:
        assert len(values) == 8 and all(math.isfinite(v) for v in values)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(0, 60), st.floats(-100, 100, allow_nan=False), min_size=1, max_size=6))
def test_constant_keyframes_are_hit_exactly_and_bounded_between(keys: dict[int, float]) -> None:
    text = ", ".join(f"{frame}: ({value!r})" for frame, value in keys.items())
    values = evaluate_schedule(text, 61)
    for frame, value in keys.items():
        assert values[frame] == pytest.approx(value)
    low, high = min(keys.values()), max(keys.values())
    assert all(low - 1e-9 <= v <= high + 1e-9 for v in values)


# -- the table for a plot ----------------------------------------------------------------------------


def test_schedule_table_rows_and_problems() -> None:
    rows, problems = schedule_table({"zoom": "0: (1), 10: (2)", "angle": "0: (bad)"}, 11)
    assert [r["frame"] for r in rows] == list(range(11))
    assert {r["schedule"] for r in rows} == {"zoom"}
    assert rows[5]["value"] == pytest.approx(1.5)
    assert len(problems) == 1 and problems[0].startswith("angle keyframe 0")


def test_schedule_table_thins_long_clips_but_keeps_the_last_frame() -> None:
    rows, problems = schedule_table({"zoom": "0: (t)"}, 10_000, max_points=100)
    frames = [r["frame"] for r in rows]
    assert problems == [] and len(frames) <= 101 and frames[0] == 0 and frames[-1] == 9_999
    assert rows[-1]["value"] == 9_999.0


def test_long_clips_evaluate_quickly() -> None:
    started = time.perf_counter()
    values = evaluate_schedule("0: (1.0025+0.002*sin(1.25*3.14*t/30)), 5000: (1), 6000: (t/6000)", 10_000)
    assert time.perf_counter() - started < 0.5
    assert values[-1] == pytest.approx(9_999 / 6000)
