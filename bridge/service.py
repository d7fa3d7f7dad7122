"""The composition root: builds the store, HTTP sessions, client, poller and dispatcher once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from types import TracebackType

import aiohttp

from bridge.clock import Clock, SystemClock
from bridge.config import Settings
from bridge.deliver.dispatcher import Dispatcher, Sent
from bridge.deliver.guard import guarded_socket_factory
from bridge.detect.poller import Poller, PollResult
from bridge.detect.progress import ProgressWatcher
from bridge.store.base import Store
from bridge.store.sqlite import SqliteStore
from bridge.upstream.client import MunsitClient


def build_store(settings: Settings) -> Store:
    return SqliteStore(settings.store.sqlite_path())


class Service:
    """The running bridge. Use as `async with Service(settings) as svc: await svc.run(stop)`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        rand: Callable[[], float] = random.random,
        on_poll: Callable[[PollResult], None] | None = None,
        on_sent: Callable[[Sent], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store or build_store(settings)
        self._rand = rand
        self._on_poll = on_poll
        self._on_sent = on_sent
        self._sessions: list[aiohttp.ClientSession] = []

    async def __aenter__(self) -> Service:
        await self.store.open()
        up = self.settings.upstream
        upstream_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
        stream_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=up.max_progress_streams)
        )
        delivery = self.settings.delivery
        delivery_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=delivery.max_in_flight,
                socket_factory=None
                if delivery.allow_private_destinations
                else guarded_socket_factory(),
            )
        )
        self._sessions = [upstream_session, stream_session, delivery_session]
        self.client = MunsitClient(
            upstream_session,
            base_url=up.base_url,
            api_key=up.api_key,
            timeout_s=up.request_timeout_s,
            sleep=self.clock.sleep,
            now=self.clock.now,
            rand=self._rand,
            stream_session=stream_session,
        )
        self.dispatcher = Dispatcher(
            self.store,
            delivery_session,
            subscribers=self.settings.subscribers,
            config=self.settings.delivery,
            clock=self.clock,
            rand=self._rand,
            on_sent=self._on_sent,
        )
        self.poller = Poller(
            self.client,
            self.store,
            upstream=up,
            subscribers=self.settings.subscribers,
            clock=self.clock,
            rand=self._rand,
            on_poll=self._polled,
        )
        await self.dispatcher.load_health()
        self.watcher: ProgressWatcher | None = None
        if up.progress_stream:
            self.watcher = ProgressWatcher(
                self.client,
                self.store,
                subscribers=self.settings.subscribers,
                max_streams=up.max_progress_streams,
                clock=self.clock,
                on_finished=lambda _: self.poller.request_scan(),
                on_event=self.dispatcher.wake,
                rand=self._rand,
            )
        return self

    def _polled(self, result: PollResult) -> None:
        if self.watcher is not None:
            self.watcher.update(self.poller.pending)
        if result.deliveries:
            self.dispatcher.wake()
        if self._on_poll is not None:
            self._on_poll(result)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and deliver until `stop` is set; in-flight deliveries get `timeout_s` to end."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.poller.run(stop))
                group.create_task(self.dispatcher.run(stop))
        finally:
            if self.watcher is not None:
                await self.watcher.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.watcher is not None:
            await self.watcher.close()
        for session in self._sessions:
            await session.close()
        await self.store.close()
