"""One signed POST to a subscriber, reported as an `Attempt` whatever happens: any exception
while signing, posting or reading the answer is a failed attempt with its error text, in
which the subscriber URL shows its scheme, host and port only."""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from functools import cache

import aiohttp
import structlog

from bridge.config import SubscriberConfig
from bridge.deliver.signing import USER_AGENT, Signer
from bridge.models import Attempt
from bridge.redact import describe, scrub
from bridge.retry_after import body_retry_after, parse_retry_after

log = structlog.get_logger("bridge.deliver")

EXCERPT_BYTES = 4096
DRAIN_BYTES = 1 << 20  # read no more of an answer than this
ERROR_CHARS = 1000  # of an attempt's error text (a garbled answer's bytes may be quoted in it)


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
    return await post_to(
        session,
        sub.url,
        signer,
        msg_id,
        body,
        extra_headers=sub.headers,
        target=sub.id,
        content_type=sub.media_type,
        now=now,
        timeout_s=timeout_s,
    )


async def post_to(
    session: aiohttp.ClientSession,
    url: str,
    signer: Signer,
    msg_id: str,
    body: str,
    *,
    extra_headers: Mapping[str, str],
    target: str,
    now: float,
    timeout_s: float,
    content_type: str = "application/json",
) -> tuple[Attempt, float | None]:
    """`post` to any target: a subscriber (its URL, static headers and content type) or a
    gateway job's callback (`target` is `job:<record id>`, no extra headers)."""
    started = time.perf_counter()
    status: int | None = None
    excerpt = b""
    error: str | None = None
    retry_after_s: float | None = None
    answered: int | None = None
    try:
        headers = {
            **extra_headers,
            "content-type": content_type,
            "user-agent": USER_AGENT,
            **signer.headers(msg_id, int(now), body),
        }
        async with session.post(
            url,
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
    except aiohttp.ClientResponseError as exc:  # raised only by the parser: bytes not HTTP
        error = "invalid HTTP answer: " + " ".join(exc.message.split())
    except aiohttp.ClientError as exc:
        error = describe(exc)
    except Exception as exc:  # anything unforeseen is a failed attempt, never a lost one
        trace = "".join(traceback.format_exception(exc))
        log.warning(
            "unexpected error in a delivery attempt",
            subscriber=target,
            exception=scrub(trace, url),  # the traceback, this URL's secret parts hidden
        )
        error = describe(exc)
    if status is None and answered is not None and not 200 <= answered < 300:
        status = answered  # a refusal counts even when its body did not arrive whole
    attempt = Attempt(
        attempted_at=now,
        status_code=status,
        latency_ms=(time.perf_counter() - started) * 1000,
        error=None if error is None else scrub(error, url)[:ERROR_CHARS],
        # the receiver's own text, but an answer may echo the request's URL (a framework's
        # "Cannot POST /services/T…/B…/…" 404 page): its secret parts are hidden too
        response_excerpt=scrub(excerpt.decode("utf-8", "ignore"), url) if excerpt else "",
    )
    return attempt, retry_after_s
