"""Logs: JSON lines with the contract keys, console on a terminal; and no secret anywhere a
whole run writes (logs at debug level, every admin response, the metrics, the store's files),
subscriber URL credentials (user-info, path token, query string) included."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.app import create_app
from bridge.config import Settings
from bridge.logging import configure
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive
from tests.integration.leaks import SECRET_PARTS, GarbledReceiver, secret_url, store_files
from tests.integration.leaks import TOKEN as URL_TOKEN

API_KEY = "munsit-key-5c0ffee5"
TOKEN = "admin-token-b16b00b5"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_off_a_terminal_and_console_on_one() -> None:
    piped, tty = io.StringIO(), Terminal()
    configure("info", "auto", piped)
    structlog.get_logger("t").info("poll", pages=1)
    configure("info", "auto", tty)
    structlog.get_logger("t").info("poll", pages=1)
    entry = json.loads(piped.getvalue())
    assert entry["event"] == "poll" and entry["level"] == "info" and "timestamp" in entry
    assert "poll" in tty.getvalue() and "pages" in tty.getvalue()
    assert not tty.getvalue().lstrip().startswith("{")


@pytest.fixture
async def garbled() -> AsyncIterator[tuple[GarbledReceiver, int]]:
    rx = GarbledReceiver()
    async with rx.serving() as port:
        yield rx, port


async def test_a_whole_run_writes_no_secret(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    clock: FakeClock,
    garbled: tuple[GarbledReceiver, int],
) -> None:
    """Nor a credential of a subscriber URL (user-info, path token, query string), even from
    a receiver answering bytes that are not HTTP and quote the request line back."""
    secret, old_secret = make_secret(21), make_secret(22)
    sim = Simulator(api_key=API_KEY, clock=clock, processing_s=3600)
    sim.add_records(2, status="success")
    [job] = sim.add_records(1, status="pending")
    receiver = RecordingReceiver(script=[500])
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_app = web.Application()
    rx_app.router.add_post("/hooks/{token}/x", receiver.handle)
    rx_server: TestServer = await aiohttp_server(rx_app)
    assert rx_server.port is not None
    garbled_rx, garbled_port = garbled
    settings = Settings.model_validate(
        {
            "upstream": {
                "base_url": str(sim_server.make_url("")).rstrip("/"),
                "api_key": API_KEY,
                "progress_stream": False,
            },
            "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
            "delivery": {
                "allow_private_destinations": True,
                "retry_schedule_s": [1, 1],
                "jitter": 0,
            },
            "admin": {"enabled": False, "token": TOKEN},
            "subscribers": [
                {
                    "id": "rx",
                    "url": secret_url(rx_server.port),
                    "secret": secret,
                    "previous_secrets": [old_secret],
                    "events": ["denoise.*"],
                },
                {"id": "garbled", "url": secret_url(garbled_port), "secret": secret},
            ],
        }
    )
    out = io.StringIO()
    configure("debug", "json", out)
    responses: list[str] = []
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()  # baseline: the pending job is tracked
        sim.set_status(job["id"], "success")
        await svc.poller.tick()  # its completion
        await drive(clock, svc.dispatcher.drain_once())  # first attempt answers 500
        await clock.advance(2)
        await drive(clock, svc.dispatcher.drain_once())  # the retry is delivered
        sim.api_key = "rotated-elsewhere"
        await svc.poller.poll_once()  # a 401 is logged
        async with TestClient(TestServer(create_app(svc))) as http:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for path in (
                "/healthz",
                "/readyz",
                "/metrics",
                "/api/subscribers",
                "/api/events",
                "/api/deliveries",
                "/api/deliveries/1",
                "/api/openapi.json",
            ):
                resp = await http.get(path, headers=auth)
                responses.append(await resp.text())
            for sub in ("rx", "garbled"):
                resp = await http.post(f"/api/subscribers/{sub}/test", headers=auth)
                responses.append(await resp.text())
            resp = await http.get("/api/subscribers", headers={"Authorization": "Bearer wrong"})
            responses.append(await resp.text())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(receiver.requests) == 3  # 500, then delivered, then the test event
    assert len(garbled_rx.request_lines) == 3  # the completed job twice, then the test event
    assert all(URL_TOKEN.encode() in line for line in garbled_rx.request_lines)
    signatures = [
        part.split(",", 1)[1]
        for req in receiver.requests
        for part in req.headers["webhook-signature"].split()
    ]
    forbidden = [API_KEY, TOKEN, *signatures, *SECRET_PARTS]
    for whsec in (secret, old_secret):
        forbidden += [whsec, whsec.removeprefix("whsec_")]
    db = tmp_path / "s.db"
    written = out.getvalue() + "".join(responses) + "".join(store_files(db))
    for text in forbidden:
        assert text not in written

    # every line has the contract keys; delivery and poll lines carry theirs
    assert all({"timestamp", "level", "event"} <= line.keys() for line in lines)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    for name in ("delivered", "delivery attempt failed, will retry"):
        for line in by_event[name]:
            assert {"event_id", "subscriber", "attempt", "status_code"} <= line.keys()
    for line in by_event["poll"] + by_event["baseline recorded"]:
        assert {"pages", "records_seen", "changes"} <= line.keys()
    assert by_event["poll failed: API key rejected; not ready until it works again"]
