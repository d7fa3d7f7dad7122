"""What operators see and do: deliveries and events listed and paged, one delivery with its
attempts, retry, replay, and the subscribers' health."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.models import (
    COMPLETED,
    CREATED,
    FAILED_EVENT,
    PROGRESS,
    Attempt,
    DeliveryFilter,
    DeliveryState,
    DeliveryView,
    Event,
    Replayed,
)
from bridge.store.base import ScanCommit, Store, SubscriberHealth
from tests.contract.conftest import DEAD, DONE, assert_counts, enqueue, event, everything, later


async def test_deliveries_are_listed_newest_first_filtered_and_paged(store: Store) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2", CREATED), to=("a", "b"))
    await enqueue(store, 20.0, event(3, "r3"), to=("a",))
    held = await store.claim_due(now=20.0, limit=10, lease_s=60, subscribers=["a", "b"])
    outcome = {("a", "evt_1"): DONE, ("b", "evt_2"): DEAD}
    for d in held:
        if (key := (d.subscriber_id, d.event.id)) in outcome:
            assert await store.finish_attempt(d, attempt_at(21.0), outcome[key])
        else:
            assert await store.release(d, now=22.0)
    views = await everything(store)
    assert [v.id for v in views] == sorted((v.id for v in views), reverse=True)
    assert [v.event_id for v in views] == ["evt_3", "evt_2", "evt_2", "evt_1", "evt_1"]
    by_key = {(v.subscriber_id, v.event_id): v for v in views}
    done, dead = by_key["a", "evt_1"], by_key["b", "evt_2"]
    assert (done.state, done.attempts, done.next_attempt_at) == (DeliveryState.DELIVERED, 1, None)
    assert (dead.state, dead.attempts, dead.next_attempt_at) == (DeliveryState.FAILED, 1, None)
    assert (dead.event_type, dead.record_id) == (CREATED, "r2")
    assert (done.created_at, done.updated_at) == (10.0, 21.0)
    waiting = by_key["a", "evt_3"]
    assert (waiting.state, waiting.attempts, waiting.next_attempt_at) == (
        DeliveryState.PENDING,
        0,
        22.0,
    )
    assert (waiting.created_at, waiting.history) == (20.0, ())
    # filters
    assert await store.list_deliveries(where=DeliveryFilter(state=DeliveryState.DELIVERED)) == [
        done
    ]
    assert await store.list_deliveries(where=DeliveryFilter(state=DeliveryState.ORPHANED)) == []
    assert [
        v.event_id for v in await store.list_deliveries(where=DeliveryFilter(subscriber="a"))
    ] == [
        "evt_3",
        "evt_2",
        "evt_1",
    ]
    assert await store.list_deliveries(
        where=DeliveryFilter(state=DeliveryState.FAILED, subscriber="b")
    ) == [dead]
    assert (
        await store.list_deliveries(
            where=DeliveryFilter(state=DeliveryState.FAILED, subscriber="a")
        )
        == []
    )
    assert await store.list_deliveries(where=DeliveryFilter(subscriber="nobody")) == []
    # pages
    assert await store.list_deliveries(limit=2) == views[:2]
    assert await paged(store, 2) == views
    assert await paged(store, 1, subscriber="b") == [v for v in views if v.subscriber_id == "b"]
    pending = [v for v in views if v.state is DeliveryState.PENDING]
    assert await paged(store, 2, state=DeliveryState.PENDING) == pending
    assert await store.list_deliveries(before=views[0].id + 1000) == views
    assert await store.list_deliveries(before=views[-1].id) == []
    assert await store.list_deliveries(before=views[1].id, limit=2) == views[2:4]


async def paged(
    store: Store, size: int, *, state: DeliveryState | None = None, subscriber: str | None = None
) -> list[DeliveryView]:
    """Every delivery (of `state`, of `subscriber`), a page of `size` at a time."""
    found: list[DeliveryView] = []
    before: int | None = None
    while page := await store.list_deliveries(
        where=DeliveryFilter(state=state, subscriber=subscriber), limit=size, before=before
    ):
        assert len(page) <= size
        found += page
        before = page[-1].id
    return found


def attempt_at(at: float, code: int | None = 500) -> Attempt:
    return Attempt(at, code, 3.25, None if code == 200 else f"HTTP {code}", f"answer at {at}")


async def test_one_delivery_with_its_attempts_in_order(store: Store) -> None:
    await enqueue(store, 10.0, event(1), to=("a", "b"))
    tries = [
        Attempt(11.0, 503, 120.5, "HTTP 503", '{"error": "busy ✓"}'),
        Attempt(12.0, None, 15000.0, "timed out after 15.0 s", ""),
        Attempt(13.0, 200, 8.0, None, "ok"),
    ]
    outcomes = [later(12.0), later(13.0), DONE]
    for at, tried, outcome in zip((11.0, 12.0, 13.0), tries, outcomes, strict=True):
        [d] = await store.claim_due(now=at, limit=1, lease_s=60, subscribers=["a"])
        assert await store.finish_attempt(d, tried, outcome)
    [view] = await store.list_deliveries(where=DeliveryFilter(subscriber="a"))
    assert view.history == tuple(tries)
    assert (view.state, view.attempts, view.updated_at) == (DeliveryState.DELIVERED, 3, 13.0)
    assert await store.get_delivery(view.id) == view
    [other] = await store.list_deliveries(where=DeliveryFilter(subscriber="b"))
    assert await store.get_delivery(other.id) == other
    assert await store.get_delivery(max(view.id, other.id) + 100) is None


async def test_events_are_listed_newest_recorded_first_by_type_and_before(store: Store) -> None:
    await enqueue(
        store,
        10.0,
        event(1, "r1", at=300.0),
        event(2, "r2", CREATED, at=200.0),
        event(3, "r3", at=100.0),
    )
    await enqueue(store, 20.0, event(4, "r4", at=50.0), to=())
    listed = await store.list_events()
    assert [e.id for e in listed or []] == ["evt_4", "evt_3", "evt_2", "evt_1"]
    expected = [
        event(4, "r4", at=50.0),
        event(3, "r3", at=100.0),
        event(2, "r2", CREATED, at=200.0),
        event(1, "r1", at=300.0),
    ]
    assert listed == expected and [e.data for e in listed] == [e.data for e in expected]
    assert [e.id for e in await store.list_events(event_type=COMPLETED) or []] == [
        "evt_4",
        "evt_3",
        "evt_1",
    ]
    assert await store.list_events(event_type=PROGRESS) == []
    assert [e.id for e in await store.list_events(limit=2) or []] == ["evt_4", "evt_3"]
    assert [e.id for e in await store.list_events(before="evt_3") or []] == ["evt_2", "evt_1"]
    assert [e.id for e in await store.list_events(before="evt_3", limit=1) or []] == ["evt_2"]
    assert [e.id for e in await store.list_events(before="evt_3", event_type=COMPLETED) or []] == [
        "evt_1"
    ]
    assert await store.list_events(before="evt_1") == []
    assert await store.list_events(before="evt_nope") is None
    assert await store.list_events(before="evt_nope", event_type=COMPLETED) is None
    # page by page
    found, before = [], None
    while page := await store.list_events(limit=1, before=before):
        found += page
        before = page[-1].id
    assert [e.id for e in found] == ["evt_4", "evt_3", "evt_2", "evt_1"]


async def test_retry_sends_a_dead_letter_or_a_waiting_delivery_now(store: Store) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"), event(3, "r3"))
    held = {
        d.event.id: d
        for d in await store.claim_due(now=10.0, limit=3, lease_s=60, subscribers=["a"])
    }
    assert await store.finish_attempt(held["evt_1"], attempt_at(11.0), DEAD)
    assert await store.finish_attempt(held["evt_2"], attempt_at(11.0, 200), DONE)
    assert await store.finish_attempt(held["evt_3"], attempt_at(11.0), later(500.0))
    ids = {k: d.id for k, d in held.items()}
    delivered = await store.get_delivery(ids["evt_2"])
    # a delivered one is left alone; an unknown one is None
    assert await store.retry(ids["evt_2"], now=20.0) is DeliveryState.DELIVERED
    assert await store.get_delivery(ids["evt_2"]) == delivered
    assert await store.retry(max(ids.values()) + 100, now=20.0) is None
    assert await store.next_due_at(["a"]) == 500.0
    # a dead letter: pending again, due now, its attempts and history kept
    assert await store.retry(ids["evt_1"], now=20.0) is DeliveryState.FAILED
    dead = await store.get_delivery(ids["evt_1"])
    assert dead is not None
    assert (dead.state, dead.attempts, dead.next_attempt_at) == (DeliveryState.PENDING, 1, 20.0)
    assert dead.history == (attempt_at(11.0),)
    await assert_counts(store, {DeliveryState.PENDING: 2, DeliveryState.DELIVERED: 1})
    # a waiting one: due now
    assert await store.retry(ids["evt_3"], now=20.0) is DeliveryState.PENDING
    waiting = await store.get_delivery(ids["evt_3"])
    assert waiting is not None
    assert (waiting.state, waiting.attempts, waiting.next_attempt_at) == (
        DeliveryState.PENDING,
        1,
        20.0,
    )
    assert await store.next_due_at(["a"]) == 20.0
    assert await store.claim_due(now=19.0, limit=5, lease_s=60, subscribers=["a"]) == []
    got = await store.claim_due(now=20.0, limit=5, lease_s=60, subscribers=["a"])
    # the dead letter's schedule starts again from the attempts it had; the other's goes on
    assert [(d.event.id, d.attempts, d.schedule_from) for d in got] == [
        ("evt_1", 1, 1),
        ("evt_3", 1, 0),
    ]
    await assert_counts(store, {DeliveryState.PENDING: 2, DeliveryState.DELIVERED: 1})


def to_ab(event_type: str, _record_id: str) -> Sequence[str]:
    return [] if event_type == PROGRESS else ["a", "b"]


async def test_replay_enqueues_stored_events_again_with_the_same_ids(store: Store) -> None:
    originals = [
        event(0, "r0", at=50.0),  # before `since`
        event(1, "r1", at=100.0),  # delivered
        event(2, "r2", FAILED_EVENT, at=200.0),  # dead
        event(3, "r3", at=300.0),  # still waiting
        event(4, "r4", PROGRESS, at=400.0),  # nobody takes progress
    ]
    await store.commit_scan(ScanCommit([], [(e, ["a"]) for e in originals[:4]], now=10.0))
    await enqueue(store, 10.0, originals[4], to=())
    held = {
        d.event.id: d
        for d in await store.claim_due(now=10.0, limit=9, lease_s=60, subscribers=["a"])
    }
    assert await store.finish_attempt(held["evt_0"], attempt_at(11.0, 200), DONE)
    assert await store.finish_attempt(held["evt_1"], attempt_at(11.0, 200), DONE)
    assert await store.finish_attempt(held["evt_2"], attempt_at(11.0), DEAD)
    assert await store.finish_attempt(held["evt_3"], attempt_at(11.0), later(500.0))
    waiting = await store.get_delivery(held["evt_3"].id)

    replayed = await store.replay(since=100.0, event_type=None, targets=to_ab, now=50.0)
    # evt_1..4; a: evt_1, evt_2 again, evt_3 already pending; b: evt_1..3 new; evt_4 unmatched
    assert replayed == Replayed(events=4, deliveries=5, unmatched=1, already_pending=1)
    assert await store.list_events() == originals[::-1]  # no new events
    assert await store.get_delivery(held["evt_3"].id) == waiting  # left as it was
    [old] = [v for v in await everything(store) if v.event_id == "evt_0"]
    assert old.state is DeliveryState.DELIVERED
    await assert_counts(store, {DeliveryState.PENDING: 6, DeliveryState.DELIVERED: 1})
    got = await store.claim_due(now=50.0, limit=20, lease_s=60, subscribers=["a", "b"])
    assert sorted((d.subscriber_id, d.event.id) for d in got) == [
        ("a", "evt_1"),
        ("a", "evt_2"),
        ("b", "evt_1"),
        ("b", "evt_2"),
        ("b", "evt_3"),
    ]
    by_id = {e.id: e for e in originals}
    for d in got:  # the same events, each on a fresh schedule
        assert d.event == by_id[d.event.id] and d.event.data == by_id[d.event.id].data
        assert d.attempts - d.schedule_from == 0
    # again: everything matched is pending already
    again = await store.replay(since=100.0, event_type=None, targets=to_ab, now=60.0)
    assert again == Replayed(events=4, deliveries=0, unmatched=1, already_pending=6)


async def test_a_retried_dead_letter_replayed_keeps_counting_on_a_fresh_schedule(
    store: Store,
) -> None:
    await store.commit_scan(ScanCommit([], [(event(1, "r1", at=100.0), ["a"])], now=10.0))
    [first] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(first, attempt_at(11.0), DEAD)
    assert await store.retry(first.id, now=20.0) is DeliveryState.FAILED
    [second] = await store.claim_due(now=20.0, limit=1, lease_s=60, subscribers=["a"])
    assert (second.attempts, second.schedule_from) == (1, 1)
    assert await store.finish_attempt(second, attempt_at(21.0), DEAD)

    replayed = await store.replay(
        since=0.0, event_type=None, targets=lambda _t, _r: ["a"], now=30.0
    )
    assert replayed == Replayed(events=1, deliveries=1)
    [third] = await store.claim_due(now=30.0, limit=1, lease_s=60, subscribers=["a"])
    # attempt 3 of the delivery, the first of its new schedule
    assert (third.attempts, third.schedule_from) == (2, 2)
    view = await store.get_delivery(third.id)
    assert view is not None and view.attempts == len(view.history) == 2


async def test_replay_by_type_and_time(store: Store) -> None:
    await enqueue(
        store,
        10.0,
        event(1, "r1", at=100.0),
        event(2, "r2", FAILED_EVENT, at=200.0),
        event(3, "r3", FAILED_EVENT, at=300.0),
        to=(),
    )
    by_type = await store.replay(since=0.0, event_type=FAILED_EVENT, targets=to_ab, now=20.0)
    assert by_type == Replayed(events=2, deliveries=4)
    by_time = await store.replay(since=300.0, event_type=None, targets=to_ab, now=21.0)
    assert by_time == Replayed(events=1, deliveries=0, already_pending=2)
    none = await store.replay(since=301.0, event_type=None, targets=to_ab, now=22.0)
    assert none == Replayed(events=0, deliveries=0)
    assert sorted((v.subscriber_id, v.event_id) for v in await everything(store)) == [
        ("a", "evt_2"),
        ("a", "evt_3"),
        ("b", "evt_2"),
        ("b", "evt_3"),
    ]
    assert all(v.next_attempt_at == 20.0 for v in await everything(store))


async def test_subscriber_health_round_trip(store: Store) -> None:
    failing = SubscriberHealth(failing_since=10.5)
    disabled = SubscriberHealth(failing_since=1.0, disabled_at=2.25, reason="HTTP 410 Gone ✓")
    await store.set_subscriber_health("a", failing)
    await store.set_subscriber_health("b", disabled)
    assert await store.subscriber_health() == {"a": failing, "b": disabled}
    # replaced as a whole, fields set to None included
    await store.set_subscriber_health("a", SubscriberHealth())
    await store.set_subscriber_health("b", SubscriberHealth(disabled_at=3.0))
    assert await store.subscriber_health() == {
        "a": SubscriberHealth(),
        "b": SubscriberHealth(disabled_at=3.0),
    }


async def test_a_health_write_that_keeps_a_disable_cannot_enable_again(store: Store) -> None:
    disabled = SubscriberHealth(
        failing_since=1.0, disabled_at=5.0, reason="disabled by an operator"
    )
    await store.set_subscriber_health("a", disabled)
    # a replica whose view predates the disable records a failure streak: the disable stays
    await store.set_subscriber_health(
        "a", SubscriberHealth(failing_since=2.0, reason="HTTP 500"), keep_disabled=True
    )
    assert await store.subscriber_health() == {
        "a": SubscriberHealth(failing_since=2.0, disabled_at=5.0, reason="disabled by an operator")
    }
    await store.set_subscriber_health("a", SubscriberHealth(), keep_disabled=True)  # recovered
    assert await store.subscriber_health() == {
        "a": SubscriberHealth(disabled_at=5.0, reason="disabled by an operator")
    }
    # a record not disabled is written as given, a disable included; a new one too
    await store.set_subscriber_health(
        "b", SubscriberHealth(failing_since=3.0, reason="HTTP 502"), keep_disabled=True
    )
    await store.set_subscriber_health(
        "b", SubscriberHealth(failing_since=3.0, disabled_at=9.0, reason="gone"), keep_disabled=True
    )
    assert (await store.subscriber_health())["b"] == SubscriberHealth(3.0, 9.0, "gone")
    # without it (an operator's enable), the record is replaced as a whole
    await store.set_subscriber_health("a", SubscriberHealth())
    assert (await store.subscriber_health())["a"] == SubscriberHealth()


async def test_nul_characters_in_answers_errors_and_reasons_are_recorded_as_u_fffd(
    store: Store,
) -> None:
    """PostgreSQL's text cannot hold NUL: both stores record U+FFFD in its place (and in
    place of a lone surrogate, which no text column can hold), instead of refusing the
    write (and with it every other attempt of its batch)."""
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"))
    claimed = await store.claim_due(now=10.0, limit=10, lease_s=60, subscribers=["a"])
    odd = Attempt(11.0, 500, 3.0, "HTTP 500: bad\x00byte \ud800", '{"x":"\x00\x00"}\x00')
    plain = attempt_at(11.0)
    outcomes = await asyncio.gather(
        store.finish_attempt(claimed[0], odd, DEAD), store.finish_attempt(claimed[1], plain, DEAD)
    )
    assert list(outcomes) == [True, True]
    views = {v.event_id: v for v in await everything(store)}
    [recorded] = views[claimed[0].event.id].history
    assert recorded == Attempt(
        11.0, 500, 3.0, "HTTP 500: bad\ufffdbyte \ufffd", '{"x":"\ufffd\ufffd"}\ufffd'
    )
    assert views[claimed[1].event.id].history == (plain,)
    health = SubscriberHealth(failing_since=1.0, disabled_at=2.0, reason="HTTP 410\x00 Gone")
    await store.set_subscriber_health("a", health)
    assert (await store.subscriber_health())["a"].reason == "HTTP 410\ufffd Gone"


async def test_event_data_holding_an_escaped_nul_comes_back_equal(store: Store) -> None:
    data = {"id": "r1", "note": "a\x00b", "\x00key": ["\x00", "\\u0000"]}
    given = Event("evt_nul", COMPLETED, "r1", 5.0, None, data)
    await store.commit_scan(ScanCommit([], [(given, ["a"])], now=5.0))
    assert await store.list_events() == [given]
    [claimed] = await store.claim_due(now=5.0, limit=1, lease_s=60, subscribers=["a"])
    assert claimed.event == given
