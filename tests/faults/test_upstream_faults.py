"""Upstream fault matrix, end to end: the Munsit simulator on 127.0.0.1 misbehaves on
`GET /denoise` one way per row (429 with and without `Retry-After`, 500, 502, an answer slower
than `request_timeout_s`, dropped connections, malformed JSON, a body that is not an array, and
schema drift: missing and extra fields, unknown statuses) while jobs are created and finish.

The whole service runs meanwhile (poller, dispatcher, a SQLite file, a recording receiver) on
the fake clock, and every row checks the same three things: the service keeps running and polls
successfully again; no event is recorded or delivered that is not a real upstream change; and
every real change reaches the receiver exactly once, under its own id, once the fault clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import LogCapture

from bridge.deliver.dispatcher import Sent
from bridge.detect.poller import PollResult
from bridge.models import COMPLETED, CREATED, FAILED_EVENT, event_id
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, settings_for
from tests.integration.test_pipeline import signature_matches

ServerFactory = Callable[..., Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LogEntries = list[MutableMapping[str, Any]]

PAGE = 5  # upstream.page_size of `settings_for`
POLL_S = 1.0  # both poll intervals; rand = 0.5 centres the jitter, so exactly this
HISTORY = 6  # finished records above the old pending one, which so sits on the second page
PROCESSING_S = 2.0  # jobs created during a run finish this long after their creation
ATTEMPTS = 5  # requests the client makes for one page before the poll fails (its default)
RETRY_AFTER_S = 20
TIMEOUT_S = 0.5  # request_timeout_s of the timeout rows: aiohttp's timer, real time
STALL_S = 3600.0  # clock time a stalled answer waits before it comes: never reached here
STEP_MAX_S = 30.0  # the driver jumps to wake-ups this near at most (see `Run.until`)
IO_WAIT_S = 0.01  # real time to wait for a signal before looking again
REAL_LIMIT_S = 20.0  # real time any one wait may take before the test fails


# ---- the upstream: the simulator, with a thin observing layer over its list route --------


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # clock time
    offset: int


@dataclass
class ListLayer:
    """Sits between the simulator's own middleware and its list route: notes when each list
    request arrived, and strips fields from the records served (a record missing a field is
    the one kind of schema drift the simulator has no control for)."""

    clock: FakeClock
    arrivals: list[Arrival] = field(default_factory=list)
    strip: dict[str, set[str]] = field(default_factory=dict)  # record id, or "*" for all
    empty: int = 0  # answer this many list requests with `[]` (a 200 that lists nothing)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "GET" or request.path != "/denoise":
            return await handler(request)
        self.arrivals.append(Arrival(self.clock.now(), int(request.query.get("offset", "0"))))
        if self.empty:
            self.empty -= 1
            return web.json_response([])
        response = await handler(request)
        if not self.strip or response.status != 200 or not isinstance(response, web.Response):
            return response
        assert isinstance(response.body, bytes)
        records = json.loads(response.body)
        for record in records:
            for name in self.strip.get(record["id"], set()) | self.strip.get("*", set()):
                record.pop(name, None)
        return web.json_response(records)


@dataclass
class Upstream:
    sim: Simulator
    layer: ListLayer
    url: str
    early: str  # pending since before the baseline, deep on the second page


@pytest.fixture
async def upstream(aiohttp_server: ServerFactory, clock: FakeClock) -> Upstream:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=10**6)
    [early] = sim.add_records(1, status="pending")  # finishes only when told to
    sim.add_records(HISTORY, status="success")
    sim.processing_s = PROCESSING_S
    layer = ListLayer(clock)
    app = sim.make_app()
    app.middlewares.append(layer.middleware)
    server: TestServer = await aiohttp_server(app)
    return Upstream(sim, layer, str(server.make_url("")).rstrip("/"), early["id"])


# ---- the running service and the driver of its clock ---------------------------------------


@dataclass
class Run:
    """The service running in the background, and what it did."""

    up: Upstream
    receiver: RecordingReceiver
    clock: FakeClock
    secret: str
    svc: Service
    runner: asyncio.Task[None]
    polls: list[PollResult]  # successful ones
    sent: list[Sent]
    signal: asyncio.Event  # set at every poll and every recorded attempt

    def polls_done(self, result: str = "") -> int:
        """Polls ended so far with this result (`ok`, `error`), or with any."""
        results = [result] if result else ["ok", "error", "auth_failed"]
        registry = self.svc.metrics.registry
        return sum(
            int(
                registry.get_sample_value("bridge_polls_total", {"account": "default", "result": r})
                or 0
            )
            for r in results
        )

    def responses(self, code: str = "") -> int:
        """List requests that ended with this outcome (`200`, `timeout`, …), or with any."""
        total = 0.0
        for metric in self.svc.metrics.upstream_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and code in ("", sample.labels["code"]):
                    total += sample.value
        return int(total)

    def busy(self) -> bool:
        """A list request or a delivery is under way on real sockets."""
        upstream = self.svc.client.requests > self.responses()
        deliveries = sum(p.deliveries for p in self.polls) > len(self.sent)
        return upstream or deliveries

    def received(self) -> list[tuple[str, str, str]]:
        """(webhook-id, type, record id) of every request the receiver got, in order."""
        out = []
        for req in self.receiver.requests:
            body = json.loads(req.body)
            out.append((req.headers["webhook-id"], body["type"], body["data"]["id"]))
        return out

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(req.body) for req in self.receiver.requests]

    async def until(self, what: str, done: Callable[[], bool], clock_s: float = 600.0) -> None:
        """Run the service until `done()`. The clock jumps to the next wake-up only while no
        request is on the wire, and only to a near one (a poll interval, a backoff, a
        `Retry-After`): never to the dispatcher's idle wait nor to a stalled answer's end.
        Otherwise the real I/O runs, the clock standing still."""
        loop = asyncio.get_running_loop()
        start, deadline = self.clock.monotonic(), loop.time() + REAL_LIMIT_S
        while not done():
            if self.runner.done():
                error = None if self.runner.cancelled() else self.runner.exception()
                raise AssertionError(f"the service stopped while waiting for {what}: {error!r}")
            wake = self.clock.next_wakeup_in()
            if wake is not None and wake <= STEP_MAX_S and not self.busy():
                if self.clock.monotonic() + wake - start > clock_s:
                    raise AssertionError(f"no {what} after {clock_s} s of clock time")
                await self.clock.advance(wake)
                continue
            if loop.time() > deadline:
                raise AssertionError(f"no {what} after {REAL_LIMIT_S} s of real time")
            self.signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signal.wait(), IO_WAIT_S)

    async def poll(self, count: int = 1) -> None:
        """Run until `count` more polls have ended, successful or not."""
        target = self.polls_done() + count
        await self.until(f"{count} more polls", lambda: self.polls_done() >= target)

    async def baseline(self) -> None:
        await self.until("baseline", lambda: bool(self.polls))
        assert self.polls[0].baseline and self.polls[0].events == []

    async def deliver(self, expected: dict[str, tuple[str, str]]) -> None:
        """Run until every expected event has arrived, then three more polls."""
        await self.until("delivery", lambda: set(expected) <= {i for i, _, _ in self.received()})
        ok = self.polls_done("ok")
        await self.poll(3)
        assert self.polls_done("ok") == ok + 3  # polling carries on, and succeeds


Starter = Callable[..., Awaitable[Run]]


@pytest.fixture
async def start(
    upstream: Upstream,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    secret: str,
    tmp_path: Path,
) -> AsyncIterator[Starter]:
    receiver = RecordingReceiver()
    rx: TestServer = await aiohttp_server(receiver.app())

    async with contextlib.AsyncExitStack() as stack:

        async def begin(**upstream_settings: Any) -> Run:
            settings = settings_for(
                upstream.url,
                str(rx.make_url("/hook")),
                secret,
                tmp_path / "bridge.db",
                events=["denoise.*"],
                upstream={
                    "poll_interval_s": POLL_S,
                    "idle_poll_interval_s": POLL_S,
                    "progress_stream": False,
                    **upstream_settings,
                },
                delivery={"jitter": 0},
            )
            polls: list[PollResult] = []
            sent: list[Sent] = []
            signal = asyncio.Event()

            def polled(result: PollResult) -> None:
                polls.append(result)
                signal.set()

            def recorded(attempt: Sent) -> None:
                sent.append(attempt)
                signal.set()

            svc = await stack.enter_async_context(
                Service(settings, clock=clock, rand=lambda: 0.5, on_poll=polled, on_sent=recorded)
            )
            stop = asyncio.Event()
            runner = asyncio.create_task(svc.run(stop))

            async def halt() -> None:
                stop.set()
                await asyncio.wait_for(runner, REAL_LIMIT_S)

            stack.push_async_callback(halt)
            return Run(upstream, receiver, clock, secret, svc, runner, polls, sent, signal)

        yield begin


@pytest.fixture
def logs() -> Iterator[LogEntries]:
    """The structlog entries of the test, info and above."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(
        processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


