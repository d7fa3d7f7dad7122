"""Memory: peak RSS of a real `munsit-bridge run` process that baselines and then tracks 0,
100k and 1M records (served by a synthetic Munsit list in this process), measured side by
side. Target: <= 150 MB at 1M records.

Then (`--no-poison` to skip) peak RSS of a process whose every list answer is 200 MB (the
simulator streams it), refused at `upstream.max_response_bytes`, beside the same process on a
normal list. Target: < 200 MB."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.common import record
from bench.harness import SECRET
from bridge.clock import SystemClock
from bridge.models import iso_utc
from bridge.sim.simulator import Simulator

BASE_S = 1_790_000_000.0
MB = 1024 * 1024
POISON_TARGET_MB = 200


def synthetic(i: int) -> dict[str, Any]:
    stamp = iso_utc(BASE_S + i / 1000)  # 1 ms apart, newest last
    rid = f"00000000-0000-4000-8000-{i:012d}"
    return {
        "id": rid,
        "user_id": "bench",
        "transaction_id": None,
        "audio_url": f"https://cdn.munsit.com/denoised/{rid}.wav",
        "original_audio_url": f"https://cdn.munsit.com/uploads/{rid}.wav",
        "file_name": f"job-{i}.wav",
        "audio_duration": 61.5,
        "audio_size": 1_968_044,
        "audio_format": "wav",
        "source_type": "audio",
        "status": "success",
        "error": None,
        "created_at": stamp,
        "updated_at": stamp,
    }


def list_app(size: int) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", "50"))
        top = size - 1 - offset
        rows = [synthetic(i) for i in range(top, max(-1, top - limit), -1)]
        return web.Response(text=json.dumps(rows), content_type="application/json")

    app = web.Application()
    app.router.add_get("/denoise", handle)
    return app


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def config_text(upstream_url: str, tmp: str) -> str:
    return f"""
[upstream]
base_url = "{upstream_url}"
api_key = "bench"
poll_interval_s = 0.05
idle_poll_interval_s = 0.05
progress_stream = false
[store]
url = "sqlite:///{Path(tmp) / "s.db"}"
[admin]
enabled = false
[log]
format = "json"
[[subscribers]]
id = "rx"
url = "https://example.com/hook"
secret = "{SECRET}"
"""


async def measure(size: int) -> tuple[float, int]:
    """Peak RSS after the baseline and 3 idle polls, and how many polls the baseline took."""
    async with TestServer(list_app(size), host="127.0.0.1") as upstream:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "bridge.toml"
            config.write_text(config_text(str(upstream.make_url("")).rstrip("/"), tmp))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(config),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            polls, baseline_polls, idle, done = 0, 0, 0, False
            try:
                while idle < 3:
                    line = await proc.stdout.readline()
                    assert line, "the service ended early"
                    event = json.loads(line)["event"]
                    if event in ("poll", "baseline recorded"):
                        polls += 1
                        if done:
                            idle += 1
                    if not done and (
                        event == "sweep finished"
                        or (event == "baseline recorded" and size <= 200 * 50)
                    ):
                        done, baseline_polls = True, polls
                peak = peak_rss_mb(proc.pid)
            finally:
                proc.terminate()
                await proc.wait()
    return peak, baseline_polls


async def measure_poisoned(answer_mb: int, polls: int = 5) -> tuple[float, int, str]:
    """Peak RSS of a bridge after `polls` list answers of `answer_mb` MB each (0: a normal
    answer of 1,000 records), how many of those polls failed, and the last error."""
    sim = Simulator(api_key="bench", clock=SystemClock())
    sim.add_records(1_000)
    if answer_mb:
        item = json.dumps(synthetic(0)).encode() + b","
        body = [(b"[", 1), (item, answer_mb * MB // len(item)), (b"{}]", 1)]
        sim.poison(body, count=10_000)
    async with TestServer(sim.make_app(), host="127.0.0.1") as upstream:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "bridge.toml"
            config.write_text(config_text(str(upstream.make_url("")).rstrip("/"), tmp))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(config),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            done, failed, error = 0, 0, ""
            try:
                while done < polls:
                    line = await proc.stdout.readline()
                    assert line, "the service ended early"
                    entry = json.loads(line)
                    if entry["event"].startswith("poll failed"):
                        done, failed, error = done + 1, failed + 1, entry.get("error", "")
                    elif entry["event"] in ("poll", "baseline recorded"):
                        done += 1
                peak = peak_rss_mb(proc.pid)
            finally:
                proc.terminate()
                await proc.wait()
    return peak, failed, error


async def poison_lines() -> list[str]:
    lines = [
        "Every list answer streamed by the simulator; 5 polls each; default"
        " `upstream.max_response_bytes` (16 MiB)",
        "",
        "| list answer | polls refused | peak RSS | target |",
        "|---|---|---|---|",
    ]
    errors = []
    for answer_mb in (0, 200):
        peak, failed, error = await measure_poisoned(answer_mb)
        what = f"{answer_mb} MB" if answer_mb else "normal (1,000 records, page 50)"
        verdict = "meets" if peak < POISON_TARGET_MB else "MISSES"
        lines.append(f"| {what} | {failed} of 5 | {peak:.0f} MB | {verdict} < 200 MB |")
        errors += [f"{what}: `{error}`"] if error else []
    return [*lines, "", *(f"- refused: {e}" for e in errors)]


async def main_async(sizes: list[int], poison: bool) -> None:
    if sizes:
        lines = ["| records tracked | baseline polls | peak RSS | target |", "|---|---|---|---|"]
        for size in sizes:
            peak, polls = await measure(size)
            target = (
                ("meets" if peak <= 150 else "MISSES") + " ≤ 150 MB" if size >= 1_000_000 else ""
            )
            lines.append(f"| {size:,} | {polls} | {peak:.0f} MB | {target} |")
        record("Memory (bench/memory.py)", lines)
    if poison:
        record("Memory, 200 MB list answers (bench/memory.py --poison)", await poison_lines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[0, 100_000, 1_000_000])
    parser.add_argument(
        "--poison",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure 200 MB list answers too (`--sizes` with no value: only those)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.sizes, args.poison))


if __name__ == "__main__":
    main()
