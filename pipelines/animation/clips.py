"""Clips from frames: MP4 (H.264), GIF and animated WebP, written so that no half-written file is seen.

Every clip is written to a hidden temp file (``.writing-*``) in the target folder, flushed to disk, then
given its final name with a hard link that fails rather than replace a file; a name already taken gets
``-1``, ``-2``... So a crash, a failing encoder or an exception from the frames leaves either no clip or
a complete one, and never touches an existing file.

MP4 is encoded by the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships (no system ffmpeg, no
download), as H.264 in yuv420p with ``+faststart`` so browsers play it while it loads. yuv420p needs even
sides: an odd width or height gets one more column or row, a copy of the last one.

GIF and WebP are written by Pillow. GIF stores frame times in hundredths of a second, so its fps is
rounded to the nearest 100/n; both formats fold identical consecutive frames into one longer frame,
which keeps the timing (a clip whose frames are all the same becomes one still frame).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ..files import free_name

log = logging.getLogger(__name__)

KINDS = ("mp4", "gif", "webp")
MAX_FPS = 120
MP4_CRF = 18  # visually lossless for most content; 23 is x264's default
WEBP_QUALITY = 90


@dataclass(frozen=True)
class ClipInfo:
    kind: str
    frames: int
    fps: float
    width: int
    height: int
    seconds: float  # fps is frames / seconds for GIF and WebP, whose frames each carry their own time
    codec: str = ""


def write_clip(
    frames: Iterable[Image.Image], path: Path | str, fps: float, finish: Callable[[bytes], bytes] | None = None
) -> Path:
    """Write ``frames`` (PIL images of one size) as the clip ``path`` names (.mp4, .gif or .webp) at
    ``fps`` frames a second; ``finish`` gets the file's bytes last (the AI-source mark). Returns where
    it was written: ``path``, or ``path`` with ``-1``... when that name is taken. Raises ``ValueError``
    for bad arguments and ``RuntimeError`` when the encoder fails."""
    target = Path(path)
    kind = target.suffix.lower().lstrip(".")
    if kind not in KINDS:
        raise ValueError(f"a clip's name must end in .mp4, .gif or .webp, got {target.name!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be above 0 and at most {MAX_FPS}, got {fps!r}")
    checked = _checked_frames(frames)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".writing-", suffix=f".{kind}", delete=False) as temp:
        temp_path = Path(temp.name)
    try:
        if kind == "mp4":
            _write_mp4(checked, temp_path, fps)
        else:
            _write_pillow(checked, temp_path, fps, kind)
        if finish is not None:
            temp_path.write_bytes(finish(temp_path.read_bytes()))
        with open(temp_path, "rb+") as written:
            os.fsync(written.fileno())
        final = _publish(temp_path, target)
    finally:
        temp_path.unlink(missing_ok=True)
    log.info("wrote %s clip %s", kind, final)
    return final


def clip_info(path: Path | str) -> ClipInfo:
    """Frame count, fps and size of a clip written here, read back from the file."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind == "mp4":
        return _probe_mp4(path)
    if kind not in KINDS:
        raise ValueError(f"not a clip: {path.name!r}")
    with Image.open(path) as clip:
        count = getattr(clip, "n_frames", 1)
        total = 0
        for index in range(count):
            clip.seek(index)
            clip.load()  # WebP reads a frame's duration only when it decodes the frame
            total += clip.info.get("duration", 0)
        seconds = total / 1000.0
        return ClipInfo(kind, count, count / seconds if seconds else 0.0, clip.width, clip.height, seconds, kind)


