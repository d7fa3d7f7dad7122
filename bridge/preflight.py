"""`check`: what a new operator would otherwise learn from the first failed delivery.

It creates nothing (the store is looked at read-only, see `store.look`), and warns, in
lines starting `warning:` that name the subscriber, about destinations the SSRF guard will
refuse, `events` lists no emitted event matches, and a configuration without subscribers.
`--live` also asks Munsit once; `--send-test` sends `bridge.test` to every subscriber.
Body templates are rendered against a sample event first: one that fails is a configuration
error naming the subscriber and the template line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from bridge.config import Settings, SubscriberConfig
from bridge.deliver.destination import RESOLVE_TIMEOUT_S, refusal
from bridge.deliver.routing import wants
from bridge.deliver.sendtest import send_test
from bridge.deliver.templates.body import render_template, why
from bridge.deliver.templates.pool import close as close_template_workers
from bridge.errors import ConfigError, UpstreamError
from bridge.models import COMPLETED, CREATED, FAILED_EVENT, PROGRESS, REPORTS
from bridge.samples import samples
from bridge.store.look import look, store_line

EMITTED = (CREATED, COMPLETED, FAILED_EVENT, PROGRESS, *REPORTS)  # not bridge.test
NO_SUBSCRIBERS = "warning: no subscribers: events are recorded but sent nowhere"
CALLBACKS_ONLY = (
    "warning: no subscribers: events are recorded and sent only to the callbacks of jobs "
    "submitted through the gateway"
)
Emit = Callable[[str], None]


def events_problem(sub: SubscriberConfig) -> str | None:
    """Why `sub` can never get an event from polling, or None."""
    if any(wants(sub.events, etype) for etype in EMITTED):
        return None
    return (
        f"warning: subscriber {sub.id}: events [{', '.join(sub.events)}] match no event the bridge"
        f" sends on its own ({', '.join(EMITTED)}); bridge.test comes only from send-test"
    )


async def destination_problem(
    sub: SubscriberConfig, *, allow_private: bool, timeout_s: float = RESOLVE_TIMEOUT_S
) -> str | None:
    """Why deliveries to `sub` will fail before any request is sent, or None: an address the
    SSRF guard refuses (a literal one, or every address its name resolves to), or a name that
    does not resolve."""
    parts = urlsplit(sub.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = await refusal(host, port, allow_private=allow_private, timeout_s=timeout_s)
    if found is None:
        return None
    line = f"warning: subscriber {sub.id}: destination {host} {found.text}"
    if found.refused:
        line += (
            ": every delivery will be refused (set delivery.allow_private_destinations = true"
            " only for a receiver on this machine or network)"
        )
    return line


async def warnings(settings: Settings) -> list[str]:
    """Every `warning:` line for this configuration (destinations resolved concurrently)."""
    subs = settings.subscribers
    if not subs:
        return [CALLBACKS_ONLY if settings.gateway.enabled else NO_SUBSCRIBERS]
    allow = settings.delivery.allow_private_destinations
    found = await asyncio.gather(*(destination_problem(s, allow_private=allow) for s in subs))
    lines: list[str] = []
    for sub, problem in zip(subs, found, strict=True):
        lines += [p for p in (problem, events_problem(sub)) if p is not None]
    return lines


async def template_problems(settings: Settings) -> list[str]:
    """`subscribers[i] (id): reason` for each body template that fails on a sample of an
    event type it gets (any error, the time cap, non-JSON for a JSON type): the first
    failure of each, naming the sample's type."""
    lines = []
    for i, sub in enumerate(settings.subscribers):
        if sub.template_source is None:
            continue
        for sample in samples(sub, settings.account_ids):
            try:
                await render_template(sub.template_source, sample, sub.media_type, sub.id)
            except Exception as exc:
                lines.append(f"subscribers[{i}] ({sub.id}): {why(exc)} (on a sample {sample.type})")
                break
    await close_template_workers()
    return lines


async def check_upstream(settings: Settings, emit: Emit) -> None:
    """Ask Munsit for one record with each account's key: `UpstreamError` (naming the
    account when there are several) when a key or an address is wrong."""
    from bridge.clock import SystemClock
    from bridge.polling import munsit_client

    several = bool(settings.accounts)
    async with aiohttp.ClientSession() as session:
        for account, up in settings.account_upstreams().items():
            client = munsit_client(settings, account, session, SystemClock(), max_attempts=2)
            try:
                await client.list_page(0, 1)
            except UpstreamError as exc:
                if several:
                    raise type(exc)(f"account {account}: {exc}", status=exc.status) from None
                raise
            name = f"account {account}: " if several else ""
            emit(f"upstream ok: {name}{up.base_url} accepted the API key")


async def send_tests(settings: Settings, emit: Emit) -> bool:
    """`bridge.test` to every subscriber at once; one line each; True if every one got 2xx."""
    subs = settings.subscribers
    attempts = await asyncio.gather(*(send_test(s, settings.delivery) for s in subs))
    ok = True
    for sub, attempt in zip(subs, attempts, strict=True):
        code = attempt.status_code
        passed = code is not None and 200 <= code < 300
        ok &= passed
        line = f"send-test {sub.id}: {code if code is not None else 'no response'}"
        line += f" in {attempt.latency_ms:.0f} ms"
        if attempt.error:
            line += f": {attempt.error}"
        emit(line + ("" if passed else " (FAILED)"))
    return ok


async def check(settings: Settings, *, live: bool, send: bool, emit: Emit) -> bool:
    """Run the checks, emitting lines as they are known; False when a test send failed.
    A store `run` could not use, or a failed upstream call, raises `BridgeError`; a body
    template that fails raises `ConfigError`."""
    if problems := await template_problems(settings):
        raise ConfigError(problems)
    found = await look(settings)
    subs = ", ".join(s.id for s in settings.subscribers) or "none"
    emit(f"config ok: subscribers: {subs}")
    if settings.accounts:
        ups = settings.account_upstreams().items()
        emit("accounts: " + ", ".join(f"{a} ({up.base_url})" for a, up in ups))
    emit(store_line(found))
    for line in await warnings(settings):
        emit(line)
    if live:
        await check_upstream(settings, emit)
    if send and settings.subscribers:
        return await send_tests(settings, emit)
    return True
