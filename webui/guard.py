"""The checks every HTTP request passes before Gradio or the REST API sees it.

- ``Host`` must be a name this server answers to: a page on a rebound DNS name (DNS rebinding)
  then cannot reach a server on 127.0.0.1 or the LAN.
- A browser's ``Origin`` must be the server's own (or one allowed with ``--cors-allow-origins``):
  a web page elsewhere cannot drive the API with "simple" requests that need no CORS preflight.
  Requests without ``Origin`` come from scripts and clients (webuiapi, gradio_client), not pages.
- A body sent to the REST API must be declared JSON, so only a preflighted request can carry one.
- Failed logins (page form and REST basic auth) slow down per client address, and are logged.
- One upload request carries at most ``max_upload_files`` files.
- Before a login, the page does not describe the app's endpoints.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_UPLOAD_FILES = 20  # the page uploads one picture at a time; scripts can send more requests
FREE_FAILURES = 5  # failed logins from one address before each further attempt must wait
MAX_LOGIN_DELAY = 300.0  # seconds: the wait doubles per failure up to this
FORGET_FAILURES_AFTER = 3600.0  # seconds without a failure after which an address starts afresh
_API_INFO = re.compile(rb"(<script>window\.gradio_api_info = ).*?(;</script>)", re.DOTALL)
_NO_API_INFO = rb'\1{"named_endpoints": {}, "unnamed_endpoints": {}}\2'


class LoginBrake:
    """Failed logins per client address: after ``FREE_FAILURES`` in a row, the next attempt from that
    address is answered only after 1 s, then 2 s, 4 s ... (up to ``MAX_LOGIN_DELAY``). Attempts in the
    wait are refused unheard, right password or not, and an attempt counts from the moment it is let
    through, so guesses sent in parallel get no more tries than guesses sent one by one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (failures in a row, when the last was)
        self._lock = threading.Lock()  # REST auth runs in worker threads, the login form on the event loop

    def admit(self, address: str) -> float:
        """Seconds ``address`` must still wait (its attempt is refused unheard), or 0: the attempt goes
        ahead and counts as a failure until ``succeeded`` clears it, so guesses sent in parallel are
        all counted before any of them is answered."""
        now = self._clock()
        with self._lock:
            count, last = self._failures.get(address, (0, now))
            if now - last > FORGET_FAILURES_AFTER:
                count = 0
            if count >= FREE_FAILURES and (wait := last + _delay(count) - now) > 0:
                return wait
            self._failures[address] = (count + 1, now)
            if len(self._failures) > 4096:  # a scan from many addresses must not grow this for ever
                self._forget_older_than(now - FORGET_FAILURES_AFTER)
        return 0.0

    def failed(self, address: str, what: str) -> None:
        """Log an admitted attempt that failed (``admit`` has counted it already)."""
        with self._lock:
            count = self._failures.get(address, (0, 0.0))[0]
        wait = f"; its next attempt waits {_delay(count):.0f} s" if count >= FREE_FAILURES else ""
        log.warning("failed login (%s) from %s: %d in a row%s", what, address, count, wait)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _forget_older_than(self, moment: float) -> None:
        for address in [a for a, (_, last) in self._failures.items() if last < moment]:
            del self._failures[address]


def _delay(failures: int) -> float:
    return min(2.0 ** (failures - FREE_FAILURES), MAX_LOGIN_DELAY)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


@dataclass
class GuardPolicy:
    """What the guard lets through; built once at launch."""

    hosts: set[str]  # lower-case names and addresses accepted in the Host header
    any_address: bool = False  # --listen: any IP address in Host (port forwarding, containers, NAT)
    any_host: bool = False  # --allowed-hosts '*': a proxy in front checks Host itself
    origins: set[str] = field(default_factory=set)  # other sites' origins allowed by --cors-allow-origins
    login_required: bool = False
    brake: LoginBrake = field(default_factory=LoginBrake)
    max_upload_files: int = MAX_UPLOAD_FILES

    def allow_host(self, name: str) -> None:
        """Also answer to ``name`` (the --share link's host, known only once the tunnel is up)."""
        self.hosts.add(name.lower().rstrip("."))

    def host_ok(self, host: str | None) -> bool:
        if host is None or self.any_host:  # no Host: HTTP/1.0 scripts; a browser always sends one
            return True
        name = host_name(host)
        if name in self.hosts:
            return True
        # An address (not a name) cannot be rebound: the page's origin is then that address itself.
        return self.any_address and _is_address(name)

    def origin_ok(self, origin: str, host: str | None) -> bool:
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and host is not None and _netloc(parts.netloc) == _netloc(host)


def host_name(host: str) -> str:
    """``name:port``, ``[v6]:port`` or ``v6`` -> the lower-case name or address."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _netloc(value: str) -> str:
    value = value.strip().lower()
    for default in (":80", ":443"):
        value = value.removesuffix(default)
    return value


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names() -> set[str]:
    """This machine's host name, its full name and their addresses, as a LAN visitor would type them."""
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
        for name in list(names):
            names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
    except OSError:  # no resolver: the bare host name still counts
        pass
    return {name.lower() for name in names} | set(network_addresses())


