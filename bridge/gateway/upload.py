"""The client's multipart body, read in order, and its `audio` part streamed to Munsit.

The option fields (`callback_url`, `callback_events`, `metadata`) that come before `audio`
are checked first; then the audio is streamed to Munsit as it arrives, never held whole in
memory nor written to disk — whether options came first, after it, or not at all (a plain
Munsit client). The last chunk read is held back until the rest of the body has been read
and the fields that follow the audio are checked, so a bad field after the audio (or an
upload over the cap) aborts the request to Munsit before its multipart body is complete:
Munsit creates no job.

An upload over `gateway.max_upload_bytes` stops at the cap: 413, and the rest of the body
is not read. Without a Content-Length, the fields other than `audio` may hold at most
`FIELDS_BYTES` in all (400 beyond).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import BodyPartReader, MultipartReader

from bridge.gateway.errors import MISSING_AUDIO, TOO_LARGE, GatewayError
from bridge.gateway.form import MAX_FIELD_BYTES, OPTION_FIELDS, Options, bad
from bridge.upstream.submit import Answer

CHUNK_BYTES = 256 * 1024
OTHER_FIELD_BYTES = 64 * 1024  # a field the gateway does not know: read and dropped
FORM_SLACK_BYTES = 64 * 1024  # what a Content-Length may exceed the cap by: fields, boundaries
FIELDS_BYTES = 64 * 1024  # without a Content-Length: every field but `audio`, in all

Send = Callable[[AsyncIterator[bytes], "AudioPart"], Awaitable[Answer]]


@dataclass
class AudioPart:
    file_name: str
    content_type: str
    size: int = 0


def too_large(cap: int) -> GatewayError:
    mib = cap / (1024 * 1024)
    return GatewayError(413, TOO_LARGE, f"File exceeds the {mib:g} MB limit", close=True)


class Fields:
    """What the fields other than `audio` may still hold (None: no total limit)."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.left = total

    async def read(self, part: BodyPartReader, name: str, limit: int) -> bytes:
        data = bytearray()
        while chunk := await part.read_chunk(8192):
            data += chunk
            if len(data) > limit:
                raise bad(f"{name} is longer than {limit} bytes")
            if self.left is not None:
                self.left -= len(chunk)
                if self.left < 0:
                    raise bad(f"the form's fields other than audio exceed {self.total} bytes")
        return bytes(data)


async def next_audio(
    reader: MultipartReader, options: Options, fields: Fields
) -> BodyPartReader | None:
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
            options.add(name, await fields.read(part, name, MAX_FIELD_BYTES[name]))
        else:
            await fields.read(part, name or "a field", OTHER_FIELD_BYTES)
    return None


class Intake:
    """One submission's body. `check()` validates the option fields seen so far (the
    caller's callback check); `send()` hands the audio to Munsit. `fields_cap`: the most
    the fields other than `audio` may hold in all (None: no such limit)."""

    def __init__(
        self,
        reader: MultipartReader,
        *,
        cap: int,
        check: Callable[[Options], Awaitable[None]],
        fields_cap: int | None = None,
    ) -> None:
        self.reader = reader
        self.cap = cap
        self.options = Options()
        self.check = check
        self.fields = Fields(fields_cap)

    async def submit(self, send: Send) -> tuple[AudioPart, Answer]:
        part = await next_audio(self.reader, self.options, self.fields)
        if part is None:
            raise GatewayError(400, *MISSING_AUDIO)
        audio = AudioPart(part.filename or "", part.headers.get("Content-Type") or "")
        audio.content_type = audio.content_type or "application/octet-stream"
        if self.options.seen:
            await self.check(self.options)
        answer = await send(self._direct(part, audio), audio)
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

    async def _rest(self) -> None:
        """The fields after the audio part, to the end of the body."""
        if await next_audio(self.reader, self.options, self.fields) is not None:
            raise bad("audio is given twice")
