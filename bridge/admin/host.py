"""What the admin server (API and dashboard) needs of the running bridge: its settings, its
clock, the operations, the feed's wake-ups, readiness and metrics. `Service` provides it;
the admin package never imports the service."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from bridge.clock import Clock
from bridge.config import Settings
from bridge.feedwait import FeedSignal
from bridge.ops.core import Operations


class Host(Protocol):
    settings: Settings
    clock: Clock
    ops: Operations
    feed: FeedSignal

    @property
    def role(self) -> str:
        """`leader` or `follower`."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """The `/readyz` body: `ready`, `reasons`, `role`, `replica`, `last_poll_success_at`
        (and the `leader`'s name on a follower)."""
        ...

    async def metrics_text(self) -> bytes:
        """`/metrics`, gauges refreshed."""
        ...


HOST = web.AppKey("host", Host)  # the admin app's `Host`: every handler reads it from here
