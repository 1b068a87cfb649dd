"""Links a prompt may name with ``{image:https://...}``: which hosts the server allows, and fetching
one picture safely.

The server must not become a way into the user's network, so the host is resolved once, every address
is checked, and the connection goes to that checked address (no second lookup a rebinding DNS server
could answer differently), with size, time and pixel limits and only a few raster formats decoded."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from PIL import Image

from ..errors import BadRequest
from .pictures import MAX_REFERENCE_PIXELS, READABLE_FORMATS, decode_picture

log = logging.getLogger(__name__)

MAX_LINK_BYTES = 20 * 2**20
LINK_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


# -- which links may be fetched -------------------------------------------------------------
@dataclass(frozen=True)
class UrlPolicy:
    """The hosts image links may reach (``--image-url-allow``). A listed host may resolve anywhere,
    private addresses included; with ``any_public`` other hosts may be reached at public addresses."""

    hosts: frozenset[str] = frozenset()
    any_public: bool = False

    @classmethod
    def from_flag(cls, flag: str) -> UrlPolicy:
        """``""``: links off; ``"a.com,b.org"``: those hosts; ``"*"``: any public address (may be combined)."""
        hosts: set[str] = set()
        any_public = False
        for entry in (part.strip() for part in flag.split(",")):
            if entry == "*":
                any_public = True
            elif entry:
                host = _normal_host(entry)
                if host is None:
                    raise ValueError(
                        f"--image-url-allow: {entry!r} is not a host name or IP address; give host names "
                        "separated by commas (no scheme, port or path), or * for any public address"
                    )
                hosts.add(host)
        return cls(frozenset(hosts), any_public)

    @property
    def enabled(self) -> bool:
        return bool(self.hosts) or self.any_public

    def describe(self) -> str:
        named = ", ".join(sorted(self.hosts))
        if self.any_public:
            return f"{named} and any public address" if named else "any public address"
        return named or "none"


def _normal_host(text: str) -> str | None:
    """A host name in the form it is compared in (lower case, IDNA, IP addresses compressed), or None."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        name = bare.rstrip(".").lower().encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return None
    return name


def address_problem(address: str) -> str | None:
    """Why an address is no public one ("loopback", "private", ...), or None when it is public.
    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by the IPv4 they reach."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # "%eth0": a link-local zone
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return "private (local NAT64)"
        inner = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if inner is not None:
            return address_problem(str(inner))
        if ip.sixtofour is not None and (problem := address_problem(str(ip.sixtofour))):
            return problem
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),  # shared carrier-grade NAT space and the like
    )
    return next((name for name, hit in checks if hit), None)


# -- fetching a link ------------------------------------------------------------------------
def fetch_image(
    url: str,
    policy: UrlPolicy,
    max_bytes: int = MAX_LINK_BYTES,
    timeout_s: float = LINK_TIMEOUT_S,
    *,
    max_pixels: int = MAX_REFERENCE_PIXELS,
    max_redirects: int = MAX_REDIRECTS,
    tls_context: ssl.SSLContext | None = None,
) -> Image.Image:
    """The picture at ``url`` as RGB, if the policy allows every hop and it fits the limits: at most
    ``max_bytes`` read, ``timeout_s`` for everything (lookups, redirects, reading), ``max_redirects``
    redirects. ``tls_context`` replaces the system's certificate checks (a private CA, tests)."""
    if not policy.enabled:
        raise BadRequest(f"image links are off, {url} was not fetched: the server allows them with --image-url-allow")
    started = time.monotonic()
    current = url
    with _Deadline(timeout_s, url) as deadline:
        for _ in range(max_redirects + 1):
            target = _check_link(current, policy, deadline)
            status, reason, location, body = _get(target, deadline, max_bytes, tls_context)
            if status not in _REDIRECTS:
                break
            if not location:
                raise BadRequest(f"{current} answered HTTP {status} without saying where to go")
            current = urljoin(current, location.strip())
        else:
            raise BadRequest(f"{url} redirects more than {max_redirects} times: stopped before {current}")
    if status != 200:
        raise BadRequest(f"{current} answered HTTP {status} {reason}: no image there")
    image = decode_picture(body, current, max_pixels, READABLE_FORMATS)
    log.info("fetched a reference image from %s: %d bytes in %.2f s", current, len(body), time.monotonic() - started)
    return image


class _Deadline:
    """The one time limit of a fetch. Socket timeouts count per read, so a server that trickles a byte
    at a time (headers included) would never trip them: at the deadline a timer shuts the sockets
    down, which makes a blocked read return at once."""

    def __init__(self, seconds: float, url: str) -> None:
        self.seconds, self.url, self.end = seconds, url, time.monotonic() + seconds
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> BadRequest:
        return BadRequest(f"{self.url} took longer than {self.seconds:g} s to download: too slow")

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # the plain socket's shutdown, also for TLS ones: it leaves the TLS object to the reading thread.
    # OSError: already closed, or handed over to TLS.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(frozen=True)
