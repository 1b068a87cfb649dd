"""X/Y/Z plot: A1111's value syntax, the labelled grid, plots on the demo model through the engine's
queue (cells, infotexts, saved files, Stop), checks before anything runs, A1111's REST script_args and
the ``/xyz_plot`` endpoint."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pipelines.engine import Engine, Job
from pipelines.errors import BadRequest
from pipelines.outputs import read_metadata
from pipelines.requests import Img2Img, Txt2Img
from pipelines.xyz.axes import Axis, kind_of, parse_values, with_lora_weight
from pipelines.xyz.grid import draw_grid
from pipelines.xyz.job import PlotResult, PlotSettings, from_a1111_script, plot
from webui.xyz_ui import register_xyz_api

TINY = {"width": 64, "height": 64, "steps": 1}


def _files(engine: Engine) -> set[Path]:
    return {path for path in engine.outputs.root.rglob("*") if path.is_file()}


def _dark(region: Image.Image) -> int:
    """Pixels of ``region`` dark enough to be text on the white legend."""
    return int((np.asarray(region.convert("L")) < 128).sum())


@pytest.mark.parametrize(
    ("label", "text", "expected"),
    [
        ("Steps", "1-5", [1, 2, 3, 4, 5]),
        ("Steps", "1-10 (+2)", [1, 3, 5, 7, 9]),
        ("Steps", "10-1 (-3)", [10, 7, 4, 1]),
        ("Steps", "1-10 [4]", [1, 4, 7, 10]),
        ("Steps", "5-3", [5, 4, 3]),
        ("Steps", "2, 4-5, 8", [2, 4, 5, 8]),
        ("CFG Scale", "1.0-2.0 [3]", [1.0, 1.5, 2.0]),
        ("CFG Scale", "1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
        ("CFG Scale", "7, 7.5", [7.0, 7.5]),
        ("Seed", "-1, 5, -1", [-1, 5, -1]),  # -1 is a random seed, never a range
        ("Prompt S/R", 'red, "blue, light", green', ["red", "blue, light", "green"]),
        ("Sampler", "Euler a, DPM++ 2M Karras", ["Euler a", "DPM++ 2M Karras"]),
        ("Size", "64x96, 128", [(64, 96), (128, 128)]),
        ("Nothing", "whatever", [None]),
    ],
)
def test_axis_values_follow_a1111_syntax(label: str, text: str, expected: list[Any]) -> None:
    assert parse_values("X", kind_of(label), text) == expected


@pytest.mark.parametrize(
    ("label", "text", "named"),
    [
        ("Steps", "2, ten", "'ten' is not a whole number"),
        ("Steps", "1-10 (-2)", "'1-10 (-2)' steps away from its end"),
        ("Steps", "1-10 (0)", "step of 0"),
        ("Steps", "1-5000", "more than 100 values"),
        ("CFG Scale", "7, inf", "'inf' is not a number"),
        ("Size", "big", "'big' is not a size"),
        ("Seed", "", "has no values"),
    ],
)
def test_bad_axis_values_are_named(label: str, text: str, named: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_values("Y", kind_of(label), text)
    assert f"Y axis ({label})" in str(caught.value) and named in str(caught.value)


def test_lora_weight_rewrites_the_first_tag_only() -> None:
    assert with_lora_weight("a fox <lora:ink:1> <lora:paper:0.5>", 0.25) == "a fox <lora:ink:0.25> <lora:paper:0.5>"
    assert with_lora_weight("<lora:ink>, a fox", 0.7) == "<lora:ink:0.7>, a fox"
    assert with_lora_weight("<LyCo:styles/ink wash:te=1:unet=1> x", 0.5) == "<LyCo:styles/ink wash:0.5> x"
    cell = kind_of("LoRA weight").apply(Txt2Img(prompt="x <lora:ink:0.3:0.2>"), 1.0, [0.0, 1.0])
    assert cell.prompt == "x <lora:ink:1>"


def test_grid_places_cells_of_any_size_with_labels_and_z_sub_grids() -> None:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    sizes = [(64, 64), (96, 64), (64, 80), (64, 64)]
    cells: list[Image.Image | None] = [Image.new("RGB", s, c) for s, c in zip(sizes, colours, strict=True)]
    cells[3] = None  # not made: stays blank
    long_label = "Prompt S/R: a very long replacement text that must wrap onto several lines"
    drawn = draw_grid(cells, ["A: 1", long_label], ["B"], ["first", "second"])
    image, boxes = drawn.image, drawn.boxes
    for cell, box in zip(cells, boxes, strict=True):
        if cell is None:
            assert box is None
            continue
        assert box is not None and (box[2] - box[0], box[3] - box[1]) == cell.size
        assert np.array_equal(np.asarray(image.crop(box)), np.asarray(cell))
    # the second sub-grid starts right of the first, both under their titles
    assert boxes[2] is not None and boxes[0] is not None and boxes[2][0] > boxes[0][2]
    assert _dark(image.crop((0, 0, image.width, boxes[0][1]))) > 50, "no titles or X labels above the cells"
    assert _dark(image.crop((0, boxes[0][1], boxes[0][0], boxes[0][3]))) > 10, "no Y label left of the cells"
    blank = image.crop((boxes[2][0] + 96, boxes[2][1], boxes[2][0] + 96 + 64, boxes[2][3]))  # where cell 3 would be
    assert np.asarray(blank).min() == 255
    bare = draw_grid(cells, ["A: 1", long_label], ["B"], ["first", "second"], draw_legend=False)
    assert bare.image.height == 80 and bare.boxes[0] == (0, 8, 64, 72)  # centred in its 80 px row


@pytest.fixture(scope="module")
def seed_by_steps(engine: Engine) -> tuple[PlotResult, set[Path]]:
    """A saved 2x2 plot (Seed x Steps) and the files it wrote."""
    before = _files(engine)
    settings = PlotSettings(Txt2Img(prompt="a red circle", **TINY), Axis("Seed", "11, 12"), Axis("Steps", "1, 2"))
    result = plot(engine, settings)
    return result, _files(engine) - before


def test_seed_by_steps_plot_gives_a_labelled_grid_and_cells_with_their_own_infotexts(
    engine: Engine, seed_by_steps: tuple[PlotResult, set[Path]]
) -> None:
    result, written = seed_by_steps
    assert not result.stopped and result.total == 4 and len(result.cells) == 4
    wanted = [(11, 1), (12, 1), (11, 2), (12, 2)]  # X fastest
    for cell, (seed, steps) in zip(result.cells, wanted, strict=True):
        assert (cell.seed, cell.request.steps) == (seed, steps)
        assert f"Seed: {seed}," in cell.infotext and f"Steps: {steps}," in cell.infotext
        assert cell.path is not None and read_metadata(cell.path)["parameters"] == cell.infotext
    single = engine.generate(Txt2Img(prompt="a red circle", seed=12, **TINY | {"steps": 2})).images[0]
    assert np.array_equal(np.asarray(result.cells[3].image), np.asarray(single)), "a cell differs from its own run"
    grid = result.grid
    assert grid is not None and grid.width > 128 and grid.height > 128
    for cell, box in zip(result.cells, result.boxes, strict=True):
        assert box is not None and np.array_equal(np.asarray(grid.crop(box)), np.asarray(cell.image))
    first = result.boxes[0]
    assert first is not None
    assert _dark(grid.crop((first[0], 0, grid.width, first[1]))) > 20, "the X labels (seeds) are missing"
    assert _dark(grid.crop((0, first[1], first[0], grid.height))) > 20, "the Y labels (steps) are missing"
    assert result.grid_path is not None
    grid_text = read_metadata(result.grid_path)["parameters"]
    assert grid_text == result.grid_infotext and "Seed: 11," in grid_text
    assert 'X Type: Seed, X Values: "11, 12"' in grid_text and 'Y Type: Steps, Y Values: "1, 2"' in grid_text
    assert written == {result.grid_path, *(cell.path for cell in result.cells)}


def test_prompt_search_and_replace_changes_each_cells_prompt(engine: Engine) -> None:
    base = Txt2Img(prompt="a red circle", negative_prompt="red noise", seed=5, **TINY)
    settings = PlotSettings(base, Axis("Prompt S/R", "red, blue"), save=False)
    result = plot(engine, settings)
    prompts = [(cell.request.prompt, cell.request.negative_prompt) for cell in result.cells]
    colours = ("red", "blue")
    assert prompts == [(f"a {colour} circle", f"{colour} noise") for colour in colours]
    assert [cell.infotext.splitlines()[0] for cell in result.cells] == [f"a {colour} circle" for colour in colours]
    pictures = [np.asarray(cell.image, dtype=np.int16) for cell in result.cells]
    assert np.abs(pictures[0] - pictures[1]).mean() > 1, "the replaced prompt made the same picture"
    assert result.grid_path is None and all(cell.path is None for cell in result.cells)


def test_random_seeds_are_drawn_once_per_plot_unless_kept_random(engine: Engine) -> None:
    base = Txt2Img(prompt="a star", seed=-1, **TINY | {"steps": 1})
    fixed = plot(engine, PlotSettings(base, Axis("CFG Scale", "5, 9"), save=False))
    assert fixed.cells[0].seed == fixed.cells[1].seed == fixed.settings.base.seed != -1
    free = plot(engine, PlotSettings(base, Axis("CFG Scale", "5, 9"), keep_random_seeds=True, save=False))
    assert free.cells[0].seed != free.cells[1].seed
    columns = plot(engine, PlotSettings(base, Axis("Seed", "-1, -1"), Axis("CFG Scale", "5, 9"), save=False))
    seeds = [cell.seed for cell in columns.cells]
    assert seeds[0] == seeds[2] and seeds[1] == seeds[3] and seeds[0] != seeds[1]  # one seed per column
    assert f'Fixed X Values: "{seeds[0]}, {seeds[1]}"' in columns.grid_infotext


@pytest.mark.parametrize(
    ("axes", "named"),
    [
        ((Axis("Seed", "1, 2"), Axis("Steps", "2, 500")), "Y axis (Steps) value 'Steps: 500': steps must be between"),
        ((Axis("Sampler", "Euler, Bogus 3"),), "X axis (Sampler): unknown sampler 'Bogus 3'"),
        ((Axis("Seed", "1"), Axis("Nothing"), Axis("Prompt S/R", "cat, dog")), "Z axis (Prompt S/R): 'cat'"),
        ((Axis("Checkpoint name", "builtin:demo, nosuch.safetensors"),), "unknown model 'nosuch.safetensors'"),
        ((Axis("Denoising", "0.5"),), "denoising strength changes nothing in text to image without hires"),
        ((Axis("LoRA weight", "0.5"),), "no <lora:NAME:weight> tag"),
        ((Axis("Colour", "1"),), "X axis: unknown axis type 'Colour'"),
        ((Axis("Steps", "2"), Axis("Steps", "3")), "Steps is on more than one axis"),
    ],
)
def test_a_bad_value_is_refused_before_anything_runs(engine: Engine, axes: tuple[Axis, ...], named: str) -> None:
    before = _files(engine)
    job = Job()
    with pytest.raises(BadRequest) as caught:
        plot(engine, PlotSettings(Txt2Img(prompt="a red circle", **TINY), *axes), job)
    assert named in str(caught.value)
    assert job.state == "queued" and _files(engine) == before, "something ran or was written"


def test_stop_after_the_first_cell_keeps_it_and_still_writes_a_grid(engine: Engine) -> None:
    job = Job()
    settings = PlotSettings(Txt2Img(prompt="a blue square", **TINY), Axis("Seed", "1, 2"), Axis("Steps", "1, 2"))
    result = plot(engine, settings, job, on_cell=lambda done, total, cell: job.interrupt())
    assert result.stopped and job.state == "interrupted"
    assert [cell.index for cell in result.cells] == [0] and result.total == 4
    assert result.grid is not None and result.grid_path is not None and result.grid_path.exists()
    boxes = result.boxes
    assert boxes[0] is not None and boxes[1:] == [None, None, None]
    assert np.array_equal(np.asarray(result.grid.crop(boxes[0])), np.asarray(result.cells[0].image))
    empty = result.grid.crop((boxes[0][2], boxes[0][1], boxes[0][2] + 64, boxes[0][3] + 64))
    assert np.asarray(empty).min() == 255, "the cells not made are not blank"
    assert any("stopped after 1 of 4 cells" in note for note in result.notes)


def test_a1111_script_args_map_axis_indexes_and_refuse_what_is_not_plotted() -> None:
    base = Txt2Img(prompt="a red circle")
    args = [1, "1, 2", [], 4, "", [], 0, "", [], True, False, False, True]
    settings = from_a1111_script("X/Y/Z plot", args, base)
    assert settings is not None
    assert (settings.x, settings.y.type, settings.z.type) == (Axis("Seed", "1, 2"), "Steps", "Nothing")
    assert settings.keep_random_seeds and not settings.include_cells and settings.draw_legend
    sampler = from_a1111_script("x/y/z plot", [9, "", ["Euler a", "DDIM"], 7, "red, blue", [], 0, "", []], base)
    assert sampler is not None and sampler.x == Axis("Sampler", "Euler a, DDIM")  # choices come in the dropdown list
    assert sampler.y == Axis("Prompt S/R", "red, blue")
    image = Img2Img(prompt="x", init_image=Image.new("RGB", (64, 64)))
    denoise = from_a1111_script("x/y/z plot", [22, "0.3, 0.6", [], 5, "7", [], 0, "", []], image)
    assert denoise is not None and (denoise.x.type, denoise.y.type) == ("Denoising", "CFG Scale")  # img2img's list
    assert from_a1111_script("", [], base) is None and from_a1111_script("prompts from file", [], base) is None
    with pytest.raises(BadRequest, match="X axis: Atelier cannot plot 'Eta'"):
        from_a1111_script("x/y/z plot", [21, "0.5", [], 0, "", [], 0, "", []], base)
    with pytest.raises(BadRequest, match="script_args of the X/Y/Z plot must be a list"):
        from_a1111_script("x/y/z plot", {"x": 1}, base)


def test_the_plot_as_an_api_result_puts_the_grid_first(seed_by_steps: tuple[PlotResult, set[Path]]) -> None:
    result, _ = seed_by_steps
    alone = result.as_result(include_cells=False)
    assert alone.images == [result.grid] and alone.infotexts == [result.grid_infotext] and alone.seeds == [11]
    full = result.as_result(include_cells=True)
    assert full.images[1:] == [cell.image for cell in result.cells] and full.seeds == [11, 11, 12, 11, 12]
    assert full.infotexts[4] == result.cells[3].infotext and full.model == "builtin:demo"
    assert full.paths[0] == result.grid_path


def test_xyz_plot_endpoint_returns_the_grid_and_cells_as_pngs_with_infotexts(engine: Engine) -> None:
    with gr.Blocks():
        xyz_plot = register_xyz_api(engine)
    answer = xyz_plot(prompt="a green star", x_type="Steps", x_values="1, 2", y_type="CFG Scale", y_values="8",
                      width=64, height=64, seed=9, save=False)  # fmt: skip
    grid = Image.open(io.BytesIO(base64.b64decode(answer["grid"])))
    assert grid.width > 128 and "X Type: Steps" in grid.text["parameters"]
    assert len(answer["images"]) == len(answer["infotexts"]) == 2 and answer["seeds"] == [9, 9]
    last = Image.open(io.BytesIO(base64.b64decode(answer["images"][1])))
    assert last.size == (64, 64) and last.text["parameters"] == answer["infotexts"][1]
    assert "Steps: 2," in answer["infotexts"][1] and "CFG scale: 8," in answer["infotexts"][1]
    with pytest.raises(gr.Error, match="unknown sampler 'Nope'"):
        xyz_plot(prompt="x", x_type="Sampler", x_values="Nope", width=64, height=64)
