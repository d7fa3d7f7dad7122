"""Supervision: a crashing component restarts with capped backoff while the others go on."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from bridge.sim.clock import FakeClock
from bridge.supervise import HEALTHY_AFTER_S, MAX_BACKOFF_S, Supervisor, backoff_s


@pytest.mark.parametrize(
    ("failures", "rand", "expected"),
    [(1, 0.0, 0.5), (1, 0.999999, 1.0), (2, 0.0, 1.0), (3, 0.0, 2.0), (7, 0.0, 30.0)],
)
def test_backoff_doubles_from_one_second(failures: int, rand: float, expected: float) -> None:
    assert backoff_s(failures, rand) == pytest.approx(expected, rel=1e-5)


def test_backoff_is_capped_and_never_overflows() -> None:
    assert backoff_s(10**6, 0.999999) == pytest.approx(MAX_BACKOFF_S, rel=1e-5)
    assert backoff_s(1_000, 0.0) == MAX_BACKOFF_S / 2


class Flaky:
    """A component that crashes `crashes` times, then runs until stopped."""

    def __init__(self, stop: asyncio.Event, crashes: int) -> None:
        self.stop = stop
        self.crashes = crashes
        self.starts = 0

    async def __call__(self) -> None:
        self.starts += 1
        if self.starts <= self.crashes:
            raise RuntimeError(f"boom {self.starts} at http://hooks.example/T0KEN/x?sig=Q")
        await self.stop.wait()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_crash_restarts_only_that_component(clock: FakeClock) -> None:
    stop = asyncio.Event()
    restarts: list[str] = []
    failing: dict[str, str] = {}
    sup = Supervisor(stop, clock=clock, failing=failing, on_restart=restarts.append, rand=lambda: 0)
    flaky, steady = Flaky(stop, crashes=3), Flaky(stop, crashes=0)
    with capture_logs() as logs:
        tasks = [
            asyncio.create_task(sup.run("poller", flaky)),
            asyncio.create_task(sup.run("dispatcher", steady)),
        ]
        await settle()
        assert flaky.starts == 1 and restarts == ["poller"] and failing == {}
        await clock.advance(0.5)  # first wait: 1 s jittered down to half
        assert flaky.starts == 2 and restarts == ["poller", "poller"]
        # crashing again and again: /readyz gets its name and last error, URL redacted
        assert failing == {"poller": "RuntimeError: boom 2 at http://hooks.example"}
        await clock.advance(1.0)
        assert flaky.starts == 3
        await clock.advance(2.0)
        assert flaky.starts == 4 and restarts == ["poller"] * 3
        assert steady.starts == 1  # the other component never stopped
        stop.set()
        await asyncio.gather(*tasks)
    crashes = [entry for entry in logs if entry["event"] == "component crashed, restarting"]
    assert [entry["component"] for entry in crashes] == ["poller"] * 3
    assert all(isinstance(entry["exc_info"], RuntimeError) for entry in crashes)  # traceback
    assert [entry["restart_in_s"] for entry in crashes] == [0.5, 1.0, 2.0]


async def test_running_a_while_clears_the_failing_mark(clock: FakeClock) -> None:
    stop = asyncio.Event()
    failing: dict[str, str] = {}
    sup = Supervisor(stop, clock=clock, failing=failing, rand=lambda: 0)
    flaky = Flaky(stop, crashes=2)
    task = asyncio.create_task(sup.run("poller", flaky))
    await settle()
    await clock.advance(0.5)
    await clock.advance(1.0)
    assert "poller" in failing and flaky.starts == 3
    await clock.advance(HEALTHY_AFTER_S - 1)
    assert "poller" in failing  # not yet
    await clock.advance(1)
    assert failing == {}
    stop.set()
    await task


async def test_a_component_returning_early_is_restarted(clock: FakeClock) -> None:
    stop = asyncio.Event()
    starts = 0

    async def quits() -> None:
        nonlocal starts
        starts += 1

    restarts: list[str] = []
    sup = Supervisor(stop, clock=clock, failing={}, on_restart=restarts.append, rand=lambda: 0)
    task = asyncio.create_task(sup.run("admin", quits))
    await settle()
    await clock.advance(0.5)
    assert starts == 2 and restarts == ["admin", "admin"]
    stop.set()
    await settle()
    assert task.done() and task.exception() is None


async def test_a_component_cancelled_by_something_else_is_restarted(clock: FakeClock) -> None:
    """A `CancelledError` the supervisor did not ask for (a future the component awaited was
    cancelled elsewhere) must not end the component for good."""
    stop = asyncio.Event()
    starts = 0

    async def awaits_a_cancelled_future() -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        await stop.wait()

    restarts: list[str] = []
    sup = Supervisor(stop, clock=clock, failing={}, on_restart=restarts.append, rand=lambda: 0)
    task = asyncio.create_task(sup.run("poller", awaits_a_cancelled_future))
    await settle()
    assert restarts == ["poller"] and not task.done()
    await clock.advance(0.5)
    assert starts == 2
    stop.set()
    await settle()
    assert task.done() and not task.cancelled()


async def test_cancelling_the_supervisor_cancels_the_component(clock: FakeClock) -> None:
    stop = asyncio.Event()
    started = asyncio.Event()

    async def runs() -> None:
        started.set()
        await asyncio.Event().wait()

    sup = Supervisor(stop, clock=clock, failing={})
    task = asyncio.create_task(sup.run("poller", runs))
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
