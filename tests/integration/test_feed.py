"""The pull side (CONTRACT §5) end to end: `GET /api/feed` and `GET /api/stream` on the real
admin app over a real `Service` (SQLite file, simulator upstream, FakeClock): order, pages
with `next`, the type filter, cursors across a restart, long polls woken by a poll at once,
SSE resume with `Last-Event-ID`, heartbeats, 410 past retention, feed tokens, bad cursors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientResponse
from pydantic import SecretStr

from bridge.admin.feed import HEARTBEAT_S
from bridge.deliver.formats import standard_body
from bridge.models import COMPLETED, CREATED, FAILED_EVENT, Event, RecordState, event_id
from bridge.ops.feed import decode, encode
from bridge.store.base import ScanCommit
from tests.integration import test_admin_api
from tests.integration.test_admin_api import Client, World, call, deliver, fails, running

world = test_admin_api.world  # the fixture: a simulator, receivers and a database file

TOKEN = "tok-3f9a1c-admin"
FEED_TOKEN = "feed-token-reader-0001"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def walk(
    http: Client, query: str = "", limit: int = 2, after: str | None = None
) -> tuple[list[Any], str]:
    """Every event of the feed page by page from `after`; the events and the last next."""
    events: list[Any] = []
    url = f"/api/feed?limit={limit}{query}" + (f"&after={after}" if after else "")
    for _ in range(50):
        body = await call(http, "GET", url)
        events += body["events"]
        if body["events"]:
            assert body["next"] == body["events"][-1]["cursor"]
        if len(body["events"]) < limit:
            return events, body["next"]
        url = f"/api/feed?limit={limit}{query}&after={body['next']}"
    raise AssertionError("the feed never ended")


async def sse(resp: ClientResponse, count: int) -> list[dict[str, str]]:
    """The next `count` SSE messages (events or comments) of a stream."""
    found: list[dict[str, str]] = []
    message: dict[str, str] = {}
    while len(found) < count:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line == "":
            if message:
                found.append(message)
            message = {}
        elif line.startswith(":"):
            message["comment"] = line[1:].strip()
        else:
            key, _, value = line.partition(": ")
            message[key] = value
    return found


def test_cursors_encode_and_decode_strictly() -> None:
    for seq in (0, 1, 35, 36, 10**12):
        assert decode(encode(seq), "after") == seq
    for bad in ("", "c_", "c_00", "c_01", "C_1", "c_1 ", "1", "c_-1", "c_A", "c_" + "z" * 14):
        try:
            decode(bad, "after")
        except Exception as exc:
            assert "after" in str(exc)
        else:
            raise AssertionError(bad)


async def test_the_feed_pages_oldest_first_with_types_and_standard_bodies(world: World) -> None:
    done = world.sim.add_records(3, status="success")
    failed = world.sim.add_records(2, status="failed")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        events, last = await walk(http)
        stored = await svc.store.events_after(after_seq=None, limit=100)
        completed = await walk(http, f"&type={COMPLETED}")
        empty = await call(http, "GET", f"/api/feed?after={last}")
        start = await call(http, "GET", "/api/feed")
    assert [e["id"] for e in events] == [e.id for _, e in stored.events]
    assert {e["id"] for e in events} >= {event_id(r["id"], COMPLETED) for r in done} | {
        event_id(r["id"], FAILED_EVENT) for r in failed
    }
    assert len(events) == 10  # with backfill: each record's `created` too
    for event, (seq, ev) in zip(events, stored.events, strict=True):
        assert event == {**standard_body(ev), "cursor": encode(seq)}
    assert [e["id"] for e in completed[0]] == [e["id"] for e in events if e["type"] == COMPLETED]
    assert empty == {"events": [], "next": last}  # `next` can always be passed back
    assert [e["id"] for e in start["events"]] == [e["id"] for e in events]
    assert start["next"] == last


async def test_cursors_resume_after_a_restart_with_nothing_skipped_or_repeated(
    world: World,
) -> None:
    world.sim.add_records(4, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        before, _ = await walk(http)
    world.sim.add_records(2, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        everything, _ = await walk(http)
        for i, event in enumerate(before):
            rest, _ = await walk(http, limit=3, after=event["cursor"])
            assert rest == everything[i + 1 :]
    assert everything[: len(before)] == before and len(everything) == len(before) + 4


async def test_a_long_poll_answers_as_soon_as_a_poll_stores_an_event(world: World) -> None:
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()  # the baseline: nothing yet
        first = await call(http, "GET", "/api/feed")
        assert first["events"] == []
        waiting = asyncio.create_task(
            call(http, "GET", f"/api/feed?after={first['next']}&wait_s=30")
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()  # no event: it waits (the clock does not move)
        [record] = world.sim.add_records(1, status="success")
        await svc.poller.tick()  # stores the event: the long poll answers at once
        body = await asyncio.wait_for(waiting, 5)
        timed = await call(http, "GET", f"/api/feed?after={body['next']}&wait_s=0")
    assert event_id(record["id"], COMPLETED) in [e["id"] for e in body["events"]]
    assert timed == {"events": [], "next": body["next"]}


async def test_a_long_poll_ends_empty_when_its_time_passes(world: World) -> None:
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        waiting = asyncio.create_task(call(http, "GET", "/api/feed?wait_s=5"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await world.clock.advance(5)
        assert await asyncio.wait_for(waiting, 5) == {"events": [], "next": encode(0)}


async def test_the_stream_resumes_after_last_event_id_and_beats(world: World) -> None:
    world.sim.add_records(3, status="success")
    only = f"?type={COMPLETED}"
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        events, _ = await walk(http, f"&type={COMPLETED}")
        assert len(events) == 3
        # from the first event's cursor: the two after it, then new ones as they come
        resp = await http.get(
            f"/api/stream{only}", headers={"Last-Event-ID": events[0]["cursor"]}, timeout=None
        )
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        got = await sse(resp, 2)
        [added] = world.sim.add_records(1, status="success")
        await svc.poller.tick()
        got += await sse(resp, 1)
        await world.clock.advance(HEARTBEAT_S)
        beat = await sse(resp, 1)
        resp.close()
        # without a cursor: only what is stored from now on
        fresh = await http.get(f"/api/stream{only}", timeout=None)
        await asyncio.sleep(0.1)
        [late] = world.sim.add_records(1, status="success")
        await svc.poller.tick()
        first_new = await sse(fresh, 1)
        fresh.close()
        via_query = await http.get(f"/api/stream{only}&after={events[1]['cursor']}", timeout=None)
        resumed = await sse(via_query, 2)
        via_query.close()
    expected = [*events[1:], {"id": event_id(added["id"], COMPLETED)}]
    assert [m["id"] for m in got] == [e["cursor"] for e in events[1:]] + [got[2]["id"]]
    assert [json.loads(m["data"])["id"] for m in got] == [e["id"] for e in expected]
    assert all(m["event"] == COMPLETED for m in got)
    assert json.loads(got[0]["data"]) == {k: v for k, v in events[1].items() if k != "cursor"}
    assert beat == [{"comment": "keep-alive"}]
    assert [json.loads(m["data"])["id"] for m in first_new] == [event_id(late["id"], COMPLETED)]
    assert [json.loads(m["data"])["id"] for m in resumed] == [
        events[2]["id"],
        event_id(added["id"], COMPLETED),
    ]


async def test_a_cursor_older_than_retention_is_410(world: World) -> None:
    world.sim.add_records(2, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        events, _ = await walk(http)
        assert await deliver(svc, world.clock) == 2
        world.sim.add_records(1, status="success")
        await world.clock.advance(100)
        await svc.poller.tick()
        await svc.store.purge(now=world.clock.now(), retention_s=50)
        kept, last = await walk(http)
        assert len(kept) == 2  # the new record's created and completed: the old ones went
        for old in (events[0]["cursor"], encode(0)):
            message = await fails(http, "GET", f"/api/feed?after={old}", 410, old, "without after")
            assert "older than the retained events" in message
        gone = await http.get("/api/stream", headers={"Last-Event-ID": events[0]["cursor"]})
        assert gone.status == 410
        # the newest deleted one's cursor missed nothing
        assert (await call(http, "GET", f"/api/feed?after={events[-1]['cursor']}"))[
            "events"
        ] == kept
        assert (await call(http, "GET", f"/api/feed?after={last}"))["events"] == []


async def test_with_every_event_purged_a_reader_without_cursor_is_not_sent_back_to_410(
    world: World,
) -> None:
    world.sim.add_records(2, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        assert await deliver(svc, world.clock) == 2
        events, _ = await walk(http)
        await world.clock.advance(100)
        assert await svc.store.purge(now=world.clock.now(), retention_s=50) > 0
        first = await call(http, "GET", "/api/feed")
        assert first == {"events": [], "next": events[-1]["cursor"]}  # past the deleted ones
        assert await call(http, "GET", f"/api/feed?after={first['next']}") == first
        world.sim.add_records(1, status="success")
        await svc.poller.tick()
        after = await call(http, "GET", f"/api/feed?after={first['next']}")
        assert [e["type"] for e in after["events"]] == [CREATED, COMPLETED]


async def test_feed_tokens_read_the_feed_only(world: World) -> None:
    world.sim.add_records(1, status="success")
    settings = world.settings(token=TOKEN)
    admin = settings.admin.model_copy(update={"feed_tokens": [SecretStr(FEED_TOKEN)]})
    settings = settings.model_copy(update={"admin": admin})
    async with running(settings, world.clock) as (svc, http):
        await svc.poller.tick()
        body = await call(http, "GET", "/api/feed", headers=bearer(FEED_TOKEN))
        assert len(body["events"]) == 2  # created, completed
        assert (await call(http, "GET", "/api/feed", headers=bearer(TOKEN))) == body
        stream = await http.get("/api/stream", headers=bearer(FEED_TOKEN), timeout=None)
        assert stream.status == 200
        stream.close()
        await fails(http, "GET", "/api/deliveries", 401, headers=bearer(FEED_TOKEN))
        await fails(http, "GET", "/api/events", 401, headers=bearer(FEED_TOKEN))
        await fails(http, "GET", "/api/feed", 401, headers=bearer("feed-token-reader-0002"))
        await fails(http, "GET", "/api/feed", 401)


async def test_bad_parameters_are_400_naming_them(world: World) -> None:
    async with running(world.settings(), world.clock) as (_, http):
        for query, name in (
            ("after=nope", "after"),
            ("after=c_01", "after"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("type=nope", "type"),
            ("wait_s=31", "wait_s"),
            ("wait_s=-1", "wait_s"),
            ("wait=1", "wait"),
        ):
            await fails(http, "GET", f"/api/feed?{query}", 400, name)
        await fails(http, "GET", "/api/stream?after=x", 400, "after")
        await fails(
            http, "GET", "/api/stream", 400, "Last-Event-ID", headers={"Last-Event-ID": "1"}
        )


async def test_another_replicas_events_notification_wakes_a_long_poll(world: World) -> None:
    """On PostgreSQL another replica's scan commit sends NOTIFY `events`: the service wakes
    its waiters, which read the store again (here the store is written directly)."""
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        waiting = asyncio.create_task(call(http, "GET", "/api/feed?wait_s=30"))
        await asyncio.sleep(0.2)
        event = Event("evt_elsewhere", COMPLETED, "r_elsewhere", world.clock.now(), None, {})
        await svc.store.commit_scan(
            ScanCommit([RecordState("r_elsewhere", "success", "t")], [(event, [])], now=0.0)
        )
        await asyncio.sleep(0.1)
        assert not waiting.done()  # stored behind its back: nothing said yet
        svc._notified("outbox")
        await asyncio.sleep(0.1)
        assert not waiting.done()
        svc._notified("events")
        body = await asyncio.wait_for(waiting, 5)
    assert [e["id"] for e in body["events"]] == ["evt_elsewhere"]
