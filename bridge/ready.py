"""The `/readyz` body, from what the service knows: the leader judges its own polls, a
follower the leader's last poll as the shared store records it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bridge.admin.health import poll_error_kind, readiness
from bridge.clock import Clock
from bridge.config import Settings
from bridge.detect.poller import Poller
from bridge.errors import BridgeError
from bridge.models import iso_utc
from bridge.redact import redact_text
from bridge.store.base import LeaderState, OperationsStore

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


async def readyz(
    *,
    settings: Settings,
    store: OperationsStore,
    clock: Clock,
    role: str,
    poller: Poller,
    leader_state: Callable[[], Awaitable[LeaderState | None]],
    failing: Mapping[str, str],
) -> dict[str, Any]:
    """`ready`, `reasons`, `role`, `replica`, `last_poll_success_at` (and `leader` on a
    follower)."""
    problem = await store_error(store)
    body: dict[str, Any] = {"role": role, "replica": settings.store.replica_id}
    if role == "leader":
        last_poll = poller.last_success_at
        reasons = readiness(
            now=clock.now(),
            store_error=problem,
            auth_failed=poller.auth_failed,
            last_success_at=last_poll,
            last_error_kind=poll_error_kind(poller.last_error),
            interval_s=poller.base_interval_s(),
            failing=failing,
        )
    else:
        reasons, last_poll, body["leader"] = await _follower(
            settings, clock, problem, leader_state, failing
        )
    shown = None if last_poll is None else iso_utc(last_poll)
    return body | {"ready": not reasons, "reasons": reasons, "last_poll_success_at": shown}


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
    up = settings.upstream
    reasons = readiness(
        now=clock.now(),
        store_error=None,
        auth_failed=False,
        last_success_at=leader.last_poll_at,
        last_error_kind=None,
        interval_s=max(up.poll_interval_s, up.idle_poll_interval_s),
        failing=failing,
        recorded_every_s=settings.store.leader_lease_s / 3,
    )
    return reasons, leader.last_poll_at, leader.replica
