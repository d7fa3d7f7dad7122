"""kill -9 in the middle of 1,000 deliveries loses nothing: after a restart every event
arrives, and any duplicate carries the same `webhook-id`."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.models import DeliveryState, event_id
from bridge.sim.simulator import Simulator
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_claim import LOST_ATTEMPT
from tests.integration.helpers import bridge_process

ServerFactory = Callable[..., Any]
EVENTS = 1000


class CountingReceiver:
    def __init__(self) -> None:
        self.by_id: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.requests = 0
        self.progress = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())
        self.by_id[request.headers["webhook-id"]].add((body["data"]["id"], body["type"]))
        self.requests += 1
        self.progress.set()
        return web.Response(text="ok")

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.progress.clear()
                await self.progress.wait()


async def start_bridge(config: Path) -> asyncio.subprocess.Process:
    process: asyncio.subprocess.Process = await bridge_process(
        "run",
        "--config",
        str(config),
        env={"MUNSIT_API_KEY": "crash-key"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return process


async def test_sigkill_mid_run_loses_nothing(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="crash-key", clock=SystemClock(), processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    receiver = CountingReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    rx: TestServer = await aiohttp_server(app)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[upstream]
base_url = "{str(up.make_url("")).rstrip("/")}"
poll_interval_s = 0.2
idle_poll_interval_s = 0.2
page_size = 100
progress_stream = false
[store]
url = "sqlite:///{tmp_path / "state.db"}"
[delivery]
allow_private_destinations = true
timeout_s = 1
max_in_flight = 20
[admin]
enabled = false
[log]
level = "warning"
[[subscribers]]
id = "rx"
url = "{rx.make_url("/hook")}"
secret = "{secret}"
events = ["denoise.*"]
max_concurrency = 20
"""
    )
    first = await start_bridge(config)
    try:
        await asyncio.wait_for(_until_polled(sim, 2), 30)  # the baseline is recorded
        records = sim.add_records(EVENTS // 2, status="success")
        await receiver.until(lambda: receiver.requests >= 300, 60)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    delivered_before_kill = len(receiver.by_id)
    assert delivered_before_kill < EVENTS

    second = await start_bridge(config)
    try:
        await receiver.until(lambda: len(receiver.by_id) >= EVENTS, 90)
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 0, err.decode()

    expected = {
        event_id(r["id"], t): (r["id"], t)
        for r in records
        for t in ("denoise.created", "denoise.completed")
    }
    assert set(receiver.by_id) == set(expected)
    for evt, seen in receiver.by_id.items():
        assert seen == {expected[evt]}  # a duplicate is the same event under the same id
    assert receiver.requests >= EVENTS
    # the deliveries the killed process held count that attempt (no outcome recorded)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        views = await store.list_deliveries(limit=2 * EVENTS)
    finally:
        await store.close()
    assert len(views) == EVENTS
    lost = [v for v in views if any(a.error == LOST_ATTEMPT for a in v.history)]
    assert lost, "the kill left no delivery leased"  # claimed ahead, or in flight
    for view in views:
        assert view.attempts == len(view.history)
        if view.state is DeliveryState.DELIVERED:
            assert view.history[-1].status_code == 200


async def _until_polled(sim: Simulator, polls: int) -> None:
    """Wait for another process to have polled (real time is all the two share)."""
    while sim.list_requests < polls:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
