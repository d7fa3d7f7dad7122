"""The Munsit API client: list pages, with short, bounded retries of transient failures, and
progress streams. Answers are read within size limits and parsed by `parse`."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from yarl import URL

from bridge import __version__
from bridge.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.models import KNOWN_STATUSES, Page
from bridge.redact import describe
from bridge.retry_after import parse_retry_after
from bridge.upstream.parse import SseParser, error_text, parse_list

DEFAULT_KEY_NAME = "upstream.api_key or MUNSIT_API_KEY"
log = structlog.get_logger("bridge.upstream")

Sleep = Callable[[float], Awaitable[None]]
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
ERROR_BODY_BYTES = 4096  # of an error answer, for its message
READ_CHUNK_BYTES = 64 * 1024
REPORTED_MAX = 10_000  # quarantined records remembered as reported


class MunsitClient:
    """`GET /denoise` pages. 429, 5xx, timeouts and dropped connections are retried with
    exponential backoff and jitter, honouring `Retry-After`, within `max_wait_s` of waiting
    in total; 401 and protocol errors (an answer over `max_response_bytes` among them) are
    raised at once. A record that cannot be stored or delivered as sent is quarantined: left
    out of its page, logged and passed to `on_quarantine` once, however often it is listed.
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
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        on_quarantine: Callable[[int], None] = lambda _count: None,
        key_name: str = DEFAULT_KEY_NAME,
        account: str | None = None,
    ) -> None:
        self._log = log if account is None else log.bind(account=account)
        self._session = session
        self._key_name = key_name  # where the key is configured, for a 401's message
        self._max_response_bytes = max_response_bytes
        self._on_quarantine = on_quarantine  # how many records were newly quarantined
        self._reported: dict[str, None] = {}  # keys of quarantined records, oldest first
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

    async def list_page(self, offset: int, limit: int) -> Page:
        """One page of records, newest first, quarantined ones left out."""
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
        until the server closes the stream. No retries here: the watcher reconnects. A line
        or message over 64 KiB ends the stream with `UpstreamProtocolError`."""
        url = self._record_url(record_id, "progress")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total)
        warned = False
        try:
            async with self._stream_session.get(
                url,
                headers={**self._headers(), "accept": "text/event-stream"},
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    body, _ = await _read_capped(resp, ERROR_BODY_BYTES)
                    what = f"GET /denoise/{record_id}/progress"
                    raise _status_error(resp.status, body, None, what, self._key_name)
                parser = SseParser()
                async for chunk in resp.content.iter_any():
                    for message in parser.feed(chunk):
                        yield message
                    if parser.ignored and not warned:  # once per stream, not per message
                        warned = True
                        self._log.warning(
                            "unreadable progress message ignored", record_id=record_id
                        )
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"progress stream of {record_id}: {describe(exc)}") from exc
        except TimeoutError as exc:
            raise UpstreamUnavailable(f"progress stream of {record_id}: timed out") from exc

    def _record_url(self, record_id: str, action: str) -> URL:
        """`…/denoise/{id}/{action}`, the id one path segment whatever it holds."""
        segment = quote(record_id, safe="")
        if not segment.strip("."):  # `.` and `..` would climb the path
            segment = segment.replace(".", "%2E")
        base = URL(self._base_url)
        path = f"{base.raw_path.rstrip('/')}/denoise/{segment}/{action}"
        return base.with_path(path, encoded=True)

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
        self._log.warning(
            "upstream request failed, retrying",
            error=str(exc),
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 3),
        )

    async def _fetch_page(self, offset: int, limit: int) -> Page:
        url = f"{self._base_url}/denoise"
        self.requests += 1
        cap = self._max_response_bytes
        try:
            async with self._session.get(
                url,
                params={"offset": offset, "limit": limit},
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), now=self._now())
                body, whole = await _read_capped(resp, cap if status == 200 else ERROR_BODY_BYTES)
        except TimeoutError as exc:
            self._on_response("timeout")
            raise UpstreamUnavailable(
                f"GET /denoise timed out after {self._timeout.total} s"
            ) from exc
        except aiohttp.ClientError as exc:
            self._on_response("error")
            raise UpstreamUnavailable(f"GET /denoise failed: {describe(exc)}") from exc
        self._on_response(str(status))
        if status != 200:
            raise _status_error(status, body, retry_after, "GET /denoise", self._key_name)
        if not whole:
            raise UpstreamProtocolError(
                f"GET /denoise?offset={offset} answered more than {cap:,} bytes"
                " (upstream.max_response_bytes): refused",
                status=status,
            )
        page = parse_list(body, offset=offset)
        self._report(page)
        for record in page:
            if record.status not in KNOWN_STATUSES:
                self._log.warning(
                    "unknown record status, treated as not terminal",
                    record_id=record.id,
                    status=record.status,
                )
        return page

    def _report(self, page: Page) -> None:
        """Log each quarantined record once (per id and reason), and count it."""
        fresh = 0
        for item in page.quarantined:
            if item.key in self._reported:
                continue
            self._reported[item.key] = None
            if len(self._reported) > REPORTED_MAX:
                del self._reported[next(iter(self._reported))]
            fresh += 1
            self._log.warning(
                "record quarantined: skipped until Munsit lists it whole",
                record_id=item.label or None,
                position=item.position,
                reason=item.reason,
            )
        if fresh:
            self._on_quarantine(fresh)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes | bytearray, bool]:
    """The body, read as it streams in, up to `limit` bytes; whether that was all of it.
    Past the limit, reading stops, what was read is dropped and the connection is closed,
    not drained."""
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        return b"", False
    body = bytearray()
    async for chunk in resp.content.iter_chunked(READ_CHUNK_BYTES):
        if len(body) + len(chunk) > limit:
            resp.close()
            return bytes(body[:ERROR_BODY_BYTES]), False
        body += chunk
    return body, True  # bytes-like: no copy of what may be many megabytes


def _status_error(
    status: int,
    body: bytes | bytearray,
    retry_after: float | None,
    what: str,
    key_name: str = DEFAULT_KEY_NAME,
) -> UpstreamError:
    """The error a non-200 answer means."""
    text = error_text(body)
    if status == 401:
        return UpstreamAuthError(
            f"API key rejected by Munsit (401 {text}): check {key_name}", status=status
        )
    if status == 404:
        return UpstreamNotFound(f"{what} answered 404: {text}", status=status)
    if status == 429 or status >= 500:
        return UpstreamUnavailable(
            f"{what} answered {status}: {text}", status=status, retry_after_s=retry_after
        )
    return UpstreamProtocolError(f"{what} answered {status}: {text}", status=status)
