"""Replicas on PostgreSQL: `munsit-bridge run` processes sharing one database, each
measured side by side with its baseline in the same run.

1. Delivery throughput with one and with three replicas (and three sharing the
   subscriber's cap of 64 leases), against a raw aiohttp client POSTing the same number of
   bodies, 64 at once, to the same receiver just before. Target: bridge >= 0.3 x raw.
   Rates are counted at the receiver, from the first webhook to the last.
2. Failover: three replicas, a 3 s lease, 1 s polls; `kill -9` of the leader (found by
   `/readyz` `role`), then the time until another replica's list request reaches the
   simulator (one simulator behind one port per replica tells who polls), next to the
   bound `leader_lease_s + poll interval`.
3. Completion latency with progress streams: a job done upstream -> its webhook at the
   receiver, p50/p99 over 50 jobs, three replicas on PostgreSQL (the deliveries a scan
   queues wake the others by NOTIFY) next to one replica on SQLite.

Each scenario gets a schema of its own on the server `--pg-url` names, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from aiohttp.test_utils import TestServer
from psycopg import sql

from bench.common import percentile, record
from bench.harness import SECRET, completed_events, free_ports
from bench.throughput import raw
from bridge.clock import SystemClock
from bridge.config_store import shown_store_url
from bridge.deliver.formats import render
from bridge.logging import configure
from bridge.sim.simulator import Simulator
from tests.pgdb import with_schema

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench"
CONCURRENCY = 64  # per replica: delivery.max_in_flight; the raw client's concurrency
# (replicas, the subscriber's max_concurrency): on a shared store max_concurrency caps the
# subscriber's leases across all replicas, those queued ahead and being recorded included,
# so 2 x 64 per replica leaves each its 64 requests in flight and as many queued, as one
# process on SQLite has; the last row is the cap at 64, shared by three
THROUGHPUT_CASES = ((1, 2 * CONCURRENCY), (3, 6 * CONCURRENCY), (3, CONCURRENCY))
TARGET = 0.3
LEASE_S = 3.0  # failover scenario
FAILOVER_POLL_S = 1.0
THROUGHPUT_POLL_S = 0.5
LATENCY_POLL_S = 5.0
READY_TIMEOUT_S = 60.0


# ---- the receiver, in a process of its own -----------------------------------------------


@dataclass
class Tally:
    count: int = 0
    first: float | None = None
    last: float | None = None
    duplicates: int = 0
    seen: set[str] = field(default_factory=set)
    arrivals: dict[str, float] = field(default_factory=dict)  # record id -> first arrival


async def serve_receiver(port: int) -> None:
    """200 `ok` to every POST on `/hook` (counted, first and last time, duplicate webhook
    ids) and `/hook-ids` (also the arrival of each record id); `GET /stats`, `POST /reset`."""
    tally = Tally()

    def count(request: web.Request, at: float) -> None:
        tally.count += 1
        tally.first = at if tally.first is None else tally.first
        tally.last = at
        wid = request.headers.get("webhook-id")
        if wid is not None:
            if wid in tally.seen:
                tally.duplicates += 1
            tally.seen.add(wid)

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        count(request, time.time())
        return web.Response(text="ok")

    async def hook_ids(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        at = time.time()
        count(request, at)
        tally.arrivals.setdefault(str(body["data"]["id"]), at)
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "count": tally.count,
                "first": tally.first,
                "last": tally.last,
                "duplicates": tally.duplicates,
                "arrivals": tally.arrivals,
            }
        )

    async def reset(request: web.Request) -> web.Response:
        nonlocal tally
        tally = Tally()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/hook-ids", hook_ids)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class Receiver:
    """The receiver process, seen from the benchmark."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def reset(self) -> None:
        async with self.session.post(self.url("/reset")) as resp:
            resp.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(self.url("/stats")) as resp:
            resp.raise_for_status()
            answer: dict[str, Any] = await resp.json()
            return answer

    async def wait_count(self, n: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await self.stats()
            if stats["count"] >= n:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"the receiver got {stats['count']} of {n} webhooks")
            await asyncio.sleep(0.05)


def rate(stats: dict[str, Any]) -> float:
    """Webhooks per second at the receiver, from the first to the last."""
    span = float(stats["last"]) - float(stats["first"])
    return (int(stats["count"]) - 1) / span if span > 0 else float("nan")


