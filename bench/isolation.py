"""Isolation: p99 delivery latency (event stored -> delivered) of a healthy subscriber, with
and without a second subscriber whose receiver hangs until the timeout, in the same run.
Target: ratio <= 1.5."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import percentile, record
from bench.harness import completed_events, free_ports, receiver_process, settings
from bridge.deliver.dispatcher import Sent
from bridge.logging import configure
from bridge.models import DeliveryState
from bridge.service import Service
from bridge.store.base import ScanCommit

TIMEOUT_S = 2.0


async def latencies(urls: list[str], events: int, rate_per_s: float, db: Path) -> list[float]:
    """Latency of every delivery to the first subscriber, events trickled in at a steady rate
    and each sent to every subscriber."""
    cfg = settings(db, urls, concurrency_per_subscriber=4, timeout_s=TIMEOUT_S)
    enqueued: dict[str, float] = {}
    seen: list[float] = []
    done = asyncio.Event()

    def sent(s: Sent) -> None:
        if s.delivery.subscriber_id == "rx0" and s.state is DeliveryState.DELIVERED:
            seen.append(time.perf_counter() - enqueued[s.delivery.event.id])
            if len(seen) == events:
                done.set()

    async with Service(cfg, on_sent=sent) as svc:
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        subs = [s.id for s in cfg.subscribers]
        for event in completed_events(events, time.time()):
            enqueued[event.id] = time.perf_counter()
            await svc.store.commit_scan(
                ScanCommit(states=[], events=[(event, subs)], now=time.time())
            )
            svc.dispatcher.wake()
            await asyncio.sleep(1 / rate_per_s)
        await asyncio.wait_for(done.wait(), 120)
        stop.set()
        await runner
    return seen


async def main_async(events: int, rate: float) -> None:
    healthy_port, hanging_port = free_ports(2)
    healthy = f"http://127.0.0.1:{healthy_port}/hook"
    hanging = f"http://127.0.0.1:{hanging_port}/hook"
    with (
        receiver_process([healthy_port]),
        receiver_process([hanging_port], "--hang"),
        tempfile.TemporaryDirectory() as tmp,
    ):
        alone = await latencies([healthy], events, rate, Path(tmp) / "a.db")
        shared = await latencies([healthy, hanging], events, rate, Path(tmp) / "b.db")
    p99_alone, p99_shared = percentile(alone, 99) * 1000, percentile(shared, 99) * 1000
    ratio = p99_shared / p99_alone
    record(
        "Isolation (bench/isolation.py)",
        [
            f"- {events} events at {rate:g}/s; the second subscriber's receiver never answers "
            f"(timeout {TIMEOUT_S:g} s, 4 slots)",
            f"- healthy subscriber alone: p50 {percentile(alone, 50) * 1000:.1f} ms, "
            f"p99 {p99_alone:.1f} ms",
            f"- next to the hanging one: p50 {percentile(shared, 50) * 1000:.1f} ms, "
            f"p99 {p99_shared:.1f} ms",
            f"- p99 ratio **{ratio:.2f}** ({'meets' if ratio <= 1.5 else 'MISSES'} the 1.5 target)",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    configure("warning", "json")
    asyncio.run(main_async(args.events, args.rate))


if __name__ == "__main__":
    main()
