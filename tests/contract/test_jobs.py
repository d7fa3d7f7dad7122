"""Gateway jobs: registering one (idempotent, queueing what a poll stored before), reading a
job and a client's jobs (newest first, paged, the record as last seen), callbacks, routing
of a scan's events to `job:<record id>` by the types the callback lists exactly, claims of
every job target (order, per-record order, leases, lost leases), reconcile and retry of
job targets, and retention of jobs."""

from __future__ import annotations

from collections.abc import Callable

from bridge.models import (
    COMPLETED,
    CREATED,
    DEAD_LETTERED,
    FAILED_EVENT,
    PROGRESS,
    SUCCESS,
    Attempt,
    Callback,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    Event,
    Job,
    Report,
)
from bridge.store.base import ALL_JOBS, ScanCommit, Store
from bridge.store.claims_common import LOST_ATTEMPT
from tests.contract.conftest import (
    DEAD,
    DONE,
    OpenStore,
    assert_counts,
    attempt,
    enqueue,
    everything,
    later,
    record,
)

LEASE_S = 60.0
DAY_S = 86400.0
R = 30 * DAY_S  # retention
TERMINAL = (COMPLETED, FAILED_EVENT)


def job(
    rid: str,
    client: str = "acme",
    at: float = 1.0,
    events: tuple[str, ...] | None = TERMINAL,
    *,
    record: dict[str, object] | None = None,
) -> Job:
    """The job of record `rid` submitted by `client` at `at`, its callback listing `events`
    (None: no callback)."""
    callback = (
        None
        if events is None
        else Callback(f"https://cb.example/{rid}", events, {"order": rid, "n": [1, 2]})
    )
    return Job(
        rid,
        client,
        at,
        callback_id=None if events is None else f"cb_{rid}",
        callback=callback,
        record={"id": rid, "status": "pending"} if record is None else record,
    )


def ev(rid: str, type_: str, n: int = 0, status: str = "pending") -> Event:
    return Event(f"evt_{rid}_{type_}_{n}", type_, rid, 100.0 + n, None, {"id": rid, "n": n})


async def job_deliveries(store: Store, rid: str) -> list[tuple[str, DeliveryState]]:
    """(event type, state) of every delivery to `job:<rid>`, oldest first."""
    views = await store.list_deliveries(where=DeliveryFilter(subscriber=f"job:{rid}"))
    return [(v.event_type, v.state) for v in reversed(views)]


async def claim(
    store: Store,
    now: float,
    limit: int = 10,
    on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
) -> list[Delivery]:
    return await store.claim_jobs(now=now, lease_s=LEASE_S, limit=limit, on_dead=on_dead)


# --- register, job, client_jobs, callbacks --------------------------------------------------


async def test_a_registered_job_reads_back_with_its_callback(store: Store) -> None:
    assert await store.job("r1") is None
    assert await store.register_job(job("r1"), now=1.0) == 0  # no event stored yet
    got = await store.job("r1")
    assert got == job("r1")
    assert got is not None and got.callback is not None
    assert got.callback.metadata == {"order": "r1", "n": [1, 2]}
    assert got.callback.events == TERMINAL and got.callback_id == "cb_r1"
    assert got.record == {"id": "r1", "status": "pending"}  # as submitted: nothing seen yet
    # without a callback: no callback id, no callback, and nothing for the dispatcher
    await store.register_job(job("r2", events=None), now=1.0)
    bare = await store.job("r2")
    assert bare == Job("r2", "acme", 1.0) and bare is not None and bare.callback is None
    assert await store.callbacks(["r1", "r2", "nope"]) == {
        "r1": ("acme", Callback("https://cb.example/r1", TERMINAL))
    }
    assert await store.callbacks([]) == {}


async def test_registering_again_changes_nothing(store: Store) -> None:
    await store.register_job(job("r1", at=5.0), now=5.0)
    other = job("r1", client="evil", at=9.0, events=(CREATED,), record={"id": "r1", "x": 1})
    assert await store.register_job(other, now=9.0) == 0
    got = await store.job("r1")
    assert got == job("r1", at=5.0) and got is not None
    assert got.record == {"id": "r1", "status": "pending"}
    assert await store.client_jobs("evil", limit=10) == []


