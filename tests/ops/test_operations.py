"""Each operation once, at the application layer, over a real store of each backend: what it
answers, what it changes, and the error that names what is wrong. The CLI, the admin API and
the dashboard only translate to and from these (their tests check that translation)."""

from __future__ import annotations

import pytest

from bridge.config import Settings, SubscriberConfig
from bridge.errors import ConflictError, GoneError, NotFoundError, RequestError
from bridge.models import (
    ALL_DELIVERIES,
    COMPLETED,
    CREATED,
    Attempt,
    DeliveryFilter,
    DeliveryState,
)
from bridge.ops.core import Operations
from bridge.sim.clock import FakeClock
from bridge.store.base import BASELINE_MARK, AttemptOutcome, ScanCommit, Store, SubscriberHealth
from tests.contract.conftest import DEAD, DONE, attempt, enqueue, event

SECRET = "whsec_avrGNOBpf7TV3HpNy8fj8INZlCzkZTIhXs73l4iaxUo="


def settings() -> Settings:
    def sub(sid: str, **extra: object) -> dict[str, object]:
        return {"id": sid, "url": f"https://{sid}.example/hook", "secret": SECRET, **extra}

    return Settings.model_validate(
        {
            "upstream": {"api_key": "k"},
            "subscribers": [
                sub("a", events=["denoise.*"]),
                sub("b", events=["denoise.completed"]),
                sub("paused", enabled=False),
            ],
        }
    )


