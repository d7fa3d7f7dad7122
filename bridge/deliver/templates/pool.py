"""Body templates render in worker processes (`worker.serve`), never in the bridge's own,
one per template subscriber (`Pools`): a render that overruns `RENDER_LIMIT_S` (a template
loop, or one long step in C) has its process killed, and no other subscriber waits for it.

A render waits, with no time limit, for a free worker, sends it the request, and waits for
the answer at most `RENDER_LIMIT_S` from then. The event loop never blocks on a worker: it
learns of an answer (or of a worker's end) from `loop.add_reader`. Workers start on the
first render (a bridge without template subscribers starts none) and again after one was
killed; `close()` ends them (the service at stop, `check` after its renders, `atexit` after
a crash). A worker whose parent is gone ends on the end of its pipe.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import multiprocessing
import os
import sys
import types
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bridge.deliver.templates.sandbox import TemplateError
from bridge.deliver.templates.worker import READY, serve

RENDER_LIMIT_S = 1.0
POOL_SIZE = max(2, min(4, os.cpu_count() or 1))
START_LIMIT_S = 30.0  # a new worker's start (Python and Jinja2 loaded): no render's time
REAP_LIMIT_S = 5.0  # for a killed worker to be gone
BACKSTOP_S = 10.0  # a worker ends itself when one render takes this long (its parent gone)
_SPAWN = multiprocessing.get_context("spawn")  # not fork: this process runs a loop and threads


def timeout_error(limit_s: float) -> TemplateError:
    return TemplateError(f"template: rendering took longer than {limit_s:g} s")


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def readable(fd: int, timeout_s: float) -> bool:
    """True once `fd` has data or its end, False after `timeout_s`; the loop runs meanwhile."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _wake, ready)
    try:
        await asyncio.wait_for(ready, timeout_s)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """`spawn` runs the parent's main script again in the child, unless it was started as a
    module (`python -m bridge`); for the `munsit-bridge` script that is the whole bridge. A
    worker needs none of it, so the script is out of sight while a worker starts."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self._reaping: asyncio.Future[None] | None = None

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()

    async def reap(self) -> None:
        """Once it has ended (killed before), without blocking the loop; one watcher of its
        end however many wait for it."""
        if self._reaping is None:
            self._reaping = asyncio.ensure_future(self._wait_end())
        await asyncio.shield(self._reaping)

    async def _wait_end(self) -> None:
        if await readable(self.process.sentinel, REAP_LIMIT_S):
            self.process.join()  # it has ended: no wait

    def gone(self) -> str:
        code = self.process.exitcode
        return "template: the renderer stopped" + (f" (exit code {code})" if code else "")


class RenderPool:
    """At most `size` worker processes; each renders one template at a time."""

    def __init__(self, size: int = POOL_SIZE, limit_s: float = RENDER_LIMIT_S) -> None:
        self.size = size
        self.limit_s = limit_s
        self._live: set[_Worker] = set()  # started and not yet ended
        self._dropped: set[_Worker] = set()  # killed, not reaped yet
        self._idle: list[_Worker] = []
        self._free = size  # slots: a render holds one from its queue wait's end to its answer
        self._waiters: deque[asyncio.Future[None]] = deque()

    def pids(self) -> list[int]:
        return sorted(w.process.pid for w in self._live if w.process.pid is not None)

    async def render(self, source: str, content_type: str, context: dict[str, Any]) -> str:
        """The body `source` renders to (see `sandbox.render`); `TemplateError` otherwise."""
        request = json.dumps([source, content_type, context]).encode()
        await self._slot()
        try:
            reply = await self._ask(await self._take(), request)
        finally:
            self._release()
        if "error" in reply:
            raise TemplateError(str(reply["error"]))
        return str(reply["text"])

    async def _slot(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def _release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    async def _take(self) -> _Worker:
        """An idle worker, else a new one (one that died while idle is replaced)."""
        while self._idle:
            worker = self._idle.pop()
            if worker.process.is_alive():
                return worker
            await self._end(worker)
        return await self._start()

    async def _start(self) -> _Worker:
        parent, child = _SPAWN.Pipe()
        process = _SPAWN.Process(
            target=serve, args=(child, BACKSTOP_S), name="bridge-template", daemon=True
        )
        with _main_script_hidden():
            process.start()
        child.close()
        worker = _Worker(process, parent)
        self._live.add(worker)
        try:
            if await readable(parent.fileno(), START_LIMIT_S) and parent.recv_bytes() == READY:
                return worker
        except (EOFError, OSError):
            pass
        except asyncio.CancelledError:
            self._drop(worker)
            raise
        await self._end(worker)
        raise TemplateError(f"{worker.gone()} before its first render")

    async def _ask(self, worker: _Worker, request: bytes) -> dict[str, Any]:
        """Send, then wait for the answer; on a time-out the worker is killed."""
        try:
            worker.conn.send_bytes(request)
            if not await readable(worker.conn.fileno(), self.limit_s):
                await self._end(worker)
                raise timeout_error(self.limit_s)
            reply: dict[str, Any] = json.loads(worker.conn.recv_bytes())
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except (EOFError, OSError):
            await self._end(worker)
            raise TemplateError(worker.gone()) from None
        except ValueError:  # not the worker's JSON answer (UnicodeDecodeError is one)
            await self._end(worker)
            raise TemplateError("template: the renderer answered garbage") from None
        except asyncio.CancelledError:
            self._drop(worker)  # its answer would be the next render's
            raise
        if worker in self._live:
            self._idle.append(worker)
        return reply

    def _drop(self, worker: _Worker) -> None:
        """Kill `worker` and forget it; reaped by `_end`, else by `close` (`_dropped`)."""
        worker.kill()
        worker.conn.close()
        self._live.discard(worker)
        self._dropped.add(worker)

    async def _end(self, worker: _Worker) -> None:
        """Kill `worker` and reap it, without blocking the loop."""
        self._drop(worker)
        await worker.reap()
        self._dropped.discard(worker)

    async def close(self) -> None:
        """End every worker: an idle one at once, a rendering one with its render failed
        (its render sees the end of the pipe)."""
        workers, idle, self._idle = [*self._live, *self._dropped], self._idle, []
        for worker in workers:
            worker.kill()
        for worker in idle:
            self._drop(worker)
        await asyncio.gather(*(w.reap() for w in workers))
        self._dropped.clear()

    def close_now(self) -> None:
        """`close` without a loop (at exit)."""
        workers, self._idle = list(self._live), []
        for worker in workers:
            self._drop(worker)
            worker.process.join(REAP_LIMIT_S)


class Pools:
    """A worker of its own for each template subscriber (`key`), started on its first
    render: a template that overruns delays the bodies of its own subscriber, never
    another's (CONTRACT §4: a slow subscriber never delays others)."""

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self._pools: dict[str, RenderPool] = {}

    def pool(self, key: str) -> RenderPool:
        found = self._pools.get(key)
        if found is None:
            found = self._pools[key] = RenderPool(self.size)
        return found

    async def render(
        self, key: str, source: str, content_type: str, context: dict[str, Any]
    ) -> str:
        return await self.pool(key).render(source, content_type, context)

    def pids(self) -> list[int]:
        return sorted(pid for p in self._pools.values() for pid in p.pids())

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._pools.values()))

    def close_now(self) -> None:
        for pool in self._pools.values():
            pool.close_now()


POOL = Pools()
atexit.register(POOL.close_now)


async def close() -> None:
    """End the template workers (they start again on the next render)."""
    await POOL.close()