async def test_a_clients_jobs_newest_first_in_pages_and_only_its_own(store: Store) -> None:
    # submitted at 1, 2, 3, 3, 4 (two at once: the greater record id first), and another's
    for rid, at in [("a1", 1.0), ("a2", 2.0), ("a3", 3.0), ("a4", 3.0), ("a5", 4.0)]:
        await store.register_job(job(rid, at=at), now=at)
    await store.register_job(job("b1", client="bolt", at=3.5), now=3.5)
    every = [j.record_id for j in await store.client_jobs("acme", limit=100)]
    assert every == ["a5", "a4", "a3", "a2", "a1"]
    pages: list[list[str]] = []
    before: str | None = None
    while True:
        page = await store.client_jobs("acme", limit=2, before=before)
        if not page:
            break
        pages.append([j.record_id for j in page])
        before = page[-1].record_id
    assert pages == [["a5", "a4"], ["a3", "a2"], ["a1"]]
    assert [j.record_id for j in await store.client_jobs("bolt", limit=10)] == ["b1"]
    # a cursor naming another client's job, or none: nothing
    assert await store.client_jobs("acme", limit=10, before="b1") == []
    assert await store.client_jobs("acme", limit=10, before="nope") == []
    assert await store.client_jobs("nobody", limit=10) == []
    [one] = await store.client_jobs("bolt", limit=10)
    assert one == job("b1", client="bolt", at=3.5)


async def test_the_record_as_last_seen_follows_the_newest_event(store: Store) -> None:
    await store.register_job(job("r1"), now=1.0)
    await store.register_job(job("r2"), now=1.0)

    async def seen(rid: str = "r1") -> object:
        got = await store.job(rid)
        assert got is not None
        [listed] = [j for j in await store.client_jobs("acme", limit=10) if j.record_id == rid]
        assert listed.record == got.record
        return got.record

    assert await seen() == {"id": "r1", "status": "pending"}
    created = Event("e1", CREATED, "r1", 10.0, None, {"id": "r1", "status": "pending", "v": 1})
    await store.commit_scan(ScanCommit([record("r1")], [(created, [])], now=10.0))
    assert await seen() == {"id": "r1", "status": "pending", "v": 1}
    # progress and the bridge's own events are not the record
    progress = Event("e2", PROGRESS, "r1", 11.0, None, {"id": "r1", "progress": 0.5})
    report = Event("e3", DEAD_LETTERED, "r1", 12.0, None, {"delivery": 1})
    await store.commit_scan(ScanCommit([], [(progress, []), (report, [])], now=12.0))
    assert await seen() == {"id": "r1", "status": "pending", "v": 1}
    done = Event("e4", COMPLETED, "r1", 13.0, "pending", {"id": "r1", "status": SUCCESS})
    await store.commit_scan(ScanCommit([record("r1", SUCCESS)], [(done, [])], now=13.0))
    assert await seen() == {"id": "r1", "status": SUCCESS}
    assert await seen("r2") == {"id": "r2", "status": "pending"}  # another record's: none


async def test_the_record_as_last_seen_is_the_last_of_a_commits_events(store: Store) -> None:
    await store.register_job(job("r1"), now=1.0)
    await store.register_job(job("r2", events=None), now=1.0)  # no callback: kept as well
    created = Event("e1", CREATED, "r1", 10.0, None, {"id": "r1", "status": "pending"})
    done = Event("e2", COMPLETED, "r1", 11.0, "pending", {"id": "r1", "status": SUCCESS})
    progress = Event("e3", PROGRESS, "r1", 12.0, None, {"id": "r1", "progress": 1.0})
    report = Event("e4", DEAD_LETTERED, "r1", 13.0, None, {"delivery": 1})
    other = Event("e5", CREATED, "r2", 14.0, None, {"id": "r2", "v": 2})
    await store.commit_scan(
        ScanCommit([], [(created, []), (done, []), (progress, []), (report, []), (other, [])], 20.0)
    )
    got = {j.record_id: j.record for j in await store.client_jobs("acme", limit=10)}
    assert got == {"r1": {"id": "r1", "status": SUCCESS}, "r2": {"id": "r2", "v": 2}}
    # an event stored before, given again, is not seen again
    await store.commit_scan(ScanCommit([], [(created, [])], now=30.0))
    found = await store.job("r1")
    assert found is not None and found.record == {"id": "r1", "status": SUCCESS}