@contextmanager
def receiver_process(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.replicas", "--serve-receiver", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


# ---- the simulator, one port per replica ----------------------------------------------------


@dataclass
class Upstream:
    urls: list[str]
    lists: list[tuple[float, int]] = field(default_factory=list)  # (time, port index)


@asynccontextmanager
async def upstream(sim: Simulator, ports: int) -> AsyncIterator[Upstream]:
    """`sim` served on `ports` ports; each list request is noted with the index of its port."""
    up = Upstream([])

    def noting(index: int) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
        async def on_prepare(request: web.Request, _: web.StreamResponse) -> None:
            if request.method == "GET" and request.path == "/denoise":
                up.lists.append((time.time(), index))

        return on_prepare

    async with AsyncExitStack() as stack:
        for index in range(ports):
            app = sim.make_app()
            app.on_response_prepare.append(noting(index))
            server = await stack.enter_async_context(TestServer(app, host="127.0.0.1"))
            up.urls.append(str(server.make_url("")).rstrip("/"))
        yield up


# ---- replicas: `python -m bridge run` processes ----------------------------------------------


@dataclass
class Replica:
    name: str
    index: int  # which simulator port it polls
    admin_port: int
    log_path: Path
    proc: asyncio.subprocess.Process
    killed: bool = False  # by the benchmark, on purpose


@dataclass
class Setup:
    store_url: str
    upstream: Upstream
    receiver_url: str
    poll_s: float
    lease_s: float = 15.0
    streams: bool = False
    cap: int = CONCURRENCY  # the subscriber's max_concurrency


def config_text(setup: Setup, name: str, index: int, admin_port: int) -> str:
    q = json.dumps  # a JSON string is a TOML basic string
    return f"""[upstream]
base_url = {q(setup.upstream.urls[index])}
api_key = {q(API_KEY)}
poll_interval_s = {setup.poll_s}
idle_poll_interval_s = {setup.poll_s}
progress_stream = {str(setup.streams).lower()}
max_progress_streams = 64

[store]
url = {q(setup.store_url)}
replica_id = {q(name)}
leader_lease_s = {setup.lease_s}

[delivery]
allow_private_destinations = true
max_in_flight = {CONCURRENCY}

[admin]
host = "127.0.0.1"
port = {admin_port}

[log]
level = "info"
format = "json"

[[subscribers]]
id = "rx"
url = {q(setup.receiver_url)}
secret = {q(SECRET)}
max_concurrency = {setup.cap}
"""


def child_env() -> dict[str, str]:
    """This environment without the bridge's own variables (an unknown `BRIDGE_*`, such as
    `BRIDGE_BENCH_PG_URL`, is a configuration error)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("BRIDGE_") and k != "MUNSIT_API_KEY"
    }


class Cluster:
    """The replicas of one scenario; `stop()` ends those still running."""

    def __init__(self, session: aiohttp.ClientSession, tmp: Path, setup: Setup) -> None:
        self.session = session
        self.tmp = tmp
        self.setup = setup
        self.replicas: list[Replica] = []
        self._started = 0

    async def start(self, index: int) -> Replica:
        self._started += 1
        name = f"r{self._started}"
        [admin_port] = free_ports(1)
        config = self.tmp / f"{name}.toml"
        config.write_text(config_text(self.setup, name, index, admin_port))
        log_path = self.tmp / f"{name}.log"
        with log_path.open("w") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge",
                "run",
                "--config",
                str(config),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=ROOT,
            )
        replica = Replica(name, index, admin_port, log_path, proc)
        self.replicas.append(replica)
        return replica

    @property
    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc.returncode is None]

    async def readyz(self, replica: Replica) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{replica.admin_port}/readyz"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                body: dict[str, Any] = await resp.json()
                return {**body, "status": resp.status}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def wait_ready(self) -> dict[str, Replica]:
        """Until every running replica answers ready and one of them leads, having polled:
        the replicas by role."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for replica in self.replicas:
                if replica.proc.returncode is not None and not replica.killed:
                    self.fail(replica, f"ended early (exit status {replica.proc.returncode})")
            answers = [(r, await self.readyz(r)) for r in self.alive]
            leaders = [r for r, a in answers if a is not None and a.get("role") == "leader"]
            ready = all(a is not None and a["status"] == 200 for _, a in answers)
            if ready and len(leaders) == 1:
                return {"leader": leaders[0]}
            if time.monotonic() > deadline:
                shown = {r.name: a for r, a in answers}
                raise TimeoutError(f"replicas not ready in {READY_TIMEOUT_S:g} s: {shown}")
            await asyncio.sleep(0.1)

    async def delivered(self, replica: Replica) -> int:
        """`bridge_deliveries_total{result="delivered"}` of one replica."""
        url = f"http://127.0.0.1:{replica.admin_port}/metrics"
        async with self.session.get(url) as resp:
            text = await resp.text()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("bridge_deliveries_total{") and 'result="delivered"' in line
        )

    def fail(self, replica: Replica, what: str) -> None:
        tail = replica.log_path.read_text().splitlines()[-20:]
        raise RuntimeError(f"replica {replica.name} {what}; its log ends:\n" + "\n".join(tail))

    async def stop(self) -> None:
        for replica in self.alive:
            replica.proc.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            try:
                await asyncio.wait_for(replica.proc.wait(), 30)
            except TimeoutError:
                replica.proc.kill()
                await replica.proc.wait()


