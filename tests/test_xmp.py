"""The XMP "made by AI" mark in every kind of file Atelier writes: PNG, JPEG, WebP, GIF and MP4.

Files are made the way Atelier makes them (``outputs._write_image`` for pictures, ``clips.write_clip``
for animations), marked, then read back by Pillow (same pixels), sd-parsers (same infotext), ffmpeg
(the clip still plays) and exiftool (a public XMP reader sees the mark)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.animation.clips import clip_info, ffmpeg_path, write_clip
from pipelines.outputs import _write_image
from pipelines.standards import xmp

INFOTEXT = (
    "a red fox in the snow, <lora:fur:0.5>\n"
    "Negative prompt: blurry\n"
    "Steps: 5, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, Model: demo"
)
PROMPT = "a red fox in the snow, <lora:fur:0.5>"
URL = xmp.TRAINED_ALGORITHMIC_MEDIA
PACKET = xmp.packet("Atelier", "0.1.0")
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (apt install exiftool)")


def _picture(size: int = 64, alpha: bool = False) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if alpha:
        image.putalpha(Image.fromarray((x * 4 % 256).astype(np.uint8), "L"))
    return image


def _atelier_file(image_format: str) -> bytes:
    buffer = io.BytesIO()
    _write_image(buffer, _picture(), image_format, INFOTEXT, {"seed": 1234})
    return buffer.getvalue()


def _frames(count: int = 4) -> list[Image.Image]:
    return [_picture().rotate(90 * index) for index in range(count)]


def _pixels(data: bytes, frame: int = 0) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.seek(frame)
        return np.asarray(image.convert("RGBA"))


def _exiftool(data: bytes, suffix: str, tag: str, tmp_path: Path) -> str:
    path = tmp_path / f"marked{suffix}"
    path.write_bytes(data)
    assert EXIFTOOL is not None
    done = subprocess.run([EXIFTOOL, "-s3", tag, str(path)], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


# -- the packet -------------------------------------------------------------------------------------
def test_the_packet_is_well_formed_xmp_with_the_source_type_and_the_tool() -> None:
    made = xmp.packet("Atelier & <Co>", "0.1.0")
    text = made.decode("utf-8")
    assert text.startswith('<?xpacket begin="\ufeff"') and text.endswith('<?xpacket end="w"?>')
    root = ET.fromstring(made)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    [description] = root.iter(f"{{{xmp.RDF_NS}}}Description")
    assert description.findtext(f"{{{xmp.IPTC_EXT_NS}}}DigitalSourceType") == URL
    assert description.findtext(f"{{{xmp.XMP_BASIC_NS}}}CreatorTool") == "Atelier & <Co> 0.1.0"
    assert xmp.source_types(made) == [URL]
    assert len(list(description)) == 2  # the source type and the tool: nothing from the request


@pytest.mark.parametrize(("software", "version"), [("", "1.0"), ("  ", "1.0"), ("Atelier", "1\x00"), ("A\x07", "1")])
def test_a_name_xml_cannot_carry_is_refused(software: str, version: str) -> None:
    with pytest.raises(ValueError, match=r"software|creator tool"):
        xmp.packet(software, version)


def test_another_source_type_is_not_an_ai_mark() -> None:
    captured = PACKET.replace(b"trainedAlgorithmicMedia", b"digitalCapture")
    assert not xmp.is_ai_marked(xmp.embed(_atelier_file("png"), captured))
    assert xmp.source_types(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>") == []
    assert xmp.source_types(b"<not xml") == []


def test_an_attribute_or_resource_form_is_read_too() -> None:
    """Other writers state the value as an attribute of the description or as an rdf:resource."""
    head = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{xmp.RDF_NS}">'
    attribute = f'<rdf:Description xmlns:I="{xmp.IPTC_EXT_NS}" I:DigitalSourceType="{URL}"/>'
    resource = (
        f'<rdf:Description xmlns:I="{xmp.IPTC_EXT_NS}"><I:DigitalSourceType rdf:resource="{URL}"/></rdf:Description>'
    )
    for body in (attribute, resource):
        assert xmp.source_types(f"{head}{body}</rdf:RDF></x:xmpmeta>".encode()) == [URL]


# -- still pictures as Atelier writes them ------------------------------------------------------------
@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_a_picture_keeps_its_pixels_and_infotext_and_gains_one_mark(image_format: str) -> None:
    from sd_parsers import ParserManager
    from sd_parsers.data import Generators

    original = _atelier_file(image_format)
    assert xmp.extract(original) is None and not xmp.is_ai_marked(original)
    marked = xmp.embed(original, PACKET)
    assert xmp.extract(marked) == PACKET and xmp.is_ai_marked(marked)
    np.testing.assert_array_equal(_pixels(marked), _pixels(original))  # the very same decode: nothing re-encoded
    assert xmp.embed(marked, PACKET) == marked  # marking twice at two doors changes nothing

    again = xmp.embed(marked, xmp.packet("Atelier", "0.2.0"))
    assert again.count(b"<?xpacket begin") == 1 and again.count(URL.encode()) == 1
    assert b"Atelier 0.2.0" in (xmp.extract(again) or b"")
    assert PROMPT.encode() not in (xmp.extract(again) or b"")

    found = ParserManager().parse(Image.open(io.BytesIO(again)))
    assert found is not None and found.generator == Generators.AUTOMATIC1111
    assert found.full_prompt == PROMPT and found.full_negative_prompt == "blurry"
    [sampler] = found.samplers
    assert sampler.parameters["seed"] == "1234"


def test_png_mark_is_an_itxt_chunk_right_after_ihdr_and_the_infotext_is_untouched() -> None:
    original = _atelier_file("png")
    marked = xmp.embed(original, PACKET)
    chunks = _png_chunks(marked)
    names = [name for name, _ in chunks]
    assert names[:2] == [b"IHDR", b"iTXt"] and names.index(b"iTXt") < names.index(b"IDAT")
    assert chunks[1][1] == b"XML:com.adobe.xmp\0\0\0\0\0" + PACKET  # uncompressed, no language, no translation
    text_chunks = [chunk for chunk in _png_chunks(original) if chunk[0] in (b"tEXt", b"iTXt", b"zTXt")]
    assert text_chunks and all(chunk in chunks for chunk in text_chunks)  # byte for byte
    with Image.open(io.BytesIO(marked)) as image:
        image.load()  # Pillow checks every CRC
        assert image.info["parameters"] == INFOTEXT and image.info["xmp"] == PACKET


def test_a_compressed_png_xmp_chunk_is_read_and_replaced() -> None:
    body = b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(PACKET)
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    original = _atelier_file("png")
    old = original[:33] + chunk + original[33:]  # after the 8-byte signature and the 25-byte IHDR chunk
    assert xmp.extract(old) == PACKET
    replaced = xmp.embed(old, xmp.packet("Other", "2"))
    assert [name for name, _ in _png_chunks(replaced)].count(b"iTXt") == 1
    assert b"Other 2" in (xmp.extract(replaced) or b"")


def test_jpeg_mark_follows_jfif_and_exif_and_fits_one_segment() -> None:
    marked = xmp.embed(_atelier_file("jpeg"), PACKET)
    segments = _jpeg_segments(marked)
    kinds = [(marker, body[:6]) for marker, body in segments]
    at = next(index for index, (marker, body) in enumerate(segments) if body.startswith(xmp.JPEG_XMP_HEADER))
    assert kinds[:at] == [(0xE0, b"JFIF\0\1"), (0xE1, b"Exif\0\0")]
    assert all(marker not in (0xE0, 0xE1) for marker, _ in segments[at + 1 :])
    with pytest.raises(ValueError, match="at most 65504"):
        xmp.embed(marked, b" " * (xmp.JPEG_MAX_PACKET + 1))
    assert xmp.embed(marked, b" " * xmp.JPEG_MAX_PACKET).count(xmp.JPEG_XMP_HEADER) == 1  # the largest that fits


@pytest.mark.parametrize("alpha", [False, True])
def test_a_simple_lossless_webp_becomes_extended_with_its_canvas_and_alpha(alpha: bool) -> None:
    buffer = io.BytesIO()
    _picture(48, alpha).crop((0, 0, 48, 40)).save(buffer, format="WEBP", lossless=True)
    original = buffer.getvalue()
    assert original[12:16] == b"VP8L"
    marked = xmp.embed(original, PACKET)
    flags, width, height = _vp8x(marked)
    assert (width, height) == (48, 40)
    assert flags == xmp._WEBP_FLAG_XMP | (xmp._WEBP_FLAG_ALPHA if alpha else 0)
    np.testing.assert_array_equal(_pixels(marked), _pixels(original))
    assert _riff_ok(marked) and xmp.extract(marked) == PACKET


def test_a_simple_lossy_webp_takes_its_canvas_from_the_vp8_frame() -> None:
    buffer = io.BytesIO()
    _picture(64).crop((0, 0, 50, 34)).save(buffer, format="WEBP", quality=80)
    original = buffer.getvalue()
    assert original[12:16] == b"VP8 "
    marked = xmp.embed(xmp.embed(original, b"<x/>"), PACKET)  # odd-sized first packet: padding both ways
    assert _vp8x(marked) == (xmp._WEBP_FLAG_XMP, 50, 34)
    np.testing.assert_array_equal(_pixels(marked), _pixels(original))
    assert _riff_ok(marked) and xmp.extract(marked) == PACKET


# -- animations as Atelier writes them ----------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {kind: write_clip(_frames(), folder / f"clip.{kind}", fps=8) for kind in ("gif", "webp", "mp4")}


@pytest.mark.parametrize("kind", ["gif", "webp"])
def test_an_animation_keeps_every_frame_and_its_timing(kind: str, clips: dict[str, Path], tmp_path: Path) -> None:
    original = clips[kind].read_bytes()
    marked = xmp.embed(original, PACKET)
    assert xmp.embed(marked, PACKET) == marked
    assert xmp.extract(marked) == PACKET and marked.count(b"<?xpacket begin") == 1
    path = tmp_path / f"marked.{kind}"
    path.write_bytes(marked)
    assert clip_info(path) == clip_info(clips[kind])
    for frame in range(4):
        np.testing.assert_array_equal(_pixels(marked, frame), _pixels(original, frame))
    with Image.open(path) as clip:
        assert clip.info.get("loop") == 0  # the loop extension is still read


def test_gif_mark_sits_after_the_loop_extension_before_the_first_frame(clips: dict[str, Path]) -> None:
    marked = xmp.embed(clips["gif"].read_bytes(), PACKET)
    _, blocks, _ = xmp._gif_blocks(marked)
    labels = [marked[start + 3 : start + 14] if label == 0xFF else label for label, start, _ in blocks]
    assert labels[:3] == [b"NETSCAPE2.0", b"XMP DataXMP", 0xF9]
    _, start, end = blocks[1]
    assert marked[start + 14 : end] == PACKET + xmp.GIF_MAGIC_TRAILER and len(xmp.GIF_MAGIC_TRAILER) == 258


def test_a_gif87a_still_picture_is_raised_to_gif89a() -> None:
    buffer = io.BytesIO()
    _picture(32).convert("P").save(buffer, format="GIF")
    original = buffer.getvalue()
    assert original.startswith(b"GIF87a")
    marked = xmp.embed(original, PACKET)
    assert marked.startswith(b"GIF89a") and xmp.is_ai_marked(marked)
    np.testing.assert_array_equal(_pixels(marked), _pixels(original))


def test_an_mp4_gains_a_uuid_box_at_the_end_and_still_plays(clips: dict[str, Path], tmp_path: Path) -> None:
    import imageio_ffmpeg

    original = clips["mp4"].read_bytes()
    marked = xmp.embed(xmp.embed(original, PACKET), PACKET)
    assert marked[: len(original)] == original  # nothing before the new box moved: chunk offsets hold
    assert marked[len(original) :] == struct.pack(">I", 24 + len(PACKET)) + b"uuid" + xmp.BMFF_XMP_UUID + PACKET
    path = tmp_path / "marked.mp4"
    path.write_bytes(marked)
    done = subprocess.run([ffmpeg_path(), "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert clip_info(path) == clip_info(clips["mp4"])
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = [np.frombuffer(frame, np.uint8) for frame in reader]
    originals = [np.frombuffer(frame, np.uint8) for frame in list(imageio_ffmpeg.read_frames(str(clips["mp4"])))[1:]]
    assert meta["size"] == (64, 64) and len(frames) == 4
    for frame, before in zip(frames, originals, strict=True):
        np.testing.assert_array_equal(frame, before)


def test_an_old_mp4_packet_before_other_boxes_is_blanked_not_moved() -> None:
    ftyp = struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\2\0"
    old = struct.pack(">I4s", 24 + len(PACKET), b"uuid") + xmp.BMFF_XMP_UUID + PACKET
    mdat = struct.pack(">I4s", 0, b"mdat") + b"frames"  # size 0: runs to the end of the file
    marked = xmp.embed(ftyp + old + mdat, xmp.packet("New", "1"))
    boxes = [(name, start, end) for name, start, _, end in xmp._bmff_boxes(marked)]
    assert [name for name, _, _ in boxes] == [b"ftyp", b"free", b"mdat", b"uuid"]
    _, start, end = boxes[1]
    assert (start, end) == (16, 16 + len(old)) and marked[start + 8 : end] == bytes(len(old) - 8)
    assert marked[boxes[2][1] : boxes[2][1] + 4] == struct.pack(">I", 14)  # now states its size
    assert marked.count(b"<?xpacket begin") == 1 and b"New 1" in (xmp.extract(marked) or b"")


# -- a public reader ------------------------------------------------------------------------------------
@needs_exiftool
@pytest.mark.parametrize("kind", ["png", "jpeg", "webp", "gif", "mp4"])
def test_exiftool_reads_the_mark(kind: str, clips: dict[str, Path], tmp_path: Path) -> None:
    original = clips[kind].read_bytes() if kind in clips else _atelier_file(kind)
    marked = xmp.embed(original, PACKET)
    suffix = ".jpg" if kind == "jpeg" else f".{kind}"
    assert _exiftool(marked, suffix, "-XMP-iptcExt:DigitalSourceType", tmp_path) == URL
    assert _exiftool(marked, suffix, "-XMP-xmp:CreatorTool", tmp_path) == "Atelier 0.1.0"
    assert _exiftool(original, suffix, "-XMP-iptcExt:DigitalSourceType", tmp_path) == ""


# -- what is refused ----------------------------------------------------------------------------------------
def _broken() -> dict[str, bytes]:
    png, jpeg, webp = _atelier_file("png"), _atelier_file("jpeg"), _atelier_file("webp")
    gif = io.BytesIO()
    _picture(16).convert("P").save(gif, format="GIF")
    bad_crc = bytearray(png)
    bad_crc[20] ^= 0xFF  # inside IHDR's data
    return {
        "png cut short": png[:60],
        "png bad crc": bytes(bad_crc),
        "jpeg cut short": jpeg[:30],
        "jpeg without a marker": jpeg[:20] + b"\x00" * 40,  # right after the 16-byte JFIF segment
        "webp riff too long": webp[:4] + struct.pack("<I", len(webp) * 2) + webp[8:],
        "webp without image": b"RIFF" + struct.pack("<I", 12) + b"WEBPJUNK" + bytes(4),
        "gif without trailer": gif.getvalue()[:-1],
        "mp4 bad box size": struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\2\0" + struct.pack(">I4s", 99, b"mdat"),
    }


@pytest.mark.parametrize("name", list(_broken()))
def test_a_broken_file_is_refused(name: str) -> None:
    data = _broken()[name]
    with pytest.raises(ValueError, match="broken"):
        xmp.embed(data, PACKET)
    with pytest.raises(ValueError, match="broken"):
        xmp.extract(data)
    assert not xmp.is_ai_marked(data)


UNKNOWN = {
    "text": (b"hello, world", "b'hello, world'"),
    "empty": (b"", "b''"),
    "bmp": (b"BM\x00\x00" + bytes(40), "b'BM\\x00"),
    "avif": (b"\0\0\0\x18ftypavif" + bytes(12), "avif"),
}


@pytest.mark.parametrize("name", list(UNKNOWN))
def test_an_unknown_file_is_refused_naming_its_first_bytes(name: str) -> None:
    data, named = UNKNOWN[name]
    with pytest.raises(ValueError) as caught:
        xmp.embed(data, PACKET)
    assert named in str(caught.value)
    with pytest.raises(ValueError):
        xmp.extract(data)
    assert not xmp.is_ai_marked(data)


def test_a_packet_a_gif_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        xmp.embed(_atelier_file("png"), PACKET + b"\0")
    with pytest.raises(ValueError, match="UTF-8"):
        xmp.embed(_atelier_file("png"), b"\xff\xfe")


# -- reading the containers back, independently of the module ----------------------------------------------
def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((data[pos + 1], data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segments


def _vp8x(data: bytes) -> tuple[int, int, int]:
    assert data[12:16] == b"VP8X" and struct.unpack("<I", data[16:20])[0] == 10
    width = int.from_bytes(data[24:27], "little") + 1
    height = int.from_bytes(data[27:30], "little") + 1
    return data[20], width, height


def _riff_ok(data: bytes) -> bool:
    """The RIFF size matches the file and every chunk (padded to even) ends exactly at its end."""
    if struct.unpack("<I", data[4:8])[0] != len(data) - 8:
        return False
    pos = 12
    while pos < len(data):
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        pos += 8 + size + (size & 1)
    return pos == len(data)
