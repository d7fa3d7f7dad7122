"""The commands over the store (`status`, `deliveries`, `replay`), a running bridge or not,
through the same operations and JSON shapes as the admin API. `status` and `deliveries`
create nothing: a store that does not exist yet is reported as such."""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp

from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.models import DeliveryFilter, DeliveryState, Replayed
from bridge.ops import views
from bridge.ops.core import Operations
from bridge.redact import describe
from bridge.store.base import SubscriberHealth
from bridge.store.factory import build_store
from bridge.store.look import look, where_line

READYZ_TIMEOUT_S = 2.0


def new_secret() -> str:
    """A new Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@contextlib.asynccontextmanager
async def _operations(settings: Settings) -> AsyncIterator[Operations]:
    """Operations over the store as it is: opened without migrating or creating anything."""
    store = build_store(settings, migrate=False)
    await store.open()
    try:
        yield Operations(settings, store, clock=SystemClock())
    finally:
        await store.close()


async def deliveries(settings: Settings, *, where: DeliveryFilter, limit: int) -> dict[str, Any]:
    """What `GET /api/deliveries` answers for the same filter (no deliveries when the store
    does not exist yet)."""
    if not (await look(settings)).exists:
        return {"deliveries": [], "next_before": None}
    async with _operations(settings) as ops:
        return await ops.deliveries(where, limit=limit)


async def replay(
    settings: Settings, *, since: float, subscriber: str | None, event_type: str | None
) -> Replayed:
    """`replay`: through the store (created if need be); a running bridge sends them at its
    next look."""
    store = build_store(settings)
    await store.open()
    try:
        ops = Operations(settings, store, clock=SystemClock())
        return await ops.replay(since=since, subscriber=subscriber, event_type=event_type)
    finally:
        await store.close()


async def send_test(settings: Settings, subscriber: str) -> dict[str, Any]:
    """`send-test`: needs no store (none is opened)."""
    ops = Operations(settings, build_store(settings, migrate=False), clock=SystemClock())
    return await ops.send_test(subscriber)


async def status(settings: Settings) -> dict[str, Any]:
    """The bridge at a glance: store, whether a bridge runs on it, its poll health (from its
    admin server when it runs one), baseline, pending records, outbox, subscribers."""
    found = await look(settings)
    bridge: dict[str, Any] = {"running": found.running}
    if settings.store.is_postgres:  # replicas: the one polling holds the lease
        bridge |= {"leader": found.leader, "leader_last_poll_at": views.iso(found.last_poll_at)}
    else:  # SQLite: one process per store, the lock holder
        bridge |= {"pid": found.pid, "role": "leader" if found.running else None}
    report: dict[str, Any] = {
        "store": {
            "path": found.where,
            "exists": found.exists,
            "schema_version": found.schema_version or None,
            "store_id": found.store_id,
        },
        "bridge": bridge,
        "poll": {
            "last_records_seen_at": views.iso(found.last_seen_at),
            "readyz": await _readyz(settings) if found.running else None,
        },
    }
    if found.exists:
        async with _operations(settings) as ops:
            return report | await ops.status()
    nothing = SubscriberHealth()
    return report | {
        "baseline_recorded": False,
        "records_pending": 0,
        "accounts": [
            {"account": a, "upstream": up.base_url, "baseline_recorded": False}
            | {"records_pending": 0, "last_poll_at": None}
            for a, up in settings.account_upstreams().items()
        ],
        "outbox": {s.value: 0 for s in DeliveryState},
        "subscribers": [views.subscriber(s, nothing, None) for s in settings.subscribers],
    }


async def _readyz(settings: Settings) -> dict[str, Any]:
    """The running bridge's own poll health: its `/readyz` (no token needed)."""
    admin = settings.admin
    if not admin.enabled:
        return {"error": "the admin server is disabled (admin.enabled = false)"}
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.host, admin.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{admin.port}/readyz"
    try:
        timeout = aiohttp.ClientTimeout(total=READYZ_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
            body: dict[str, Any] = await resp.json()
    except Exception as exc:  # whatever it is, status still reports the rest
        return {"url": url, "error": f"no answer: {describe(exc)}"}
    return {"url": url, **body}


def _ago(iso: str | None, now: float) -> str:
    if iso is None:
        return "never"
    age = now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return f"{iso} ({age:.0f} s ago)"


def status_text(report: dict[str, Any], *, now: float | None = None) -> list[str]:
    """`status` for people."""
    now = time.time() if now is None else now
    store, bridge, poll = report["store"], report["bridge"], report["poll"]
    lines = [where_line(store["path"], store["exists"], store["schema_version"])]
    if bridge["running"] and "leader" in bridge:
        lines.append(f"bridge: running (replica {bridge['leader']} polls)")
    elif bridge["running"]:
        pid = bridge["pid"] if bridge["pid"] is not None else "unknown"
        lines.append(f"bridge: running (pid {pid}, role {bridge['role']})")
    else:
        lines.append("bridge: not running")
    ready = poll["readyz"]
    if ready is not None and "error" in ready:
        lines.append(f"poll health: unknown ({ready['error']})")
    elif ready is not None:
        state = "ok" if ready.get("ready") else "NOT READY: " + "; ".join(ready.get("reasons", []))
        lines.append(f"poll health: {state}")
        lines.append(f"last successful poll: {_ago(ready.get('last_poll_success_at'), now)}")
    lines.append(f"last poll that saw records: {_ago(poll['last_records_seen_at'], now)}")
    health = (ready or {}).get("accounts") or {}
    for account in report["accounts"]:
        lines += _account_lines(account, health.get(account["account"]), now, store["exists"])
    lines.append(f"records pending: {report['records_pending']}")
    lines.append("outbox: " + ", ".join(f"{k} {v}" for k, v in report["outbox"].items()))
    subs = report["subscribers"]
    lines.append("subscribers:" + ("" if subs else " none (events are recorded, sent nowhere)"))
    for sub in subs:
        counts = ", ".join(f"{k} {v}" for k, v in sub["deliveries"].items() if v)
        line = f"  {sub['id']}: {sub['state']}"
        if sub["state"] == "paused":
            line += " (enabled = false in the configuration)"
        elif sub["state"] == "disabled":
            line += f" by the bridge at {sub['disabled_at']}: {sub['disabled_reason']}"
        elif sub["failing_since"]:
            line += f", failing since {sub['failing_since']}"
        lines.append(line + (f"; {counts}" if counts else ""))
    return lines


def _account_lines(
    account: dict[str, Any], health: dict[str, Any] | None, now: float, exists: bool
) -> list[str]:
    """One account's part of `status`: its upstream, health, last poll, baseline, pending."""
    lines = [f"account {account['account']}: {account['upstream']}"]
    if health is not None:
        ok = health.get("ready")
        lines.append("  health: " + ("ok" if ok else "NOT READY: " + "; ".join(health["reasons"])))
    lines.append(f"  last successful poll: {_ago(account['last_poll_at'], now)}")
    if exists:
        baseline = "recorded" if account["baseline_recorded"] else "not yet (the first poll)"
        lines.append(f"  baseline: {baseline}")
    lines.append(f"  records pending: {account['records_pending']}")
    return lines


def deliveries_table(page: dict[str, Any]) -> list[str]:
    """`deliveries` for people: one row per delivery, newest first."""
    head = ("ID", "EVENT", "RECORD", "SUBSCRIBER", "STATE", "ATT", "LAST", "NEXT ATTEMPT")
    rows = [head]
    for d in page["deliveries"]:
        last = d["last_attempt"]
        if last is None:
            shown = "-"
        else:
            code = last["status_code"]
            shown = " ".join(x for x in (str(code) if code else "", last["error"] or "") if x)
        rows.append(
            (
                str(d["id"]),
                d["event_type"],
                d["record_id"],
                d["subscriber"],
                d["state"],
                str(d["attempt_count"]),
                _cut(shown or "-", 48),
                d["next_attempt_at"] or "-",
            )
        )
    if len(rows) == 1:
        return ["no deliveries"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def replay_summary(result: Replayed, subscriber: str | None) -> str:
    """One line for people: what was queued and why the other events went nowhere."""
    parts = [f"replayed {result.events} stored events: {result.deliveries} deliveries queued"]
    if result.already_pending:
        parts.append(f"{result.already_pending} deliveries already pending (left as they are)")
    if result.unmatched and subscriber:
        parts.append(
            f"{result.unmatched} events match none of subscriber {subscriber}'s events or accounts"
        )
    elif result.unmatched:
        parts.append(f"{result.unmatched} events match no subscriber's events or accounts")
    text = "; ".join(parts)
    if result.deliveries:
        text += " (a running bridge sends them within a minute)"
    return text
