"""The machine-readable "made by AI" mark: an XMP packet written into the bytes of every kind of file.

The packet states the IPTC digital source type ``trainedAlgorithmicMedia`` and the software that made the
file (``xmp:CreatorTool``), nothing more: the prompt stays in the A1111 infotext, which is left exactly
as it was. Everything here works on bytes, never on decoded pictures, so the pixels are never
re-encoded and the same functions serve files on disk, base64 over the API and animation clips.

Where each container keeps XMP follows Adobe's XMP Specification Part 3 ("Storage in files") and the
containers' own specs:

- PNG: an uncompressed ``iTXt`` chunk with keyword ``XML:com.adobe.xmp`` right after ``IHDR``.
- JPEG: an APP1 segment ``http://ns.adobe.com/xap/1.0/\\0`` + packet after the leading APP0 (JFIF) and
  Exif APP1 segments, so readers that expect Exif first still find it first.
- WebP: an ``XMP `` chunk in the extended (``VP8X``) layout; a simple ``VP8 ``/``VP8L`` file is turned
  into an extended one, its canvas taken from the bitstream.
- GIF: the ``XMP DataXMP`` application extension (packet + 258-byte "magic trailer" that lets plain GIF
  readers skip it as sub-blocks), before the first frame so readers that stop there see it.
- MP4/MOV (ISO BMFF): a top-level ``uuid`` box with Adobe's XMP UUID appended at the end, so no byte
  before it moves and every ``stco``/``co64`` offset stays right.

A packet already there is replaced, never doubled.
"""

from __future__ import annotations

