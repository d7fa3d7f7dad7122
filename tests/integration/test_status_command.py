"""`munsit-bridge status` and `munsit-bridge deliveries` read the store, the bridge stopped
or running, and say what the admin API says."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.app import create_app
from bridge.clock import SystemClock
from bridge.config import load_settings
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import SubscriberHealth
from bridge.store.sqlite import SqliteStore
from tests.integration.helpers import (
    RecordingReceiver,
    ServerFactory,
    bridge_process,
    drive,
    free_port,
)

ClientFactory = Any


def write_config(
    path: Path, sim_url: str, ok_url: str, bad_url: str, secret: str, *, admin_port: int = 0
) -> Path:
    admin = f"port = {admin_port}" if admin_port else "enabled = false"
    path.write_text(
        f"""
[upstream]
base_url = "{sim_url}"
api_key = "test-key"
progress_stream = false
poll_interval_s = 0.2
idle_poll_interval_s = 0.2
[store]
url = "sqlite:///{path.parent / "s.db"}"
[delivery]
allow_private_destinations = true
jitter = 0
[admin]
{admin}
[log]
format = "json"
[[subscribers]]
id = "ok"
url = "{ok_url}"
secret = "{secret}"
[[subscribers]]
id = "bad"
url = "{bad_url}"
secret = "{secret}"
[[subscribers]]
id = "later"
url = "{ok_url}"
secret = "{secret}"
enabled = false
"""
    )
    return path


async def cli(*args: str) -> tuple[int | None, str]:
    proc = await bridge_process(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode()


async def test_status_and_deliveries_of_a_stopped_bridge(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    secret: str,
    clock: FakeClock,
) -> None:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=3600)
    sim.add_records(2, status="success")
    [job] = sim.add_records(1, status="pending")
    ok, bad = RecordingReceiver(), RecordingReceiver(default_status=500)
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    ok_server: TestServer = await aiohttp_server(ok.app())
    bad_server: TestServer = await aiohttp_server(bad.app())
    config = write_config(
        tmp_path / "bridge.toml",
        str(sim_server.make_url("")).rstrip("/"),
        str(ok_server.make_url("/hook")),
        str(bad_server.make_url("/hook")),
        secret,
    )
    settings = load_settings(config)
    another = sim.add_records(1, status="pending")
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()  # baseline: 2 done, 2 pending tracked
        sim.set_status(job["id"], "success")
        await svc.poller.tick()
        await drive(clock, svc.dispatcher.drain_once())
        # what the admin API answers, for the CLI to match
        client: TestClient[Any, Any] = await aiohttp_client(create_app(svc))
        resp = await client.get("/api/deliveries?subscriber=bad&limit=5")
        api_bad = await resp.json()
        resp = await client.get("/api/deliveries?state=delivered")
        api_delivered = await resp.json()
    assert another and len(ok.requests) == 1 and len(bad.requests) == 1

    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.set_subscriber_health(
        "bad", SubscriberHealth(failing_since=1.0, disabled_at=2.0, reason="answered 410 Gone")
    )
    await store.close()

    code, out = await cli("status", "--json", "--config", str(config))
    assert code == 0
    report = json.loads(out)
    assert report["bridge"] == {"running": False, "pid": None, "role": None}
    assert report["store"]["exists"] and report["store"]["path"] == str(tmp_path / "s.db")
    assert report["baseline_recorded"] is True
    assert report["records_pending"] == 1
    assert report["outbox"] == {"pending": 2, "delivered": 1, "failed": 0, "orphaned": 0}
    states = {s["id"]: (s["state"], s["disabled_reason"]) for s in report["subscribers"]}
    assert states == {
        "ok": ("active", None),
        "bad": ("disabled", "answered 410 Gone"),
        "later": ("paused", None),
    }
    assert report["poll"]["last_records_seen_at"] is not None

    code, out = await cli("status", "--config", str(config))
    assert code == 0
    assert "bridge: not running" in out
    assert "records pending: 1" in out
    assert "outbox: pending 2, delivered 1, failed 0, orphaned 0" in out
    assert "  bad: disabled by the bridge at " in out and ": answered 410 Gone" in out
    assert "  later: paused (enabled = false in the configuration)" in out

    code, out = await cli(
        "deliveries", "--subscriber", "bad", "--limit", "5", "--json", "--config", str(config)
    )
    assert code == 0 and json.loads(out) == api_bad
    code, out = await cli("deliveries", "--state", "delivered", "--json", "--config", str(config))
    assert code == 0 and json.loads(out) == api_delivered
    [row] = api_bad["deliveries"]
    # the other filters reach the same operation (what each matches: tests/ops)
    code, out = await cli(
        "deliveries", "--record", job["id"], "--type", "denoise.completed",
        "--since", "2000-01-01", "--until", "2999-01-01", "--json", "--config", str(config),
    )  # fmt: skip
    assert code == 0 and {d["record_id"] for d in json.loads(out)["deliveries"]} == {job["id"]}
    code, out = await cli("deliveries", "--since", "2999-01-01", "--json", "--config", str(config))
    assert code == 0 and json.loads(out)["deliveries"] == []

    code, out = await cli("deliveries", "--config", str(config))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "ID", "EVENT", "RECORD", "SUBSCRIBER", "STATE", "ATT", "LAST", "NEXT", "ATTEMPT"
    ]  # fmt: skip
    assert len(rows) == 3
    bad_row = next(r for r in rows if " bad " in r)
    assert bad_row.split()[:6] == [
        str(row["id"]), "denoise.completed", job["id"], "bad", "pending", "1"
    ]  # fmt: skip
    assert " 500 " in bad_row and row["next_attempt_at"] in bad_row


async def test_deliveries_refuses_bad_parameters(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(f'[upstream]\napi_key = "k"\n[store]\nurl = "sqlite:///{tmp_path}/s.db"\n')
    for args, message in [
        (["--state", "done"], "state: 'done' is not one of pending|delivered|failed|orphaned"),
        (["--limit", "0"], "limit: '0' is not an integer from 1 to 1000"),
        (["--limit", "many"], "limit: 'many' is not an integer from 1 to 1000"),
        (["--since", "yesterday"], "since: 'yesterday' is not an ISO 8601 time"),
        (["--type", "denoise.done"], "type: unknown event type 'denoise.done'"),
    ]:
        proc = await bridge_process(
            "deliveries", *args, "--config", str(config), stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        assert proc.returncode == 2 and message in err.decode()
    code, out = await cli("deliveries", "--config", str(config))
    assert code == 0 and out.strip() == "no deliveries"
    assert not (tmp_path / "s.db").exists()  # reading creates no store


async def test_status_and_deliveries_beside_a_running_bridge(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="test-key", clock=SystemClock(), processing_s=3600)
    [job] = sim.add_records(1, status="pending")
    ok, bad = RecordingReceiver(), RecordingReceiver(default_status=500)
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    ok_server: TestServer = await aiohttp_server(ok.app())
    bad_server: TestServer = await aiohttp_server(bad.app())
    config = write_config(
        tmp_path / "bridge.toml",
        str(sim_server.make_url("")).rstrip("/"),
        str(ok_server.make_url("/hook")),
        str(bad_server.make_url("/hook")),
        secret,
        admin_port=free_port(),
    )
    proc = await bridge_process(
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"baseline recorded" not in await proc.stdout.readline():
                pass
        sim.set_status(job["id"], "success")
        await asyncio.wait_for(ok.arrived.wait(), 30)
        await asyncio.wait_for(bad.arrived.wait(), 30)
        code, out = await cli("status", "--json", "--config", str(config))
        assert code == 0
        report = json.loads(out)
        assert report["bridge"] == {"running": True, "pid": proc.pid, "role": "leader"}
        assert report["poll"]["readyz"]["ready"] is True
        assert report["poll"]["readyz"]["last_poll_success_at"] is not None
        assert report["baseline_recorded"] is True
        code, out = await cli("status", "--config", str(config))
        assert f"bridge: running (pid {proc.pid}, role leader)" in out
        assert "poll health: ok" in out
        code, out = await cli("deliveries", "--json", "--config", str(config))
        assert code == 0
        found = {d["subscriber"]: d for d in json.loads(out)["deliveries"]}
        assert set(found) == {"ok", "bad", "later"}
        assert found["bad"]["last_attempt"]["status_code"] == 500
        assert found["later"]["state"] == "pending" and found["later"]["attempt_count"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    code, out = await cli("status", "--config", str(config))
    assert "bridge: not running" in out
