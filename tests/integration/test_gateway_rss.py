"""A 150 MB upload through a real `munsit-bridge run` process with the gateway enabled keeps
that process's peak RSS under 150 MB, streamed whichever comes first: the options or the
audio (the fields after it checked before Munsit's body is complete)."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.sim.simulator import Simulator
from tests.integration.gateway_rig import WAV_HEADER, make_secret
from tests.integration.helpers import bridge_process

ServerFactory = Callable[..., Any]
MB = 1000 * 1000
UPLOAD_BYTES = 150 * MB
PEAK_LIMIT_BYTES = 150 * MB
BOUNDARY = "rss-boundary-51c2"
CHUNK = b"\x00" * (256 * 1024)


async def body(options_first: bool) -> AsyncIterator[bytes]:
    """A multipart form with a 150 MB WAV file, made as it is sent (never held here)."""
    option = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        '{"test": "rss"}\r\n'
    ).encode()
    if options_first:
        yield option
    yield (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="audio"; filename="long.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    yield WAV_HEADER
    left = UPLOAD_BYTES - len(WAV_HEADER)
    while left > 0:
        piece = CHUNK[: min(left, len(CHUNK))]
        left -= len(piece)
        yield piece
    yield b"\r\n"
    if not options_first:
        yield option
    yield f"--{BOUNDARY}--\r\n".encode()


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


async def test_150_mb_upload_keeps_peak_rss_under_150_mb(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    sim = Simulator(api_key="proc-key", clock=SystemClock(), processing_s=3600)
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    token = secrets.token_urlsafe(32)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[upstream]
base_url = "{str(sim_server.make_url("")).rstrip("/")}"
poll_interval_s = 0.5
idle_poll_interval_s = 0.5
[store]
url = "sqlite:///{tmp_path / "state.db"}"
[admin]
enabled = false
[log]
format = "json"
[gateway]
enabled = true
port = 0
[[clients]]
id = "big"
token = "{token}"
secret = "{make_secret()}"
"""
    )
    proc = await bridge_process(
        "run",
        "--config",
        str(config),
        env={"MUNSIT_API_KEY": "proc-key"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    drainer: asyncio.Task[None] | None = None
    try:
        port, baseline = None, False
        async with asyncio.timeout(30):  # listening, and past the first poll (503 until then)
            while port is None or not baseline:
                line = await proc.stdout.readline()
                assert line, "the process ended before its gateway listened"
                lines.append(line)
                if b"gateway listening" in line:
                    port = json.loads(line)["port"]
                baseline = baseline or b'"baseline recorded' in line

        async def drain() -> None:  # logs keep coming: never let the pipe fill
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                lines.append(line)

        drainer = asyncio.create_task(drain())
        url = f"http://127.0.0.1:{port}/api/v1/denoise"
        headers = {"x-api-key": token, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        async with aiohttp.ClientSession() as http:
            for options_first in (True, False):
                async with asyncio.timeout(120):
                    async with http.post(url, data=body(options_first), headers=headers) as resp:
                        answer = await resp.json()
                        assert resp.status == 200, answer
                assert answer["denoiseId"]
        peak = peak_rss_bytes(proc.pid)
        print(f"peak RSS of the bridge: {peak / MB:.1f} MB")  # shown with pytest -s
        assert [r["audio_size"] for r in sim.records] == [UPLOAD_BYTES, UPLOAD_BYTES]
        assert peak < PEAK_LIMIT_BYTES, f"peak RSS {peak / MB:.1f} MB"
    finally:
        if drainer is not None:
            drainer.cancel()
            await asyncio.gather(drainer, return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        _rest, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
