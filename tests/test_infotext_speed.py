"""Reading an infotext takes time linear in its length, and a bounded time for any image.

An image's parameters chunk is anyone's text (PIL reads 1 MB chunks), and reading it holds the GIL:
a parser that backtracks froze the whole server for seconds, then hours (security issue, finding 2).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from pipelines.infotext import MAX_TEXT, parse_infotext
from pipelines.outputs import read_metadata

# Lines that made the old pattern rescan the rest of the line at every character: key-like runs
# with no colon after them, and keys whose quoted value never closes.
SLOW_LINES: dict[str, Callable[[int], str]] = {
    "one word": lambda n: "a" * n,
    "words": lambda n: ("ab cd-ef/" * n)[:n],
    "unclosed quotes": lambda n: ('k: "x\\", ' * n)[:n],
    "pairs": lambda n: ("Key: value, " * n)[:n],
}


@contextmanager
def _fails_after(seconds: float) -> Iterator[None]:
    """Turn a parser that would run for hours into a failure: the regex engine checks for signals."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def too_slow(signum: int, frame: object) -> None:
        raise TimeoutError(f"still parsing after {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _best_times(*texts: str, repeats: int = 5) -> list[float]:
    """The least CPU time of a few parses of each text, taken in turns: CPU time leaves out the time
    other processes run, and the least of several is the one least disturbed by their cache traffic."""
    best = [float("inf")] * len(texts)
    for _ in range(repeats):
        for index, text in enumerate(texts):
            start = time.process_time()
            parse_infotext(text)
            best[index] = min(best[index], time.process_time() - start)
    return best


@pytest.mark.parametrize("shape", sorted(SLOW_LINES))
def test_a_20k_character_line_parses_in_well_under_a_second(shape: str) -> None:
    text = "a prompt\n" + SLOW_LINES[shape](20_000)  # took 2-3 s with the backtracking pattern
    with _fails_after(10):
        assert _best_times(text, repeats=1)[0] < 0.25


@pytest.mark.parametrize("shape", sorted(SLOW_LINES))
def test_a_megabyte_line_parses_in_well_under_a_second_and_says_it_was_cut(shape: str) -> None:
    text = "a prompt\n" + SLOW_LINES[shape](1_000_000)  # about two hours with the backtracking pattern
    with _fails_after(10):
        (elapsed,) = _best_times(text, repeats=1)
        parsed = parse_infotext(text)
    assert elapsed < 0.25
    assert f"{len(text.rstrip()):,} characters" in parsed["notes"] and f"{MAX_TEXT:,}" in parsed["notes"]
    # Only whole lines within the bound are read: the cut line would be a prompt line that never was.
    assert parsed == {"prompt": "a prompt", "negative_prompt": "", "notes": parsed["notes"]}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.text(alphabet=st.sampled_from(list('aZ9_ -/:,"\\\t')), min_size=1, max_size=12))
def test_parse_time_grows_linearly_with_the_line(unit: str) -> None:
    # n and 4n stay under MAX_TEXT, so the whole line is parsed both times. A linear parser takes ~4x
    # as long for 4x the text, a quadratic one ~16x; 10x leaves room for a busy machine and for
    # fixed costs, which only lower the ratio.
    short, long = ("p\n" + (unit * (n // len(unit) + 1))[:n] for n in (MAX_TEXT // 16, MAX_TEXT // 4))
    with _fails_after(30):
        short_time, long_time = _best_times(short, long)
    assert long_time < 10 * max(short_time, 1e-4), (short_time, long_time)


def test_png_info_and_send_to_read_a_long_chunk_quickly(tmp_path: Path) -> None:
    from webui.pnginfo_tab import fields_from_image

    # Longer than the parser reads, short enough for the metadata reader to hand over (it drops
    # chunks far past any real infotext): the parser's own bound is what keeps this quick.
    text = "a cat\n" + "a" * (MAX_TEXT * 3 // 2)  # about a minute with the backtracking pattern
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "long.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert read_metadata(path)["parameters"] == text
    with _fails_after(10):
        start = time.process_time()
        fields = fields_from_image(str(path))
        elapsed = time.process_time() - start
    assert elapsed < 0.5
    assert fields == {"prompt": "a cat", "negative_prompt": ""}


def test_exif_user_comment_is_bounded_too(tmp_path: Path) -> None:
    text = "a cat\nNegative prompt: dog\n" + "Steps: 2, " * (MAX_TEXT * 3 // 20)  # more than JPEG's EXIF holds
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    path = tmp_path / "long.webp"
    Image.new("RGB", (8, 8)).save(path, exif=exif.tobytes())
    read = read_metadata(path)["parameters"]
    assert read == text
    with _fails_after(10):
        parsed = parse_infotext(read)
    assert (parsed["prompt"], parsed["negative_prompt"]) == ("a cat", "dog")
    assert "Steps" not in parsed and "were not read" in parsed["notes"]


def test_png_info_shows_what_it_reads_and_says_what_it_left_out(tmp_path: Path) -> None:
    from webui.pnginfo_tab import parameters_text

    for name, text in (("long", "a cat\n" + "a" * (MAX_TEXT * 3 // 2)), ("short", "a cat\nSteps: 1")):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png", pnginfo=info)
    shown = parameters_text(str(tmp_path / "long.png"))
    assert shown.startswith("a cat\naaa") and len(shown) < MAX_TEXT + 100
    assert f"{MAX_TEXT // 2 + 6:,} more characters" in shown
    assert parameters_text(str(tmp_path / "short.png")) == "a cat\nSteps: 1"
