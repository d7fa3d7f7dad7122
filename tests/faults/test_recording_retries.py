"""An attempt that went out is recorded even when the store fails for a moment: its writes
(the attempt, the endpoint's health) are tried again a few times, with short waits on the
injected clock, instead of being dropped."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bridge.deliver.persist import WRITE_RETRY_S
from bridge.errors import StoreError
from bridge.logging import configure
from bridge.models import Attempt, Delivery, DeliveryState, Report
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import AttemptOutcome, SubscriberHealth
from bridge.store.sqlite import SqliteStore
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive, settings_for


class FlakyStore(SqliteStore):
    """The SQLite store with a fault injected at its recording writes: each of the next
    `failures` calls of each raises `StoreError` before touching the file."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = {"finish_attempt": failures, "set_subscriber_health": failures}

    def _fail(self, write: str) -> None:
        if self.failures[write] > 0:
            self.failures[write] -= 1
            raise StoreError(f"store {self.path}: database is locked")

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, outcome: AttemptOutcome
    ) -> bool:
        self._fail("finish_attempt")
        return await super().finish_attempt(delivery, attempt, outcome)

    async def set_subscriber_health(
        self,
        subscriber_id: str,
        health: SubscriberHealth,
        *,
        keep_disabled: bool = False,
        report: Report | None = None,
    ) -> bool:
        self._fail("set_subscriber_health")
        return await super().set_subscriber_health(
            subscriber_id, health, keep_disabled=keep_disabled, report=report
        )


async def one_attempt_on_a_flaky_store(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path, failures: int, status: int
) -> tuple[FlakyStore, RecordingReceiver, list[dict[str, Any]], float]:
    """One delivery to a receiver answering `status`, while the store's writes fail
    `failures` times each. Returns the store (closed), the receiver, the log lines and how
    far the clock moved while the attempt was sent and recorded."""
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    receiver = RecordingReceiver(default_status=status)
    up: TestServer = await aiohttp_server(sim.make_app())
    rx: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(up.make_url("")).rstrip("/"),
        str(rx.make_url("/hook")),
        make_secret(),
        tmp_path / "b.db",
        upstream={"progress_stream": False},
        delivery={"jitter": 0},
    )
    store = FlakyStore(tmp_path / "b.db", failures=0)
    out = io.StringIO()
    configure("debug", "json", out)
    sim.add_records(1, status="pending")
    async with Service(settings, clock=clock, store=store) as svc:
        await svc.poller.tick()
        await clock.advance(1.5)
        await svc.poller.tick()
        store.failures = dict.fromkeys(store.failures, failures)
        started = clock.now()
        assert await drive(clock, svc.dispatcher.drain_once()) == 1
        moved = clock.now() - started
    return store, receiver, [json.loads(line) for line in out.getvalue().splitlines()], moved


async def test_recording_writes_are_retried_on_a_transient_store_error(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    store, receiver, lines, moved = await one_attempt_on_a_flaky_store(
        aiohttp_server, clock, tmp_path, failures=2, status=410
    )
    stored = SqliteStore(store.path)  # what the file holds, through a connection of its own
    await stored.open()
    try:
        [view] = await stored.list_deliveries()
        health = (await stored.subscriber_health())["rx"]
    finally:
        await stored.close()
    assert len(receiver.requests) == 1
    assert view.attempts == 1 and [a.status_code for a in view.history] == [410]
    assert view.state is DeliveryState.PENDING  # due again, kept until the endpoint is back
    assert health.reason == "the endpoint answered 410 Gone" and health.disabled_at
    retries = [line for line in lines if line["event"] == "store write failed, trying again"]
    assert sorted(line["write"].split(" (")[0] for line in retries) == sorted(
        ["record an attempt", "store a subscriber's health"] * 2
    )
    assert all("database is locked" in line["error"] for line in retries)
    # the writes waited on the injected clock, one after the other
    assert moved == pytest.approx(2 * sum(WRITE_RETRY_S[:2]), abs=1e-3)


async def test_a_store_that_keeps_failing_is_logged_with_its_traceback(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """Past the retries the attempt is not recorded (its lease running out gives the delivery
    out again): an error line with the traceback, and the dispatcher goes on."""
    _, receiver, lines, _ = await one_attempt_on_a_flaky_store(
        aiohttp_server, clock, tmp_path, failures=1000, status=200
    )
    assert len(receiver.requests) == 1
    [lost] = [line for line in lines if line["event"] == "store write failed for good"]
    assert lost["write"].startswith("record an attempt")
    assert lost["level"] == "error" and lost["status_code"] == 200 and lost["attempt"] == 1
    assert lost["exception"].startswith("Traceback (most recent call last):")
    assert "StoreError: store " in lost["exception"]
    assert not [line for line in lines if line["event"] == "delivery task crashed"]
