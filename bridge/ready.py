"""The `/readyz` body, from what the service knows: the leader judges its own polls, a
follower the leader's last poll as the shared store records it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from bridge.admin.health import failing_reason, poll_error_kind, readiness
from bridge.clock import Clock
from bridge.config import Settings
from bridge.detect.poller import Poller
from bridge.errors import BridgeError
from bridge.models import DEFAULT_ACCOUNT, iso_utc
from bridge.redact import redact_text
from bridge.store.base import LAST_POLL, LeaderState, OperationsStore, Store, meta_key

STORE_TIMEOUT_S = 2.0  # the store does not answer after this long


async def store_error(store: OperationsStore) -> str | None:
    """Why the store does not answer (None: it does), within `STORE_TIMEOUT_S`."""
    try:
        await asyncio.wait_for(store.ping(), timeout=STORE_TIMEOUT_S)
    except BridgeError as exc:
        return redact_text(str(exc))
    except TimeoutError:
        return f"no answer within {STORE_TIMEOUT_S:.0f} s"
    return None


class Polled(Protocol):
    """An account being polled, as readiness judges it."""

    id: str
    poller: Poller


async def readyz(
    *,
    settings: Settings,
    store: Store,
    clock: Clock,
    role: str,
    accounts: Mapping[str, Polled],
    leader_state: Callable[[], Awaitable[LeaderState | None]],
    failing: Mapping[str, str],
) -> dict[str, Any]:
    """`ready`, `reasons`, `role`, `replica`, `last_poll_success_at` (the oldest account's),
    `accounts` (each one's `ready`, `reasons` and last poll), and `leader` on a follower."""
    problem = await store_error(store)
    body: dict[str, Any] = {"role": role, "replica": settings.store.replica_id}
    now = clock.now()
    if role == "leader":
        reasons = [f"store unreachable: {problem}"] if problem is not None else []
        reasons += [failing_reason(name, text) for name, text in sorted(failing.items())]
        states = {a.id: _leader_account(a.poller, now) for a in accounts.values()}
        named = list(states) != [DEFAULT_ACCOUNT]  # one account alone: as before accounts
        for account_id, state in states.items():
            reasons += [f"account {account_id}: {r}" if named else r for r in state["reasons"]]
        last_poll = oldest_poll(a.poller for a in accounts.values())
    else:  # a follower's reasons come from the leader's lease
        reasons, last_poll, body["leader"] = await _follower(
            settings, clock, problem, leader_state, failing
        )
        states = await _follower_accounts(settings, store, now) if problem is None else {}
    shown = None if last_poll is None else iso_utc(last_poll)
    return body | {
        "ready": not reasons,
        "reasons": reasons,
        "last_poll_success_at": shown,
        "accounts": states,
    }


def oldest_poll(pollers: Iterable[Poller]) -> float | None:
    """The oldest of the pollers' last successful polls (None: one has none yet): the
    bridge's last poll as the lease records it and `/readyz` shows it."""
    times = [p.last_success_at for p in pollers]
    return None if None in times else min(t for t in times if t is not None)


def _leader_account(poller: Poller, now: float) -> dict[str, Any]:
    """One account as the replica polling it knows it."""
    reasons = readiness(
        now=now,
        store_error=None,
        auth_failed=poller.auth_failed,
        last_success_at=poller.last_success_at,
        last_error_kind=poll_error_kind(poller.last_error),
        interval_s=poller.base_interval_s(),
    )
    return _shown(reasons, poller.last_success_at)


async def _follower_accounts(settings: Settings, store: Store, now: float) -> dict[str, Any]:
    """Each account as the store records its last successful poll."""
    states: dict[str, Any] = {}
    for account_id, up in settings.account_upstreams().items():
        try:
            text = await asyncio.wait_for(
                store.get_meta(meta_key(account_id, LAST_POLL)), STORE_TIMEOUT_S
            )
        except (BridgeError, TimeoutError):
            text = None
        last = None if text is None else float(text)
        reasons = readiness(
            now=now,
            store_error=None,
            auth_failed=False,
            last_success_at=last,
            last_error_kind=None,
            interval_s=max(up.poll_interval_s, up.idle_poll_interval_s),
        )
        states[account_id] = _shown(reasons, last)
    return states


def _shown(reasons: list[str], last: float | None) -> dict[str, Any]:
    return {
        "ready": not reasons,
        "reasons": reasons,
        "last_poll_success_at": None if last is None else iso_utc(last),
    }


async def _follower(
    settings: Settings,
    clock: Clock,
    problem: str | None,
    leader_state: Callable[[], Awaitable[LeaderState | None]],
    failing: Mapping[str, str],
) -> tuple[list[str], float | None, str | None]:
    """A follower is ready while the store answers and the leader's last successful poll,
    which it records with each lease renewal, is recent: within 3 of the longest poll
    interval (the leader's pending records are not this replica's to know), plus how often
    it is recorded. Returns the reasons, that poll's time and the leader's name."""
    if problem is not None:
        return [f"store unreachable: {problem}"], None, None
    try:
        leader = await asyncio.wait_for(leader_state(), STORE_TIMEOUT_S)
    except TimeoutError:
        leader = None
    if leader is None:
        return [f"store unreachable: no answer within {STORE_TIMEOUT_S:.0f} s"], None, None
    longest = max(
        max(up.poll_interval_s, up.idle_poll_interval_s)
        for up in settings.account_upstreams().values()
    )
    reasons = readiness(
        now=clock.now(),
        store_error=None,
        auth_failed=False,
        last_success_at=leader.last_poll_at,  # the oldest of the accounts' last polls
        last_error_kind=None,
        interval_s=longest,
        failing=failing,
        recorded_every_s=settings.store.leader_lease_s / 3,
    )
    return reasons, leader.last_poll_at, leader.replica