# --- routing ---------------------------------------------------------------------------------


async def test_a_scan_routes_to_the_job_only_the_types_its_callback_lists(store: Store) -> None:
    await store.register_job(job("r1", events=(CREATED, COMPLETED)), now=1.0)
    await store.register_job(job("r2", events=(PROGRESS, FAILED_EVENT)), now=1.0)
    await store.register_job(job("r3", events=None), now=1.0)
    await store.register_job(job("r4", events=("denoise.*", "DENOISE.CREATED")), now=1.0)
    committed = await store.commit_scan(
        ScanCommit(
            [],
            [
                (ev("r1", CREATED), ["a"]),
                (ev("r1", PROGRESS), []),
                (ev("r2", CREATED), ["a"]),
                (ev("r2", PROGRESS, 1), []),
                (ev("r3", CREATED), ["a"]),
                (ev("r4", CREATED), ["a"]),
                (ev("r5", CREATED), ["a"]),  # no job
            ],
            now=20.0,
        )
    )
    assert committed.deliveries == 5 + 2
    assert await job_deliveries(store, "r1") == [(CREATED, DeliveryState.PENDING)]
    assert await job_deliveries(store, "r2") == [(PROGRESS, DeliveryState.PENDING)]
    for rid in ("r3", "r4", "r5"):  # no callback; no exact match; no job
        assert await job_deliveries(store, rid) == []
    # due with the others, at the commit's time
    views = await store.list_deliveries(where=DeliveryFilter(record_id="r1"))
    assert {v.subscriber_id: v.next_attempt_at for v in views} == {"a": 20.0, "job:r1": 20.0}
    await store.commit_scan(
        ScanCommit(
            [],
            [(ev("r1", COMPLETED, 2), ["a"]), (ev("r2", FAILED_EVENT, 2), [])],
            now=30.0,
        )
    )
    assert await job_deliveries(store, "r1") == [
        (CREATED, DeliveryState.PENDING),
        (COMPLETED, DeliveryState.PENDING),
    ]
    assert await job_deliveries(store, "r2") == [
        (PROGRESS, DeliveryState.PENDING),
        (FAILED_EVENT, DeliveryState.PENDING),
    ]
    # an event already stored is not queued again, for the job or anyone
    again = await store.commit_scan(ScanCommit([], [(ev("r1", CREATED), ["a", "b"])], now=40.0))
    assert again.deliveries == 0 and again.recorded == frozenset()
    assert len(await job_deliveries(store, "r1")) == 2
    await assert_counts(store, {DeliveryState.PENDING: 6 + 4})


async def test_a_target_the_scan_names_already_gets_one_delivery(store: Store) -> None:
    await store.register_job(job("r1"), now=1.0)
    await store.commit_scan(ScanCommit([], [(ev("r1", COMPLETED), ["job:r1", "a"])], now=2.0))
    assert await job_deliveries(store, "r1") == [(COMPLETED, DeliveryState.PENDING)]


async def test_registering_after_the_poll_stored_the_events_queues_them(store: Store) -> None:
    await store.commit_scan(
        ScanCommit(
            [record("r1")],
            [
                (ev("r1", CREATED), ["a"]),
                (ev("r1", PROGRESS, 1), []),
                (ev("r1", COMPLETED, 2), ["a"]),
                (ev("r2", COMPLETED), ["a"]),
            ],
            now=10.0,
        )
    )
    assert await store.register_job(job("r1", events=(COMPLETED, PROGRESS)), now=15.0) == 2
    assert await job_deliveries(store, "r1") == [
        (PROGRESS, DeliveryState.PENDING),
        (COMPLETED, DeliveryState.PENDING),
    ]
    views = await store.list_deliveries(where=DeliveryFilter(subscriber="job:r1"))
    assert {v.next_attempt_at for v in views} == {15.0}  # due at the registration
    # twice: nothing more
    assert await store.register_job(job("r1", events=(CREATED,)), now=16.0) == 0
    assert len(await job_deliveries(store, "r1")) == 2
    # later events go by the scan, once
    await store.commit_scan(ScanCommit([], [(ev("r1", COMPLETED, 2), ["a"])], now=17.0))
    assert len(await job_deliveries(store, "r1")) == 2
    # a job without a callback, or one listing none of the stored types: nothing queued
    assert await store.register_job(job("r2", events=None), now=18.0) == 0
    await store.commit_scan(ScanCommit([], [(ev("r3", COMPLETED), [])], now=19.0))
    assert await store.register_job(job("r3", events=(FAILED_EVENT,)), now=20.0) == 0
    assert await job_deliveries(store, "r2") == await job_deliveries(store, "r3") == []
    await assert_counts(store, {DeliveryState.PENDING: 3 + 2})


