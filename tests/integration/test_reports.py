"""The bridge reports on itself: a subscriber it disables and a delivery that dead-letters
become signed `bridge.*` events, sent through the outbox to subscribers listing them exactly;
a report's own dead letter reports nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.config import Settings
from bridge.deliver.dispatcher import Dispatcher
from bridge.errors import StoreError
from bridge.models import (
    DEAD_LETTERED,
    SUBSCRIBER_DISABLED,
    DeliveryFilter,
    DeliveryState,
    Report,
    iso_utc,
)
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import SubscriberHealth
from bridge.store.claims_common import LOST_ATTEMPT
from bridge.store.sqlite import SqliteStore
from tests.conftest import make_secret
from tests.integration.helpers import Received, RecordingReceiver, drive

ServerFactory = Callable[..., Any]
SECRETS = {"rx": make_secret(1), "ops": make_secret(2), "globs": make_secret(3)}


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=1.0)


@pytest.fixture
def receivers() -> dict[str, RecordingReceiver]:
    return {sid: RecordingReceiver() for sid in SECRETS}


@pytest.fixture
async def make_settings(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    aiohttp_server: ServerFactory,
    tmp_path: Path,
) -> Callable[..., Settings]:
    up: TestServer = await aiohttp_server(sim.make_app())
    urls = {}
    for sid, receiver in receivers.items():
        server: TestServer = await aiohttp_server(receiver.app())
        urls[sid] = str(server.make_url("/hook"))
    events = {
        "rx": ["denoise.completed", "denoise.failed"],
        "ops": [SUBSCRIBER_DISABLED, DEAD_LETTERED],
        "globs": ["bridge.*", "*"],  # globs never match the reports
    }

    def build(delivery: dict[str, Any] | None = None) -> Settings:
        return Settings.model_validate(
            {
                "upstream": {
                    "base_url": str(up.make_url("")).rstrip("/"),
                    "api_key": "test-key",
                    "page_size": 5,
                    "progress_stream": False,
                },
                "store": {"url": f"sqlite:///{tmp_path / 'b.db'}"},
                "delivery": {"allow_private_destinations": True, "jitter": 0, **(delivery or {})},
                "admin": {"enabled": False},
                "subscribers": [
                    {"id": sid, "url": urls[sid], "secret": SECRETS[sid], "events": events[sid]}
                    for sid in SECRETS
                ],
            }
        )

    return build


async def queue_events(svc: Service, sim: Simulator, clock: FakeClock, n: int) -> None:
    sim.add_records(n, status="pending")
    await svc.poller.tick()
    await clock.advance(1.5)
    await svc.poller.tick()


def signed_by(secret: str, request: Received) -> dict[str, Any]:
    """The body, once its Standard Webhooks signature checks out (without the library's
    wall-clock tolerance: the clock is fake)."""
    headers = request.headers
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], stamp, request.body)
    assert expected in headers["webhook-signature"].split(" ")
    body: dict[str, Any] = json.loads(request.body)
    assert body["id"] == headers["webhook-id"]
    return body


def types_seen(receiver: RecordingReceiver) -> list[str]:
    return [json.loads(r.body)["type"] for r in receiver.requests]


async def test_a_410_is_reported_once_to_the_subscriber_listing_it(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receivers["rx"].script = [410]
    settings = make_settings()
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 2)
        await svc.dispatcher.drain_once()
        await svc.dispatcher.drain_once()  # nothing more is due
        assert "rx" not in svc.dispatcher.active
        health = (await svc.store.subscriber_health())["rx"]
        assert health.disabled_at is not None
        # an operator's enable and disable are not reported
        await svc.dispatcher.set_enabled("rx", True, reason="operator")
        await svc.dispatcher.set_enabled("rx", False, reason="operator")
        await clock.advance(60)
        await svc.dispatcher.drain_once()
        stored = await svc.store.list_events(event_type=SUBSCRIBER_DISABLED)
    assert stored is not None and len(stored) == 1
    [request] = receivers["ops"].requests
    body = signed_by(SECRETS["ops"], request)
    assert body == {
        "id": stored[0].id,
        "type": SUBSCRIBER_DISABLED,
        "timestamp": iso_utc(health.disabled_at),
        "previous_status": None,
        "data": {
            "subscriber": "rx",
            "url": "http://127.0.0.1:" + request_port(settings, "rx"),
            "reason": "the endpoint answered 410 Gone",
            "disabled_at": iso_utc(health.disabled_at),
            "failing_since": iso_utc(health.disabled_at),  # failing since that very 410
        },
    }
    assert "/hook" not in request.body
    assert [t for t in types_seen(receivers["globs"]) if t.startswith("bridge.")] == []
    assert types_seen(receivers["globs"]) == ["denoise.completed"] * 2


def request_port(settings: Settings, sid: str) -> str:
    [sub] = [s for s in settings.subscribers if s.id == sid]
    return sub.url.rsplit(":", 1)[1].split("/")[0]


async def test_continuous_failure_disable_is_reported_while_the_ops_subscriber_waits(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    """`disable_after_s` disables too, reported; a disabled target's report delivery waits
    for it like any other."""
    receivers["rx"].default_status = 500
    receivers["ops"].script = [410]  # the ops endpoint is gone too, for now
    settings = make_settings({"disable_after_s": 100})
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 1)
        await svc.dispatcher.drain_once()
        await clock.advance(300)
        await svc.dispatcher.drain_once()  # rx disabled, its report to ops meets a 410
        assert svc.dispatcher.active == ["globs"]
        reported = await svc.store.list_events(event_type=SUBSCRIBER_DISABLED)
        assert reported is not None
        assert sorted(e.record_id for e in reported) == ["subscriber:ops", "subscriber:rx"]
        await svc.dispatcher.set_enabled("ops", True, reason="operator")
        await clock.advance(10)  # the attempt that met the 410 is due again 5 s after it
        await svc.dispatcher.drain_once()
        views = await svc.store.list_deliveries()
    reports = [signed_by(SECRETS["ops"], r) for r in receivers["ops"].requests]
    assert reports[0]["data"]["subscriber"] == "rx"  # met the 410
    assert sorted(b["data"]["subscriber"] for b in reports[1:]) == ["ops", "rx"]
    assert reports[0]["id"] in {b["id"] for b in reports[1:]}  # the same event, sent again
    assert "failing continuously for 300 s" in reports[0]["data"]["reason"]
    to_ops = [v for v in views if v.subscriber_id == "ops"]
    assert {v.state for v in to_ops} == {DeliveryState.DELIVERED} and len(to_ops) == 2


async def test_a_dead_letter_is_reported_and_a_reports_dead_letter_is_not(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receivers["rx"].default_status = 500
    receivers["ops"].default_status = 503
    settings = make_settings({"retry_schedule_s": [1]})
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 1)
        await svc.dispatcher.drain_once()  # rx: attempt 1
        await clock.advance(1)
        await svc.dispatcher.drain_once()  # rx: attempt 2, dead-lettered; ops: attempt 1
        await clock.advance(1)
        await svc.dispatcher.drain_once()  # ops: attempt 2, its report dead-lettered
        await clock.advance(3600)
        assert await svc.dispatcher.drain_once() == 0
        views = {v.subscriber_id: v for v in await svc.store.list_deliveries()}
        dead = await svc.store.list_events(event_type=DEAD_LETTERED)
    assert dead is not None and len(dead) == 1  # none about the report's own dead letter
    assert views["rx"].state is views["ops"].state is DeliveryState.FAILED
    assert views["ops"].event_id == dead[0].id
    first, second = receivers["ops"].requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == dead[0].id
    body = signed_by(SECRETS["ops"], first)
    [rx_request, *_] = receivers["rx"].requests
    original = json.loads(rx_request.body)
    assert body["type"] == DEAD_LETTERED and body["previous_status"] is None
    assert body["data"] == {
        "delivery_id": views["rx"].id,
        "subscriber": "rx",
        "event_id": original["id"],
        "event_type": "denoise.completed",
        "record_id": original["data"]["id"],
        "attempts": 2,
        "last_status_code": 500,
        "last_error": "HTTP 500",
    }
    assert dead[0].record_id == f"delivery:{views['rx'].id}"
    assert [t for t in types_seen(receivers["globs"]) if t.startswith("bridge.")] == []


async def counting(svc: Service, session: aiohttp.ClientSession, calls: list[int]) -> Dispatcher:
    """A dispatcher over the service's store that counts its `on_report` calls."""
    dispatcher = Dispatcher(
        svc.store,
        session,
        subscribers=svc.settings.subscribers,
        config=svc.settings.delivery,
        clock=svc.clock,
        on_report=lambda _report: calls.append(1),
    )
    await dispatcher.load_health()
    return dispatcher


