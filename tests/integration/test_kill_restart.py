"""kill -9 at many random moments of a run (while jobs appear, finish, are scanned, committed
and delivered), restarting each time: every event arrives at least once, and a duplicate is
always the same event under the same `webhook-id`.

CI runs 20 kills over 2,000 events; `make soak` sets BRIDGE_SOAK_KILLS / BRIDGE_SOAK_RECORDS."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.models import event_id
from bridge.sim.simulator import Simulator
from tests.integration.helpers import ServerFactory
from tests.integration.test_crash_safety import CountingReceiver, start_bridge

KILLS = int(os.environ.get("BRIDGE_SOAK_KILLS", "20"))
RECORDS = int(os.environ.get("BRIDGE_SOAK_RECORDS", "1000"))  # two events each


async def kill_moment(
    rand: random.Random, sim: Simulator, receiver: CountingReceiver, per_round: int
) -> None:
    """A random moment of the run, told by what the bridge has done (polls made, deliveries
    received), not by the wall clock: a loaded machine only makes the run slower."""
    if rand.random() < 0.5:  # while scanning: after its n-th list request
        target = sim.list_requests + rand.randint(1, 4)
        while sim.list_requests < target:  # noqa: ASYNC110 - another process; real time is shared
            await asyncio.sleep(0.01)
    else:  # while delivering: after the receiver has taken n more requests
        target = receiver.requests + rand.randint(1, 2 * per_round)
        await receiver.until(lambda: receiver.requests >= target, 120)


async def test_repeated_sigkill_loses_nothing(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="crash-key", clock=SystemClock(), processing_s=0.3)
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
poll_interval_s = 0.05
idle_poll_interval_s = 0.05
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
level = "error"
[[subscribers]]
id = "rx"
url = "{rx.make_url("/hook")}"
secret = "{secret}"
events = ["denoise.*"]
max_concurrency = 20
"""
    )
    rand = random.Random(7)
    # the first start records an empty baseline, so every record below is new
    first = await start_bridge(config)
    while sim.list_requests < 2:  # noqa: ASYNC110 - another process; real time is shared
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    await first.wait()

    records = []
    per_round = RECORDS // KILLS
    for _ in range(KILLS):
        records += sim.add_records(per_round, status="pending")  # they finish 0.3 s later
        proc = await start_bridge(config)
        await kill_moment(rand, sim, receiver, per_round)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL

    polled = sim.list_requests
    last = await start_bridge(config)
    try:
        while sim.list_requests == polled:  # noqa: ASYNC110 - up and polling
            await asyncio.sleep(0.02)
        await receiver.until(lambda: len(receiver.by_id) >= 2 * len(records), 120)
    finally:
        last.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(last.communicate(), 30)
    assert last.returncode == 0, err.decode()

    expected = {
        event_id(r["id"], t): (r["id"], t)
        for r in records
        for t in ("denoise.created", "denoise.completed")
    }
    assert set(receiver.by_id) == set(expected)  # nothing lost, nothing invented
    for evt, seen in receiver.by_id.items():
        assert seen == {expected[evt]}  # a duplicate is the same event under the same id
    assert receiver.requests >= len(expected)
