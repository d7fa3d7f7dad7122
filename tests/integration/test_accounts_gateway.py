"""A gateway client's `account`: its submissions use that account's key and URL, its jobs
are that account's records (`<account>/<id>` inside the bridge, the Munsit id outside), and
its callback carries the account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bridge.config import Settings
from bridge.gateway.app import create_gateway_app
from bridge.models import COMPLETED, event_id
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.gateway_rig import make_secret, wav
from tests.integration.helpers import RecordingReceiver, ServerFactory

TOKEN = "token-of-bob-0123456789"


async def test_a_clients_account_submits_with_its_key_and_calls_back_with_it(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path, secret: str
) -> None:
    sims = {n: Simulator(api_key=f"key-{n}", clock=clock, processing_s=1.0) for n in "ab"}
    urls = {}
    for name, sim in sims.items():
        served: TestServer = await aiohttp_server(sim.make_app())
        urls[name] = str(served.make_url("")).rstrip("/")
    callback = RecordingReceiver()
    callback_server: TestServer = await aiohttp_server(callback.app())
    client_secret = make_secret()
    settings = Settings.model_validate(
        {
            "upstream": {"page_size": 5, "progress_stream": False},
            "accounts": [{"id": n, "api_key": f"key-{n}", "base_url": urls[n]} for n in "ab"],
            "store": {"url": f"sqlite:///{tmp_path / 'b.db'}"},
            "delivery": {"allow_private_destinations": True, "jitter": 0},
            "admin": {"enabled": False},
            "gateway": {"enabled": True},
            "clients": [{"id": "bob", "token": TOKEN, "secret": client_secret, "account": "b"}],
        }
    )
    async with Service(settings, clock=clock) as svc:
        gateway: TestServer = await aiohttp_server(create_gateway_app(svc))
        auth = {"x-api-key": TOKEN}
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("callback_url", str(callback_server.make_url("/hook")))
            form.add_field("audio", wav(), filename="v.wav", content_type="audio/wav")
            async with http.post(gateway.make_url("/api/v1/denoise"), data=form, headers=auth) as r:
                assert r.status == 503  # b's first poll has not recorded its baseline yet
            for account in svc.accounts.values():
                await account.poller.tick()
            form = aiohttp.FormData()
            form.add_field("callback_url", str(callback_server.make_url("/hook")))
            form.add_field("audio", wav(), filename="v.wav", content_type="audio/wav")
            async with http.post(gateway.make_url("/api/v1/denoise"), data=form, headers=auth) as r:
                assert r.status == 200, await r.text()
                rid = (await r.json())["denoiseId"]
            assert (sims["a"].submissions, sims["b"].submissions) == (0, 1)  # b's key, b's URL
            assert await svc.store.job(f"b/{rid}") is not None and await svc.store.job(rid) is None
            async with http.get(gateway.make_url(f"/api/v1/denoise/{rid}"), headers=auth) as r:
                assert r.status == 200 and (await r.json())["id"] == rid
            await clock.advance(1.5)
            for account in svc.accounts.values():
                await account.poller.tick()
            await svc.dispatcher.drain_once()
    [request] = callback.requests
    body: dict[str, Any] = json.loads(request.body)
    assert body["type"] == COMPLETED and body["account"] == "b"
    assert body["data"]["id"] == rid and body["id"] == event_id(f"b/{rid}", COMPLETED)