@asynccontextmanager
async def cluster(
    session: aiohttp.ClientSession, tmp: Path, setup: Setup, replicas: int
) -> AsyncIterator[Cluster]:
    group = Cluster(session, tmp, setup)
    try:
        for index in range(replicas):
            await group.start(index)
        yield group
    finally:
        await group.stop()


@contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A new schema on the server at `url`, dropped afterwards: a URL whose connections use it."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield with_schema(url, schema)
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# ---- 1. throughput -------------------------------------------------------------------------


@dataclass
class Round:
    rate: float  # webhooks per second at the receiver, first to last
    delivered: int  # distinct webhooks received
    shares: list[int]  # deliveries by replica, as their metrics count them
    duplicates: int


@dataclass
class Throughput:
    replicas: int
    cap: int
    raw: list[float] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)


async def throughput_round(
    session: aiohttp.ClientSession,
    rx: Receiver,
    pg_url: str,
    replicas: int,
    cap: int,
    events: int,
    deadline_s: float,
) -> Round:
    """`events` records appear at once upstream; the leader's next poll queues their
    deliveries and every replica sends. Whatever arrived by `deadline_s` counts."""
    sim = Simulator(api_key=API_KEY, clock=SystemClock())
    with tempfile.TemporaryDirectory() as tmp, pg_schema(pg_url) as url:
        async with upstream(sim, replicas) as up:
            setup = Setup(url, up, rx.url("/hook"), THROUGHPUT_POLL_S, cap=cap)
            async with cluster(session, Path(tmp), setup, replicas) as group:
                await group.wait_ready()  # the leader's baseline (of nothing) is done
                await rx.reset()
                sim.add_records(events, status="success")  # found by the next poll
                with suppress(TimeoutError):
                    await rx.wait_count(events, deadline_s)
                await asyncio.sleep(0.5)  # duplicates, if any, would arrive now
                stats = await rx.stats()
                shares = [await group.delivered(r) for r in group.replicas]
    count, duplicates = int(stats["count"]), int(stats["duplicates"])
    return Round(rate(stats), count - duplicates, shares, duplicates)


async def raw_round(rx: Receiver, bodies: Sequence[str]) -> float:
    await rx.reset()
    await raw([rx.url("/hook")], bodies, CONCURRENCY)
    return rate(await rx.stats())


async def measure_throughput(
    session: aiohttp.ClientSession,
    rx: Receiver,
    pg_url: str,
    events: int,
    rounds: int,
    deadline_s: float,
) -> list[Throughput]:
    bodies = [render(e, "standard") for e in completed_events(events, time.time())]
    results = []
    for replicas, cap in THROUGHPUT_CASES:
        row = Throughput(replicas, cap)
        for _ in range(rounds):
            row.raw.append(await raw_round(rx, bodies))
            row.rounds.append(
                await throughput_round(session, rx, pg_url, replicas, cap, events, deadline_s)
            )
        results.append(row)
    return results


# ---- 2. failover ---------------------------------------------------------------------------


@dataclass
class Failover:
    killed: str
    took_over: str
    seconds: float


