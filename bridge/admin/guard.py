"""Who may call the admin API: the bearer token, and the rules that keep a web page out.

A page in the operator's browser can send requests to `127.0.0.1:8080` too. Three rules stop
it: without a token, the `Host` must be this machine (a loopback name or address) or one of
`admin.allowed_hosts`, or a DNS-rebinding page could read and drive the API; an `Origin`
other than the server's own is refused (a cross-site request); and a body is taken only as
`application/json`, which a page can send cross-site only after a CORS preflight this server
never grants. A POST with no body (`curl -X POST`) needs no `Content-Type`.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge.config import AdminConfig
from bridge.config_checks import is_loopback

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
FEED_ROUTES = frozenset({"/api/feed", "/api/stream"})  # where `admin.feed_tokens` work too
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = "application/json"
# the types a web page may POST to another site without a CORS preflight
CROSS_SITE_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]/@\s]+))(?::([0-9]{1,5}))?$")
_ORIGIN = re.compile(r"^(?i:(https?))://(.+)$")
_SHOWN = 100  # characters of a refused header value quoted back in the error


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` as (normalised name, port); None if it is not one."""
    match = _HOST.match(value)
    if match is None:
        return None
    name = match.group(1) or match.group(2)
    port = int(match.group(3)) if match.group(3) else None
    if port is not None and port > 65535:
        return None
    return normalise(name), port


def normalise(name: str) -> str:
    """A host name lower-cased without its trailing dot; an IP address in its usual form."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().removesuffix(".")


def host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Whether a token-less API answers a request sent to `host` (the `Host` header)."""
    parts = split_host(host)
    if parts is None:
        return False
    name = parts[0]
    return is_loopback(name) or name in {normalise(h) for h in allowed_hosts}


def same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (an `Origin` header) is this server as reached through `host`.

    The scheme may be http or https (a TLS proxy in front); the names and ports must match,
    a missing port being the scheme's default. `null` and anything else are foreign."""
    match = _ORIGIN.match(origin)
    if match is None:
        return False
    scheme = match.group(1).lower()
    theirs, ours = split_host(match.group(2)), split_host(host)
    if theirs is None or ours is None:
        return False
    default = DEFAULT_PORTS[scheme]
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "…")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _host_refusal(request: web.Request, admin: AdminConfig) -> str | None:
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1:
        return "exactly one Host header is required"
    if host_allowed(hosts[0], admin.allowed_hosts):
        return None
    return (
        f"Host {_shown(hosts[0])} is not a loopback name or address nor in admin.allowed_hosts: "
        "refused, as a web page could reach the API through DNS rebinding (add the name to "
        "admin.allowed_hosts, or set admin.token)"
    )


def _origin_refusal(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or same_origin(origin, request.headers.get("Host", "")):
        return None
    return f"Origin {_shown(origin)} is not this server: cross-site requests are refused"


def _token_refusal(request: web.Request, admin: AdminConfig) -> web.Response | None:
    """401 unless the bearer token matches, compared in constant time: the admin token, or
    on the pull feed's routes one of the read-only `admin.feed_tokens` too. Without an admin
    token the API is loopback-only and token-less, the feed as well."""
    if admin.token is None:
        return None
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    # bytes that are not UTF-8 arrive as lone surrogates: compare them as they came
    given = offered.encode("utf-8", "surrogateescape")
    accepted = [admin.token]
    if request.path in FEED_ROUTES:
        accepted += admin.feed_tokens
    # every token compared (no early exit); the scheme is case-insensitive (RFC 9110)
    matched = [hmac.compare_digest(given, t.get_secret_value().encode()) for t in accepted]
    if any(matched) and scheme.lower() == "bearer":
        return None
    response = _error(401, "missing or wrong bearer token (Authorization: Bearer …)")
    response.headers["WWW-Authenticate"] = 'Bearer realm="munsit-bridge"'
    return response


async def _body_refusal(request: web.Request) -> str | None:
    """A body only as JSON. A request without a body may carry no `Content-Type`, or one
    that makes a browser ask first (aiohttp's default `application/octet-stream`), but never
    one a page may send to another site without asking: `text/plain`, a form, multipart."""
    if request.method in SAFE_METHODS:
        return None
    declared = request.headers.get("Content-Type")  # aiohttp refuses two of them
    if declared is None:
        media = None
    elif "," in declared:  # a list: a browser takes its last type, which may be text/plain
        return f"Content-Type {_shown(declared)} is refused: send {JSON} alone"
    else:
        media = declared.partition(";")[0].strip(" \t").lower()
        if media == JSON:
            return None
        if media in CROSS_SITE_TYPES:
            return f"Content-Type {_shown(declared)} is refused: send {JSON} (or no body at all)"
    if request.body_exists and await request.read():
        return f"a request body must be {JSON}"
    return None


def api_guard(admin: Callable[[], AdminConfig]) -> Middleware:
    """The middleware guarding every route but the probes, with the admin settings `admin()`
    returns: 403 for a foreign `Host` (token-less) or `Origin`, 401 for a wrong token under
    `/api`, 415 for a body not JSON. `/healthz`, `/readyz` and `/metrics` hold no secret and
    stay open to probes and scrapers, whatever name they reach the server by."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PROBES:
            return await handler(request)
        config = admin()
        refusal = (_host_refusal(request, config) if config.token is None else None) or (
            _origin_refusal(request)
        )
        if refusal is not None:
            return _error(403, refusal)
        denied = _token_refusal(request, config) if request.path.startswith("/api") else None
        if denied is not None:
            return denied
        if (unreadable := await _body_refusal(request)) is not None:
            return _error(415, unreadable)
        return await handler(request)

    return guard
