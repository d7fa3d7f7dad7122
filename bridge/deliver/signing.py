"""Standard Webhooks signing: the header names and the signature format live here only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from bridge import __version__

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
USER_AGENT = f"munsit-bridge/{__version__}"


class Signer:
    """Signs with the current secret and each previous one: one `v1,…` entry per secret."""

    def __init__(self, secrets: Sequence[SecretStr]) -> None:
        self._hooks = [Webhook(s.get_secret_value()) for s in secrets]

    def __repr__(self) -> str:
        return f"Signer(<{len(self._hooks)} secrets>)"

    def signature(self, msg_id: str, timestamp: int, body: str) -> str:
        when = datetime.fromtimestamp(timestamp, UTC)
        return " ".join(hook.sign(msg_id, when, body) for hook in self._hooks)

    def headers(self, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
        """The three Standard Webhooks headers for one attempt (empty signature if no secret)."""
        headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp)}
        if self._hooks:
            headers[SIGNATURE_HEADER] = self.signature(msg_id, timestamp, body)
        return headers
