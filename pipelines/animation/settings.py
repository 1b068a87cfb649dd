"""Everything an animation job needs to know, as one frozen dataclass with Deforum-like defaults.

``checked()`` reports every problem at once (``BadRequest``), with the offending value and what is
allowed; schedules are evaluated over every frame there, so a value out of range is named with its
frame and keyframe. ``to_dict``/``from_dict`` are flat JSON for presets; ``from_deforum`` imports the
matching subset of a Deforum settings file and says what it left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import samplers
from ..errors import BadRequest
from ..requests import MAX_SEED, Limits
from .schedules import MAX_KEYFRAME, evaluate_constant, parse_frame, parse_schedule

SEED_BEHAVIOURS = ("iter", "fixed", "random", "ladder", "alternate", "schedule")
COLOUR_COHERENCE = ("None", "HSV", "LAB", "RGB")
BORDERS = ("replicate", "reflect", "wrap")
CLIP_FORMATS = ("mp4", "gif", "webp")
HELD_SCHEDULES = ("seed_schedule",)  # a seed between two seeds means nothing: each keyframe's holds
MAX_TEXT = 10_000  # what a preset keeps in one text field
MAX_ANIMATION_FRAMES = 10_000
MAX_FPS = 60
NEGATIVE_MARK = "--neg"  # Deforum's separator of a keyframe's prompt and its own negative prompt

# schedule field -> (lowest, highest, what the unit is); checked at every frame
SCHEDULE_RANGES: Mapping[str, tuple[float, float, str]] = types.MappingProxyType(
    {
        "zoom": (0.1, 10.0, "a factor per frame, 1.0 is still"),
        "angle": (-360.0, 360.0, "degrees per frame"),
        "translation_x": (-4096.0, 4096.0, "pixels per frame"),
        "translation_y": (-4096.0, 4096.0, "pixels per frame"),
        "strength_schedule": (0.0, 1.0, "the share of the previous frame kept"),
        "noise_schedule": (0.0, 1.0, "noise added before each diffusion"),
        "cfg_scale_schedule": (0.0, 30.0, "CFG scale"),
        "seed_schedule": (-1.0, float(MAX_SEED), "a seed, -1 for random"),
    }
)


@dataclass(frozen=True)
class AnimationSettings:
    prompts: str = ""  # Deforum JSON {"0": "...", "24": "..."} or a plain prompt (one keyframe at 0)
    negative_prompt: str = ""  # added to every keyframe's own negative (after "--neg" in Deforum prompts)
    prompt_travel: bool = True  # blend the text embeddings between keyframes; off: switch at each keyframe
    model: str = ""
    sampler_name: str = "Euler a"
    schedule_type: str = "Automatic"
    steps: int = 25
    width: int = 0  # 0: the model's native size
    height: int = 0
    max_frames: int = 120
    fps: float = 15
    clip_format: str = "mp4"
    seed: int = -1
    seed_behaviour: str = "iter"
    seed_iter_n: int = 1  # "iter": the seed goes up by one every N diffused frames
    seed_schedule: str = "0: (-1)"  # "schedule": the seed at each frame, -1 for random
    seed_travel: bool = False  # slerp the initial noise between the seeds of two prompt keyframes
    zoom: str = "0: (1.0025+0.002*sin(1.25*3.14*t/30))"
    angle: str = "0: (0)"
    translation_x: str = "0: (0)"
    translation_y: str = "0: (0)"
    border: str = "replicate"
    strength_schedule: str = "0: (0.65)"
    noise_schedule: str = "0: (0.065)"
    cfg_scale_schedule: str = "0: (7)"
    colour_coherence: str = "LAB"
    diffusion_cadence: int = 2

    def schedules(self) -> dict[str, str]:
        """Every schedule field's text by name (the seed schedule only when it is in use), for plots."""
        names = [n for n in SCHEDULE_RANGES if n != "seed_schedule" or self.seed_behaviour == "schedule"]
        return {name: getattr(self, name) for name in names}

    def replace(self, **changes: Any) -> AnimationSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain JSON value (a preset's settings)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnimationSettings:
        """Settings from ``to_dict``'s form; fields left out keep their defaults. Unknown fields are an
        error (a misspelt field would otherwise be lost without a word); values are checked by ``checked``."""
        if not isinstance(data, Mapping):
            raise BadRequest(f"animation settings must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise BadRequest(f"unknown animation settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def checked(self, limits: Limits | None = None) -> tuple[AnimationSettings, list[str]]:
        """A normalised copy and notes on what was adjusted, or ``BadRequest`` listing every problem.

        ``limits`` are the engine's (sizes, steps, pixels for this device); the defaults otherwise."""
        limits = limits or Limits()
        problems: list[str] = []
        notes: list[str] = []
        changes: dict[str, Any] = {}
        self._check_texts(problems)
        self._check_numbers(limits, problems, notes, changes)
        self._check_choices(problems, changes)
        if isinstance(self.prompts, str) and len(self.prompts) <= MAX_TEXT:
            try:
                keyframes = parse_prompts(self.prompts)
            except BadRequest as exc:
                problems.extend(exc.problems)
            else:
                if limits.prompt_problem is not None:  # every keyframe's prompt, as it will run
                    found = ((frame, limits.prompt_problem(prompt)) for frame, (prompt, _) in keyframes.items())
                    problems += [f"keyframe {frame}: {problem}" for frame, problem in found if problem]
                late = [k for k in keyframes if _is_int(self.max_frames) and k >= self.max_frames]
                if late:
                    notes.append(
                        f"prompt keyframes {', '.join(map(str, late))} come after the last frame "
                        f"({self.max_frames - 1}): the clip ends before reaching them"
                    )
        if _is_int(self.max_frames) and 1 <= self.max_frames <= MAX_ANIMATION_FRAMES:
            # normalised first: "Schedule" means the seed schedule is used, and must be checked
            (self.replace(**changes) if changes else self)._check_schedules(problems)
        if problems:
            raise BadRequest(problems)
        return (self.replace(**changes) if changes else self), notes

    def _check_texts(self, problems: list[str]) -> None:
        texts = ["prompts", "negative_prompt", "model", "sampler_name", "schedule_type", "clip_format"]
        texts += ["seed_behaviour", "border", "colour_coherence", *SCHEDULE_RANGES]
        for name in texts:
            value = getattr(self, name)
            if not isinstance(value, str):
                problems.append(f"{name} must be text, got {type(value).__name__}")
            elif len(value) > MAX_TEXT:
                problems.append(f"{name} is {len(value)} characters long; the limit is {MAX_TEXT}")
        for name in ("prompt_travel", "seed_travel"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {_shown(getattr(self, name))}")

    def _check_numbers(self, limits: Limits, problems: list[str], notes: list[str], changes: dict[str, Any]) -> None:
        ranges = {
            "steps": (1, limits.max_steps),
            "max_frames": (1, MAX_ANIMATION_FRAMES),
            "seed": (-1, MAX_SEED),
            "seed_iter_n": (1, 1000),
            "diffusion_cadence": (1, 50),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not _is_int(value):
                problems.append(f"{name} must be a whole number, got {_shown(value)}")
            elif not low <= value <= high:
                problems.append(f"{name} must be between {low} and {high}, got {value}")
        if not _is_number(self.fps) or not 1 <= self.fps <= MAX_FPS:
            problems.append(f"fps must be between 1 and {MAX_FPS}, got {_shown(self.fps)}")
        elif self.fps > 50 and str(self.clip_format).strip().lower() == "gif":
            notes.append(f"GIF stores frame times in hundredths of a second: {self.fps} fps plays at 50 at most")
        for side in ("width", "height"):
            value = getattr(self, side)
            if not _is_int(value):
                problems.append(f"{side} must be a whole number of pixels, got {_shown(value)}")
            elif value and not limits.min_side <= value <= limits.max_side:
                problems.append(
                    f"{side} must be 0 (the model's size) or {limits.min_side} to {limits.max_side}, got {value}"
                )
            elif value % 8:
                changes[side] = max(limits.min_side, round(value / 8) * 8)
                notes.append(f"{side} {value} is not a multiple of 8: using {changes[side]}")
        width, height = changes.get("width", self.width), changes.get("height", self.height)
        if _is_int(width) and _is_int(height) and width * height > limits.max_pixels:
            problems.append(f"size {width}x{height} is more pixels than this device allows ({limits.max_pixels})")

    def _check_choices(self, problems: list[str], changes: dict[str, Any]) -> None:
        choices = {
            "seed_behaviour": SEED_BEHAVIOURS,
            "border": BORDERS,
            "colour_coherence": COLOUR_COHERENCE,
            "clip_format": CLIP_FORMATS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            matches = [c for c in allowed if isinstance(value, str) and c.lower() == value.strip().lower()]
            if not matches:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {_shown(value)}")
            elif matches[0] != value:
                changes[name] = matches[0]  # "lab" and " LAB" mean LAB: keep the spelling this code compares
        if not (isinstance(self.sampler_name, str) and isinstance(self.schedule_type, str)):
            return  # reported with the other texts
        try:
            sampler, schedule = samplers.resolve(self.sampler_name, self.schedule_type)
        except KeyError as exc:
            problems.append(exc.args[0])
            return
        schedule = schedule if schedule in sampler.schedules else "Automatic"
        if (sampler.name, schedule) != (self.sampler_name, self.schedule_type):
            changes.update(sampler_name=sampler.name, schedule_type=schedule)  # A1111's names, as infotext wants

    def _check_schedules(self, problems: list[str]) -> None:
        for name, text in self.schedules().items():
            if not isinstance(text, str) or len(text) > MAX_TEXT:
                continue  # already reported
            low, high, unit = SCHEDULE_RANGES[name]
            try:
                schedule = parse_schedule(text, name)
                values = schedule.series(self.max_frames, hold=name in HELD_SCHEDULES)
            except BadRequest as exc:
                problems.extend(exc.problems)
                continue
            slack = 1e-9 * max(1.0, abs(low), abs(high))  # 1 - 18/20 is 0.09999999999999998, and means 0.1
            outside = (values < low - slack) | (values > high + slack)
            if outside.any():
                frame = int(outside.argmax())
                key = schedule.keyframe_at(frame)
                problems.append(
                    f"{name} is {values[frame]:.6g} at frame {frame} (keyframe {key.frame}: {key.text!r}); "
                    f"it must be between {low:g} and {high:g} ({unit})"
                )


def parse_prompts(text: Any) -> dict[int, tuple[str, str]]:
    """Keyframe -> (prompt, negative prompt) from Deforum's JSON or a plain prompt (keyframe 0).

    A keyframe's text may carry its own negative prompt after ``--neg``, as in Deforum.
    """
    if not isinstance(text, str):
        raise BadRequest(f"prompts must be text, got {type(text).__name__}")
    if not text.lstrip().startswith("{"):
        return {0: _split_negative(text)}
    try:
        pairs = json.loads(text, object_pairs_hook=list)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"prompts start with '{{' but are not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(pairs, list) or not pairs:
        raise BadRequest('prompts JSON must be an object of frame: prompt, like {"0": "a red circle"}')
    problems: list[str] = []
    keyframes: dict[int, tuple[str, str]] = {}
    for key, value in pairs:
        try:
            frame = parse_frame(key)
        except BadRequest as exc:
            problems.append(f"prompts: {exc}")
            continue
        if not isinstance(value, str):
            problems.append(f"prompts: keyframe {frame} must be text, got {type(value).__name__}")
        elif frame in keyframes:
            problems.append(f"prompts: keyframe {frame} is given twice")
        else:
            keyframes[frame] = _split_negative(value)
    if problems:
        raise BadRequest(problems)
    return dict(sorted(keyframes.items()))


def _split_negative(text: str) -> tuple[str, str]:
    positive, _, negative = text.partition(NEGATIVE_MARK)
    return positive.strip(), negative.strip()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # ints over 4300 digits have no repr
        return "a very large number"
    return text if len(text) <= 100 else f"{text[:97]}..."


# -- Deforum import --------------------------------------------------------------------------------

_DEFORUM_SCHEDULES = types.MappingProxyType(
    {
        "zoom": "zoom",
        "angle": "angle",
        "translation_x": "translation_x",
        "translation_y": "translation_y",
        "strength_schedule": "strength_schedule",
        "noise_schedule": "noise_schedule",
        "cfg_scale_schedule": "cfg_scale_schedule",
        "seed_schedule": "seed_schedule",
    }
)
_DEFORUM_NUMBERS = types.MappingProxyType(
    {
        "W": "width",
        "H": "height",
        "seed": "seed",
        "steps": "steps",
        "max_frames": "max_frames",
        "seed_iter_N": "seed_iter_n",
        "diffusion_cadence": "diffusion_cadence",
        "fps": "fps",
    }
)
_DEFORUM_COLOURS = types.MappingProxyType(
    {
        "none": "None",
        "hsv": "HSV",
        "lab": "LAB",
        "rgb": "RGB",
        "match frame 0 hsv": "HSV",
        "match frame 0 lab": "LAB",
        "match frame 0 rgb": "RGB",
    }
)
_DEFORUM_PROMPTS = ("prompts", "animation_prompts", "animation_prompts_positive", "positive_prompts")
_DEFORUM_NEGATIVES = ("animation_prompts_negative", "negative_prompts")
_DEFORUM_OTHERS = ("sampler", "seed_behavior", "border", "color_coherence", "animation_mode", "scale")


def from_deforum(data: Mapping[str, Any]) -> tuple[AnimationSettings, list[str]]:
    """The matching subset of a Deforum settings file (its JSON as a dict) and a report of what was
    left out or changed. ``max_f`` in schedules and prompt keys becomes the last frame's number and
    ``s`` in the seed schedule the seed, as Deforum reads them. Check the result with ``checked()``."""
    if not isinstance(data, Mapping):
        raise BadRequest(f"a Deforum settings file holds a JSON object, got {type(data).__name__}")
    report: list[str] = []
    fields: dict[str, Any] = {}
    for key, name in _DEFORUM_NUMBERS.items():
        if key in data:
            number = _whole(data[key]) if name != "fps" else _fps(data[key])
            if number is None:
                report.append(f"{key}: {_shown(data[key])} is not a number; kept the default")
            else:
                fields[name] = number
    last = fields.get("max_frames", AnimationSettings.max_frames) - 1
    for key, name in _DEFORUM_SCHEDULES.items():
        if isinstance(data.get(key), str):
            text = re.sub(r"\bmax_f\b", str(last), data[key])
            if key == "seed_schedule":
                text = re.sub(r"\bs\b", str(fields.get("seed", -1)), text)
            fields[name] = text
    if "cfg_scale_schedule" not in fields and _is_number(data.get("scale")):
        fields["cfg_scale_schedule"] = f"0: ({data['scale']})"
    _import_prompts(data, last, fields, report)
    _import_choices(data, fields, report)
    used = {*_DEFORUM_NUMBERS, *_DEFORUM_SCHEDULES, *_DEFORUM_PROMPTS, *_DEFORUM_NEGATIVES, *_DEFORUM_OTHERS}
    ignored = sorted(str(k) for k in data if k not in used)
    if ignored:
        report.append(f"ignored {len(ignored)} Deforum settings with no equivalent here: {', '.join(ignored)}")
    return AnimationSettings(**fields), report


def _import_prompts(data: Mapping[str, Any], last: int, fields: dict[str, Any], report: list[str]) -> None:
    prompts = data.get("prompts", data.get("animation_prompts"))
    if isinstance(prompts, str) and prompts.lstrip().startswith("{"):
        try:
            prompts = json.loads(prompts)
        except json.JSONDecodeError:
            report.append("prompts: not valid JSON; kept the default")
            prompts = None
    positive = data.get("animation_prompts_positive", data.get("positive_prompts", ""))
    positive = positive.strip() if isinstance(positive, str) else ""
    negative = data.get("animation_prompts_negative", data.get("negative_prompts", ""))
    if isinstance(negative, str) and negative.strip():
        fields["negative_prompt"] = negative.replace(NEGATIVE_MARK, "").strip()
    if isinstance(prompts, Mapping):
        keyframes: dict[str, str] = {}
        for key, value in prompts.items():
            try:
                frame = _deforum_frame(str(key), last)
            except BadRequest as exc:
                report.append(f"prompts: {exc}; that keyframe was left out")
                continue
            if isinstance(value, str):
                keyframes[str(frame)] = f"{positive} {value}".strip() if positive else value
        fields["prompts"] = json.dumps(keyframes, ensure_ascii=False)
    elif isinstance(prompts, str):
        fields["prompts"] = f"{positive} {prompts}".strip()
    elif prompts is not None:
        report.append(f"prompts: expected an object of frame: prompt, got {type(prompts).__name__}")


def _import_choices(data: Mapping[str, Any], fields: dict[str, Any], report: list[str]) -> None:
    sampler = data.get("sampler")
    if isinstance(sampler, str):
        try:
            fields["sampler_name"] = samplers.resolve(sampler)[0].name
        except KeyError:
            report.append(f"sampler {sampler!r} is not available here; kept {AnimationSettings.sampler_name}")
    behaviour = data.get("seed_behavior")
    if behaviour in SEED_BEHAVIOURS:
        fields["seed_behaviour"] = behaviour
    elif behaviour is not None:
        report.append(f"seed_behavior {_shown(behaviour)} is not one of {', '.join(SEED_BEHAVIOURS)}; kept iter")
    border = data.get("border")
    if border in BORDERS:
        fields["border"] = border
    elif border is not None:
        report.append(f"border {_shown(border)} is not one of {', '.join(BORDERS)}; kept replicate")
    colour = data.get("color_coherence")
    if isinstance(colour, str) and colour.strip().lower() in _DEFORUM_COLOURS:
        fields["colour_coherence"] = _DEFORUM_COLOURS[colour.strip().lower()]
    elif colour is not None:
        fields["colour_coherence"] = "None"
        report.append(f"color_coherence {_shown(colour)} (matching a video or an image) is not supported; using None")
    mode = data.get("animation_mode", "2D")
    if mode != "2D":
        report.append(
            f"animation_mode {_shown(mode)}: only 2D motion is supported; imported as 2D "
            "(3D rotation, translation_z, depth, video and interpolation settings are left out)"
        )


def _deforum_frame(key: str, last: int) -> int:
    """A Deforum prompt key: digits or an expression of ``max_f``, cut to a whole frame as Deforum does."""
    text = re.sub(r"\bmax_f\b", str(last), key).strip().strip("'\"")
    value = evaluate_constant(text, "keyframe")
    if not 0 <= value <= MAX_KEYFRAME:
        raise BadRequest(f"keyframe {key!r} is {value:g}, not a frame from 0 to {MAX_KEYFRAME}")
    return int(value)


def _whole(value: Any) -> int | None:
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,12}\s*", value):
        return int(value)
    return None


def _fps(value: Any) -> float | None:
    if _is_number(value):
        return value
    try:
        number = float(value) if isinstance(value, str) and len(value) < 20 else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None
