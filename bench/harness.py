"""Building blocks of the benchmarks: receiver processes, free ports, settings, events."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge.config import Settings
from bridge.models import COMPLETED, Event, event_id
from tests.conftest import make_secret

SECRET = make_secret(7)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def receiver_process(ports: Sequence[int], *extra: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", *map(str, ports), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def record(i: int, now_iso: str = "2026-11-25T10:00:00.000Z") -> dict[str, Any]:
    rid = f"00000000-0000-4000-8000-{i:012d}"
    return {
        "id": rid,
        "user_id": "bench",
        "transaction_id": None,
        "audio_url": f"https://cdn.munsit.com/denoised/{rid}.wav",
        "original_audio_url": f"https://cdn.munsit.com/uploads/{rid}.wav",
        "file_name": f"job-{i}.wav",
        "audio_duration": 61.5,
        "audio_size": 1_968_044,
        "audio_format": "wav",
        "source_type": "audio",
        "status": "success",
        "error": None,
        "created_at": now_iso,
        "updated_at": now_iso,
    }


def completed_events(n: int, now: float) -> list[Event]:
    return [
        Event(event_id(r["id"], COMPLETED), COMPLETED, r["id"], now, "pending", r)
        for r in (record(i) for i in range(n))
    ]


def settings(
    db: Path,
    urls: Sequence[str],
    *,
    concurrency_per_subscriber: int,
    timeout_s: float = 15.0,
    upstream_url: str = "http://127.0.0.1:9",
    upstream: dict[str, Any] | None = None,
) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {"base_url": upstream_url, "api_key": "bench", **(upstream or {})},
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {
                "allow_private_destinations": True,
                "max_in_flight": concurrency_per_subscriber * len(urls),
                "timeout_s": timeout_s,
            },
            "admin": {"enabled": False},
            "log": {"level": "info", "format": "json"},
            "subscribers": [
                {
                    "id": f"rx{i}",
                    "url": url,
                    "secret": SECRET,
                    "max_concurrency": concurrency_per_subscriber,
                }
                for i, url in enumerate(urls)
            ],
        }
    )


async def wait_for(event: asyncio.Event, timeout_s: float) -> None:
    await asyncio.wait_for(event.wait(), timeout_s)
