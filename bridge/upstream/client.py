"""The Munsit API client: list pages, with short, bounded retries of transient failures."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from bridge import __version__
from bridge.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.models import KNOWN_STATUSES, Record
from bridge.retry_after import parse_retry_after

log = structlog.get_logger("bridge.upstream")

Sleep = Callable[[float], Awaitable[None]]


class MunsitClient:
    """`GET /denoise` pages. 429, 5xx, timeouts and dropped connections are retried with
    exponential backoff and jitter, honouring `Retry-After`, within `max_wait_s` of waiting
    in total; 401 and protocol errors are raised at once.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: SecretStr,
        timeout_s: float,
        sleep: Sleep,
        now: Callable[[], float],
        max_attempts: int = 5,
        max_wait_s: float = 60.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 15.0,
        rand: Callable[[], float] = random.random,
        stream_session: aiohttp.ClientSession | None = None,
        on_response: Callable[[str], None] = lambda _code: None,
    ) -> None:
        self._session = session
        self._on_response = on_response  # "200", "429", …, "timeout" or "error" per request
        # progress streams stay open for minutes: their own pool, so polls never queue behind
        self._stream_session = stream_session or session
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sleep = sleep
        self._now = now
        self._max_attempts = max_attempts
        self._max_wait_s = max_wait_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._rand = rand
        self.requests = 0

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        """One page of records, newest first."""
        retrying = AsyncRetrying(
            sleep=self._sleep,
            retry=retry_if_exception_type(UpstreamUnavailable),
            wait=self._wait,
            stop=self._stop,
            reraise=True,
            before_sleep=self._log_retry,
        )
        async for attempt in retrying:
            with attempt:
                return await self._fetch_page(offset, limit)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's progress messages (`GET /denoise/{id}/progress`, Server-Sent Events)
        until the server closes the stream. No retries here: the watcher reconnects."""
        url = f"{self._base_url}/denoise/{record_id}/progress"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total)
        try:
            async with self._stream_session.get(
                url,
                headers={**self._headers(), "accept": "text/event-stream"},
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    body = await resp.read()
                    raise _status_error(
                        resp.status, body, None, f"GET /denoise/{record_id}/progress"
                    )
                data: list[str] = []
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        message = _sse_json("\n".join(data))
                        data.clear()
                        if message is not None:
                            yield message
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"progress stream of {record_id}: {_describe(exc)}") from exc

    def _headers(self) -> dict[str, str]:
        return {
            "x-api-key": self._api_key.get_secret_value(),
            "accept": "application/json",
            "user-agent": f"munsit-bridge/{__version__}",
        }

    def _wait(self, state: RetryCallState) -> float:
        n = state.attempt_number
        backoff = min(self._backoff_max_s, self._backoff_base_s * 2 ** (n - 1))
        backoff = backoff / 2 + self._rand() * backoff / 2
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after_s if isinstance(exc, UpstreamError) else None
        return float(max(backoff, retry_after or 0.0))

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self._max_attempts:
            return True
        return state.idle_for + state.upcoming_sleep > self._max_wait_s

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "upstream request failed, retrying",
            error=str(exc),
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 3),
        )

    async def _fetch_page(self, offset: int, limit: int) -> list[Record]:
        url = f"{self._base_url}/denoise"
        self.requests += 1
        try:
            async with self._session.get(
                url,
                params={"offset": offset, "limit": limit},
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), now=self._now())
        except TimeoutError as exc:
            self._on_response("timeout")
            raise UpstreamUnavailable(
                f"GET /denoise timed out after {self._timeout.total} s"
            ) from exc
        except aiohttp.ClientError as exc:
            self._on_response("error")
            raise UpstreamUnavailable(f"GET /denoise failed: {_describe(exc)}") from exc
        self._on_response(str(status))
        return _parse_list(status, body, retry_after, offset)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_text(body: bytes) -> str:
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and "errorMessage" in data:
        return f"{data.get('errorCode')} {data['errorMessage']}"
    return body[:200].decode("utf-8", "replace")


def _sse_json(text: str) -> dict[str, Any] | None:
    try:
        message: Any = json.loads(text)
    except ValueError:
        log.warning("unreadable progress message ignored", data=text[:200])
        return None
    return message if isinstance(message, dict) else None


def _status_error(status: int, body: bytes, retry_after: float | None, what: str) -> UpstreamError:
    """The error a non-200 answer means."""
    if status == 401:
        return UpstreamAuthError(
            f"API key rejected by Munsit (401 {_error_text(body)}): check upstream.api_key "
            "or MUNSIT_API_KEY",
            status=status,
        )
    if status == 404:
        return UpstreamNotFound(f"{what} answered 404: {_error_text(body)}", status=status)
    if status == 429 or status >= 500:
        return UpstreamUnavailable(
            f"{what} answered {status}: {_error_text(body)}",
            status=status,
            retry_after_s=retry_after,
        )
    return UpstreamProtocolError(f"{what} answered {status}: {_error_text(body)}", status=status)


def _parse_list(status: int, body: bytes, retry_after: float | None, offset: int) -> list[Record]:
    if status != 200:
        raise _status_error(status, body, retry_after, "GET /denoise")
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise UpstreamProtocolError(
            f"GET /denoise?offset={offset} returned malformed JSON: {exc}", status=status
        ) from exc
    if not isinstance(data, list):
        raise UpstreamProtocolError(
            f"GET /denoise?offset={offset} returned a JSON {type(data).__name__}, expected an "
            "array of records",
            status=status,
        )
    records = [
        Record.from_json(item, where=f"record at offset {offset + i}")
        for i, item in enumerate(data)
    ]
    for record in records:
        if record.status not in KNOWN_STATUSES:
            log.warning(
                "unknown record status, treated as not terminal",
                record_id=record.id,
                status=record.status,
            )
    return records
