"""The gateway's calls to Munsit: the streaming `POST /denoise` and the progress relay.

The upload is a multipart body written as its bytes arrive (chunked transfer encoding):
never held whole in memory. `request_timeout_s`
bounds connecting and, once the last byte is sent, Munsit's answer — not the upload itself,
which lasts as long as the client takes to send it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from yarl import URL

from bridge import __version__
from bridge.redact import describe

ANSWER_BODY_BYTES = 64 * 1024  # of Munsit's answer to a submission (a small JSON object)


class SubmitUnreachable(Exception):
    """Munsit could not be reached, or the connection broke before it answered."""


class SubmitTimeout(Exception):
    """Munsit did not answer within `request_timeout_s` of the upload's end."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Munsit's answer: status, body (up to `ANSWER_BODY_BYTES`) and a few headers."""

    status: int
    body: bytes
    content_type: str
    retry_after: str | None = None
    early: bool = False  # Munsit answered before the upload was complete


def _headers(api_key: SecretStr, accept: str) -> dict[str, str]:
    return {
        "x-api-key": api_key.get_secret_value(),
        "accept": accept,
        "user-agent": f"munsit-bridge/{__version__}",
    }


def _quoted(value: str) -> str:
    """A quoted-string for a Content-Disposition parameter (as browsers write a file name)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def part_head(boundary: str, file_name: str, content_type: str) -> bytes:
    """The opening of the multipart body, up to the first byte of the file."""
    return (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="audio"; filename="{_quoted(file_name)}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()


def part_tail(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


async def submit_audio(
    session: aiohttp.ClientSession,
    *,
    base_url: str,
    api_key: SecretStr,
    file_name: str,
    content_type: str,
    chunks: AsyncIterable[bytes],
    timeout_s: float,
) -> Answer:
    """`POST {base_url}/denoise` with `chunks` as the `audio` file, sent as they come.

    An exception raised by `chunks` (the client's upload was refused or broke off) aborts the
    request before the multipart body is complete, so Munsit gets no job, and is raised
    again here. Raises `SubmitUnreachable` or `SubmitTimeout` when Munsit gives no answer."""
    boundary = "munsit-bridge-" + secrets.token_hex(16)
    head, tail = part_head(boundary, file_name, content_type), part_tail(boundary)
    sent = asyncio.Event()
    failure: list[BaseException] = []

    async def body() -> AsyncIterator[bytes]:
        yield head
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            failure.append(exc)
            raise
        yield tail
        sent.set()

    headers = _headers(api_key, "application/json")
    headers["content-type"] = f"multipart/form-data; boundary={boundary}"
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s)
    url = base_url.rstrip("/") + "/denoise"

    async def exchange() -> Answer:
        async with session.post(
            url, data=body(), headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            early = not sent.is_set()
            data = await _read_capped(resp, ANSWER_BODY_BYTES)
            return Answer(
                resp.status,
                data,
                resp.content_type,
                resp.headers.get("Retry-After"),
                early,
            )

    task = asyncio.ensure_future(exchange())
    waiter = asyncio.ensure_future(sent.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return _result(task, failure)
        async with asyncio.timeout(timeout_s):  # the upload is done: Munsit must answer now
            await asyncio.wait({task})
        return _result(task, failure)
    except TimeoutError as exc:
        raise SubmitTimeout(f"Munsit did not answer within {timeout_s:g} s") from exc
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _result(task: asyncio.Future[Answer], failure: list[BaseException]) -> Answer:
    exc = task.exception()
    if exc is None:
        return task.result()
    if failure:  # the client's side ended the upload: that is the error to report
        raise failure[0]
    if isinstance(exc, aiohttp.ClientConnectorError):
        raise SubmitUnreachable(f"could not connect to Munsit: {describe(exc)}") from exc
    if isinstance(exc, aiohttp.ClientError | OSError):
        raise SubmitUnreachable(f"Munsit did not answer: {describe(exc)}") from exc
    raise exc


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            resp.close()
            break
    return bytes(body[:limit])


def progress_url(base_url: str, record_id: str) -> URL:
    """`…/denoise/{id}/progress`, the id one path segment whatever it holds."""
    segment = quote(record_id, safe="")
    if not segment.strip("."):  # `.` and `..` would climb the path
        segment = segment.replace(".", "%2E")
    base = URL(base_url.rstrip("/"))
    return base.with_path(f"{base.raw_path.rstrip('/')}/denoise/{segment}/progress", encoded=True)


@asynccontextmanager
async def open_progress(
    session: aiohttp.ClientSession,
    *,
    base_url: str,
    api_key: SecretStr,
    record_id: str,
    timeout_s: float,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Munsit's progress stream of `record_id`, opened (its status and headers read within
    `timeout_s`); the body is left to the caller, unbounded in time (streams idle up to 15
    minutes). Raises `SubmitUnreachable` or `SubmitTimeout` when Munsit gives no answer."""
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s)
    request = session.get(
        progress_url(base_url, record_id),
        headers=_headers(api_key, "text/event-stream"),
        timeout=timeout,
        allow_redirects=False,
    )
    try:
        async with asyncio.timeout(timeout_s):
            resp = await request
    except TimeoutError as exc:
        raise SubmitTimeout(f"Munsit did not answer within {timeout_s:g} s") from exc
    except aiohttp.ClientConnectorError as exc:
        raise SubmitUnreachable(f"could not connect to Munsit: {describe(exc)}") from exc
    except aiohttp.ClientError as exc:
        raise SubmitUnreachable(f"Munsit did not answer: {describe(exc)}") from exc
    try:
        yield resp
    finally:
        resp.close()


async def read_answer(resp: aiohttp.ClientResponse) -> bytes:
    """A (small) non-stream answer, such as Munsit's error body, within `ANSWER_BODY_BYTES`."""
    return await _read_capped(resp, ANSWER_BODY_BYTES)
