"""The SSRF guard at delivery time: names and literals that lead to private addresses are
refused at connect time, as failed attempts retried on the schedule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.models import DeliveryState
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, settings_for

ServerFactory = Callable[..., Any]


async def deliver_one(
    sim_url: str, hook: str, secret: str, tmp_path: Path, clock: FakeClock, allow: bool
) -> Any:
    settings = settings_for(
        sim_url,
        hook,
        secret,
        tmp_path / f"b-{allow}.db",
        delivery={"allow_private_destinations": allow, "jitter": 0},
        upstream={"progress_stream": False},
    )
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        await clock.advance(3.5)
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
        [view] = await svc.store.list_deliveries()
    return view


@pytest.fixture
async def sim_url(clock: FakeClock, aiohttp_server: ServerFactory) -> tuple[Simulator, str]:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=3.0)
    server: TestServer = await aiohttp_server(sim.make_app())
    return sim, str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_private_destination_is_refused_then_allowed(
    host: str,
    sim_url: tuple[Simulator, str],
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    clock: FakeClock,
    secret: str,
) -> None:
    sim, url = sim_url
    receiver = RecordingReceiver()
    server: TestServer = await aiohttp_server(receiver.app())
    hook = f"http://{host}:{server.port}/hook"
    sim.add_records(1, status="pending")
    refused = await deliver_one(url, hook, secret, tmp_path, clock, allow=False)
    assert refused.state is DeliveryState.PENDING  # retried on the schedule: DNS may change
    assert refused.history[0].status_code is None
    assert "refused: loopback address" in (refused.history[0].error or "")
    assert receiver.requests == []
    sim.add_records(1, status="pending")
    allowed = await deliver_one(url, hook, secret, tmp_path, clock, allow=True)
    assert allowed.state is DeliveryState.DELIVERED and len(receiver.requests) == 1


async def test_redirect_to_a_private_address_is_not_followed(
    sim_url: tuple[Simulator, str],
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    clock: FakeClock,
    secret: str,
) -> None:
    sim, url = sim_url
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    app = web.Application()
    app.router.add_post("/hook", redirect)
    server: TestServer = await aiohttp_server(app)
    sim.add_records(1, status="pending")
    view = await deliver_one(url, str(server.make_url("/hook")), secret, tmp_path, clock, True)
    assert hits == ["/hook"]
    assert view.state is DeliveryState.PENDING
    assert view.history[0].status_code == 302
    assert "redirects are not followed" in (view.history[0].error or "")
