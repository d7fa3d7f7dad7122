"""One root error; subclasses carry the facts as fields, the message says it in words."""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; `problems` lists `key: reason` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class StoreError(BridgeError):
    """The store could not be opened, migrated or written."""


class UpstreamError(BridgeError):
    """A Munsit API call failed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(message)


class UpstreamUnavailable(UpstreamError):
    """Transient: 429, 5xx, timeout or connection failure. Worth retrying."""


class UpstreamAuthError(UpstreamError):
    """401: the API key was rejected. Retrying cannot help."""


class UpstreamNotFound(UpstreamError):
    """404: the record is unknown to Munsit."""


class UpstreamProtocolError(UpstreamError):
    """The API answered something that is not what its documentation promises."""


class RequestError(BridgeError):
    """An operator's request (admin API or command) is invalid; the message says which
    parameter and why. `status`: how the admin API and the dashboard answer it."""

    status = 400


class NotFoundError(RequestError):
    """The request names something that does not exist (a delivery, a subscriber)."""

    status = 404


class ConflictError(RequestError):
    """The request cannot be done in the state things are in (retrying a delivered one)."""

    status = 409


class GoneError(RequestError):
    """The request names something retention already deleted (an old feed cursor)."""

    status = 410
