"""The gateway in a test: the Munsit simulator, a real SQLite store, a real aiohttp session
to Munsit, and `create_gateway_app` served on 127.0.0.1 through a small host whose `watch`
records what it was asked to follow and whose `baseline_recorded` is a switch."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bridge.clock import Clock
from bridge.config import Settings
from bridge.gateway.app import create_gateway_app
from bridge.metrics import Metrics
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import GatewayStore, Store
from bridge.store.factory import build_store

ServerFactory = Callable[..., Any]
SIM_KEY = "sim-key"
WAV_HEADER = (
    b"RIFF\x24\x00\x01\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00"
    b"\x80\x3e\x00\x00\x00\x7d\x00\x00\x02\x00\x10\x00data\x00\x00\x01\x00"
)


def wav(seconds: float = 1.0) -> bytes:
    """A small real WAV file (16 kHz mono 16-bit)."""
    frames = int(32_000 * seconds)
    return WAV_HEADER + b"\x00" * frames


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Host:
    """What `Service` provides the gateway, built from parts."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    store: Store
    session: aiohttp.ClientSession
    watched: list[str] = field(default_factory=list)
    baseline: bool = True  # what `baseline_recorded` answers: False to test the 503

    @property
    def jobs(self) -> GatewayStore:
        return self.store

    @property
    def upstream(self) -> aiohttp.ClientSession:
        return self.session

    async def baseline_recorded(self, account: str) -> bool:
        return self.baseline

    def watch(self, record_id: str) -> None:
        self.watched.append(record_id)


@dataclass
class Rig:
    sim: Simulator
    sim_server: TestServer
    gateway: TestServer
    host: Host
    tokens: dict[str, str]  # client id → token
    secrets: dict[str, str]  # client id → whsec_ secret

    def url(self, path: str = "/api/v1/denoise") -> str:
        return str(self.gateway.make_url(path))

    def auth(self, client: str = "alice") -> dict[str, str]:
        return {"x-api-key": self.tokens[client]}


@asynccontextmanager
async def gateway_rig(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    *,
    max_upload_bytes: int | None = None,
    allow_private: bool = True,
    alice_hosts: list[str] | None = None,
    sim_key: str = SIM_KEY,
    upstream_key: str = SIM_KEY,
    clock: FakeClock | None = None,
    upstream_url: str | None = None,
) -> AsyncIterator[Rig]:
    """`upstream_url`: another Munsit than the simulator (which still runs)."""
    clock = clock or FakeClock()
    sim = Simulator(api_key=sim_key, clock=clock, processing_s=5.0)
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    tokens = {"alice": secrets.token_urlsafe(32), "bob": secrets.token_urlsafe(32)}
    signing = {"alice": make_secret(), "bob": make_secret()}
    gateway: dict[str, Any] = {"enabled": True}
    if max_upload_bytes is not None:
        gateway["max_upload_bytes"] = max_upload_bytes
    settings = Settings.model_validate(
        {
            "upstream": {
                "base_url": upstream_url or str(sim_server.make_url("")).rstrip("/"),
                "api_key": upstream_key,
                "request_timeout_s": 10,
            },
            "store": {"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
            "delivery": {"allow_private_destinations": allow_private},
            "admin": {"enabled": False},
            "gateway": gateway,
            "clients": [
                {
                    "id": "alice",
                    "token": tokens["alice"],
                    "secret": signing["alice"],
                    "allowed_callback_hosts": (
                        ["127.0.0.1", "*.example.com", "localhost"]
                        if alice_hosts is None
                        else alice_hosts
                    ),
                },
                {"id": "bob", "token": tokens["bob"], "secret": signing["bob"]},
            ],
        }
    )
    store = build_store(settings)
    await store.open()
    try:
        async with aiohttp.ClientSession() as session:
            host = Host(settings, clock, Metrics(), store, session)
            server: TestServer = await aiohttp_server(create_gateway_app(host))
            yield Rig(sim, sim_server, server, host, tokens, signing)
    finally:
        await store.close()
