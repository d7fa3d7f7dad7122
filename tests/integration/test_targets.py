"""Chat and automation targets on the wire: Slack's 1/s default, Slack's plain-text errors,
Discord's JSON 429, and Standard Webhooks headers on every format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.config import Settings
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, ServerFactory, one_attempt


async def test_slack_defaults_to_one_request_per_second(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    receiver = RecordingReceiver()
    rx: TestServer = await aiohttp_server(receiver.app())
    settings = Settings.model_validate(
        {
            "upstream": {
                "base_url": str(up.make_url("")).rstrip("/"),
                "api_key": "test-key",
                "progress_stream": False,
            },
            "store": {"url": f"sqlite:///{tmp_path / 'b.db'}"},
            "delivery": {"allow_private_destinations": True},
            "admin": {"enabled": False},
            "subscribers": [{"id": "chat", "url": str(rx.make_url("/hook")), "format": "slack"}],
        }
    )
    assert settings.subscribers[0].rate_per_s == 1.0
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        sim.add_records(4, status="success")
        await svc.poller.tick()
        per_second = []
        for _ in range(5):
            per_second.append(await svc.dispatcher.drain_once())
            await clock.advance(1.0)
    assert per_second == [1, 1, 1, 1, 0]
    assert all("blocks" in json.loads(r.body) for r in receiver.requests)


async def test_slack_plain_text_error_is_recorded(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    def bad(_: web.Request) -> web.Response:
        return web.Response(status=400, text="invalid_payload")

    view, _, bodies = await one_attempt(aiohttp_server, clock, tmp_path, bad, format="slack")
    assert view.history[0].response_excerpt == "invalid_payload"
    assert view.history[0].status_code == 400
    assert "blocks" in json.loads(bodies[0])


async def test_discord_429_body_retry_after_is_honoured(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    def limited(_: web.Request) -> web.Response:
        body = {"message": "You are being rate limited.", "retry_after": 42.5, "global": False}
        return web.json_response(body, status=429)

    view, _, bodies = await one_attempt(
        aiohttp_server, clock, tmp_path, limited, format="discord", secret=None
    )
    assert view.next_attempt_at - view.history[0].attempted_at == pytest.approx(42.5)
    assert json.loads(bodies[0])["allowed_mentions"] == {"parse": []}


@pytest.mark.parametrize("fmt", ["zapier", "slack", "discord", "teams"])
async def test_every_format_is_signed(
    fmt: str, aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    from standardwebhooks.webhooks import Webhook

    secret = make_secret(7)

    def ok(_: web.Request) -> web.Response:
        return web.Response(status=204)

    view, seen, bodies = await one_attempt(
        aiohttp_server, clock, tmp_path, ok, format=fmt, secret=secret
    )
    assert view.state.value == "delivered"
    assert Webhook(secret).verify(bodies[0], seen[0]) is not None
