"""Munsit's error shape, `{"errorCode": "…", "errorMessage": "…"}`, for the gateway's own
answers, and the exception that carries one."""

from __future__ import annotations

from aiohttp import web

MISSING_AUDIO = ("40001", "audio is required and must be a file")
BAD_FIELD = "40006"  # a callback_events, metadata or callback_url field that is not well formed
BAD_QUERY = "40005"
UNAUTHORIZED = ("40101", "Invalid or missing API key")
NOT_FOUND = ("40401", "Denoise record not found")
TOO_LARGE = "41301"
REFUSED_CALLBACK = "42201"
NOT_REGISTERED = "50001"
NOT_READY = "50301"
UNREACHABLE = "50201"
BAD_ANSWER = "50202"
NO_ANSWER = "50401"


class GatewayError(Exception):
    """An answer in Munsit's error shape; `close`: hang up after it (the body was not read);
    `retry_after`: a `Retry-After` header to send with it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        close: bool = False,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close
        self.retry_after = retry_after


def error_response(status: int, code: str | int, message: str) -> web.Response:
    return web.json_response({"errorCode": code, "errorMessage": message}, status=status)