import logging
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_BASIC_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEYWORD = b"XML:com.adobe.xmp"
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
JPEG_EXTENDED_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
JPEG_MAX_SEGMENT = 65533  # a segment's 16-bit length counts its own two bytes
JPEG_MAX_PACKET = JPEG_MAX_SEGMENT - len(JPEG_XMP_HEADER)
GIF_APPLICATION = b"XMP DataXMP"  # 8-byte identifier + 3-byte authentication code
# 0x01, 0xFF down to 0x00, then the block terminator: whatever byte of the packet a sub-block reader
# lands on, its skips end on the terminator
GIF_MAGIC_TRAILER = b"\x01" + bytes(range(255, -1, -1)) + b"\x00"
BMFF_XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
# HEIF/AVIF are ISO BMFF too, but keep XMP as an item inside "meta", not as a top-level box
_HEIF_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_QUICKTIME_FIRST_BOXES = {b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
_WEBP_KNOWN = {b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L", b"EXIF"}
_WEBP_FLAG_ALPHA, _WEBP_FLAG_XMP = 0x10, 0x04
MAX_PACKET_BYTES = 16 * 1024 * 1024  # bounds what inflating a hostile compressed iTXt may cost


def packet(software: str, version: str) -> bytes:
    """An XMP packet (UTF-8, with its ``<?xpacket?>`` wrapper) stating that the file is trained-algorithmic
    media made by ``"<software> <version>"``. It carries nothing from the request (no prompt)."""
    tool = f"{software} {version}".strip()
    if not software.strip():
        raise ValueError(f"the software's name must not be empty, got {software!r}")
    bad = [char for char in tool if ord(char) < 0x20 or 0xD800 <= ord(char) <= 0xDFFF or ord(char) in (0xFFFE, 0xFFFF)]
    if bad:
        raise ValueError(f"the creator tool {tool!r} holds characters XML cannot carry: {bad!r}")
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"\n'
        f'    xmlns:xmp="{XMP_BASIC_NS}">\n'
        f"   <Iptc4xmpExt:DigitalSourceType>{TRAINED_ALGORITHMIC_MEDIA}</Iptc4xmpExt:DigitalSourceType>\n"
        f"   <xmp:CreatorTool>{escape(tool)}</xmp:CreatorTool>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return text.encode("utf-8")


def kind(data: bytes) -> str:
    """The container ``data`` is in, by its signature: ``png``, ``jpeg``, ``webp``, ``gif`` or ``bmff``
    (MP4/MOV). Raises ``ValueError`` naming the first bytes of anything else."""
    head = bytes(data[:16])
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        if head[8:12] in _HEIF_BRANDS:
            raise ValueError(f"HEIF/AVIF files (brand {head[8:12]!r}) keep XMP inside 'meta'; not supported here")
        return "bmff"
    if head[4:8] in _QUICKTIME_FIRST_BOXES:
        return "bmff"
    raise ValueError(f"not a PNG, JPEG, WebP, GIF or MP4/MOV file: it starts with {head!r}")


def embed(data: bytes, xmp: bytes) -> bytes:
    """``data`` with the XMP packet ``xmp`` stored the way its container's spec says, replacing a packet
    already there. Raises ``ValueError`` for an unknown or broken container or a packet that cannot fit."""
    data = bytes(data)
    _check_packet(xmp)
    embedders: dict[str, Callable[[bytes, bytes], bytes]] = {
        "png": _png_embed,
        "jpeg": _jpeg_embed,
        "webp": _webp_embed,
        "gif": _gif_embed,
        "bmff": _bmff_embed,
    }
    return embedders[kind(data)](data, xmp)


def extract(data: bytes) -> bytes | None:
    """The XMP packet stored in ``data``, or None when it has none. Raises ``ValueError`` for an unknown
    or broken container."""
    data = bytes(data)
    extractors: dict[str, Callable[[bytes], bytes | None]] = {
        "png": _png_extract,
        "jpeg": _jpeg_extract,
        "webp": _webp_extract,
        "gif": _gif_extract,
        "bmff": _bmff_extract,
    }
    return extractors[kind(data)](data)


def mark(data: bytes, software: str, version: str) -> bytes:
    """``data`` carrying the AI-source mark of ``software`` ``version``: ``embed(data, packet(...))``."""
    return embed(data, packet(software, version))


def is_ai_marked(data: bytes) -> bool:
    """True when ``data`` holds an XMP packet whose IPTC DigitalSourceType is trainedAlgorithmicMedia.
    Never raises: an unknown or broken file, or a packet that is not XML, is simply not marked."""
    try:
        found = extract(data)
    except ValueError:
        return False
    return found is not None and TRAINED_ALGORITHMIC_MEDIA in source_types(found)


def source_types(xmp: bytes) -> list[str]:
    """Every IPTC DigitalSourceType a packet states, written as an attribute, an element or a resource."""
    if b"<!DOCTYPE" in xmp or b"<!ENTITY" in xmp:
        return []  # XMP forbids DTDs; refusing them keeps entity expansion out of the parser
    try:
        root = ET.fromstring(xmp)
    except ET.ParseError:
        return []
    name = f"{{{IPTC_EXT_NS}}}DigitalSourceType"
    found: list[str] = []
    for description in root.iter(f"{{{RDF_NS}}}Description"):
        if name in description.attrib:
            found.append(description.attrib[name].strip())
        for element in description.findall(name):
            value = element.get(f"{{{RDF_NS}}}resource", element.text or "")
            found.append(value.strip())
    return found


def _check_packet(xmp: bytes) -> None:
    if not isinstance(xmp, bytes) or not xmp:
        raise ValueError(f"an XMP packet must be non-empty bytes, got {type(xmp).__name__} of {len(xmp or b'')}")
    if b"\x00" in xmp:  # a NUL would end a GIF reader's walk through the packet early
        raise ValueError("an XMP packet must not contain NUL bytes")
    try:
        xmp.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"an XMP packet must be UTF-8: {exc}") from None


# -- PNG --------------------------------------------------------------------------------------------
def _png_chunks(data: bytes) -> tuple[list[tuple[bytes, int, int]], int]:
    """(type, chunk start, chunk end) of every chunk up to IEND, checked against its CRC, and where IEND ends."""
    chunks: list[tuple[bytes, int, int]] = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ValueError(f"broken PNG: truncated at byte {pos} before IEND")
        length, name = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"broken PNG: chunk {name!r} at byte {pos} runs past the end")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(memoryview(data)[pos + 4 : end - 4]) != crc:
            raise ValueError(f"broken PNG: chunk {name!r} at byte {pos} fails its CRC")
        chunks.append((name, pos, end))
        pos = end
        if name == b"IEND":
            break
    if chunks[0][0] != b"IHDR":
        raise ValueError(f"broken PNG: the first chunk is {chunks[0][0]!r}, not IHDR")
    return chunks, pos


