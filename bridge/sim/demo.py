"""`munsit-bridge demo`: the real pipeline against the simulator and a verifying receiver."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.deliver.dispatcher import Sent
from bridge.detect.poller import PollResult
from bridge.logging import configure
from bridge.models import COMPLETED, CREATED, FAILED_EVENT
from bridge.service import Service
from bridge.sim.simulator import Simulator

API_KEY = "demo-api-key"
TIMEOUT_S = 60.0


def wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A tiny valid mono 16-bit WAV file of silence."""
    frames = b"\x00\x00" * int(seconds * rate)
    header = b"RIFF" + struct.pack("<I", 36 + len(frames)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(frames)) + frames


# (file name, content): the last one is not media, so Munsit fails it.
JOBS: list[tuple[str, bytes]] = [
    ("standup-meeting.wav", wav_bytes(2.0)),
    ("podcast-episode-12.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 2048),
    ("field-recording.flac", b"fLaC" + b"\x00" * 2048),
    ("interview.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2048),
    ("notes.ogg", b"this is not audio at all"),
]


@dataclass
class Receiver:
    """A webhook receiver that verifies every request with the Standard Webhooks library."""

    secret: str
    fail_first: int = 1  # answer 503 this many times first, to show a durable retry
    verified: dict[tuple[str, str], str] = field(default_factory=dict)  # (record, type) → evt id
    rejected: int = 0
    out: TextIO = sys.stdout

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event: dict[str, Any] = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.rejected += 1
            print(f"  receiver   REJECTED a request: {exc}", file=self.out)
            return web.json_response({"error": str(exc)}, status=400)
        if self.fail_first > 0:
            self.fail_first -= 1
            print(f"  receiver   answers 503 to {event['id']} (simulated outage)", file=self.out)
            return web.Response(status=503, text="busy")
        key = (event["data"]["id"], event["type"])
        self.verified[key] = event["id"]
        print(
            f"  receiver   ✓ signature verified: {event['type']:<18} {event['data']['file_name']}",
            file=self.out,
        )
        return web.Response(text="ok")


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def demo_settings(upstream_url: str, receiver_url: str, secret: str, db: Path) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {
                "base_url": upstream_url,
                "api_key": API_KEY,
                "page_size": 3,
                "poll_interval_s": 0.5,
                "idle_poll_interval_s": 0.5,
                "request_timeout_s": 5,
            },
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {"retry_schedule_s": [1, 2, 4], "allow_private_destinations": True},
            "admin": {"enabled": False},
            "log": {"level": "error", "format": "console"},
            "subscribers": [
                {
                    "id": "demo-receiver",
                    "url": receiver_url,
                    "secret": secret,
                    "events": ["denoise.*"],
                }
            ],
        }
    )


async def run_demo(out: TextIO = sys.stdout, timeout_s: float = TIMEOUT_S) -> int:
    """Run the scripted demo; 0 when every expected event arrived with a valid signature."""
    configure("error", "console", stream=sys.stderr)
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    sim = Simulator(api_key=API_KEY, clock=SystemClock(), processing_s=2.0)
    sim.add_records(4, status="success")
    receiver = Receiver(secret=secret, out=out)
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    sim_runner, sim_url = await _start(sim.make_app())
    recv_runner, recv_url = await _start(app)
    say(f"Munsit simulator on {sim_url} with 4 finished jobs already in the account")
    say(f"receiver on {recv_url}/hooks verifying every signature")

    baseline_seen = asyncio.Event()

    def polled(result: PollResult) -> None:
        if result.baseline:
            baseline_seen.set()
            say(f"  bridge     baseline: {result.records_seen} existing records, no events")
        for event in result.events:
            error = f"  ({event.data.get('error')})" if event.data.get("error") else ""
            say(f"  bridge     detected {event.type:<18} {event.data.get('file_name')}{error}")

    def sent(s: Sent) -> None:
        code = s.attempt.status_code or s.attempt.error
        say(
            f"  bridge     sent {s.delivery.event.id} attempt {s.delivery.attempts + 1}"
            f" → {code} ({s.state.value})"
        )

    expected: set[tuple[str, str]] = set()
    with tempfile.TemporaryDirectory(prefix="munsit-bridge-demo-") as tmp:
        settings = demo_settings(sim_url, f"{recv_url}/hooks", secret, Path(tmp) / "bridge.db")
        stop = asyncio.Event()
        try:
            async with Service(settings, on_poll=polled, on_sent=sent) as service:
                runner = asyncio.create_task(service.run(stop))
                await baseline_seen.wait()
                async with aiohttp.ClientSession() as http:
                    for name, content in JOBS:
                        job_id = await _submit(http, sim_url, name, content)
                        fails = name == JOBS[-1][0]
                        expected |= {
                            (job_id, CREATED),
                            (job_id, FAILED_EVENT if fails else COMPLETED),
                        }
                        say(f"submitted  {name:<24} job {job_id}")
                ok = await _wait(lambda: expected <= set(receiver.verified), timeout_s)
                stop.set()
                await runner
        finally:
            await sim_runner.cleanup()
            await recv_runner.cleanup()
    missing = sorted(expected - set(receiver.verified))
    if ok and not receiver.rejected:
        say(f"\nall {len(expected)} events delivered and verified. demo passed.")
        return 0
    say(f"\ndemo FAILED: {len(missing)} events missing {missing}, {receiver.rejected} rejected")
    return 1


async def _submit(http: aiohttp.ClientSession, base: str, name: str, content: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("audio", content, filename=name)
    async with http.post(f"{base}/denoise", data=form, headers={"x-api-key": API_KEY}) as resp:
        resp.raise_for_status()
        body = await resp.json()
    return str(body["denoiseId"])


async def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
