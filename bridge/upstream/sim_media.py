"""What the simulator knows about uploaded media: formats, magic numbers, durations."""

from __future__ import annotations

import struct

AUDIO_FORMATS = ("wav", "mp3", "m4a", "flac", "ogg")
VIDEO_FORMATS = ("mp4", "mov", "mkv", "webm", "avi", "m4v")
MAX_DURATION_S = 15 * 60
ESTIMATE_BITRATE = 128_000  # bits per second, for formats whose header is not parsed


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
        return data[:4] == b"RIFF" and data[8:11] == b"AVI"
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


def duration_s(ext: str, data: bytes) -> float:
    """Seconds of media: from the RIFF header of a WAV file, else estimated from the size."""
    if ext == "wav" and len(data) >= 44 and looks_like("wav", data):
        byte_rate: int = struct.unpack_from("<I", data, 28)[0]
        if byte_rate:
            return round((len(data) - 44) / byte_rate, 3)
    return round(len(data) * 8 / ESTIMATE_BITRATE, 3)