def _png_chunk(name: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", len(body), name) + body + struct.pack(">I", zlib.crc32(name + body))


def _png_is_xmp(data: bytes, name: bytes, start: int) -> bool:
    return name in (b"iTXt", b"tEXt", b"zTXt") and data[start + 8 : start + 9 + len(PNG_KEYWORD)] == PNG_KEYWORD + b"\0"


def _png_embed(data: bytes, xmp: bytes) -> bytes:
    chunks, iend = _png_chunks(data)
    # keyword, NUL, compression flag 0 and method 0, empty language tag and translated keyword
    itxt = _png_chunk(b"iTXt", PNG_KEYWORD + b"\0\0\0\0\0" + xmp)
    parts = [PNG_SIGNATURE]
    for index, (name, start, end) in enumerate(chunks):
        if not _png_is_xmp(data, name, start):
            parts.append(data[start:end])
        if index == 0:
            parts.append(itxt)
    parts.append(data[iend:])  # bytes after IEND are none of ours to drop
    return b"".join(parts)


def _png_extract(data: bytes) -> bytes | None:
    chunks, _ = _png_chunks(data)
    for name, start, end in chunks:
        if name != b"iTXt" or not _png_is_xmp(data, name, start):
            continue
        body = data[start + 8 : end - 4]
        rest = body[len(PNG_KEYWORD) + 1 :]
        if len(rest) < 2:
            raise ValueError("broken PNG: the XMP iTXt chunk is cut short")
        compressed = rest[0] == 1
        fields = rest[2:].split(b"\0", 2)  # language tag, translated keyword, text
        if len(fields) != 3:
            raise ValueError("broken PNG: the XMP iTXt chunk lacks its language or translated keyword")
        text = fields[2]
        if compressed:
            inflater = zlib.decompressobj()
            try:
                text = inflater.decompress(text, MAX_PACKET_BYTES)
            except zlib.error as exc:
                raise ValueError(f"broken PNG: the XMP iTXt chunk does not inflate: {exc}") from None
            if inflater.unconsumed_tail:
                raise ValueError(f"the XMP packet inflates to more than {MAX_PACKET_BYTES} bytes")
        return text
    return None


# -- JPEG -------------------------------------------------------------------------------------------
def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """(marker, start, end) of every segment between SOI and the first SOS, and where SOS starts."""
    segments: list[tuple[int, int, int]] = []
    pos = 2
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise ValueError(f"broken JPEG: no marker at byte {pos} before the image data")
        while pos + 2 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        marker = data[pos + 1]
        if marker == 0xDA:
            return segments, pos
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            segments.append((marker, pos, pos + 2))
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0x00):
            raise ValueError(f"broken JPEG: marker 0xFF{marker:02X} at byte {pos} before the image data")
        if pos + 4 > len(data):
            raise ValueError(f"broken JPEG: segment 0xFF{marker:02X} at byte {pos} is cut short")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError(f"broken JPEG: segment 0xFF{marker:02X} at byte {pos} has a bad length {length}")
        segments.append((marker, pos, end))
        pos = end


def _jpeg_is_xmp(data: bytes, marker: int, start: int) -> bool:
    body = data[start + 4 : start + 4 + len(JPEG_EXTENDED_HEADER)]
    return marker == 0xE1 and (body.startswith(JPEG_XMP_HEADER) or body.startswith(JPEG_EXTENDED_HEADER))


def _jpeg_embed(data: bytes, xmp: bytes) -> bytes:
    if len(xmp) > JPEG_MAX_PACKET:
        raise ValueError(f"the XMP packet is {len(xmp)} bytes; a JPEG APP1 segment holds at most {JPEG_MAX_PACKET}")
    segments, sos = _jpeg_segments(data)
    # extended XMP parts belong to the main packet being replaced, so they go with it
    kept = [(marker, start, end) for marker, start, end in segments if not _jpeg_is_xmp(data, marker, start)]
    at = 0
    while at < len(kept):
        marker, start, _ = kept[at]
        if not (marker == 0xE0 or (marker == 0xE1 and data[start + 4 : start + 10] == b"Exif\0\0")):
            break
        at += 1
    body = JPEG_XMP_HEADER + xmp
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    parts = [data[:2]] + [data[start:end] for _, start, end in kept[:at]] + [app1]
    parts += [data[start:end] for _, start, end in kept[at:]] + [data[sos:]]
    return b"".join(parts)


def _jpeg_extract(data: bytes) -> bytes | None:
    segments, _ = _jpeg_segments(data)
    for marker, start, end in segments:
        if marker == 0xE1 and data[start + 4 : start + 4 + len(JPEG_XMP_HEADER)] == JPEG_XMP_HEADER:
            return data[start + 4 + len(JPEG_XMP_HEADER) : end]
    return None


