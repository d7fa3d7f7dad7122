"""One signed POST to a subscriber, reported as an `Attempt` whatever happens."""

from __future__ import annotations

import time
from functools import cache

import aiohttp

from bridge.config import SubscriberConfig
from bridge.deliver.signing import USER_AGENT, Signer
from bridge.models import Attempt
from bridge.retry_after import body_retry_after, parse_retry_after

EXCERPT_BYTES = 4096
DRAIN_BYTES = 1 << 20  # read no more of an answer than this


@cache
def _timeout(total_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s)


async def _read_body(content: aiohttp.StreamReader) -> bytes:
    """The whole body (up to `DRAIN_BYTES`; the connection is dropped after that), keeping
    its first `EXCERPT_BYTES`. A body cut off or trickling past the timeout raises."""
    excerpt = bytearray()
    total = 0
    while total < DRAIN_BYTES and not content.at_eof():
        chunk = await content.read(65536)
        if not chunk:
            break
        total += len(chunk)
        if len(excerpt) < EXCERPT_BYTES:
            excerpt += chunk[: EXCERPT_BYTES - len(excerpt)]
    return bytes(excerpt)


async def post(
    session: aiohttp.ClientSession,
    sub: SubscriberConfig,
    signer: Signer,
    msg_id: str,
    body: str,
    *,
    now: float,
    timeout_s: float,
) -> tuple[Attempt, float | None]:
    """One attempt (a fresh `webhook-timestamp`, never following redirects), and the
    `Retry-After` it was answered with, in seconds, if any."""
    timestamp = int(now)
    headers = {
        **sub.headers,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signer.headers(msg_id, timestamp, body),
    }
    started = time.perf_counter()
    status: int | None = None
    excerpt = b""
    error: str | None = None
    retry_after_s: float | None = None
    answered: int | None = None
    try:
        async with session.post(
            sub.url,
            data=body.encode(),
            headers=headers,
            timeout=_timeout(timeout_s),
            allow_redirects=False,
        ) as resp:
            answered = resp.status
            retry_after_s = parse_retry_after(resp.headers.get("Retry-After"), now=now)
            excerpt = await _read_body(resp.content)
            status = answered  # a success counts once its body is in, within `timeout_s`
            if status == 429 and (in_body := body_retry_after(excerpt)) is not None:
                retry_after_s = max(retry_after_s or 0.0, in_body)
            if status >= 300:
                error = f"HTTP {status}"
                if status < 400:
                    error += " (redirects are not followed)"
    except TimeoutError:
        error = f"timed out after {timeout_s} s"
    except aiohttp.ClientConnectorError as exc:
        error = f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if status is None and answered is not None and not 200 <= answered < 300:
        status = answered  # a refusal counts even when its body did not arrive whole
    attempt = Attempt(
        attempted_at=now,
        status_code=status,
        latency_ms=(time.perf_counter() - started) * 1000,
        error=error,
        response_excerpt=excerpt.decode("utf-8", "ignore"),
    )
    return attempt, retry_after_s
