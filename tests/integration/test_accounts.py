"""Several Munsit accounts in one bridge (`[[accounts]]`): two simulators with different
keys as two accounts, each subscriber getting only its accounts' events, one account's 401
or hanging answers not delaying the other, baselines kept apart across a restart, and the
account `default`'s event ids as they were before accounts existed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from bridge.admin.app import create_app
from bridge.clock import SystemClock
from bridge.config import Settings
from bridge.models import COMPLETED, CREATED, event_id
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import ServerFactory
from tests.pgdb import fresh_schema, require_pg

PROCESSING_S = 3.0
REAL_LIMIT_S = 30.0  # real seconds: a loaded machine is slower, never red


@dataclass
class Hooks:
    """One receiver with a path per subscriber; every body received, by path."""

    got: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())
        body["webhook-id"] = request.headers["webhook-id"]
        self.got.setdefault(request.match_info["name"], []).append(body)
        self.arrived.set()
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        return app

    def ids(self, name: str) -> list[tuple[str, str]]:
        """(type, Munsit record id) of what `name` received, in order."""
        return [(b["type"], b["data"]["id"]) for b in self.got.get(name, [])]


@dataclass
class Rig:
    clock: FakeClock
    sims: dict[str, Simulator]
    urls: dict[str, str]
    hooks: Hooks
    hooks_url: str
    db: Path
    secret: str

    def settings(
        self, keys: dict[str, str] | None = None, **extra: Any
    ) -> Settings:  # two accounts, three subscribers
        keys = keys or {"a": "key-a", "b": "key-b"}
        return Settings.model_validate(
            {
                "upstream": {"page_size": 5, "progress_stream": False, "request_timeout_s": 300},
                "accounts": [
                    {"id": name, "api_key": keys[name], "base_url": self.urls[name]}
                    for name in ("a", "b")
                ],
                "store": {"url": f"sqlite:///{self.db}"},
                "delivery": {"allow_private_destinations": True, "jitter": 0},
                "admin": {"enabled": False},
                "subscribers": [
                    self._sub("only-a", accounts=["a"]),
                    self._sub("only-b", accounts=["b"]),
                    self._sub("all"),
                ],
                **extra,
            }
        )

    def _sub(self, name: str, **keys: Any) -> dict[str, Any]:
        return {
            "id": name,
            "url": f"{self.hooks_url}/{name}",
            "secret": self.secret,
            "events": ["denoise.*"],
            **keys,
        }


@pytest.fixture
async def rig(aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path, secret: str) -> Rig:
    sims = {
        name: Simulator(api_key=f"key-{name}", clock=clock, processing_s=PROCESSING_S)
        for name in ("a", "b")
    }
    urls = {}
    for name, sim in sims.items():
        sim.add_records(3, status="success")
        server: TestServer = await aiohttp_server(sim.make_app())
        urls[name] = str(server.make_url("")).rstrip("/")
    hooks = Hooks()
    hooks_server: TestServer = await aiohttp_server(hooks.app())
    hooks_url = str(hooks_server.make_url("")).rstrip("/")
    return Rig(clock, sims, urls, hooks, hooks_url, tmp_path / "b.db", secret)


async def poll_all(svc: Service) -> None:
    for account in svc.accounts.values():
        await account.poller.tick()


async def test_each_subscriber_gets_only_its_accounts_events(rig: Rig) -> None:
    async with Service(rig.settings(), clock=rig.clock, rand=lambda: 0.5) as svc:
        await poll_all(svc)  # the baselines
        [job_a] = rig.sims["a"].add_records(1, status="pending")
        [job_b] = rig.sims["b"].add_records(1, status="pending")
        await poll_all(svc)  # created
        await rig.clock.advance(PROCESSING_S + 0.5)
        await poll_all(svc)  # completed
        await svc.dispatcher.drain_once()
        assert await svc.store.baseline_done("a") and await svc.store.baseline_done("b")
        assert not await svc.store.baseline_done("default")
    a, b = job_a["id"], job_b["id"]  # the simulators may well give both the same id
    assert rig.hooks.ids("only-a") == [(CREATED, a), (COMPLETED, a)]
    assert rig.hooks.ids("only-b") == [(CREATED, b), (COMPLETED, b)]
    assert {b["account"] for b in rig.hooks.got["only-a"]} == {"a"}
    assert {b["account"] for b in rig.hooks.got["only-b"]} == {"b"}
    got_all = sorted((b["account"], b["type"], b["data"]["id"]) for b in rig.hooks.got["all"])
    assert got_all == sorted(
        [("a", CREATED, a), ("a", COMPLETED, a), ("b", CREATED, b), ("b", COMPLETED, b)]
    )
    for body in rig.hooks.got["all"]:
        # the id of an account other than `default` includes the account
        key = f"{body['account']}/{body['data']['id']}"
        assert body["id"] == body["webhook-id"] == event_id(key, body["type"])
        assert body["id"] != event_id(body["data"]["id"], body["type"])
    # each account's own metrics
    registry = svc.metrics.registry
    for name in ("a", "b"):
        ok = registry.get_sample_value("bridge_polls_total", {"account": name, "result": "ok"})
        assert ok == 3


async def test_default_account_ids_are_unchanged(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path, secret: str
) -> None:
    """Without `[[accounts]]` (`[upstream]` is the account `default`), and with an account
    named `default`: the ids are the digest of the Munsit id alone, as before accounts."""
    sim = Simulator(api_key="key-d", clock=clock, processing_s=PROCESSING_S)
    server: TestServer = await aiohttp_server(sim.make_app())
    url = str(server.make_url("")).rstrip("/")
    hooks = Hooks()
    hooks_server: TestServer = await aiohttp_server(hooks.app())
    sub = {
        "id": "rx",
        "url": str(hooks_server.make_url("/rx")),
        "secret": secret,
    }
    plain: dict[str, Any] = {
        "upstream": {"base_url": url, "api_key": "key-d", "progress_stream": False}
    }
    named: dict[str, Any] = {
        "upstream": {"progress_stream": False},
        "accounts": [{"id": "default", "api_key": "key-d", "base_url": url}],
    }
    for n, shape in enumerate((plain, named)):
        settings = Settings.model_validate(
            {
                **shape,
                "store": {"url": f"sqlite:///{tmp_path / f'{n}.db'}"},
                "delivery": {"allow_private_destinations": True},
                "admin": {"enabled": False},
                "subscribers": [sub],
            }
        )
        async with Service(settings, clock=clock) as svc:
            await svc.poller.tick()
            [job] = sim.add_records(1, status="pending")
            await clock.advance(PROCESSING_S + 0.5)
            await svc.poller.tick()
            await svc.dispatcher.drain_once()
        body = hooks.got["rx"][-1]
        assert body["data"]["id"] == job["id"]
        assert body["id"] == event_id(job["id"], COMPLETED)
        assert body["account"] == "default"


async def test_restart_keeps_each_accounts_baseline(rig: Rig) -> None:
    async with Service(rig.settings(), clock=rig.clock) as svc:
        await poll_all(svc)
        baselines = [svc.accounts[n].poller for n in ("a", "b")]
        assert all(p.last_success_at is not None for p in baselines)
    # while the bridge is down: a new job in a, one in b that also finishes
    [job_a] = rig.sims["a"].add_records(1, status="pending")
    [job_b] = rig.sims["b"].add_records(1, status="pending")
    await rig.clock.advance(PROCESSING_S + 0.5)
    async with Service(rig.settings(), clock=rig.clock) as svc:
        results = [await svc.accounts[n].poller.tick() for n in ("a", "b")]
        await svc.dispatcher.drain_once()
    assert [r.baseline for r in results] == [False, False]  # no second baseline for either
    assert rig.hooks.ids("only-a") == [(CREATED, job_a["id"]), (COMPLETED, job_a["id"])]
    assert rig.hooks.ids("only-b") == [(CREATED, job_b["id"]), (COMPLETED, job_b["id"])]


# ---- one account in trouble, the other on time ----------------------------------------------


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, REAL_LIMIT_S)


async def run_until(
    clock: FakeClock, task: asyncio.Task[None], done: Callable[[], bool], limit_s: float
) -> float:
    """Let the service run, the clock jumping to each wake-up, until `done()`; returns the
    clock time it took. Fails after `limit_s` of clock time."""
    loop = asyncio.get_running_loop()
    start, deadline = clock.monotonic(), loop.time() + REAL_LIMIT_S
    while not done():
        assert not task.done(), task
        wake = clock.next_wakeup_in()
        if wake is not None and wake <= 5.0:
            assert clock.monotonic() + wake - start <= limit_s, "not within the clock limit"
            await clock.advance(wake)
            continue
        assert loop.time() < deadline, "not within the real-time limit"
        await asyncio.sleep(0.01)  # real I/O under way: the clock stands still meanwhile
    return clock.monotonic() - start


# a's polls from a job's creation to its completion's delivery: the idle poll that sees it
# pending, those of the pending interval (1 s) until it is done (PROCESSING_S), one more
A_POLLS = 2 + int(PROCESSING_S)


def ok_polls(svc: Service, account: str) -> int:
    value = svc.metrics.registry.get_sample_value(
        "bridge_polls_total", {"account": account, "result": "ok"}
    )
    return int(value or 0)


async def test_a_rejected_key_does_not_delay_the_other_account(rig: Rig) -> None:
    settings = rig.settings(
        keys={"a": "key-a", "b": "wrong-key"},
        upstream={
            "page_size": 5,
            "progress_stream": False,
            "poll_interval_s": 1,
            "idle_poll_interval_s": 2,
        },
    )
    svc = Service(settings, clock=rig.clock, rand=lambda: 0.5)
    with capture_logs() as logs:
        async with svc, running(svc) as task:
            await run_until(
                rig.clock, task, lambda: svc.accounts["a"].poller.last_success_at is not None, 10
            )
            [job] = rig.sims["a"].add_records(1, status="pending")
            before = ok_polls(svc, "a")
            await run_until(
                rig.clock, task, lambda: (COMPLETED, job["id"]) in rig.hooks.ids("only-a"), 60
            )
            ready = await svc.readiness()
            b_failed = svc.metrics.registry.get_sample_value(
                "bridge_polls_total", {"account": "b", "result": "auth_failed"}
            )
    # a's job was seen by a's own polls at a's own pace, b failing all along
    assert ok_polls(svc, "a") - before <= A_POLLS and (b_failed or 0) >= 2
    assert rig.hooks.ids("only-b") == []
    assert ready["ready"] is False
    assert ready["accounts"]["a"]["ready"] is True
    assert ready["accounts"]["b"]["ready"] is False
    assert any("account b: " in r and "API key" in r for r in ready["reasons"]), ready
    rejected = [e for e in logs if "API key rejected" in e["event"]]
    assert rejected and {e["account"] for e in rejected} == {"b"}
    assert "accounts[1].api_key" in rejected[0]["error"]
    assert "wrong-key" not in json.dumps(ready) + repr(logs)


async def test_a_hanging_account_does_not_delay_the_other(
    rig: Rig, aiohttp_server: ServerFactory
) -> None:
    asked = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        asked.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/denoise", hang)
    server: TestServer = await aiohttp_server(app)
    rig.urls["b"] = str(server.make_url("")).rstrip("/")
    settings = rig.settings(
        upstream={
            "page_size": 5,
            "progress_stream": False,
            "poll_interval_s": 1,
            "idle_poll_interval_s": 2,
            "request_timeout_s": 300,
        }
    )
    svc = Service(settings, clock=rig.clock, rand=lambda: 0.5)
    async with svc, running(svc) as task:
        await run_until(
            rig.clock, task, lambda: svc.accounts["a"].poller.last_success_at is not None, 10
        )
        await asyncio.wait_for(asked.wait(), REAL_LIMIT_S)  # b's poll hangs from now on
        [job] = rig.sims["a"].add_records(1, status="pending")
        before = ok_polls(svc, "a")
        await run_until(
            rig.clock, task, lambda: (COMPLETED, job["id"]) in rig.hooks.ids("only-a"), 60
        )
        assert svc.accounts["b"].poller.last_success_at is None
        assert ok_polls(svc, "a") - before <= A_POLLS


# ---- PostgreSQL: one leader polls every account ------------------------------------------


async def test_one_leader_polls_every_account_on_postgresql(
    request: pytest.FixtureRequest, aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    server = require_pg(request.node.nodeid)
    clock = SystemClock()
    sims = {n: Simulator(api_key=f"key-{n}", clock=clock, processing_s=0.3) for n in "ab"}
    urls = {}
    for name, sim in sims.items():
        served: TestServer = await aiohttp_server(sim.make_app())
        urls[name] = str(served.make_url("")).rstrip("/")
    hooks = Hooks()
    hooks_server: TestServer = await aiohttp_server(hooks.app())
    with fresh_schema(server) as url:

        def settings(replica: str) -> Settings:
            return Settings.model_validate(
                {
                    "upstream": {"poll_interval_s": 0.2, "idle_poll_interval_s": 0.2},
                    "accounts": [
                        {"id": n, "api_key": f"key-{n}", "base_url": urls[n]} for n in "ab"
                    ],
                    "store": {"url": url, "replica_id": replica, "leader_lease_s": 6},
                    "delivery": {"allow_private_destinations": True},
                    "admin": {"enabled": False},
                    "subscribers": [
                        {
                            "id": "all",
                            "url": str(hooks_server.make_url("/all")),
                            "secret": secret,
                        }
                    ],
                }
            )

        replicas = [Service(settings(f"r{i}")) for i in (1, 2)]
        async with replicas[0], replicas[1], running(replicas[0]), running(replicas[1]):

            async def until(done: Callable[[], bool]) -> None:
                deadline = asyncio.get_running_loop().time() + REAL_LIMIT_S
                while not done():
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)  # real time: the replicas work meanwhile

            def polled(svc: Service) -> bool:
                return all(a.poller.last_success_at is not None for a in svc.accounts.values())

            await until(lambda: any(polled(svc) for svc in replicas))
            jobs = {n: sims[n].add_records(1, status="pending")[0]["id"] for n in "ab"}
            await until(lambda: len(hooks.got.get("all", [])) >= 2)
            leaders = [svc for svc in replicas if svc.role == "leader"]
            followers = [svc for svc in replicas if svc.role != "leader"]
        got = sorted((b["account"], b["data"]["id"]) for b in hooks.got["all"])
        assert got == [("a", jobs["a"]), ("b", jobs["b"])]  # each once
        assert len(leaders) == 1 and len(followers) == 1
        assert polled(leaders[0]) and not polled(followers[0])


async def test_status_readyz_and_dashboard_show_each_account(rig: Rig) -> None:
    settings = rig.settings(keys={"a": "key-a", "b": "wrong-key"})
    async with (
        Service(settings, clock=rig.clock) as svc,
        TestClient(TestServer(create_app(svc))) as http,
    ):
        for account in svc.accounts.values():
            await account.poller.poll_once()  # b's fails, as in `run`
        status = await svc.ops.status()
        resp = await http.get("/readyz")
        ready = await resp.json()
        page = await (await http.get("/ui/")).text()
    assert resp.status == 503
    assert [(a["account"], a["baseline_recorded"]) for a in status["accounts"]] == [
        ("a", True),
        ("b", False),
    ]
    assert status["baseline_recorded"] is False  # not every account's
    assert ready["accounts"]["a"]["ready"] and not ready["accounts"]["b"]["ready"]
    assert ready["reasons"] == ["account b: upstream rejected the API key (401)"]
    assert "Munsit accounts" in page and "upstream rejected the API key (401)" in page
    assert rig.urls["b"] in page
