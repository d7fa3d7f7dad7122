"""Helpers of the Munsit simulator: media formats, magic numbers and durations, then the
HTTP plumbing (error bodies, timestamps, parameter parsing, events)."""

from __future__ import annotations

import asyncio
import functools
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, web

AUDIO_FORMATS = ("wav", "mp3", "m4a", "flac", "ogg")
VIDEO_FORMATS = ("mp4", "mov", "mkv", "webm", "avi", "m4v")
CDN = "https://cdn.munsit.com"
MAX_DURATION_S = 15 * 60
ESTIMATE_BITRATE = 128_000  # bits per second, for formats whose header is not parsed
_UNKNOWN_SIZE = (0, 0xFFFFFFFF)  # `data` sizes written by streaming encoders


def extension(file_name: str) -> str:
    """Lower-case extension without the dot ('' when there is none)."""
    _, dot, ext = file_name.rpartition(".")
    return ext.lower() if dot else ""


def source_type(ext: str) -> str | None:
    """`audio` or `video` for a supported extension, None otherwise."""
    if ext in AUDIO_FORMATS:
        return "audio"
    if ext in VIDEO_FORMATS:
        return "video"
    return None


def looks_like(ext: str, data: bytes) -> bool:
    """Whether the first bytes are a real container of that kind (else the job fails)."""
    if ext == "wav":
        return data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    if ext == "avi":
        return data[:4] == b"RIFF" and data[8:12] == b"AVI "
    if ext == "mp3":
        return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    if ext == "flac":
        return data[:4] == b"fLaC"
    if ext == "ogg":
        return data[:4] == b"OggS"
    if ext in ("mp4", "m4a", "mov", "m4v"):
        return data[4:8] == b"ftyp"
    if ext in ("mkv", "webm"):
        return data[:4] == b"\x1a\x45\xdf\xa3"
    return False


def wav_duration_s(data: bytes, total: int | None = None) -> float | None:
    """Seconds of sound in a RIFF/WAVE file: `data` chunk size over the `fmt ` byte rate.
    `data` may be the file's first bytes only, `total` its whole length."""
    if not looks_like("wav", data):
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        chunk_id, (size,) = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            (byte_rate,) = struct.unpack_from("<I", data, body + 8)
        elif chunk_id == b"data":
            if not byte_rate:
                return None
            available = (len(data) if total is None else total) - body
            frames = available if size in _UNKNOWN_SIZE else min(size, available)
            return round(frames / byte_rate, 3)
        pos = body + size + (size & 1)  # chunks are padded to an even length
    return None


def duration_s(ext: str, data: bytes, total: int | None = None) -> float:
    """Seconds of media: from the RIFF header of a WAV file, else estimated from the size
    (`data` may be the first bytes only, `total` the whole length)."""
    size = len(data) if total is None else total
    if ext == "wav" and (seconds := wav_duration_s(data, size)) is not None:
        return seconds
    return estimate_s(size)


def estimate_s(size: int) -> float:
    """Duration of `size` bytes at the assumed bit rate."""
    return round(size * 8 / ESTIMATE_BITRATE, 3)


# ---- HTTP plumbing of the simulator ----------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_FOUND = ("40401", "Denoise record not found")
_REQUIRED: Any = object()


class UnknownRecord(KeyError):
    """No record has this id."""


def error(status: int, code: str | int, message: str) -> web.Response:
    """A Munsit error: `{"errorCode", "errorMessage"}`."""
    return web.json_response({"errorCode": code, "errorMessage": message}, status=status)


