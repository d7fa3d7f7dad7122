"""Standard Webhooks signing: the header names and the signature format live here only."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from bridge import __version__

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
USER_AGENT = f"munsit-bridge/{__version__}"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: the bytes its base64 part encodes."""
    return base64.b64decode(secret.removeprefix("whsec_") + "==")


class Signer:
    """Signs with the current secret and each previous one: one `v1,…` entry per secret
    (HMAC-SHA256 of `id.timestamp.body`, base64; keys decoded once, not per request)."""

    def __init__(self, secrets: Sequence[SecretStr]) -> None:
        self._keys = [secret_key(s.get_secret_value()) for s in secrets]

    def __repr__(self) -> str:
        return f"Signer(<{len(self._keys)} secrets>)"

    def signature(self, msg_id: str, timestamp: int, body: str) -> str:
        signed = f"{msg_id}.{timestamp}.{body}".encode()
        return " ".join(
            "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()
            for key in self._keys
        )

    def headers(self, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
        """The three Standard Webhooks headers for one attempt (empty signature if no secret)."""
        headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp)}
        if self._keys:
            headers[SIGNATURE_HEADER] = self.signature(msg_id, timestamp, body)
        return headers