# --- claims ----------------------------------------------------------------------------------


async def test_claim_jobs_takes_every_job_target_oldest_due_first(store: Store) -> None:
    assert await store.next_job_due_at() is None
    assert await claim(store, 100.0) == []
    for rid in ("r1", "r2", "r3"):
        await store.register_job(job(rid), now=1.0)
    await store.commit_scan(ScanCommit([], [(ev("r2", COMPLETED), ["a"])], now=10.0))
    await store.commit_scan(ScanCommit([], [(ev("r1", COMPLETED), ["a"])], now=20.0))
    await store.commit_scan(ScanCommit([], [(ev("r3", FAILED_EVENT), [])], now=30.0))
    # subscribers' deliveries are not job targets, nor a subscriber named like one
    await enqueue(store, 5.0, ev("r9", COMPLETED), to=("jobs", "job", "job;x"))
    assert await store.next_job_due_at() == 10.0
    assert await claim(store, 9.0) == []
    assert await claim(store, 10.0, limit=0) == []
    got = await claim(store, 25.0)
    assert [(d.subscriber_id, d.event.id) for d in got] == [
        ("job:r2", "evt_r2_denoise.completed_0"),
        ("job:r1", "evt_r1_denoise.completed_0"),
    ]
    assert all(d.attempts == 0 and d.lease_token for d in got)
    assert got[0].event == ev("r2", COMPLETED) and got[0].event.data == {"id": "r2", "n": 0}
    # leased: not claimed again, due when the lease runs out (or later, for r3)
    assert await store.next_job_due_at() == 30.0  # r3 (r2 and r1 are leased until 85)
    assert [d.subscriber_id for d in await claim(store, 30.0)] == ["job:r3"]
    assert await claim(store, 31.0) == []
    assert await store.next_job_due_at() == 25.0 + LEASE_S
    assert await store.finish_attempt(got[0], attempt(40.0, 200), DONE)
    assert await store.finish_attempt(got[1], attempt(40.0), later(50.0))
    assert await store.next_job_due_at() == 50.0
    [again] = await claim(store, 50.0)
    assert (again.id, again.attempts) == (got[1].id, 1)
    # the subscribers' lanes never see a job target
    assert await store.claim_due(now=100.0, limit=10, lease_s=1, subscribers=["a"]) != []


async def test_claim_jobs_keeps_each_records_order_and_a_limit(store: Store) -> None:
    await store.register_job(job("r1", events=(CREATED, PROGRESS, COMPLETED)), now=1.0)
    await store.register_job(job("r2", events=(CREATED,)), now=1.0)
    await store.commit_scan(
        ScanCommit(
            [],
            [
                (ev("r1", CREATED), []),
                (ev("r1", PROGRESS, 1), []),
                (ev("r2", CREATED), []),
                (ev("r1", COMPLETED, 2), []),
            ],
            now=10.0,
        )
    )
    [first] = await claim(store, 10.0, limit=1)
    assert first.event.type == CREATED and first.subscriber_id == "job:r1"
    # r1's next waits for its first: only r2's goes
    [other] = await claim(store, 10.0)
    assert other.subscriber_id == "job:r2"
    assert await store.finish_attempt(first, attempt(11.0), later(20.0))
    assert await claim(store, 15.0) == []  # r1's first is due again at 20: the rest waits
    assert await store.next_job_due_at() == 20.0
    [retried] = await claim(store, 20.0)
    assert retried.id == first.id
    assert await store.finish_attempt(retried, attempt(21.0), DEAD)  # dead-lettered
    [progress] = await claim(store, 21.0)
    assert progress.event.type == PROGRESS
    assert await store.finish_attempt(progress, attempt(22.0, 200), DONE)
    [done] = await claim(store, 22.0)
    assert done.event.type == COMPLETED


