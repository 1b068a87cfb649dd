"""Does the built-in demo model draw what it is asked? Judged by its pixels, and printed.

    python bench/demo_model_eval.py                       # the shipped model, ~5 minutes on 2 cores
    python bench/demo_model_eval.py --model path/to/folder --seeds 2
    python bench/demo_model_eval.py --grid bench/results/demo-model-grid.png

Every colour x shape x place is drawn at the model's native size with the page's default settings
over several seeds and read back by ``pipelines.scenes.analyse`` (the same rules that drew the
training pictures). Printed: colour, shape and place accuracy (with the worst cases), what a
negative prompt does (how often "a circle" comes out in a colour, without and with that colour
as the negative prompt), inpaint locality (recolour the thing inside a mask, keep the rest), and
the time one native-size picture takes. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import catalog, scenes
from pipelines.engine import Engine
from pipelines.requests import Inpaint, Txt2Img
from pipelines.settings import EngineSettings

TARGETS = {"colour": 0.95, "shape": 0.90, "place": 0.85}


def engine_for(model: str) -> tuple[Engine, str]:
    """An engine on ``model``: ``builtin:demo`` or a diffusers folder anywhere on disk."""
    outputs = Path(tempfile.mkdtemp(prefix="demo-eval-"))
    if model == catalog.BUILTIN_DEMO:
        return Engine(EngineSettings(outputs_dir=outputs, models_dir=outputs)), model
    folder = Path(model).resolve()
    settings = EngineSettings(outputs_dir=outputs, models_dir=folder.parent)
    return Engine(settings), folder.name


def drawings(engine: Engine, model: str, seeds: int) -> list[dict[str, Any]]:
    """Every colour x shape x place, ``seeds`` pictures each (one batch per prompt)."""
    found = []
    for colour, shape, place in itertools.product(scenes.COLOURS, scenes.SHAPES, scenes.PLACES):
        prompt = scenes.prompt_for(shape, colour, place)
        result = engine.generate(Txt2Img(prompt, model=model, seed=1000, batch_size=seeds))
        for image in result.images:
            reading = scenes.analyse(image)
            found.append({"prompt": prompt, "colour": colour, "shape": shape, "place": place, "read": reading})
    return found


def accuracy(found: list[dict[str, Any]]) -> dict[str, float]:
    return {key: sum(getattr(f["read"], key) == f[key] for f in found) / len(found) for key in TARGETS}


def misses(found: list[dict[str, Any]], key: str, top: int = 4) -> str:
    wrong = Counter(
        f"{f[key]}->{getattr(f['read'], key) or 'nothing'}" for f in found if getattr(f["read"], key) != f[key]
    )
    return ", ".join(f"{pair} x{count}" for pair, count in wrong.most_common(top)) or "none"


def negative_effect(engine: Engine, model: str, seeds: int) -> dict[str, Any]:
    """How often "a circle" comes out in each colour, without and with that colour as the negative
    prompt (the prompt names no colour, so the model picks one; the negative should rule one out)."""

    def colours(negative: str) -> list[str]:
        request = Txt2Img("a circle", negative, model=model, seed=2000, batch_size=4, batch_count=max(1, seeds // 4))
        return [scenes.analyse(image).colour for image in engine.generate(request).images]

    plain = colours("")
    unnamed = {colour: plain.count(colour) / len(plain) for colour in scenes.COLOURS}
    named = {colour: colours(colour).count(colour) / len(plain) for colour in scenes.COLOURS}
    return {
        "plain": statistics.mean(unnamed.values()),
        "negative": statistics.mean(named.values()),
        "plain_by_colour": unnamed,
        "negative_by_colour": named,
    }


def inpaint_locality(engine: Engine, model: str, seeds: int) -> dict[str, float]:
    """Draw a thing, mask its box, ask for another colour: right colour inside, rest unchanged?"""
    right, outside_change = 0, []
    for seed, (old, new) in itertools.product(range(seeds), (("red", "blue"), ("yellow", "purple"), ("green", "pink"))):
        scene = scenes.Scene("circle", old, "centre", "big", "white")
        picture = scenes.render(scene)
        mask = Image.new("L", picture.size, 0)
        side = scenes.SIZE
        ImageDraw.Draw(mask).rectangle([side * 0.22, side * 0.22, side * 0.78, side * 0.78], fill=255)
        request = Inpaint(scenes.prompt_for("circle", new, "centre"), model=model, seed=3000 + seed,
                          init_image=picture, mask=mask, denoising_strength=1.0, mask_blur=0)  # fmt: skip
        image = engine.generate(request).images[0]
        right += scenes.analyse(image).colour == new
        keep = np.asarray(mask) == 0
        before, after = (np.asarray(i.convert("RGB"), dtype=np.float32)[keep] for i in (picture, image))
        outside_change.append(float(np.abs(after - before).mean()))
    runs = seeds * 3
    return {"recoloured": right / runs, "outside_mean_abs_change": statistics.mean(outside_change)}


def native_seconds(engine: Engine, model: str, runs: int = 5) -> float:
    engine.generate(Txt2Img("a blue square", model=model, seed=1))  # warm
    times = []
    for seed in range(runs):
        started = time.perf_counter()
        engine.generate(Txt2Img("a red star on the left", model=model, seed=seed))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def grid(engine: Engine, model: str, path: Path) -> None:
    """A picture sheet for the README: prompts as captions, pictures enlarged 2x."""
    prompts = [
        "a red circle", "a blue square on the left", "a small green triangle at the top", "a yellow star on the right",
        "a big purple circle at the bottom", "a pink star", "an orange triangle on the left", "a brown square",
        "a sun", "a house on the right", "a tree on the left", "a blue circle on a black background",
    ]  # fmt: skip
    cell, label = 128, 30
    sheet = Image.new("RGB", (cell * 6, (cell + label) * 2), "white")
    draw = ImageDraw.Draw(sheet)
    for index, prompt in enumerate(prompts):
        image = engine.generate(Txt2Img(prompt, model=model, seed=7 + index)).images[0]
        x, y = index % 6 * cell, index // 6 * (cell + label)
        sheet.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        words = prompt.split()
        lines = [" ".join(words[: len(words) // 2 + 1]), " ".join(words[len(words) // 2 + 1 :])]
        for line_no, line in enumerate(lines):
            draw.text((x + 4, y + cell + 2 + 13 * line_no), line, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=catalog.BUILTIN_DEMO, help="builtin:demo or a diffusers folder")
    parser.add_argument("--seeds", type=int, default=3, help="pictures per prompt")
    parser.add_argument("--grid", type=Path, help="also write a picture sheet here")
    args = parser.parse_args()
    engine, model = engine_for(args.model)
    started = time.perf_counter()
    found = drawings(engine, model, args.seeds)
    figures: dict[str, Any] = {"pictures": len(found), **accuracy(found)}
    for key, target in TARGETS.items():
        verdict = "ok" if figures[key] >= target else "BELOW TARGET"
        print(f"{key:>7} accuracy {figures[key]:6.1%} (target {target:.0%}, {verdict}); misses: {misses(found, key)}")
    figures["negative_prompt"] = negative_effect(engine, model, max(8, args.seeds * 4))
    negative = figures["negative_prompt"]
    worst = max(negative["negative_by_colour"], key=negative["negative_by_colour"].get)
    print(
        f"'a circle' drawn in a given colour: {negative['plain']:.1%} of pictures; with that colour as the "
        f"negative prompt: {negative['negative']:.1%} (most: {worst}, {negative['plain_by_colour'][worst]:.1%} -> "
        f"{negative['negative_by_colour'][worst]:.1%})"
    )
    figures["inpaint"] = inpaint_locality(engine, model, args.seeds)
    print(f"inpaint: recoloured {figures['inpaint']['recoloured']:.1%}, mean change outside the mask "
          f"{figures['inpaint']['outside_mean_abs_change']:.2f} / 255")  # fmt: skip
    figures["native_seconds"] = native_seconds(engine, model)
    print(f"one {engine.native_size(model)} px picture, default settings: {figures['native_seconds']:.2f} s")
    if args.grid:
        grid(engine, model, args.grid)
        print(f"picture sheet written to {args.grid}")
    figures["eval_seconds"] = time.perf_counter() - started
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
