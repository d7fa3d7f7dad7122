"""`munsit-bridge run` as a real process, and `munsit-bridge demo` in process."""

from __future__ import annotations

import asyncio
import io
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.clock import SystemClock
from bridge.models import event_id
from bridge.sim.demo import run_demo
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, bridge_process

ServerFactory = Callable[..., Any]


async def test_run_delivers_and_stops_cleanly_on_sigterm(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="proc-key", clock=SystemClock(), processing_s=3600)
    sim.add_records(3, status="success")
    [job] = sim.add_records(1, status="pending")
    receiver = RecordingReceiver()
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[upstream]
base_url = "{str(sim_server.make_url("")).rstrip("/")}"
poll_interval_s = 0.1
idle_poll_interval_s = 0.1
[store]
url = "sqlite:///{tmp_path / "state.db"}"
[delivery]
allow_private_destinations = true
[admin]
enabled = false
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
    assert proc.stdout is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while b"baseline recorded" not in (line := await proc.stdout.readline()):
                assert line, "the process ended before its baseline"
                seen.append(line)
        sim.set_status(job["id"], "success")
        await asyncio.wait_for(receiver.arrived.wait(), 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    out = b"".join(seen) + line + rest
    assert proc.returncode == 0, err.decode()
    [req] = receiver.requests
    body = Webhook(secret).verify(req.body, req.headers)
    assert body["id"] == event_id(job["id"], "denoise.completed")
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert any(line["event"] == "delivered" and line["subscriber"] == "rx" for line in lines)
    assert "proc-key" not in out.decode() + err.decode()
    assert secret not in out.decode() + err.decode()


async def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[upstream]\napi_key = 'k'\npoll_interval_s = -1\n")
    proc = await bridge_process(
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "upstream.poll_interval_s" in err.decode()


async def test_demo_passes() -> None:
    out = io.StringIO()
    assert await run_demo(out=out, timeout_s=60) == 0, out.getvalue()
    text = out.getvalue()
    assert "baseline: 4 existing records, no events" in text
    assert text.count("signature verified") == 10
    assert "answers 503" in text and "demo passed" in text


async def _check_live(config: Path, key: str) -> tuple[int, str, str]:
    proc = await bridge_process(
        "check",
        "--live",
        "--config",
        str(config),
        env={"MUNSIT_API_KEY": key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_check_live_reports_the_api_key(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    sim = Simulator(api_key="good-key", clock=SystemClock())
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[upstream]\nbase_url = "{str(sim_server.make_url("")).rstrip("/")}"\n'
        f'[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n'
    )
    code, out, _ = await _check_live(config, "good-key")
    assert code == 0 and "accepted the API key" in out
    code, _, err = await _check_live(config, "bad-key")
    assert code == 1 and "API key rejected" in err and "bad-key" not in err


async def test_simulate_serves_the_api(tmp_path: Path) -> None:
    proc = await bridge_process(
        "simulate",
        "--port",
        "0",
        "--api-key",
        "k",
        "--jobs",
        "12",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.split(" on ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/denoise", headers={"x-api-key": "k"}) as resp:
                records = await resp.json()
            async with http.get(f"{url}/denoise") as resp:
                assert resp.status == 401
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
    assert len(records) == 12
    assert proc.returncode == 0
