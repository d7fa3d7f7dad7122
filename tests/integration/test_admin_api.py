"""The admin HTTP API (CONTRACT §5) end to end: the real app over a real `Service`, a SQLite
file, the simulator upstream and recording receivers. Every route's success and error cases,
the bearer token, and `/readyz` as the poller and the clock move."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from bridge.admin.app import create_app
from bridge.config import Settings, SubscriberConfig
from bridge.deliver.verify import verify
from bridge.models import (
    COMPLETED,
    CREATED,
    FAILED_EVENT,
    TEST,
    DeliveryState,
    event_id,
    iso_utc,
)
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive, settings_for

Client = TestClient[web.Request, web.Application]
TOKEN = "tok-3f9a1c-admin"
SLACK_TOKEN = "xQ7vSecretSlackPathToken"
SLACK_URL = f"https://hooks.slack.com/services/T0ADMIN1/B0ADMIN2/{SLACK_TOKEN}"
KEYED_URL = "https://ops:pa55word@hooks.example.com:8443/in/?sig=QueryToken9"


@dataclass
class World:
    """What a service runs against: the simulator, two receivers (each a real server) and
    a database file that outlives any one `Service`."""

    sim: Simulator
    clock: FakeClock
    rx: RecordingReceiver  # subscriber "rx"
    other: RecordingReceiver  # free for the extra subscribers a test adds
    upstream_url: str
    rx_url: str
    other_url: str
    db: Path
    secret: str

    def settings(
        self,
        *,
        token: str | None = None,
        extra: Sequence[dict[str, Any]] = (),
        delivery: dict[str, Any] | None = None,
    ) -> Settings:
        base = settings_for(
            self.upstream_url,
            self.rx_url,
            self.secret,
            self.db,
            upstream={"backfill": True, "progress_stream": False},
            delivery={"jitter": 0, "retry_schedule_s": [1], **(delivery or {})},
        )
        subs = [*base.subscribers, *(SubscriberConfig.model_validate(x) for x in extra)]
        admin = base.admin.model_copy(update={"token": SecretStr(token) if token else None})
        return base.model_copy(update={"subscribers": subs, "admin": admin})

    def sub(self, sid: str, **kw: Any) -> dict[str, Any]:
        """An extra subscriber posting to the `other` receiver."""
        return {"id": sid, "url": self.other_url, "secret": self.secret, **kw}


@pytest.fixture
async def world(
    aiohttp_server: ServerFactory, clock: FakeClock, secret: str, tmp_path: Path
) -> World:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=3600)
    rx, other = RecordingReceiver(), RecordingReceiver()
    up: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(rx.app())
    other_server: TestServer = await aiohttp_server(other.app())
    return World(
        sim=sim,
        clock=clock,
        rx=rx,
        other=other,
        upstream_url=str(up.make_url("")).rstrip("/"),
        rx_url=str(rx_server.make_url("/hook")),
        other_url=str(other_server.make_url("/hook")),
        db=tmp_path / "admin.db",
        secret=secret,
    )


@asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[tuple[Service, Client]]:
    """A service and its admin app, served on a real local port."""
    async with (
        Service(settings, clock=clock) as svc,
        TestClient(TestServer(create_app(svc))) as http,
    ):
        yield svc, http


async def call(http: Client, method: str, path: str, status: int = 200, **kw: Any) -> Any:
    resp = await http.request(method, path, **kw)
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", resp.content_type
    return json.loads(text)


async def fails(http: Client, method: str, path: str, status: int, *names: str, **kw: Any) -> str:
    """The error message of a request that must fail as JSON `{"error": …}` naming `names`."""
    body = await call(http, method, path, status, **kw)
    assert isinstance(body, dict) and list(body) == ["error"], body
    message = body["error"]
    assert isinstance(message, str)
    for name in names:
        assert name in message, (name, message)
    return message


async def deliver(svc: Service, clock: FakeClock) -> int:
    """Send everything due now; how many were sent."""
    return await drive(clock, svc.dispatcher.drain_once())


def ids_seen(receiver: RecordingReceiver) -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.requests]


def assert_signed(receiver: RecordingReceiver, secret: str) -> list[Any]:
    """Every request the receiver got carries a valid signature by `secret` (checked as at
    its own `webhook-timestamp`); their parsed bodies."""
    return [
        verify(secret, r.body, r.headers, now=float(r.headers["webhook-timestamp"]))
        for r in receiver.requests
    ]


async def walk(http: Client, path: str, key: str, limit: int) -> list[list[Any]]:
    """Pages of `path` (newest first), following `next_before` until it is null."""
    pages: list[list[Any]] = []
    sep = "&" if "?" in path else "?"
    url = f"{path}{sep}limit={limit}"
    for _ in range(50):
        body = await call(http, "GET", url)
        pages.append(body[key])
        if body["next_before"] is None:
            return pages
        assert body["next_before"] == body[key][-1]["id"]
        url = f"{path}{sep}limit={limit}&before={body['next_before']}"
    raise AssertionError("next_before never became null")


# --- GET /api/subscribers ----------------------------------------------------------------


async def test_subscribers_list_states_counts_and_redacted_urls(world: World) -> None:
    world.sim.add_records(2, status="success")
    world.sim.add_records(1, status="failed")
    settings = world.settings(
        extra=[
            {"id": "chat", "url": SLACK_URL, "format": "slack", "enabled": False},
            world.sub("down", events=[COMPLETED]),
            {**world.sub("keyed", enabled=False), "url": KEYED_URL},
        ]
    )
    async with running(settings, world.clock) as (svc, http):
        await call(http, "POST", "/api/subscribers/down/disable")
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 3  # rx only: "down" and "chat" are held
        resp = await http.get("/api/subscribers")
        raw = await resp.text()
        subs = {s["id"]: s for s in json.loads(raw)["subscribers"]}

    assert list(subs) == ["rx", "chat", "down", "keyed"]  # in configuration order
    rx, chat, down = subs["rx"], subs["chat"], subs["down"]
    assert (rx["state"], rx["enabled"], rx["disabled_at"]) == ("active", True, None)
    assert rx["deliveries"] == {"pending": 0, "delivered": 3, "failed": 0, "orphaned": 0}
    assert rx["events"] == [COMPLETED, FAILED_EVENT] and rx["format"] == "standard"

    assert (chat["state"], chat["enabled"]) == ("paused", False)
    assert chat["deliveries"] == {"pending": 3, "delivered": 0, "failed": 0, "orphaned": 0}
    assert chat["rate_limit_per_s"] == 1.0  # Slack's own limit applies by default

    assert (down["state"], down["enabled"]) == ("disabled", False)
    assert down["disabled_reason"] == "disabled through the admin API"
    assert down["disabled_at"] == iso_utc(world.clock.now())
    assert down["deliveries"] == {"pending": 2, "delivered": 0, "failed": 0, "orphaned": 0}
    assert world.other.requests == []

    # scheme, host and port only: the path of a chat webhook URL is its credential
    assert chat["url"] == "https://hooks.slack.com"
    assert rx["url"] == world.rx_url.removesuffix("/hook")
    assert subs["keyed"]["url"] == "https://hooks.example.com:8443"
    for secret_part in (SLACK_TOKEN, "T0ADMIN1", "B0ADMIN2", world.rx_url, world.other_url):
        assert secret_part not in raw
    for secret_part in ("ops:pa55word", "pa55word", "/in/", "QueryToken9", "sig="):
        assert secret_part not in raw


# --- POST /api/subscribers/{id}/enable|disable --------------------------------------------


async def test_disable_holds_deliveries_and_enable_sends_them(world: World) -> None:
    first = world.sim.add_records(2, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 2

        off = await call(http, "POST", "/api/subscribers/rx/disable")
        assert (off["id"], off["state"], off["enabled"]) == ("rx", "disabled", False)
        assert off["disabled_reason"] == "disabled through the admin API"
        disabled_at = off["disabled_at"]
        assert svc.dispatcher.active == []

        later = world.sim.add_records(2, status="success")
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 0
        await world.clock.advance(3600)  # a disable is not a backoff: time does not end it
        assert await deliver(svc, world.clock) == 0
        assert len(world.rx.requests) == 2
        waiting = await call(http, "GET", "/api/deliveries?state=pending")
        assert {d["event_id"] for d in waiting["deliveries"]} == {
            event_id(r["id"], COMPLETED) for r in later
        }

        again = await call(http, "POST", "/api/subscribers/rx/disable")  # idempotent
        assert again["state"] == "disabled" and again["disabled_at"] == disabled_at

        on = await call(http, "POST", "/api/subscribers/rx/enable")
        assert (on["state"], on["enabled"], on["disabled_at"]) == ("active", True, None)
        assert on["deliveries"] == {"pending": 2, "delivered": 2, "failed": 0, "orphaned": 0}
        assert svc.dispatcher.active == ["rx"]
        assert await deliver(svc, world.clock) == 2
        assert (await call(http, "GET", "/api/deliveries?state=pending"))["deliveries"] == []

    assert set(ids_seen(world.rx)[:2]) == {event_id(r["id"], COMPLETED) for r in first}
    assert set(ids_seen(world.rx)[2:]) == {event_id(r["id"], COMPLETED) for r in later}
    assert_signed(world.rx, world.secret)


async def test_disable_is_stored_and_survives_a_restart(world: World) -> None:
    settings = world.settings()
    async with running(settings, world.clock) as (_, http):
        await call(http, "POST", "/api/subscribers/rx/disable")

    world.sim.add_records(1, status="success")
    async with running(settings, world.clock) as (svc, http):
        [rx] = (await call(http, "GET", "/api/subscribers"))["subscribers"]
        assert rx["state"] == "disabled"
        assert rx["disabled_reason"] == "disabled through the admin API"
        assert svc.dispatcher.active == []
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 0
        assert world.rx.requests == []
        await call(http, "POST", "/api/subscribers/rx/enable")
        assert await deliver(svc, world.clock) == 1

    async with running(settings, world.clock) as (svc, http):  # and so is the enable
        [rx] = (await call(http, "GET", "/api/subscribers"))["subscribers"]
        assert rx["state"] == "active" and svc.dispatcher.active == ["rx"]


async def test_enabling_a_subscriber_paused_in_config_is_a_conflict(world: World) -> None:
    world.sim.add_records(1, status="success")
    settings = world.settings(extra=[world.sub("paused", enabled=False)])
    async with running(settings, world.clock) as (svc, http):
        message = await fails(
            http, "POST", "/api/subscribers/paused/enable", 409, "'paused'", "enabled = false"
        )
        assert "restart" in message
        subs = {s["id"]: s for s in (await call(http, "GET", "/api/subscribers"))["subscribers"]}
        assert subs["paused"]["state"] == "paused"
        assert svc.dispatcher.active == ["rx"]
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 1  # rx's; "paused" keeps its own waiting
    assert world.other.requests == []


@pytest.mark.parametrize("action", ["enable", "disable", "test"])
async def test_subscriber_actions_on_an_unknown_id_are_404(world: World, action: str) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        message = await fails(http, "POST", f"/api/subscribers/nobody/{action}", 404, "'nobody'")
        assert message == "subscriber: no subscriber 'nobody' (known: rx)"
    assert world.rx.requests == []


# --- POST /api/subscribers/{id}/test ------------------------------------------------------


async def test_subscriber_test_sends_a_signed_bridge_test_event(world: World) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        body = await call(http, "POST", "/api/subscribers/rx/test")
        events = await call(http, "GET", "/api/events")
        deliveries = await call(http, "GET", "/api/deliveries")

    assert body["subscriber"] == "rx" and body["ok"] is True
    assert (body["status_code"], body["error"], body["response_excerpt"]) == (200, None, "ok")
    assert body["latency_ms"] >= 0 and body["attempted_at"].endswith("Z")
    [request] = world.rx.requests
    parsed = verify(world.secret, request.body, request.headers, now=time.time())
    assert parsed["type"] == TEST and parsed["id"] == request.headers["webhook-id"]
    assert parsed["id"].startswith("evt_test_")
    # a test is sent, never stored: nothing to list, nothing to retry or replay
    assert events["events"] == [] and deliveries["deliveries"] == []


async def test_subscriber_test_reports_a_failing_endpoint(world: World) -> None:
    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    extra = {"id": "gone", "url": f"http://127.0.0.1:{closed_port}/hook", "secret": world.secret}
    world.rx.default_status = 500
    async with running(world.settings(extra=[extra]), world.clock) as (_, http):
        failed = await call(http, "POST", "/api/subscribers/rx/test")
        unreachable = await call(http, "POST", "/api/subscribers/gone/test")

    assert failed["ok"] is False and failed["status_code"] == 500
    assert (failed["error"], failed["response_excerpt"]) == ("HTTP 500", "nope")
    assert len(world.rx.requests) == 1
    assert unreachable["ok"] is False and unreachable["status_code"] is None
    assert f"cannot connect to 127.0.0.1:{closed_port}" in unreachable["error"]


# --- GET /api/events ---------------------------------------------------------------------


async def test_events_filter_by_type_and_limit(world: World) -> None:
    done = world.sim.add_records(3, status="success")
    broken = world.sim.add_records(2, status="failed")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()  # backfill: 5 created, 3 completed, 2 failed
        everything = await call(http, "GET", "/api/events")
        failed = await call(http, "GET", "/api/events?type=denoise.failed")
        two = await call(http, "GET", "/api/events?type=denoise.created&limit=2")
        blank = await call(http, "GET", "/api/events?type=")

    assert len(everything["events"]) == 10 and everything["next_before"] is None
    assert blank == everything  # an empty filter is no filter
    assert [e["id"] for e in failed["events"]] == [
        event_id(r["id"], FAILED_EVENT) for r in reversed(broken)
    ]
    for evt in failed["events"]:
        assert evt["type"] == FAILED_EVENT and evt["data"]["status"] == "failed"
        assert evt["record_id"] == evt["data"]["id"] and evt["previous_status"] is None
        assert evt["timestamp"] == iso_utc(world.clock.now())
    assert len(two["events"]) == 2 and {e["type"] for e in two["events"]} == {CREATED}
    assert two["next_before"] == two["events"][-1]["id"]
    expected = [(r, CREATED) for r in done + broken] + [(r, COMPLETED) for r in done]
    expected += [(r, FAILED_EVENT) for r in broken]
    assert {e["id"] for e in everything["events"]} == {event_id(r["id"], t) for r, t in expected}


async def test_events_paginate_with_before_until_next_before_is_null(world: World) -> None:
    world.sim.add_records(3, status="success")
    world.sim.add_records(2, status="failed")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        full_events = (await call(http, "GET", "/api/events"))["events"]
        pages = await walk(http, "/api/events", "events", 3)
        created_pages = await walk(http, "/api/events?type=denoise.created", "events", 2)
        exact_pages = await walk(http, "/api/events", "events", 5)

    full = [e["id"] for e in full_events]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [e["id"] for p in pages for e in p] == full  # newest first, none twice or missed
    assert [len(p) for p in created_pages] == [2, 2, 1]
    created = [e["id"] for e in full_events if e["type"] == CREATED]
    assert [e["id"] for p in created_pages for e in p] == created
    assert [len(p) for p in exact_pages] == [5, 5, 0]  # a full last page: one empty page more
    assert [e["id"] for p in exact_pages for e in p] == full


@pytest.mark.parametrize(
    ("query", "status", "names"),
    [
        ("limit=0", 400, ("limit", "'0'", "1 to 1000")),
        ("limit=1001", 400, ("limit", "'1001'")),
        ("limit=-5", 400, ("limit", "'-5'")),
        ("limit=ten", 400, ("limit", "'ten'")),
        ("limit=", 400, ("limit", "''")),
        ("limit=%C2%B2", 400, ("limit", "'²'")),  # a digit to str.isdigit, not to int()
        ("type=denoise.done", 400, ("type", "'denoise.done'", COMPLETED)),
        ("kind=denoise.failed", 400, ("kind", "unknown parameter", "type, limit, before")),
        ("before=evt_nope", 404, ("before", "'evt_nope'")),
    ],
)
async def test_events_bad_parameters(
    world: World, query: str, status: int, names: tuple[str, ...]
) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        await fails(http, "GET", f"/api/events?{query}", status, *names)


# --- GET /api/deliveries and /api/deliveries/{id} ----------------------------------------


async def spread(world: World) -> Settings:
    """Settings whose deliveries end up in all three states: "rx" gets its 3 delivered,
    "down" (always 500) dead-letters its 2 and "off" (paused in config) keeps 2 pending."""
    world.sim.add_records(2, status="success")
    world.sim.add_records(1, status="failed")
    world.other.default_status = 500
    return world.settings(
        extra=[
            world.sub("down", events=[COMPLETED]),
            world.sub("off", events=[COMPLETED], enabled=False),
        ]
    )


async def settle(svc: Service, clock: FakeClock) -> None:
    await svc.poller.tick()
    await deliver(svc, clock)
    await clock.advance(1)
    await deliver(svc, clock)  # "down": the schedule [1] is spent, dead-lettered


async def test_deliveries_filter_by_state_and_subscriber(world: World) -> None:
    async with running(await spread(world), world.clock) as (svc, http):
        await settle(svc, world.clock)

        async def listed(query: str) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (await call(http, "GET", f"/api/deliveries?{query}"))[
                "deliveries"
            ]
            return found

        everything = await listed("")
        delivered = await listed("state=delivered")
        failed = await listed("state=failed")
        pending = await listed("state=pending")
        of_down = await listed("subscriber=down")
        both = await listed("subscriber=down&state=failed")
        none = await listed("subscriber=down&state=delivered")
        nobody = await listed("subscriber=nobody")

    assert len(everything) == 7
    assert [d["id"] for d in everything] == sorted((d["id"] for d in everything), reverse=True)
    assert len(delivered) == 3 and {d["subscriber"] for d in delivered} == {"rx"}
    assert {d["state"] for d in delivered} == {"delivered"}
    assert len(failed) == 2 and {d["subscriber"] for d in failed} == {"down"}
    assert len(pending) == 2 and {d["subscriber"] for d in pending} == {"off"}
    assert {d["id"] for d in of_down} == {d["id"] for d in failed} == {d["id"] for d in both}
    assert none == [] and nobody == []
    for d in failed:
        assert d["state"] == "failed" and d["attempt_count"] == 2
        assert d["next_attempt_at"] is None and d["event_type"] == COMPLETED
        assert d["last_attempt"]["status_code"] == 500 and "attempts" not in d
    for d in pending:
        assert d["attempt_count"] == 0 and d["last_attempt"] is None
        assert d["next_attempt_at"] is not None
    assert len(world.other.requests) == 4  # "off" never sent


async def test_deliveries_paginate_with_before(world: World) -> None:
    async with running(await spread(world), world.clock) as (svc, http):
        await settle(svc, world.clock)
        full = [d["id"] for d in (await call(http, "GET", "/api/deliveries"))["deliveries"]]
        pages = await walk(http, "/api/deliveries", "deliveries", 3)
        failed_pages = await walk(http, "/api/deliveries?state=failed", "deliveries", 1)
        below = await call(http, "GET", f"/api/deliveries?before={full[2]}")
        beyond = await call(http, "GET", f"/api/deliveries?before={full[0] + 100}")

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [d["id"] for p in pages for d in p] == full
    assert [len(p) for p in failed_pages] == [1, 1, 0]
    assert {d["state"] for p in failed_pages for d in p} == {"failed"}
    assert [d["id"] for d in below["deliveries"]] == full[3:]
    assert [d["id"] for d in beyond["deliveries"]] == full  # any id works as a cursor


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("state=done", ("state", "'done'", "pending|delivered|failed")),
        ("state=PENDING", ("state", "'PENDING'")),
        ("limit=0", ("limit", "'0'")),
        ("limit=many", ("limit", "'many'")),
        ("limit=%C2%B3", ("limit", "'³'")),
        ("before=x", ("before", "'x'", "positive integer")),
        ("before=0", ("before", "'0'")),
        ("before=-3", ("before", "'-3'")),
        ("before=%C2%B2", ("before", "'²'")),
        (
            "status=failed",
            (
                "status",
                "unknown parameter",
                "state, subscriber, type, record, since, until, limit, before",
            ),
        ),
    ],
)
async def test_deliveries_bad_parameters(world: World, query: str, names: tuple[str, ...]) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        await fails(http, "GET", f"/api/deliveries?{query}", 400, *names)


async def test_delivery_detail_lists_every_attempt(world: World) -> None:
    [record] = world.sim.add_records(1, status="success")
    world.rx.script = [503]
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        await deliver(svc, world.clock)
        [d] = (await call(http, "GET", "/api/deliveries"))["deliveries"]
        waiting = await call(http, "GET", f"/api/deliveries/{d['id']}")
        await world.clock.advance(1)
        await deliver(svc, world.clock)
        done = await call(http, "GET", f"/api/deliveries/{d['id']}")

    assert waiting["state"] == "pending" and waiting["attempt_count"] == 1
    assert waiting["next_attempt_at"] == iso_utc(world.clock.now())  # schedule [1], at t0 + 1
    assert done["event_id"] == event_id(record["id"], COMPLETED)
    assert (done["subscriber"], done["record_id"]) == ("rx", record["id"])
    assert done["state"] == "delivered" and done["attempt_count"] == 2
    assert done["next_attempt_at"] is None
    first, second = done["attempts"]
    assert (first["status_code"], first["error"], first["response_excerpt"]) == (
        503,
        "HTTP 503",
        "nope",
    )
    assert (second["status_code"], second["error"], second["response_excerpt"]) == (
        200,
        None,
        "ok",
    )
    for attempt in (first, second):
        assert isinstance(attempt["latency_ms"], float) and attempt["latency_ms"] >= 0
    assert first["attempted_at"] < second["attempted_at"]
    assert second["attempted_at"] == iso_utc(world.clock.now())
    assert done["last_attempt"] == second


async def test_delivery_detail_keeps_at_most_4_kib_of_the_response(
    world: World, aiohttp_server: ServerFactory
) -> None:
    answer = "رد طويل " * 2000  # ~28 KiB of UTF-8, two bytes a letter

    async def talkative(request: web.Request) -> web.Response:
        return web.Response(status=500, text=answer)

    app = web.Application()
    app.router.add_post("/hook", talkative)
    server: TestServer = await aiohttp_server(app)
    extra = {"id": "chatty", "url": str(server.make_url("/hook")), "secret": world.secret}
    world.sim.add_records(1, status="success")
    async with running(world.settings(extra=[extra]), world.clock) as (svc, http):
        await svc.poller.tick()
        await deliver(svc, world.clock)
        [d] = (await call(http, "GET", "/api/deliveries?subscriber=chatty"))["deliveries"]
        detail = await call(http, "GET", f"/api/deliveries/{d['id']}")

    excerpt = detail["attempts"][0]["response_excerpt"]
    assert excerpt and answer.startswith(excerpt)
    assert len(excerpt.encode()) <= 4096


@pytest.mark.parametrize(
    ("path", "status", "names"),
    [
        ("/api/deliveries/abc", 400, ("id", "'abc'", "positive integer")),
        ("/api/deliveries/0", 400, ("id", "'0'")),
        ("/api/deliveries/1.5", 400, ("id", "'1.5'")),
        ("/api/deliveries/%C2%B2", 400, ("id", "'²'")),
        ("/api/deliveries/9999999999999999999", 400, ("id", "'9999999999999999999'")),
        ("/api/deliveries/999", 404, ("no delivery 999",)),
    ],
)
async def test_delivery_detail_errors(
    world: World, path: str, status: int, names: tuple[str, ...]
) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        await fails(http, "GET", path, status, *names)


OLD_ERROR = f"ClientConnectorError: Cannot connect to host {SLACK_URL}?sig=QueryToken9 ssl:no"
OLD_EXCERPT = '<a href="https://ops:pa55word@hooks.example.com/in/Excerpt7ok">'


async def test_stored_attempt_errors_are_redacted_on_the_way_out(world: World) -> None:
    """Rows written before errors were redacted may hold whole URLs: the answers cut them."""
    world.sim.add_records(1, status="success")
    world.rx.script = [500]
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 1
        db = sqlite3.connect(world.db)
        try:
            with db:
                db.execute(
                    "UPDATE attempts SET error = ?, response_excerpt = ?", (OLD_ERROR, OLD_EXCERPT)
                )
        finally:
            db.close()
        listing = await (await http.get("/api/deliveries")).text()
        [row] = json.loads(listing)["deliveries"]
        detail = await (await http.get(f"/api/deliveries/{row['id']}")).text()

    for attempt in (row["last_attempt"], *json.loads(detail)["attempts"]):
        assert (
            attempt["error"]
            == "ClientConnectorError: Cannot connect to host https://hooks.slack.com ssl:no"
        )
        assert attempt["response_excerpt"] == '<a href="https://hooks.example.com">'
    for text in (listing, detail):
        for secret_part in (SLACK_TOKEN, "T0ADMIN1", "QueryToken9", "pa55word", "Excerpt7ok"):
            assert secret_part not in text


async def test_a_crash_is_a_json_500_logged_with_its_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(delivery_id: int) -> None:
        raise RuntimeError(f"a bug near {SLACK_URL}")

    async with running(world.settings(), world.clock) as (svc, http):
        monkeypatch.setattr(svc.store, "get_delivery", broken)  # the fault, at the store port
        with capture_logs() as logs:
            message = await fails(http, "GET", "/api/deliveries/1", 500)

    assert message == "internal error (logged)"
    [entry] = [e for e in logs if e["event"] == "admin request crashed"]
    assert entry["log_level"] == "error" and entry["path"] == "/api/deliveries/1"
    assert entry["exc_info"] is True  # rendered as a traceback, not a repr in a field
    assert "error" not in entry


# --- POST /api/deliveries/{id}/retry -----------------------------------------------------


async def test_retry_a_failed_delivery_resends_it_with_the_same_webhook_id(world: World) -> None:
    [record] = world.sim.add_records(1, status="success")
    world.rx.default_status = 500
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        await deliver(svc, world.clock)
        await world.clock.advance(1)
        await deliver(svc, world.clock)
        [dead] = (await call(http, "GET", "/api/deliveries?state=failed"))["deliveries"]
        await world.clock.advance(3600)
        assert await deliver(svc, world.clock) == 0  # a dead letter stays dead by itself

        world.rx.default_status = 200
        body = await call(http, "POST", f"/api/deliveries/{dead['id']}/retry")
        assert body["was"] == "failed"
        assert body["delivery"]["state"] == "pending"
        assert body["delivery"]["attempt_count"] == 2  # attempts keep counting
        assert body["delivery"]["next_attempt_at"] == iso_utc(world.clock.now())
        assert await deliver(svc, world.clock) == 1
        done = await call(http, "GET", f"/api/deliveries/{dead['id']}")

        conflict = await fails(
            http, "POST", f"/api/deliveries/{dead['id']}/retry", 409, "delivered", "/api/replay"
        )
        assert f"delivery {dead['id']}" in conflict

    assert done["state"] == "delivered"
    assert [a["status_code"] for a in done["attempts"]] == [500, 500, 200]
    original = event_id(record["id"], COMPLETED)
    assert ids_seen(world.rx) == [original] * 3  # the receiver can tell it is the same event
    assert_signed(world.rx, world.secret)


async def test_retry_makes_a_waiting_delivery_due_now(world: World) -> None:
    [record] = world.sim.add_records(1, status="success")
    world.rx.script = [500]
    settings = world.settings(delivery={"retry_schedule_s": [600]})
    async with running(settings, world.clock) as (svc, http):
        await svc.poller.tick()
        await deliver(svc, world.clock)
        [waiting] = (await call(http, "GET", "/api/deliveries?state=pending"))["deliveries"]
        assert waiting["next_attempt_at"] == iso_utc(world.clock.now() + 600)
        assert await deliver(svc, world.clock) == 0

        body = await call(http, "POST", f"/api/deliveries/{waiting['id']}/retry")
        assert body["was"] == "pending" and body["delivery"]["state"] == "pending"
        assert body["delivery"]["next_attempt_at"] == iso_utc(world.clock.now())
        assert body["delivery"]["attempt_count"] == 1  # a nudge, not a reset
        assert await deliver(svc, world.clock) == 1  # without the clock moving

    assert ids_seen(world.rx) == [event_id(record["id"], COMPLETED)] * 2


async def test_orphaned_deliveries_are_listed_and_not_retried(world: World) -> None:
    world.sim.add_records(1, status="success")
    # "gone" is paused, so its delivery waits; then it leaves the configuration
    settings = world.settings(extra=[world.sub("gone", events=[COMPLETED], enabled=False)])
    async with running(settings, world.clock) as (svc, http):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 1  # rx only
        assert await svc.store.reconcile_subscribers(["rx"], now=world.clock.now()) == (1, 0)
        [orphan] = (await call(http, "GET", "/api/deliveries?state=orphaned"))["deliveries"]
        await fails(
            http, "POST", f"/api/deliveries/{orphan['id']}/retry", 409, "orphaned", "no longer"
        )
        after = await call(http, "GET", f"/api/deliveries/{orphan['id']}")

    assert (orphan["subscriber"], orphan["state"]) == ("gone", "orphaned")
    assert after["state"] == "orphaned" and after["attempts"] == []
    assert world.other.requests == []


@pytest.mark.parametrize(
    ("path", "status", "names"),
    [
        ("/api/deliveries/999/retry", 404, ("no delivery 999",)),
        ("/api/deliveries/abc/retry", 400, ("id", "'abc'")),
        ("/api/deliveries/0/retry", 400, ("id", "'0'")),
    ],
)
async def test_retry_errors(world: World, path: str, status: int, names: tuple[str, ...]) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        await fails(http, "POST", path, status, *names)


# --- POST /api/replay --------------------------------------------------------------------


async def test_replay_resends_stored_events_with_their_original_ids(world: World) -> None:
    t0 = world.clock.now()
    done = world.sim.add_records(2, status="success")
    [broken] = world.sim.add_records(1, status="failed")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 3
        await world.clock.advance(60)
        [late] = world.sim.add_records(1, status="success")
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 1
        originals = set(ids_seen(world.rx))
        assert len(originals) == 4
        world.rx.requests.clear()

        # since: only what happened at or after it (the second poll: created + completed)
        between = datetime.fromtimestamp(t0 + 30, timezone(timedelta(hours=5, minutes=30)))
        body = await call(http, "POST", "/api/replay", json={"since": between.isoformat()})
        assert body == {"events": 2, "deliveries": 1}
        again = await call(http, "POST", "/api/replay", json={"since": between.isoformat()})
        assert again == {"events": 2, "deliveries": 0}  # still pending: not queued twice
        assert await deliver(svc, world.clock) == 1
        assert ids_seen(world.rx) == [event_id(late["id"], COMPLETED)]

        # type: only that type
        world.rx.requests.clear()
        body = await call(
            http, "POST", "/api/replay", json={"since": iso_utc(t0 - 1), "type": FAILED_EVENT}
        )
        assert body == {"events": 1, "deliveries": 1}
        await deliver(svc, world.clock)
        assert ids_seen(world.rx) == [event_id(broken["id"], FAILED_EVENT)]

        # everything since before the first poll, as a plain date
        world.rx.requests.clear()
        day = datetime.fromtimestamp(t0 - 86400, UTC).date().isoformat()
        body = await call(http, "POST", "/api/replay", json={"since": day})
        assert body == {"events": 8, "deliveries": 4}
        assert await deliver(svc, world.clock) == 4
        delivered = await call(http, "GET", "/api/deliveries?state=delivered")

    assert (
        set(ids_seen(world.rx))
        == originals
        == {event_id(r["id"], COMPLETED) for r in [*done, late]}
        | {event_id(broken["id"], FAILED_EVENT)}
    )
    assert_signed(world.rx, world.secret)
    assert len(delivered["deliveries"]) == 4  # the same deliveries again, not new ones


async def test_replay_reaches_a_subscriber_added_after_the_events(world: World) -> None:
    t0 = world.clock.now()
    world.sim.add_records(2, status="success")
    async with running(world.settings(), world.clock) as (svc, _):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 2
    first = sorted(ids_seen(world.rx))

    settings = world.settings(extra=[world.sub("late", events=[COMPLETED])])
    async with running(settings, world.clock) as (svc, http):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 0  # new config does not send the past
        body = await call(
            http, "POST", "/api/replay", json={"since": iso_utc(t0 - 1), "subscriber": "late"}
        )
        assert body == {"events": 4, "deliveries": 2}
        assert await deliver(svc, world.clock) == 2
        late = (await call(http, "GET", "/api/deliveries?subscriber=late"))["deliveries"]

    assert sorted(ids_seen(world.other)) == first  # the events' original ids
    assert sorted(ids_seen(world.rx)) == first  # rx was not part of this replay
    assert {d["state"] for d in late} == {"delivered"} and len(late) == 2
    assert_signed(world.other, world.secret)


@pytest.mark.parametrize(
    ("raw", "status", "names"),
    [
        (b"{}", 400, ("since", "required")),
        (b'{"since": ""}', 400, ("since", "required")),
        (b'{"since": null}', 400, ("since", "required")),
        (b'{"subscriber": "rx"}', 400, ("since", "required")),
        (b'{"since": "yesterday"}', 400, ("since", "'yesterday'", "ISO 8601")),
        (b'{"since": "2026-13-45"}', 400, ("since", "'2026-13-45'")),
        (b'{"since": 1764000000}', 400, ("since", "expected a string")),
        (b'{"since": "2026-01-01", "until": "x"}', 400, ("until", "unknown key")),
        (b'{"since": "2026-01-01", "type": "denoise.x"}', 400, ("type", "'denoise.x'")),
        (b'{"since": "2026-01-01", "type": ["denoise.failed"]}', 400, ("type", "a string")),
        (b'{"since": "2026-01-01", "subscriber": 7}', 400, ("subscriber", "a string")),
        (b'["2026-01-01"]', 400, ("body", "JSON object")),
        (b"null", 400, ("body", "JSON object")),
        (b"", 400, ("body", "JSON object")),
        (b'"2026-01-01"', 400, ("body", "JSON object")),
        (b"{since: 2026}", 400, ("body", "not JSON")),
        (b"\xff\xfe", 400, ("body", "not JSON")),
        (b"[" * 100_000, 400, ("body", "not JSON")),  # nested past the parser's recursion
        (b'{"since": "2026-01-01", "subscriber": "nobody"}', 404, ("subscriber", "'nobody'")),
        (b'{"since": "2026-01-01", "type": ""}', 400, ("type", "must not be empty")),
    ],
)
async def test_replay_bad_requests(
    world: World, raw: bytes, status: int, names: tuple[str, ...]
) -> None:
    world.sim.add_records(1, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        await deliver(svc, world.clock)
        headers = {"Content-Type": "application/json"}
        await fails(http, "POST", "/api/replay", status, *names, data=raw, headers=headers)
        assert (await svc.store.count_deliveries())[DeliveryState.PENDING] == 0  # nothing re-queued


# --- auth --------------------------------------------------------------------------------

API_ROUTES = [
    ("GET", "/api/subscribers"),
    ("POST", "/api/subscribers/rx/enable"),
    ("POST", "/api/subscribers/rx/disable"),
    ("POST", "/api/subscribers/rx/test"),
    ("GET", "/api/events"),
    ("GET", "/api/deliveries"),
    ("GET", "/api/deliveries/1"),
    ("POST", "/api/deliveries/1/retry"),
    ("POST", "/api/replay"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/no-such-route"),  # 401 before 404: an unauthenticated caller learns nothing
]


async def raw_request(http: Client, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Bytes over a real socket, for what a well-behaved client would refuse to send."""
    server = http.server
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_a_token_guards_every_api_route_and_nothing_else(world: World) -> None:
    world.sim.add_records(1, status="success")
    async with running(world.settings(token=TOKEN), world.clock) as (svc, http):
        await svc.poller.tick()
        await deliver(svc, world.clock)
        wrong_headers: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer "},
        ]
        for method, path in API_ROUTES:
            for headers in wrong_headers:
                resp = await http.request(method, path, headers=headers, json={"since": "2026"})
                assert resp.status == 401, (method, path, headers)
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="munsit-bridge"'
                assert resp.content_type == "application/json"
                body = await resp.json()
                assert list(body) == ["error"] and "bearer token" in body["error"]
                assert TOKEN not in await resp.text()

        status, headers, body = await raw_request(
            http,
            b"GET /api/subscribers HTTP/1.1\r\nHost: admin\r\n"
            b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
        )
        assert status == 401 and "bearer token" in json.loads(body)["error"]
        assert headers["www-authenticate"].startswith("Bearer")

        # nothing the refused requests asked for happened
        assert svc.dispatcher.active == ["rx"]
        assert (await svc.store.count_deliveries())[DeliveryState.PENDING] == 0
        assert len(world.rx.requests) == 1

        ok = {"Authorization": f"Bearer {TOKEN}"}
        lower = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
        assert (await call(http, "GET", "/api/subscribers", headers=lower))["subscribers"]
        [rx] = (await call(http, "GET", "/api/subscribers", headers=ok))["subscribers"]
        assert rx["state"] == "active"
        assert (await call(http, "GET", "/api/events", headers=ok))["events"]
        assert (await call(http, "GET", "/api/openapi.json", headers=ok))["openapi"]
        off = await call(http, "POST", "/api/subscribers/rx/disable", headers=ok)
        assert off["state"] == "disabled" and svc.dispatcher.active == []
        await fails(http, "GET", "/api/deliveries?limit=0", 400, "limit", headers=ok)

        # health, readiness and metrics are for probes and scrapers: no token
        assert await call(http, "GET", "/healthz") == {"status": "ok"}
        assert (await call(http, "GET", "/readyz"))["ready"] is True
        metrics = await http.get("/metrics")
        assert metrics.status == 200 and "bridge_polls_total" in await metrics.text()


