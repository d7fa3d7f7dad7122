"""Deliveries claimed ahead, on a real SQLite store: lanes run dry and wake, stale leases are
dropped and replaced, queued deliveries go back to the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.deliver.ahead import IDLE_WAIT_S, STORE_RETRY_S, Ahead
from bridge.deliver.lanes import Lane, TokenBucket
from bridge.models import DeliveryState, Event
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.store.base import ScanCommit, Store
from bridge.store.sqlite import SqliteStore
from tests.integration.helpers import settings_for

LEASE_S = 30.0
TIMEOUT_S = 15.0


def event(n: int) -> Event:
    rid = f"r{n}"
    return Event(f"evt_{n}", "denoise.completed", rid, float(n), "pending", {"id": rid})


async def queue_events(store: Store, numbers: range, sub: str = "a", now: float = 0.0) -> None:
    await store.commit_scan(ScanCommit([], [(event(n), [sub]) for n in numbers], now=now))


def ahead_for(store: SqliteStore, *lanes: Lane, budget: int = 100) -> tuple[Ahead, list[int]]:
    wakes: list[int] = []
    ahead = Ahead(
        store,
        {lane.subscriber_id: lane for lane in lanes},
        lease_s=LEASE_S,
        timeout_s=TIMEOUT_S,
        budget=budget,
        on_ready=lambda: wakes.append(1),
        now=lambda: 0.0,
    )
    return ahead, wakes


def claim_at(ahead: Ahead, now: float, order: list[str]) -> None:
    """Ask for a claim at `now` (the claim itself looks at the clock a few turns later)."""
    ahead._now = lambda: now
    ahead.claim(now, order)


def lane(sid: str = "a", concurrency: int = 2, rate: float | None = None) -> Lane:
    return Lane(sid, concurrency, TokenBucket(rate))


def drain(ahead: Ahead, sid: str, now: float) -> list[str]:
    got = []
    while (d := ahead.pop(sid, now)) is not None:
        got.append(d.event.id)
    return got


async def test_claims_one_lanes_worth_ahead_of_what_is_in_flight(store: SqliteStore) -> None:
    await queue_events(store, range(10))
    busy = lane(concurrency=3)
    busy.in_flight = 2
    ahead, wakes = ahead_for(store, busy)
    claim_at(ahead, 1.0, ["a"])
    assert ahead.claiming
    await ahead.settle()
    assert wakes == [1]  # the dispatcher is told the claim landed
    assert ahead.queued("a") == 4  # twice the concurrency, less what is in flight
    assert drain(ahead, "a", 1.0) == ["evt_0", "evt_1", "evt_2", "evt_3"]
    assert not ahead.dry


async def test_a_lane_found_empty_waits_for_a_refresh_or_its_next_due_time(
    store: SqliteStore,
) -> None:
    ahead, _ = ahead_for(store, lane())
    claim_at(ahead, 1.0, ["a"])
    await ahead.settle()
    assert ahead.dry and ahead.due_at == 1.0 + IDLE_WAIT_S  # nothing stored at all
    await queue_events(store, range(2), now=1.0)
    claim_at(ahead, 2.0, ["a"])
    assert not ahead.claiming  # dry: the store is not asked again
    ahead.refresh()  # e.g. the poller stored new events
    claim_at(ahead, 2.0, ["a"])
    await ahead.settle()
    assert drain(ahead, "a", 2.0) == ["evt_0", "evt_1"]


async def test_a_dry_lane_is_looked_at_again_when_its_next_delivery_falls_due(
    store: SqliteStore,
) -> None:
    await queue_events(store, range(1), now=50.0)  # due at 50
    ahead, _ = ahead_for(store, lane())
    claim_at(ahead, 10.0, ["a"])
    await ahead.settle()
    assert ahead.dry and ahead.due_at == 50.0
    claim_at(ahead, 49.0, ["a"])
    assert not ahead.claiming
    claim_at(ahead, 50.0, ["a"])
    await ahead.settle()
    assert drain(ahead, "a", 50.0) == ["evt_0"]


class HeldClaims(SqliteStore):
    """The real store; a claim's answer is held back until `resume` is set, so something
    can happen while it is on its way (the order is the test's, not the threads')."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.answered = asyncio.Event()
        self.resume = asyncio.Event()

    async def claim_lanes(self, **kwargs: Any) -> Any:
        claimed = await super().claim_lanes(**kwargs)
        self.answered.set()
        await self.resume.wait()
        return claimed


