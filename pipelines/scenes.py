"""Procedural pictures with captions: what the built-in demo model learns to draw, and how its
drawings are judged.

A scene is one thing (a shape or a simple object) of one colour, at one of five places, in one of
three sizes, on a plain background. ``render`` draws it; ``caption`` words it in one of many ways
(some words left out, so "red" alone and "a circle" alone mean something); ``analyse`` reads a
drawing back into colour, shape and place, so the evaluation and the tests judge pixels with the
same rules the training data was made by.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # the demo model's native side
_SUPER = 4  # drawn this much larger, then reduced: smooth edges, like a real picture

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 165, 60),
    "blue": (30, 80, 225),
    "purple": (140, 50, 185),
    "pink": (250, 125, 190),
    "brown": (125, 75, 35),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (248, 248, 245),
    "grey": (150, 150, 150),
    "black": (18, 18, 22),
    "cream": (240, 225, 190),
    "light blue": (170, 210, 245),
    "dark blue": (20, 30, 80),
}
SHAPES = ("circle", "square", "triangle", "star")
OBJECTS = ("sun", "house", "tree")
PLACES: dict[str, tuple[float, float]] = {  # centre of the thing, as fractions of the side
    "centre": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.16, "big": 0.21}  # radius, fraction of the side

_PLACE_WORDS = {
    "centre": ("in the centre", "in the center", "in the middle", "centred", "centered", "center", "middle"),
    "left": ("on the left", "to the left", "at the left", "on the left side", "left side", "left"),
    "right": ("on the right", "to the right", "at the right", "on the right side", "right side", "right"),
    "top": ("at the top", "on top", "near the top", "in the upper half", "top"),
    "bottom": ("at the bottom", "near the bottom", "in the lower half", "bottom"),
}
_SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("", "medium", ""), "big": ("big", "large", "huge")}
_SHAPE_WORDS = {"circle": ("circle", "disc", "round shape"), "square": ("square", "box"),
                "triangle": ("triangle",), "star": ("star",)}  # fmt: skip
_LEADS = ("a", "a", "a", "one", "a picture of a", "a drawing of a", "an image of a", "simple")


@dataclass(frozen=True)
class Scene:
    thing: str  # a shape or an object
    colour: str
    place: str
    size: str
    background: str
    jitter: tuple[int, int] = (0, 0)  # pixels the thing is moved off its place, so places are areas

    @property
    def is_shape(self) -> bool:
        return self.thing in SHAPES


def random_scene(rng: random.Random) -> Scene:
    thing = rng.choice(OBJECTS) if rng.random() < 0.15 else rng.choice(SHAPES)
    background = rng.choice(list(BACKGROUNDS))
    colour = rng.choice([c for c in COLOURS if background in backgrounds_for(c)])
    if thing == "sun":
        colour = rng.choice(("yellow", "orange"))
    elif thing == "tree":
        colour = "green"
    jitter = (rng.randint(-3, 3), rng.randint(-3, 3))
    return Scene(thing, colour, rng.choice(list(PLACES)), rng.choice(list(SIZES)), background, jitter)


def backgrounds_for(colour: str) -> list[str]:
    """Backgrounds a thing of ``colour`` stands out on."""
    thing = COLOURS[colour]
    return [name for name, rgb in BACKGROUNDS.items() if sum(abs(a - b) for a, b in zip(rgb, thing, strict=True)) > 119]


def caption(scene: Scene, rng: random.Random, drop_all: float = 0.1) -> str:
    """One wording of the scene; parts are left out at random, the whole caption ``drop_all`` of
    the time (so the model also learns the unconditional picture classifier-free guidance needs)."""
    if rng.random() < drop_all:
        return ""
    keep = {part: rng.random() > 0.15 for part in ("colour", "thing", "place", "size", "background")}
    if not (keep["colour"] or keep["thing"]):
        keep["thing"] = True
    colour = scene.colour if keep["colour"] else ""
    size = rng.choice(_SIZE_WORDS[scene.size]) if keep["size"] else ""
    nouns = _SHAPE_WORDS.get(scene.thing, (scene.thing,)) if keep["thing"] else ("thing", "shape")
    noun = rng.choice(nouns)
    words = [rng.choice(_LEADS), size, colour, noun]
    text = " ".join(w for w in words if w)
    if text.startswith("a ") and text[2] in "aeiou":
        text = "an " + text[2:]
    place = rng.choice(_PLACE_WORDS[scene.place]) if keep["place"] else ""
    background = scene.background if keep["background"] else ""
    if place:
        text += (", " if len(place.split()) == 1 else " ") + place
    if background:
        text += rng.choice((f" on a {background} background", f", {background} background", f" over {background}"))
    return text


def prompt_for(thing: str, colour: str = "", place: str = "", size: str = "") -> str:
    """The plain wording the evaluation and the tests use: "a red circle on the left"."""
    words = " ".join(w for w in ("a", size, colour, thing) if w)
    return f"{words} {_PLACE_WORDS[place][0]}" if place else words


def render(scene: Scene) -> Image.Image:
    side = SIZE * _SUPER
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = PLACES[scene.place]
    cx, cy = fx * side + scene.jitter[0] * _SUPER, fy * side + scene.jitter[1] * _SUPER
    radius = SIZES[scene.size] * side
    fill = COLOURS[scene.colour]
    if scene.is_shape:
        draw.polygon(outline(scene.thing, cx, cy, radius), fill=fill)
    else:
        _draw_object(draw, scene.thing, cx, cy, radius, fill)
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def outline(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """The polygon of a shape centred at (cx, cy); every shape has about the same visual weight."""
    if shape == "circle":
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48)]
    if shape == "square":
        r = radius * 0.88
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        r = radius * 1.15
        corners = (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        return [(cx + r * math.cos(a), cy + 0.15 * r + r * math.sin(a)) for a in corners]
    if shape == "star":
        tips = [(radius * 1.2 if i % 2 == 0 else radius * 0.54, -math.pi / 2 + i * math.pi / 5) for i in range(10)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in tips]
    raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")


def _draw_object(draw: ImageDraw.ImageDraw, thing: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if thing == "sun":
        for i in range(8):
            dx, dy = math.cos(i * math.pi / 4) * r, math.sin(i * math.pi / 4) * r
            draw.line(
                [(cx + 0.9 * dx, cy + 0.9 * dy), (cx + 1.3 * dx, cy + 1.3 * dy)], fill=fill, width=int(r * 0.16) + 1
            )
        draw.ellipse([cx - 0.7 * r, cy - 0.7 * r, cx + 0.7 * r, cy + 0.7 * r], fill=fill)
    elif thing == "house":
        draw.rectangle([cx - 0.8 * r, cy - 0.2 * r, cx + 0.8 * r, cy + r], fill=fill)
        roof = COLOURS["red"] if fill != COLOURS["red"] else COLOURS["brown"]
        draw.polygon([(cx - r, cy - 0.2 * r), (cx + r, cy - 0.2 * r), (cx, cy - r)], fill=roof)
        draw.rectangle([cx - 0.18 * r, cy + 0.35 * r, cx + 0.18 * r, cy + r], fill=(60, 40, 25))
    elif thing == "tree":
        draw.rectangle([cx - 0.15 * r, cy + 0.1 * r, cx + 0.15 * r, cy + 1.1 * r], fill=COLOURS["brown"])
        draw.ellipse([cx - 0.75 * r, cy - r, cx + 0.75 * r, cy + 0.4 * r], fill=fill)
    else:
        raise ValueError(f"unknown object {thing!r}; objects are {', '.join(OBJECTS)}")


@dataclass(frozen=True)
class Reading:
    """What a drawing shows, read back from its pixels."""

    colour: str  # nearest named colour of the foreground; "" when nothing stands out
    shape: str  # best-matching shape outline; "" when nothing stands out
    place: str  # nearest of the five places to the foreground's centre
    foreground: float  # share of pixels that differ from the background


def analyse(image: Image.Image) -> Reading:
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    mask = np.abs(pixels - background).sum(axis=2) > 90
    share = float(mask.mean())
    if mask.sum() < 12:
        return Reading("", "", "", share)
    colour_value = np.median(pixels[mask], axis=0)
    colour = min(COLOURS, key=lambda name: float(np.abs(np.array(COLOURS[name]) - colour_value).sum()))
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / SIZE, ys.mean() / SIZE
    place = min(PLACES, key=lambda name: (PLACES[name][0] - cx) ** 2 + (PLACES[name][1] - cy) ** 2)
    return Reading(colour, _best_shape(mask), place, share)


def _best_shape(mask: np.ndarray) -> str:
    """The shape whose outline, fitted to the foreground's box, overlaps it best (IoU)."""
    ys, xs = np.nonzero(mask)
    box_w, box_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    best, best_iou = "", -1.0
    for shape in SHAPES:
        canvas = Image.new("L", (SIZE * _SUPER, SIZE * _SUPER), 0)
        points = np.array(outline(shape, 0, 0, 1.0))
        lo, hi = points.min(axis=0), points.max(axis=0)
        scale = np.array([box_w, box_h]) / (hi - lo)
        origin = np.array([xs.min(), ys.min()])
        fitted = [tuple(((p - lo) * scale + origin) * _SUPER) for p in points]
        ImageDraw.Draw(canvas).polygon(fitted, fill=255)
        drawn = np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX)) > 127
        iou = float((drawn & mask).sum() / max((drawn | mask).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best
