"""Test doubles that are real servers: a recording webhook receiver, and settings builders."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.config import Settings
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator

T = TypeVar("T")
ServerFactory = Callable[..., Any]


@dataclass
class Received:
    headers: dict[str, str]
    body: str


@dataclass
class RecordingReceiver:
    """Records every request; answers with scripted status codes, then `default_status`."""

    script: list[int] = field(default_factory=list)
    default_status: int = 200
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.text()))
        self.arrived.set()
        status = self.script.pop(0) if self.script else self.default_status
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app


def settings_for(
    upstream_url: str,
    receiver_url: str,
    secret: str,
    db: Path,
    *,
    events: list[str] | None = None,
    upstream: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    subscriber: dict[str, Any] | None = None,
) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {
                "base_url": upstream_url,
                "api_key": "test-key",
                "page_size": 5,
                **(upstream or {}),
            },
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {"allow_private_destinations": True, **(delivery or {})},
            "admin": {"enabled": False},
            "subscribers": [
                {
                    "id": "rx",
                    "url": receiver_url,
                    "secret": secret,
                    "events": events or ["denoise.completed", "denoise.failed"],
                    **(subscriber or {}),
                }
            ],
        }
    )


async def drive(
    clock: FakeClock, work: Coroutine[Any, Any, T] | Awaitable[T], max_steps: int = 10_000
) -> T:
    """Run `work` to completion; whenever it waits on the fake clock, jump to the wake-up."""
    task = asyncio.ensure_future(work)
    for _ in range(max_steps):
        wakeup = clock.next_wakeup_in()
        if wakeup is not None:
            await clock.advance(wakeup)
        else:
            await asyncio.wait({task}, timeout=0.01)  # real I/O in progress
        if task.done():
            return task.result()
    task.cancel()
    raise AssertionError("work did not finish")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bridge_process(*args: str, **kwargs: Any) -> Any:
    """`python -m bridge ARGS` as a real child process (stdin closed)."""
    env = kwargs.pop("env", None)
    if env is not None:
        env = {"PATH": "/usr/bin:/bin", **env}
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, env=env, stdin=asyncio.subprocess.DEVNULL, **kwargs
    )


async def one_attempt(
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    tmp_path: Path,
    respond: Callable[[web.Request], web.Response],
    **subscriber: Any,
) -> tuple[Any, list[dict[str, str]], list[str]]:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    seen: list[dict[str, str]] = []
    bodies: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        bodies.append(await request.text())
        return respond(request)

    app = web.Application()
    app.router.add_post("/hook", handle)
    rx: TestServer = await aiohttp_server(app)
    secret = subscriber.pop("secret", "whsec_" + base64.b64encode(os.urandom(32)).decode())
    settings = settings_for(
        str(up.make_url("")).rstrip("/"),
        str(rx.make_url("/hook")),
        secret,
        tmp_path / "b.db",
        delivery={"jitter": 0},
        upstream={"progress_stream": False},
        subscriber=subscriber,
    )
    sim.add_records(1, status="pending")
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        await clock.advance(1.5)
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
        [view] = await svc.store.list_deliveries()
    return view, seen, bodies
