"""What the gateway needs of the running bridge: its settings and clock, the store's jobs,
a session to reach Munsit, whether the first poll is done, a way to watch a job's progress
at once, and metrics. `Service` provides it; the gateway package never imports the
service."""

from __future__ import annotations

from typing import Protocol

import aiohttp
from aiohttp import web

from bridge.clock import Clock
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.store.base import GatewayStore


class GatewayHost(Protocol):
    settings: Settings
    clock: Clock
    metrics: Metrics

    @property
    def jobs(self) -> GatewayStore:
        """The store, as far as the gateway uses it."""
        ...

    @property
    def upstream(self) -> aiohttp.ClientSession:
        """The session for Munsit (no destination guard: Munsit is configured, not given)."""
        ...

    async def baseline_recorded(self, account: str) -> bool:
        """Whether the first poll of `account` has recorded what Munsit holds (the
        baseline): before it, a job submitted and finished would only be noted, never called
        back."""
        ...

    def watch(self, record_id: str) -> None:
        """A job was just submitted: follow its progress stream now (on a replica that
        does not poll, the one that does is told)."""
        ...


GATEWAY_HOST = web.AppKey("gateway_host", GatewayHost)
