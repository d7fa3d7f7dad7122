"""Receivers and bodies that used to stop a delivery short of an outcome: bytes that are not
HTTP, a `Retry-After` of Unicode digits, a body that cannot be rendered. Each attempt is a
failed attempt with its error text, counted against the schedule, so the delivery is
dead-lettered after exactly 1 + len(retry_schedule_s) attempts; and the credential in the
subscriber URL (user-info, path, query) is in no log line, stored row or admin answer."""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.app import create_app
from bridge.config import Settings
from bridge.deliver import dispatcher, sender
from bridge.deliver.formats import render
from bridge.logging import configure
from bridge.models import DeliveryState, Event
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.sqlite import SqliteStore
from tests.conftest import make_secret
from tests.integration.helpers import ServerFactory
from tests.integration.leaks import SECRET_PARTS, GarbledReceiver, secret_url, store_files

SCHEDULE_S = [5.0, 300.0]
ATTEMPTS = 1 + len(SCHEDULE_S)


@dataclass
class Counter:
    requests: int = 0


@asynccontextmanager
async def garbled(_: ServerFactory, __: Counter) -> AsyncIterator[tuple[str, Callable[[], int]]]:
    rx = GarbledReceiver()
    async with rx.serving() as port:
        yield secret_url(port), lambda: len(rx.request_lines)


def aiohttp_receiver(status: int, text: str, **headers: str) -> Any:
    @asynccontextmanager
    async def serve(
        aiohttp_server: ServerFactory, count: Counter
    ) -> AsyncIterator[tuple[str, Callable[[], int]]]:
        async def handle(request: web.Request) -> web.Response:
            count.requests += 1
            await request.read()
            return web.Response(status=status, text=text, headers=headers)

        app = web.Application()
        app.router.add_post("/hooks/{token}/x", handle)
        server: TestServer = await aiohttp_server(app)
        assert server.port is not None
        yield secret_url(server.port), lambda: count.requests

    return serve


def echoing_receiver(*, json_escaped: bool) -> Any:
    """A 404 page quoting the path and query it was sent to, as web frameworks' default
    pages do (plain, or with JSON's escaped slashes)."""

    @asynccontextmanager
    async def serve(
        aiohttp_server: ServerFactory, count: Counter
    ) -> AsyncIterator[tuple[str, Callable[[], int]]]:
        async def handle(request: web.Request) -> web.Response:
            count.requests += 1
            await request.read()
            if json_escaped:
                text = json.dumps({"error": f"no route {request.path_qs}"}).replace("/", "\\/")
            else:
                text = f"Cannot POST {request.path_qs}"
            return web.Response(status=404, text=text)

        app = web.Application()
        app.router.add_post("/hooks/{token}/x", handle)
        server: TestServer = await aiohttp_server(app)
        assert server.port is not None
        yield secret_url(server.port), lambda: count.requests

    return serve


def broken_render(event: Event, fmt: str) -> str:
    """The render port, failing for one subscriber's format (discord) and only that one."""
    if fmt == "discord":
        raise RuntimeError("the render port is broken")
    return render(event, fmt)


def isdigit_parser(value: str | None, *, now: float) -> float | None:
    """main's `Retry-After` parser: `str.isdigit()` says yes to '²', `float()` raises."""
    return float(value) if value and value.isdigit() else None


@dataclass(frozen=True)
class Row:
    receiver: Any
    status: int | None  # of every attempt
    error: str  # regex every stored error matches in full
    requests: int  # the receiver saw
    port: tuple[Any, str, Callable[..., Any]] | None = None  # a fault injected at a port
    send_test_ok: bool = False  # the test event, through the same receiver


