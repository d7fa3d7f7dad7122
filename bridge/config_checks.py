"""The configuration models' common base and pure checks of single values."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr

from bridge.redact import redact_url

MIN_TOKEN_CHARS = 16
# the example secret printed in the Standard Webhooks specification: public, so never secret
PUBLIC_EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class Section(BaseModel):
    """A table of the configuration: unknown keys refused, values frozen."""

    # TOML and JSON both spell inf and nan: no period, timeout or rate may be either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def http_url(value: str) -> str:
    parts = urlsplit(value)
    # the value is never echoed whole: a webhook URL's path or query is its credential
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"must be an http:// or https:// URL with a host, got {redact_url(value)!r}"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port: {redact_url(value)!r}") from None
    return value


def shown(value: str) -> str:
    """A value as an error may quote it: a URL without its user-info, path or query."""
    return redact_url(value) if "://" in value else value


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def header_token(value: SecretStr) -> SecretStr:
    """A credential sent in a request header: not blank, no control characters."""
    text = value.get_secret_value()
    if not text.strip():
        raise ValueError("must not be empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("must not contain line breaks or other control characters")
    return value


def admin_token(value: SecretStr) -> SecretStr:
    """A bearer token: a header credential long enough not to be guessed."""
    header_token(value)
    if len(value.get_secret_value()) < MIN_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters")
    return value


def listen_host(value: str) -> str:
    """An IP address or a DNS host name to listen on."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(f"must be an IP address or a host name, got {value!r}") from None
    return value


def check_secret(value: str) -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 to 64 bytes."""
    if not value.startswith("whsec_"):
        raise ValueError("must start with 'whsec_' followed by base64 of 24-64 random bytes")
    try:
        raw = base64.b64decode(value[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the part after 'whsec_' is not valid base64") from exc
    if not 24 <= len(raw) <= 64:
        raise ValueError(f"must encode 24-64 bytes, this one encodes {len(raw)}")
    return value


def signing_secret(value: str, subscriber_id: object, kind: str = "subscriber") -> str:
    """A signing secret (a subscriber's, or a gateway client's): well-formed and not the
    specification's public example."""
    check_secret(value)
    if value == PUBLIC_EXAMPLE_SECRET:
        raise ValueError(
            f"{kind} {subscriber_id!r} uses the public example secret of the Standard "
            "Webhooks specification, which anyone can sign with; make a new one with "
            "`munsit-bridge secret`"
        )
    return value


_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def slug(value: str) -> str:
    """An id people type and read: lower-case letters, digits, '-' or '_', at most 64."""
    if not _SLUG.match(value):
        raise ValueError(
            f"must be a slug (lower-case letters, digits, '-' or '_', at most 64), got {value!r}"
        )
    return value


def api_root(value: str) -> str:
    """A Munsit API root: an http(s) URL without user-info (the key goes in a header, and a
    URL is shown in logs, `check` and `status`)."""
    url = http_url(value).rstrip("/")
    if "@" in urlsplit(url).netloc:
        raise ValueError("must not hold a user name or password (the API key is api_key)")
    return url
