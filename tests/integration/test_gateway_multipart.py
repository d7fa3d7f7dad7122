"""`SteadyStream`: a chunked upload whose pieces arrive small then large reads whole through
`BodyPartReader.read_chunk()` without aiohttp's deprecated `unread_data()` (a
`DeprecationWarning`, an error under the tests' warning filter)."""

from __future__ import annotations

import asyncio
from typing import cast
from unittest import mock

import pytest
from aiohttp import MultipartReader, StreamReader
from multidict import CIMultiDict

from bridge.gateway.multipart import SteadyStream

BOUNDARY = "b0undary-9"
HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
).encode()


async def read_part(steady: bool) -> bytes:
    stream = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    stream.feed_data(HEAD + b"abc")

    async def arrive() -> None:  # a tiny piece, then a large one, as a chunked upload may
        for piece in (b"de", b"z" * 300_000 + f"\r\n--{BOUNDARY}--\r\n".encode()):
            for _ in range(3):
                await asyncio.sleep(0)
            stream.feed_data(piece)
        stream.feed_eof()

    feeding = asyncio.ensure_future(arrive())
    content = cast(StreamReader, SteadyStream(stream)) if steady else stream
    headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    part = await MultipartReader(headers, content).next()
    assert part is not None
    data = bytearray()
    while chunk := await part.read_chunk(65536):  # type: ignore[union-attr]
        data += chunk
    await feeding
    return bytes(data)


async def test_plain_stream_trips_the_deprecated_path() -> None:
    with pytest.warns(DeprecationWarning, match="unread_data"):
        await read_part(steady=False)


async def test_steady_stream_reads_the_part_whole_without_it() -> None:
    assert await read_part(steady=True) == b"abcde" + b"z" * 300_000
