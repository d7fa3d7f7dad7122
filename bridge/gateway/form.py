"""The submission's own fields: `callback_url`, `callback_events` and `metadata`, checked
before anything is sent to Munsit (400 for a malformed field, 422 for a callback URL the
client may not use or the SSRF rules refuse)."""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bridge.config_gateway import CALLBACK_EVENTS, DEFAULT_CALLBACK_EVENTS, ClientConfig
from bridge.deliver.destination import refusal
from bridge.gateway.errors import BAD_FIELD, REFUSED_CALLBACK, GatewayError
from bridge.models import Callback
from bridge.redact import redact_url

OPTION_FIELDS = ("callback_url", "callback_events", "metadata")
MAX_METADATA_BYTES = 4096
MAX_URL_CHARS = 2048
MAX_FIELD_BYTES = {"callback_url": MAX_URL_CHARS, "callback_events": 1024, "metadata": 16384}


def bad(message: str) -> GatewayError:
    return GatewayError(400, BAD_FIELD, message)


def refused(message: str) -> GatewayError:
    return GatewayError(422, REFUSED_CALLBACK, message)


@dataclass
class Options:
    """The option fields as received (each at most once)."""

    seen: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, raw: bytes) -> None:
        if name in self.seen:
            raise bad(f"{name} is given twice")
        try:
            self.seen[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{name} is not UTF-8 text") from None

    def events(self) -> tuple[str, ...]:
        raw = self.seen.get("callback_events")
        if raw is None:
            return DEFAULT_CALLBACK_EVENTS
        events: list[str] = []
        for item in raw.split(","):
            name = item.strip()
            if not name:
                continue
            if name not in CALLBACK_EVENTS:
                allowed = ", ".join(sorted(CALLBACK_EVENTS))
                raise bad(f"callback_events: unknown event {name[:64]!r} (allowed: {allowed})")
            if name not in events:
                events.append(name)
        if not events:
            raise bad("callback_events names no event")
        return tuple(events)

    def metadata(self) -> dict[str, Any] | None:
        raw = self.seen.get("metadata")
        if raw is None:
            return None
        try:
            value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
        except _NotExact as exc:
            raise bad(f"metadata {exc}") from None
        except ValueError:
            raise bad("metadata is not valid JSON") from None
        if not isinstance(value, dict):
            raise bad("metadata must be a JSON object")
        if _has_lone_surrogate(value):
            raise bad("metadata holds a lone surrogate (\\ud800-\\udfff unpaired)")
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > MAX_METADATA_BYTES:
            raise bad(f"metadata is {len(encoded)} bytes encoded, over {MAX_METADATA_BYTES}")
        return value

    async def callback(self, client: ClientConfig, *, allow_private: bool) -> Callback | None:
        """The callback the fields describe, every field checked; None without callback_url
        (callback_events and metadata are still checked)."""
        events, metadata = self.events(), self.metadata()
        url = self.seen.get("callback_url")
        if url is None:
            return None
        url = url.strip()
        await check_callback_url(url, client.allowed_callback_hosts, allow_private=allow_private)
        return Callback(url=url, events=events, metadata=metadata)


class _NotExact(ValueError):
    """A metadata value that could not be echoed exactly as sent."""


def _no_constant(name: str) -> Any:
    raise _NotExact(f"holds {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotExact(f"holds the number {text[:32]}, beyond a 64-bit float")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string (key or value) anywhere in `value` holds an unpaired surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


def host_allowed(host: str, globs: Sequence[str]) -> bool:
    """Whether `host` matches one of the (lower-case) globs; an empty list allows any."""
    if not globs:
        return True
    host = host.lower().removesuffix(".")
    return any(fnmatch.fnmatchcase(host, glob) for glob in globs)


async def check_callback_url(url: str, globs: Sequence[str], *, allow_private: bool) -> None:
    """Raise 422 for a URL that is not http(s) with a host, a host outside `globs` or one
    the SSRF rules refuse (a literal IP in a refused range, a name that does not resolve or
    resolves only to refused addresses; not checked when `allow_private`)."""
    if len(url) > MAX_URL_CHARS:
        raise refused(f"callback_url is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refused("callback_url is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise refused("callback_url must be an http or https URL with a host")
    host = parts.hostname.removesuffix(".")
    shown = redact_url(url)
    if not host_allowed(host, globs):
        raise refused(f"callback_url host {host} is not in this client's allowed_callback_hosts")
    if allow_private:
        return
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    found = await refusal(host, port, allow_private=False)
    if found is not None:
        raise refused(f"callback_url {shown} refused: {host} {found.text}")
