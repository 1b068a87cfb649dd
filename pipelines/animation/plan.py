"""One ``FramePlan`` per frame: everything the engine needs to make that frame, decided up front.

Planning is pure and cheap (no torch), so a clip can be previewed, plotted and resumed: the plan of a
frame depends only on the settings and the resolved seed, never on the frames made before it.

Cadence N: frames 0, N, 2N, ... and the last frame are diffused; the frames between are in-betweens,
made by warping the diffused frames on either side and blending them (``cadence_weight``).
Seeds follow Deforum's behaviours, counted over diffused frames (an in-between carries the seed of the
diffused frame it leads to). With seed travel, a frame between prompt keyframes A and B draws its noise
as a slerp of the noises of A's and B's seeds, with the prompt blend's weight. The seed schedule
differs from Deforum's in one way: a constant seed holds until the next keyframe rather than being
interpolated towards it (the numbers between two seeds are unrelated seeds, not a blend).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..requests import MAX_SEED
from .schedules import parse_schedule
from .settings import HELD_SCHEDULES, AnimationSettings, parse_prompts

_SEED_SPACE = MAX_SEED + 1


@dataclass(frozen=True)
class FramePlan:
    index: int
    diffused: bool  # False: a cadence in-between, warped and blended, never diffused
    # prompt travel: the frame's text embedding is lerp(prompt, next_prompt, prompt_weight)
    prompt: str
    negative_prompt: str
    next_prompt: str
    next_negative_prompt: str
    prompt_weight: float
    prompt_keyframes: tuple[int, int]  # the keyframes the two prompts come from (equal past the last)
    # seed travel: the initial noise is slerp(noise(seed), noise(next_seed), seed_weight)
    seed: int
    next_seed: int
    seed_weight: float
    strength: float  # Deforum's: the share of the previous frame kept (see denoising_strength)
    noise: float  # standard deviation of the pixel noise added before diffusion, pixels in [-1, 1]
    cfg_scale: float
    zoom: float  # camera motion from the previous frame to this one (see motion.py)
    angle: float
    translation_x: float
    translation_y: float
    previous_diffused: int  # the diffused frames at or before and at or after this one
    next_diffused: int
    cadence_weight: float  # where an in-between lies between them: 0 at previous_diffused, 1 at next

    @property
    def denoising_strength(self) -> float:
        """img2img's denoising strength for this frame: what Deforum's ``strength`` does not keep."""
        return 1.0 - self.strength

    def fields(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def diffused_frames(max_frames: int, cadence: int) -> list[int]:
    """Frames that are diffused: every ``cadence``-th from 0, and always the last one (so the clip ends
    on a diffused frame and has exactly ``max_frames`` frames)."""
    frames = list(range(0, max_frames, cadence))
    if frames[-1] != max_frames - 1:
        frames.append(max_frames - 1)
    return frames


def resolve_seed(settings: AnimationSettings) -> AnimationSettings:
    """The settings with a concrete seed: -1 becomes a random one (record it to repeat the clip)."""
    if settings.seed != -1:
        return settings
    return settings.replace(seed=random.SystemRandom().randrange(_SEED_SPACE))


def plan_frames(settings: AnimationSettings) -> list[FramePlan]:
    """Every frame's plan. Checks the settings first (``BadRequest`` when wrong); a seed of -1 is
    resolved here, and ``plans[0].seed`` is then the seed to record."""
    settings, _ = settings.checked()
    settings = resolve_seed(settings)
    count = settings.max_frames
    values = {
        name: parse_schedule(text, name).values(count, hold=name in HELD_SCHEDULES)
        for name, text in settings.schedules().items()
    }
    diffused = diffused_frames(count, settings.diffusion_cadence)
    seeds = _SeedTable(settings, diffused, values.get("seed_schedule"))
    keyframes = parse_prompts(settings.prompts)
    keys = sorted(keyframes)
    plans = []
    for index in range(count):
        first, second, weight = _between(keys, index)
        prompt, negative = keyframes[first]
        next_prompt, next_negative = keyframes[second]
        prompt_weight = weight if settings.prompt_travel else 0.0
        if settings.seed_travel:
            seed, next_seed, seed_weight = seeds(first), seeds(second), weight
        else:
            seed = next_seed = seeds(index)
            seed_weight = 0.0
        position = bisect.bisect_left(diffused, index)
        following = diffused[position]
        previous = following if following == index else diffused[position - 1]
        plans.append(
            FramePlan(
                index=index,
                diffused=following == index,
                prompt=prompt,
                negative_prompt=_joined(negative, settings.negative_prompt),
                next_prompt=next_prompt,
                next_negative_prompt=_joined(next_negative, settings.negative_prompt),
                prompt_weight=prompt_weight,
                prompt_keyframes=(first, second),
                seed=seed,
                next_seed=next_seed,
                seed_weight=seed_weight if seed != next_seed else 0.0,
                strength=values["strength_schedule"][index],
                noise=values["noise_schedule"][index],
                cfg_scale=values["cfg_scale_schedule"][index],
                zoom=values["zoom"][index],
                angle=values["angle"][index],
                translation_x=values["translation_x"][index],
                translation_y=values["translation_y"][index],
                previous_diffused=previous,
                next_diffused=following,
                cadence_weight=(index - previous) / (following - previous) if following != previous else 0.0,
            )
        )
    return plans


def _between(keys: Sequence[int], frame: int) -> tuple[int, int, float]:
    """The keyframes around ``frame`` and how far it is from the first to the second (0 to 1)."""
    position = bisect.bisect_right(keys, frame) - 1
    if position < 0:  # before the first keyframe: it holds
        return keys[0], keys[0], 0.0
    if position == len(keys) - 1:
        return keys[-1], keys[-1], 0.0
    first, second = keys[position], keys[position + 1]
    return first, second, (frame - first) / (second - first)


class _SeedTable:
    """The seed of any frame under a behaviour, counted over diffused frames as Deforum does."""

    def __init__(self, settings: AnimationSettings, diffused: list[int], schedule: list[float] | None) -> None:
        self.base = settings.seed
        self.behaviour = settings.seed_behaviour
        self.every = settings.seed_iter_n
        self.diffused = diffused
        self.cadence = settings.diffusion_cadence
        self.schedule = schedule

    def __call__(self, frame: int) -> int:
        if self.behaviour == "schedule" and self.schedule is not None:
            scheduled = round(self.schedule[min(frame, len(self.schedule) - 1)])
            return scheduled if scheduled >= 0 else self._random(frame)
        if frame <= self.diffused[-1]:
            count = bisect.bisect_left(self.diffused, frame)
        else:  # past the clip (a prompt keyframe after the end): the count goes on as if the clip did
            count = len(self.diffused) - 1 + -(-(frame - self.diffused[-1]) // self.cadence)
        if self.behaviour == "random":
            # the first frame keeps the seed, as in Deforum, so it matches a txt2img with that seed
            return self.base if count == 0 else self._random(count)
        offsets = {
            "iter": -(-count // self.every),
            "fixed": 0,
            "ladder": count // 2 + (count % 2) * 2,  # +2, -1, +2, -1 ...
            "alternate": count % 2,  # +1, -1, +1 ...
        }
        return (self.base + offsets[self.behaviour]) % _SEED_SPACE

    def _random(self, position: int) -> int:
        """A seed drawn from the base seed and a position: the same clip again gives the same seeds."""
        return random.Random(f"atelier animation seed {self.base} {position}").randrange(_SEED_SPACE)


def _joined(*parts: str) -> str:
    return ", ".join(p for p in (part.strip() for part in parts) if p)
