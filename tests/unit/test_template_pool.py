"""The worker processes templates render in: a render that overruns is killed without the
event loop missing a beat, the wait for a free worker is not part of the time limit, memory
is capped, and no worker outlives `close()` or its parent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.deliver.templates.pool import RENDER_LIMIT_S, RenderPool
from bridge.deliver.templates.sandbox import MAX_MEMORY_BYTES, TemplateError

CONTEXT = {"event": {"id": "evt_1", "data": {"id": "rec-1"}}}
# one step in C that holds the GIL for seconds: JSON of 60 million items
BLOCK = "{% set a = [0] * 1000000 %}{% set b = [a] * 60 %}{{ b | tojson | length }}"
SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# some 30 ms of template code
FAST = (
    "{% set ns = namespace(n=0) %}{% for i in range(3000) %}{% set ns.n = ns.n + i %}"
    "{% endfor %}{{ ns.n }} {{ event.id }}"
)
# a billion characters: a gigabyte, made in one step that no size cap sees
BOMB = "{{ ('\\t' * 1000).expandtabs(1000000) | length }}"


class Beat:
    """The longest gap between the event loop's beats (every 10 ms) while it runs."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.beats = 0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.beats += 1
            last = now


@contextlib.asynccontextmanager
async def heartbeat() -> AsyncIterator[Beat]:
    beat = Beat()
    task = asyncio.create_task(beat.run())
    try:
        yield beat
    finally:
        task.cancel()


@contextlib.asynccontextmanager
async def render_pool(size: int = 2, limit_s: float = RENDER_LIMIT_S) -> AsyncIterator[RenderPool]:
    pool = RenderPool(size=size, limit_s=limit_s)
    try:
        yield pool
    finally:
        await pool.close()


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_long_step_in_c_is_killed_while_the_loop_keeps_its_beat() -> None:
    async with render_pool(size=1) as pool:
        assert await pool.render("{{ event.id }}", "text/plain", CONTEXT) == "evt_1"
        [first] = pool.pids()
        async with heartbeat() as beat:
            started = time.monotonic()
            with pytest.raises(TemplateError) as info:
                await pool.render(BLOCK, "text/plain", CONTEXT)
            took = time.monotonic() - started
        assert str(info.value) == f"template: rendering took longer than {RENDER_LIMIT_S:g} s"
        assert RENDER_LIMIT_S <= took < RENDER_LIMIT_S + 1.0, took
        assert beat.beats > 50 and beat.longest < 0.3, beat.longest
        assert pool.pids() == [] and not exists(first)  # killed and reaped
        assert await pool.render("{{ event.id }}!", "text/plain", CONTEXT) == "evt_1!"
        [second] = pool.pids()
        assert second != first


async def test_the_wait_for_a_free_worker_is_not_part_of_the_limit() -> None:
    """A hundred renders of some 30 ms through one worker take seconds in all, each well
    under its limit of 0.25 s: every one succeeds."""
    async with render_pool(size=1, limit_s=0.25) as pool:
        started = time.monotonic()
        results = await asyncio.gather(
            *(pool.render(FAST, "text/plain", CONTEXT) for _ in range(100)),
            return_exceptions=True,
        )
        took = time.monotonic() - started
        assert results == ["4498500 evt_1"] * 100
        assert took > 2 * pool.limit_s  # many of them did wait longer than their limit
        assert len(pool.pids()) == 1


async def test_a_hundred_concurrent_renders_on_the_default_pool_size() -> None:
    async with render_pool() as pool, heartbeat() as beat:
        results = await asyncio.gather(
            *(pool.render(FAST, "text/plain", CONTEXT) for _ in range(100))
        )
        assert results == ["4498500 evt_1"] * 100
        assert len(pool.pids()) == pool.size
        assert beat.longest < 0.3, beat.longest


async def test_a_memory_bomb_is_a_template_error_and_the_worker_goes_on() -> None:
    async with render_pool(size=1) as pool:
        with pytest.raises(TemplateError) as info:
            await pool.render(BOMB, "text/plain", CONTEXT)
        assert str(info.value) == (
            f"template line 1: out of memory (a render may use {MAX_MEMORY_BYTES >> 20} MiB)"
        )
        assert await pool.render("{{ event.id }}", "text/plain", CONTEXT) == "evt_1"