async def measure_failover(
    session: aiohttp.ClientSession, rx: Receiver, pg_url: str, trials: int
) -> tuple[list[Failover], int]:
    """Kill -9 the leader `trials` times (a new replica replaces each); the failovers, and
    list requests seen from a replica other than the leader while the leader lived."""
    sim = Simulator(api_key=API_KEY, clock=SystemClock())
    found: list[Failover] = []
    stray = 0
    with tempfile.TemporaryDirectory() as tmp, pg_schema(pg_url) as url:
        async with upstream(sim, 3) as up:
            setup = Setup(url, up, rx.url("/hook"), FAILOVER_POLL_S, lease_s=LEASE_S)
            async with cluster(session, Path(tmp), setup, 3) as group:
                for _ in range(trials):
                    leader = (await group.wait_ready())["leader"]
                    since = time.time()
                    # a random moment between two renewals of the lease
                    await asyncio.sleep(random.uniform(1.0, 1.0 + LEASE_S / 3))
                    killed_at = time.time()
                    leader.killed = True
                    leader.proc.kill()  # SIGKILL: no resignation, the lease must run out
                    await leader.proc.wait()
                    stray += sum(
                        1 for t, i in up.lists if since <= t < killed_at and i != leader.index
                    )
                    deadline = time.monotonic() + 10 * (LEASE_S + FAILOVER_POLL_S)
                    while not (
                        hit := [(t, i) for t, i in up.lists if t > killed_at and i != leader.index]
                    ):
                        if time.monotonic() > deadline:
                            raise TimeoutError("no other replica polled after the leader died")
                        await asyncio.sleep(0.01)
                    at, index = hit[0]
                    heir = next(r for r in group.alive if r.index == index)
                    found.append(Failover(leader.name, heir.name, at - killed_at))
                    await group.start(leader.index)  # a new replica in its place
                await group.wait_ready()
    return found, stray


# ---- 3. completion latency -----------------------------------------------------------------


async def measure_latency(
    session: aiohttp.ClientSession,
    rx: Receiver,
    store_url: str,
    replicas: int,
    jobs: int,
    spread_s: float,
    processing_s: float,
) -> list[float]:
    sim = Simulator(api_key=API_KEY, clock=SystemClock(), processing_s=processing_s)
    with tempfile.TemporaryDirectory() as tmp:
        async with upstream(sim, replicas) as up:
            setup = Setup(store_url, up, rx.url("/hook-ids"), LATENCY_POLL_S, streams=True)
            async with cluster(session, Path(tmp), setup, replicas) as group:
                await group.wait_ready()
                await rx.reset()
                finished_at: dict[str, float] = {}
                for _ in range(jobs):
                    [job] = sim.add_records(1, status="pending")
                    created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
                    finished_at[job["id"]] = created.timestamp() + processing_s
                    await asyncio.sleep(spread_s / jobs)
                stats = await rx.wait_count(jobs, processing_s + 3 * LATENCY_POLL_S + 60)
    arrivals: dict[str, float] = stats["arrivals"]
    return [arrivals[rid] - finished_at[rid] for rid in finished_at]


