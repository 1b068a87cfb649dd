"""Clips: frame count, size, fps and format of MP4 (H.264), GIF and WebP read back with imageio-ffmpeg and
Pillow; never an overwritten file, never a half-written one, whatever fails on the way."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.animation import clips
from pipelines.animation.clips import clip_info, ffmpeg_path, write_clip
from pipelines.animation.colour import ColourReference, match_colours
from pipelines.animation.motion import add_noise, combined, tween, warp
from pipelines.animation.plan import plan_frames
from pipelines.animation.settings import AnimationSettings
from pipelines.engine import Engine
from pipelines.requests import Img2Img, Txt2Img
from tests.conftest import pixels


def moving_dot(count: int, size: tuple[int, int] = (64, 48)) -> Iterator[Image.Image]:
    """Frames that all differ: a red dot moving right on grey."""
    for index in range(count):
        frame = Image.new("RGB", size, (60, 60, 60))
        ImageDraw.Draw(frame).ellipse([2 + index * 3, 10, 14 + index * 3, 22], fill=(230, 20, 20))
        yield frame


def mp4_facts(path: Path) -> tuple[dict[str, object], list[np.ndarray]]:
    """The stream's header as imageio-ffmpeg reads it, and every frame decoded by ffmpeg itself."""
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    finally:
        reader.close()
    width, height = meta["size"]
    decoded = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    frames = list(np.frombuffer(decoded, np.uint8).reshape(-1, height, width, 3))
    return meta, frames


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# imageio-ffmpeg's reader leaves its stdin pipe to the garbage collector when ffmpeg has already finished
IMAGEIO_PIPE = pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")


@IMAGEIO_PIPE
def test_mp4_is_h264_with_every_frame_at_its_fps(tmp_path: Path) -> None:
    path = write_clip(moving_dot(12), tmp_path / "clip.mp4", 15)
    assert path == tmp_path / "clip.mp4"
    meta, frames = mp4_facts(path)
    assert meta["codec"] == "h264" and "yuv420p" in str(meta["pix_fmt"])
    assert (meta["fps"], meta["size"], len(frames)) == (15.0, (64, 48), 12)
    # the dot moved: the frames are the ones given, in order (H.264 is lossy: compare positions)
    reds = [np.argwhere(frame[..., 0].astype(int) - frame[..., 1] > 100)[:, 1].mean() for frame in frames]
    assert reds == sorted(reds) and reds[-1] - reds[0] == pytest.approx(33, abs=1.5)
    info = clip_info(path)
    assert (info.codec, info.frames, info.fps, info.width, info.height) == ("h264", 12, 15.0, 64, 48)
    assert info.seconds == pytest.approx(0.8)


@IMAGEIO_PIPE
def test_mp4_of_odd_size_gets_even_sides_by_repeating_the_edge(tmp_path: Path) -> None:
    path = write_clip(moving_dot(3, size=(65, 47)), tmp_path / "odd.mp4", 24)
    meta, frames = mp4_facts(path)
    assert meta["size"] == (66, 48) and meta["fps"] == 24.0 and len(frames) == 3
    assert np.abs(frames[0][:, 65].astype(int) - frames[0][:, 64]).mean() < 6  # a copy, not a black bar


def test_gif_frames_size_and_timing(tmp_path: Path) -> None:
    path = write_clip(moving_dot(10), tmp_path / "clip.gif", 10)
    with Image.open(path) as gif:
        assert (gif.format, gif.size, gif.n_frames, gif.info["loop"]) == ("GIF", (64, 48), 10, 0)
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        gif.seek(3)
        shown = pixels(gif.convert("RGB"))
    assert durations == [100] * 10
    assert clip_info(path).fps == pytest.approx(10.0)
    assert np.abs(shown - pixels(list(moving_dot(4))[3])).mean() < 4  # a 256-colour palette per frame


def test_gif_rounds_fps_to_hundredths(tmp_path: Path) -> None:
    info = clip_info(write_clip(moving_dot(6), tmp_path / "clip.gif", 15))
    assert info.frames == 6 and info.fps == pytest.approx(100 / 7)


def test_webp_frames_size_and_timing(tmp_path: Path) -> None:
    path = write_clip(moving_dot(8), tmp_path / "clip.webp", 20)
    with Image.open(path) as webp:
        assert (webp.format, webp.size, webp.n_frames, webp.is_animated) == ("WEBP", (64, 48), 8, True)
        webp.seek(3)
        webp.load()
        assert webp.info["duration"] == 50
        red = pixels(webp.convert("RGB"))
    assert red[16, 17, 0] > 180 and red[16, 17, 1] < 80  # frame 3's dot is where it was drawn
    assert clip_info(path).fps == pytest.approx(20.0, rel=0.01)


def test_identical_frames_keep_their_time(tmp_path: Path) -> None:
    still = [Image.new("RGB", (32, 32), (10, 120, 10))] * 3 + list(moving_dot(2, size=(32, 32)))
    for kind in ("gif", "webp"):
        info = clip_info(write_clip(still, tmp_path / f"still.{kind}", 10))
        assert info.seconds == pytest.approx(0.5)
    assert clip_info(write_clip(still, tmp_path / "still.mp4", 10)).frames == 5