# -- WebP -------------------------------------------------------------------------------------------
def _webp_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(fourcc, payload start, payload end) of every chunk inside the RIFF."""
    (riff_size,) = struct.unpack("<I", data[4:8])
    riff_end = 8 + riff_size
    if riff_end > len(data):
        raise ValueError(f"broken WebP: the RIFF claims {riff_size} bytes, the file holds {len(data) - 8}")
    chunks: list[tuple[bytes, int, int]] = []
    pos = 12
    while pos < riff_end:
        if pos + 8 > riff_end:
            raise ValueError(f"broken WebP: a chunk header at byte {pos} is cut short")
        fourcc, size = struct.unpack("<4sI", data[pos : pos + 8])
        end = pos + 8 + size
        if end > riff_end:
            raise ValueError(f"broken WebP: chunk {fourcc!r} at byte {pos} runs past the RIFF")
        chunks.append((fourcc, pos + 8, end))
        pos = end + (size & 1)
    if not chunks or chunks[0][0] not in (b"VP8X", b"VP8 ", b"VP8L"):
        raise ValueError(f"broken WebP: the first chunk is {chunks[0][0] if chunks else None!r}, not VP8X, VP8 or VP8L")
    return chunks


def _webp_canvas(fourcc: bytes, payload: bytes) -> tuple[int, int, bool]:
    """Width, height and whether alpha is used, from a simple file's VP8 or VP8L bitstream header."""
    if fourcc == b"VP8 ":
        if len(payload) < 10 or payload[3:6] != b"\x9d\x01\x2a" or payload[0] & 1:
            raise ValueError("broken WebP: the VP8 bitstream does not start with a key frame")
        width, height = struct.unpack("<HH", payload[6:10])
        return width & 0x3FFF, height & 0x3FFF, False
    if len(payload) < 5 or payload[0] != 0x2F:
        raise ValueError("broken WebP: the VP8L bitstream lacks its signature")
    (bits,) = struct.unpack("<I", payload[1:5])
    if bits >> 29:
        raise ValueError(f"broken WebP: unknown VP8L version {bits >> 29}")
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)


def _webp_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return struct.pack("<4sI", fourcc, len(payload)) + payload + b"\0" * (len(payload) & 1)


def _webp_embed(data: bytes, xmp: bytes) -> bytes:
    chunks = _webp_chunks(data)
    first, start, end = chunks[0]
    parts: list[bytes] = []
    if first == b"VP8X":
        if end - start < 10:
            raise ValueError("broken WebP: the VP8X chunk is cut short")
        header = bytearray(data[start:end])
        header[0] |= _WEBP_FLAG_XMP
        parts.append(_webp_chunk(b"VP8X", bytes(header)))
        rest = chunks[1:]
    else:  # the other two kinds of first chunk were refused while walking the chunks
        width, height, alpha = _webp_canvas(first, data[start:end])
        flags = _WEBP_FLAG_XMP | (_WEBP_FLAG_ALPHA if alpha or any(c[0] == b"ALPH" for c in chunks) else 0)
        size = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
        parts.append(_webp_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + size))
        rest = chunks
    rest = [chunk for chunk in rest if chunk[0] != b"XMP "]
    # the spec's order: image data, EXIF, XMP, then chunks unknown to it
    at = max((index + 1 for index, chunk in enumerate(rest) if chunk[0] in _WEBP_KNOWN), default=0)
    parts += [_webp_chunk(fourcc, data[s:e]) for fourcc, s, e in rest[:at]]
    parts.append(_webp_chunk(b"XMP ", xmp))
    parts += [_webp_chunk(fourcc, data[s:e]) for fourcc, s, e in rest[at:]]
    body = b"WEBP" + b"".join(parts)
    if len(body) > 0xFFFFFFFE:
        raise ValueError("the WebP would be larger than a RIFF can hold")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_extract(data: bytes) -> bytes | None:
    for fourcc, start, end in _webp_chunks(data):
        if fourcc == b"XMP ":
            return data[start:end]
    return None


# -- GIF --------------------------------------------------------------------------------------------
def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise ValueError("broken GIF: data sub-blocks run past the end")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _gif_blocks(data: bytes) -> tuple[int, list[tuple[int, int, int]], int]:
    """Where the blocks start (after the global colour table), (label, start, end) of every extension
    (label 0x21xx) and image (0x2C), and where the trailer byte 0x3B is."""
    if len(data) < 13:
        raise ValueError("broken GIF: shorter than its header")
    pos = 13 + (3 * (2 << (data[10] & 7)) if data[10] & 0x80 else 0)
    first = pos
    blocks: list[tuple[int, int, int]] = []
    while True:
        if pos >= len(data):
            raise ValueError("broken GIF: no trailer byte 0x3B")
        introducer = data[pos]
        if introducer == 0x3B:
            return first, blocks, pos
        if introducer == 0x21 and pos + 2 <= len(data):
            end = _gif_sub_blocks_end(data, pos + 2)
            blocks.append((data[pos + 1], pos, end))
        elif introducer == 0x2C and pos + 11 <= len(data):
            flags = data[pos + 9]
            table = 3 * (2 << (flags & 7)) if flags & 0x80 else 0
            end = _gif_sub_blocks_end(data, pos + 10 + table + 1)  # +1: the LZW minimum code size
            blocks.append((0x2C, pos, end))
        else:
            raise ValueError(f"broken GIF: unexpected byte 0x{introducer:02X} at {pos}")
        pos = end