async def test_without_a_token_the_api_is_open(world: World) -> None:
    async with running(world.settings(token=None), world.clock) as (svc, http):
        await svc.poller.tick()
        for path in ("/api/subscribers", "/api/events", "/api/deliveries", "/api/openapi.json"):
            resp = await http.get(path)
            assert resp.status == 200, path
            assert "WWW-Authenticate" not in resp.headers
        off = await call(http, "POST", "/api/subscribers/rx/disable")
        assert off["state"] == "disabled"
        body = await call(http, "POST", "/api/replay", json={"since": "2026-01-01"})
        assert set(body) == {"events", "deliveries"}
        assert (await call(http, "GET", "/readyz"))["ready"] is True


# --- /readyz -----------------------------------------------------------------------------


async def test_readyz_before_any_poll_and_after_a_successful_one(world: World) -> None:
    async with running(world.settings(), world.clock) as (svc, http):
        before = await call(http, "GET", "/readyz", 503)
        await svc.poller.tick()
        after = await call(http, "GET", "/readyz")

    replica = svc.settings.store.replica_id
    assert replica == f"{socket.gethostname()}-{os.getpid()}"  # the default: hostname-pid
    assert before == {
        "role": "leader",  # SQLite: the one process polls
        "replica": replica,
        "ready": False,
        "reasons": ["no successful poll yet"],
        "last_poll_success_at": None,
        "accounts": {
            "default": {
                "ready": False,
                "reasons": ["no successful poll yet"],
                "last_poll_success_at": None,
            }
        },
    }
    now = iso_utc(world.clock.now())
    assert after == {
        "role": "leader",
        "replica": replica,
        "ready": True,
        "reasons": [],
        "last_poll_success_at": now,
        "accounts": {"default": {"ready": True, "reasons": [], "last_poll_success_at": now}},
    }


