"""The composition root: builds the store, HTTP sessions, client, poller and dispatcher once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from bridge import __version__
from bridge.admin.app import create_app
from bridge.clock import Clock, SystemClock, sleep_or_event
from bridge.config import Settings
from bridge.deliver.dispatcher import Dispatcher, Sent
from bridge.deliver.guard import guarded_socket_factory
from bridge.deliver.lanes import lane_of
from bridge.deliver.templates import pool as template_pool
from bridge.detect.poller import Poller, PollResult
from bridge.detect.progress import ProgressWatcher
from bridge.errors import BridgeError, StoreError
from bridge.feedwait import FeedSignal
from bridge.leader import Leadership
from bridge.metrics import Metrics
from bridge.models import (
    DEFAULT_ACCOUNT,
    JOB_TARGET,
    PROGRESS,
    TERMINAL_EVENT,
    DeliveryState,
    Report,
    split_key,
)
from bridge.ops.core import Operations
from bridge.polling import Account, open_accounts
from bridge.ready import oldest_poll, readyz
from bridge.redact import describe
from bridge.retention import Retention
from bridge.store.base import GatewayStore, LeaderState, LeaderStore, Store
from bridge.store.factory import build_store
from bridge.supervise import Supervisor
from bridge.upstream.client import MunsitClient

HEALTH_RELOAD_S = 5.0  # replicas: how often subscriber states are read without a wake-up

TERMINAL = frozenset(TERMINAL_EVENT)  # record statuses a job's progress stream ends on
RESULTS = {DeliveryState.DELIVERED: "delivered", DeliveryState.FAILED: "failed"}

log = structlog.get_logger("bridge.service")


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
        exclusive: bool = False,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store or build_store(settings, exclusive=exclusive)
        self._rand = rand
        self._on_poll = on_poll
        self._on_sent = on_sent
        self._sessions: list[aiohttp.ClientSession] = []
        self._background: set[asyncio.Task[None]] = set()
        self.accounts: dict[str, Account] = {}
        self.metrics = Metrics()
        self.feed = FeedSignal()  # wakes the pull feed's long polls and streams
        # supervised components that keep failing: name -> their last error (for /readyz)
        self.failing: dict[str, str] = {}
        # replicas share the store: a lease decides which one polls (SQLite: this one)
        self.shared: LeaderStore | None = (
            self.store if isinstance(self.store, LeaderStore) and self.store.shared else None
        )
        self.leadership: Leadership | None = None
        self._exit = contextlib.AsyncExitStack()
        self._gateway_session: aiohttp.ClientSession | None = None
        self.gateway_port: int | None = None

    @property
    def poller(self) -> Poller:
        """The first account's poller (the only one without `[[accounts]]`)."""
        return self._first.poller

    @property
    def client(self) -> MunsitClient:
        """The first account's Munsit client."""
        return self._first.client

    @property
    def watcher(self) -> ProgressWatcher | None:
        """The first account's progress streams."""
        return self._first.watcher

    @property
    def _first(self) -> Account:
        return next(iter(self.accounts.values()))

    def _watchers(self) -> list[ProgressWatcher]:
        return [a.watcher for a in self.accounts.values() if a.watcher is not None]

    @property
    def role(self) -> str:
        """`leader` (polls Munsit and delivers) or `follower` (delivers)."""
        if self.shared is None:
            return "leader"
        return "leader" if self.leadership is not None and self.leadership.is_leader else "follower"

    async def __aenter__(self) -> Service:
        async with contextlib.AsyncExitStack() as stack:  # a failed start closes what opened
            await self.store.open()
            stack.push_async_callback(self.store.close)
            stack.push_async_callback(template_pool.close)  # workers, if any started
            await self._reconcile()
            if self.settings.gateway.enabled:  # uploads: not in the pollers' few connections
                self._gateway_session = await stack.enter_async_context(
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                )
            delivery = self.settings.delivery
            delivery_session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=delivery.max_in_flight,
                        socket_factory=None
                        if delivery.allow_private_destinations
                        else guarded_socket_factory(),
                    )
                )
            )
            self.dispatcher = Dispatcher(
                self.store,
                delivery_session,
                subscribers=self.settings.subscribers,
                config=self.settings.delivery,
                clock=self.clock,
                rand=self._rand,
                on_sent=self._sent,
                shared=self.store.shared,
                on_report=self._reported,
                jobs=self.store,  # gateway callbacks: the `job:` lane
                clients=self.settings.clients,
            )
            stack.push_async_callback(self.dispatcher.stop_health_retries)
            self.ops = Operations(self.settings, self.store, clock=self.clock, live=self.dispatcher)
            await self.dispatcher.load_health()
            self.accounts = await open_accounts(
                self.settings,
                self.store,
                stack,
                clock=self.clock,
                metrics=self.metrics,
                rand=self._rand,
                on_poll=self._polled,
                on_progress=self._progress_event,
            )
            stack.push_async_callback(self._cancel_background)
            self._exit = stack.pop_all()  # started: `__aexit__` closes it all, in reverse
        return self

    async def _reconcile(self) -> None:
        """Say when the store is new; orphan the deliveries of subscribers no longer
        configured, and hand back those of subscribers configured again."""
        if self.store.created:
            log.warning(
                "new store created: the first poll records a baseline",
                store=self.settings.store.shown(),
            )
        configured = [s.id for s in self.settings.subscribers]
        orphaned, restored = await self.store.reconcile_subscribers(
            configured, now=self.clock.now()
        )
        if orphaned:
            log.warning(
                "deliveries of subscribers no longer configured kept as orphaned",
                deliveries=orphaned,
            )
        if restored:
            log.info(
                "orphaned deliveries of configured subscribers queued again", deliveries=restored
            )

    def _reported(self, report: Report) -> None:
        """A report on the bridge was stored: an event like any other."""
        self.metrics.events.labels(report.event.type).inc()
        self.feed.stored()

    def _progress_event(self) -> None:
        self.metrics.events.labels(PROGRESS).inc()
        self.dispatcher.wake()
        self.feed.stored()

    def _sent(self, sent: Sent) -> None:
        # one series per subscriber, one for every gateway callback (not one per job)
        target = lane_of(sent.delivery.subscriber_id)
        self.metrics.count_delivery(target, RESULTS.get(sent.state, "retry"))
        self.metrics.delivery_seconds.observe(sent.attempt.latency_ms / 1000)
        if self._on_sent is not None:
            self._on_sent(sent)

    # --- what the gateway uses (bridge.gateway.host.GatewayHost) ---------------------------

    @property
    def jobs(self) -> GatewayStore:
        return self.store

    @property
    def upstream(self) -> aiohttp.ClientSession:
        if self._gateway_session is None:
            raise BridgeError("the gateway is not enabled (gateway.enabled = false)")
        return self._gateway_session

    async def baseline_recorded(self, account: str = DEFAULT_ACCOUNT) -> bool:
        """Whether the first poll of `account` has recorded what Munsit held: before it, a
        job submitted through the gateway could finish unseen (the baseline notes, it does
        not announce)."""
        return await self.store.baseline_done(account)

    def watch(self, record_id: str) -> None:
        """A job was just submitted through the gateway (`record_id` is its key): follow
        its progress now (the replica that polls does; on another, the store's NOTIFY
        `job:<key>` tells it), and send what its registration queued."""
        account = self.accounts.get(split_key(record_id)[0])
        if self.role == "leader" and account is not None and account.watcher is not None:
            account.watcher.watch(record_id)
        self.dispatcher.wake()

    async def readiness(self) -> dict[str, Any]:
        """The `/readyz` body (see `bridge.ready`)."""
        return await readyz(
            settings=self.settings,
            store=self.store,
            clock=self.clock,
            role=self.role,
            accounts=self.accounts,
            leader_state=self.leader_state,
            failing=self.failing,
        )

    async def metrics_text(self) -> bytes:
        await self.refresh_gauges()
        return self.metrics.render()

    async def refresh_gauges(self) -> None:
        """Set the gauges read at scrape time (outbox, pending records, subscribers)."""
        m = self.metrics
        with contextlib.suppress(StoreError):  # /readyz reports it; the gauge keeps its value
            counts = await self.store.count_deliveries()  # counters, not a scan
            m.outbox_pending.set(counts[DeliveryState.PENDING])
            m.outbox_orphaned.set(counts[DeliveryState.ORPHANED])
        for account in self.accounts.values():
            m.records_pending.labels(account.id).set(len(account.poller.pending))
        active = set(self.dispatcher.active)
        for sub in self.settings.subscribers:
            m.subscriber_enabled.labels(sub.id).set(1 if sub.id in active else 0)
        m.progress_streams.set(sum(len(w.watching) for w in self._watchers()))

    def _polled(self, account: Account, result: PollResult) -> None:
        m = self.metrics
        m.polls.labels(account.id, "ok").inc()
        m.pages_per_poll.labels(account.id).observe(result.pages)
        m.last_poll_success.labels(account.id).set(self.clock.now())
        for event in result.events:
            m.events.labels(event.type).inc()
        if account.watcher is not None:
            finished = [c.record.id for c in result.changes if c.record.status in TERMINAL]
            account.watcher.update(account.poller.pending, finished=finished)
        if result.deliveries:
            self.dispatcher.wake()
        if result.events:
            self.feed.stored()
        if self._on_poll is not None:
            self._on_poll(result)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and deliver until `stop` is set; in-flight deliveries get `timeout_s` to end.
        Each component is supervised on its own: an unexpected error restarts that one."""
        admin = await self._start_admin() if self.settings.admin.enabled else None
        try:
            gateway = await self._start_gateway() if self.settings.gateway.enabled else None
        except BaseException:
            if admin is not None:
                await admin.cleanup()
            raise
        self._log_summary()
        supervisor = Supervisor(
            stop,
            clock=self.clock,
            failing=self.failing,
            on_restart=lambda name: self.metrics.component_restarts.labels(name).inc(),
            rand=self._rand,
        )
        retention = Retention(
            self.store, retention_days=self.settings.store.retention_days, clock=self.clock
        )
        try:
            async with asyncio.TaskGroup() as group:
                if self.shared is None:
                    self.metrics.leader.set(1)
                    self._start_polling(group, supervisor, stop)
                    group.create_task(supervisor.run("retention", lambda: retention.run(stop)))
                else:  # the leader polls and sweeps
                    self._start_shared(group, supervisor, self.shared, retention, stop)
                group.create_task(supervisor.run("dispatcher", lambda: self.dispatcher.run(stop)))
        finally:
            for watcher in self._watchers():
                await watcher.close()
            self.feed.close()  # open long polls answer, streams end: the server stops at once
            if gateway is not None:
                await gateway.cleanup()
            if admin is not None:
                await admin.cleanup()
        log.info("stopped cleanly")

    def _start_shared(
        self,
        group: asyncio.TaskGroup,
        supervisor: Supervisor,
        shared: LeaderStore,
        retention: Retention,
        stop: asyncio.Event,
    ) -> None:
        """With replicas: poll (and sweep old rows) only while holding the poller's lease,
        and hear at once what the others queue or change."""

        async def polling() -> None:
            try:
                async with asyncio.TaskGroup() as leading:
                    self._start_polling(leading, supervisor, stop)
                    leading.create_task(supervisor.run("retention", lambda: retention.run(stop)))
            finally:  # a follower now: what it knew as the leader is no longer its to say
                for account in self.accounts.values():
                    if account.watcher is not None:
                        await account.watcher.close()
                    account.poller.pending = []
                    self.failing.pop(account.component, None)
                self.failing.pop("retention", None)

        self.leadership = Leadership(
            shared,
            holder=shared.replica_id,
            lease_s=self.settings.store.leader_lease_s,
            polling=polling,
            last_poll_at=self._last_poll_at,
            on_change=lambda leader: self.metrics.leader.set(1 if leader else 0),
        )
        leadership = self.leadership
        group.create_task(supervisor.run("leader", lambda: leadership.run(stop)))
        group.create_task(supervisor.run("listener", lambda: shared.listen(self._notified, stop)))
        group.create_task(supervisor.run("health", lambda: self._reload_health_every(stop)))

    def _start_polling(
        self, group: asyncio.TaskGroup, supervisor: Supervisor, stop: asyncio.Event
    ) -> None:
        """Each account's poller, supervised on its own."""
        for account in self.accounts.values():
            polling = functools.partial(account.poller.run, stop)
            group.create_task(supervisor.run(account.component, polling))

    def _last_poll_at(self) -> float | None:
        """The oldest of the accounts' last successful polls, for the lease: followers judge
        readiness by it."""
        return oldest_poll(a.poller for a in self.accounts.values())

    async def _reload_health_every(self, stop: asyncio.Event) -> None:
        """Read the subscribers' states now and then even without a wake-up (a missed
        NOTIFY must not leave this replica sending to a subscriber disabled elsewhere)."""
        while not stop.is_set():
            await sleep_or_event(self.clock, HEALTH_RELOAD_S, stop)
            if not stop.is_set():
                await self._reload_health()

    async def leader_state(self) -> LeaderState | None:
        """Who polls, as the shared store says (None: the store did not answer)."""
        if self.shared is None:
            return None
        try:
            return await self.shared.leader()
        except StoreError:
            return None

    def _notified(self, payload: str) -> None:
        """Another replica (or an operator through it) changed the outbox, stored events or
        changed a subscriber; after a reconnection (wake-ups may have been missed) all."""
        if payload == "outbox":
            self.dispatcher.wake()
            return
        if payload == "events":
            self.feed.stored()
            return
        if payload.startswith(JOB_TARGET):  # a job submitted through another replica
            if record_id := payload[len(JOB_TARGET) :]:
                self.watch(record_id)
            return
        if payload == "reconnected":
            self.feed.stored()
        task = asyncio.create_task(self._reload_health())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_health(self) -> None:
        try:
            await self.dispatcher.reload_health()
        except StoreError as exc:
            log.warning("cannot read subscriber states", error=describe(exc))
            self.dispatcher.wake()

    def _log_summary(self) -> None:
        """One line that says what this process works with: which config, store, upstream
        and subscribers, where its admin server listens and what it does."""
        settings = self.settings
        config_path = settings.config_path
        admin, gw = settings.admin, settings.gateway
        log.info(
            "munsit-bridge started",
            version=__version__,
            config=str(config_path) if config_path is not None else "(none: defaults and env)",
            store=settings.store.shown(),
            replica=settings.store.replica_id,
            upstream=sorted({a.upstream.base_url for a in self.accounts.values()}),
            accounts=list(self.accounts),
            subscribers=[s.id for s in settings.subscribers],
            admin=f"http://{admin.host}:{self.admin_port}" if admin.enabled else "off",
            gateway=f"http://{gw.host}:{self.gateway_port}" if gw.enabled else "off",
            clients=[c.id for c in settings.clients],
            # one process per SQLite file polls and delivers; replicas elect one to poll
            role="leader" if self.shared is None else "elected by lease",
        )

    async def _start_gateway(self) -> web.AppRunner:
        from bridge.gateway.app import create_gateway_app  # only when enabled

        cfg = self.settings.gateway
        runner = web.AppRunner(create_gateway_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, cfg.host, cfg.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise BridgeError(f"gateway cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
        self.gateway_port = runner.addresses[0][1]
        log.info("gateway listening", host=cfg.host, port=self.gateway_port)
        return runner

    async def _start_admin(self) -> web.AppRunner:
        cfg = self.settings.admin
        runner = web.AppRunner(create_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, cfg.host, cfg.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise BridgeError(
                f"admin server cannot listen on {cfg.host}:{cfg.port}: {exc}"
            ) from exc
        self.admin_port = runner.addresses[0][1]
        log.info("admin server listening", host=cfg.host, port=self.admin_port)
        return runner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit.aclose()

    async def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
