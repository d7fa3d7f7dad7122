"""Poll cost: list requests and bytes per steady-state (idle) poll at 1k, 10k and 100k records
in the simulator: the probe the bridge reads, the whole first page it read before the probe,
and a naive full scan of the same list, all in the same run.
Target: 1 request and at most 2 KB per idle poll at every size."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.common import record
from bench.harness import settings
from bridge.clock import SystemClock
from bridge.detect.scan import scan
from bridge.logging import configure
from bridge.service import Service
from bridge.sim.simulator import Simulator
from bridge.store.base import SWEEP

IDLE_POLLS = 5
TARGET_BYTES = 2048


class Meter:
    """Counts list requests and response bytes at the simulator."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/denoise" and isinstance(response, web.Response):
            self.requests += 1
            self.bytes += len(response.body or b"") if isinstance(response.body, bytes) else 0


async def measure(size: int, page_size: int) -> str:
    sim = Simulator(api_key="bench", clock=SystemClock())
    sim.add_records(size, status="success")
    meter = Meter()
    app = sim.make_app()
    app.on_response_prepare.append(meter.on_prepare)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = settings(
                Path(tmp) / "s.db",
                ["http://127.0.0.1:9/hook"],
                concurrency_per_subscriber=1,
                upstream_url=url,
                upstream={"page_size": page_size, "progress_stream": False},
            )
            async with Service(cfg) as svc:
                baseline_polls = 0
                while True:  # the baseline, over as many polls as the page budget needs
                    await svc.poller.tick()
                    baseline_polls += 1
                    if await svc.store.get_meta(SWEEP) is None:
                        break
                meter.requests = meter.bytes = 0
                for _ in range(IDLE_POLLS):  # the bridge's idle poll: the probe
                    await svc.poller.tick()
                idle_requests = meter.requests / IDLE_POLLS
                idle_bytes = meter.bytes / IDLE_POLLS

                meter.requests = meter.bytes = 0
                for _ in range(IDLE_POLLS):  # the same scan without the probe: a page
                    await scan(
                        svc.client,
                        svc.store,
                        page_size=page_size,
                        max_pages=cfg.upstream.max_pages_per_scan,
                        now=0.0,
                        probe=False,
                    )
                page_requests = meter.requests / IDLE_POLLS
                page_bytes = meter.bytes / IDLE_POLLS

                meter.requests = meter.bytes = 0
                offset = 0
                while await svc.client.list_page(offset, page_size):  # the naive full scan
                    offset += page_size
                naive_bytes = meter.bytes
    ok = idle_requests == 1 and idle_bytes <= TARGET_BYTES
    return (
        f"| {size:,} | {page_requests:g} | {page_bytes:,.0f} | {idle_requests:g} | "
        f"{idle_bytes:,.0f} | {page_bytes / idle_bytes:,.0f}x | {naive_bytes:,.0f} | "
        f"{naive_bytes / idle_bytes:,.0f}x | {baseline_polls} | {'meets' if ok else 'MISSES'} |"
    )


async def main_async(sizes: list[int], page_size: int) -> None:
    lines = [
        f"page_size {page_size}; idle = {IDLE_POLLS} polls after the baseline, nothing changed;"
        " before = the same scan without the probe (its first page)",
        "",
        "| records | before: requests / idle poll | before: bytes / idle poll "
        "| probe: requests / idle poll | probe: bytes / idle poll | before ÷ probe bytes "
        "| naive full scan bytes | naive ÷ probe bytes | baseline polls "
        "| target (1 request, ≤ 2 KB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        lines.append(await measure(size, page_size))
    record("Poll cost (bench/poll_cost.py)", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--page-size", type=int, default=50)
    args = parser.parse_args()
    configure("warning", "json")
    asyncio.run(main_async(args.sizes, args.page_size))


if __name__ == "__main__":
    main()
