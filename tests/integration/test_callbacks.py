"""Gateway callbacks are deliveries: a job registered with a callback is called back through
the outbox like a subscriber (retries, dead letters and their report, per-record order),
with the `standard` body plus the client's metadata, signed with the client's secret; a
slow callback endpoint holds up neither other jobs' callbacks nor subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.config import Settings
from bridge.deliver.formats import standard_body
from bridge.detect.progress import ProgressWatcher
from bridge.models import (
    COMPLETED,
    DEAD_LETTERED,
    FAILED_EVENT,
    PROGRESS,
    Callback,
    DeliveryFilter,
    DeliveryState,
    Job,
)
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import Store
from bridge.store.pg import PgStore
from tests.conftest import make_secret
from tests.integration.helpers import Received, RecordingReceiver
from tests.pgdb import fresh_schema, require_pg

ServerFactory = Callable[..., Any]
CLIENT_SECRET = make_secret(7)
RX_SECRET = make_secret(1)
OPS_SECRET = make_secret(2)
METADATA = {"order": 42, "tags": ["a", "b"], "note": "ünïcode"}
STALL_S = 30.0  # real time without progress before a test counts as stuck


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=1.0)


@pytest.fixture
async def sim_url(sim: Simulator, aiohttp_server: ServerFactory) -> str:
    server: TestServer = await aiohttp_server(sim.make_app())
    return str(server.make_url("")).rstrip("/")


async def serve(aiohttp_server: ServerFactory, receiver: RecordingReceiver) -> str:
    server: TestServer = await aiohttp_server(receiver.app())
    return str(server.make_url("/hook"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test on a fresh SQLite file and on a fresh PostgreSQL schema (skipped without
    `BRIDGE_TEST_PG_URL`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'b.db'}"
        return
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        yield url


def build(
    sim_url: str,
    store: str,
    *,
    rx: str,
    ops: str | None = None,
    clients: Sequence[str] = ("acme",),
    **delivery: Any,
) -> Settings:
    subscribers: list[dict[str, Any]] = [{"id": "rx", "url": rx, "secret": RX_SECRET}]
    if ops is not None:
        subscribers.append(
            {"id": "ops", "url": ops, "secret": OPS_SECRET, "events": [DEAD_LETTERED]}
        )
    return Settings.model_validate(
        {
            "upstream": {
                "base_url": sim_url,
                "api_key": "test-key",
                "page_size": 5,
                "progress_stream": False,
            },
            "store": {"url": store},
            "delivery": {"allow_private_destinations": True, "jitter": 0, **delivery},
            "admin": {"enabled": False},
            "clients": [
                {"id": cid, "token": f"token-of-{cid}-0123456789", "secret": CLIENT_SECRET}
                for cid in clients
            ],
            "subscribers": subscribers,
        }
    )


@contextlib.asynccontextmanager
async def started(settings: Settings, clock: FakeClock) -> AsyncIterator[Service]:
    store: Store | None = None
    if settings.store.is_postgres:  # due and lease times by the fake clock, not the server's
        attempts = 1 + len(settings.delivery.retry_schedule_s)
        store = PgStore(settings.store.url, max_attempts=attempts, db_clock=False)
    async with Service(settings, clock=clock, store=store) as svc:
        assert svc.dispatcher.callbacks_enabled  # the service wires the `job:` lane
        yield svc


async def register(
    svc: Service,
    record_id: str,
    url: str,
    *,
    events: Sequence[str] = (COMPLETED, FAILED_EVENT),
    metadata: dict[str, Any] | None = None,
    client: str = "acme",
) -> int:
    """What the gateway does once Munsit accepted a job: remember it, wake the dispatcher."""
    now = svc.clock.now()
    job = Job(
        record_id=record_id,
        client_id=client,
        submitted_at=now,
        callback_id=f"cb_{record_id}",
        callback=Callback(url, tuple(events), metadata),
        record={"id": record_id, "status": "pending"},
    )
    queued = await svc.store.register_job(job, now=now)
    svc.dispatcher.wake()
    return queued


def signed_by(secret: str, request: Received) -> dict[str, Any]:
    """The body, once its Standard Webhooks signature checks out with the `standardwebhooks`
    library (signing with `secret` and comparing: the library's own `verify` would hold the
    fake clock's timestamp against the wall clock)."""
    headers = request.headers
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], stamp, request.body)
    assert headers["webhook-signature"].split(" ") == [expected]
    body: dict[str, Any] = json.loads(request.body)
    assert body["id"] == headers["webhook-id"]
    return body


