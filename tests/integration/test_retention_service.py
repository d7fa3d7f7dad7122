"""The service's side of retention and removed subscribers: the background sweep deletes
batch after batch until nothing is due, and a restart without a subscriber sets its
deliveries aside (not pending, counted apart) until it comes back."""

from __future__ import annotations

from pathlib import Path

from bridge.config import Settings
from bridge.models import DeliveryState
from bridge.retention import BATCH, DAY_S, Retention
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.store.sqlite import SqliteStore
from tests.integration.helpers import settings_for
from tests.integration.test_store_retention import DONE, enqueue, ids, settle


async def test_a_sweep_deletes_every_expired_batch_and_keeps_the_rest(
    store: SqliteStore, tmp_path: Path, clock: FakeClock
) -> None:
    old = clock.now() - 31 * DAY_S
    names = [f"o{i}" for i in range(2 * BATCH + 7)]
    await enqueue(store, old, *names)
    settled = 0
    while batch := await settle(store, "a", old + 1, DONE):  # delivered a month ago
        settled += batch
    assert settled == len(names)
    await enqueue(store, clock.now() - DAY_S, "recent")
    assert await settle(store, "a", clock.now(), DONE) == 1
    retention = Retention(store, retention_days=30, clock=clock)
    deleted = await retention.sweep()
    assert deleted >= 2 * len(names)  # deliveries and events, batch after batch
    assert ids(store.path, "events") == {"evt_recent"}
    assert len(ids(store.path, "deliveries")) == len(ids(store.path, "attempts")) == 1
    assert await retention.sweep() == 0  # nothing more is due


def two_subscribers(db: Path, secret: str, *, keep_b: bool) -> Settings:
    base = settings_for("http://127.0.0.1:9", "http://127.0.0.1:9/hook", secret, db)
    subs = [base.subscribers[0]]
    if keep_b:
        subs.append(base.subscribers[0].model_copy(update={"id": "b"}))
    return base.model_copy(update={"subscribers": subs})


async def test_a_removed_subscriber_is_orphaned_and_comes_back(
    tmp_path: Path, clock: FakeClock, secret: str
) -> None:
    db = tmp_path / "b.db"
    async with Service(two_subscribers(db, secret, keep_b=True), clock=clock) as svc:
        await enqueue_for(svc, clock)
    async with Service(two_subscribers(db, secret, keep_b=False), clock=clock) as svc:
        counts = await svc.store.counts_by_subscriber()
        assert counts["b"][DeliveryState.ORPHANED] == 2 and counts["b"][DeliveryState.PENDING] == 0
        await svc.refresh_gauges()
        samples = svc.metrics.registry.get_sample_value
        assert samples("bridge_outbox_pending") == 2  # rx's only
        assert samples("bridge_outbox_orphaned") == 2
        claimed = await svc.store.claim_due(
            now=clock.now(), limit=10, lease_s=60, subscribers=["b"]
        )
        assert claimed == []
    async with Service(two_subscribers(db, secret, keep_b=True), clock=clock) as svc:
        counts = await svc.store.counts_by_subscriber()
        assert counts["b"][DeliveryState.PENDING] == 2
        assert counts["b"][DeliveryState.ORPHANED] == 0


async def enqueue_for(svc: Service, clock: FakeClock) -> None:
    store = svc.store
    assert isinstance(store, SqliteStore)
    await enqueue(store, clock.now(), "x", "y", to=("rx", "b"))
