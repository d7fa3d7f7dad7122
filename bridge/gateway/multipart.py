"""A multipart reader over a request body that never trips aiohttp's deprecated
`unread_data()` path.

`BodyPartReader.read_chunk()` (aiohttp 3.14) reads the stream until it holds at least a
boundary's length; when the first read returns less (a small chunk of a chunked upload) the
second may bring up to a whole chunk more, and the excess is pushed back with
`StreamReader.unread_data()`, which warns `DeprecationWarning` — an error under the tests'
warning filter, noise in production. `SteadyStream.read(n)` tops a short read up to the
boundary length (never past `n`) so one read always suffices."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import MultipartReader, StreamReader, hdrs, web
from aiohttp.helpers import parse_mimetype

TOP_UP_BYTES = 256  # more than a boundary line (RFC 2046: at most 70 characters + dashes)


class SteadyStream:
    """`StreamReader` with a `read(n)` that returns at least `min(n, least)` bytes unless
    the body ends first; everything else is the wrapped reader's."""

    def __init__(self, inner: StreamReader, least: int = TOP_UP_BYTES) -> None:
        self._inner = inner
        self._least = least

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        want = min(n, self._least) - len(data)
        if n > 0 and data and want > 0 and not self._inner.at_eof():
            try:
                data += await self._inner.readexactly(want)
            except asyncio.IncompleteReadError as exc:
                data += exc.partial
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def multipart_reader(request: web.Request) -> MultipartReader:
    """`request.multipart()`, over a `SteadyStream` of the body (ValueError: no boundary)."""
    mime = parse_mimetype(request.headers.get(hdrs.CONTENT_TYPE, ""))
    boundary = mime.parameters.get("boundary", "")
    least = max(TOP_UP_BYTES, len(boundary) + 8)
    steady = SteadyStream(request.content, least)
    return MultipartReader(request.headers, cast(StreamReader, steady))