async def test_workers_start_on_the_first_render_and_none_outlives_close() -> None:
    async with render_pool(size=2) as pool:
        assert pool.pids() == []  # nothing started before a render
        await asyncio.gather(*(pool.render(FAST, "text/plain", CONTEXT) for _ in range(2)))
        pids = pool.pids()
        assert len(pids) == 2 and os.getpid() not in pids
        await pool.close()
        assert pool.pids() == []
        assert not set(pids) & {p.pid for p in multiprocessing.active_children()}
        assert not any(exists(pid) for pid in pids)
        assert await pool.render("{{ event.id }}", "text/plain", CONTEXT) == "evt_1"  # again
        assert len(pool.pids()) == 1


def ended(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` ends within `timeout_s` (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(int(timeout_s * 1000)))
    finally:
        os.close(fd)


async def test_a_worker_that_died_while_idle_is_replaced() -> None:
    async with render_pool(size=1) as pool:
        await pool.render("", "text/plain", CONTEXT)
        [pid] = pool.pids()
        os.kill(pid, signal.SIGKILL)
        assert ended(pid, 5)
        assert await pool.render("{{ event.id }}", "text/plain", CONTEXT) == "evt_1"
        assert pid not in pool.pids()


async def test_close_ends_a_worker_in_the_middle_of_a_render() -> None:
    async with render_pool(size=1, limit_s=60) as pool:
        await pool.render("", "text/plain", CONTEXT)
        [pid] = pool.pids()
        render = asyncio.create_task(pool.render(SLOW, "text/plain", CONTEXT))
        await asyncio.sleep(0)  # the render takes the idle worker and sends its request
        started = time.monotonic()
        await pool.close()
        with pytest.raises(TemplateError) as info:
            await render
        assert str(info.value) == f"template: the renderer stopped (exit code -{signal.SIGKILL})"
        assert time.monotonic() - started < 2 and not exists(pid)


async def test_a_cancelled_render_does_not_leave_its_answer_to_the_next() -> None:
    async with render_pool(size=1) as pool:
        await pool.render("", "text/plain", CONTEXT)
        [pid] = pool.pids()
        render = asyncio.create_task(pool.render("stale", "text/plain", CONTEXT))
        await asyncio.sleep(0)  # the request is sent
        render.cancel()
        with pytest.raises(asyncio.CancelledError):
            await render
        assert await pool.render("{{ event.id }}", "text/plain", CONTEXT) == "evt_1"
        assert pid not in pool.pids()


def test_the_worker_module_loads_the_sandbox_and_nothing_of_the_bridge_besides() -> None:
    code = (
        "import sys, json, bridge.deliver.templates.worker\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('bridge'))))\n"
        "print(json.dumps(sorted(m for m in ('aiohttp', 'pydantic', 'structlog', 'sqlite3')"
        " if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    bridge, heavy = (json.loads(line) for line in out.stdout.splitlines())
    assert bridge == [
        "bridge", "bridge.deliver", "bridge.deliver.templates",
        "bridge.deliver.templates.sandbox", "bridge.deliver.templates.worker", "bridge.errors",
    ]  # fmt: skip
    assert heavy == []


@pytest.fixture
def main_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process as if started by a script (as `munsit-bridge` is): the script marks a
    file when it runs."""
    marker = tmp_path / "the script ran"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    yield marker
    assert sys.modules["__main__"] is main  # put back after each start


def test_a_worker_does_not_run_the_parents_main_script(main_script: Path) -> None:
    async def render() -> str:
        async with render_pool(size=1) as pool:
            return await pool.render("{{ event.id }}", "text/plain", CONTEXT)

    assert asyncio.run(render()) == "evt_1"
    assert not main_script.exists()


ORPHAN = """
import asyncio, os, sys
from bridge.deliver.templates import pool

pool.BACKSTOP_S = 2.0

async def main() -> None:
    renders = pool.RenderPool(size=1, limit_s=60)
    await renders.render("", "text/plain", {})
    if sys.argv[1] == "busy":
        asyncio.create_task(renders.render(sys.argv[2], "text/plain", {}))
        await asyncio.sleep(0)  # the request is sent
    with open(sys.argv[3], "w") as out:
        out.write(str(renders.pids()[0]))
    os._exit(0)  # gone at once: no close, no atexit

asyncio.run(main())
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_a_worker_ends_when_its_parent_is_gone(state: str, tmp_path: Path) -> None:
    """Idle, it sees the end of its pipe; busy with an endless render, its alarm ends it."""
    found = tmp_path / "pid"
    quiet = subprocess.DEVNULL  # no pipe the worker would hold open
    subprocess.run(
        [sys.executable, "-c", ORPHAN, state, SLOW, str(found)],
        stdout=quiet, stderr=quiet, check=True, timeout=60,
    )  # fmt: skip
    pid = int(found.read_text())
    try:
        assert ended(pid, 15), f"worker {pid} is still running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
