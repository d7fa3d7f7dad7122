"""Who may use the dashboard: sessions for `admin.token`, the Host and Origin rules of the
API's guard, and POSTs only from our own pages."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from bridge.admin.guard import host_allowed, same_origin
from bridge.config import AdminConfig

COOKIE = "bridge_ui"
SESSION_S = 12 * 3600.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sessions:
    """Random session ids kept in memory, each with its expiry (monotonic seconds)."""

    def __init__(self, lifetime_s: float = SESSION_S) -> None:
        self._lifetime_s = lifetime_s
        self._expires: dict[str, float] = {}

    def create(self) -> str:
        now = time.monotonic()
        self._expires = {k: v for k, v in self._expires.items() if v > now}
        sid = secrets.token_urlsafe(32)
        self._expires[sid] = now + self._lifetime_s
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        expires = self._expires.get(sid)
        if expires is None or expires <= time.monotonic():
            self._expires.pop(sid, None)
            return False
        return True

    def drop(self, sid: str | None) -> None:
        if sid:
            self._expires.pop(sid, None)


def token_matches(given: str, admin: AdminConfig) -> bool:
    """`given` equals `admin.token`, compared in constant time."""
    if admin.token is None:
        return False
    expected = admin.token.get_secret_value().encode()
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


def refusal(request: web.Request, admin: AdminConfig) -> str | None:
    """Why a `/ui` request is refused (403), None when it may go on: without a token a
    loopback (or allowed) Host only; a foreign Origin never; a POST only with our own Origin
    or, lacking one, our own Referer."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1:
        return "exactly one Host header is required"
    host = hosts[0]
    if admin.token is None and not host_allowed(host, admin.allowed_hosts):
        return "this Host is not a loopback name nor in admin.allowed_hosts (or set admin.token)"
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, host):
        return "cross-site request refused: the Origin is not this server"
    if request.method not in {"GET", "HEAD"} and origin is None:
        referer = urlsplit(request.headers.get("Referer", ""))
        if not referer.scheme or not same_origin(f"{referer.scheme}://{referer.netloc}", host):
            return "a form must be sent from this server's own pages (no Origin nor Referer)"
    return None


def is_https(request: web.Request) -> bool:
    return request.secure
