"""Animation settings (defaults, checks, presets round trip, Deforum import), prompt keyframes, and the
per-frame plan: prompt and seed travel, seed behaviours, schedules and cadence."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.animation.plan import FramePlan, diffused_frames, plan_frames, resolve_seed
from pipelines.animation.settings import AnimationSettings, from_deforum, parse_prompts
from pipelines.errors import BadRequest
from pipelines.requests import MAX_SEED, Limits
from presets.validation import check_settings

TRAVEL = '{"0": "a red circle on the left", "24": "a red circle on the right"}'


def plans(**fields: Any) -> list[FramePlan]:
    return plan_frames(AnimationSettings(**{"seed": 100, "max_frames": 30, **fields}))


# -- settings --------------------------------------------------------------------------------------


def test_defaults_are_deforums_and_pass_their_own_check() -> None:
    defaults = AnimationSettings()
    assert (defaults.max_frames, defaults.fps, defaults.diffusion_cadence) == (120, 15, 2)
    assert (defaults.strength_schedule, defaults.noise_schedule) == ("0: (0.65)", "0: (0.065)")
    assert defaults.zoom == "0: (1.0025+0.002*sin(1.25*3.14*t/30))"
    assert (defaults.colour_coherence, defaults.seed_behaviour, defaults.border) == ("LAB", "iter", "replicate")
    assert defaults.checked() == (defaults, [])


def test_checked_lists_every_problem_with_its_value() -> None:
    with pytest.raises(BadRequest) as caught:
        AnimationSettings(
            max_frames=0, fps=0, diffusion_cadence=51, seed_behaviour="wobble", colour_coherence="CMYK", steps=1.5
        ).checked()
    message = str(caught.value)
    for part in (
        "max_frames must be between 1 and 10000, got 0",
        "fps must be between 1 and 60, got 0",
        "diffusion_cadence must be between 1 and 50, got 51",
        "seed_behaviour must be one of iter, fixed, random, ladder, alternate, schedule, got 'wobble'",
        "colour_coherence must be one of None, HSV, LAB, RGB, got 'CMYK'",
        "steps must be a whole number, got 1.5",
    ):
        assert part in message
    assert len(caught.value.problems) == 6


def test_a_schedule_out_of_range_is_named_with_frame_and_keyframe() -> None:
    with pytest.raises(BadRequest) as caught:
        AnimationSettings(max_frames=40, strength_schedule="0: (0.5), 10: (0.5+t/20)").checked()
    (problem,) = caught.value.problems
    assert problem.startswith("strength_schedule is 1.05 at frame 11 (keyframe 10")
    assert "between 0 and 1" in problem


def test_a_schedule_syntax_error_is_reported_by_checked() -> None:
    with pytest.raises(BadRequest, match="angle keyframe 5"):
        AnimationSettings(angle="0: (0), 5: (t*)").checked()


def test_the_seed_schedule_is_only_checked_when_it_is_used() -> None:
    AnimationSettings(seed_schedule="nonsense").checked()
    with pytest.raises(BadRequest, match="seed_schedule"):
        AnimationSettings(seed_schedule="nonsense", seed_behaviour="schedule").checked()


def test_checked_normalises_and_notes() -> None:
    settings = AnimationSettings(width=500, colour_coherence="lab", clip_format="GIF", sampler_name="euler_ancestral")
    fixed, notes = settings.checked()
    assert (fixed.width, fixed.colour_coherence, fixed.clip_format, fixed.sampler_name) == (
        496,
        "LAB",
        "gif",
        "Euler a",
    )
    assert notes == ["width 500 is not a multiple of 8: using 496"]
    assert fixed.checked() == (fixed, [])


def test_checked_uses_the_engines_limits() -> None:
    with pytest.raises(BadRequest, match="more pixels than this device allows"):
        AnimationSettings(width=1024, height=1024).checked(Limits(max_pixels=512 * 512))


def test_a_late_prompt_keyframe_is_noted() -> None:
    _, notes = AnimationSettings(prompts='{"0": "a", "200": "b"}', max_frames=100).checked()
    assert notes and "200" in notes[0] and "(99)" in notes[0]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["max_frames", "fps", "seed", "width", "prompts", "zoom", "seed_behaviour", "prompt_travel"]),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.lists(st.integers(), max_size=2),
        st.binary(max_size=4),
    ),
)
def test_checked_raises_only_bad_request(field: str, value: Any) -> None:
    try:
        fixed, _ = AnimationSettings(**{field: value}).checked()
    except BadRequest as exc:
        assert any(field in problem for problem in exc.problems), exc.problems
    else:
        assert fixed.checked()[0] == fixed


def test_to_dict_and_from_dict_round_trip_through_json_and_presets() -> None:
    settings = AnimationSettings(prompts=TRAVEL, seed=7, zoom="0: (1.05)", seed_travel=True, fps=12.5)
    data = json.loads(json.dumps(settings.to_dict()))
    assert check_settings(data) == data  # what the presets file accepts
    assert AnimationSettings.from_dict(data) == settings
    assert AnimationSettings.from_dict({"seed": 3}) == AnimationSettings(seed=3)


def test_from_dict_refuses_unknown_fields() -> None:
    with pytest.raises(BadRequest, match="unknown animation settings: colour, zooom"):
        AnimationSettings.from_dict({"zooom": "0: (1)", "colour": "LAB"})
    with pytest.raises(BadRequest, match="JSON object"):
        AnimationSettings.from_dict([])  # type: ignore[arg-type]


# -- prompts ---------------------------------------------------------------------------------------


def test_a_plain_prompt_is_one_keyframe_at_zero() -> None:
    assert parse_prompts("a red circle") == {0: ("a red circle", "")}
    assert parse_prompts("") == {0: ("", "")}


def test_json_prompts_with_deforum_negatives() -> None:
    prompts = parse_prompts('{"24": "b --neg blurry", "0": "a", "\\"48\\"": "c"}')
    assert prompts == {0: ("a", ""), 24: ("b", "blurry"), 48: ("c", "")}
    assert list(prompts) == [0, 24, 48]


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ('{"0": "a",}', "not valid JSON"),
        ("{}", "object of frame: prompt"),
        ('{"x": "a"}', "keyframe 'x' is not a frame number"),
        ('{"0": 5}', "keyframe 0 must be text, got int"),
        ('{"0": "a", "00": "b"}', "keyframe 0 is given twice"),
        ('{"0": "a", "0": "b"}', "keyframe 0 is given twice"),
    ],
)
def test_bad_prompts_say_why(text: str, wanted: str) -> None:
    with pytest.raises(BadRequest, match=wanted):
        parse_prompts(text)


# -- the plan --------------------------------------------------------------------------------------


def test_one_plan_per_frame_with_the_schedules_values() -> None:
    frames = plans(zoom="0: (1), 10: (2)", angle="0: (t)", translation_x="0: (3)", cfg_scale_schedule="0: (5)")
    assert [p.index for p in frames] == list(range(30))
    assert frames[5].zoom == pytest.approx(1.5) and frames[29].zoom == 2.0
    assert frames[7].angle == 7.0 and frames[7].translation_x == 3.0 and frames[7].cfg_scale == 5.0
    assert frames[0].strength == 0.65 and frames[0].denoising_strength == pytest.approx(0.35)
    assert frames[0].noise == 0.065


def test_prompt_travel_weights_between_keyframes() -> None:
    frames = plans(prompts=TRAVEL, negative_prompt="ugly")
    assert (frames[0].prompt, frames[0].next_prompt, frames[0].prompt_weight) == (
        "a red circle on the left",
        "a red circle on the right",
        0.0,
    )
    assert frames[12].prompt_weight == pytest.approx(0.5)
    assert frames[12].prompt_keyframes == (0, 24)
    assert frames[24].prompt == frames[24].next_prompt == "a red circle on the right"
    assert frames[24].prompt_weight == 0.0 and frames[29].prompt_keyframes == (24, 24)
    assert frames[3].negative_prompt == "ugly"


def test_without_prompt_travel_prompts_switch_at_keyframes() -> None:
    frames = plans(prompts=TRAVEL, prompt_travel=False)
    assert all(p.prompt_weight == 0.0 for p in frames)
    assert frames[23].prompt == "a red circle on the left" and frames[24].prompt == "a red circle on the right"


def test_keyframe_negatives_join_the_global_negative() -> None:
    frames = plans(prompts='{"0": "a --neg dark", "10": "b"}', negative_prompt="ugly")
    assert frames[0].negative_prompt == "dark, ugly" and frames[0].next_negative_prompt == "ugly"


def test_cadence_diffuses_every_nth_frame_and_the_last() -> None:
    assert diffused_frames(10, 4) == [0, 4, 8, 9]
    assert diffused_frames(9, 4) == [0, 4, 8]
    assert diffused_frames(5, 1) == [0, 1, 2, 3, 4]
    frames = plans(max_frames=10, diffusion_cadence=4)
    assert [p.index for p in frames if p.diffused] == [0, 4, 8, 9]
    middle = frames[6]
    assert (middle.previous_diffused, middle.next_diffused, middle.cadence_weight) == (4, 8, 0.5)
    assert (frames[4].previous_diffused, frames[4].next_diffused, frames[4].cadence_weight) == (4, 4, 0.0)


def diffused_seeds(behaviour: str, **fields: Any) -> list[int]:
    return [p.seed for p in plans(seed_behaviour=behaviour, max_frames=12, **fields) if p.diffused]


def test_seed_behaviours_follow_deforum() -> None:
    assert diffused_seeds("iter", diffusion_cadence=1)[:5] == [100, 101, 102, 103, 104]
    assert diffused_seeds("iter", diffusion_cadence=1, seed_iter_n=2)[:5] == [100, 101, 101, 102, 102]
    assert diffused_seeds("fixed")[:4] == [100] * 4
    assert diffused_seeds("ladder", diffusion_cadence=1)[:6] == [100, 102, 101, 103, 102, 104]
    assert diffused_seeds("alternate", diffusion_cadence=1)[:5] == [100, 101, 100, 101, 100]
    # counted over diffused frames: cadence 2 still goes up by one per diffusion
    assert diffused_seeds("iter", diffusion_cadence=2)[:4] == [100, 101, 102, 103]


def test_random_seeds_keep_the_first_and_repeat_for_the_same_seed() -> None:
    first = diffused_seeds("random", diffusion_cadence=1)
    assert first[0] == 100 and len(set(first)) == len(first)
    assert all(0 <= s <= MAX_SEED for s in first)
    assert diffused_seeds("random", diffusion_cadence=1) == first


def test_the_seed_schedule_sets_seeds_and_minus_one_draws_one() -> None:
    seeds = diffused_seeds("schedule", diffusion_cadence=1, seed_schedule="0: (5), 4: (-1), 6: (9)")
    assert seeds[:4] == [5, 5, 5, 5]  # held: the seeds between two seeds are not a blend of them
    assert seeds[6:] == [9] * 6
    assert seeds[4] not in (-1, 5, 9) and 0 <= seeds[4] <= MAX_SEED


def test_seed_travel_slerps_between_the_seeds_of_prompt_keyframes() -> None:
    frames = plans(prompts=TRAVEL, seed_travel=True, seed_behaviour="iter", diffusion_cadence=1)
    assert (frames[0].seed, frames[0].next_seed, frames[0].seed_weight) == (100, 124, 0.0)
    assert (frames[6].seed, frames[6].next_seed) == (100, 124)
    assert frames[6].seed_weight == pytest.approx(0.25)
    assert (frames[24].seed, frames[24].next_seed, frames[24].seed_weight) == (124, 124, 0.0)


def test_without_seed_travel_there_is_one_seed_per_frame() -> None:
    assert all(p.seed == p.next_seed and p.seed_weight == 0.0 for p in plans(prompts=TRAVEL))


def test_a_random_seed_is_resolved_once_and_repeats_the_plan() -> None:
    settings = AnimationSettings(seed=-1, max_frames=6, seed_behaviour="random")
    resolved = resolve_seed(settings)
    assert 0 <= resolved.seed <= MAX_SEED and resolve_seed(resolved) == resolved
    assert plan_frames(resolved) == plan_frames(resolved)
    assert plan_frames(resolved)[0].seed == resolved.seed


def test_planning_checks_the_settings() -> None:
    with pytest.raises(BadRequest, match="zoom"):
        plan_frames(AnimationSettings(zoom="0: (0)"))


def test_a_long_clip_plans_quickly() -> None:
    import time

    started = time.perf_counter()
    frames = plan_frames(AnimationSettings(seed=1, max_frames=5000, prompts=TRAVEL, seed_travel=True))
    assert len(frames) == 5000 and time.perf_counter() - started < 2.0


# -- Deforum settings files ------------------------------------------------------------------------

DEFORUM_FILE: dict[str, Any] = {
    "W": 512,
    "H": 768,
    "seed": 1234,
    "sampler": "Euler a",
    "steps": "30",
    "seed_behavior": "ladder",
    "seed_iter_N": 1,
    "animation_mode": "2D",
    "max_frames": 60,
    "border": "wrap",
    "angle": "0: (0)",
    "zoom": "0: (1.0025+0.002*sin(1.25*3.14*t/30))",
    "translation_x": "0: (0), max_f: (10)",
    "translation_y": "0: (0)",
    "translation_z": "0: (1.75)",
    "noise_schedule": "0: (0.065)",
    "strength_schedule": "0: (0.65)",
    "cfg_scale_schedule": "0: (7)",
    "seed_schedule": '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)',
    "color_coherence": "Match Frame 0 HSV",
    "diffusion_cadence": "3",
    "fps": 24,
    "prompts": {"0": "a cat --neg dog", "max_f/2": "a tiger"},
    "animation_prompts_positive": "oil painting",
    "animation_prompts_negative": "--neg blurry",
    "use_depth_warping": True,
    "make_gif": False,
}


def test_a_deforum_file_imports_its_matching_subset() -> None:
    imported, report = from_deforum(DEFORUM_FILE)
    assert (imported.width, imported.height, imported.seed, imported.steps, imported.max_frames) == (
        512,
        768,
        1234,
        30,
        60,
    )
    assert (imported.seed_behaviour, imported.border, imported.colour_coherence) == ("ladder", "wrap", "HSV")
    assert (imported.diffusion_cadence, imported.fps, imported.sampler_name) == (3, 24, "Euler a")
    assert imported.translation_x == "0: (0), 59: (10)"
    assert imported.seed_schedule == '0:(1234), 1:(-1), "59-2":(-1), "59-1":(1234)'
    assert json.loads(imported.prompts) == {"0": "oil painting a cat --neg dog", "29": "oil painting a tiger"}
    assert imported.negative_prompt == "blurry"
    assert report == ["ignored 3 Deforum settings with no equivalent here: make_gif, translation_z, use_depth_warping"]
    checked, _ = imported.replace(seed_behaviour="schedule").checked()
    frames = plan_frames(checked)
    assert frames[0].seed == 1234 and frames[59].seed == 1234
    assert frames[0].negative_prompt == "dog, blurry"


def test_a_deforum_import_reports_what_it_could_not_take() -> None:
    imported, report = from_deforum(
        {"animation_mode": "3D", "sampler": "DDPM++ fancy", "color_coherence": "Video Input", "W": "wide"}
    )
    assert imported.sampler_name == AnimationSettings.sampler_name and imported.colour_coherence == "None"
    text = " | ".join(report)
    for part in ("animation_mode '3D'", "sampler 'DDPM++ fancy' is not available", "Video Input", "W: 'wide'"):
        assert part in text


def test_a_deforum_import_of_something_else_is_refused() -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        from_deforum(["not", "a", "dict"])  # type: ignore[arg-type]


def test_plans_have_finite_numbers() -> None:
    for frame in plans(prompts=TRAVEL, seed_travel=True):
        for value in (frame.zoom, frame.angle, frame.strength, frame.noise, frame.cfg_scale, frame.seed_weight):
            assert math.isfinite(value)