def _gif_is_xmp(data: bytes, label: int, start: int) -> bool:
    return label == 0xFF and data[start + 2 : start + 14] == b"\x0b" + GIF_APPLICATION


def _gif_embed(data: bytes, xmp: bytes) -> bytes:
    first, blocks, trailer = _gif_blocks(data)
    kept = [(label, start, end) for label, start, end in blocks if not _gif_is_xmp(data, label, start)]
    # before the first frame (its graphic control, plain text or image block): after the loop extension
    at = next((index for index, block in enumerate(kept) if block[0] in (0xF9, 0x01, 0x2C)), len(kept))
    extension = b"\x21\xff\x0b" + GIF_APPLICATION + xmp + GIF_MAGIC_TRAILER
    parts = [b"GIF89a", data[6:first]]  # extensions are GIF89a's: an 87a header must say so
    parts += [data[start:end] for _, start, end in kept[:at]] + [extension]
    parts += [data[start:end] for _, start, end in kept[at:]] + [data[trailer:]]
    return b"".join(parts)


def _gif_extract(data: bytes) -> bytes | None:
    _, blocks, _ = _gif_blocks(data)
    for label, start, end in blocks:
        if _gif_is_xmp(data, label, start):
            raw = data[start + 14 : end]
            if raw.endswith(GIF_MAGIC_TRAILER):
                return raw[: -len(GIF_MAGIC_TRAILER)]
            close = raw.find(b"?>", raw.rfind(b"<?xpacket end"))  # a writer that skipped the trailer
            return raw[: close + 2] if close >= 0 else raw[:-1]
    return None


# -- ISO BMFF (MP4, MOV) ----------------------------------------------------------------------------
def _bmff_boxes(data: bytes) -> list[tuple[bytes, int, int, int]]:
    """(type, start, payload start, end) of every top-level box; a uuid box's payload starts after its UUID."""
    boxes: list[tuple[bytes, int, int, int]] = []
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"broken MP4: a box header at byte {pos} is cut short")
        size, name = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > len(data):
                raise ValueError(f"broken MP4: box {name!r} at byte {pos} is cut short")
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:  # runs to the end of the file
            size = len(data) - pos
        if name == b"uuid":
            header += 16
        if size < header or pos + size > len(data):
            raise ValueError(f"broken MP4: box {name!r} at byte {pos} has a bad size {size}")
        boxes.append((name, pos, pos + header, pos + size))
        pos += size
    return boxes


def _bmff_is_xmp(data: bytes, name: bytes, payload: int) -> bool:
    return name == b"uuid" and data[payload - 16 : payload] == BMFF_XMP_UUID


def _bmff_embed(data: bytes, xmp: bytes) -> bytes:
    boxes = _bmff_boxes(data)
    out = bytearray(data)
    while boxes and _bmff_is_xmp(data, boxes[-1][0], boxes[-1][2]):
        del out[boxes.pop()[1] :]  # an old packet at the end: nothing follows it, so it can simply go
    for name, start, payload, end in boxes:
        if _bmff_is_xmp(data, name, payload):
            # an old packet before other boxes cannot be cut out without moving them (and breaking the
            # chunk offsets into mdat): it becomes a 'free' box of the same size, its bytes blanked
            size_bytes = 16 if data[start : start + 4] == b"\0\0\0\1" else 8
            out[start + 4 : start + 8] = b"free"
            out[start + size_bytes : end] = bytes(end - start - size_bytes)
    if boxes and data[boxes[-1][1] : boxes[-1][1] + 4] == b"\0\0\0\0":
        # the last box ran "to the end of the file": once a box follows it, it must state its size
        name, start, _, end = boxes[-1]
        if end - start > 0xFFFFFFFF:
            raise ValueError(f"the last box {name!r} is too large to be given a 32-bit size")
        out[start : start + 4] = struct.pack(">I", end - start)
    if len(xmp) + 24 > 0xFFFFFFFF:
        raise ValueError("the XMP packet is too large for a box")
    out += struct.pack(">I4s", len(xmp) + 24, b"uuid") + BMFF_XMP_UUID + xmp
    return bytes(out)


def _bmff_extract(data: bytes) -> bytes | None:
    for name, _, payload, end in _bmff_boxes(data):
        if _bmff_is_xmp(data, name, payload):
            return data[payload:end]
    return None
