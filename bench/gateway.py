"""Submit-to-callback latency through the gateway, at a 30 s poll interval: jobs submitted
through the bridge with a `callback_url` (the bridge opens each job's progress stream at
once) against jobs submitted straight to Munsit with a subscriber listening (the baseline:
the bridge learns of those at its next poll), in the same run, on the simulator.

Latency is from the simulator finishing a job to its webhook at the receiver. Target: the
gateway's callbacks p99 < 1 s whatever the poll interval."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
import wave
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.common import percentile, record
from bench.harness import SECRET, settings
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.detect.poller import PollResult
from bridge.logging import configure
from bridge.service import Service
from bridge.sim.simulator import Simulator

TOKEN = "bench-client-token-0123456789"


def wav(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))
    return out.getvalue()


def with_gateway(base: Settings) -> Settings:
    data = base.model_dump(mode="python")
    data["upstream"]["api_key"] = "bench"
    for sub in data["subscribers"]:
        sub["secret"] = SECRET
        sub["events"] = ["denoise.completed"]
    data["gateway"] = {"enabled": True, "port": 0}
    data["clients"] = [{"id": "bench", "token": TOKEN, "secret": SECRET}]
    return Settings.model_validate(data)


async def run(
    jobs: int, processing_s: float, interval_s: float, db: Path
) -> tuple[list[float], list[float]]:
    sim = Simulator(api_key="bench", clock=SystemClock(), processing_s=processing_s)
    arrived: dict[tuple[str, str], float] = {}
    done, baseline_in = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        arrived[(request.path, body["data"]["id"])] = time.time()
        if sum(1 for k in arrived if k[0] == "/hook") == jobs:
            baseline_in.set()
        if len(arrived) == 3 * jobs:  # the subscriber gets every job, the callbacks theirs
            done.set()
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/{kind}", handle)
    polled = asyncio.Event()

    def on_poll(_: PollResult) -> None:
        polled.set()

    audio = wav()
    async with (
        TestServer(sim.make_app(), host="127.0.0.1") as upstream,
        TestServer(receiver, host="127.0.0.1") as rx,
        aiohttp.ClientSession() as http,
    ):
        cfg = with_gateway(
            settings(
                db,
                [str(rx.make_url("/hook"))],
                concurrency_per_subscriber=16,
                upstream_url=str(upstream.make_url("")).rstrip("/"),
                upstream={"poll_interval_s": interval_s, "idle_poll_interval_s": interval_s},
            )
        )
        async with Service(cfg, on_poll=on_poll) as svc:
            stop = asyncio.Event()
            runner = asyncio.create_task(svc.run(stop))
            await polled.wait()  # the baseline (of nothing)
            gateway = f"http://127.0.0.1:{svc.gateway_port}/api/v1/denoise"
            direct = str(upstream.make_url("/denoise"))
            finish: dict[tuple[str, str], float] = {}
            # the baseline first, on its own: the gateway's jobs would make the bridge scan
            # (and so find the baseline's jobs pending) early
            for path, url, key in (("/hook", direct, "bench"), ("/cb", gateway, TOKEN)):
                for i in range(jobs):
                    form = aiohttp.FormData()
                    if path == "/cb":
                        form.add_field("callback_url", str(rx.make_url("/cb")))
                        form.add_field("callback_events", "denoise.completed")
                    form.add_field("audio", audio, filename=f"job{i}.wav", content_type="audio/wav")
                    async with http.post(url, data=form, headers={"x-api-key": key}) as resp:
                        answer = await resp.json()
                        assert resp.status == 200, answer
                    rid = answer["denoiseId"]
                    finish_ms = sim._jobs[rid].finish_ms  # the simulator's own plan
                    assert finish_ms is not None
                    finish[(path, rid)] = finish_ms / 1000
                    await asyncio.sleep(interval_s / jobs)  # spread over a poll interval
                if path == "/hook":  # this round's webhooks all in before the next
                    await asyncio.wait_for(baseline_in.wait(), processing_s + 3 * interval_s)
            await asyncio.wait_for(done.wait(), processing_s + 3 * interval_s + 60)
            stop.set()
            await runner
    gate = [arrived[k] - t for k, t in finish.items() if k[0] == "/cb"]
    base = [arrived[k] - t for k, t in finish.items() if k[0] == "/hook"]
    return gate, base


async def main_async(jobs: int, processing_s: float, interval_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gate, base = await run(jobs, processing_s, interval_s, Path(tmp) / "bridge.db")
    g50, g99, b50, b99 = (percentile(v, p) for v in (gate, base) for p in (50, 99))
    lines = [
        f"{jobs} jobs straight to Munsit, then {jobs} through the gateway, each round spread"
        f" over a poll interval of {interval_s:g} s, each job done {processing_s:g} s after"
        " submission; from the simulator finishing a job to its webhook at the receiver",
        "",
        "| submitted | delivered as | p50 | p99 | target |",
        "|---|---|---|---|---|",
        f"| through the gateway | its callback | {g50 * 1000:,.0f} ms | {g99 * 1000:,.0f} ms |"
        f" {'meets' if g99 < 1 else 'MISSES'} p99 < 1 s |",
        f"| straight to Munsit (baseline) | a subscriber's webhook | {b50 * 1000:,.0f} ms |"
        f" {b99 * 1000:,.0f} ms | — |",
        "",
        f"The gateway's p99 is {b99 / g99:,.0f} times shorter than the baseline's in the same run.",
    ]
    record("Gateway: submit to callback (bench/gateway.py)", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--processing-s", type=float, default=20.0)
    parser.add_argument("--interval-s", type=float, default=30.0)
    args = parser.parse_args()
    configure("warning", "json")
    asyncio.run(main_async(args.jobs, args.processing_s, args.interval_s))


if __name__ == "__main__":
    main()
