"""The outbox worker: claim due deliveries from the store, POST them, record every attempt."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from urllib.parse import urlsplit

import aiohttp
import structlog

from bridge.clock import Clock, sleep_or_event
from bridge.config import DeliveryConfig, SubscriberConfig
from bridge.config_gateway import ClientConfig
from bridge.deliver import policy, reports
from bridge.deliver.ahead import Ahead
from bridge.deliver.callbacks import PARKED_S, Callbacks, Target
from bridge.deliver.formats import render, render_callback
from bridge.deliver.lanes import JOB_LANE, Lane, TokenBucket, callback_cap, lane_of
from bridge.deliver.persist import retried
from bridge.deliver.sender import post, post_to
from bridge.deliver.signing import Signer
from bridge.deliver.templates.body import body_for, why
from bridge.deliver.templates.sandbox import TemplateError
from bridge.errors import StoreError
from bridge.models import Attempt, Delivery, DeliveryState, Report
from bridge.redact import describe
from bridge.store.base import AttemptOutcome, GatewayStore, OutboxStore, SubscriberHealth

log = structlog.get_logger("bridge.deliver")

QUEUED_S = 10.0  # of a lease, for waiting in the queue ahead of the requests in flight
RECORDING_FACTOR = 2  # answered attempts waiting to be recorded, at most this x max_in_flight
SHUTDOWN_SLACK_S = 2.0  # after `timeout_s`, to record the outcome of the last requests
HEALTH_RETRY_S = 30.0  # between the tries of a health write (with a report) that failed


@dataclass(frozen=True, slots=True)
class Sent:
    """What one attempt did, as the dispatcher reports it to observers (the demo, metrics)."""

    delivery: Delivery
    attempt: Attempt
    state: DeliveryState


class Dispatcher:
    """Sends due deliveries, at most `max_in_flight` at once; durable retries are data:
    a failed attempt stores `next_attempt_at`, nothing waits in memory holding a delivery.
    """

    def __init__(
        self,
        store: OutboxStore,
        session: aiohttp.ClientSession,
        *,
        subscribers: Sequence[SubscriberConfig],
        config: DeliveryConfig,
        clock: Clock,
        rand: Callable[[], float] = random.random,
        on_sent: Callable[[Sent], None] | None = None,
        shared: bool = False,
        on_report: Callable[[Report], None] | None = None,
        jobs: GatewayStore | None = None,
        clients: Sequence[ClientConfig] = (),
    ) -> None:
        """`jobs` (the store, as the gateway's port) turns on the callbacks' lane: deliveries
        to `job:<record id>` targets, signed with the secret of their client in `clients`,
        at most `callback_cap(max_in_flight)` requests at once."""
        self._store = store
        self._callbacks = None if jobs is None else Callbacks(jobs, clients)
        self._session = session
        self._subs = {s.id: s for s in subscribers}
        self._signers = {
            s.id: Signer([s.secret, *s.previous_secrets] if s.secret else []) for s in subscribers
        }
        self._active = [s.id for s in subscribers if s.enabled]
        self._health: dict[str, SubscriberHealth] = {}
        self._config = config
        self._clock = clock
        self._rand = rand
        self._on_sent = on_sent
        # after a report on the bridge itself was handed to the store (the pull feed may
        # have a new event); the dispatcher wakes itself for the report's deliveries
        self._on_report = on_report
        # subscribers this dispatcher disabled by itself, with the health it gave them: a
        # write of that health carries the report (whichever write lands first stores it)
        self._disabled_here: dict[str, SubscriberHealth] = {}
        # longer than a wait in the queue ahead, a whole attempt and its recording, so no two
        # workers ever send the same delivery at once
        self.lease_s = config.timeout_s + max(5.0, config.timeout_s) + QUEUED_S
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()  # sending or recording
        self._sending = 0  # requests on the wire: what `max_in_flight` caps
        self._lanes = {
            s.id: Lane(s.id, s.max_concurrency, TokenBucket(s.rate_per_s)) for s in subscribers
        }
        # callback requests in flight per endpoint (scheme, host and port): one endpoint
        # takes at most `_per_endpoint` of the callbacks' lane, so a slow one leaves the
        # rest of the lane to the other jobs' callbacks
        self._endpoints: Counter[str] = Counter()
        self._per_endpoint = 1
        if jobs is not None:
            cap = callback_cap(config.max_in_flight)
            self._lanes[JOB_LANE] = Lane(JOB_LANE, cap, TokenBucket(None))
            self._per_endpoint = callback_cap(cap)
        self._turn = 0
        self._ahead = Ahead(
            store,
            self._lanes,
            lease_s=self.lease_s,
            timeout_s=config.timeout_s,
            budget=config.max_in_flight,
            on_ready=self._wake.set,
            now=clock.now,
            shared=shared,
            on_dead=self._dead_report,
            on_reports=self._claim_reported,
            jobs=jobs,
            on_jobs=None if self._callbacks is None else self._callbacks.prefetch,
        )
        self._ahead.blocked = self._endpoint_busy
        self._ahead.unresolved = self._unresolved
        # health writes carrying a disable's report that failed for good: tried again (one
        # per subscriber) until the report lands or the dispatcher stops
        self._health_retries: dict[str, asyncio.Task[None]] = {}

    async def load_health(self) -> None:
        """Read which endpoints the bridge disabled. A subscriber set to `enabled = false`
        is the operator's again: its stored disable is cleared, so `true` resumes it."""
        self._health = await self._store.subscriber_health()
        for sub in self._subs.values():
            health = self._health.get(sub.id)
            if not sub.enabled and health is not None and health != SubscriberHealth():
                self._health[sub.id] = SubscriberHealth()
                await self._store.set_subscriber_health(sub.id, SubscriberHealth())
        self._refresh_active()
        for sid in self._subs:
            if sid not in self._active and self._subs[sid].enabled:
                log.warning(
                    "subscriber stays disabled", subscriber=sid, reason=self._health[sid].reason
                )

    async def reload_health(self) -> None:
        """Read the health records again: another replica sharing the store (or an
        operator through it) enabled or disabled a subscriber, or recorded its failures."""
        stored = await self._store.subscriber_health()
        self._health = {sid: stored.get(sid, SubscriberHealth()) for sid in self._subs}
        before = set(self._active)
        self._refresh_active()
        if set(self._active) != before:
            log.info("subscriber states changed in the store", active=sorted(self._active))
        self.wake()

    def _refresh_active(self) -> None:
        self._active = [
            s.id
            for s in self._subs.values()
            if s.enabled and self._health.get(s.id, SubscriberHealth()).disabled_at is None
        ]

    @property
    def callbacks_enabled(self) -> bool:
        """Whether this dispatcher sends gateway callbacks (it was given the `jobs` store)."""
        return self._callbacks is not None

    @property
    def active(self) -> list[str]:
        """Subscribers whose deliveries are being sent."""
        return list(self._active)

    def health(self, subscriber_id: str) -> SubscriberHealth:
        return self._health.get(subscriber_id, SubscriberHealth())

    async def set_enabled(self, subscriber_id: str, enabled: bool, *, reason: str) -> None:
        """An operator's enable (clears the failure record, resumes sending) or disable
        (kept across restarts, deliveries stay queued)."""
        health = self.health(subscriber_id)
        self._disabled_here.pop(subscriber_id, None)  # an operator's change is not reported
        if enabled:
            updated = SubscriberHealth()
        else:
            updated = replace(health, disabled_at=self._clock.now(), reason=reason)
        self._health[subscriber_id] = updated
        await self._store.set_subscriber_health(subscriber_id, updated)
        self._refresh_active()
        log.warning(
            "subscriber enabled" if enabled else "subscriber disabled",
            subscriber=subscriber_id,
            reason=reason,
        )
        self.wake()

    def wake(self) -> None:
        """New deliveries may be due: look now instead of at the next planned time."""
        self._ahead.refresh()
        self._wake.set()

    async def drain_once(self) -> int:
        """Send everything due now (lanes, order and rate limits as in `run`), waiting for
        each round's outcomes, until nothing more can go at this instant. Returns how many."""
        total = 0
        self._ahead.refresh()
        while True:
            started, _ = await self._fill()
            total += started
            if not started and not self._ahead.claiming:
                return total
            await self._ahead.settle()
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to `max_in_flight` deliveries going until `stop` is set, then let the
        in-flight ones finish (each ends by its own `timeout_s`); the rest are released,
        due at the next start (a crash instead leaves them leased until the lease expires)."""
        relay = asyncio.create_task(self._wake_on(stop))
        try:
            while not stop.is_set():
                self._wake.clear()
                _, delay_s = await self._fill()  # store errors: `Ahead` retries them later
                if delay_s is None:
                    await self._wake.wait()  # a slot freed up, new work, or stop
                elif delay_s > 0.0:
                    await sleep_or_event(self._clock, delay_s, self._wake)
        finally:
            relay.cancel()
            await self._ahead.settle()
            await self._ahead.release(self._clock.now())
            await self._finish_inflight()
            await self.stop_health_retries()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _fill(self) -> tuple[int, float | None]:
        """Start queued deliveries lane by lane (taking turns, within each lane's concurrency
        and rate, and `max_in_flight` overall) and claim more in the background. Returns how
        many started and how long to wait before looking again (0: now, None: until a slot
        frees up, a claim lands or something wakes us)."""
        free = min(
            self._config.max_in_flight - self._sending,
            RECORDING_FACTOR * self._config.max_in_flight - len(self._inflight),
        )
        now = self._clock.now()
        active = self._active
        jobs = self._lanes.get(JOB_LANE)
        if jobs is not None:
            active = [*active, JOB_LANE]  # the callbacks take their turn like a subscriber
        if len(active) < len(self._lanes):  # disabled meanwhile: what it had claimed goes back
            paused = set(self._lanes).difference(active)
            idle = [sid for sid in paused if self._ahead.queued(sid)]
            if idle:
                await self._ahead.release(now, idle)
                now = self._clock.now()
        # slots subscribers leave free for the callbacks: those waiting to start (within
        # their cap), and always one while a client is configured (a callback claimed
        # while every other slot hangs on a subscriber still goes); unless the cap is all
        # of `max_in_flight`: then they simply take turns
        reserve = 0
        if jobs is not None and self._config.max_in_flight > jobs.max_concurrency:
            assert self._callbacks is not None
            ready = self._ahead.startable(JOB_LANE)  # not held back by a busy endpoint
            floor = 1 if self._callbacks.has_clients else 0
            waiting = max(floor, min(jobs.max_concurrency, jobs.in_flight + ready))
            reserve = max(0, waiting - jobs.in_flight)
        self._turn = (self._turn + 1) % max(1, len(active))
        order = active[self._turn :] + active[: self._turn]
        started, waits = 0, []
        for sid in order:
            lane = self._lanes[sid]
            if lane.bucket.rate_per_s is None and not self._ahead.queued(sid):
                continue  # nothing to start, and no token to wait for
            share = free if sid == JOB_LANE else free - reserve
            room = lane.room(now, share) if share > 0 else 0
            if room <= 0 and lane.in_flight < lane.max_concurrency and share > 0:
                waits.append(lane.bucket.wait_s(now))  # throttled, not busy
            for _ in range(room):
                delivery = self._ahead.pop(sid, now)
                if delivery is None:
                    break
                self._start(lane, delivery, now, self._endpoint(delivery))
                started += 1
                free -= 1
        self._ahead.claim(now, order)
        if self._ahead.claiming:  # its landing wakes us
            return started, None
        if self._ahead.dry and self._ahead.due_at is not None:
            waits.append(max(0.0, self._ahead.due_at - now))
        # else a finished request wakes us; a throttled lane or a dry one's due time may first
        return started, min(waits) if waits else None

    def _endpoint(self, delivery: Delivery) -> str | None:
        """A callback's endpoint (scheme, host and port; "" when it is not looked up yet
        or has no callback stored), None for a subscriber's delivery."""
        if self._callbacks is None or lane_of(delivery.subscriber_id) != JOB_LANE:
            return None
        url = self._callbacks.url(delivery.subscriber_id)
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if url else ""

    def _unresolved(self, delivery: Delivery) -> bool:
        """A callback whose callback is not looked up (yet, or its look-up failed)."""
        return (
            self._callbacks is not None
            and lane_of(delivery.subscriber_id) == JOB_LANE
            and not self._callbacks.known(delivery.subscriber_id)
        )

    def _endpoint_busy(self, delivery: Delivery) -> bool:
        """Held back: a callback whose endpoint has its share in flight, or whose endpoint
        is not known yet (it would count against no endpoint's share)."""
        if self._unresolved(delivery):
            return True
        endpoint = self._endpoint(delivery)
        return endpoint is not None and self._endpoints[endpoint] >= self._per_endpoint

    def _start(self, lane: Lane, delivery: Delivery, now: float, endpoint: str | None) -> None:
        lane.bucket.take(now)
        lane.in_flight += 1
        self._sending += 1
        if endpoint:
            self._endpoints[endpoint] += 1
        task = asyncio.create_task(self._deliver_in_lane(lane, delivery, endpoint))
        self._inflight.add(task)
        task.add_done_callback(self._task_done)

    async def _deliver_in_lane(
        self, lane: Lane, delivery: Delivery, endpoint: str | None = None
    ) -> None:
        """Send, then record. The lane's slot frees as soon as the response is in: the
        lease (and the order rule, which reads the stored state) keeps the delivery to this
        worker until its attempt is recorded, so recording never holds up the next request."""
        sending = True

        def sent() -> None:
            nonlocal sending
            if sending:
                sending = False
                lane.in_flight -= 1
                self._sending -= 1
                if endpoint:
                    self._endpoints[endpoint] -= 1
                    if self._endpoints[endpoint] <= 0:
                        del self._endpoints[endpoint]
                self._wake.set()

        try:
            await self._deliver(delivery, sent)
        except asyncio.CancelledError:
            # shutdown ran out of time: hand the delivery back, due at the next start
            released = await self._store.release(delivery, now=self._clock.now())
            if released:
                log.warning(
                    "delivery interrupted by shutdown, sent again at the next start",
                    event_id=delivery.event.id,
                    subscriber=delivery.subscriber_id,
                    attempt=delivery.attempts + 1,
                )
            raise
        finally:
            sent()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._ahead.refresh()  # a recorded attempt may let the record's next event go
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task crashed", exc_info=exc)

    async def _finish_inflight(self) -> None:
        """Every request in flight ends by its own `timeout_s`; the slack lets its outcome be
        recorded. Whatever is still running after that is released."""
        if not self._inflight:
            return
        log.info("waiting for deliveries in flight", count=len(self._inflight))
        timer = asyncio.ensure_future(self._clock.sleep(self._config.timeout_s + SHUTDOWN_SLACK_S))
        while self._inflight and not timer.done():
            await asyncio.wait({*self._inflight, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        pending = set(self._inflight)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _deliver(self, delivery: Delivery, sent: Callable[[], None]) -> None:
        """One attempt, whatever goes wrong in it (rendering, signing, posting, reading the
        answer: a failed attempt with its error), recorded against the retry schedule."""
        if lane_of(delivery.subscriber_id) == JOB_LANE:
            await self._deliver_job(delivery, sent)
            return
        sub = self._subs[delivery.subscriber_id]
        attempt_no = delivery.attempts + 1
        fields: dict[str, object] = {
            "event_id": delivery.event.id,
            "event_type": delivery.event.type,
            "subscriber": sub.id,
            "attempt": attempt_no,
        }
        if sub.id not in self._active:  # disabled (a 410, say) since its lane started it
            release = partial(self._store.release, delivery, now=self._clock.now())
            await retried(self._clock, release, what="hand a delivery back", **fields)
            return
        health_changed = False
        try:
            if sub.format == "template":  # rendered off the event loop, time-capped
                body = (await body_for(sub, delivery.event)).text
            else:
                body = render(delivery.event, sub.format)
        except Exception as exc:
            # a template's own error says all there is to say; anything else: the traceback
            trace = not isinstance(exc, TemplateError)
            log.error("cannot render the request body", error=why(exc), exc_info=trace, **fields)
            attempt = Attempt(self._clock.now(), None, 0.0, f"cannot render: {why(exc)}", "")
            retry_after_s = None  # nothing reached the endpoint: its health is unchanged
        else:
            attempt, retry_after_s = await self._post(sub, delivery.event.id, body)
            health_changed = self._note_answer(sub.id, attempt)  # before the lane goes on
        sent()
        outcome = policy.decide(
            attempt.status_code,
            attempts_done=attempt_no - delivery.schedule_from,  # the schedule may restart
            now=self._clock.now(),
            schedule_s=self._config.retry_schedule_s,
            jitter=self._config.jitter,
            rand=self._rand,
            retry_after_s=retry_after_s,
        )
        outcome, kept = await self._finish(delivery, attempt, outcome, url=sub.url, fields=fields)
        if health_changed:  # the latest state in memory, whichever answer changed it
            await self._store_health(sub)
        self._outcome(delivery, attempt, outcome, kept, fields, waits=sub.id not in self._active)

    async def _finish(
        self,
        delivery: Delivery,
        attempt: Attempt,
        outcome: AttemptOutcome,
        *,
        url: str,
        fields: dict[str, object],
    ) -> tuple[AttemptOutcome, bool | None]:
        """Record an attempt (a dead letter with its report, unless it is a report's own
        delivery); whether its lease still held (None: the store did not answer in time)."""
        if outcome.state is DeliveryState.FAILED:
            dead = reports.dead_lettered(
                delivery, attempt, url=url, subscribers=list(self._subs.values())
            )
            outcome = replace(outcome, report=dead)
        fields |= {"status_code": attempt.status_code, "latency_ms": round(attempt.latency_ms, 1)}
        kept = await retried(
            self._clock,
            lambda: self._store.finish_attempt(delivery, attempt, outcome),
            what="record an attempt (its lease running out gives the delivery out again)",
            **fields,
        )
        if kept and outcome.report is not None:
            self._reported(outcome.report)
        return outcome, kept

    def _outcome(
        self,
        delivery: Delivery,
        attempt: Attempt,
        outcome: AttemptOutcome,
        kept: bool | None,
        fields: dict[str, object],
        *,
        waits: bool = False,
    ) -> None:
        """The log line of a recorded attempt, and `on_sent`. `waits`: its subscriber is
        disabled, the delivery waits for it."""
        if kept is None:
            return
        if not kept:
            log.warning("delivery lease lost before the attempt was recorded", **fields)
        elif outcome.state is DeliveryState.DELIVERED:
            log.info("delivered", **fields)
        elif outcome.state is DeliveryState.FAILED:
            log.error("delivery failed for good (dead-lettered)", error=attempt.error, **fields)
        elif waits:  # this answer (a 410) or another disabled it
            log.warning(
                "delivery attempt failed; it waits while the subscriber is disabled",
                error=attempt.error,
                **fields,
            )
        else:
            retry_in = (outcome.next_attempt_at or 0) - self._clock.now()
            log.warning(
                "delivery attempt failed, will retry",
                error=attempt.error,
                retry_in_s=round(retry_in, 1),
                **fields,
            )
        if self._on_sent is not None and kept:
            self._on_sent(Sent(delivery, attempt, outcome.state))

    async def _deliver_job(self, delivery: Delivery, sent: Callable[[], None]) -> None:
        """One attempt of a gateway job's callback: like a subscriber's (timeouts, guard,
        schedule, Retry-After, dead letters and their report), but to the job's callback
        URL, the `standard` body plus the client's metadata, signed with the client's
        secret, and with no endpoint health: a 410 dead-letters this delivery at once."""
        assert self._callbacks is not None
        attempt_no = delivery.attempts + 1
        fields: dict[str, object] = {
            "event_id": delivery.event.id,
            "event_type": delivery.event.type,
            "subscriber": delivery.subscriber_id,
            "attempt": attempt_no,
        }
        try:
            target = await self._callbacks.target(delivery)
        except StoreError as exc:
            log.warning("cannot look the callback up; sent later", error=describe(exc), **fields)
            target = None
            park_s = 5.0
        else:
            park_s = PARKED_S
        if target is None:  # its client is gone (or the store did not say): it waits
            sent()
            release = partial(self._store.release, delivery, now=self._clock.now() + park_s)
            await retried(self._clock, release, what="hand a callback back", **fields)
            return
        fields["client"] = target.client.id
        attempt, retry_after_s = await self._post_callback(target, delivery)
        sent()
        if attempt.status_code == 410:  # gone: this delivery only, nothing is disabled
            outcome = AttemptOutcome(DeliveryState.FAILED)
        else:
            outcome = policy.decide(
                attempt.status_code,
                attempts_done=attempt_no - delivery.schedule_from,
                now=self._clock.now(),
                schedule_s=self._config.retry_schedule_s,
                jitter=self._config.jitter,
                rand=self._rand,
                retry_after_s=retry_after_s,
            )
        url = target.callback.url
        outcome, kept = await self._finish(delivery, attempt, outcome, url=url, fields=fields)
        self._outcome(delivery, attempt, outcome, kept, fields)

    async def _post_callback(
        self, target: Target, delivery: Delivery
    ) -> tuple[Attempt, float | None]:
        try:
            body = render_callback(delivery.event, target.callback.metadata)
        except Exception as exc:
            log.error(
                "cannot render the request body",
                exc_info=True,
                event_id=delivery.event.id,
                subscriber=delivery.subscriber_id,
            )
            error = f"cannot render: {describe(exc)}"
            return Attempt(self._clock.now(), None, 0.0, error, ""), None
        return await post_to(
            self._session,
            target.callback.url,
            target.signer,
            delivery.event.id,
            body,
            extra_headers={},
            target=delivery.subscriber_id,
            now=self._clock.now(),
            timeout_s=self._config.timeout_s,
        )

    async def _store_health(self, sub: SubscriberConfig) -> bool:
        """Store the subscriber's latest health in memory; while it is the disable this
        dispatcher made, with its report (the store keeps the report only when the write
        disables a subscriber it had enabled: once, whichever answer's write lands first).
        A write carrying the report that fails for good is tried again in the background
        until it lands (or the dispatcher stops): the report is not lost. Whether the write
        landed."""
        health = self.health(sub.id)
        report: Report | None = None
        if health.disabled_at is not None and self._disabled_here.get(sub.id) is not None:
            made = self._disabled_here[sub.id]
            if (made.disabled_at, made.reason) == (health.disabled_at, health.reason):
                report = reports.subscriber_disabled(sub, made, list(self._subs.values()))

        async def write() -> bool:
            # an operator's disable stored meanwhile (through another replica) is kept
            return bool(
                await self._store.set_subscriber_health(
                    sub.id, health, keep_disabled=True, report=report
                )
            )

        stored = await retried(
            self._clock, write, what="store a subscriber's health", subscriber=sub.id
        )
        if stored is None:
            if report is not None:
                self._retry_health(sub)
            return False
        if report is not None:
            self._disabled_here.pop(sub.id, None)
            if stored:  # the store kept it (not already there from another write)
                self._reported(report)
        return True

    def _retry_health(self, sub: SubscriberConfig) -> None:
        """Try the subscriber's health write (with its disable's report) again in the
        background, `HEALTH_RETRY_S` apart, until it lands or the dispatcher stops."""
        running = self._health_retries.get(sub.id)
        if running is not None and not running.done():
            return
        self._health_retries[sub.id] = asyncio.create_task(self._keep_storing_health(sub))

    async def _keep_storing_health(self, sub: SubscriberConfig) -> None:
        while sub.id in self._disabled_here:  # an operator's change, or a write, ends it
            await self._clock.sleep(HEALTH_RETRY_S)
            if sub.id not in self._disabled_here:
                return
            stored = await retried(
                self._clock,
                partial(self._write_disabled, sub),
                what="store a subscriber's health",
                subscriber=sub.id,
            )
            if stored is not None:
                return

    async def _write_disabled(self, sub: SubscriberConfig) -> bool:
        """One more try of the write `_store_health` gave up on; raises `StoreError` while
        the store refuses it."""
        health = self.health(sub.id)
        made = self._disabled_here.get(sub.id)
        report = None
        if made is not None and (made.disabled_at, made.reason) == (
            health.disabled_at,
            health.reason,
        ):
            report = reports.subscriber_disabled(sub, made, list(self._subs.values()))
        stored = bool(
            await self._store.set_subscriber_health(
                sub.id, health, keep_disabled=True, report=report
            )
        )
        if report is not None:
            self._disabled_here.pop(sub.id, None)
            if stored:
                self._reported(report)
        else:
            self._disabled_here.pop(sub.id, None)  # no longer the disable it made
        return stored

    async def stop_health_retries(self) -> None:
        """Stop the health writes still being tried again (the service is stopping)."""
        tasks = [task for task in self._health_retries.values() if not task.done()]
        self._health_retries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _dead_report(self, delivery: Delivery, attempt: Attempt) -> Report | None:
        """The report of `delivery` dead-lettered by a claim (its lease ran out with no
        outcome at its last attempt), as `reports.dead_lettered` makes it; pure (the store
        calls it in the claim's transaction). None for a `bridge.*` event's: no loops."""
        if self._callbacks is not None and lane_of(delivery.subscriber_id) == JOB_LANE:
            url = self._callbacks.url(delivery.subscriber_id)
            subscribers = list(self._subs.values())
            return reports.dead_lettered(delivery, attempt, url=url, subscribers=subscribers)
        sub = self._subs.get(delivery.subscriber_id)
        if sub is None:
            return None
        return reports.dead_lettered(
            delivery, attempt, url=sub.url, subscribers=list(self._subs.values())
        )

    def _claim_reported(self, made: Sequence[Report]) -> None:
        for report in made:
            self._reported(report)

    def _reported(self, report: Report) -> None:
        """A report went to the store: its deliveries may be due now, the feed has news."""
        log.info(
            "report on the bridge queued",
            event_id=report.event.id,
            event_type=report.event.type,
            targets=list(report.targets),
        )
        self.wake()
        if self._on_report is not None:
            self._on_report(report)

    def _note_answer(self, subscriber_id: str, attempt: Attempt) -> bool:
        """What an answer says of the endpoint, applied in memory at once, so a 410 disables
        it before its lane starts another request. True when there is a change to store."""
        health = self.health(subscriber_id)
        updated = policy.health_after(
            health,
            attempt.status_code,
            now=attempt.attempted_at,
            limit_s=self._config.disable_after_s,
        )
        if updated == health:
            return False  # the usual case: a success of a healthy endpoint
        self._health[subscriber_id] = updated
        if updated.disabled_at is not None and health.disabled_at is None:
            self._disabled_here[subscriber_id] = updated  # reported when it is stored
            self._refresh_active()
            log.error("subscriber disabled", subscriber=subscriber_id, reason=updated.reason)
        return True

    async def _post(
        self, sub: SubscriberConfig, msg_id: str, body: str
    ) -> tuple[Attempt, float | None]:
        return await post(
            self._session,
            sub,
            self._signers[sub.id],
            msg_id,
            body,
            now=self._clock.now(),
            timeout_s=self._config.timeout_s,
        )