class Live:
    """What the running dispatcher offers the operations, recorded."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.health_of: dict[str, SubscriberHealth] = {}
        self.wakes = 0
        self.changes: list[tuple[str, bool, str]] = []

    def health(self, subscriber_id: str) -> SubscriberHealth:
        return self.health_of.get(subscriber_id, SubscriberHealth())

    async def set_enabled(self, subscriber_id: str, enabled: bool, *, reason: str) -> None:
        self.changes.append((subscriber_id, enabled, reason))
        self.health_of[subscriber_id] = (
            SubscriberHealth() if enabled else SubscriberHealth(disabled_at=1.0, reason=reason)
        )

    def wake(self) -> None:
        self.wakes += 1


async def finish(store: Store, now: float, outcomes: dict[tuple[str, str], AttemptOutcome]) -> None:
    """Claim everything due and finish each (subscriber, event id) as `outcomes` says."""
    held = await store.claim_due(now=now, limit=100, lease_s=60, subscribers=["a", "b"])
    for d in held:
        outcome = outcomes.get((d.subscriber_id, d.event.id))
        if outcome is None:
            assert await store.release(d, now=now)
        else:
            code = 200 if outcome is DONE else 500
            assert await store.finish_attempt(d, attempt(now, code), outcome)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


async def test_subscribers_come_from_the_live_dispatcher_or_else_the_store(
    store: Store, clock: FakeClock
) -> None:
    await store.set_subscriber_health("b", SubscriberHealth(disabled_at=5.0, reason="410"))
    offline = Operations(settings(), store, clock=clock)
    states = {s["id"]: s["state"] for s in await offline.subscribers()}
    assert states == {"a": "active", "b": "disabled", "paused": "paused"}
    live = Live(store)
    online = Operations(settings(), store, clock=clock, live=live)
    assert {s["id"]: s["state"] for s in await online.subscribers()}["b"] == "active"
    assert (await online.subscriber("a"))["deliveries"]["pending"] == 0
    with pytest.raises(NotFoundError, match=r"no subscriber 'zz' \(known: a, b, paused\)"):
        await online.subscriber("zz")


async def test_enable_and_disable_change_the_store_or_the_dispatcher_once(
    store: Store, clock: FakeClock
) -> None:
    ops = Operations(settings(), store, clock=clock)
    shown = await ops.set_enabled("a", False, via="a test")
    assert (shown["state"], shown["disabled_reason"]) == ("disabled", "disabled through a test")
    first = (await store.subscriber_health())["a"]
    assert first.disabled_at == 1000.0
    await clock.advance(1000.0)
    await ops.set_enabled("a", False, via="again")  # already disabled: unchanged
    assert (await store.subscriber_health())["a"] == first
    assert (await ops.set_enabled("a", True, via="a test"))["state"] == "active"
    assert (await store.subscriber_health()).get("a", SubscriberHealth()).disabled_at is None
    with pytest.raises(ConflictError, match="paused in the configuration"):
        await ops.set_enabled("paused", True, via="a test")
    live = Live(store)
    through = Operations(settings(), store, clock=clock, live=live)
    await through.set_enabled("b", False, via="the dashboard")
    await through.set_enabled("b", False, via="the dashboard")
    assert live.changes == [("b", False, "disabled through the dashboard")]


async def test_send_test_answers_what_the_endpoint_said(store: Store, clock: FakeClock) -> None:
    sent: list[str] = []

    async def send(sub: SubscriberConfig) -> Attempt:
        sent.append(sub.id)
        return Attempt(1000.0, 204, 31.0, None, "")

    ops = Operations(settings(), store, clock=clock, send=send)
    answer = await ops.send_test("b")
    assert (answer["subscriber"], answer["ok"], answer["status_code"]) == ("b", True, 204)
    assert sent == ["b"]
    with pytest.raises(NotFoundError):
        await ops.send_test("zz")
    assert sent == ["b"]


async def test_events_pages_and_searches_by_record(store: Store, clock: FakeClock) -> None:
    await enqueue(store, 10.0, event(1, "r1", CREATED), event(2, "r2"), event(3, "r1"))
    ops = Operations(settings(), store, clock=clock)
    page = await ops.events(limit=2)
    assert [e["id"] for e in page["events"]] == ["evt_3", "evt_2"]
    assert page["next_before"] == "evt_2"
    rest = await ops.events(limit=2, before=page["next_before"])
    assert ([e["id"] for e in rest["events"]], rest["next_before"]) == (["evt_1"], None)
    found = await ops.events(record_id="r1")
    assert [(e["id"], e["record_id"]) for e in found["events"]] == [
        ("evt_3", "r1"),
        ("evt_1", "r1"),
    ]
    assert [e["id"] for e in (await ops.events(event_type=CREATED))["events"]] == ["evt_1"]
    with pytest.raises(NotFoundError, match="before: no stored event 'evt_9'"):
        await ops.events(before="evt_9")


async def test_deliveries_filter_and_one_delivery_has_its_attempts(
    store: Store, clock: FakeClock
) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2", CREATED), to=("a",))
    await finish(store, 20.0, {("a", "evt_1"): DONE, ("a", "evt_2"): DEAD})
    ops = Operations(settings(), store, clock=clock)
    page = await ops.deliveries(DeliveryFilter(state=DeliveryState.FAILED), limit=10)
    assert [(d["event_id"], d["state"]) for d in page["deliveries"]] == [("evt_2", "failed")]
    assert page["deliveries"][0]["last_attempt"]["status_code"] == 500
    assert "attempts" not in page["deliveries"][0]
    assert (await ops.deliveries(DeliveryFilter(record_id="r1")))["deliveries"][0]["event_id"] == (
        "evt_1"
    )
    one = await ops.delivery(page["deliveries"][0]["id"])
    assert [a["status_code"] for a in one["attempts"]] == [500]
    with pytest.raises(NotFoundError, match="no delivery 999"):
        await ops.delivery(999)


async def test_retry_one_sends_a_dead_letter_again_and_refuses_the_rest(
    store: Store, clock: FakeClock
) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"), to=("a",))
    await finish(store, 20.0, {("a", "evt_1"): DONE, ("a", "evt_2"): DEAD})
    live = Live(store)
    ops = Operations(settings(), store, clock=clock, live=live)
    ids = {d["event_id"]: d["id"] for d in (await ops.deliveries(ALL_DELIVERIES))["deliveries"]}
    answer = await ops.retry(ids["evt_2"])
    assert (answer["was"], answer["delivery"]["state"]) == ("failed", "pending")
    assert answer["delivery"]["next_attempt_at"] is not None
    assert live.wakes == 1
    with pytest.raises(ConflictError, match="was delivered; replay"):
        await ops.retry(ids["evt_1"])
    with pytest.raises(NotFoundError):
        await ops.retry(999)
    await enqueue(store, 40.0, event(3, "r3"), to=("gone",))  # a subscriber since removed
    [held] = await store.claim_due(now=40.0, limit=1, lease_s=60, subscribers=["gone"])
    assert await store.finish_attempt(held, attempt(40.0), DEAD)
    with pytest.raises(ConflictError, match="'gone', which is no longer configured"):
        await ops.retry(held.id)
    assert (await ops.delivery(held.id))["state"] == "failed"
    await store.reconcile_subscribers(["b"], now=30.0)  # `a` gone: its pending one orphaned
    with pytest.raises(ConflictError, match="orphaned"):
        await ops.retry(ids["evt_2"])
    assert live.wakes == 1


async def test_retry_failed_retries_the_matching_dead_letters_only(
    store: Store, clock: FakeClock
) -> None:
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"), event(3, "r3"), to=("a", "b"))
    await finish(
        store,
        20.0,
        {("a", "evt_1"): DEAD, ("a", "evt_2"): DEAD, ("b", "evt_1"): DEAD, ("a", "evt_3"): DONE},
    )
    live = Live(store)
    ops = Operations(settings(), store, clock=clock, live=live)
    assert await ops.retry_failed(DeliveryFilter(subscriber="a")) == {"retried": 2}
    assert live.wakes == 1
    states = {
        (d["subscriber"], d["event_id"]): d["state"]
        for d in (await ops.deliveries(ALL_DELIVERIES))["deliveries"]
    }
    assert states[("a", "evt_1")] == states[("a", "evt_2")] == "pending"
    assert (states[("b", "evt_1")], states[("a", "evt_3")]) == ("failed", "delivered")
    assert await ops.retry_failed(DeliveryFilter(subscriber="a")) == {"retried": 0}
    assert live.wakes == 1  # nothing retried: nothing to wake for
    with pytest.raises(RequestError, match="only failed deliveries are retried in bulk"):
        await ops.retry_failed(DeliveryFilter(state=DeliveryState.PENDING))
    with pytest.raises(NotFoundError, match="no subscriber 'zz'"):
        await ops.retry_failed(DeliveryFilter(subscriber="zz"))


async def test_replay_queues_stored_events_for_the_subscribers_they_match(
    store: Store, clock: FakeClock
) -> None:
    await enqueue(store, 10.0, event(1, "r1", CREATED, at=50.0), event(2, "r2", at=150.0), to=())
    live = Live(store)
    ops = Operations(settings(), store, clock=clock, live=live)
    everyone = await ops.replay(since=0.0)
    # a: both; b and paused (its deliveries wait for it): the completed one
    assert (everyone.events, everyone.deliveries) == (2, 4)
    assert live.wakes == 1
    only_b = await ops.replay(since=100.0, subscriber="b", event_type=COMPLETED)
    assert (only_b.events, only_b.deliveries, only_b.already_pending) == (1, 0, 1)
    assert (await ops.replay(since=0.0, subscriber="")).already_pending == 4  # "": everyone
    with pytest.raises(RequestError, match=r"type: unknown event type 'denoise\.done'"):
        await ops.replay(since=0.0, event_type="denoise.done")
    with pytest.raises(NotFoundError, match="no subscriber 'zz'"):
        await ops.replay(since=0.0, subscriber="zz")


async def test_status_reports_the_store_side(store: Store, clock: FakeClock) -> None:
    ops = Operations(settings(), store, clock=clock)
    empty = await ops.status()
    assert (empty["baseline_recorded"], empty["records_pending"]) == (False, 0)
    assert empty["outbox"] == {"pending": 0, "delivered": 0, "failed": 0, "orphaned": 0}
    await store.commit_scan(
        ScanCommit(
            [],
            [(event(1), ["a", "b"])],
            now=10.0,
            meta={BASELINE_MARK: "2026-01-01T00:00:00Z"},
        )
    )
    await finish(store, 20.0, {("a", "evt_1"): DONE})
    now = await ops.status()
    assert now["baseline_recorded"] is True
    assert now["outbox"] == {"pending": 1, "delivered": 1, "failed": 0, "orphaned": 0}
    assert [s["id"] for s in now["subscribers"]] == ["a", "b", "paused"]


async def test_feed_pages_in_store_order_and_refuses_a_cursor_past_retention(
    store: Store, clock: FakeClock
) -> None:
    await enqueue(store, 10.0, event(1), event(2), event(3), to=())
    ops = Operations(settings(), store, clock=clock)
    first = await ops.feed(after=None, limit=2)
    assert [e.id for _, e in first.events] == ["evt_1", "evt_2"]
    rest = await ops.feed(after=first.events[-1][0], limit=2)
    assert [e.id for _, e in rest.events] == ["evt_3"]
    gone = await store.purge(now=10.0 + 40 * 86400, retention_s=30 * 86400)
    assert gone > 0
    with pytest.raises(GoneError, match="older than the retained events"):
        await ops.feed(after=first.events[0][0], limit=2)