# ---- the report ----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def report(
    pg_url: str,
    args: argparse.Namespace,
    flows: list[Throughput],
    failovers: list[Failover],
    stray: int,
    latencies: dict[str, list[float]],
) -> list[str]:
    bound = LEASE_S + FAILOVER_POLL_S
    lines = [
        f"PostgreSQL 15 at {shown_store_url(pg_url)} on the same machine; each scenario in a"
        " schema of its own, dropped afterwards. Replicas are `python -m bridge run` processes"
        " (their own config file, `store.replica_id`, admin port). **Shared, noisy machine**:"
        " the replicas, PostgreSQL, the receiver and the simulator all run on its 2 cores, so"
        " rates move from run to run; read the ratios, measured side by side.",
        "",
        f"Command: `.venv/bin/python -m bench.replicas` (`--events {args.events}"
        f" --rounds {args.rounds} --deadline-s {args.deadline_s:g}"
        f" --failovers {args.failovers} --jobs {args.jobs}`)",
        "",
        f"**Throughput**: {args.events:,} `denoise.completed` events found by one poll of the"
        " simulator, delivered to one receiver process; rate counted at the receiver from the"
        f" first webhook to the last (what arrived within {args.deadline_s:g} s of the records"
        f" appearing). `delivery.max_in_flight` {CONCURRENCY} per replica. The subscriber's"
        " `max_concurrency` is, on a shared store, a cap on its leases across all replicas"
        " (those queued ahead and being recorded included): 128 per replica leaves each its"
        f" {CONCURRENCY} requests in flight and as many queued, as one process on SQLite has;"
        " the last row shares a cap of 64 among three. Raw: an aiohttp client POSTing the"
        f" same number of bodies, {CONCURRENCY} at once, to the same receiver just before each"
        f" round. Best of {args.rounds} rounds.",
        "",
        "| replicas | max_concurrency | raw | bridge | ratio | deliveries by replica (best round)"
        " | duplicates | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in flows:
        best = max(row.rounds, key=lambda r: r.rate)
        best_raw = max(row.raw)
        ratio = best.rate / best_raw
        verdict = "meets" if ratio >= TARGET else "MISSES"
        got = "" if best.delivered >= args.events else f" ({best.delivered:,} of {args.events:,}"
        got += f" in {args.deadline_s:g} s)" if got else ""
        rounds = (
            f" (rounds: raw {', '.join(f'{r:,.0f}' for r in row.raw)};"
            f" bridge {', '.join(f'{r.rate:,.0f}' for r in row.rounds)})"
        )
        lines.append(
            f"| {row.replicas} | {row.cap} | {best_raw:,.0f}/s | {best.rate:,.0f}/s{got}{rounds}"
            f" | **{ratio:.2f}** | {' / '.join(f'{n:,}' for n in best.shares)}"
            f" | {sum(r.duplicates for r in row.rounds)} | {verdict} the {TARGET} x raw target |"
        )
    times = [f.seconds for f in failovers]
    lines += [
        "",
        f"**Failover**: three replicas, `store.leader_lease_s` {LEASE_S:g} s, poll interval"
        f" {FAILOVER_POLL_S:g} s; the leader (by `/readyz` `role`) killed with SIGKILL at a"
        " random moment between renewals, then the time until a list request from another"
        " replica reaches the simulator. A new replica replaces each one killed.",
        "",
        "| trial | killed | took over | failover | bound (lease + poll interval) |",
        "|---|---|---|---|---|",
    ]
    for n, f in enumerate(failovers, start=1):
        verdict = "within" if f.seconds <= bound else "OVER"
        lines.append(
            f"| {n} | {f.killed} | {f.took_over} | {f.seconds:.2f} s | {verdict} {bound:g} s |"
        )
    lines += [
        "",
        f"- failover: min {min(times):.2f} s, median {statistics.median(times):.2f} s,"
        f" max {max(times):.2f} s; list requests from a follower while the leader lived:"
        f" {stray}",
        "",
        f"**Completion latency**: {args.jobs} jobs created over {args.spread_s:g} s, each done"
        f" {args.processing_s:g} s after creation; progress streams on, poll interval"
        f" {LATENCY_POLL_S:g} s; from the simulator finishing a job to its webhook at the"
        " receiver.",
        "",
        "| store | replicas | p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for label, lat in latencies.items():
        lines.append(
            f"| {label} | {ms(percentile(lat, 50))} | {ms(percentile(lat, 99))} | {ms(max(lat))} |"
        )
    return lines


async def main_async(args: argparse.Namespace) -> None:
    pg_url: str = args.pg_url
    [rx_port] = free_ports(1)
    with receiver_process(rx_port):
        async with aiohttp.ClientSession() as session:
            rx = Receiver(session, rx_port)
            started = time.monotonic()
            flows = await measure_throughput(
                session, rx, pg_url, args.events, args.rounds, args.deadline_s
            )
            print(f"throughput done in {time.monotonic() - started:.0f} s", flush=True)
            failovers, stray = await measure_failover(session, rx, pg_url, args.failovers)
            print(f"failover done in {time.monotonic() - started:.0f} s", flush=True)
            latencies: dict[str, list[float]] = {}
            job_args = (args.jobs, args.spread_s, args.processing_s)
            with pg_schema(pg_url) as url:
                latencies["PostgreSQL | 3"] = await measure_latency(session, rx, url, 3, *job_args)
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'bridge.db'}"
                latencies["SQLite | 1"] = await measure_latency(session, rx, url, 1, *job_args)
            print(f"latency done in {time.monotonic() - started:.0f} s", flush=True)
    lines = report(pg_url, args, flows, failovers, stray, latencies)
    if args.dry_run:
        print("\n".join(lines))
    else:
        record("PostgreSQL: replicas (bench/replicas.py)", lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BRIDGE_BENCH_PG_URL") or DEFAULT_PG_URL,
        help=f"PostgreSQL server (default: $BRIDGE_BENCH_PG_URL or {DEFAULT_PG_URL})",
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--deadline-s", type=float, default=45.0, help="per throughput round: count what came"
    )
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--spread-s", type=float, default=5.0)
    parser.add_argument("--processing-s", type=float, default=15.0)
    parser.add_argument("--dry-run", action="store_true", help="print, do not record")
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver is not None:
        with suppress(KeyboardInterrupt):
            asyncio.run(serve_receiver(args.serve_receiver))
        return
    configure("warning", "json")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
