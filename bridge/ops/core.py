"""The operator's operations, once: the admin API, the dashboard and the commands call these
and only these. Each answers the JSON shapes of `views` or raises a `RequestError` (400),
`NotFoundError` (404), `ConflictError` (409) or `GoneError` (410) that says what is wrong."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

import structlog

from bridge.clock import Clock
from bridge.config import Settings, SubscriberConfig
from bridge.deliver.routing import route_stored
from bridge.deliver.sendtest import send_test
from bridge.errors import ConflictError, GoneError, NotFoundError, RequestError
from bridge.models import (
    EVENT_TYPES,
    JOB_TARGET,
    Attempt,
    DeliveryFilter,
    DeliveryState,
    Replayed,
    iso_utc,
)
from bridge.ops import views
from bridge.ops.feed import encode
from bridge.store.base import ALL_JOBS, LAST_POLL, FeedPage, Store, SubscriberHealth, meta_key

log = structlog.get_logger("bridge.ops")

SendTest = Callable[[SubscriberConfig], Awaitable[Attempt]]


class Live(Protocol):
    """The running dispatcher, when there is one: its view of the subscribers' health, the
    way to change it (in memory and in the store) and its wake-up."""

    def health(self, subscriber_id: str) -> SubscriberHealth: ...

    async def set_enabled(self, subscriber_id: str, enabled: bool, *, reason: str) -> None: ...

    def wake(self) -> None: ...


class Operations:
    """What operators do, over an opened store. `live`: the running dispatcher (a command
    without one reads and writes the store only; a running bridge sees the change at its
    next look, within a minute)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Clock,
        live: Live | None = None,
        send: SendTest | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._live = live
        self._send = send or (lambda sub: send_test(sub, settings.delivery))

    # --- subscribers --------------------------------------------------------------------

    def subscriber_config(self, sid: str) -> SubscriberConfig:
        sub = next((s for s in self.settings.subscribers if s.id == sid), None)
        if sub is None:
            known = ", ".join(s.id for s in self.settings.subscribers) or "none"
            raise NotFoundError(f"subscriber: no subscriber {sid!r} (known: {known})")
        return sub

    async def _health(self) -> dict[str, SubscriberHealth]:
        if self._live is not None:
            live = self._live
            return {s.id: live.health(s.id) for s in self.settings.subscribers}
        return await self.store.subscriber_health()

    async def subscribers(self) -> list[dict[str, Any]]:
        """Every configured subscriber with its state and delivery counts."""
        health, counts = await self._health(), await self.store.counts_by_subscriber()
        return [
            views.subscriber(s, health.get(s.id, SubscriberHealth()), counts.get(s.id))
            for s in self.settings.subscribers
        ]

    async def subscriber(self, sid: str) -> dict[str, Any]:
        sub = self.subscriber_config(sid)
        health = (await self._health()).get(sid, SubscriberHealth())
        counts = (await self.store.counts_by_subscriber()).get(sid)
        return views.subscriber(sub, health, counts)

    async def set_enabled(self, sid: str, enabled: bool, *, via: str) -> dict[str, Any]:
        """Enable (clears the failure record, resumes sending) or disable (kept across
        restarts, deliveries stay queued). Doing what is already done changes nothing."""
        sub = self.subscriber_config(sid)
        if enabled and not sub.enabled:
            raise ConflictError(
                f"subscriber {sid!r} is paused in the configuration (enabled = false); "
                "set enabled = true and restart"
            )
        health = (await self._health()).get(sid, SubscriberHealth())
        if (health.disabled_at is None) != enabled:
            reason = f"{'enabled' if enabled else 'disabled'} through {via}"
            if self._live is not None:
                await self._live.set_enabled(sid, enabled, reason=reason)
            else:
                updated = (
                    SubscriberHealth()
                    if enabled
                    else replace(health, disabled_at=self._clock.now(), reason=reason)
                )
                await self.store.set_subscriber_health(sid, updated)
                log.warning("subscriber " + ("enabled" if enabled else "disabled"), subscriber=sid)
        return await self.subscriber(sid)

    async def send_test(self, sid: str) -> dict[str, Any]:
        """One `bridge.test` event to the subscriber now: its answer."""
        sub = self.subscriber_config(sid)
        attempt = await self._send(sub)
        ok = attempt.status_code is not None and 200 <= attempt.status_code < 300
        return {"subscriber": sub.id, "ok": ok, **views.attempt(attempt)}

    # --- events and deliveries ----------------------------------------------------------

    async def events(
        self,
        *,
        event_type: str | None = None,
        limit: int = 100,
        before: str | None = None,
        record_id: str | None = None,
    ) -> dict[str, Any]:
        """Stored events, newest first, a page at a time (`next_before`)."""
        found = await self.store.list_events(
            event_type=event_type, limit=limit, before=before, record_id=record_id
        )
        if found is None:
            raise NotFoundError(f"before: no stored event {before!r}")
        return {
            "events": [views.event(e) for e in found],
            "next_before": found[-1].id if len(found) == limit else None,
        }

    async def deliveries(
        self,
        where: DeliveryFilter,
        *,
        limit: int = 100,
        before: int | None = None,
        with_attempts: bool = False,
    ) -> dict[str, Any]:
        """Deliveries `where` matches, newest first, with their last attempt (or all)."""
        found = await self.store.list_deliveries(where=where, limit=limit, before=before)
        return {
            "deliveries": [views.delivery(d, with_attempts=with_attempts) for d in found],
            "next_before": found[-1].id if len(found) == limit else None,
        }

    async def delivery(self, delivery_id: int) -> dict[str, Any]:
        """One delivery with every attempt."""
        found = await self.store.get_delivery(delivery_id)
        if found is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        return views.delivery(found, with_attempts=True)

    async def retry(self, delivery_id: int) -> dict[str, Any]:
        """Send a delivery again now (a dead letter on a fresh schedule)."""
        found = await self.store.get_delivery(delivery_id)
        if found is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if not self._configured(found.subscriber_id):
            raise ConflictError(
                f"delivery {delivery_id} is for subscriber {found.subscriber_id!r}, which is no "
                "longer configured (add the subscriber back to send it)"
            )
        was = await self.store.retry(delivery_id, now=self._clock.now())
        if was is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if was is DeliveryState.DELIVERED:
            raise ConflictError(
                f"delivery {delivery_id} was delivered; replay its event to send it again "
                "(POST /api/replay, or munsit-bridge replay)"
            )
        if was is DeliveryState.ORPHANED:
            raise ConflictError(
                f"delivery {delivery_id} is orphaned: its subscriber is no longer configured "
                "(add the subscriber back to send it)"
            )
        self._wake()
        found = await self.store.get_delivery(delivery_id)
        if found is None:  # retention cannot take a pending delivery: deleted by hand
            raise NotFoundError(f"no delivery {delivery_id}")
        return {"was": was.value, "delivery": views.delivery(found, with_attempts=False)}

    async def retry_failed(self, where: DeliveryFilter) -> dict[str, Any]:
        """Send again every dead letter `where` matches (its `state` must be failed or
        left out)."""
        if where.state not in (None, DeliveryState.FAILED):
            raise RequestError(
                f"state: only failed deliveries are retried in bulk (got {where.state.value})"
            )
        if where.subscriber is not None:
            self.subscriber_config(where.subscriber)
        # not a removed subscriber's; every gateway job's callback
        configured = [*(s.id for s in self.settings.subscribers), ALL_JOBS]
        retried = await self.store.retry_failed(
            where, now=self._clock.now(), subscribers=configured
        )
        if retried:
            self._wake()
        log.info("dead letters retried", deliveries=retried)
        return {"retried": retried}

    async def replay(
        self, *, since: float, subscriber: str | None = None, event_type: str | None = None
    ) -> Replayed:
        """Queue stored events since `since` again (same event ids) for the subscribers
        they match, or one of them."""
        if event_type is not None and event_type not in EVENT_TYPES:
            raise RequestError(
                f"type: unknown event type {event_type!r} (one of {', '.join(EVENT_TYPES)})"
            )
        chosen = (
            [self.subscriber_config(subscriber)]
            if subscriber  # None or empty: every subscriber
            else list(self.settings.subscribers)
        )
        result = await self.store.replay(
            since=since,
            event_type=event_type,
            targets=lambda etype, record: route_stored(etype, record, chosen),
            now=self._clock.now(),
        )
        if result.deliveries:
            self._wake()
        log.info("replay", events=result.events, deliveries=result.deliveries)
        return result

    # --- status and feed ----------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The store's side of the bridge at a glance: baseline, records pending, the
        outbox by state, every subscriber."""
        outbox = await self.store.count_deliveries()
        accounts = [
            await self._account(a, up.base_url)
            for a, up in self.settings.account_upstreams().items()
        ]
        return {
            "baseline_recorded": all(a["baseline_recorded"] for a in accounts),
            "records_pending": sum(a["records_pending"] for a in accounts),
            "accounts": accounts,
            "outbox": {s.value: outbox.get(s, 0) for s in DeliveryState},
            "subscribers": await self.subscribers(),
        }

    async def feed(
        self, *, after: int | None, limit: int, event_type: str | None = None
    ) -> FeedPage:
        """Events stored after seq `after` (None: from the oldest kept), oldest first; a
        `GoneError` when retention deleted events past `after`."""
        page = await self.store.events_after(after_seq=after, limit=limit, event_type=event_type)
        if after is not None and after < page.purged_up_to:
            raise GoneError(
                f"cursor {encode(after)} is older than the retained events (retention "
                f"deleted events up to {encode(page.purged_up_to)}); start again without after"
            )
        return page

    async def _account(self, account: str, upstream: str) -> dict[str, Any]:
        """One Munsit account as the store knows it: baseline, pending, last poll."""
        last = await self.store.get_meta(meta_key(account, LAST_POLL))
        return {
            "account": account,
            "upstream": upstream,
            "baseline_recorded": await self.store.baseline_done(account),
            "records_pending": len(await self.store.tracked_pending(account)),
            "last_poll_at": None if last is None else iso_utc(float(last)),
        }

    def _configured(self, target: str) -> bool:
        """A subscriber in the configuration, or a gateway job's callback."""
        if target.startswith(JOB_TARGET):
            return True
        return target in {s.id for s in self.settings.subscribers}

    def _wake(self) -> None:
        if self._live is not None:
            self._live.wake()
