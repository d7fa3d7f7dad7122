"""Completion latency: job done upstream -> `denoise.completed` received, p50/p99 over 200
jobs, with progress streams on and off, at poll intervals of 5 s and 30 s, in the same run.
Target with streams on: p99 < 1 s at both intervals.

Jobs take `--processing-s` (40 s by default, longer than either interval, as real denoise jobs
of minutes of audio do): polling finds them pending, then the stream or a later poll sees
them finish."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.common import percentile, record
from bench.harness import settings
from bridge.clock import SystemClock
from bridge.detect.poller import PollResult
from bridge.logging import configure
from bridge.service import Service
from bridge.sim.simulator import Simulator


async def run_once(
    jobs: int, spread_s: float, processing_s: float, interval_s: float, streams: bool, db: Path
) -> list[float]:
    sim = Simulator(api_key="bench", clock=SystemClock(), processing_s=processing_s)
    arrived: dict[str, float] = {}
    all_in = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        arrived[body["data"]["id"]] = time.time()
        if len(arrived) == jobs:
            all_in.set()
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", handle)
    polled = asyncio.Event()

    def on_poll(_: PollResult) -> None:
        polled.set()

    async with (
        TestServer(sim.make_app(), host="127.0.0.1") as upstream,
        TestServer(receiver, host="127.0.0.1") as rx,
    ):
        cfg = settings(
            db,
            [str(rx.make_url("/hook"))],
            concurrency_per_subscriber=8,
            upstream_url=str(upstream.make_url("")).rstrip("/"),
            upstream={
                "poll_interval_s": interval_s,
                "idle_poll_interval_s": interval_s,
                "progress_stream": streams,
                "max_progress_streams": jobs,
            },
        )
        async with Service(cfg, on_poll=on_poll) as svc:
            stop = asyncio.Event()
            runner = asyncio.create_task(svc.run(stop))
            await polled.wait()  # the baseline (of nothing)
            finished_at: dict[str, float] = {}
            for _ in range(jobs):
                [job] = sim.add_records(1, status="pending")
                created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
                finished_at[job["id"]] = created.timestamp() + processing_s
                await asyncio.sleep(spread_s / jobs)
            await asyncio.wait_for(all_in.wait(), processing_s + 3 * interval_s + 60)
            stop.set()
            await runner
    return [arrived[rid] - finished_at[rid] for rid in finished_at]


async def main_async(jobs: int, spread_s: float, processing_s: float) -> None:
    lines = [
        f"{jobs} jobs created over {spread_s:g} s, each done {processing_s:g} s after creation",
        "",
        "| progress streams | poll interval | p50 | p99 | target |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for streams in (True, False):
            for interval in (5.0, 30.0):
                db = Path(tmp) / f"{streams}-{interval}.db"
                lat = await run_once(jobs, spread_s, processing_s, interval, streams, db)
                p50, p99 = percentile(lat, 50), percentile(lat, 99)
                target = ("meets" if p99 < 1 else "MISSES") + " p99 < 1 s" if streams else "—"
                lines.append(
                    f"| {'on' if streams else 'off'} | {interval:g} s | {p50 * 1000:,.0f} ms "
                    f"| {p99 * 1000:,.0f} ms | {target} |"
                )
    record("Completion latency (bench/latency.py)", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--spread-s", type=float, default=20.0)
    parser.add_argument("--processing-s", type=float, default=40.0)
    args = parser.parse_args()
    configure("warning", "json")
    asyncio.run(main_async(args.jobs, args.spread_s, args.processing_s))


if __name__ == "__main__":
    main()