async def test_readyz_names_a_rejected_api_key(world: World) -> None:
    world.sim.api_key = "a-key-the-service-does-not-have"
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.poll_once()
        rejected = await call(http, "GET", "/readyz", 503)
        world.sim.api_key = "test-key"
        await svc.poller.poll_once()
        ready = await call(http, "GET", "/readyz")
        world.sim.api_key = "rotated-again"
        await svc.poller.poll_once()  # a recent success does not hide a rejected key
        rejected_again = await call(http, "GET", "/readyz", 503)

    assert rejected["reasons"] == ["upstream rejected the API key (401)"]
    assert rejected["ready"] is False and rejected["last_poll_success_at"] is None
    assert ready["ready"] is True
    assert rejected_again["reasons"] == ["upstream rejected the API key (401)"]
    assert rejected_again["last_poll_success_at"] == ready["last_poll_success_at"]


PLANTED = "sk_live_Pl4ntedKey see https://db.internal.example/admin?token=Pl4ntedTok"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (503, "no successful poll yet; last poll failed: upstream unavailable (503)"),
        (401, "upstream rejected the API key (401)"),
        (418, "no successful poll yet; last poll failed: upstream protocol error (418)"),
    ],
)
async def test_readyz_names_the_kind_of_an_upstream_error_not_its_body(
    world: World, aiohttp_server: ServerFactory, status: int, reason: str
) -> None:
    async def answer(request: web.Request) -> web.Response:
        body = {"errorCode": f"{status}01", "errorMessage": PLANTED}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/denoise", answer)
    up: TestServer = await aiohttp_server(app)
    settings = world.settings()
    upstream = settings.upstream.model_copy(update={"base_url": str(up.make_url("")).rstrip("/")})
    async with running(settings.model_copy(update={"upstream": upstream}), world.clock) as (
        svc,
        http,
    ):
        await drive(world.clock, svc.poller.poll_once())
        assert svc.poller.last_error is not None and "Pl4ntedKey" in svc.poller.last_error
        resp = await http.get("/readyz")
        raw = await resp.text()

    assert resp.status == 503
    assert json.loads(raw)["reasons"] == [reason]
    for planted in ("Pl4ntedKey", "Pl4ntedTok", "db.internal.example", f"{status}01"):
        assert planted not in raw


