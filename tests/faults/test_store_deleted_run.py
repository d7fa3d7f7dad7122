"""The database file deleted under a real `munsit-bridge run`: /readyz turns 503 naming it,
polling and delivery stop with an error line (not a loop of them), and the next start is
refused instead of silently recording a new baseline."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, bridge_process, free_port

ServerFactory = Callable[..., Any]
DELETED = "was deleted or replaced while running"


async def readyz(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status, await resp.json()


async def test_a_deleted_database_stops_the_bridge_loudly(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="proc-key", clock=SystemClock(), processing_s=3600)
    sim.add_records(2, status="success")
    receiver = RecordingReceiver(default_status=500)  # retried every 0.2 s
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    port = free_port()
    db = tmp_path / "data" / "bridge.db"
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[upstream]
base_url = "{str(sim_server.make_url("")).rstrip("/")}"
poll_interval_s = 0.1
idle_poll_interval_s = 0.1
[store]
url = "sqlite:///{db}"
[delivery]
allow_private_destinations = true
retry_schedule_s = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
jitter = 0
[admin]
port = {port}
[log]
format = "json"
[[subscribers]]
id = "rx"
url = "{rx_server.make_url("/hook")}"
secret = "{secret}"
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
    async with aiohttp.ClientSession() as http:
        try:
            async with asyncio.timeout(60):
                while True:  # up, and past its baseline
                    try:
                        if (await readyz(http, port))[0] == 200:
                            break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                sim.add_records(1, status="failed")
                while len(receiver.requests) < 2:  # delivering, and retrying
                    await receiver.arrived.wait()
                    receiver.arrived.clear()
                db.unlink()
                sent = len(receiver.requests)
                status, body = await readyz(http, port)
                polls = sim.list_requests
                while sim.list_requests < polls + 10:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.05)
                sim.add_records(1, status="failed")  # nothing can record it now
                while sim.list_requests < polls + 60:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert status == 503 and any(DELETED in reason for reason in body["reasons"]), body
    lines = [json.loads(line) for line in out.decode().splitlines()]
    failed = [e for e in lines if DELETED in e.get("error", "")]
    assert any(e["event"].startswith("poll failed") for e in failed)
    # an error line per attempt to poll, record or claim, not a loop of them: 60 polls, the
    # in-flight attempt's recording tried 4 times, a claim every 5 s, where a spinning
    # claim loop writes thousands a second
    assert len(failed) < 120, len(failed)
    # the retry under way when the file went may still go (its claim was made before);
    # nothing after it, and the record seen after the deletion went nowhere
    assert len(receiver.requests) <= sent + 1
    assert not db.exists()  # nothing was silently recreated under it

    again = await bridge_process(
        "run",
        "--config",
        str(config),
        env={"MUNSIT_API_KEY": "proc-key"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(again.communicate(), 30)
    assert again.returncode == 1
    assert "delete" in err.decode() and "bridge.db.lock" in err.decode()
    assert not db.exists()