class _Target:
    url: str
    https: bool
    host: str
    port: int
    path: str
    addresses: tuple[tuple[Any, ...], ...]  # socket addresses, all checked against the policy


def _check_link(url: str, policy: UrlPolicy, deadline: _Deadline) -> _Target:
    """Parse a link, resolve its host once and check the host and every address against the policy."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"{url!r} is not a valid link ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest(f"only http and https links are fetched, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise BadRequest(f"links with a user name or password are not fetched: {url!r}")
    host = _normal_host(parts.hostname or "")
    if host is None:
        raise BadRequest(f"{url!r} has no valid host name")
    listed = host in policy.hosts
    if not listed and not policy.any_public:
        raise BadRequest(f"{url}: host {host} is not allowed for image links (allowed: {policy.describe()})")
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port, deadline)
    if not listed:  # a listed host may be private on purpose (a NAS, a local server)
        for sockaddr in addresses:
            if problem := address_problem(sockaddr[0]):
                raise BadRequest(
                    f"{url}: {host} is at {sockaddr[0]}, a {problem} address; image links reach only public "
                    "addresses unless the host is listed in --image-url-allow"
                )
    path = quote(parts.path or "/", safe="/%!$&'()*+,;=:@-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/?%!$&'()*+,;=:@-._~")
    return _Target(url, scheme == "https", host, port, path, addresses)


def _resolve(host: str, port: int, deadline: _Deadline) -> tuple[tuple[Any, ...], ...]:
    """The host's socket addresses, looked up once, on a thread so a slow resolver meets the deadline."""
    answer: list[Any] = []

    def look_up() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP))
        except (OSError, UnicodeError) as exc:
            answer.append(exc)

    thread = threading.Thread(target=look_up, name="atelier-resolve", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if not answer:
        raise deadline.expired()
    if isinstance(answer[0], Exception):
        raise BadRequest(f"cannot find the address of {host}: {answer[0]}")
    found = [info[4] for info in answer[0] if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not found:
        raise BadRequest(f"{host} has no IPv4 or IPv6 address")
    return tuple(dict.fromkeys(found))


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP, or HTTPS with ``tls``, to ``target.host`` (kept in the Host header, SNI and the certificate
    check) at the addresses checked beforehand: it looks nothing up itself."""

    def __init__(self, target: _Target, deadline: _Deadline, tls: ssl.SSLContext | None) -> None:
        super().__init__(target.host, target.port, timeout=deadline.left())
        self._pinned, self._deadline, self._tls = target.addresses, deadline, tls
        if tls is not None:
            self.default_port = 443  # which the Host header leaves out

    def connect(self) -> None:
        sock = self._open()
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
            self._deadline.watch(sock)
        self.sock = sock

    def _open(self) -> socket.socket:
        error: OSError | None = None
        for sockaddr in self._pinned:
            sock = socket.socket(socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET, socket.SOCK_STREAM)
            self._deadline.watch(sock)
            try:
                sock.settimeout(self.timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError("no address to connect to")


def _get(
    target: _Target, deadline: _Deadline, max_bytes: int, tls: ssl.SSLContext | None
) -> tuple[int, str, str | None, bytes]:
    """One GET: status, reason, Location, and the body of a 200 answer (at most ``max_bytes``)."""
    too_big = f"{target.url} is larger than {max_bytes / 2**20:g} MB: too big"
    conn = _PinnedConnection(target, deadline, (tls or ssl.create_default_context()) if target.https else None)
    try:
        conn.request(
            "GET", target.path, headers={"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "Atelier"}
        )
        response = conn.getresponse()
        if response.status != 200:
            return response.status, response.reason, response.getheader("Location"), b""
        declared = (response.getheader("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            raise BadRequest(f"{too_big} (it says {int(declared) / 2**20:.1f} MB)")
        body = bytearray()
        while chunk := response.read1(_CHUNK):
            body += chunk
            if len(body) > max_bytes:  # the declared length may be absent or wrong
                raise BadRequest(f"{too_big}; the download was stopped")
    except (OSError, http.client.HTTPException) as exc:
        if deadline.fired or isinstance(exc, TimeoutError):
            raise deadline.expired() from exc
        raise BadRequest(f"{target.url} could not be downloaded: {exc}") from exc
    finally:
        conn.close()
    if deadline.fired:  # a cut-off body without a length reads as a complete one
        raise deadline.expired()
    return 200, response.reason, None, bytes(body)
