"""The optional invisible watermark (issue 22): a user's 48-bit message, read back from the pixels."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines import scenes
from pipelines.errors import BadRequest
from pipelines.standards import watermark
from pipelines.standards.watermark import MIN_SIDE, Watermark, matches, read

MARK = Watermark.parse("atelr1")


def shape_picture(side: int) -> Image.Image:
    """The demo model's kind of picture (a coloured shape on a plain background, drawn by PIL),
    enlarged as an upscaler would."""
    drawn = scenes.render(scenes.Scene("star", "yellow", "centre", "big", "grey"))
    return drawn.resize((side, side), Image.Resampling.LANCZOS)


def photo_picture(side: int) -> Image.Image:
    """Photo-like: smooth colour regions with sensor-like noise."""
    rng = np.random.default_rng(7)
    coarse = Image.fromarray(rng.integers(30, 225, (8, 8, 3), dtype=np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC
    )
    noisy = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 10, (side, side, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


PICTURES = {"shape": shape_picture, "photo": photo_picture}


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.asarray(a.convert("RGB"), dtype=np.float64) - np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean(error**2)))


def reopened(image: Image.Image, kind: str, **options: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    ("text", "message", "as_text"),
    [
        ("a1b2c3d4e5f6", 0xA1B2C3D4E5F6, None),
        ("0xA1B2C3D4E5F6", 0xA1B2C3D4E5F6, None),
        ("  atelr1 ", 0x6174656C7231, "atelr1"),
        ("ai", 0x616920202020, "ai"),  # padded with spaces to 6 bytes
    ],
)
def test_parse_accepts_hex_and_short_text(text: str, message: int, as_text: str | None) -> None:
    mark = Watermark.parse(text)
    assert mark.message == message
    assert mark.hex == f"{message:012x}"
    assert mark.text == as_text
    assert mark.label == (f"{as_text} (0x{message:012x})" if as_text else f"0x{message:012x}")
    assert Watermark.parse(mark.hex) == mark


@pytest.mark.parametrize("text", ["", "a1b2c3d4e5f", "a1b2c3d4e5f6a", "atelier", "héllo", "0x12", "tab\tx"])
def test_parse_refuses_other_forms_naming_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(BadRequest) as refused:
        Watermark.parse(text)
    message = str(refused.value)
    assert repr(text) in message
    assert "12 hex digits" in message and "6 ASCII characters" in message


@pytest.mark.parametrize("text", ["000000000000", "0xffffffffffff", "000000000101"])
def test_parse_refuses_messages_an_unmarked_plain_picture_would_match(text: str) -> None:
    with pytest.raises(BadRequest, match="too close to all zeros or all ones"):
        Watermark.parse(text)
    plain = Image.new("RGB", (MIN_SIDE, MIN_SIDE), (150, 150, 150))
    assert read(plain) in (Watermark(0), Watermark((1 << 48) - 1))  # why such messages are refused


def test_message_must_fit_in_48_bits() -> None:
    with pytest.raises(BadRequest, match="48 bits"):
        Watermark(1 << 48)


@pytest.mark.parametrize("kind", sorted(PICTURES))
@pytest.mark.parametrize("size", [64, 512])
def test_round_trip(size: int, kind: str) -> None:
    picture = PICTURES[kind](size)
    marked, note = MARK.apply(picture)
    if size < MIN_SIDE:
        assert note == f"no invisible watermark: {size}x{size} is below the 256x256 the DWT-DCT mark needs"
        assert marked is picture and marked.tobytes() == PICTURES[kind](size).tobytes()
        assert read(picture) is None and not matches(picture, MARK)
        pytest.skip(note)
    assert note is None
    assert marked.size == picture.size and marked.mode == "RGB"
    assert psnr(picture, marked) > 38  # invisible: measured 41-47 dB on the demo's pictures
    assert read(marked) == MARK
    assert read(reopened(marked, "PNG")) == MARK and matches(reopened(marked, "PNG"), MARK)


@pytest.mark.parametrize("kind", sorted(PICTURES))
def test_mark_survives_jpeg_quality_95(kind: str) -> None:
    marked, _ = MARK.apply(PICTURES[kind](512))
    jpeg = reopened(marked, "JPEG", quality=95)
    assert np.abs(np.asarray(jpeg, dtype=np.int16) - np.asarray(marked, dtype=np.int16)).max() > 0  # really lossy
    found = read(jpeg)
    assert found is not None and found.distance(MARK) <= watermark.MATCH_TOLERANCE
    assert matches(jpeg, MARK)


def test_other_message_and_unmarked_picture_do_not_match() -> None:
    picture = shape_picture(512)
    marked, _ = MARK.apply(picture)
    other = Watermark.parse("0x5e4d3c2b1a09")
    assert other.distance(MARK) > 2 * watermark.MATCH_TOLERANCE
    assert not matches(marked, other)
    assert matches(marked, other, tolerance=48)  # the tolerance is what decides
    assert not matches(picture, MARK)
    assert not matches(photo_picture(512), MARK)


def test_same_picture_and_message_give_the_same_bytes() -> None:
    picture = photo_picture(512)
    first, _ = MARK.apply(picture)
    second, _ = Watermark.parse("atelr1").apply(picture.copy())
    assert first.tobytes() == second.tobytes()
    other, _ = Watermark.parse("a1b2c3d4e5f6").apply(picture)
    assert other.tobytes() != first.tobytes()


def test_alpha_is_kept() -> None:
    picture = shape_picture(MIN_SIDE).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(picture.size)
    picture.putalpha(alpha)
    marked, note = MARK.apply(picture)
    assert note is None and marked.mode == "RGBA"
    assert marked.getchannel("A").tobytes() == alpha.tobytes()
    assert read(marked) == MARK


def test_the_packages_own_decoder_reads_the_mark() -> None:
    """Anyone with invisible-watermark can check a picture, with the steps the module documents."""
    from imwatermark import WatermarkDecoder

    marked, _ = MARK.apply(photo_picture(512))
    bgr = np.ascontiguousarray(np.asarray(marked)[:, :, ::-1])
    assert WatermarkDecoder("bytes", 48).decode(bgr, "dwtDct", scales=[36, 0, 0]) == b"atelr1"


def test_picture_with_no_room_is_left_unchanged_with_a_note() -> None:
    white = Image.new("RGB", (512, 512), (255, 255, 255))
    marked, note = MARK.apply(white)
    assert marked is white
    assert note is not None and "would not read back" in note and "512x512" in note


def test_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    with pytest.raises(BadRequest, match=r"pip install -e '\.\[watermark\]'"):
        MARK.apply(shape_picture(MIN_SIDE))
    with pytest.raises(BadRequest, match="invisible-watermark"):
        read(shape_picture(MIN_SIDE))


def test_importing_the_module_loads_neither_opencv_nor_the_package() -> None:
    code = "import sys, pipelines.standards.watermark; print('cv2' in sys.modules, 'imwatermark' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert shown.stdout.split() == ["False", "False"]
