"""Template subscribers through the real service: simulator upstream → SQLite → dispatcher
→ real aiohttp receivers; the template renders in a worker process, never on the event
loop, and the service ends its workers when it stops."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.config import Settings, load_settings
from bridge.deliver.templates.pool import POOL, RENDER_LIMIT_S
from bridge.models import DeliveryState
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver

ServerFactory = Callable[..., Any]
SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# one step in C that holds the GIL for seconds: JSON of 60 million items
BLOCK = "{% set a = [0] * 1000000 %}{% set b = [a] * 60 %}{{ b | tojson | length }}"


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=3.0)


@pytest.fixture
async def sim_url(sim: Simulator, aiohttp_server: ServerFactory) -> str:
    server: TestServer = await aiohttp_server(sim.make_app())
    return str(server.make_url("")).rstrip("/")


async def receiver_url(receiver: RecordingReceiver, aiohttp_server: ServerFactory) -> str:
    server: TestServer = await aiohttp_server(receiver.app())
    return str(server.make_url("/hook"))


def settings(sim_url: str, db: Path, *subscribers: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {"base_url": sim_url, "api_key": "test-key", "page_size": 5},
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {"allow_private_destinations": True},
            "admin": {"enabled": False},
            "subscribers": list(subscribers),
        }
    )


async def one_completion(sim: Simulator, svc: Service, clock: FakeClock) -> dict[str, Any]:
    [job] = sim.add_records(1, status="pending")
    await svc.poller.tick()
    await clock.advance(3.5)
    await svc.poller.tick()
    return job


def signature_matches(secret: str, headers: dict[str, str], body: str) -> bool:
    """The Standard Webhooks signature, without the library's wall-clock tolerance."""
    ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], ts, body)
    return expected in headers["webhook-signature"].split(" ")


async def test_text_plain_is_sent_as_such_and_signed(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock,
    secret: str, tmp_path: Path,
) -> None:  # fmt: skip
    receiver = RecordingReceiver()
    template = (
        "job {{ event.data.id }} is {{ event.data.status }}\nfile: {{ event.data.file_name }}"
    )
    sub = {
        "id": "plain", "url": await receiver_url(receiver, aiohttp_server), "secret": secret,
        "format": "template", "template": template, "content_type": "text/plain",
    }  # fmt: skip
    await POOL.close()  # whatever an earlier test left
    async with Service(settings(sim_url, tmp_path / "b.db", sub), clock=clock) as svc:
        job = await one_completion(sim, svc, clock)
        assert await svc.dispatcher.drain_once() == 1
        assert POOL.pool("plain").pids() == POOL.pids() and len(POOL.pids()) == 1  # its own
    assert POOL.pids() == []  # ended with the service
    [req] = receiver.requests
    assert req.headers["Content-Type"] == "text/plain"
    assert req.body == f"job {job['id']} is success\nfile: {job['file_name']}"
    assert signature_matches(secret, req.headers, req.body)
    assert not signature_matches(secret, req.headers, req.body + " ")


async def test_non_json_result_fails_the_attempt_and_sends_nothing(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock,
    tmp_path: Path,
) -> None:  # fmt: skip
    receiver = RecordingReceiver()
    sub = {
        "id": "n8n", "url": await receiver_url(receiver, aiohttp_server),
        "format": "template", "template": '{"job": {{ event.data.status }}}',
    }  # fmt: skip
    async with Service(settings(sim_url, tmp_path / "b.db", sub), clock=clock) as svc:
        await one_completion(sim, svc, clock)
        assert await svc.dispatcher.drain_once() == 1
        [view] = await svc.store.list_deliveries()
    assert receiver.requests == []
    assert view.state is DeliveryState.PENDING  # retried later, as any failed attempt
    [attempt] = view.history
    assert attempt.status_code is None
    assert attempt.error == (
        "cannot render: template: the result is not JSON: Expecting value: line 1 column 9 (char 8)"
    )


