"""Deliveries claimed ahead of their turn, so a claim's round trip to the store never holds
up the next request: while a lane's requests are in flight, up to one lane's worth more
waits, leased, behind them, and the next claim runs in the background."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog

from bridge.deliver.lanes import JOB_LANE, Lane, lane_of
from bridge.errors import StoreError
from bridge.models import Attempt, Delivery, Report
from bridge.redact import describe
from bridge.store.base import GatewayStore, OutboxStore

log = structlog.get_logger("bridge.deliver")

IDLE_WAIT_S = 60.0
RECORD_S = 6.0  # time to record an attempt, waiting for the store's lock included
STORE_RETRY_S = 5.0
GATHER_TURNS = 3  # turns of the event loop a claim waits, so that it grows
# a shared store (replicas): a lane left short may be at its cap because of another
# replica's leases, which end with no wake-up here; look again this soon
SHARED_RECHECK_S = 0.25
# and with nothing due, it looks this often even without a wake-up (a missed NOTIFY, say)
SHARED_IDLE_WAIT_S = 5.0
# a queued callback held back by its busy endpoint beyond the lane's cap of such, or whose
# callback could not be looked up, is handed back due this much later: the claims move on
# to other endpoints' callbacks meanwhile, and it is not claimed again at once
HELD_BACK_S = 5.0


class Ahead:
    """Per-lane queues of leased deliveries and the one claim that may be running.

    A lane whose claim found less than it asked for is *dry*: it is not claimed for again
    until something may have changed (`refresh`: a new event, an attempt recorded, an
    operator's action) or its next stored delivery falls due (`due_at`). A queued delivery
    whose lease could run out before its request ends is dropped: the store gives it out
    again (and a delivery given out again replaces its stale copy in the queue)."""

    def __init__(
        self,
        store: OutboxStore,
        lanes: dict[str, Lane],
        *,
        lease_s: float,
        timeout_s: float,
        budget: int,
        on_ready: Callable[[], None],
        now: Callable[[], float],
        shared: bool = False,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
        on_reports: Callable[[Sequence[Report]], None] | None = None,
        jobs: GatewayStore | None = None,
        on_jobs: Callable[[Sequence[Delivery]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        # the callbacks' lane (`JOB_LANE`, when in `lanes`) claims with `jobs.claim_jobs`;
        # `on_jobs` hears of each batch it claimed (to look their callbacks up at once)
        self._jobs = jobs
        self._on_jobs = on_jobs
        # a queued callback whose endpoint has its share of the lane in flight waits; the
        # others behind it go first (set by the dispatcher)
        self.blocked: Callable[[Delivery], bool] = lambda _delivery: False
        # a queued callback whose callback is not known (its look-up failed) is handed back
        # (due `HELD_BACK_S` later) rather than held: it is looked up again when claimed again
        self.unresolved: Callable[[Delivery], bool] = lambda _delivery: False
        # a claim that dead-letters a delivery (its lease ran out with no outcome, its last
        # attempt) stores `on_dead`'s report of it; `on_reports` hears of those a claim stored
        self._on_dead = on_dead
        self._on_reports = on_reports
        # other processes claim from the same store: each lane's max_concurrency is a cap
        # on its leases across all of them, and a short lane looks again soon
        self._shared = shared
        self._now = now
        self._lanes = lanes
        self._lease_s = lease_s
        # a request may start while its lease still covers it and its recording
        self._usable_s = lease_s - timeout_s - RECORD_S
        self._budget = budget
        self._on_ready = on_ready
        self._queues: dict[str, deque[tuple[Delivery, float]]] = {sid: deque() for sid in lanes}
        self._queued_ids: set[int] = set()
        # dropped from a queue, still leased: handed back, due when given (None: at once)
        self._stale: list[tuple[Delivery, float | None]] = []
        self._claim: asyncio.Task[None] | None = None
        self._handing_back: asyncio.Task[None] | None = None
        self._dry: set[str] = set()
        self._changes = 0  # refreshes so far: a claim that raced one does not leave it dry
        self.due_at: float | None = None  # when dry: when to look again

    @property
    def claiming(self) -> bool:
        return self._claim is not None and not self._claim.done()

    @property
    def dry(self) -> bool:
        """Some lane is waiting for `due_at` or a `refresh`."""
        return bool(self._dry)

    def queued(self, sid: str) -> int:
        return len(self._queues[sid])

    def refresh(self) -> None:
        """The store may hold new due deliveries: the next `claim` looks."""
        self._dry.clear()
        self._changes += 1

    def pop(self, sid: str, now: float) -> Delivery | None:
        """The lane's next delivery, if one waits whose lease still covers a whole request
        (in the callbacks' lane: the first one `blocked` does not hold back)."""
        queue = self._queues[sid]
        held: list[tuple[Delivery, float]] = []
        found = None
        while queue:
            delivery, claimed_at = queue.popleft()
            if now - claimed_at > self._usable_s:
                self._queued_ids.discard(delivery.id)
                self._stale.append((delivery, None))
            elif sid == JOB_LANE and self.blocked(delivery):
                held.append((delivery, claimed_at))
            else:
                self._queued_ids.discard(delivery.id)
                found = delivery
                break
        queue.extendleft(reversed(held))
        return found

    def startable(self, sid: str) -> int:
        """Queued deliveries of the lane that `blocked` does not hold back."""
        if sid != JOB_LANE:
            return len(self._queues[sid])
        return sum(1 for delivery, _ in self._queues[sid] if not self.blocked(delivery))

    def _park(self, now: float) -> None:
        """Keep at most the lane's `max_concurrency` callbacks that `blocked` holds back
        queued (the first ones: they go as soon as their endpoint frees); hand the others,
        and those `unresolved`, back due `HELD_BACK_S` later. Held ones take none of the claims'
        budget, and a hanging endpoint's oldest callbacks, handed back, let the claims reach
        the other endpoints' ones without claiming those again at once."""
        queue = self._queues.get(JOB_LANE)
        if not queue:
            return
        held = self._lanes[JOB_LANE].max_concurrency
        kept: deque[tuple[Delivery, float]] = deque()
        for item in queue:
            delivery = item[0]
            if self.unresolved(delivery) or (self.blocked(delivery) and (held := held - 1) < 0):
                self._queued_ids.discard(delivery.id)
                self._stale.append((delivery, now + HELD_BACK_S))
            else:
                kept.append(item)
        if len(kept) < len(queue):
            self._queues[JOB_LANE] = kept

    def claim(self, now: float, order: Sequence[str]) -> None:
        """Start a claim in the background for the lanes (in `order`) running short. It looks
        a few turns of the event loop later, so the answers arriving meanwhile share it."""
        self._park(now)
        if self._stale and (self._handing_back is None or self._handing_back.done()):
            stale, self._stale = self._stale, []
            self._handing_back = asyncio.create_task(self._hand_back(stale))
        if self.claiming:
            return
        if self._dry and self.due_at is not None and now >= self.due_at:
            self._dry.clear()
        if self._rooms(now, order):
            self._claim = asyncio.create_task(self._run_claim(order))

    def _rooms(self, now: float, order: Sequence[str]) -> list[tuple[str, int]]:
        # held-back callbacks (at most the lane's cap of them, `_park`) use none of it
        budget = self._budget - sum(self.startable(sid) for sid in self._queues)
        rooms: list[tuple[str, int]] = []
        for sid in order:
            lane, queued = self._lanes[sid], self.startable(sid)
            if queued > lane.max_concurrency // 2 or sid in self._dry:
                continue
            want = min(
                2 * lane.max_concurrency - lane.in_flight - queued,
                lane.bucket.available(now) - queued,
                budget,
            )
            if want > 0:
                rooms.append((sid, want))
                budget -= want
        return rooms

    async def _run_claim(self, order: Sequence[str]) -> None:
        for _ in range(GATHER_TURNS):
            await asyncio.sleep(0)
        now = self._now()
        rooms = self._rooms(now, order)
        if not rooms:
            self._on_ready()
            return
        changes = self._changes
        try:
            caps = (
                {sid: self._lanes[sid].max_concurrency for sid, _ in rooms}
                if self._shared
                else None
            )
            made: dict[str, Report] = {}  # by event id: a claim run again asks again
            on_dead = self._on_dead

            def reporting(delivery: Delivery, attempt: Attempt) -> Report | None:
                assert on_dead is not None
                report = on_dead(delivery, attempt)
                if report is not None:
                    made[report.event.id] = report
                return report

            sub_rooms = [(sid, want) for sid, want in rooms if sid != JOB_LANE]
            job_room = sum(want for sid, want in rooms if sid == JOB_LANE)
            claimed: list[Delivery] = []
            if sub_rooms:
                claimed = await self._store.claim_lanes(
                    now=now,
                    lease_s=self._lease_s,
                    rooms=sub_rooms,
                    caps=None if caps is None else {s: caps[s] for s, _ in sub_rooms},
                    on_dead=None if on_dead is None else reporting,
                )
            if made and self._on_reports is not None:  # stored with the claim
                self._on_reports(list(made.values()))
            reported = set(made)
            got = dict.fromkeys((sid for sid, _ in rooms), 0)
            self._queue(claimed, now, got)
            if job_room and self._jobs is not None:
                jobs = await self._jobs.claim_jobs(
                    now=now,
                    lease_s=self._lease_s,
                    limit=job_room,
                    on_dead=None if on_dead is None else reporting,
                )
                if made and self._on_reports is not None:
                    self._on_reports([r for r in made.values() if r.event.id not in reported])
                try:  # looked up before they can start: their endpoint's cap applies
                    if jobs and self._on_jobs is not None:
                        await self._on_jobs(jobs)
                finally:  # leased: queued whatever happened (`_park` hands unknown ones back)
                    self._queue(jobs, now, got)
            short = [sid for sid, want in rooms if got[sid] < want]
            if short and changes == self._changes:
                due = await self._next_due([*self._dry, *short])
                if changes == self._changes:
                    self._dry.update(short)
                    self.due_at = self._look_again(now, due)
        except Exception as exc:  # a store error, or anything unforeseen: try again later
            unforeseen = not isinstance(exc, StoreError)  # a bug: its traceback helps
            log.error(
                "cannot claim deliveries, will try again", error=describe(exc), exc_info=unforeseen
            )
            self._dry.update(sid for sid, _ in rooms)
            retry_at = now + STORE_RETRY_S
            # a due time already passed is what led here: it must not make the next look
            # claim again at once
            keep = self.due_at is not None and now < self.due_at < retry_at
            self.due_at = self.due_at if keep else retry_at
        finally:
            self._on_ready()

    def _queue(self, claimed: Sequence[Delivery], now: float, got: dict[str, int]) -> None:
        for delivery in claimed:
            lane = lane_of(delivery.subscriber_id)
            queue = self._queues[lane]
            if delivery.id in self._queued_ids:
                # its old lease ran out while it waited: the new one holds
                self._queues[lane] = queue = deque(
                    item for item in queue if item[0].id != delivery.id
                )
            queue.append((delivery, now))
            self._queued_ids.add(delivery.id)
            got[lane] = got.get(lane, 0) + 1

    async def _next_due(self, lanes: Sequence[str]) -> float | None:
        """When the earliest stored delivery of `lanes` falls due (the callbacks' lane: the
        earliest `job:` delivery's)."""
        subs = [sid for sid in dict.fromkeys(lanes) if sid != JOB_LANE]
        times = []
        if subs:
            times.append(await self._store.next_due_at(subs))
        if JOB_LANE in lanes and self._jobs is not None:
            times.append(await self._jobs.next_job_due_at())
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def _look_again(self, now: float, due: float | None) -> float:
        """When a lane left short looks again: when its next delivery falls due; with a
        shared store also soon (another replica's leases may hold its cap) and at least
        every `SHARED_IDLE_WAIT_S` (a wake-up may have been missed)."""
        if not self._shared:
            return now + IDLE_WAIT_S if due is None else max(now, due)
        latest = now + SHARED_IDLE_WAIT_S
        return latest if due is None else min(latest, max(now + SHARED_RECHECK_S, due))

    async def _hand_back(self, stale: list[tuple[Delivery, float | None]]) -> None:
        """Release deliveries whose lease got too short to send them (due again now) or
        that were parked (due when given)."""
        for delivery, due in stale:
            try:
                now = self._now()
                await self._store.release(delivery, now=now if due is None else max(now, due))
            except Exception as exc:  # the lease runs out on its own
                log.warning(
                    "cannot hand a delivery back",
                    error=describe(exc),
                    exc_info=not isinstance(exc, StoreError),  # a bug: its traceback helps
                )
        self._on_ready()

    async def settle(self) -> None:
        """Wait for the running claim, if any, to land (and deliveries handed back)."""
        for task in (self._claim, self._handing_back):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)

    async def release(self, now: float, sids: Sequence[str] | None = None) -> None:
        """Hand queued deliveries back to the store, due now (all lanes, or `sids`); all
        lanes: those waiting to be handed back too."""
        if sids is None and self._stale:
            stale, self._stale = self._stale, []
            await self._hand_back(stale)
        for sid in self._queues if sids is None else sids:
            queue = self._queues[sid]
            while queue:
                delivery, _ = queue.popleft()
                self._queued_ids.discard(delivery.id)
                try:
                    await self._store.release(delivery, now=now)
                except StoreError as exc:  # their leases run out on their own
                    log.warning("cannot hand deliveries back", error=describe(exc))
                    self._queued_ids.difference_update(d.id for d, _ in queue)
                    queue.clear()  # this lane's others too; the next lane may fare better
