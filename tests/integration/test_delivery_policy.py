"""Delivery on the wire: receiver Retry-After in both forms, secret rotation."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from bridge.clock import FakeClock
from tests.integration.helpers import one_attempt

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
