"""The client's multipart body, read in order, and its `audio` part sent on to Munsit.

Two ways, chosen by the order of the parts:

- the option fields (`callback_url`, `callback_events`, `metadata`) come before `audio`: they
  are checked first, then the audio is streamed to Munsit as it arrives, never held whole in
  memory. The last chunk read is held back until the rest of the body has been read, so a
  bad field after the audio (or an upload over the cap) aborts the request to Munsit before
  its multipart body is complete: Munsit creates no job.
- `audio` comes first (a client that sends no option field at all included): the fields it
  may be followed by must be checked before Munsit hears of the job, so the audio is
  spooled to an anonymous temporary file (never more than `gateway.max_upload_bytes`,
  deleted when the request ends), the rest of the body read and checked, then the file is
  streamed to Munsit with its Content-Length.

Either way an upload over `gateway.max_upload_bytes` stops at the cap: 413, and the rest of
the body is not read.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO

from aiohttp import BodyPartReader, MultipartReader

from bridge.gateway.errors import MISSING_AUDIO, TOO_LARGE, GatewayError
from bridge.gateway.form import MAX_FIELD_BYTES, OPTION_FIELDS, Options, bad
from bridge.upstream.submit import Answer

CHUNK_BYTES = 256 * 1024
OTHER_FIELD_BYTES = 64 * 1024  # a field the gateway does not know: read and dropped
FORM_SLACK_BYTES = 64 * 1024  # what a Content-Length may exceed the cap by: fields, boundaries

Send = Callable[[AsyncIterator[bytes], "AudioPart", "int | None"], Awaitable[Answer]]


@dataclass
class AudioPart:
    file_name: str
    content_type: str
    size: int = 0
    spooled: bool = False


def too_large(cap: int) -> GatewayError:
    mib = cap / (1024 * 1024)
    return GatewayError(413, TOO_LARGE, f"File exceeds the {mib:g} MB limit", close=True)


async def read_field(part: BodyPartReader, name: str, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(8192):
        data += chunk
        if len(data) > limit:
            raise bad(f"{name} is longer than {limit} bytes")
    return bytes(data)


async def next_audio(reader: MultipartReader, options: Options) -> BodyPartReader | None:
    """Read the fields up to the `audio` part (returned) or the end of the body (None)."""
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise bad("nested multipart bodies are not accepted")
        name = part.name or ""
        if name == "audio":
            if not part.filename:
                raise GatewayError(400, *MISSING_AUDIO)
            return part
        if name in OPTION_FIELDS:
            options.add(name, await read_field(part, name, MAX_FIELD_BYTES[name]))
        else:
            await read_field(part, name or "a field", OTHER_FIELD_BYTES)
    return None


class Intake:
    """One submission's body. `check()` validates the option fields seen so far (the
    caller's callback check); `send()` hands the audio to Munsit."""

    def __init__(
        self,
        reader: MultipartReader,
        *,
        cap: int,
        check: Callable[[Options], Awaitable[None]],
    ) -> None:
        self.reader = reader
        self.cap = cap
        self.options = Options()
        self.check = check

    async def submit(self, send: Send) -> tuple[AudioPart, Answer]:
        part = await next_audio(self.reader, self.options)
        if part is None:
            raise GatewayError(400, *MISSING_AUDIO)
        audio = AudioPart(part.filename or "", part.headers.get("Content-Type") or "")
        audio.content_type = audio.content_type or "application/octet-stream"
        if self.options.seen:
            await self.check(self.options)
            answer = await send(self._direct(part, audio), audio, None)
            return audio, answer
        audio.spooled = True
        with tempfile.TemporaryFile(prefix="munsit-bridge-upload-") as spool:
            await self._spool(part, audio, spool)
            await self._rest()
            await self.check(self.options)
            spool.seek(0)
            answer = await send(_file_chunks(spool), audio, audio.size)
            return audio, answer

    async def _read(self, part: BodyPartReader, audio: AudioPart) -> AsyncIterator[bytes]:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            audio.size += len(chunk)
            if audio.size > self.cap:
                raise too_large(self.cap)
            yield bytes(chunk)

    async def _direct(self, part: BodyPartReader, audio: AudioPart) -> AsyncIterator[bytes]:
        held: bytes | None = None
        async for chunk in self._read(part, audio):
            if held is not None:
                yield held
            held = chunk
        before = len(self.options.seen)
        await self._rest()
        if len(self.options.seen) != before:  # fields after the audio: checked before the end
            await self.check(self.options)
        if held is not None:
            yield held

    async def _spool(self, part: BodyPartReader, audio: AudioPart, spool: IO[bytes]) -> None:
        async for chunk in self._read(part, audio):
            await asyncio.to_thread(spool.write, chunk)
        await asyncio.to_thread(spool.flush)

    async def _rest(self) -> None:
        """The fields after the audio part, to the end of the body."""
        if await next_audio(self.reader, self.options) is not None:
            raise bad("audio is given twice")


async def _file_chunks(spool: IO[bytes]) -> AsyncIterator[bytes]:
    while data := await asyncio.to_thread(spool.read, CHUNK_BYTES):
        yield data