async def test_on_report_is_called_and_a_running_dispatcher_sends_the_report_at_once(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receivers["rx"].script = [410]
    settings = make_settings()
    calls: list[int] = []
    async with Service(settings, clock=clock) as svc, aiohttp.ClientSession() as session:
        dispatcher = await counting(svc, session, calls)
        await queue_events(svc, sim, clock, 1)
        stop = asyncio.Event()
        runner = asyncio.create_task(dispatcher.run(stop))
        # the fake clock stands still: only the dispatcher's own wake-up sends the report
        await asyncio.wait_for(receivers["ops"].arrived.wait(), timeout=10)
        stop.set()
        await runner
    assert calls == [1]
    assert types_seen(receivers["ops"]) == [SUBSCRIBER_DISABLED]


async def test_a_dead_letter_from_a_lost_lease_is_reported(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    settings = make_settings({"retry_schedule_s": [1]})  # two attempts in all
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 1)
        for _ in range(2):  # a worker claims it and dies, twice: the lease runs out each time
            [held] = await svc.store.claim_due(
                now=clock.now(), limit=5, lease_s=10, subscribers=["rx"]
            )
            await clock.advance(11)
        # the dispatcher's claim finds its second attempt lost, its last: dead-lettered, and
        # reported in the same transaction
        await drive(clock, svc.dispatcher.drain_once())
        await drive(clock, svc.dispatcher.drain_once())
        [view] = await svc.store.list_deliveries(where=DeliveryFilter(subscriber="rx"))
        dead = await svc.store.list_events(event_type=DEAD_LETTERED)
    assert receivers["rx"].requests == []
    assert view.state is DeliveryState.FAILED and view.attempts == 2
    assert dead is not None and len(dead) == 1
    [request] = receivers["ops"].requests
    body = signed_by(SECRETS["ops"], request)
    assert body["type"] == DEAD_LETTERED and body["id"] == dead[0].id
    assert body["data"] == {
        "delivery_id": view.id,
        "subscriber": "rx",
        "event_id": held.event.id,
        "event_type": held.event.type,
        "record_id": held.event.record_id,
        "attempts": 2,
        "last_status_code": None,
        "last_error": LOST_ATTEMPT,
    }
    assert [t for t in types_seen(receivers["globs"]) if t.startswith("bridge.")] == []


class FlakyHealth(SqliteStore):
    """The real store; its health writes fail while `down` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = False
        self.landed = asyncio.Event()  # a health write succeeded

    async def set_subscriber_health(
        self,
        subscriber_id: str,
        health: SubscriberHealth,
        *,
        keep_disabled: bool = False,
        report: Report | None = None,
    ) -> bool:
        if self.down:
            raise StoreError(f"store {self.path}: database is locked")
        stored = await super().set_subscriber_health(
            subscriber_id, health, keep_disabled=keep_disabled, report=report
        )
        self.landed.set()
        return stored


async def test_a_disable_whose_health_write_failed_for_good_is_reported_once_it_lands(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    receivers["rx"].script = [410]
    settings = make_settings()
    store = FlakyHealth(tmp_path / "b.db")
    calls: list[int] = []
    async with (
        Service(settings, clock=clock, store=store) as svc,
        aiohttp.ClientSession() as session,
    ):
        dispatcher = await counting(svc, session, calls)
        await queue_events(svc, sim, clock, 1)
        store.down = True
        await drive(clock, dispatcher.drain_once())  # the 410: disabled, its write fails
        assert "rx" not in dispatcher.active and calls == []
        assert await svc.store.list_events(event_type=SUBSCRIBER_DISABLED) == []
        store.down = False  # the store is back: the write is tried again, with its report
        await drive(clock, store.landed.wait())
        assert calls == [1]
        stored = await svc.store.list_events(event_type=SUBSCRIBER_DISABLED)
        health = (await svc.store.subscriber_health())["rx"]
        await drive(clock, dispatcher.drain_once())
        await dispatcher.stop_health_retries()
    assert stored is not None and len(stored) == 1
    assert health.disabled_at is not None and health.reason == "the endpoint answered 410 Gone"
    assert types_seen(receivers["ops"]) == [SUBSCRIBER_DISABLED]


async def test_a_disable_whose_report_the_store_already_had_is_not_announced(
    sim: Simulator,
    receivers: dict[str, RecordingReceiver],
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receivers["rx"].script = [410]
    settings = make_settings()
    calls: list[int] = []
    async with Service(settings, clock=clock) as svc, aiohttp.ClientSession() as session:
        dispatcher = await counting(svc, session, calls)
        await queue_events(svc, sim, clock, 1)
        # another writer (a replica, say) disabled it meanwhile: this dispatcher's view
        # still has it enabled, so its 410 disables it again, but the store keeps no report
        await svc.store.set_subscriber_health(
            "rx", SubscriberHealth(disabled_at=clock.now(), reason="elsewhere")
        )
        await drive(clock, dispatcher.drain_once())
        assert "rx" not in dispatcher.active
        stored = await svc.store.list_events(event_type=SUBSCRIBER_DISABLED)
    assert stored == [] and calls == []