def network_addresses() -> list[str]:
    """The address other machines reach this one at (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP "connect" sends nothing: it only picks the route
            address = str(probe.getsockname()[0])
        except OSError:  # no network at all
            return []
    return [] if address.startswith("127.") or address == "0.0.0.0" else [address]


def build_policy(listen: bool, allowed_hosts: list[str], cors_origins: list[str], login_required: bool) -> GuardPolicy:
    hosts = set(LOOPBACK_NAMES) | (machine_names() | {"0.0.0.0"} if listen else set())
    extra = {host_name(name) for name in allowed_hosts if name.strip()}
    origins = {origin.strip().lower().rstrip("/") for origin in cors_origins if origin.strip()}
    return GuardPolicy(
        hosts=hosts | (extra - {"*"}),
        any_address=listen,
        any_host="*" in extra,
        origins=origins,
        login_required=login_required,
    )


def split_list(values: list[str]) -> list[str]:
    """Repeatable, comma-separated flag values (A1111 takes ``--cors-allow-origins a,b``) -> items."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


class HttpGuard:
    """ASGI middleware applying a ``GuardPolicy`` to every HTTP request."""

    def __init__(self, app: App, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        origin = headers.get("origin")
        if origin and origin.lower().rstrip("/") in self.policy.origins:
            send = _with_cors(send, origin)
        path, method = scope["path"].rstrip("/"), scope["method"]
        if method == "POST" and path == "/login":
            await self._login(scope, receive, send)
        elif method == "POST" and path.endswith("/gradio_api/upload"):
            await self._upload(scope, receive, send, headers)
        elif method == "GET" and self.policy.login_required:
            await self.app(scope, receive, _without_api_info(send))
        else:
            await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host, origin = headers.get("host"), headers.get("origin")
        if not self.policy.host_ok(host):
            return 400, "BadHost", f"this server does not answer to the name {host!r}; add it with --allowed-hosts"
        if origin is not None and not self.policy.origin_ok(origin, host):
            detail = f"requests from pages on {origin} are refused; allow that site with --cors-allow-origins"
            return 403, "CrossOrigin", detail
        if scope["path"].startswith("/sdapi/") and _has_body(headers) and not _is_json(headers.get("content-type")):
            return 415, "UnsupportedMediaType", "send the body as JSON, with the header Content-Type: application/json"
        return None

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = client_address(scope)
        wait = self.policy.brake.admit(address)
        if wait > 0:
            detail, seconds = too_many_failures(address, wait)
            await _send_error(send, 429, "TooManyFailedLogins", detail, seconds)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.policy.brake.succeeded(address)
                elif message["status"] == 400:  # Gradio's answer to wrong credentials
                    self.policy.brake.failed(address, "login form")
            await send(message)

        await self.app(scope, receive, watch)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        counter = _PartCounter(headers.get("content-type", ""))
        limit = self.policy.max_upload_files

        answered = False

        async def counted() -> Message:
            if counter.parts > limit:  # stop feeding the parser: it sees a client that left
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                counter.feed(message.get("body", b""))
                if counter.parts > limit:  # this chunk went over: the parser never gets it
                    return {"type": "http.disconnect"}
            return message

        async def sent(message: Message) -> None:
            nonlocal answered
            if counter.parts > limit:  # the 413 below answers instead of whatever the app says
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sent)
        except Exception:
            if counter.parts <= limit:
                raise
        if counter.parts > limit and not answered:
            detail = f"too many files in one upload: at most {limit} per request; upload them in smaller groups"
            await _send_error(send, 413, "TooManyFiles", detail)


def too_many_failures(address: str, wait: float) -> tuple[str, int]:
    """The refusal's text and its Retry-After seconds, the same for the login form and the REST API."""
    seconds = math.ceil(wait)
    return f"too many failed logins from {address}: try again in {seconds} s", seconds


class _PartCounter:
    """Counts the parts of a multipart body as it streams past (its boundary lines), across chunks."""

    def __init__(self, content_type: str) -> None:
        boundary = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"')
        self.delimiter = b"--" + boundary.encode("latin-1") if boundary else b""
        self.seen = 0
        self._tail = b""

    @property
    def parts(self) -> int:
        return max(0, self.seen - 1)  # the last delimiter closes the body

    def feed(self, chunk: bytes) -> None:
        if not self.delimiter:
            return
        data = self._tail + chunk
        self.seen += data.count(self.delimiter)
        # Too short to hold a whole delimiter (so nothing is counted twice), long enough to complete
        # one that the next chunk finishes.
        self._tail = data[-(len(self.delimiter) - 1) :]


def _has_body(headers: dict[str, str]) -> bool:
    return headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _send_error(send: Send, status: int, kind: str, detail: str, retry_after: int = 0) -> None:
    body = json.dumps({"error": kind, "detail": detail, "errors": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _with_cors(send: Send, origin: str) -> Send:
    """Let a site allowed by --cors-allow-origins read the answers (its credentials included)."""

    async def cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"access-control-allow-origin"]
            allow = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                     (b"access-control-allow-credentials", b"true")]  # fmt: skip
            message["headers"] = kept + allow
        await send(message)

    return cors


def _without_api_info(send: Send) -> Send:
    """Gradio's login page embeds every named endpoint's description: blank it until a login.

    Only HTML answers are held back (to be rewritten whole); files and JSON stream through."""
    held: list[Message] = []
    body = bytearray()

    async def filtered(message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if content_type.startswith(b"text/html"):
                held.append(message)
                return
        if not held:
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        page = bytes(body)
        if b'"auth_required":true' in page.replace(b" ", b""):
            page = _API_INFO.sub(_NO_API_INFO, page, count=1)
        start = held[0]
        start["headers"] = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"] + [
            (b"content-length", str(len(page)).encode())
        ]
        await send(start)
        await send({"type": "http.response.body", "body": page})

    return filtered
