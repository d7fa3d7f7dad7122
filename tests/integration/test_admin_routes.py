"""The admin API over a real service and SQLite store: each route's success and error cases,
auth on and off, readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bridge.admin.app import create_app
from bridge.config import Settings
from bridge.models import COMPLETED, event_id, iso_utc
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive, settings_for

TOKEN = "s3cret-admin-token"
Client = TestClient[web.Request, web.Application]


@dataclass
class Rig:
    svc: Service
    http: Client
    sim: Simulator
    receiver: RecordingReceiver
    clock: FakeClock
    records: list[dict[str, Any]]


def with_token(settings: Settings, token: str | None) -> Settings:
    admin = settings.admin.model_copy(update={"token": SecretStr(token) if token else None})
    return settings.model_copy(update={"admin": admin})


async def make_rig(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    secret: str,
    clock: FakeClock,
    *,
    token: str | None = None,
    extra_subscribers: list[dict[str, Any]] | None = None,
) -> AsyncIterator[Rig]:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=3600)
    records = sim.add_records(3, status="success")
    receiver = RecordingReceiver()
    up: TestServer = await aiohttp_server(sim.make_app())
    rx: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(up.make_url("")).rstrip("/"),
        str(rx.make_url("/hook")),
        secret,
        tmp_path / "s.db",
        upstream={"backfill": True, "progress_stream": False},
        delivery={"retry_schedule_s": [1], "jitter": 0},
    )
    if extra_subscribers:
        subs = [*settings.subscribers]
        for extra in extra_subscribers:
            subs.append(subs[0].model_copy(update={"url": str(rx.make_url("/hook")), **extra}))
        settings = settings.model_copy(update={"subscribers": subs})
    settings = with_token(settings, token)
    async with (
        Service(settings, clock=clock) as svc,
        TestClient(TestServer(create_app(svc))) as http,
    ):
        yield Rig(svc, http, sim, receiver, clock, records)


@pytest.fixture
async def rig(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str, clock: FakeClock
) -> AsyncIterator[Rig]:
    async for r in make_rig(aiohttp_server, tmp_path, secret, clock):
        yield r


async def get_json(http: Client, path: str, status: int = 200, **kw: Any) -> Any:
    resp = await http.get(path, **kw)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def post_json(http: Client, path: str, status: int = 200, **kw: Any) -> Any:
    resp = await http.post(path, **kw)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def delivered_rig(rig: Rig) -> None:
    await rig.svc.poller.tick()  # backfill: 3 created + 3 completed; rx wants completed
    await drive(rig.clock, rig.svc.dispatcher.drain_once())


# --- health ------------------------------------------------------------------------------


async def test_healthz_and_readyz(rig: Rig) -> None:
    assert await get_json(rig.http, "/healthz") == {"status": "ok"}
    before = await get_json(rig.http, "/readyz", 503)
    assert before["ready"] is False and before["reasons"] == ["no successful poll yet"]
    await rig.svc.poller.tick()
    assert (await get_json(rig.http, "/readyz"))["ready"] is True
    await rig.clock.advance(3 * 30 + 1)  # idle interval 30 s, nothing pending
    stale = await get_json(rig.http, "/readyz", 503)
    assert stale["reasons"][0].startswith("last successful poll 91 s ago (limit 90 s)")
    rig.sim.api_key = "rotated"
    await rig.svc.poller.poll_once()
    rejected = await get_json(rig.http, "/readyz", 503)
    assert rejected["reasons"][0].startswith("upstream rejected the API key (401)")


async def test_readyz_names_an_unreachable_store(rig: Rig) -> None:
    await rig.svc.poller.tick()
    await rig.svc.store.close()
    body = await get_json(rig.http, "/readyz", 503)
    assert body["reasons"][0].startswith("store unreachable:")
    resp = await rig.http.get("/api/deliveries")
    assert resp.status == 503 and "store unavailable" in (await resp.json())["error"]


# --- subscribers -------------------------------------------------------------------------


async def test_subscribers_list_disable_enable(rig: Rig) -> None:
    await delivered_rig(rig)
    [sub] = (await get_json(rig.http, "/api/subscribers"))["subscribers"]
    assert sub["id"] == "rx" and sub["state"] == "active" and sub["enabled"] is True
    assert sub["deliveries"] == {"pending": 0, "delivered": 3, "failed": 0, "orphaned": 0}
    configured = rig.svc.settings.subscribers[0].url
    assert configured.endswith("/hook") and sub["url"] == configured.removesuffix("/hook")

    off = await post_json(rig.http, "/api/subscribers/rx/disable")
    assert off["state"] == "disabled" and off["disabled_reason"] == "disabled through the admin API"
    rig.sim.add_records(1, status="success")
    await rig.svc.poller.tick()
    before = len(rig.receiver.requests)
    await drive(rig.clock, rig.svc.dispatcher.drain_once())
    assert len(rig.receiver.requests) == before  # nothing sent while disabled
    assert (await rig.svc.store.subscriber_health())["rx"].disabled_at is not None  # stored

    on = await post_json(rig.http, "/api/subscribers/rx/enable")
    assert on["state"] == "active" and on["deliveries"]["pending"] == 1
    await drive(rig.clock, rig.svc.dispatcher.drain_once())
    assert len(rig.receiver.requests) == before + 1

    for action in ("enable", "disable", "test"):
        missing = await post_json(rig.http, f"/api/subscribers/nobody/{action}", 404)
        assert missing == {"error": "subscriber: no subscriber 'nobody' (known: rx)"}


async def test_enabling_a_subscriber_paused_in_config_conflicts(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str, clock: FakeClock
) -> None:
    async for rig in make_rig(
        aiohttp_server,
        tmp_path,
        secret,
        clock,
        extra_subscribers=[{"id": "paused", "enabled": False}],
    ):
        subs = {s["id"]: s for s in (await get_json(rig.http, "/api/subscribers"))["subscribers"]}
        assert subs["paused"]["state"] == "paused"
        body = await post_json(rig.http, "/api/subscribers/paused/enable", 409)
        assert "paused in the configuration (enabled = false)" in body["error"]


async def test_subscriber_test_route(rig: Rig) -> None:
    body = await post_json(rig.http, "/api/subscribers/rx/test")
    assert body["ok"] is True and body["status_code"] == 200 and body["response_excerpt"] == "ok"
    assert rig.receiver.requests[-1].headers["webhook-id"].startswith("evt_test_")
    rig.receiver.default_status = 500
    failed = await post_json(rig.http, "/api/subscribers/rx/test")
    assert failed["ok"] is False and failed["status_code"] == 500 and failed["error"] == "HTTP 500"


# --- events ------------------------------------------------------------------------------


async def test_events_filter_and_paginate(rig: Rig) -> None:
    await delivered_rig(rig)
    page1 = await get_json(rig.http, "/api/events?limit=4")
    assert len(page1["events"]) == 4 and page1["next_before"] == page1["events"][-1]["id"]
    page2 = await get_json(rig.http, f"/api/events?limit=4&before={page1['next_before']}")
    assert len(page2["events"]) == 2 and page2["next_before"] is None
    ids = [e["id"] for e in page1["events"] + page2["events"]]
    assert len(set(ids)) == 6
    completed = await get_json(rig.http, "/api/events?type=denoise.completed")
    assert {e["id"] for e in completed["events"]} == {
        event_id(r["id"], COMPLETED) for r in rig.records
    }
    assert all(e["data"]["id"] == e["record_id"] for e in completed["events"])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit: '0' is not an integer from 1 to 1000"),
        ("limit=abc", "limit: 'abc'"),
        ("limit=1001", "limit: '1001'"),
        ("type=denoise.done", "type: unknown event type 'denoise.done'"),
    ],
)
async def test_events_bad_parameters(rig: Rig, query: str, message: str) -> None:
    body = await get_json(rig.http, f"/api/events?{query}", 400)
    assert body["error"].startswith(message)


# --- deliveries --------------------------------------------------------------------------


async def test_events_unknown_cursor_is_404(rig: Rig) -> None:
    body = await get_json(rig.http, "/api/events?before=evt_nope", 404)
    assert body == {"error": "before: no stored event 'evt_nope'"}


async def test_deliveries_list_get_and_attempts(rig: Rig) -> None:
    rig.receiver.script = [500]
    await delivered_rig(rig)
    listed = await get_json(rig.http, "/api/deliveries")
    assert [d["state"] for d in listed["deliveries"]].count("pending") == 1
    waiting = (await get_json(rig.http, "/api/deliveries?state=pending"))["deliveries"]
    [one] = waiting
    assert one["last_attempt"]["status_code"] == 500 and one["attempt_count"] == 1
    detail = await get_json(rig.http, f"/api/deliveries/{one['id']}")
    [attempt] = detail["attempts"]
    assert attempt["error"] == "HTTP 500" and attempt["response_excerpt"] == "nope"
    assert attempt["latency_ms"] >= 0 and detail["next_attempt_at"] is not None
    assert (await get_json(rig.http, "/api/deliveries?subscriber=other"))["deliveries"] == []
    page = await get_json(rig.http, "/api/deliveries?limit=2")
    rest = await get_json(rig.http, f"/api/deliveries?limit=2&before={page['next_before']}")
    assert len(page["deliveries"]) == 2 and len(rest["deliveries"]) == 1
    assert rest["next_before"] is None


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/deliveries?state=done", 400, "state: 'done' is not one of pending|delivered|failed"),
        ("/api/deliveries?limit=-1", 400, "limit: '-1'"),
        ("/api/deliveries?before=x", 400, "before: 'x' is not a delivery id"),
        ("/api/deliveries?before=0", 400, "before: '0' is not a delivery id"),
        ("/api/deliveries/abc", 400, "id: 'abc' is not a delivery id"),
        ("/api/deliveries/999", 404, "no delivery 999"),
    ],
)
async def test_deliveries_bad_parameters(rig: Rig, path: str, status: int, message: str) -> None:
    body = await get_json(rig.http, path, status)
    assert body["error"].startswith(message)


async def test_retry_a_dead_letter_a_waiting_one_and_a_delivered_one(rig: Rig) -> None:
    rig.receiver.default_status = 500
    await rig.svc.poller.tick()
    await drive(rig.clock, rig.svc.dispatcher.drain_once())
    await rig.clock.advance(2)
    await drive(rig.clock, rig.svc.dispatcher.drain_once())  # schedule [1]: dead-lettered
    failed = (await get_json(rig.http, "/api/deliveries?state=failed"))["deliveries"]
    assert len(failed) == 3
    first_id = rig.receiver.requests[0].headers["webhook-id"]

    rig.receiver.default_status = 200
    target = next(d for d in failed if d["event_id"] == first_id)
    body = await post_json(rig.http, f"/api/deliveries/{target['id']}/retry")
    assert body["was"] == "failed" and body["delivery"]["state"] == "pending"
    await drive(rig.clock, rig.svc.dispatcher.drain_once())
    assert rig.receiver.requests[-1].headers["webhook-id"] == first_id  # the same id again
    done = await get_json(rig.http, f"/api/deliveries/{target['id']}")
    assert done["state"] == "delivered" and len(done["attempts"]) == 3

    conflict = await post_json(rig.http, f"/api/deliveries/{target['id']}/retry", 409)
    assert "was delivered" in conflict["error"] and "/api/replay" in conflict["error"]
    assert (await post_json(rig.http, "/api/deliveries/999/retry", 404))["error"] == (
        "no delivery 999"
    )


async def test_retry_makes_a_waiting_delivery_due_now(rig: Rig) -> None:
    rig.receiver.script = [500]
    await rig.svc.poller.tick()
    await drive(rig.clock, rig.svc.dispatcher.drain_once())
    [waiting] = (await get_json(rig.http, "/api/deliveries?state=pending"))["deliveries"]
    assert waiting["next_attempt_at"] > iso_utc(rig.clock.now())
    body = await post_json(rig.http, f"/api/deliveries/{waiting['id']}/retry")
    assert body["was"] == "pending" and body["delivery"]["next_attempt_at"] == iso_utc(
        rig.clock.now()
    )


# --- replay ------------------------------------------------------------------------------


async def test_replay_route(rig: Rig) -> None:
    await delivered_rig(rig)
    first = sorted(r.headers["webhook-id"] for r in rig.receiver.requests)
    since = iso_utc(rig.clock.now() - 60)
    body = await post_json(
        rig.http, "/api/replay", json={"since": since, "type": "denoise.completed"}
    )
    assert body == {"events": 3, "deliveries": 3}
    rig.receiver.requests.clear()
    await drive(rig.clock, rig.svc.dispatcher.drain_once())
    assert sorted(r.headers["webhook-id"] for r in rig.receiver.requests) == first
    later = iso_utc(rig.clock.now() + 60)
    assert await post_json(rig.http, "/api/replay", json={"since": later}) == {
        "events": 0,
        "deliveries": 0,
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "since: required"),
        ({"since": "soon"}, "since: 'soon' is not an ISO 8601 time"),
        ({"since": "2026-01-01", "until": "x"}, "until: unknown key"),
        ({"since": "2026-01-01", "type": "denoise.x"}, "type: unknown event type 'denoise.x'"),
        ({"since": 5}, "since: expected a string"),
        ([1, 2], "body: expected a JSON object"),
    ],
)
async def test_replay_bad_bodies(rig: Rig, payload: Any, message: str) -> None:
    body = await post_json(rig.http, "/api/replay", 400, json=payload)
    assert body["error"].startswith(message)


async def test_replay_unknown_subscriber_is_404(rig: Rig) -> None:
    payload = {"since": "2026-01-01", "subscriber": "nobody"}
    body = await post_json(rig.http, "/api/replay", 404, json=payload)
    assert body == {"error": "subscriber: no subscriber 'nobody' (known: rx)"}


async def test_unknown_query_parameters_are_refused(rig: Rig) -> None:
    body = await get_json(rig.http, "/api/deliveries?stat=failed", 400)
    assert body["error"].startswith("stat: unknown parameter (expected state, subscriber")
    body = await get_json(rig.http, "/api/events?typ=x", 400)
    assert body["error"].startswith("typ: unknown parameter")


async def test_replay_invalid_json(rig: Rig) -> None:
    json_type = {"Content-Type": "application/json"}
    body = await post_json(rig.http, "/api/replay", 400, data=b"{not json", headers=json_type)
    assert body["error"].startswith("body: not JSON")


# --- auth --------------------------------------------------------------------------------


async def test_bearer_token_guards_the_api_only(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str, clock: FakeClock
) -> None:
    async for rig in make_rig(aiohttp_server, tmp_path, secret, clock, token=TOKEN):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = await rig.http.get("/api/subscribers", headers=headers)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "bearer token" in (await resp.json())["error"]
        resp = await rig.http.post("/api/replay", json={"since": "2026-01-01"})
        assert resp.status == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert (await rig.http.get("/api/subscribers", headers=ok)).status == 200
        assert (await rig.http.get("/api/openapi.json", headers=ok)).status == 200
        for open_path in ("/healthz", "/metrics"):
            assert (await rig.http.get(open_path)).status == 200
        assert (await rig.http.get("/readyz")).status == 503  # open, and not ready yet


async def test_without_a_token_the_api_is_open(rig: Rig) -> None:
    assert (await rig.http.get("/api/subscribers")).status == 200
    assert (await rig.http.get("/api/events")).status == 200
