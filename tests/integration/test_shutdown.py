"""`munsit-bridge run` as a real process: SIGTERM with a delivery in flight and a progress
stream open; the admin server of the running process; the delivery goes after a restart."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from bridge.clock import SystemClock
from bridge.models import event_id
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.sqlite import SqliteStore
from tests.integration.helpers import ServerFactory, bridge_process, drive, settings_for

TOKEN = "admin-token-4f9a1c"
API_KEY = "proc-key-77d1"


class HangingReceiver:
    """Answers 200 when `hang` is off; otherwise holds every request until released."""

    def __init__(self) -> None:
        self.hang = True
        self.headers: list[dict[str, str]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        self.arrived.set()
        if self.hang:
            await self.release.wait()
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app


def write_config(path: Path, sim_url: str, rx_url: str, secret: str) -> None:
    path.write_text(
        f"""
[upstream]
base_url = "{sim_url}"
poll_interval_s = 0.2
idle_poll_interval_s = 0.2
[store]
url = "sqlite:///{path.parent / "state.db"}"
[delivery]
allow_private_destinations = true
timeout_s = 2
retry_schedule_s = [0.2, 0.2]
jitter = 0
[admin]
port = 0
token = "{TOKEN}"
[log]
format = "json"
[[subscribers]]
id = "rx"
url = "{rx_url}"
secret = "{secret}"
"""
    )


async def read_until(
    stream: asyncio.StreamReader, event: str, seen: list[dict[str, Any]]
) -> dict[str, Any]:
    """JSON log lines until one whose `event` is `event` (every line kept in `seen`)."""
    while True:
        line = await stream.readline()
        assert line, f"the process ended before logging {event!r}"
        entry: dict[str, Any] = json.loads(line)
        seen.append(entry)
        if entry["event"] == event:
            return entry


async def test_sigterm_lets_the_inflight_delivery_end_then_restart_sends_it(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key=API_KEY, clock=SystemClock(), processing_s=3600)
    [job] = sim.add_records(1, status="pending")
    receiver = HangingReceiver()
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    config = tmp_path / "bridge.toml"
    write_config(
        config, str(sim_server.make_url("")).rstrip("/"), str(rx_server.make_url("/hook")), secret
    )
    env = {"MUNSIT_API_KEY": API_KEY}
    out = asyncio.subprocess.PIPE
    proc = await bridge_process("run", "--config", str(config), env=env, stdout=out, stderr=out)
    assert proc.stdout is not None
    logs: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            admin = await read_until(proc.stdout, "admin server listening", logs)
            await read_until(proc.stdout, "baseline recorded", logs)
            base = f"http://127.0.0.1:{admin['port']}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as resp:
                    assert resp.status == 200
                async with http.get(f"{base}/api/subscribers") as resp:
                    assert resp.status == 401
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(f"{base}/api/subscribers", headers=auth) as resp:
                    assert (await resp.json())["subscribers"][0]["state"] == "active"
                    admin_text = await resp.text()
                async with http.get(f"{base}/metrics") as resp:
                    scraped = {f.name: f for f in text_string_to_metric_families(await resp.text())}
            assert scraped["bridge_records_pending"].samples[0].value == 1
            assert scraped["bridge_progress_streams"].samples[0].value == 1
            sim.set_status(job["id"], "success")
            await receiver.arrived.wait()  # the delivery is in flight, the receiver holds it
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    receiver.release.set()
    logs += [json.loads(line) for line in rest.decode().splitlines()]
    assert proc.returncode == 0, err.decode()
    events = [entry["event"] for entry in logs]
    assert events[-1] == "stopped cleanly"
    assert "delivery attempt failed, will retry" in events  # ended by its own timeout, recorded
    everything = json.dumps(logs) + err.decode() + admin_text
    for secret_text in (API_KEY, TOKEN, secret, secret.removeprefix("whsec_")):
        assert secret_text not in everything
    assert all({"timestamp", "level", "event"} <= entry.keys() for entry in logs)

    # the store was closed cleanly (no WAL left behind) and the delivery waits, not leased
    assert not (tmp_path / "state.db-wal").exists()
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        [view] = await store.list_deliveries()
    finally:
        await store.close()
    assert view.state.value == "pending" and view.attempts == 1
    assert view.history[0].error is not None and "timed out" in view.history[0].error

    receiver.hang = False
    proc = await bridge_process("run", "--config", str(config), env=env, stdout=out, stderr=out)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            await read_until(proc.stdout, "delivered", [])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    first, second = receiver.headers[0], receiver.headers[-1]
    assert first["webhook-id"] == second["webhook-id"] == event_id(job["id"], "denoise.completed")


async def test_a_delivery_still_running_after_the_grace_is_released(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str, clock: FakeClock
) -> None:
    sim = Simulator(api_key="test-key", clock=clock)
    sim.add_records(1, status="success")
    receiver = HangingReceiver()
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(sim_server.make_url("")).rstrip("/"),
        str(rx_server.make_url("/hook")),
        secret,
        tmp_path / "s.db",
        upstream={"backfill": True},
        delivery={"timeout_s": 600},  # the request itself never times out in this test
    )
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        stop = asyncio.Event()
        run = asyncio.create_task(svc.dispatcher.run(stop))
        await receiver.arrived.wait()
        stop.set()
        await drive(clock, run)  # the clock jumps past timeout_s + slack: the task is cancelled
        [view] = await svc.store.list_deliveries()
        assert view.state.value == "pending" and view.attempts == 0 and view.history == ()
        assert view.next_attempt_at == clock.now()
        # released, not leased: claimable at once by the next start
        [again] = await svc.store.claim_due(
            now=clock.now(), limit=5, lease_s=10, subscribers=["rx"]
        )
        assert again.id == view.id
    receiver.release.set()
