"""The template workers' pool under faults: a worker answering garbage is ended, not
reused or leaked; a slow subscriber's template delays no other subscriber's renders."""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection

import pytest

from bridge.deliver.templates import pool as pool_module
from bridge.deliver.templates.pool import Pools, RenderPool
from bridge.deliver.templates.sandbox import TemplateError
from bridge.deliver.templates.worker import READY

SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def garbage_serve(conn: Connection, backstop_s: float) -> None:
    """A worker that starts as a real one, then answers bytes that are not its JSON."""
    conn.send_bytes(READY)
    while True:
        try:
            conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(b"\xff not json")


async def test_a_worker_answering_garbage_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "serve", garbage_serve)
    pool = RenderPool(size=2)
    try:
        for _ in range(3):
            with pytest.raises(TemplateError, match="the renderer answered garbage"):
                await pool.render("x", "text/plain", {})
        assert pool.pids() == []  # each one ended, none left running beyond the pool's size
    finally:
        await pool.close()


async def test_a_slow_template_delays_only_its_own_subscriber() -> None:
    pools = Pools()
    try:
        for key in ("slow", "fast"):  # both workers started: only the renders race below
            assert await pools.render(key, "up", "text/plain", {}) == "up"
        slow = asyncio.ensure_future(pools.render("slow", SLOW, "text/plain", {}))
        fast = [await pools.render("fast", "ok {{ n }}", "text/plain", {"n": n}) for n in range(5)]
        assert fast == [f"ok {n}" for n in range(5)]
        assert not slow.done()  # still running out its time in a worker of its own
        with pytest.raises(TemplateError, match="rendering took longer than"):
            await slow
        assert len(pools.pool("fast").pids()) == 1
    finally:
        await pools.close()
    assert pools.pids() == []