@pytest.mark.parametrize("kind", ["mp4", "gif", "webp"])
def test_an_existing_file_is_never_overwritten(tmp_path: Path, kind: str) -> None:
    taken = tmp_path / f"clip.{kind}"
    taken.write_bytes(b"the user's own file")
    path = write_clip(moving_dot(3), taken, 12)
    assert path == tmp_path / f"clip-1.{kind}"
    assert taken.read_bytes() == b"the user's own file"
    assert clip_info(path).frames == 3
    assert leftovers(tmp_path) == sorted([taken.name, path.name])


@pytest.mark.parametrize("kind", ["mp4", "gif", "webp"])
def test_a_failure_mid_clip_leaves_no_file(tmp_path: Path, kind: str) -> None:
    def failing() -> Iterator[Image.Image]:
        yield from moving_dot(4)
        raise RuntimeError("stopped by the job")

    with pytest.raises(RuntimeError, match="stopped by the job"):
        write_clip(failing(), tmp_path / f"clip.{kind}", 12)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["mp4", "gif", "webp"])
def test_frames_streamed_until_a_stop_make_a_whole_clip(tmp_path: Path, kind: str) -> None:
    def until_stopped(stop_after: int) -> Iterator[Image.Image]:
        for index, frame in enumerate(moving_dot(20)):
            if index == stop_after:
                return  # the job's Stop: the frames so far still make the clip
            yield frame

    path = write_clip(until_stopped(7), tmp_path / f"stopped.{kind}", 15)
    assert clip_info(path).frames == 7
    assert leftovers(tmp_path) == [path.name]


def test_a_failing_encoder_leaves_no_file_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clips, "MP4_CRF", "not-a-number")
    with pytest.raises(RuntimeError, match="ffmpeg could not write the MP4"):
        write_clip(moving_dot(3), tmp_path / "clip.mp4", 12)
    assert leftovers(tmp_path) == []


def test_a_missing_encoder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clips, "ffmpeg_path", lambda: str(tmp_path / "no-ffmpeg"))
    with pytest.raises(RuntimeError, match="could not start ffmpeg"):
        write_clip(moving_dot(3), tmp_path / "clip.mp4", 12)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("frames", "name", "fps", "wanted"),
    [
        ([], "clip.mp4", 12, "at least one frame"),
        (["not an image"], "clip.gif", 12, "PIL images"),
        ([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))], "clip.webp", 12, "frame 1 is 9x8, frame 0 is 8x8"),
        ([Image.new("RGB", (8, 8))], "clip.avi", 12, "must end in .mp4, .gif or .webp"),
        ([Image.new("RGB", (8, 8))], "clip.gif", 0, "fps must be above 0"),
    ],
)
def test_bad_arguments_are_refused_without_a_file(
    tmp_path: Path, frames: list[object], name: str, fps: float, wanted: str
) -> None:
    with pytest.raises(ValueError, match=wanted):
        write_clip(frames, tmp_path / name, fps)  # type: ignore[arg-type]
    assert leftovers(tmp_path) == []


def test_the_encoder_comes_from_the_imageio_ffmpeg_wheel() -> None:
    if os.environ.get("IMAGEIO_FFMPEG_EXE"):
        pytest.skip("IMAGEIO_FFMPEG_EXE names another ffmpeg on purpose")
    assert Path(ffmpeg_path()).is_relative_to(Path(imageio_ffmpeg.__file__).parent)


def test_a_short_animation_on_the_demo_model(engine: Engine, tmp_path: Path) -> None:
    """The pieces as the engine's job will use them: plan, warp, colour, noise, img2img, tween, clip."""
    settings = AnimationSettings(
        prompts='{"0": "a red circle on the left", "4": "a red circle on the right"}',
        seed=3, max_frames=5, diffusion_cadence=2, width=64, height=64, steps=6, zoom="0: (1.05)",
    )  # fmt: skip
    plans = plan_frames(settings)
    first = engine.generate(Txt2Img(prompt=plans[0].prompt, seed=plans[0].seed, steps=6, width=64, height=64))
    reference = ColourReference(first.images[0])
    made = {0: first.images[0]}
    diffused = [p.index for p in plans if p.diffused]
    for before, index in itertools.pairwise(diffused):
        plan = plans[index]
        init = warp(made[before], combined(plans[before + 1 : index + 1], (64, 64)), settings.border)
        init = add_noise(match_colours(init, reference, settings.colour_coherence), plan.noise, plan.seed)
        request = Img2Img(prompt=plan.prompt, seed=plan.seed, steps=6, width=64, height=64, init_image=init,
                          denoising_strength=plan.denoising_strength, cfg_scale=plan.cfg_scale)  # fmt: skip
        made[index] = engine.generate(request).images[0]
        for between in range(before + 1, index):
            since, until = plans[before + 1 : between + 1], plans[between + 1 : index + 1]
            made[between] = tween(made[before], made[index], since, until, plans[between].cadence_weight)
    path = write_clip([made[i] for i in range(5)], tmp_path / "clip.mp4", settings.fps)
    info = clip_info(path)
    assert (info.frames, info.width, info.height, info.fps) == (5, 64, 64, 15.0)
    assert not np.array_equal(pixels(made[2]), pixels(made[0]))
