"""The bridge's reports on itself (`Report`): stored in the same transaction as the change they
report, an attempt recorded (`finish_attempt`) or a subscriber disabled
(`set_subscriber_health`), and not without it; an ordinary event with a pending delivery to
each target, due at once; a report's id stored once."""

from __future__ import annotations

import asyncio

from bridge.models import (
    DEAD_LETTERED,
    SUBSCRIBER_DISABLED,
    Attempt,
    DeliveryFilter,
    DeliveryState,
    Event,
    Report,
)
from bridge.store.base import AttemptOutcome, Store, SubscriberHealth
from tests.contract.conftest import DONE, OpenStore, assert_counts, enqueue, event, everything

PENDING, DELIVERED, FAILED = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED


def dead_lettered(n: int, delivery_id: int, at: float) -> Event:
    return Event(
        f"rpt_{n}", DEAD_LETTERED, f"delivery:{delivery_id}", at, None, {"delivery": delivery_id}
    )


def disabled(n: int, sub: str, at: float) -> Event:
    return Event(f"rpt_{n}", SUBSCRIBER_DISABLED, f"subscriber:{sub}", at, None, {"id": sub})


def failed_for_good(report: Report) -> AttemptOutcome:
    return AttemptOutcome(FAILED, report=report)


def tried(at: float) -> Attempt:
    return Attempt(at, 500, 4.0, "HTTP 500", "down")


async def reports(store: Store) -> list[tuple[str, str, DeliveryState, float | None, float]]:
    """(event, subscriber, state, due, queued) of every delivery of a report, oldest first."""
    return [
        (v.event_id, v.subscriber_id, v.state, v.next_attempt_at, v.created_at)
        for v in reversed(await everything(store))
        if v.event_id.startswith("rpt_")
    ]


async def test_a_report_is_stored_with_the_attempt_it_reports(store: Store) -> None:
    await enqueue(store, 10.0, event(1), to=("a",))
    [d] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    report = Report(dead_lettered(1, d.id, 12.0), ("ops", "audit"))
    assert await store.finish_attempt(d, tried(12.0), failed_for_good(report))
    view = await store.get_delivery(d.id)
    assert view is not None and (view.state, view.history) == (FAILED, (tried(12.0),))
    # an ordinary event, of its record, on the feed
    assert await store.list_events(record_id=f"delivery:{d.id}") == [report.event]
    [stored] = await store.list_events(event_type=DEAD_LETTERED) or []
    assert stored == report.event and stored.data == {"delivery": d.id}
    page = await store.events_after(after_seq=None, limit=10)
    assert [e.id for _, e in page.events] == ["evt_1", "rpt_1"]
    # a delivery to each target, due at the attempt's time
    assert await reports(store) == [
        ("rpt_1", "ops", PENDING, 12.0, 12.0),
        ("rpt_1", "audit", PENDING, 12.0, 12.0),
    ]
    await assert_counts(store, {PENDING: 2, FAILED: 1})
    assert await store.next_due_at(["ops"]) == 12.0
    assert await store.claim_due(now=11.0, limit=5, lease_s=60, subscribers=["ops"]) == []
    [sent] = await store.claim_due(now=12.0, limit=5, lease_s=60, subscribers=["ops"])
    assert sent.event == report.event and sent.event.data == report.event.data
    assert (sent.attempts, sent.schedule_from) == (0, 0)
    assert await store.finish_attempt(sent, Attempt(13.0, 200, 1.0, None, "ok"), DONE)
    await assert_counts(store, {PENDING: 1, DELIVERED: 1, FAILED: 1})
    [other] = await store.claim_lanes(now=12.0, lease_s=60, rooms=[("audit", 5)])
    assert other.event.id == "rpt_1"