# ---- the run every row goes through, and what must come of it -----------------------------


@dataclass(frozen=True, slots=True)
class Jobs:
    early: str  # pending since before the baseline; succeeds during the run
    done: str  # created during the run; succeeds on its own
    bad: str  # created during the run from a file that is not audio; fails on its own


def changes(up: Upstream) -> Jobs:
    """What happens upstream during the run: the old pending job succeeds, and two new jobs
    are queued that finish `PROCESSING_S` later, one well, one not."""
    [done] = up.sim.add_records(1, status="pending")
    bad = up.sim.submit("voice.wav", b"this is not audio")
    up.sim.set_status(up.early, "success")
    return Jobs(up.early, done["id"], bad["id"])


def expected_events(jobs: Jobs) -> dict[str, tuple[str, str]]:
    """Event id → (record id, type) of every real change of `changes`."""
    pairs = [
        (jobs.early, COMPLETED),
        (jobs.done, CREATED),
        (jobs.done, COMPLETED),
        (jobs.bad, CREATED),
        (jobs.bad, FAILED_EVENT),
    ]
    return {event_id(record, kind): (record, kind) for record, kind in pairs}


async def assert_exactly(run: Run, expected: dict[str, tuple[str, str]]) -> None:
    """Every expected event arrived once, signed, about its record; nothing else arrived or
    was recorded."""
    received = run.received()
    assert sorted(i for i, _, _ in received) == sorted(expected)  # each once, no other
    assert all(expected[i] == (record, kind) for i, kind, record in received)
    assert all(signature_matches(run.secret, r.headers, r.body) for r in run.receiver.requests)
    finished = {COMPLETED: "success", FAILED_EVENT: "failed"}
    for body in run.bodies():  # the record as fetched when it changed
        assert body["id"] == event_id(body["data"]["id"], body["type"])
        assert body["data"]["status"] == finished.get(body["type"], body["data"]["status"])
    stored = await run.svc.store.list_events(limit=1000)
    assert stored is not None
    assert sorted(e.id for e in stored) == sorted(expected)
    assert all(not p.events for p in run.polls[-3:])  # quiet since