async def test_a_lost_job_lease_counts_an_attempt_and_dead_letters_with_a_report(
    open_store: OpenStore,
) -> None:
    store = await open_store(max_attempts=2)
    await store.register_job(job("r1"), now=0.0)
    await store.commit_scan(ScanCommit([], [(ev("r1", COMPLETED), [])], now=0.0))
    asked: list[tuple[Delivery, Attempt]] = []

    def on_dead(delivery: Delivery, tried: Attempt) -> Report | None:
        asked.append((delivery, tried))
        return Report(
            Event(f"rpt_{delivery.id}", DEAD_LETTERED, f"delivery:{delivery.id}", 0.0, None, {}),
            ("ops",),
        )

    [first] = await claim(store, 0.0, on_dead=on_dead)
    [again] = await claim(store, LEASE_S, on_dead=on_dead)  # the lease ran out: one lost
    assert (again.id, again.attempts) == (first.id, 1) and asked == []
    assert not await store.finish_attempt(first, attempt(LEASE_S, 200), DONE)  # fenced
    assert await claim(store, 2 * LEASE_S, on_dead=on_dead) == []  # its last: dead
    assert [(d.id, t.error) for d, t in asked] == [(first.id, LOST_ATTEMPT)]
    [view] = await store.list_deliveries(where=DeliveryFilter(subscriber="job:r1"))
    assert (view.state, view.attempts) == (DeliveryState.FAILED, 2)
    assert [a.error for a in view.history] == [LOST_ATTEMPT, LOST_ATTEMPT]
    [report] = await store.list_deliveries(where=DeliveryFilter(subscriber="ops"))
    assert report.event_id == f"rpt_{first.id}"


# --- reconcile, retry ------------------------------------------------------------------------


async def test_reconcile_never_orphans_job_deliveries(store: Store) -> None:
    await store.register_job(job("r1"), now=1.0)
    await store.commit_scan(ScanCommit([], [(ev("r1", COMPLETED), ["gone"])], now=2.0))
    assert await store.reconcile_subscribers(["a"], now=3.0) == (1, 0)
    assert await job_deliveries(store, "r1") == [(COMPLETED, DeliveryState.PENDING)]
    assert await store.reconcile_subscribers([], now=4.0) == (0, 0)
    assert [d.subscriber_id for d in await claim(store, 5.0)] == ["job:r1"]


async def test_retry_failed_includes_job_targets_with_the_wildcard(store: Store) -> None:
    for rid in ("r1", "r2"):
        await store.register_job(job(rid), now=1.0)
        await store.commit_scan(ScanCommit([], [(ev(rid, COMPLETED), ["a"])], now=2.0))
    for d in await claim(store, 2.0):
        assert await store.finish_attempt(d, attempt(3.0), DEAD)
    for d in await store.claim_due(now=2.0, limit=10, lease_s=60, subscribers=["a"]):
        assert await store.finish_attempt(d, attempt(3.0), DEAD)
    assert await store.retry_failed(DeliveryFilter(), now=10.0, subscribers=["a"]) == 2
    assert await job_deliveries(store, "r1") == [(COMPLETED, DeliveryState.FAILED)]
    only_r1 = DeliveryFilter(record_id="r1")
    assert await store.retry_failed(only_r1, now=11.0, subscribers=[ALL_JOBS]) == 1
    assert await job_deliveries(store, "r1") == [(COMPLETED, DeliveryState.PENDING)]
    assert await job_deliveries(store, "r2") == [(COMPLETED, DeliveryState.FAILED)]
    assert await store.retry_failed(DeliveryFilter(), now=12.0, subscribers=["a", ALL_JOBS]) == 1
    assert await job_deliveries(store, "r2") == [(COMPLETED, DeliveryState.PENDING)]
    [view] = await store.list_deliveries(where=DeliveryFilter(subscriber="job:r2"))
    assert view.next_attempt_at == 12.0
    got = await claim(store, 12.0)
    assert sorted(d.subscriber_id for d in got) == ["job:r1", "job:r2"]
    assert all(d.schedule_from == 1 for d in got)