def _probe_mp4(path: Path) -> ClipInfo:
    """Decode the video stream with ffmpeg and read its report: the stream line, the final frame count."""
    command = [ffmpeg_path(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    stream = re.search(r"Stream #.*?Video: (\w+).*?, (\d+)x(\d+)[ ,].*?([\d.]+) fps", done.stderr)
    frames = re.findall(r"frame=\s*(\d+)", done.stderr)
    times = re.findall(r"time=(\d+):(\d+):([\d.]+)", done.stderr)
    if done.returncode != 0 or not stream or not frames or not times:
        raise RuntimeError(f"ffmpeg could not read {path.name}: {done.stderr[-1000:].strip() or 'no message'}")
    hours, minutes, seconds = times[-1]
    duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    codec, width, height, fps = stream.groups()
    return ClipInfo("mp4", int(frames[-1]), float(fps), int(width), int(height), duration, codec)


def ffmpeg_path() -> str:
    """The ffmpeg binary from the imageio-ffmpeg wheel (or the one ``IMAGEIO_FFMPEG_EXE`` names)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError("MP4 clips need the imageio-ffmpeg package: pip install imageio-ffmpeg") from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _checked_frames(frames: Iterable[Image.Image]) -> Iterator[Image.Image]:
    """The frames as RGB, checked one by one as they are consumed (so a generator is never held whole
    for MP4); the first check happens now, so an empty clip fails before any file is made."""
    iterator = iter(frames)
    first = next(iterator, None)
    if not isinstance(first, Image.Image):
        raise ValueError(
            "a clip needs at least one frame"
            if first is None
            else f"frames must be PIL images, got {type(first).__name__}"
        )

    def checked() -> Iterator[Image.Image]:
        for index, frame in enumerate(itertools.chain([first], iterator)):
            if not isinstance(frame, Image.Image):
                raise ValueError(f"frame {index} is not a PIL image but {type(frame).__name__}")
            if frame.size != first.size:
                raise ValueError(
                    f"frame {index} is {frame.size[0]}x{frame.size[1]}, frame 0 is {first.size[0]}x{first.size[1]}"
                )
            yield frame.convert("RGB")

    return checked()


def _write_mp4(frames: Iterator[Image.Image], path: Path, fps: float) -> None:
    first = next(frames)
    width, height = first.size
    even_width, even_height = width + width % 2, height + height % 2
    rate = Fraction(fps).limit_denominator(1001)
    command = [
        ffmpeg_path(), "-y", "-v", "error", "-nostdin",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{even_width}x{even_height}", "-r", str(rate), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF), "-preset", "medium",
        "-movflags", "+faststart", "-f", "mp4", str(path),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty ffmpeg cannot block on it
        try:  # unbuffered: closing stdin has nothing left to flush into a pipe ffmpeg may have closed
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, bufsize=0
            )
        except OSError as exc:
            raise RuntimeError(f"could not start ffmpeg ({command[0]}): {exc}") from exc
        with process:  # closes the pipe and waits for ffmpeg however this block ends
            try:
                for frame in itertools.chain([first], frames):
                    _write_all(process.stdin, _even(np.asarray(frame)).tobytes())
            except BrokenPipeError:
                pass  # ffmpeg quit early: its own message, read below, says why
            except BaseException:
                process.kill()  # the frames failed: the half-written temp file is removed by the caller
                raise
        if process.returncode != 0:
            raise RuntimeError(f"ffmpeg could not write the MP4 (exit {process.returncode}): {_tail(errors)}")


def _write_all(pipe: IO[bytes] | None, data: bytes) -> None:
    """An unbuffered pipe may take part of a write (after a signal): go on until all of it is in."""
    if pipe is None:
        raise RuntimeError("ffmpeg was started without a pipe to read the frames from")
    view = memoryview(data)
    while view:
        written = pipe.write(view)
        view = view[written or 0 :]


def _even(pixels: np.ndarray) -> np.ndarray:
    """Pad an odd side with a copy of its last row or column: H.264 in yuv420p needs even sides."""
    rows, columns = pixels.shape[0] % 2, pixels.shape[1] % 2
    if not rows and not columns:
        return pixels
    return np.pad(pixels, ((0, rows), (0, columns), (0, 0)), mode="edge")


def _write_pillow(frames: Iterator[Image.Image], path: Path, fps: float, kind: str) -> None:
    first = next(frames)
    if kind == "gif":
        # Pillow's default palette (median cut) takes ~0.3 s a 512 px frame; an octree ~2 ms, a little coarser
        first = _palette(first)
        frames = (_palette(frame) for frame in frames)
        # GIF counts hundredths: state the rounded time exactly rather than let the encoder round it
        options: dict[str, object] = {"duration": max(1, round(100 / fps)) * 10, "loop": 0}
    else:
        options = {"duration": max(1, round(1000 / fps)), "loop": 0, "quality": WEBP_QUALITY, "method": 4}
    first.save(path, format=kind.upper(), save_all=True, append_images=frames, **options)


def _palette(frame: Image.Image) -> Image.Image:
    return frame.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG)


def _publish(temp_path: Path, target: Path) -> Path:
    """Give the finished temp file the first free name from ``target`` on, never replacing a file."""
    while True:
        final = free_name(target)
        try:
            os.link(temp_path, final)
            return final
        except FileExistsError:
            continue  # taken between the check and the link: try the next name
        except OSError:  # no hard links here (some network shares, exFAT): exclusive create and copy
            try:
                with open(final, "xb") as out, open(temp_path, "rb") as source:
                    _copy(source, out, final)
                return final
            except FileExistsError:
                continue


def _copy(source: IO[bytes], out: IO[bytes], final: Path) -> None:
    try:
        shutil.copyfileobj(source, out)
        out.flush()
        os.fsync(out.fileno())
    except BaseException:
        final.unlink(missing_ok=True)  # a half-copied clip must not be seen
        raise


def _tail(errors: IO[bytes]) -> str:
    errors.seek(0)
    text = errors.read()[-2000:].decode("utf-8", "replace").strip()
    return text or "no message"