async def test_readyz_names_a_component_that_keeps_failing(world: World) -> None:
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        assert (await call(http, "GET", "/readyz"))["ready"] is True
        # what the supervisor records of a component crashing again and again
        svc.failing["dispatcher"] = f"RuntimeError: lane crashed posting to {SLACK_URL}"
        svc.failing["claim-ahead"] = "KeyError: 'rx'"
        resp = await http.get("/readyz")
        raw = await resp.text()
        svc.failing.clear()  # it has run a while without crashing
        assert (await call(http, "GET", "/readyz"))["ready"] is True

    assert resp.status == 503
    assert json.loads(raw)["reasons"] == [
        "component claim-ahead keeps failing: KeyError (see the log)",
        "component dispatcher keeps failing: RuntimeError (see the log)",
    ]
    assert SLACK_TOKEN not in raw and "hooks.slack.com" not in raw


async def test_readyz_fails_after_three_poll_intervals_without_a_poll(world: World) -> None:
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()  # nothing pending: the idle interval, 30 s
        await world.clock.advance(89)
        assert (await call(http, "GET", "/readyz"))["ready"] is True
        await world.clock.advance(2)
        idle = await call(http, "GET", "/readyz", 503)

        world.sim.add_records(1, status="pending")  # pending: the short interval, 5 s
        await svc.poller.tick()
        await world.clock.advance(14)
        assert (await call(http, "GET", "/readyz"))["ready"] is True
        await world.clock.advance(2)
        busy = await call(http, "GET", "/readyz", 503)

        world.sim.inject_fault("malformed")
        await drive(world.clock, svc.poller.poll_once())
        failing = await call(http, "GET", "/readyz", 503)

    assert idle["reasons"] == ["last successful poll 91 s ago (limit 90 s)"]
    assert busy["reasons"] == ["last successful poll 16 s ago (limit 15 s)"]
    # the kind of the failure, not the answer it was about (that is in the log)
    assert failing["reasons"] == [
        "last successful poll 16 s ago (limit 15 s); last poll failed: upstream protocol error"
    ]
    assert svc.poller.last_error is not None and "malformed JSON" in svc.poller.last_error
