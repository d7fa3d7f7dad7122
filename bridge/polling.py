"""The per-account half of the service: for each Munsit account, its own HTTP sessions,
client, poller and progress streams, so that one account's 401, outage or hanging answers
never delay another's events. Built by the service; the account `default` keeps the names
(`poller`, meta keys, record ids) a bridge had before accounts existed."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.clock import Clock
from bridge.config import Settings, UpstreamConfig
from bridge.deliver.routing import for_account
from bridge.detect.account import AccountStore, AccountUpstream
from bridge.detect.poller import Poller, PollResult
from bridge.detect.progress import ProgressWatcher
from bridge.metrics import Metrics
from bridge.models import DEFAULT_ACCOUNT
from bridge.store.base import DetectionStore
from bridge.upstream.client import DEFAULT_KEY_NAME, MunsitClient


@dataclass(slots=True)
class Account:
    """One Munsit account being polled."""

    id: str
    upstream: UpstreamConfig
    client: MunsitClient
    poller: Poller
    watcher: ProgressWatcher | None

    @property
    def component(self) -> str:
        """Its poller's name for the supervisor and `/readyz`."""
        return "poller" if self.id == DEFAULT_ACCOUNT else f"poller:{self.id}"


def key_name(settings: Settings, account: str) -> str:
    """Where an account's key is configured, for the message of a 401."""
    for i, acc in enumerate(settings.accounts):
        if acc.id == account:
            if acc.api_key_env:
                return f"the variable {acc.api_key_env} (accounts[{i}].api_key_env)"
            return f"accounts[{i}].api_key" if acc.api_key else "upstream.api_key"
    return DEFAULT_KEY_NAME


def munsit_client(
    settings: Settings,
    account: str,
    session: aiohttp.ClientSession,
    clock: Clock,
    **options: Any,
) -> MunsitClient:
    """A client of `account`'s Munsit API (its URL, key and timeout; `options` as
    `MunsitClient` takes them)."""
    up = settings.account_upstreams()[account]
    return MunsitClient(
        session,
        base_url=up.base_url,
        api_key=settings.account_key(account),
        timeout_s=up.request_timeout_s,
        sleep=clock.sleep,
        now=clock.now,
        key_name=key_name(settings, account),
        account=account,
        **options,
    )


async def open_accounts(
    settings: Settings,
    store: DetectionStore,
    stack: contextlib.AsyncExitStack,
    *,
    clock: Clock,
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
    on_poll: Callable[[Account, PollResult], None],
    on_progress: Callable[[], None],
) -> dict[str, Account]:
    """Every configured account, its sessions closed by `stack`."""
    accounts: dict[str, Account] = {}
    for account_id, up in settings.account_upstreams().items():
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
        )
        streams = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=up.max_progress_streams))
        )
        accounts[account_id] = _account(
            settings,
            store,
            account_id,
            up,
            session,
            streams,
            clock,
            metrics,
            rand,
            on_poll,
            on_progress,
        )
        if (watcher := accounts[account_id].watcher) is not None:
            stack.push_async_callback(watcher.close)
    return accounts


def _account(
    settings: Settings,
    store: DetectionStore,
    account_id: str,
    up: UpstreamConfig,
    session: aiohttp.ClientSession,
    streams: aiohttp.ClientSession,
    clock: Clock,
    metrics: Metrics,
    rand: Callable[[], float],
    on_poll: Callable[[Account, PollResult], None],
    on_progress: Callable[[], None],
) -> Account:
    client = munsit_client(
        settings,
        account_id,
        session,
        clock,
        rand=rand,
        stream_session=streams,
        on_response=lambda code: metrics.upstream_requests.labels(account_id, code).inc(),
        max_response_bytes=up.max_response_bytes,
        on_quarantine=lambda count: metrics.records_quarantined.labels(account_id).inc(count),
    )
    scoped = AccountStore(store, account_id)
    source = AccountUpstream(client, account_id)
    subscribers = for_account(settings.subscribers, account_id)
    account: Account
    poller = Poller(
        source,
        scoped,
        upstream=up,
        subscribers=subscribers,
        clock=clock,
        rand=rand,
        on_poll=lambda result: on_poll(account, result),
        on_failure=lambda result: metrics.polls.labels(account_id, result).inc(),
        account=account_id,
    )
    watcher = None
    if up.progress_stream:
        watcher = ProgressWatcher(
            source,
            scoped,
            subscribers=subscribers,
            max_streams=up.max_progress_streams,
            clock=clock,
            on_finished=lambda _: poller.request_scan(),
            on_event=on_progress,
            rand=rand,
            on_crash=lambda _: metrics.component_restarts.labels("progress").inc(),
            always_progress=bool(settings.clients),  # a callback may list it
        )
    account = Account(account_id, up, client, poller, watcher)
    return account