async def test_no_report_when_the_lease_was_lost(store: Store) -> None:
    await enqueue(store, 10.0, event(1), to=("a",))
    [stale] = await store.claim_due(now=10.0, limit=1, lease_s=30, subscribers=["a"])
    [holder] = await store.claim_due(now=45.0, limit=1, lease_s=30, subscribers=["a"])
    report = Report(dead_lettered(1, stale.id, 46.0), ("ops",))
    assert not await store.finish_attempt(stale, tried(46.0), failed_for_good(report))
    assert await store.list_events(event_type=DEAD_LETTERED) == []
    assert await store.list_events(record_id=f"delivery:{stale.id}") == []
    assert await reports(store) == []
    await assert_counts(store, {PENDING: 1})
    # the lease holder's report is stored
    again = Report(dead_lettered(2, holder.id, 47.0), ("ops",))
    assert await store.finish_attempt(holder, tried(47.0), failed_for_good(again))
    assert await reports(store) == [("rpt_2", "ops", PENDING, 47.0, 47.0)]


async def test_an_outcome_without_a_report_stores_none(store: Store) -> None:
    await enqueue(store, 10.0, event(1), to=("a",))
    [d] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(d, tried(11.0), AttemptOutcome(FAILED))
    assert [e.id for e in await store.list_events() or []] == ["evt_1"]


async def test_a_report_id_is_stored_once(store: Store) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"), event(3, "r3"), to=("a",))
    held = await store.claim_due(now=10.0, limit=3, lease_s=60, subscribers=["a"])
    assert len(held) == 3
    first = Report(dead_lettered(1, 0, 11.0), ("ops",))
    second = Report(dead_lettered(1, 0, 12.0), ("ops", "audit"))  # the same id
    assert await store.finish_attempt(held[0], tried(11.0), failed_for_good(first))
    # in one batch too: the same id twice, and once more than stored already
    together = await asyncio.gather(
        store.finish_attempt(held[1], tried(12.0), failed_for_good(second)),
        store.finish_attempt(held[2], tried(12.0), failed_for_good(second)),
    )
    assert list(together) == [True, True]  # the attempts are recorded all the same
    assert await store.list_events(event_type=DEAD_LETTERED) == [first.event]
    assert await reports(store) == [("rpt_1", "ops", PENDING, 11.0, 11.0)]
    await assert_counts(store, {PENDING: 1, FAILED: 3})


async def test_reports_in_one_batch_each_stored(store: Store) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"), to=("a",))
    one, two = await store.claim_due(now=10.0, limit=2, lease_s=60, subscribers=["a"])
    done = await asyncio.gather(
        store.finish_attempt(
            one, tried(11.0), failed_for_good(Report(dead_lettered(1, one.id, 11.0), ("ops",)))
        ),
        store.finish_attempt(
            two,
            tried(11.5),
            failed_for_good(Report(dead_lettered(2, two.id, 11.5), ("ops", "ops"))),
        ),
    )
    assert list(done) == [True, True]
    assert await reports(store) == [
        ("rpt_1", "ops", PENDING, 11.0, 11.0),
        ("rpt_2", "ops", PENDING, 11.5, 11.5),  # a target named twice: one delivery
    ]
    # the order rule holds per record: each report is its delivery's own record
    got = await store.claim_due(now=12.0, limit=5, lease_s=60, subscribers=["ops"])
    assert [d.event.id for d in got] == ["rpt_1", "rpt_2"]


BROKEN = SubscriberHealth(failing_since=5.0, disabled_at=20.0, reason="HTTP 410")


async def test_disabling_a_subscriber_stores_its_report(store: Store) -> None:
    report = Report(disabled(1, "a", 20.0), ("ops",))
    assert await store.set_subscriber_health("a", BROKEN, report=report) is True  # stored
    assert (await store.subscriber_health())["a"] == BROKEN
    assert await store.list_events(record_id="subscriber:a") == [report.event]
    assert await reports(store) == [("rpt_1", "ops", PENDING, 20.0, 20.0)]
    [sent] = await store.claim_due(now=20.0, limit=5, lease_s=60, subscribers=["ops"])
    assert sent.event == report.event
    await assert_counts(store, {PENDING: 1})


