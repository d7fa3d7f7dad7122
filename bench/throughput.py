"""Delivery throughput: 5,000 signed, durably recorded events through the real dispatcher and
SQLite store, versus a raw aiohttp client POSTing the same bodies to the same receivers at the
same concurrency, in the same run. Target: bridge rate >= 0.5 x raw rate."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.common import record
from bench.harness import completed_events, free_ports, receiver_process, settings
from bridge.deliver.dispatcher import Sent
from bridge.deliver.formats import render
from bridge.deliver.routing import route
from bridge.logging import configure
from bridge.models import DeliveryState
from bridge.runtime import tune_gc
from bridge.service import Service
from bridge.store.base import ScanCommit

CONCURRENCY = 50


async def raw(urls: Sequence[str], bodies: Sequence[str], concurrency: int) -> float:
    """Deliveries per second of plain `session.post` calls, `concurrency` at once."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((urls[i % len(urls)], body))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                url, body = queue.get_nowait()
                async with session.post(
                    url, data=body.encode(), headers={"content-type": "application/json"}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - started)


async def bridge(urls: Sequence[str], total: int, concurrency: int, db: Path) -> float:
    """Deliveries per second of the dispatcher: claim, sign, POST, record each attempt."""
    cfg = settings(db, urls, concurrency_per_subscriber=concurrency // len(urls))
    done = asyncio.Event()
    delivered = 0

    def sent(s: Sent) -> None:
        nonlocal delivered
        if s.state is DeliveryState.DELIVERED:
            delivered += 1
            if delivered == total:
                done.set()

    async with Service(cfg, on_sent=sent) as svc:
        tune_gc()  # as `munsit-bridge run` does
        now = time.time()
        subs = [s.id for s in cfg.subscribers]
        events = completed_events(total, now)
        await svc.store.commit_scan(
            ScanCommit(
                states=[],
                events=[(e, [subs[i % len(subs)]]) for i, e in enumerate(events)],
                now=now,
            )
        )
        assert route(events[0].type, cfg.subscribers) == subs
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(svc.dispatcher.run(stop))
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    return total / elapsed


async def measure(receivers: int, total: int, rounds: int) -> list[str]:
    ports = free_ports(receivers)
    urls = [f"http://127.0.0.1:{p}/hook" for p in ports]
    bodies = [render(e, "standard") for e in completed_events(total, time.time())]
    raw_rates, bridge_rates = [], []
    with receiver_process(ports), tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            raw_rates.append(await raw(urls, bodies, CONCURRENCY))
            bridge_rates.append(await bridge(urls, total, CONCURRENCY, Path(tmp) / f"{n}.db"))
    best_raw, best_bridge = max(raw_rates), max(bridge_rates)
    ratio = best_bridge / best_raw
    verdict = "meets" if ratio >= 0.5 else "MISSES"
    return [
        f"- {total} events to {receivers} receiver(s), concurrency {CONCURRENCY}: "
        f"raw {best_raw:,.0f}/s, bridge {best_bridge:,.0f}/s, ratio **{ratio:.2f}** "
        f"({verdict} the 0.5 target; best of {rounds} rounds: raw "
        f"{', '.join(f'{r:,.0f}' for r in raw_rates)}; bridge "
        f"{', '.join(f'{r:,.0f}' for r in bridge_rates)})"
    ]


async def main_async(total: int, rounds: int) -> None:
    lines = await measure(1, total, rounds)
    lines += await measure(10, total, rounds)
    record("Delivery throughput (bench/throughput.py)", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with open(os.devnull, "w") as sink:
        configure("info", "json", sink, cache=True)  # production logging, written nowhere
        asyncio.run(main_async(args.events, args.rounds))


if __name__ == "__main__":
    main()