def assert_alive(run: Run, logs: LogEntries) -> None:
    """Still running, its last poll a success, and nothing logged as an error."""
    assert not run.runner.done()
    assert run.svc.poller.last_error is None
    problems = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert problems == []


def logged(logs: LogEntries, event: str, **fields: str) -> list[MutableMapping[str, Any]]:
    """Entries with this message whose fields contain these texts."""
    return [
        e
        for e in logs
        if e["event"] == event and all(text in str(e.get(k)) for k, text in fields.items())
    ]


# ---- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One way a list request goes wrong."""

    kind: str  # the simulator's fault kind
    says: str  # in the error the bridge logs for it
    answered: int | None  # status the simulator logs for it (0: hung up; None: no answer)
    retry_after: str | None = None
    latency_s: float = 0.0
    timeout_s: float | None = None  # upstream.request_timeout_s for the row
    retried: bool = True  # transient, asked again within the poll; else the poll fails
    burst: int = 1  # faults that make one failed request of the client

    def settings(self) -> dict[str, Any]:
        return {} if self.timeout_s is None else {"request_timeout_s": self.timeout_s}

    def inject(self, sim: Simulator, count: int) -> None:
        sim.inject_fault(
            self.kind, count=count, retry_after=self.retry_after, latency_s=self.latency_s
        )

    def served(self, run: Run) -> int:
        """How many of these faults the bridge met."""
        if self.answered is None:
            return run.responses("timeout")
        if self.answered == 200:
            return run.polls_done("error")
        return sum(1 for _, _, status in run.up.sim.request_log if status == self.answered)


