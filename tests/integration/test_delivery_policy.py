"""Delivery on the wire: receiver Retry-After in both forms, secret rotation, the configured
jitter in the stored retry time."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, one_attempt, settings_for

ServerFactory = Callable[..., Any]


async def test_retry_after_seconds(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    def busy(_: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "120"}, text="slow down")

    view, _, _ = await one_attempt(aiohttp_server, clock, tmp_path, busy)
    assert view.next_attempt_at - view.history[0].attempted_at == 120.0
    assert view.history[0].response_excerpt == "slow down"


async def test_retry_after_http_date(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    def unavailable(_: web.Request) -> web.Response:
        when = datetime.fromtimestamp(int(clock.now()) + 900, UTC)
        return web.Response(status=503, headers={"Retry-After": format_datetime(when, True)})

    view, _, _ = await one_attempt(aiohttp_server, clock, tmp_path, unavailable)
    waited = view.next_attempt_at - view.history[0].attempted_at
    assert 899.0 <= waited <= 900.0


async def test_rotation_every_secret_verifies(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    secrets = ["whsec_" + base64.b64encode(os.urandom(n)).decode() for n in (32, 24, 64)]

    def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    view, seen, bodies = await one_attempt(
        aiohttp_server, clock, tmp_path, ok, secret=secrets[0], previous_secrets=secrets[1:]
    )
    assert view.state.value == "delivered"
    assert len(seen[0]["webhook-signature"].split(" ")) == 3
    for secret in secrets:  # a receiver holding any one of them accepts the request
        assert Webhook(secret).verify(bodies[0], seen[0])["type"] == "denoise.completed"


async def test_response_excerpt_is_capped_at_4_kib(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    def chatty(_: web.Request) -> web.Response:
        return web.Response(status=500, text="é" * 10_000)  # 20 kB of two-byte characters

    view, _, _ = await one_attempt(aiohttp_server, clock, tmp_path, chatty)
    excerpt = view.history[0].response_excerpt
    assert len(excerpt.encode()) <= 4096 and excerpt == "é" * 2048
    assert view.history[0].latency_ms >= 0 and view.history[0].error == "HTTP 500"


async def test_the_configured_jitter_reaches_next_attempt_at(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """`delivery.jitter` = 0.25 and a rand of 0.9: every delay is 1 + 0.25 * (2 * 0.9 - 1)
    = 1.2 times the scheduled one, as stored, and the retry goes when that is due."""
    receiver = RecordingReceiver(default_status=500)
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    rx: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(up.make_url("")).rstrip("/"),
        str(rx.make_url("/hook")),
        make_secret(),
        tmp_path / "b.db",
        upstream={"progress_stream": False},
        delivery={"retry_schedule_s": [10, 100], "jitter": 0.25},
    )
    sim.add_records(1, status="pending")
    async with Service(settings, clock=clock, rand=lambda: 0.9) as svc:
        await svc.poller.tick()
        await clock.advance(1.5)
        await svc.poller.tick()
        delays, sent = [], []
        for wait_s in (0.0, 12.0 - 0.001, 0.001):  # not before 12 s, then at once
            await clock.advance(wait_s)
            sent.append(await svc.dispatcher.drain_once())
            [view] = await svc.store.list_deliveries()
            assert view.next_attempt_at is not None
            delays.append(view.next_attempt_at - view.history[-1].attempted_at)
    assert sent == [1, 0, 1] and [a.status_code for a in view.history] == [500, 500]
    assert delays[0] == delays[1] == pytest.approx(12.0)
    assert delays[2] == pytest.approx(120.0)