async def test_a_refresh_during_a_claim_is_not_lost(tmp_path: Path) -> None:
    store = HeldClaims(tmp_path / "b.db")
    await store.open()
    ahead, _ = ahead_for(store, lane())
    claim_at(ahead, 1.0, ["a"])
    await store.answered.wait()  # the claim found nothing and is on its way back
    await queue_events(store, range(1), now=1.0)
    ahead.refresh()  # arrives while the (empty) claim is on its way
    store.resume.set()
    await ahead.settle()
    assert not ahead.dry
    claim_at(ahead, 1.0, ["a"])
    await ahead.settle()
    assert drain(ahead, "a", 1.0) == ["evt_0"]
    await store.close()


async def test_only_the_lanes_found_empty_go_dry(store: SqliteStore) -> None:
    await queue_events(store, range(6), sub="b")
    ahead, _ = ahead_for(store, lane("a"), lane("b", concurrency=1))
    claim_at(ahead, 1.0, ["a", "b"])
    await ahead.settle()
    assert ahead.dry  # "a" has nothing
    assert drain(ahead, "b", 1.0) == ["evt_0", "evt_1"]
    claim_at(ahead, 1.0, ["a", "b"])  # "b" is still claimed for
    await ahead.settle()
    assert drain(ahead, "b", 1.0) == ["evt_2", "evt_3"]


async def test_a_throttled_lane_claims_no_more_than_it_may_send(store: SqliteStore) -> None:
    await queue_events(store, range(5))
    slack = lane(concurrency=4, rate=1.0)  # one token at a time
    ahead, _ = ahead_for(store, slack)
    claim_at(ahead, 1.0, ["a"])
    await ahead.settle()
    assert ahead.queued("a") == 1


async def test_the_budget_caps_what_all_lanes_hold(store: SqliteStore) -> None:
    await queue_events(store, range(4), sub="a")
    await queue_events(store, range(4, 8), sub="b")
    ahead, _ = ahead_for(store, lane("a", 4), lane("b", 4), budget=3)
    claim_at(ahead, 1.0, ["a", "b"])
    await ahead.settle()
    assert ahead.queued("a") + ahead.queued("b") == 3


async def test_a_lease_too_short_for_a_request_is_handed_back_and_given_out_again(
    store: SqliteStore,
) -> None:
    await queue_events(store, range(1))
    ahead, _ = ahead_for(store, lane())
    claim_at(ahead, 1.0, ["a"])
    await ahead.settle()
    # 15 s later the lease (30 s) could end before a 15 s request and its recording: it is
    # not started, and the next look hands it back to the store
    late = 1.0 + LEASE_S - TIMEOUT_S
    assert ahead.pop("a", late) is None
    claim_at(ahead, late, ["a"])
    await ahead.settle()
    [view] = await store.list_deliveries()
    assert view.state is DeliveryState.PENDING and view.next_attempt_at == late
    ahead.refresh()
    claim_at(ahead, late, ["a"])  # due at once, not when the old lease would have ended
    await ahead.settle()
    again = ahead.pop("a", late)
    assert again is not None and again.event.id == "evt_0"


async def test_a_delivery_given_out_again_replaces_its_stale_copy(store: SqliteStore) -> None:
    await queue_events(store, range(1))
    ahead, _ = ahead_for(store, lane())
    claim_at(ahead, 1.0, ["a"])
    await ahead.settle()
    ahead.refresh()
    claim_at(ahead, 1.0 + LEASE_S, ["a"])  # its lease ran out while it sat in the queue
    await ahead.settle()
    assert ahead.queued("a") == 1
    fresh = ahead.pop("a", 1.0 + LEASE_S)
    assert fresh is not None and ahead.pop("a", 1.0 + LEASE_S) is None
    assert await store.release(fresh, now=40.0)  # the copy kept holds the lease the store knows