# --- retention -------------------------------------------------------------------------------


async def test_a_job_goes_twice_the_window_after_its_submission_once_its_deliveries_did(
    store: Store,
) -> None:
    await store.register_job(job("r1", at=0.0), now=0.0)  # its delivery will be delivered
    await store.register_job(job("r2", at=0.0), now=0.0)  # its delivery stays pending
    await store.register_job(job("r3", at=0.0, events=None), now=0.0)  # no callback
    await store.register_job(job("r4", at=R), now=R)  # recent
    await store.commit_scan(
        ScanCommit([], [(ev("r1", COMPLETED), []), (ev("r2", COMPLETED), [])], now=1.0)
    )
    [one] = [d for d in await claim(store, 1.0) if d.subscriber_id == "job:r1"]
    assert await store.finish_attempt(one, attempt(2.0, 200), DONE)
    # within twice the window: every job stays (the delivery and its event went at R + 2)
    assert await store.purge(now=2 * R, retention_s=R) == 2
    assert {j.record_id for j in await store.client_jobs("acme", limit=10)} == {
        "r1",
        "r2",
        "r3",
        "r4",
    }
    # past it: those with no delivery left go; a pending delivery keeps its job
    assert await store.purge(now=2 * R + 1.0, retention_s=R) == 2
    assert [j.record_id for j in await store.client_jobs("acme", limit=10)] == ["r4", "r2"]
    assert await store.purge(now=2 * R + 2.0, retention_s=R) == 0
    assert list(await store.callbacks(["r1", "r2", "r3"])) == ["r2"]
    # and the job targets' counters are kept right
    await assert_counts(store, {DeliveryState.PENDING: 1})
    assert len(await everything(store)) == 1


async def purge_all(store: Store, now: float) -> None:
    """Retention at `now` until nothing more is due."""
    while await store.purge(now=now, retention_s=R, batch=500) >= 500:
        pass


async def test_a_job_keeps_its_record_as_last_seen_once_retention_deleted_the_events(
    store: Store,
) -> None:
    await store.register_job(job("r1", at=0.0), now=0.0)
    await store.register_job(job("r2", at=0.0, events=None), now=0.0)  # no callback
    for rid in ("r1", "r2", "r3"):
        created = Event(f"c_{rid}", CREATED, rid, 1.0, None, {"id": rid, "status": "pending"})
        done = Event(f"d_{rid}", COMPLETED, rid, 2.0, "pending", {"id": rid, "status": SUCCESS})
        await store.commit_scan(ScanCommit([record(rid)], [(created, ["a"])], now=1.0))
        await store.commit_scan(ScanCommit([record(rid, SUCCESS)], [(done, ["a"])], now=2.0))
    progress = Event("p_r1", PROGRESS, "r1", 3.0, None, {"id": "r1", "progress": 1.0})
    await store.commit_scan(ScanCommit([], [(progress, [])], now=3.0))
    # registered after a poll stored its events: the newest of them
    await store.register_job(job("r3", at=3.0, events=None), now=3.0)
    while due := [
        *await claim(store, 3.0),
        *await store.claim_due(now=3.0, limit=10, lease_s=60, subscribers=["a"]),
    ]:  # every delivery delivered (a record's next one is claimed once its first went)
        for d in due:
            assert await store.finish_attempt(d, attempt(4.0, 200), DONE)
    finished = {rid: {"id": rid, "status": SUCCESS} for rid in ("r1", "r2", "r3")}

    async def records() -> dict[str, object]:
        listed: dict[str, object] = {
            j.record_id: j.record for j in await store.client_jobs("acme", limit=10)
        }
        for rid, seen in listed.items():
            got = await store.job(rid)
            assert got is not None and got.record == seen
        return listed

    assert await records() == finished
    # past the window: the deliveries and then the events went, the jobs stay as they were
    await purge_all(store, 1.5 * R)
    assert await store.list_events(limit=10) == []
    assert await everything(store) == []
    assert await records() == finished
    # twice the window after their submission: the jobs go too
    await purge_all(store, 2 * R + 10.0)
    assert await records() == {}