async def baseline_then_pending(svc: Service, sim: Simulator) -> str:
    await svc.poller.tick()  # the baseline
    [record] = sim.add_records(1, status="pending")
    return str(record["id"])


async def test_a_completed_job_calls_back_once_signed_with_the_clients_secret(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    callback, rx = RecordingReceiver(), RecordingReceiver()
    settings = build(sim_url, store_url, rx=await serve(aiohttp_server, rx))
    url = await serve(aiohttp_server, callback)
    async with started(settings, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        assert await register(svc, rid, url, metadata=METADATA) == 0
        await svc.poller.tick()  # created: not asked for
        await clock.advance(1.5)
        await svc.poller.tick()  # completed
        await svc.dispatcher.drain_once()
        await clock.advance(3600)
        assert await svc.dispatcher.drain_once() == 0  # nothing more, ever
        views = await svc.store.list_deliveries(where=DeliveryFilter(subscriber=f"job:{rid}"))
        [event] = [
            e for e in await svc.store.list_events(record_id=rid) or [] if e.type == COMPLETED
        ]
    [request] = callback.requests
    body = signed_by(CLIENT_SECRET, request)
    assert body == {**standard_body(event), "metadata": METADATA}
    assert body["type"] == COMPLETED and body["data"]["id"] == rid
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("munsit-bridge/")
    # the subscriber got the same event, its own way: its secret, no metadata
    [to_rx] = rx.requests
    rx_body = signed_by(RX_SECRET, to_rx)
    assert "metadata" not in rx_body and rx_body["id"] == body["id"]
    [view] = views
    assert view.state is DeliveryState.DELIVERED and view.attempts == 1
    assert view.event_type == COMPLETED and view.record_id == rid


async def test_a_failed_job_calls_back_denoise_failed(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    callback, rx = RecordingReceiver(), RecordingReceiver()
    settings = build(sim_url, store_url, rx=await serve(aiohttp_server, rx))
    async with started(settings, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        await register(svc, rid, await serve(aiohttp_server, callback))
        sim.set_status(rid, "failed", error="not audio")
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
    [request] = callback.requests
    body = signed_by(CLIENT_SECRET, request)
    assert body["type"] == FAILED_EVENT
    assert body["data"]["status"] == "failed" and body["metadata"] is None


async def test_created_then_completed_arrive_in_order_when_both_are_asked_for(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    """Per-record order: `created` fails once, `completed` waits for its retry."""
    callback, rx = RecordingReceiver(script=[500]), RecordingReceiver()
    settings = build(sim_url, store_url, rx=await serve(aiohttp_server, rx))
    async with started(settings, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        url = await serve(aiohttp_server, callback)
        await register(svc, rid, url, events=["denoise.created", COMPLETED])
        await svc.poller.tick()
        await clock.advance(1.5)
        await svc.poller.tick()
        assert await svc.dispatcher.drain_once() == 2  # created: 500 (completed waits); rx
        await clock.advance(5)
        assert await svc.dispatcher.drain_once() == 2
    types = [json.loads(r.body)["type"] for r in callback.requests]
    assert types == ["denoise.created", "denoise.created", COMPLETED]


class FakeSource:
    """A progress stream per record: the messages given, then held open until released."""

    def __init__(self, messages: dict[str, list[dict[str, Any]]]) -> None:
        self.messages = messages
        self.opened: list[str] = []

    async def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
        self.opened.append(record_id)
        for message in self.messages.get(record_id, []):
            yield message
        await asyncio.Event().wait()  # open until cancelled


async def test_progress_is_called_back_only_when_the_callback_lists_it(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    """No subscriber lists `denoise.progress`; with `always_progress` the watcher still
    makes the events, and the store routes them to the callbacks that list the type."""
    wants, plain, rx = RecordingReceiver(), RecordingReceiver(), RecordingReceiver()
    settings = build(sim_url, store_url, rx=await serve(aiohttp_server, rx))
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        a, b = (str(r["id"]) for r in sim.add_records(2, status="pending"))
        await register(svc, a, await serve(aiohttp_server, wants), events=[PROGRESS, COMPLETED])
        await register(svc, b, await serve(aiohttp_server, plain))
        source = FakeSource(
            {rid: [{"stage": "processing", "pct": 50, "message": "half"}] for rid in (a, b)}
        )
        finished: list[str] = []
        made = asyncio.Semaphore(0)

        def on_event() -> None:
            made.release()
            svc.dispatcher.wake()

        watcher = ProgressWatcher(
            source,
            svc.store,
            subscribers=settings.subscribers,
            max_streams=5,
            clock=clock,
            on_finished=finished.append,
            on_event=on_event,
            always_progress=True,
        )
        try:
            watcher.watch(a)
            watcher.watch(b)
            async with asyncio.timeout(STALL_S):
                await made.acquire()
                await made.acquire()
        finally:
            await watcher.close()
        await svc.dispatcher.drain_once()
        await clock.advance(1.5)
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
    got = [signed_by(CLIENT_SECRET, r) for r in wants.requests]
    assert [g["type"] for g in got] == [PROGRESS, COMPLETED]
    assert got[0]["data"]["pct"] == 50 and got[0]["data"]["id"] == a
    assert [json.loads(r.body)["type"] for r in plain.requests] == [COMPLETED]
    assert PROGRESS not in [json.loads(r.body)["type"] for r in rx.requests]


async def test_a_callback_answering_500_is_retried_on_schedule_then_dead_lettered_and_reported(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    callback = RecordingReceiver(default_status=500)
    rx, ops = RecordingReceiver(), RecordingReceiver()
    settings = build(
        sim_url,
        store_url,
        rx=await serve(aiohttp_server, rx),
        ops=await serve(aiohttp_server, ops),
        retry_schedule_s=[5, 30],
    )
    async with started(settings, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        await register(svc, rid, await serve(aiohttp_server, callback))
        await clock.advance(1.5)
        await svc.poller.tick()
        assert await svc.dispatcher.drain_once() == 2  # rx, and the callback's first try
        await clock.advance(4)
        assert await svc.dispatcher.drain_once() == 0  # not due before 5 s
        await clock.advance(1)
        assert await svc.dispatcher.drain_once() == 1
        await clock.advance(29)
        assert await svc.dispatcher.drain_once() == 0
        await clock.advance(1)
        assert await svc.dispatcher.drain_once() == 2  # the last try, then its report
        [view] = await svc.store.list_deliveries(where=DeliveryFilter(subscriber=f"job:{rid}"))
        assert "rx" in svc.dispatcher.active  # nothing is disabled by a callback's failures
    assert len(callback.requests) == 3
    assert view.state is DeliveryState.FAILED and view.attempts == 3
    assert [a.status_code for a in view.history] == [500, 500, 500]
    [report] = [signed_by(OPS_SECRET, r) for r in ops.requests]
    assert report["type"] == DEAD_LETTERED
    assert report["data"]["subscriber"] == f"job:{rid}"
    assert report["data"]["record_id"] == rid and report["data"]["attempts"] == 3
    assert report["data"]["last_status_code"] == 500
    assert "/hook" not in json.dumps(report)


async def test_a_410_dead_letters_the_callback_at_once(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    callback, rx, ops = RecordingReceiver(script=[410]), RecordingReceiver(), RecordingReceiver()
    settings = build(
        sim_url,
        store_url,
        rx=await serve(aiohttp_server, rx),
        ops=await serve(aiohttp_server, ops),
    )
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        a, b = (str(r["id"]) for r in sim.add_records(2, status="pending"))
        url = await serve(aiohttp_server, callback)
        await register(svc, a, url)
        await register(svc, b, url)  # the same endpoint, another job: not disabled
        await clock.advance(1.5)
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
        await clock.advance(3600)
        await svc.dispatcher.drain_once()
        views = {
            v.subscriber_id: v
            for v in await svc.store.list_deliveries()
            if v.subscriber_id.startswith("job:")
        }
        health = await svc.store.subscriber_health()
    assert len(callback.requests) == 2
    first = json.loads(callback.requests[0].body)["data"]["id"]
    second = b if first == a else a
    gone = views[f"job:{first}"]
    assert gone.state is DeliveryState.FAILED and gone.attempts == 1
    assert views[f"job:{second}"].state is DeliveryState.DELIVERED
    assert not any(k.startswith("job:") for k in health)  # no endpoint health for callbacks
    [report] = [signed_by(OPS_SECRET, r) for r in ops.requests]
    assert report["data"]["subscriber"] == f"job:{first}"
    assert report["data"]["last_status_code"] == 410


async def hanging(aiohttp_server: ServerFactory, release: asyncio.Event, bodies: list[str]) -> str:
    async def hang(request: web.Request) -> web.Response:
        bodies.append(await request.text())
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hang)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/hook"))


async def test_a_slow_callback_endpoint_delays_neither_other_callbacks_nor_subscribers(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    release = asyncio.Event()
    hung: list[str] = []
    fast, rx = RecordingReceiver(), RecordingReceiver()
    # `timeout_s` is real time in aiohttp: long past any wait here
    settings = build(
        sim_url,
        store_url,
        rx=await serve(aiohttp_server, rx),
        timeout_s=3600,
        max_in_flight=4,
    )
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        records = [str(r["id"]) for r in sim.add_records(4, status="pending")]
        slow_url = await hanging(aiohttp_server, release, hung)
        for rid in records[:2]:
            await register(svc, rid, slow_url)
        for rid in records[2:]:
            await register(svc, rid, await serve(aiohttp_server, fast))
        await clock.advance(1.5)
        await svc.poller.tick()
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        try:
            for receiver, count in ((fast, 2), (rx, 4)):
                while len(receiver.requests) < count:
                    async with asyncio.timeout(STALL_S):  # no progress at all: stuck
                        await receiver.arrived.wait()
                    receiver.arrived.clear()
            # max_in_flight 4: the callbacks' lane has 2 slots, one endpoint 1 of them
            assert len(hung) == 1
        finally:
            release.set()
            stop.set()
            await runner
    assert {json.loads(r.body)["data"]["id"] for r in fast.requests} == set(records[2:])


async def test_a_callback_survives_a_restart_between_registration_and_completion(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    callback, rx = RecordingReceiver(), RecordingReceiver()
    settings = build(sim_url, store_url, rx=await serve(aiohttp_server, rx))
    url = await serve(aiohttp_server, callback)
    async with started(settings, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        await register(svc, rid, url, metadata={"k": 1})
    await clock.advance(1.5)  # it finishes while the bridge is down
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
    [request] = callback.requests
    body = signed_by(CLIENT_SECRET, request)
    assert body["type"] == COMPLETED and body["metadata"] == {"k": 1}


async def test_a_removed_clients_callbacks_wait_and_go_once_it_is_back(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    callback, rx = RecordingReceiver(), RecordingReceiver()
    rx_url = await serve(aiohttp_server, rx)
    url = await serve(aiohttp_server, callback)
    with_client = build(sim_url, store_url, rx=rx_url)
    without = build(sim_url, store_url, rx=rx_url, clients=["other"])
    async with started(with_client, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        await register(svc, rid, url)
    await clock.advance(1.5)
    async with started(without, clock) as svc:
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
        await clock.advance(60)
        await svc.dispatcher.drain_once()
        [view] = await svc.store.list_deliveries(where=DeliveryFilter(subscriber=f"job:{rid}"))
    assert callback.requests == [] and len(rx.requests) == 1
    assert view.state is DeliveryState.PENDING and view.attempts == 0
    async with started(with_client, clock) as svc:
        await clock.advance(600)  # a parked callback is looked at again within minutes
        await svc.dispatcher.drain_once()
    [request] = callback.requests
    assert signed_by(CLIENT_SECRET, request)["type"] == COMPLETED


async def test_the_destination_guard_retry_after_and_redirects_apply_to_callbacks(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    """A callback on a loopback address is refused at connect time (without
    `allow_private_destinations`); a 503's `Retry-After` longer than the schedule is
    honoured; a 302 is a failure, not followed."""
    answers = [
        web.Response(status=503, headers={"Retry-After": "120"}),
        web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"}),
        web.Response(status=204),
    ]
    seen: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        seen.append(clock.now())
        return answers.pop(0)

    app = web.Application()
    app.router.add_post("/hook", answer)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("/hook"))
    rx = RecordingReceiver()
    settings = build(sim_url, store_url, rx=await serve(aiohttp_server, rx))
    async with started(settings, clock) as svc:
        rid = await baseline_then_pending(svc, sim)
        await register(svc, rid, url)
        await clock.advance(1.5)
        await svc.poller.tick()
        await svc.dispatcher.drain_once()  # 503, Retry-After 120 s
        await clock.advance(119)
        assert await svc.dispatcher.drain_once() == 0
        await clock.advance(1)
        assert await svc.dispatcher.drain_once() == 1  # 302: a failure, retried in 300 s
        await clock.advance(300)
        assert await svc.dispatcher.drain_once() == 1  # 204
        [view] = await svc.store.list_deliveries(where=DeliveryFilter(subscriber=f"job:{rid}"))
    assert view.state is DeliveryState.DELIVERED
    assert [a.status_code for a in view.history] == [503, 302, 204]
    assert "redirects are not followed" in (view.history[1].error or "")
    assert [round(t - seen[0]) for t in seen] == [0, 120, 420]
    guarded = build(
        sim_url,
        store_url,
        rx=await serve(aiohttp_server, rx),
        allow_private_destinations=False,
    )
    async with started(guarded, clock) as svc:
        [record] = sim.add_records(1, status="success")
        await register(svc, str(record["id"]), url)
        await svc.poller.tick()
        await svc.dispatcher.drain_once()
        [refused] = await svc.store.list_deliveries(
            where=DeliveryFilter(subscriber=f"job:{record['id']}")
        )
    assert refused.state is DeliveryState.PENDING and refused.history[0].status_code is None
    assert "refused: loopback address" in (refused.history[0].error or "")
    assert answers == []  # the guarded attempt never reached the endpoint


async def test_a_hanging_subscriber_leaves_the_callbacks_their_share_and_vice_versa(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    """max_in_flight 4: a subscriber whose requests all hang (its max_concurrency is 4 too)
    still leaves the callbacks their 2 slots; callbacks hanging on 3 endpoints take 2 slots,
    never the subscriber's."""
    release = asyncio.Event()
    hung_rx: list[str] = []
    callbacks = RecordingReceiver()
    settings = build(
        sim_url,
        store_url,
        rx=await hanging(aiohttp_server, release, hung_rx),
        timeout_s=3600,
        max_in_flight=4,
    )
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        records = [str(r["id"]) for r in sim.add_records(6, status="pending")]
        for rid in records:
            await register(svc, rid, await serve(aiohttp_server, callbacks))
        await clock.advance(1.5)
        await svc.poller.tick()
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        try:
            while len(callbacks.requests) < len(records):
                async with asyncio.timeout(STALL_S):  # no progress at all: starved
                    await callbacks.arrived.wait()
                callbacks.arrived.clear()
            assert 2 <= len(hung_rx) <= 4
        finally:
            release.set()
            stop.set()
            await runner

    release = asyncio.Event()
    hung: list[str] = []
    rx = RecordingReceiver()
    settings = build(
        sim_url,
        store_url,
        rx=await serve(aiohttp_server, rx),
        timeout_s=3600,
        max_in_flight=4,
    )
    async with started(settings, clock) as svc:
        records = [str(r["id"]) for r in sim.add_records(3, status="pending")]
        for rid in records:  # three endpoints, each hanging
            await register(svc, rid, await hanging(aiohttp_server, release, hung))
        await clock.advance(1.5)
        await svc.poller.tick()
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        try:
            while len(rx.requests) < 3:
                async with asyncio.timeout(STALL_S):
                    await rx.arrived.wait()
                rx.arrived.clear()
            assert len(hung) == 2  # the callbacks' cap: half of max_in_flight
        finally:
            release.set()
            stop.set()
            await runner


async def test_a_job_registered_through_another_replica_is_watched_by_the_one_polling(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """The store's NOTIFY `job:<id>` (PostgreSQL) reaches `_notified`: the replica that
    polls opens that job's progress stream at once, before any poll has seen it."""
    rx = await serve(aiohttp_server, RecordingReceiver())
    settings = build(sim_url, f"sqlite:///{tmp_path / 'w.db'}", rx=rx)
    settings = settings.model_copy(
        update={"upstream": settings.upstream.model_copy(update={"progress_stream": True})}
    )
    [job] = sim.add_records(1, status="pending")
    async with Service(settings, clock=clock) as svc:
        assert svc.watcher is not None and svc.watcher.watching == set()
        svc._notified(f"job:{job['id']}")  # what the listener hands over
        assert svc.watcher.watching == {job["id"]}
        svc._notified("job:")  # an empty id opens nothing
        assert svc.watcher.watching == {job["id"]}