async def test_release_hands_queued_deliveries_back_due_at_once(store: SqliteStore) -> None:
    await queue_events(store, range(3))
    ahead, _ = ahead_for(store, lane(concurrency=2))
    claim_at(ahead, 1.0, ["a"])
    await ahead.settle()
    assert ahead.queued("a") == 3
    assert await store.claim_due(now=2.0, limit=10, lease_s=5, subscribers=["a"]) == []
    await ahead.release(2.0)
    assert ahead.queued("a") == 0
    back = await store.claim_due(now=2.0, limit=10, lease_s=5, subscribers=["a"])
    assert sorted(d.event.id for d in back) == ["evt_0", "evt_1", "evt_2"]


async def test_a_store_error_is_logged_and_retried_later(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    await store.close()  # every query now fails with a StoreError
    ahead, wakes = ahead_for(store, lane())
    claim_at(ahead, 1.0, ["a"])
    await asyncio.wait_for(ahead.settle(), 5)
    assert wakes == [1] and ahead.dry and ahead.due_at == 6.0


async def test_a_store_error_after_a_due_time_passed_still_waits_before_trying_again(
    tmp_path: Path,
) -> None:
    """A lane dry until 50 whose claim at 50 fails waits `STORE_RETRY_S` from then: the
    past due time must not make every following look a new claim (a loop of failing claims
    as fast as the event loop turns, seen with the database file deleted under it)."""
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    await queue_events(store, range(1), now=50.0)
    ahead, _ = ahead_for(store, lane())
    claim_at(ahead, 10.0, ["a"])
    await ahead.settle()
    assert ahead.dry and ahead.due_at == 50.0
    await store.close()  # every query now fails with a StoreError
    claim_at(ahead, 50.0, ["a"])
    await asyncio.wait_for(ahead.settle(), 5)
    assert ahead.dry and ahead.due_at == 50.0 + STORE_RETRY_S
    claim_at(ahead, 51.0, ["a"])
    assert not ahead.claiming


async def test_stopping_the_dispatcher_hands_back_what_it_claimed_ahead(
    aiohttp_server: Callable[..., Any], tmp_path: Path, clock: FakeClock, secret: str
) -> None:
    first_arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        first_arrived.set()
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", slow)
    rx = await aiohttp_server(app)
    settings = settings_for(
        "http://127.0.0.1:9",
        str(rx.make_url("/hook")),
        secret,
        tmp_path / "b.db",
        subscriber={"max_concurrency": 1},
    )
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc.store, range(3), sub="rx", now=clock.now())
        stop = asyncio.Event()
        run = asyncio.create_task(svc.dispatcher.run(stop))
        await asyncio.wait_for(first_arrived.wait(), 5)
        stop.set()
        release.set()
        await asyncio.wait_for(run, 5)
        # the one sent is recorded; the one claimed ahead of it is due again at once
        views = {v.event_id: v.state for v in await svc.store.list_deliveries()}
        assert views == {
            "evt_0": DeliveryState.DELIVERED,
            "evt_1": DeliveryState.PENDING,
            "evt_2": DeliveryState.PENDING,
        }
        back = await svc.store.claim_due(now=clock.now(), limit=5, lease_s=5, subscribers=["rx"])
        assert sorted(d.event.id for d in back) == ["evt_1", "evt_2"]


async def test_a_claim_looks_a_few_turns_later_so_it_sees_what_changed_meanwhile(
    store: SqliteStore,
) -> None:
    await queue_events(store, range(10))
    busy = lane(concurrency=3)
    ahead, _ = ahead_for(store, busy)
    claim_at(ahead, 1.0, ["a"])  # asked for with nothing in flight: room for 6
    await asyncio.sleep(0)
    busy.in_flight = 3  # requests started a turn later, before it looked
    await ahead.settle()
    assert ahead.queued("a") == 3