ROWS = {
    "bytes that are not HTTP, quoting the request line": Row(
        garbled, None, r"invalid HTTP answer: .*not http; you sent: POST <redacted> HTTP/1\.1.*", 3
    ),
    "404 quoting the path and query": Row(echoing_receiver(json_escaped=False), 404, "HTTP 404", 3),
    "404 quoting the path and query, JSON-escaped": Row(
        echoing_receiver(json_escaped=True), 404, "HTTP 404", 3
    ),
    "503 with Retry-After: ²": Row(
        aiohttp_receiver(503, "busy", **{"Retry-After": "²"}), 503, "HTTP 503", 3
    ),
    # anything raised while reading an answer is an attempt too: main's parser put back
    "503 with Retry-After: ², read by a parser that raises": Row(
        aiohttp_receiver(503, "busy", **{"Retry-After": "²"}),
        503,
        r"ValueError: could not convert string to float: '²'",
        3,
        port=(sender, "parse_retry_after", isdigit_parser),
    ),
    "a body that cannot be rendered": Row(
        aiohttp_receiver(200, "ok"),
        None,
        r"cannot render: RuntimeError: the render port is broken",
        0,
        port=(dispatcher, "render", broken_render),
        send_test_ok=True,  # send-test renders its event without that port
    ),
}


def settings(sim_url: str, url: str, db: Path) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {"base_url": sim_url, "api_key": "test-key", "progress_stream": False},
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {
                "allow_private_destinations": True,
                "retry_schedule_s": SCHEDULE_S,
                "jitter": 0.2,  # centred by rand = 0.5
            },
            "admin": {"enabled": False},
            "subscribers": [{"id": "rx", "url": url, "secret": make_secret(), "format": "discord"}],
        }
    )


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
async def test_every_attempt_is_recorded_and_no_url_secret_is_written(
    row: Row,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if row.port is not None:
        monkeypatch.setattr(*row.port)
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    db = tmp_path / "bridge.db"
    out = io.StringIO()
    configure("debug", "json", out)
    answers: list[str] = []
    async with AsyncExitStack() as stack:
        url, seen = await stack.enter_async_context(row.receiver(aiohttp_server, Counter()))
        config = settings(str(up.make_url("")).rstrip("/"), url, db)
        svc = await stack.enter_async_context(Service(config, clock=clock, rand=lambda: 0.5))
        sim.add_records(1, status="pending")
        await svc.poller.tick()  # baseline: the pending job is tracked
        await clock.advance(1.5)
        await svc.poller.tick()  # it completed: one delivery
        for wait_s in (0.0, *SCHEDULE_S):
            await clock.advance(wait_s)
            assert await svc.dispatcher.drain_once() == 1  # returns once it is recorded
        await clock.advance(3600)
        assert await svc.dispatcher.drain_once() == 0  # dead-lettered: nothing more goes
        requests = seen()
        http = await stack.enter_async_context(TestClient(TestServer(create_app(svc))))
        for path in ("/api/deliveries", "/api/deliveries/1", "/api/subscribers"):
            resp = await http.get(path)
            assert resp.status == 200
            answers.append(await resp.text())
        resp = await http.post("/api/subscribers/rx/test")
        answers.append(await resp.text())  # send-test: what it met, URL redacted

    store = SqliteStore(db)
    await store.open()
    try:
        [view] = await store.list_deliveries()
    finally:
        await store.close()
    assert view.state is DeliveryState.FAILED and view.next_attempt_at is None
    assert view.attempts == ATTEMPTS == len(view.history)
    assert requests == row.requests
    for attempt in view.history:
        assert attempt.status_code == row.status
        assert re.fullmatch(row.error, attempt.error or ""), attempt.error
    times = [a.attempted_at for a in view.history]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps == SCHEDULE_S  # a Retry-After that is not ASCII digits is no hint at all
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["attempt"] for line in lines if line["event"].startswith("delivery")] == [1, 2, 3]
    assert json.loads(answers[-1])["ok"] is row.send_test_ok

    written = [out.getvalue(), *answers, *(a.error or "" for a in view.history), *store_files(db)]
    for secret in SECRET_PARTS:
        for text in written:
            assert secret not in text