@pytest.mark.parametrize("template", [SLOW, BLOCK], ids=["template-loop", "step-in-c"])
async def test_a_slow_template_fails_in_time_while_the_loop_goes_on(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock,
    secret: str, tmp_path: Path, template: str,
) -> None:  # fmt: skip
    """The other subscriber's request arrives while the slow template renders, and the event
    loop keeps its beat all along: the render runs in a worker process, killed at the
    limit, be it a template loop or one long step in C."""
    slow_rx, fast_rx = RecordingReceiver(), RecordingReceiver()
    slow = {
        "id": "slow", "url": await receiver_url(slow_rx, aiohttp_server),
        "format": "template", "template": template, "content_type": "text/plain",
    }  # fmt: skip
    fast = {"id": "fast", "url": await receiver_url(fast_rx, aiohttp_server), "secret": secret}
    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    async with Service(settings(sim_url, tmp_path / "b.db", slow, fast), clock=clock) as svc:
        await one_completion(sim, svc, clock)
        beat = asyncio.create_task(heartbeat())
        started = time.monotonic()
        assert await svc.dispatcher.drain_once() == 2
        took = time.monotonic() - started
        beat.cancel()
        views = {v.subscriber_id: v for v in await svc.store.list_deliveries()}
    assert slow_rx.requests == [] and len(fast_rx.requests) == 1
    assert views["fast"].state is DeliveryState.DELIVERED
    [attempt] = views["slow"].history
    assert (
        attempt.error == f"cannot render: template: rendering took longer than {RENDER_LIMIT_S:g} s"
    )
    assert RENDER_LIMIT_S <= took < RENDER_LIMIT_S + 1.0  # ran to its limit, no further
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) > 20 and max(gaps) < 0.3, max(gaps)


async def test_template_file_beside_the_config_file(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock,
    secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    receiver = RecordingReceiver()
    conf = tmp_path / "etc"
    (conf / "templates").mkdir(parents=True)
    (conf / "templates" / "make.json.j2").write_text(
        '{"record": {{ event.record_id | tojson }}, "status": {{ event.data.status | tojson }},\n'
        ' "file": {{ event.data.file_name | tojson }}}\n'
    )
    (conf / "bridge.toml").write_text(
        f'[upstream]\nbase_url = "{sim_url}"\napi_key = "test-key"\n'
        f'[store]\nurl = "sqlite:///{tmp_path / "b.db"}"\n'
        "[delivery]\nallow_private_destinations = true\n[admin]\nenabled = false\n"
        f'[[subscribers]]\nid = "make"\nurl = "{await receiver_url(receiver, aiohttp_server)}"\n'
        f'secret = "{secret}"\nformat = "template"\ntemplate_file = "templates/make.json.j2"\n'
    )
    monkeypatch.chdir(tmp_path)  # the file is found beside the config, not here
    loaded = load_settings(conf / "bridge.toml")
    async with Service(loaded, clock=clock) as svc:
        job = await one_completion(sim, svc, clock)
        assert await svc.dispatcher.drain_once() == 1
    [req] = receiver.requests
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == (
        f'{{"record": "{job["id"]}", "status": "success",\n "file": "{job["file_name"]}"}}'
    )
    assert signature_matches(secret, req.headers, req.body)


async def test_no_template_subscriber_no_worker_process(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock,
    secret: str, tmp_path: Path,
) -> None:  # fmt: skip
    await POOL.close()  # whatever an earlier test left
    receiver = RecordingReceiver()
    sub = {"id": "std", "url": await receiver_url(receiver, aiohttp_server), "secret": secret}
    async with Service(settings(sim_url, tmp_path / "b.db", sub), clock=clock) as svc:
        await one_completion(sim, svc, clock)
        assert await svc.dispatcher.drain_once() == 1
        assert POOL.pids() == []
    assert len(receiver.requests) == 1
