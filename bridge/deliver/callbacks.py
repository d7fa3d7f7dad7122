"""Gateway callbacks as the dispatcher sees them: which client and callback a `job:<record
id>` delivery goes to (looked up in the store per claimed batch, cached per record), the
client's signer, and what to do with a delivery whose client is no longer configured."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from bridge.config_gateway import ClientConfig
from bridge.deliver.signing import Signer
from bridge.errors import StoreError
from bridge.models import JOB_TARGET, Callback, Delivery
from bridge.redact import describe
from bridge.store.base import GatewayStore

log = structlog.get_logger("bridge.deliver")

CACHED_RECORDS = 10_000  # callbacks remembered (a record's next event finds its own here)
# a callback whose client is gone (or with no callback stored) is handed back due this much
# later: it waits like an orphan, looked at again now and then (a restart with the client
# configured again sends it at once)
PARKED_S = 300.0


def record_of(target_id: str) -> str:
    """The record id of a `job:<record id>` target."""
    return target_id.removeprefix(JOB_TARGET)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one callback goes: its client (config and signer) and its callback."""

    client: ClientConfig
    signer: Signer
    callback: Callback


class Callbacks:
    """The clients and a cache of the callbacks of recently claimed job deliveries."""

    def __init__(self, store: GatewayStore, clients: Sequence[ClientConfig]) -> None:
        self._store = store
        self._clients = {c.id: c for c in clients}
        self._signers = {c.id: Signer([c.secret]) for c in clients}
        self._cache: OrderedDict[str, tuple[str, Callback] | None] = OrderedDict()
        self._told: set[str] = set()  # clients (or records) already logged as missing

    @property
    def has_clients(self) -> bool:
        """Whether any client is configured (without one, every callback waits)."""
        return bool(self._clients)

    async def prefetch(self, claimed: Sequence[Delivery]) -> None:
        """Look up the callbacks of a claimed batch in one round trip (those not cached).
        A store error leaves them to `target`, one by one."""
        missing = list(
            dict.fromkeys(
                rid for d in claimed if (rid := record_of(d.subscriber_id)) not in self._cache
            )
        )
        if not missing:
            return
        try:
            found = await self._store.callbacks(missing)
        except StoreError as exc:
            log.warning("cannot look callbacks up, will at send time", error=describe(exc))
            return
        for rid in missing:
            self._remember(rid, found.get(rid))

    def _remember(self, rid: str, value: tuple[str, Callback] | None) -> None:
        self._cache[rid] = value
        self._cache.move_to_end(rid)
        while len(self._cache) > CACHED_RECORDS:
            self._cache.popitem(last=False)

    def known(self, target_id: str) -> bool:
        """Whether the callback of a `job:<record id>` target was looked up (and cached),
        found or not."""
        return record_of(target_id) in self._cache

    def url(self, target_id: str) -> str:
        """The callback URL of a `job:<record id>` target, if cached ("" otherwise): its
        secret parts are hidden from the error text of a dead letter's report."""
        entry = self._cache.get(record_of(target_id))
        return "" if entry is None else entry[1].url

    async def target(self, delivery: Delivery) -> Target | None:
        """The client and callback of a job delivery; None (logged once per client or
        record) when the job has no callback stored or its client is not configured: the
        delivery then waits. Raises `StoreError` when the store cannot say."""
        rid = record_of(delivery.subscriber_id)
        if rid not in self._cache:
            found = await self._store.callbacks([rid])
            self._remember(rid, found.get(rid))
        entry = self._cache[rid]
        if entry is None:
            if delivery.subscriber_id not in self._told:
                self._told.add(delivery.subscriber_id)
                log.warning(
                    "callback delivery has no callback stored; it waits",
                    subscriber=delivery.subscriber_id,
                    event_id=delivery.event.id,
                )
            self._cache.pop(rid, None)  # looked up again next time
            return None
        client_id, callback = entry
        client = self._clients.get(client_id)
        if client is None:
            if client_id not in self._told:
                self._told.add(client_id)
                log.warning(
                    "client no longer configured: its jobs' callbacks wait (kept pending)",
                    client=client_id,
                    subscriber=delivery.subscriber_id,
                )
            return None
        return Target(client, self._signers[client_id], callback)
