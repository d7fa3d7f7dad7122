"""`POST /api/subscribers/{id}/test`: the test event is signed with every current and previous
secret, goes through the same destination guard as deliveries, and reports what it met with
the URL as scheme, host and port only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from bridge.admin.app import create_app
from bridge.config import Settings
from bridge.service import Service
from bridge.sim.clock import FakeClock
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, ServerFactory
from tests.integration.leaks import SECRET_PARTS, GarbledReceiver, secret_url

SECRET, PREVIOUS = make_secret(31), (make_secret(32), make_secret(33))


def settings(url: str, db: Path, *, private: bool = True) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {"base_url": "http://127.0.0.1:9", "api_key": "k"},
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {"allow_private_destinations": private},
            "admin": {"enabled": False},
            "subscribers": [
                {"id": "rx", "url": url, "secret": SECRET, "previous_secrets": list(PREVIOUS)}
            ],
        }
    )


@asynccontextmanager
async def admin(config: Settings, clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    async with (
        Service(config, clock=clock) as svc,
        TestClient(TestServer(create_app(svc))) as http,
    ):
        yield http


async def send_test(config: Settings, clock: FakeClock) -> dict[str, Any]:
    async with admin(config, clock) as http:
        resp = await http.post("/api/subscribers/rx/test")
        assert resp.status == 200
        body: dict[str, Any] = json.loads(await resp.text())
    return body


async def test_the_test_event_is_signed_with_every_secret(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    rx = RecordingReceiver()
    server: TestServer = await aiohttp_server(rx.app())
    answer = await send_test(settings(str(server.make_url("/hook")), tmp_path / "b.db"), clock)
    assert answer["ok"] is True and answer["status_code"] == 200
    [request] = rx.requests
    assert len(request.headers["webhook-signature"].split()) == 3
    for secret in (SECRET, *PREVIOUS):  # a receiver holding any one of them accepts it
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "bridge.test"


async def test_a_private_destination_is_refused_unless_allowed(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    rx = RecordingReceiver()
    server: TestServer = await aiohttp_server(rx.app())
    url = str(server.make_url("/hook"))
    answer = await send_test(settings(url, tmp_path / "b.db", private=False), clock)
    assert rx.requests == []
    assert answer["ok"] is False and answer["status_code"] is None
    assert answer["error"].startswith(f"cannot connect to 127.0.0.1:{server.port}: ")
    assert "destination 127.0.0.1 refused: loopback address" in answer["error"]


async def test_the_answer_shows_the_url_as_scheme_host_and_port_only(
    clock: FakeClock, tmp_path: Path
) -> None:
    rx = GarbledReceiver()
    async with rx.serving() as port:
        answer = await send_test(settings(secret_url(port), tmp_path / "b.db"), clock)
    assert len(rx.request_lines) == 1
    assert answer["ok"] is False and answer["status_code"] is None
    assert answer["error"].startswith("invalid HTTP answer: ")
    text = json.dumps(answer)
    for secret in SECRET_PARTS:
        assert secret not in text
