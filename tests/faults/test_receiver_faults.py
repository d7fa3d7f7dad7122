"""Receiver fault matrix (CONTRACT §4), end to end: the real dispatcher and a SQLite file
against a real receiver on 127.0.0.1 that misbehaves one way per row. Each row checks how the
attempt is recorded, where the delivery and the subscriber stand, and that the retry goes out
when due, with the same `webhook-id`, and succeeds once the receiver has recovered."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.config import Settings
from bridge.models import DeliveryFilter, DeliveryState, DeliveryView
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import SubscriberHealth
from bridge.store.sqlite import SqliteStore
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, settings_for

ServerFactory = Callable[..., Any]

TIMEOUT_S = 0.5  # `delivery.timeout_s` of the rows that wait for it: real time, kept short
PATIENT_S = 10.0  # `delivery.timeout_s` of every other row: never reached on loopback
FIRST_DELAY_S = 5.0  # retry_schedule_s[0] of the defaults; jitter is centred (rand = 0.5)
SLOW_BODY = b"accepted, eventually" * 4
TRICKLE_S = 0.05  # one byte this often: the whole body takes ~4 s, far beyond TIMEOUT_S
CLOCK_TICK_MS = 16.0  # the coarsest monotonic clock's resolution (Linux's is 1 ns)


@dataclass
class FaultyReceiver:
    """A webhook endpoint that misbehaves as scripted, one fault per request, then answers
    200. Every request is recorded before the fault, headers and body."""

    clock: FakeClock
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[dict[str, str], str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends hung handlers
    elsewhere: str = ""  # a second endpoint, for redirects

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.text()))
        if self.faults:
            return await self.faults.pop(0)(request, self)
        return web.Response(text="ok")

    @property
    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.requests]


Fault = Callable[[web.Request, FaultyReceiver], Awaitable[web.StreamResponse]]


def answer(status: int, text: str = "", retry_after: str | None = None) -> Fault:
    headers = {} if retry_after is None else {"Retry-After": retry_after}

    async def respond(_: web.Request, __: FaultyReceiver) -> web.StreamResponse:
        if status == 204:
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, text=text, headers=headers)

    return respond


def retry_after_date(status: int, ahead_s: int) -> Fault:
    """`Retry-After` as an HTTP date, `ahead_s` after the bridge's (fake) now."""

    async def respond(_: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
        when = datetime.fromtimestamp(int(rx.clock.now()) + ahead_s, UTC)
        return web.Response(
            status=status, text="later", headers={"Retry-After": format_datetime(when, True)}
        )

    return respond


async def redirect(_: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
    return web.Response(status=302, text="moved", headers={"Location": rx.elsewhere})


async def hang(_: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
    """Never answers while the bridge waits."""
    await rx.release.wait()
    return web.Response(text="too late")


async def hang_up(request: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
    """Closes the connection without a word of answer."""
    assert request.transport is not None
    request.transport.close()
    await rx.release.wait()
    return web.Response(text="unheard")


async def reset(request: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
    """Aborts the connection with a TCP RST (SO_LINGER 0) instead of answering."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await rx.release.wait()
    return web.Response(text="unheard")


async def slow_body(request: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
    """200 and its headers at once, then the body one byte at a time: the whole response takes
    far longer than `timeout_s`."""
    response = web.StreamResponse(status=200, headers={"Content-Length": str(len(SLOW_BODY))})
    await response.prepare(request)
    try:
        for byte in SLOW_BODY:
            if rx.release.is_set():
                break
            await response.write(bytes([byte]))
            await asyncio.sleep(TRICKLE_S)  # the receiver's fault, not the test waiting
    except ConnectionError:
        pass  # the bridge hung up, as it should
    return response


def cut_off_after(status: int) -> Fault:
    async def respond(request: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
        """`status` and part of the body, then the connection closes before the rest."""
        response = web.StreamResponse(
            status=status, headers={"Content-Length": str(len(SLOW_BODY))}
        )
        await response.prepare(request)
        await response.write(SLOW_BODY[:10])
        assert request.transport is not None
        request.transport.close()
        await rx.release.wait()
        return response

    return respond


cut_off = cut_off_after(200)


async def endless_body(request: web.Request, rx: FaultyReceiver) -> web.StreamResponse:
    """200, then a body that never ends, as fast as the bridge reads it: 1 MiB of it is
    read, the answer counts, and the bridge hangs up."""
    response = web.StreamResponse(status=200)
    await response.prepare(request)
    chunk = b"x" * 65536
    try:
        while not rx.release.is_set():
            await response.write(chunk)
    except ConnectionError:
        pass  # the bridge hung up, as it should
    return response


@dataclass(frozen=True)
class Row:
    """One fault and what CONTRACT §4 makes of it."""

    fault: Fault
    status: int | None  # the attempt's stored status code (None: no HTTP answer)
    error: str | None  # regex the stored error must match in full (None: no error)
    excerpt: str  # the stored response excerpt
    state: DeliveryState  # after the first attempt
    delay_s: float | None = None  # next_attempt_at - attempted_at, for a pending delivery
    delay_slack_s: float = 0.0  # an HTTP date counts whole seconds
    timeout_s: float = PATIENT_S
    disables: bool = False
    cut: bool = False  # the stored excerpt may be the part of the body that arrived


TIMED_OUT = f"timed out after {TIMEOUT_S} s"
DISCONNECTED = "ServerDisconnectedError: Server disconnected"
RESET = r"ClientOSError: \[Errno \d+\] Connection reset by peer"
PENDING, DELIVERED = DeliveryState.PENDING, DeliveryState.DELIVERED

MATRIX = {
    "200": Row(answer(200, "ok"), 200, None, "ok", DELIVERED),
    "202": Row(answer(202, "queued"), 202, None, "queued", DELIVERED),
    "204": Row(answer(204), 204, None, "", DELIVERED),
    "500": Row(answer(500, "boom"), 500, "HTTP 500", "boom", PENDING, FIRST_DELAY_S),
    "500 Retry-After is not honoured": Row(
        answer(500, "boom", retry_after="600"), 500, "HTTP 500", "boom", PENDING, FIRST_DELAY_S
    ),
    "410 disables at once": Row(
        answer(410, "gone"), 410, "HTTP 410", "gone", PENDING, FIRST_DELAY_S, disables=True
    ),
    "429 Retry-After seconds": Row(
        answer(429, "slow down", retry_after="120"), 429, "HTTP 429", "slow down", PENDING, 120
    ),
    "429 Retry-After HTTP date": Row(
        retry_after_date(429, 900), 429, "HTTP 429", "later", PENDING, 900, delay_slack_s=1.0
    ),
    "429 Retry-After shorter than the schedule": Row(
        answer(429, "soon", retry_after="2"), 429, "HTTP 429", "soon", PENDING, FIRST_DELAY_S
    ),
    "429 Retry-After capped at 1 h": Row(
        answer(429, "tomorrow", retry_after="86400"), 429, "HTTP 429", "tomorrow", PENDING, 3600
    ),
    "503 Retry-After seconds": Row(
        answer(503, "busy", retry_after="600"), 503, "HTTP 503", "busy", PENDING, 600
    ),
    "503 Retry-After HTTP date": Row(
        retry_after_date(503, 1800), 503, "HTTP 503", "later", PENDING, 1800, delay_slack_s=1.0
    ),
    "302 is not followed": Row(
        redirect, 302, r"HTTP 302 \(redirects are not followed\)", "moved", PENDING, FIRST_DELAY_S
    ),
    "timeout": Row(
        hang, None, re.escape(TIMED_OUT), "", PENDING, FIRST_DELAY_S, timeout_s=TIMEOUT_S
    ),
    "connection closed unanswered": Row(hang_up, None, DISCONNECTED, "", PENDING, FIRST_DELAY_S),
    "connection reset": Row(reset, None, RESET, "", PENDING, FIRST_DELAY_S),
    # a 200 whose body never completes is no answer: a timeout, or a connection error
    "slow body": Row(
        slow_body,
        None,
        re.escape(TIMED_OUT) + ".*",
        "",
        PENDING,
        FIRST_DELAY_S,
        timeout_s=TIMEOUT_S,
        cut=True,
    ),
    "endless body": Row(endless_body, 200, None, "x" * 4096, DELIVERED),
    "body cut off": Row(
        cut_off, None, r"ClientPayloadError: .+", "", PENDING, FIRST_DELAY_S, cut=True
    ),
    # a refusal counts even when its body does not arrive whole
    "410 with its body cut off": Row(
        cut_off_after(410),
        410,
        r"ClientPayloadError: .+",
        "",
        PENDING,
        FIRST_DELAY_S,
        disables=True,
        cut=True,
    ),
}


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=1.0)


@pytest.fixture
async def receiver(
    aiohttp_server: ServerFactory, clock: FakeClock
) -> AsyncIterator[tuple[FaultyReceiver, str]]:
    rx = FaultyReceiver(clock)
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    server: TestServer = await aiohttp_server(app)
    yield rx, str(server.make_url("/hook"))
    rx.release.set()  # hung handlers end before their server shuts down


@pytest.fixture
async def elsewhere(aiohttp_server: ServerFactory) -> tuple[RecordingReceiver, str]:
    target = RecordingReceiver()
    server: TestServer = await aiohttp_server(target.app())
    return target, str(server.make_url("/hook"))


@pytest.fixture
async def make_settings(
    sim: Simulator,
    aiohttp_server: ServerFactory,
    receiver: tuple[FaultyReceiver, str],
    tmp_path: Path,
) -> Callable[..., Settings]:
    up: TestServer = await aiohttp_server(sim.make_app())

    def build(**delivery: Any) -> Settings:
        return settings_for(
            str(up.make_url("")).rstrip("/"),
            receiver[1],
            make_secret(),
            tmp_path / "bridge.db",
            upstream={"progress_stream": False},
            delivery=delivery,
        )

    return build


async def one_event_queued(svc: Service, sim: Simulator, clock: FakeClock) -> None:
    """Baseline with one pending job, which then completes: one delivery in the outbox."""
    sim.add_records(1, status="pending")
    await svc.poller.tick()
    await clock.advance(1.5)
    await svc.poller.tick()


async def stored(db: Path) -> tuple[DeliveryView, SubscriberHealth]:
    """The delivery and the subscriber's health as the SQLite file holds them, read through a
    connection of its own."""
    store = SqliteStore(db)
    await store.open()
    try:
        [view] = await store.list_deliveries()
        health = (await store.subscriber_health()).get("rx", SubscriberHealth())
    finally:
        await store.close()
    return view, health


@pytest.mark.parametrize("row", MATRIX.values(), ids=MATRIX.keys())
async def test_receiver_fault_is_classified_per_contract(
    row: Row,
    sim: Simulator,
    receiver: tuple[FaultyReceiver, str],
    elsewhere: tuple[RecordingReceiver, str],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    rx, _ = receiver
    rx.faults = [row.fault]
    rx.elsewhere = elsewhere[1]
    settings = make_settings(timeout_s=row.timeout_s)
    db = tmp_path / "bridge.db"
    async with Service(settings, clock=clock, rand=lambda: 0.5) as svc:
        await one_event_queued(svc, sim, clock)
        started = time.perf_counter()  # the clock the bridge times requests with
        assert await svc.dispatcher.drain_once() == 1  # returns once the outcome is stored
        elapsed_ms = (time.perf_counter() - started) * 1000

        view, health = await stored(db)
        [attempt] = view.history
        assert view.attempts == 1 and len(rx.requests) == 1
        assert attempt.status_code == row.status
        if row.error is None:
            assert attempt.error is None
        else:
            assert re.fullmatch(row.error, attempt.error or ""), attempt.error
        if row.cut:
            assert SLOW_BODY.decode().startswith(attempt.response_excerpt)
        else:
            assert attempt.response_excerpt == row.excerpt
        assert attempt.attempted_at == clock.now()
        # bounds that hold however loaded the machine: the request is part of the drain, and
        # a timeout fires no earlier than it is due (give or take a coarse clock's tick)
        assert 0.0 < attempt.latency_ms <= elapsed_ms
        if row.timeout_s == TIMEOUT_S:
            assert attempt.latency_ms >= TIMEOUT_S * 1000 - CLOCK_TICK_MS  # it waited it out
        assert view.state is row.state

        if row.state is DELIVERED:
            assert view.next_attempt_at is None
            assert health.failing_since is None and health.disabled_at is None
            return

        assert row.delay_s is not None and view.next_attempt_at is not None
        delay_s = view.next_attempt_at - attempt.attempted_at
        assert row.delay_s - row.delay_slack_s - 1e-6 <= delay_s <= row.delay_s + 1e-6
        assert health.failing_since == attempt.attempted_at
        if row.disables:
            assert health.disabled_at == attempt.attempted_at
            assert health.reason == "the endpoint answered 410 Gone"
            assert svc.dispatcher.active == []
            await clock.advance(delay_s + 3600)  # long past due: nothing goes to it
            assert await svc.dispatcher.drain_once() == 0
            view, _ = await stored(db)
            assert view.state is PENDING and view.attempts == 1  # kept, waiting
            await svc.dispatcher.set_enabled("rx", True, reason="the operator re-enabled it")
        else:
            assert health.disabled_at is None and svc.dispatcher.active == ["rx"]
            await clock.advance(delay_s - 0.5)
            assert await svc.dispatcher.drain_once() == 0  # not before it is due
            await clock.advance(0.5)

        assert await svc.dispatcher.drain_once() == 1  # the receiver has recovered
        view, health = await stored(db)

    assert view.state is DELIVERED and view.next_attempt_at is None
    assert [a.status_code for a in view.history] == [row.status, 200]
    assert view.history[1].error is None and view.history[1].response_excerpt == "ok"
    assert rx.ids == [view.event_id, view.event_id]
    assert health.failing_since is None and health.disabled_at is None
    assert elsewhere[0].requests == []  # a redirect's Location is never visited


async def test_dead_lettered_after_the_last_scheduled_attempt_whatever_the_faults(
    sim: Simulator,
    receiver: tuple[FaultyReceiver, str],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Every failure kind counts towards the schedule; after the last one the delivery is a
    dead letter, kept and listed, and the subscriber is not disabled for it."""
    rx, _ = receiver
    rx.faults = [answer(500, "boom"), hang, reset]
    settings = make_settings(timeout_s=TIMEOUT_S, retry_schedule_s=[5, 300])
    async with Service(settings, clock=clock, rand=lambda: 0.5) as svc:
        await one_event_queued(svc, sim, clock)
        for wait_s in (0.0, 5.0, 300.0):
            await clock.advance(wait_s)
            assert await svc.dispatcher.drain_once() == 1
        await clock.advance(3600)
        assert await svc.dispatcher.drain_once() == 0
        [listed] = await svc.store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED))
        assert svc.dispatcher.active == ["rx"]
    view, health = await stored(tmp_path / "bridge.db")
    assert view.id == listed.id and view.state is DeliveryState.FAILED
    assert view.attempts == 3 and view.next_attempt_at is None
    assert [a.status_code for a in view.history] == [500, None, None]
    assert view.history[1].error == TIMED_OUT
    assert re.fullmatch(RESET, view.history[2].error or "")
    assert health.disabled_at is None
    assert rx.ids == [view.event_id] * 3
