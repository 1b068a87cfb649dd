"""Where a reference image comes from: prompt tags, named pictures, links, and the reference store.

Links are served by an in-process HTTP server on 127.0.0.1 (and a TLS one with a certificate made for
a test host name); the tests that must reach it list 127.0.0.1, or a test host name that a patched
``socket.getaddrinfo`` maps to it. Nothing leaves the machine.
"""

from __future__ import annotations

import http.server
import io
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from conftest import free_port, pixels
from PIL import Image

from pipelines.errors import BadRequest
from pipelines.guidance import sources
from pipelines.guidance.links import UrlPolicy, address_problem, fetch_image
from pipelines.guidance.sources import FetchLimits, ImageTag, ReferenceStore, resolve_reference, split_image_tags
from pipelines.outputs import OutputStore

LOCAL = UrlPolicy.from_flag("127.0.0.1")
INFOTEXT = "a fox\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 7, Size: 16x16"


def _picture(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


RED_PNG = _png(_picture((220, 20, 20)))


# -- the test servers -----------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.server.seen[url.path] = self.headers.get("Host")
        route = url.path.split("/")[1]
        routes: dict[str, Callable[[], None]] = {
            "red.png": lambda: self._send(200, RED_PNG),
            "text": lambda: self._send(200, b"hello, not a picture", "text/plain"),
            "redirect": lambda: self._redirect(parse_qs(url.query)["to"][0]),
            "hops": lambda: self._hops(int(url.path.split("/")[2])),
            "declared-big": lambda: self._send_head(200, {"Content-Length": str(30 * 2**20)}),
            "unannounced": self._unannounced,
            "chunked": self._chunked,
            "lying-length": lambda: self._send(200, RED_PNG * 100, length=60),
            "trickle": self._trickle,
            "trickle-headers": self._trickle_headers,
        }
        routes.get(route, lambda: self._send(404, b"not here", "text/plain"))()

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Connection": "close", **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, kind: str = "image/png", length: int | None = None) -> None:
        self._send_head(status, {"Content-Type": kind, "Content-Length": str(len(body) if length is None else length)})
        self.wfile.write(body)

    def _redirect(self, to: str) -> None:
        self._send_head(302, {"Location": to, "Content-Length": "0"})

    def _hops(self, left: int) -> None:
        if left > 0:
            self._redirect(f"/hops/{left - 1}")
        else:
            self._send(200, RED_PNG)

    def _unannounced(self) -> None:  # no length: the body ends when the connection closes
        self._send_head(200, {"Content-Type": "image/png"})
        self._write_quietly(RED_PNG + bytes(50_000))

    def _chunked(self) -> None:
        self._send_head(200, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
        self._write_quietly(b"".join(b"1000\r\n" + bytes(0x1000) + b"\r\n" for _ in range(20)) + b"0\r\n\r\n")

    def _trickle(self) -> None:
        self._send_head(200, {"Content-Type": "image/png", "Content-Length": str(len(RED_PNG))})
        self._drip(RED_PNG)

    def _trickle_headers(self) -> None:
        self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"x" * 500)

    def _drip(self, data: bytes) -> None:
        for byte in data[:100]:  # one byte every 50 ms: 5 s in all, far past the tests' deadlines
            if not self._write_quietly(bytes([byte])):
                return
            time.sleep(0.05)

    def _write_quietly(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:  # the client hung up, as it should on refusing
            return False


class _Server(http.server.ThreadingHTTPServer):
    seen: dict[str, str | None]  # path -> the Host header it was asked for with

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses a certificate or hangs up mid-answer is what the tests want


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[tuple[_Server, int]]:
    port = free_port()
    server = _Server(("127.0.0.1", port), _Handler)
    server.seen = {}
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[tuple[_Server, int]]:
    yield from _serve()


@pytest.fixture
def base(http_server: tuple[_Server, int]) -> str:
    return f"http://127.0.0.1:{http_server[1]}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``pinned.test``."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=pinned.test", "-addext", "subjectAltName=DNS:pinned.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def https_port(certificate: tuple[Path, Path]) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    for _, port in _serve(context):
        yield port


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Test host names -> the addresses successive lookups answer (the last one repeats); counts lookups
    in ``answers["calls"]``. Other names go to the real resolver."""
    answers: dict[str, list[str]] = {"calls": []}
    real = socket.getaddrinfo

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        answers["calls"].append(host)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return answers


def _refused(call: Callable[[], Any], *words: str) -> str:
    with pytest.raises(BadRequest) as caught:
        call()
    message = str(caught.value)
    for word in words:
        assert word in message, message
    return message


# -- tags -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "text", "tag"),
    [
        ("a circle, {image}", "a circle", ImageTag("tab", "", "{image}")),
        ("{image}, a circle", "a circle", ImageTag("tab", "", "{image}")),
        ("a, {image}, b", "a, b", ImageTag("tab", "", "{image}")),
        ("a {Image} circle", "a circle", ImageTag("tab", "", "{Image}")),
        ("red, { IMAGE : 00012-7.png }", "red", ImageTag("name", "00012-7.png", "{ IMAGE : 00012-7.png }")),
        ("{image:https://h.org/x.png?a=1} fox", "fox", ImageTag("url", "https://h.org/x.png?a=1", "{image:https://h.org/x.png?a=1}")),
        ("a,\n{image}, b", "a,\nb", ImageTag("tab", "", "{image}")),
    ],
)  # fmt: skip
def test_tags_are_found_and_removed(prompt: str, text: str, tag: ImageTag) -> None:
    assert split_image_tags(prompt) == (text, [tag])


def test_other_braces_stay() -> None:
    prompt = "a {red|blue} fox, {image|photo}, {image:a|b}, {images}  twice"
    assert split_image_tags(prompt) == (prompt, [])


def test_every_tag_is_reported() -> None:
    text, tags = split_image_tags("{image} a fox {image:b.png}")
    assert text == "a fox"
    assert [tag.kind for tag in tags] == ["tab", "name"]


# -- resolving ------------------------------------------------------------------------------
@pytest.fixture
def stores(tmp_path: Path) -> tuple[OutputStore, ReferenceStore]:
    root = tmp_path / "outputs"
    return OutputStore(root), ReferenceStore(root)


def _resolve(prompt: str, stores: tuple[OutputStore, ReferenceStore], tab: Image.Image | None = None, **kw: Any) -> Any:
    outputs, store = stores
    return resolve_reference(prompt, tab, outputs=outputs, store=store, policy=kw.pop("policy", LOCAL), **kw)


def test_no_tag_and_no_upload_is_no_reference(stores: tuple[OutputStore, ReferenceStore]) -> None:
    assert _resolve("a fox, {red|blue}", stores) == ("a fox, {red|blue}", None)


def test_the_tab_upload_is_used_without_a_tag_upright_and_rgb(stores: tuple[OutputStore, ReferenceStore]) -> None:
    upload = Image.new("RGBA", (8, 4), (0, 0, 255, 255))
    upload.putpixel((0, 0), (0, 0, 0, 0))  # transparent: becomes white, not black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    buffer = io.BytesIO()
    upload.save(buffer, format="PNG", exif=exif.tobytes())
    text, resolved = _resolve("a fox", stores, Image.open(buffer))
    assert (text, resolved.label, resolved.kind) == ("a fox", "tab upload", "tab")
    assert (resolved.image.mode, resolved.image.size) == ("RGB", (4, 8))
    assert resolved.image.getpixel((3, 0)) == (255, 255, 255)  # the top-left corner, turned to the top right
    assert resolved.image.getpixel((0, 7)) == (0, 0, 255)


def test_the_tab_tag_needs_an_upload(stores: tuple[OutputStore, ReferenceStore]) -> None:
    _refused(lambda: _resolve("a fox, {image}", stores), "{image}", "none was uploaded")
    text, resolved = _resolve("a fox, {image}", stores, _picture((1, 2, 3)))
    assert (text, resolved.label) == ("a fox", "tab upload")


def test_one_reference_per_picture(stores: tuple[OutputStore, ReferenceStore]) -> None:
    _refused(
        lambda: _resolve("{image} and {image:x.png}", stores, _picture((0, 0, 0))), "found 2 tags", "{image:x.png}"
    )


def test_a_gallery_picture_by_name(stores: tuple[OutputStore, ReferenceStore]) -> None:
    outputs, _ = stores
    saved = outputs.save(_picture((10, 200, 30)), INFOTEXT, {}, seed=7)
    for written in (saved.name, saved.stem):
        text, resolved = _resolve(f"a fox, {{image:{written}}}", stores, _picture((0, 0, 0)))  # the tag wins
        assert text == "a fox"
        assert resolved.label == f"gallery {saved.parent.name}/{saved.name}"
        assert np.array_equal(pixels(resolved.image), pixels(_picture((10, 200, 30))))


def test_the_newest_picture_of_a_name_wins(stores: tuple[OutputStore, ReferenceStore]) -> None:
    outputs, _ = stores
    older = outputs.save(_picture((255, 0, 0)), INFOTEXT, {}, seed=7)
    moved = outputs.root / "2020-01-01" / older.name
    moved.parent.mkdir()
    older.rename(moved)
    os.utime(moved, (time.time() - 3600, time.time() - 3600))
    newer = outputs.save(_picture((0, 0, 255)), INFOTEXT, {}, seed=7)
    assert newer.name == moved.name
    assert _resolve(f"{{image:{newer.name}}}", stores)[1].image.getpixel((0, 0)) == (0, 0, 255)
    os.utime(newer, (time.time() - 7200, time.time() - 7200))
    assert _resolve(f"{{image:{newer.name}}}", stores)[1].image.getpixel((0, 0)) == (255, 0, 0)


def test_a_stored_reference_by_name(stores: tuple[OutputStore, ReferenceStore]) -> None:
    short = stores[1].put(_picture((5, 6, 7)))
    text, resolved = _resolve(f"{{image:{short}.png}}, a fox", stores)
    assert (text, resolved.label, resolved.kind) == ("a fox", f"reference {short}.png", "reference")
    assert resolved.image.getpixel((0, 0)) == (5, 6, 7)


def test_an_unknown_name_is_refused(stores: tuple[OutputStore, ReferenceStore]) -> None:
    stores[0].save(_picture((1, 1, 1)), INFOTEXT, {}, seed=7)
    _refused(lambda: _resolve("{image:nothing.png}", stores), "'nothing.png'", "no picture named")


@pytest.mark.parametrize("name", ["../secret.png", "../../secret.png", "day/secret.png", "/tmp/secret.png", "..",
                                  "C:\\secret.png", "..\\secret.png", "secret..png"])  # fmt: skip
def test_names_cannot_leave_the_folders(stores: tuple[OutputStore, ReferenceStore], name: str) -> None:
    outputs, _ = stores
    outputs.root.mkdir(parents=True)
    _picture((9, 9, 9)).save(outputs.root.parent / "secret.png")
    _refused(lambda: _resolve(f"{{image:{name}}}", stores), "without folders", repr(name))


def test_a_link_tag_fetches_and_is_removed(stores: tuple[OutputStore, ReferenceStore], base: str) -> None:
    text, resolved = _resolve(f"a fox, {{image:{base}/red.png}}", stores)
    assert (text, resolved.label, resolved.kind) == ("a fox", f"{base}/red.png", "url")
    assert resolved.image.getpixel((3, 3)) == (220, 20, 20)


def test_link_limits_reach_the_fetch(stores: tuple[OutputStore, ReferenceStore], base: str) -> None:
    limits = FetchLimits(max_pixels=100)
    _refused(lambda: _resolve(f"{{image:{base}/red.png}}", stores, fetch_limits=limits), "16x16", "100 pixels")


# -- the reference store --------------------------------------------------------------------
def test_the_same_picture_is_kept_once(stores: tuple[OutputStore, ReferenceStore]) -> None:
    outputs, store = stores
    grey = Image.new("L", (16, 16), 90)
    first = store.put(grey)
    again = store.put(Image.new("RGB", (16, 16), (90, 90, 90)))  # the same pixels in another mode
    other = store.put(_picture((90, 90, 91)))
    assert first == again != other
    assert len(first) == 16 and int(first, 16) >= 0
    assert sorted(p.name for p in store.folder.iterdir()) == sorted([f"{first}.png", f"{other}.png"])
    assert store.get(first.upper()).getpixel((0, 0)) == (90, 90, 90)
    assert outputs.page()[1] == 0  # the gallery does not show references


def test_puts_from_many_threads_write_one_file(stores: tuple[OutputStore, ReferenceStore]) -> None:
    store = stores[1]
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    hashes: list[str] = []
    threads = [threading.Thread(target=lambda: hashes.append(store.put(picture))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(hashes)) == 1 and len(hashes) == 8
    assert [p.name for p in store.folder.iterdir()] == [f"{hashes[0]}.png"]
    assert np.array_equal(pixels(store.get(hashes[0])), pixels(picture))


def test_a_failed_write_leaves_nothing(
    stores: tuple[OutputStore, ReferenceStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores[1]

    def full_disk(self: Image.Image, file: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(Image.Image, "save", full_disk)
        with pytest.raises(OSError, match="No space"):
            store.put(_picture((1, 2, 3)))
    assert list(store.folder.iterdir()) == []
    short = store.put(_picture((1, 2, 3)))
    assert store.get(short).getpixel((0, 0)) == (1, 2, 3)


def test_an_existing_file_is_never_overwritten(stores: tuple[OutputStore, ReferenceStore]) -> None:
    store = stores[1]
    short = sources.pixel_hash(_picture((4, 4, 4)))[:16]
    store.folder.mkdir(parents=True)
    (store.folder / f"{short}.png").write_bytes(RED_PNG)
    assert store.put(_picture((4, 4, 4))) == short
    assert (store.folder / f"{short}.png").read_bytes() == RED_PNG
    _refused(lambda: store.get(short), "damaged")


@pytest.mark.parametrize(
    ("short", "words"),
    [("", ("16 hexadecimal digits", "''")), ("xyz", ("16 hexadecimal digits", "'xyz'")),
     ("0123456789abcdeg", ("hexadecimal",)), ("0123456789abcdef0", ("hexadecimal",)),
     ("../../etc/passwd", ("hexadecimal", "../../etc/passwd")), ("0123456789abcdef", ("no reference image",))],
)  # fmt: skip
def test_bad_or_unknown_hashes_are_refused(
    stores: tuple[OutputStore, ReferenceStore], short: str, words: tuple[str, ...]
) -> None:
    stores[1].put(_picture((8, 8, 8)))
    _refused(lambda: stores[1].get(short), *words)


def test_links_in_the_store_are_not_followed(stores: tuple[OutputStore, ReferenceStore], tmp_path: Path) -> None:
    store = stores[1]
    outside = tmp_path / "outside.png"
    _picture((4, 5, 6)).save(outside)
    short = sources.pixel_hash(_picture((4, 5, 6)))[:16]
    store.folder.mkdir(parents=True)
    (store.folder / f"{short}.png").symlink_to(outside)
    _refused(lambda: store.get(short), "no reference image")
    assert store.uploads() == []


def test_uploads_are_listed_newest_first(stores: tuple[OutputStore, ReferenceStore]) -> None:
    store = stores[1]
    old, new = store.put(_picture((1, 0, 0))), store.put(_picture((2, 0, 0)))
    os.utime(store.folder / f"{old}.png", (time.time() - 60, time.time() - 60))
    (store.folder / ".writing-x.png").write_bytes(b"")
    assert [p.name for p in store.uploads()] == [f"{new}.png", f"{old}.png"]


# -- which links may be fetched -------------------------------------------------------------
def test_the_flag_is_read() -> None:
    assert UrlPolicy.from_flag("") == UrlPolicy(frozenset(), False)
    assert not UrlPolicy.from_flag(" , ").enabled
    policy = UrlPolicy.from_flag(" Example.COM, cdn.example.org. ,*, [::1], 127.0.0.1")
    assert policy == UrlPolicy(frozenset({"example.com", "cdn.example.org", "::1", "127.0.0.1"}), True)


@pytest.mark.parametrize("flag", ["https://a.com", "a.com:8080", "a com", "*.a.com", "a.com/x"])
def test_the_flag_refuses_what_is_no_host(flag: str) -> None:
    with pytest.raises(ValueError, match="is not a host name"):
        UrlPolicy.from_flag(flag)


@pytest.mark.parametrize(
    ("address", "problem"),
    [("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.9", "private"),
     ("172.16.0.1", "private"), ("fc00::1", "private"), ("169.254.169.254", "link-local"), ("fe80::1%lo", "link-local"),
     ("224.0.1.1", "multicast"), ("0.0.0.0", "unspecified"), ("100.64.0.1", "non-public"),
     ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
     ("2002:c0a8:1::1", "private"), ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
     ("64:ff9b::808:808", None)],
)  # fmt: skip
def test_addresses_are_judged(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


def test_links_are_off_without_the_flag(base: str) -> None:
    _refused(lambda: fetch_image(f"{base}/red.png", UrlPolicy.from_flag("")), "links are off", "--image-url-allow")


def test_a_listed_host_is_fetched(base: str) -> None:
    image = fetch_image(f"{base}/red.png", LOCAL)
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (16, 16), (220, 20, 20))


@pytest.mark.parametrize(
    ("link", "words"),
    [("http://127.0.0.1:{port}/loop-{n}", ("127.0.0.1", "loopback")),
     ("http://localhost:{port}/loop-{n}", ("localhost", "loopback")),
     ("http://2130706433:{port}/loop-{n}", ("127.0.0.1", "loopback")),  # 127.0.0.1 written as one number
     ("http://[::ffff:127.0.0.1]:{port}/loop-{n}", ("loopback",))],
)  # fmt: skip
def test_loopback_is_refused_unless_listed(http_server: Any, link: str, words: tuple[str, ...]) -> None:
    server, port = http_server
    url = link.format(port=port, n=time.monotonic_ns())
    _refused(lambda: fetch_image(url, UrlPolicy.from_flag("*")), *words, "only public")
    assert urlsplit(url).path not in server.seen  # refused before connecting


def test_private_addresses_are_refused_with_any_public(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["nas.test"] = ["192.168.1.20"]
    _refused(lambda: fetch_image("http://nas.test/x.png", UrlPolicy.from_flag("*")), "192.168.1.20", "private")


def test_unlisted_hosts_are_refused(base: str) -> None:
    _refused(lambda: fetch_image(f"{base}/red.png", UrlPolicy.from_flag("example.com")), "127.0.0.1", "not allowed")


@pytest.mark.parametrize("link", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "gopher://127.0.0.1:70/"])
def test_only_http_and_https(link: str) -> None:
    _refused(lambda: fetch_image(link, LOCAL), "only http and https")


def test_links_with_credentials_are_refused(http_server: Any) -> None:
    _refused(lambda: fetch_image(f"http://me:pw@127.0.0.1:{http_server[1]}/red.png", LOCAL), "user name or password")


def test_the_host_is_looked_up_once_and_the_name_kept(http_server: Any, fake_dns: dict[str, list[str]]) -> None:
    server, port = http_server
    fake_dns["pinned.test"] = ["127.0.0.1", "10.66.66.66"]  # a second lookup would answer elsewhere
    image = fetch_image(f"http://pinned.test:{port}/red.png", UrlPolicy.from_flag("pinned.test"))
    assert image.getpixel((0, 0)) == (220, 20, 20)
    assert fake_dns["calls"] == ["pinned.test"]
    assert server.seen["/red.png"] == f"pinned.test:{port}"


def test_tls_checks_the_certificate_against_the_name(
    https_port: int, certificate: tuple[Path, Path], fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["pinned.test"] = fake_dns["other.test"] = ["127.0.0.1"]
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    policy = UrlPolicy.from_flag("pinned.test,other.test")
    image = fetch_image(f"https://pinned.test:{https_port}/red.png", policy, tls_context=trust)
    assert image.getpixel((0, 0)) == (220, 20, 20)
    _refused(lambda: fetch_image(f"https://other.test:{https_port}/red.png", policy, tls_context=trust), "certificate")
    _refused(lambda: fetch_image(f"https://pinned.test:{https_port}/red.png", policy), "certificate")


# -- what a fetch refuses -------------------------------------------------------------------
def test_a_declared_oversize_is_refused_before_reading(base: str) -> None:
    _refused(lambda: fetch_image(f"{base}/declared-big", LOCAL), "larger than 20 MB", "too big", "30.0 MB")


@pytest.mark.parametrize("route", ["unannounced", "chunked"])
def test_an_oversize_without_a_length_is_cut(base: str, route: str) -> None:
    _refused(lambda: fetch_image(f"{base}/{route}", LOCAL, max_bytes=20_000), "too big", "stopped")
    assert fetch_image(f"{base}/unannounced", LOCAL, max_bytes=100_000).getpixel((0, 0)) == (220, 20, 20)


def test_a_lying_length_reads_no_further(base: str) -> None:
    _refused(lambda: fetch_image(f"{base}/lying-length", LOCAL, max_bytes=20_000), "not an image")


@pytest.mark.parametrize("route", ["trickle", "trickle-headers"])
def test_a_slow_server_is_cut_at_the_deadline(base: str, route: str) -> None:
    started = time.monotonic()
    _refused(lambda: fetch_image(f"{base}/{route}", LOCAL, timeout_s=0.5), "longer than 0.5 s", "too slow")
    assert time.monotonic() - started < 1.5


def test_what_is_no_image_is_refused(base: str) -> None:
    _refused(lambda: fetch_image(f"{base}/text", LOCAL), "not an image", "PNG, JPEG")


def test_http_errors_are_named(base: str) -> None:
    _refused(lambda: fetch_image(f"{base}/missing.png", LOCAL), "HTTP 404", "/missing.png")


def test_redirects_are_followed_up_to_three(base: str) -> None:
    assert fetch_image(f"{base}/hops/3", LOCAL).getpixel((0, 0)) == (220, 20, 20)
    _refused(lambda: fetch_image(f"{base}/hops/4", LOCAL), "redirects more than 3 times")


def test_a_redirect_is_checked_like_the_link(base: str) -> None:
    to_private = f"{base}/redirect?to=http://10.0.0.1/x.png"
    _refused(lambda: fetch_image(to_private, UrlPolicy.from_flag("127.0.0.1,*")), "10.0.0.1", "private")
    to_unlisted = f"{base}/redirect?to=http://localhost:{urlsplit(base).port}/red.png"
    _refused(lambda: fetch_image(to_unlisted, LOCAL), "localhost", "not allowed")