async def test_a_subscriber_known_enabled_then_disabled_is_reported(store: Store) -> None:
    assert await store.set_subscriber_health("a", SubscriberHealth(failing_since=5.0)) is False
    report = Report(disabled(1, "a", 20.0), ("ops",))
    assert await store.set_subscriber_health("a", BROKEN, keep_disabled=True, report=report)
    assert (await store.subscriber_health())["a"] == BROKEN
    assert await reports(store) == [("rpt_1", "ops", PENDING, 20.0, 20.0)]


async def test_no_report_unless_the_write_disables_an_enabled_subscriber(store: Store) -> None:
    # enabling, or a health write that does not disable: nothing
    assert not await store.set_subscriber_health(
        "a", SubscriberHealth(failing_since=5.0), report=Report(disabled(1, "a", 5.0), ("ops",))
    )
    assert not await store.set_subscriber_health(
        "b", SubscriberHealth(), report=Report(disabled(2, "b", 5.0), ("ops",))
    )
    assert await store.list_events() == []
    # disabled once: reported once
    rpt_3 = Report(disabled(3, "a", 20.0), ("ops",))
    assert await store.set_subscriber_health("a", BROKEN, report=rpt_3)
    # already disabled: no report, whether or not the write keeps the stored disable
    later = SubscriberHealth(failing_since=5.0, disabled_at=30.0, reason="HTTP 404")
    assert not await store.set_subscriber_health(
        "a", later, report=Report(disabled(4, "a", 30.0), ("ops",))
    )
    assert (await store.subscriber_health())["a"] == later
    assert not await store.set_subscriber_health(
        "a", BROKEN, keep_disabled=True, report=Report(disabled(5, "a", 40.0), ("ops",))
    )
    assert (await store.subscriber_health())["a"] == later  # the stored disable stays
    # enabled again, with a report: nothing; disabled again: reported again
    assert not await store.set_subscriber_health(
        "a", SubscriberHealth(), report=Report(disabled(6, "a", 50.0), ("ops",))
    )
    assert [e.id for e in await store.list_events() or []] == ["rpt_3"]
    # a write that disables it, with a report recorded already (the same occurrence, written
    # again): disabled, and not stored again (so not to be announced again)
    assert not await store.set_subscriber_health("a", BROKEN, report=rpt_3)
    assert (await store.subscriber_health())["a"] == BROKEN
    assert await store.set_subscriber_health("a", SubscriberHealth()) is False
    assert await store.set_subscriber_health(
        "a", BROKEN, report=Report(disabled(7, "a", 60.0), ("ops",))
    )
    assert [e.id for e in await store.list_events() or []] == ["rpt_7", "rpt_3"]
    assert await reports(store) == [
        ("rpt_3", "ops", PENDING, 20.0, 20.0),
        ("rpt_7", "ops", PENDING, 20.0, 20.0),
    ]
    assert await store.list_deliveries(where=DeliveryFilter(record_id="subscriber:a")) != []


async def test_two_stores_disabling_one_subscriber_store_one_report(
    open_store: OpenStore,
) -> None:
    first, second = await open_store(), await open_store()
    for round_ in range(3):
        sub = f"s{round_}"
        if round_ == 1:  # known, enabled
            await first.set_subscriber_health(sub, SubscriberHealth(failing_since=1.0))
        await asyncio.gather(
            first.set_subscriber_health(
                sub,
                BROKEN,
                keep_disabled=True,
                report=Report(disabled(10 + round_, sub, 20.0), ("ops",)),
            ),
            second.set_subscriber_health(
                sub,
                BROKEN,
                keep_disabled=True,
                report=Report(disabled(20 + round_, sub, 20.0), ("ops",)),
            ),
        )
        found = await first.list_events(record_id=f"subscriber:{sub}")
        assert found is not None and len(found) == 1, sub
    await assert_counts(first, {PENDING: 3})