@functools.lru_cache(maxsize=4096)
def _iso_s(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_ms(ms: int) -> str:
    """Unix milliseconds as Munsit writes timestamps: `2026-11-23T19:00:00.123Z`."""
    return f"{_iso_s(ms // 1000)}.{ms % 1000:03d}Z"


def query_int(request: web.Request, name: str, *, minimum: int) -> int | None:
    """A non-negative decimal query parameter (None when absent); ValueError names it."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return int(raw)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body, which must be a JSON object (else ValueError)."""
    try:
        body = await request.json()
    except json.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def get(
    body: dict[str, Any], name: str, kinds: tuple[type, ...], wanted: str, default: Any = _REQUIRED
) -> Any:
    """`body[name]` if of one of `kinds` (bool only when listed), else ValueError."""
    if name not in body:
        if default is _REQUIRED:
            raise ValueError(f"{name} is required")
        return default
    value = body[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{name} must be {wanted}")
    return value


def control(handler: Handler) -> Handler:
    """A control route: ValueError answers 400, an unknown record id 404."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except UnknownRecord:
            return error(404, *NOT_FOUND)
        except ValueError as exc:
            return error(400, "40000", str(exc))

    return run


async def send_event(response: web.StreamResponse, message: dict[str, Any]) -> None:
    """One Server-Sent Events message."""
    await response.write(f"data: {json.dumps(message)}\n\n".encode())


def fault_response(kind: str, retry_after: str | None) -> web.Response:
    """The answer of a `429`, `500`, `502`, `malformed` or `non_array` fault."""
    if kind == "malformed":
        return web.Response(body=b'[{"id": "0b7c1a', content_type="application/json")
    if kind == "non_array":
        return web.json_response({"data": [], "message": "ok"})
    if kind == "500":
        return error(500, "50000", "Internal server error")
    if kind == "502":
        return error(502, "50202", "Upstream error")
    response = error(429, 42901, "Too many concurrent requests")  # numeric, as seen in the wild
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


HEAD_BYTES = 64 * 1024  # of an upload, kept to validate it: the rest is counted, not kept


@dataclass(frozen=True, slots=True)
class Upload:
    """An `audio` file as received: its name, first bytes and length (a plain or chunked
    upload alike; a 150 MB one is never held whole)."""

    name: str
    head: bytes
    size: int


async def read_upload(part: BodyPartReader, max_bytes: int) -> Upload | web.Response:
    """The `audio` file, or Munsit's 400 answer to it."""
    name = part.filename or ""
    ext = extension(name)
    if source_type(ext) is None:
        allowed = ", ".join(AUDIO_FORMATS + VIDEO_FORMATS)
        return error(400, "40002", f"Unsupported file format '{ext}'. Allowed: {allowed}")
    head = bytearray()
    size = 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size > max_bytes:  # refused at the limit, the rest unread
            return error(400, "40003", f"File exceeds the {max_bytes / (1024 * 1024):g} MB limit")
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
    if duration_s(ext, bytes(head), size) > MAX_DURATION_S:
        return error(400, "40004", "Audio exceeds the 15 minute duration limit")
    return Upload(name, bytes(head), size)


@dataclass(eq=False, slots=True)
class Job:
    """One denoise record, stored compactly (a million fit); `record()` renders its JSON."""

    seq: int  # creation order
    id: str
    transaction_id: str | None
    file_name: str
    ext: str
    size: int
    duration: float
    created_ms: int
    updated_ms: int
    status: str = "pending"
    error: str | None = None
    finish_ms: int | None = None  # when the job's own outcome lands (None: never)
    fails: bool = False  # the upload was not real media
    watchers: set[asyncio.Event] | None = None  # of the open progress streams

    def record(self, user_id: str) -> dict[str, Any]:
        """The record exactly as Munsit's list returns it."""
        rid, ext = self.id, self.ext
        return {
            "id": rid,
            "user_id": user_id,
            "transaction_id": self.transaction_id,
            "audio_url": f"{CDN}/denoised/{rid}.{ext}" if self.status == "success" else None,
            "original_audio_url": f"{CDN}/uploads/{rid}.{ext}",
            "file_name": self.file_name,
            "audio_duration": self.duration,
            "audio_size": self.size,
            "audio_format": ext,
            "source_type": source_type(ext),
            "status": self.status,
            "error": self.error,
            "created_at": iso_ms(self.created_ms),
            "updated_at": iso_ms(self.updated_ms),
        }

    def terminal_message(self) -> dict[str, Any]:
        """The progress stream's last message, once the job is finished."""
        if self.status == "success":
            return {
                "stage": "done",
                "url": f"{CDN}/denoised/{self.id}.{self.ext}",
                "denoiseId": self.id,
            }
        return {"stage": "error", "message": self.error}

    def wake(self) -> None:
        """Tell the open progress streams that the job changed."""
        for watcher in self.watchers or ():
            watcher.set()