def assert_served(fault: Fault, run: Run, count: int) -> None:
    """The bridge met all `count` faults (a timed-out request on a busy machine may add one)."""
    if fault.answered is None:
        assert fault.served(run) >= count
    else:
        assert fault.served(run) == count


FAULTS = {
    "429-retry-after": Fault(
        "429", "answered 429: 42901 Too many", 429, retry_after=str(RETRY_AFTER_S)
    ),
    "429": Fault("429", "answered 429: 42901 Too many", 429),
    "500": Fault("500", "answered 500: 50000 Internal server error", 500),
    "502": Fault("502", "answered 502: 50202 Upstream error", 502),
    "timeout": Fault("latency", "timed out", None, latency_s=STALL_S, timeout_s=TIMEOUT_S),
    # aiohttp itself sends an idempotent GET once more after a hang-up: two make one failure
    "drop": Fault("drop", "ServerDisconnectedError", 0, burst=2),
    "malformed": Fault("malformed", "returned malformed JSON", 200, retried=False),
    "non_array": Fault("non_array", "expected an array of records", 200, retried=False),
}


@pytest.mark.parametrize("page", [1, 2])
@pytest.mark.parametrize("name", list(FAULTS))
async def test_a_fault_on_a_list_page_loses_and_invents_nothing(
    name: str, page: int, upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """One fault, on the first or the second page of the first poll after the changes:
    transient ones are asked again within the poll, the others fail the poll whole."""
    fault = FAULTS[name]
    run = await start(**fault.settings())
    await run.baseline()
    jobs = changes(upstream)
    expected = expected_events(jobs)
    first = len(upstream.layer.arrivals)
    if page == 2:
        upstream.sim.inject_fault("latency", latency_s=0.0)  # the first page goes through
    fault.inject(upstream.sim, fault.burst)

    await run.deliver(expected)

    await assert_exactly(run, expected)
    assert_alive(run, logs)
    assert_served(fault, run, fault.burst)
    arrivals = upstream.layer.arrivals[first:]
    hit, following = arrivals[page - 1], arrivals[page]
    assert hit.offset == (page - 1) * PAGE  # the fault met the page it was meant for
    if fault.retried:  # the same page again within the same poll, which then succeeded
        assert following.offset == hit.offset
        assert run.polls_done("error") == 0
        assert logged(logs, "upstream request failed, retrying", error=fault.says)
    else:  # the poll was given up whole; the next one starts from the top
        assert following.offset == 0
        assert run.polls_done("error") == 1
        assert logged(logs, "poll failed, will try again", error=fault.says)
    if fault.retry_after is not None:
        assert following.at - hit.at >= RETRY_AFTER_S
    else:
        assert following.at - hit.at < RETRY_AFTER_S
    [early] = [b for b in run.bodies() if b["data"]["id"] == jobs.early]
    assert early["previous_status"] == "pending"


PERSISTENT = [("500", 11), ("502", 11), ("429", 11), ("drop", 21), ("timeout", 6)]
PERSISTENT += [("malformed", 3), ("non_array", 3)]


@pytest.mark.parametrize(("name", "count"), PERSISTENT)
async def test_a_fault_lasting_several_polls_loses_and_invents_nothing(
    name: str, count: int, upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """More faults in a row than the client's attempts: whole polls fail, while the jobs
    finish upstream; the first poll after the outage catches up on all of it."""
    fault = FAULTS[name]
    run = await start(**fault.settings())
    await run.baseline()
    fault.inject(upstream.sim, count)
    jobs = changes(upstream)
    expected = expected_events(jobs)

    await run.deliver(expected)

    await assert_exactly(run, expected)
    assert_alive(run, logs)
    per_poll = ATTEMPTS * fault.burst if fault.retried else 1
    assert_served(fault, run, count)
    assert run.polls_done("error") == count // per_poll >= 1
    failed = logged(
        logs, "poll failed, backing off" if fault.retried else "poll failed, will try again"
    )
    assert len(failed) == count // per_poll
    assert all(fault.says in str(e["error"]) for e in failed)
    # the jobs finished during the outage: each first seen finished, both events in one poll
    [catch_up] = [p for p in run.polls if p.events]
    assert {e.id for e in catch_up.events} == set(expected)


async def test_a_fault_during_the_baseline_commits_nothing_of_it(
    upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """A baseline that fails, first on its first page, then on its second, is recorded only
    when a whole one succeeds: the old pending job is still tracked and its completion sent."""
    upstream.sim.inject_fault("500", count=ATTEMPTS)
    upstream.sim.inject_fault("latency", latency_s=0.0)
    upstream.sim.inject_fault("malformed")
    run = await start()
    await run.baseline()
    assert run.polls_done("error") == 2
    assert run.polls[0].records_seen == HISTORY + 1
    assert [s.id for s in await run.svc.store.tracked_pending()] == [upstream.early]
    assert [a.offset for a in upstream.layer.arrivals] == [0] * ATTEMPTS + [0, PAGE, 0, PAGE]
    jobs = changes(upstream)
    expected = expected_events(jobs)

    await run.deliver(expected)

    await assert_exactly(run, expected)
    assert_alive(run, logs)


# ---- schema drift -------------------------------------------------------------------------


async def test_extra_fields_are_kept_and_change_nothing(
    upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    run = await start()
    await run.baseline()
    upstream.sim.add_field("model_version", "v7")  # on every record, the old ones too
    upstream.sim.add_field("quality", {"snr_db": 31.5})
    jobs = changes(upstream)
    expected = expected_events(jobs)

    await run.deliver(expected)

    await assert_exactly(run, expected)  # no event for the records that only grew a field
    assert_alive(run, logs)
    for body in run.bodies():
        assert body["data"]["model_version"] == "v7"
        assert body["data"]["quality"] == {"snr_db": 31.5}


async def test_missing_optional_fields_change_nothing(
    upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    run = await start()
    await run.baseline()
    gone = {"audio_url", "updated_at", "error", "transaction_id", "audio_duration"}
    upstream.layer.strip["*"] = gone
    jobs = changes(upstream)
    expected = expected_events(jobs)

    await run.deliver(expected)

    await assert_exactly(run, expected)
    assert_alive(run, logs)
    for body in run.bodies():
        assert gone.isdisjoint(body["data"])  # the record exactly as fetched
        assert body["data"]["file_name"]


@pytest.mark.parametrize(
    ("missing", "where"),
    [("id", "new"), ("status", "new"), ("created_at", "new"), ("status", "deep")],
)
async def test_a_record_missing_a_required_field_is_quarantined_alone(
    missing: str, where: str, upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """A record without `id`, `status` or `created_at` cannot be tracked or diffed: it is
    quarantined (skipped, logged once) while every other change of its page is delivered. A
    tracked pending record quarantined so is still listed, not taken for gone. Once the record
    is whole again, its own changes are delivered, once."""
    run = await start()
    await run.baseline()
    jobs = changes(upstream)
    expected = expected_events(jobs)
    broken = jobs.bad if where == "new" else jobs.early  # newest (page 1) or oldest (page 2)
    upstream.layer.strip[broken] = {missing}
    others = {i: e for i, e in expected.items() if e[0] != broken}

    await run.deliver(others)

    await assert_exactly(run, others)
    assert run.polls_done("error") == 0
    quarantined = logged(logs, QUARANTINED, reason=f"field '{missing}' is missing")
    # known by its id, or without one by its content: once for each version of it listed
    # (the new job was seen pending, then failed)
    assert len(quarantined) == (2 if missing == "id" else 1)
    assert {e.get("record_id") for e in quarantined} == {None if missing == "id" else broken}
    if where == "deep":  # passed by the stop rule though unread: not missing, still tracked
        run.svc.poller.request_full_scan()  # and seen by a sweep: not forgotten as gone
        await run.poll(2)
        assert logged(logs, "sweep finished")
        assert broken in {s.id for s in await run.svc.store.tracked_pending()}
        assert logged(logs, "pending record missing from the Munsit list") == []
        assert logged(logs, "record is gone from the Munsit list") == []

    upstream.layer.strip.clear()
    await run.deliver(expected)

    await assert_exactly(run, expected)
    assert_alive(run, logs)
    [early] = [b for b in run.bodies() if b["data"]["id"] == jobs.early]
    assert early["previous_status"] == "pending"


QUARANTINED = "record quarantined: skipped until Munsit lists it whole"
NEWER = '"2099-01-01T00:00:00.000Z"'  # were it readable, it would be announced
POISON_RECORDS = {
    "lone-surrogate-id": '{"id": "rec-\\ud800", "status": "pending", "created_at": %s}',
    "surrogate-in-a-field": '{"id": "p", "status": "pending", "created_at": %s, "e": "\\udc00"}',
    "invalid-utf8": '{"id": "p", "status": "pending", "created_at": %s, "e": "\udcff"}',
    "nan": '{"id": "p", "status": "success", "created_at": %s, "audio_duration": NaN}',
    "huge-number": '{"id": "p", "status": "success", "created_at": %s, "audio_size": 1e400}',
    "wrong-type": '{"id": "p", "status": ["success"], "created_at": %s}',
    "created-at-not-a-time": '{"id": "p", "status": "success", "created_at": "soon", "x": %s}',
    "not-a-record": "[%s]",
}


@pytest.mark.parametrize("name", list(POISON_RECORDS))
async def test_a_poison_record_listed_on_top_is_quarantined_and_its_page_processed(
    name: str, upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """A broken record that stays listed, newest of all: quarantined, logged once, never
    stored or announced; it still counts for the page's length (the end of the list is not
    taken for reached, the old pending job on the second page is found) and every real
    change is delivered exactly once."""
    run = await start()
    await run.baseline()
    upstream.sim.add_raw_record((POISON_RECORDS[name] % NEWER).encode("utf-8", "surrogateescape"))
    jobs = changes(upstream)
    expected = expected_events(jobs)

    await run.deliver(expected)

    await assert_exactly(run, expected)
    assert_alive(run, logs)
    assert len(logged(logs, QUARANTINED)) == 1
    assert run.polls_done("error") == 0
    assert (
        run.svc.metrics.registry.get_sample_value(
            "bridge_records_quarantined_total", {"account": "default"}
        )
        == 1
    )


async def test_unknown_statuses_are_not_terminal_and_emit_nothing(
    upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """A record in a status the bridge does not know is tracked like a pending one and gets
    no event; its real completion later does, once. A finished record that passes through an
    unknown status and back is not announced a second time."""
    run = await start()
    await run.baseline()
    upstream.sim.processing_s = 10**6  # these jobs finish only when told to
    plain, odd = (r["id"] for r in upstream.sim.add_records(2, status="pending"))
    upstream.sim.set_status(odd, "queued")  # first seen in an unknown status
    upstream.sim.set_status(upstream.early, "archiving")  # pending → unknown

    created = {event_id(r, CREATED): (r, CREATED) for r in (plain, odd)}
    await run.deliver(created)

    await assert_exactly(run, created)
    assert {s.id for s in run.svc.poller.pending} == {upstream.early, plain, odd}
    warned = logs_of_unknown(logs)
    assert {(upstream.early, "archiving"), (odd, "queued")} <= warned

    upstream.sim.set_status(upstream.early, "success")
    upstream.sim.set_status(odd, "failed", error="Rejected by moderation")
    upstream.sim.set_status(plain, "success")
    finished = {
        event_id(upstream.early, COMPLETED): (upstream.early, COMPLETED),
        event_id(odd, FAILED_EVENT): (odd, FAILED_EVENT),
        event_id(plain, COMPLETED): (plain, COMPLETED),
    }
    expected = created | finished
    await run.deliver(expected)
    await assert_exactly(run, expected)
    previous = {(b["data"]["id"], b["type"]): b["previous_status"] for b in run.bodies()}
    assert previous[upstream.early, COMPLETED] == "archiving"
    assert previous[odd, FAILED_EVENT] == "queued"
    assert previous[plain, COMPLETED] == "pending"
    assert run.svc.poller.pending == []

    upstream.sim.set_status(plain, "archived")  # success → unknown → success
    await run.poll(3)
    assert [s.id for s in run.svc.poller.pending] == [plain]
    upstream.sim.set_status(plain, "success")
    await run.poll(3)

    assert len(run.receiver.requests) == len(expected)  # its completion is not sent again
    completions = sum(1 for kind in expected.values() if kind[1] == COMPLETED)
    counted = run.svc.metrics.registry.get_sample_value("bridge_events_total", {"type": COMPLETED})
    assert counted == completions  # nor counted again
    assert all(not p.events for p in run.polls[-3:])
    stored = await run.svc.store.list_events(limit=1000)
    assert stored is not None and sorted(e.id for e in stored) == sorted(expected)
    assert run.svc.poller.pending == []
    assert_alive(run, logs)


def logs_of_unknown(logs: LogEntries) -> set[tuple[str, str]]:
    return {
        (str(e["record_id"]), str(e["status"]))
        for e in logged(logs, "unknown record status, treated as not terminal")
    }


@pytest.mark.parametrize("empty_answers", [1, 3])
async def test_an_empty_answer_loses_no_pending_record(
    empty_answers: int, upstream: Upstream, start: Starter, logs: LogEntries
) -> None:
    """A 200 listing nothing looks like the end of the list: the pending records it did not
    show are only marked missed, kept tracked, and their completion still arrives. Missed
    at two polls in a row, a record is gone but keeps its last status, so its completion
    is still announced (by the next reconciliation sweep) rather than taken as a new record's."""
    run = await start()
    await run.baseline()
    upstream.layer.empty = empty_answers
    await run.poll(empty_answers)
    gone = empty_answers >= 2
    tracked = {s.id for s in await run.svc.store.tracked_pending()}
    assert (upstream.early in tracked) is not gone
    jobs = changes(upstream)
    expected = expected_events(jobs)
    if gone:
        del expected[event_id(upstream.early, COMPLETED)]  # found again by a sweep only
    await run.deliver(expected)
    if gone:
        run.svc.poller.request_full_scan()
        expected[event_id(upstream.early, COMPLETED)] = (upstream.early, COMPLETED)
        await run.deliver(expected)
    await assert_exactly(run, expected)
    assert_alive(run, logs)
    early = [b for b in run.bodies() if b["data"]["id"] == upstream.early]
    assert [b["previous_status"] for b in early] == ["pending"]
