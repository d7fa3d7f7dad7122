"""Supervision: each long-running component restarts on its own after an unexpected error,
with capped backoff, while the others go on."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, MutableMapping

import structlog

from bridge.clock import Clock, sleep_or_event
from bridge.redact import describe

log = structlog.get_logger("bridge.supervise")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 60.0  # running this long without a crash: the failure count starts again
FAILING_AFTER = 2  # crashes in a row after which /readyz names the component


def backoff_s(failures: int, rand: float) -> float:
    """The wait before restart number `failures` (1-based): doubling from 1 s, capped at a
    minute, jittered down to half (`rand` in [0, 1))."""
    base = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** min(max(failures - 1, 0), 16))
    return base * (0.5 + rand / 2)


class Supervisor:
    """Runs components until `stop` is set. A component is a coroutine function that returns
    once `stop` is set; if it raises instead (or returns early), the error is logged with its
    traceback, counted, and the component starts again after `backoff_s`."""

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        clock: Clock,
        failing: MutableMapping[str, str],
        on_restart: Callable[[str], None] = lambda _name: None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._stop = stop
        self._clock = clock
        self.failing = failing  # name -> last error, while it keeps failing
        self._on_restart = on_restart
        self._rand = rand

    async def run(self, name: str, component: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while not self._stop.is_set():
            task = asyncio.ensure_future(component())
            healthy = await self._watch(task)
            if healthy:
                failures = 0
                self.failing.pop(name, None)
            try:
                await task  # cancelling this supervisor cancels the component too
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled: the component went with us
                # the component was cancelled by something else (or raised the error
                # itself): gone as surely as after a crash, so it starts again
                failures += 1
                error = "cancelled while the service was running"
            except Exception as exc:
                failures += 1
                error = describe(exc)
            else:
                if self._stop.is_set():
                    return
                failures += 1
                error = "returned while the service was running"
            if failures >= FAILING_AFTER:
                self.failing[name] = error
            delay = backoff_s(failures, self._rand())
            log.error(
                "component crashed, restarting",
                component=name,
                error=error,
                failures=failures,
                restart_in_s=round(delay, 2),
                exc_info=None if task.cancelled() else task.exception(),
            )
            self._on_restart(name)
            await sleep_or_event(self._clock, delay, self._stop)

    async def _watch(self, task: asyncio.Future[None]) -> bool:
        """Wait for `task` to end; True if it first ran `HEALTHY_AFTER_S` (then it is
        marked healthy and this returns without waiting further)."""
        timer = asyncio.ensure_future(self._clock.sleep(HEALTHY_AFTER_S))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            timer.cancel()
        return not task.done()
