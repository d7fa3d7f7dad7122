"""The upstream client against the simulator: auth, retries, Retry-After, protocol errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge.clock import SystemClock
from bridge.errors import (
    UpstreamAuthError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.retry_after import parse_retry_after
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.upstream.client import MunsitClient

ServerFactory = Callable[..., Any]


class RecordedSleep:
    """The injected sleep: remembers every backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock)


@pytest.fixture
def sleep() -> RecordedSleep:
    return RecordedSleep()


@pytest.fixture
async def make_client(
    sim: Simulator, aiohttp_server: ServerFactory, sleep: RecordedSleep, clock: FakeClock
) -> AsyncIterator[Callable[..., MunsitClient]]:
    server: TestServer = await aiohttp_server(sim.make_app())
    async with aiohttp.ClientSession() as session:

        def build(api_key: str = "test-key", **kwargs: Any) -> MunsitClient:
            return MunsitClient(
                session,
                base_url=str(server.make_url("")),
                api_key=SecretStr(api_key),
                timeout_s=kwargs.pop("timeout_s", 5.0),
                sleep=sleep,
                now=clock.now,
                rand=lambda: 1.0,
                **kwargs,
            )

        yield build


async def test_pages_newest_first(sim: Simulator, make_client: Callable[..., MunsitClient]) -> None:
    sim.add_records(7)
    client = make_client()
    first, rest = await client.list_page(0, 5), await client.list_page(5, 5)
    assert [r.id for r in first + rest] == [r["id"] for r in sim.records]
    assert len(rest) == 2 and client.requests == 2


async def test_401_is_fatal_and_not_retried(
    sim: Simulator, make_client: Callable[..., MunsitClient], sleep: RecordedSleep
) -> None:
    with pytest.raises(UpstreamAuthError, match="API key rejected") as info:
        await make_client(api_key="wrong").list_page(0, 5)
    assert "40101" in str(info.value) and "wrong" not in str(info.value)
    assert sim.list_requests == 1 and sleep.delays == []


@pytest.mark.parametrize("kind", ["429", "500", "502"])
async def test_transient_failures_are_retried(
    kind: str, sim: Simulator, make_client: Callable[..., MunsitClient], sleep: RecordedSleep
) -> None:
    sim.add_records(3)
    sim.inject_fault(kind, count=2)
    records = await make_client().list_page(0, 5)
    assert len(records) == 3
    assert sim.list_requests == 3
    assert sleep.delays == [0.5, 1.0]  # exponential, jitter at its top (rand = 1)


async def test_dropped_connections_are_retried(
    sim: Simulator, make_client: Callable[..., MunsitClient], sleep: RecordedSleep
) -> None:
    sim.add_records(2)
    sim.inject_fault("drop", count=3)
    assert len(await make_client().list_page(0, 5)) == 2
    assert sim.list_requests == 4
    assert sleep.delays  # at least one drop reached the client and was backed off


async def test_retry_after_seconds_is_honoured(
    sim: Simulator, make_client: Callable[..., MunsitClient], sleep: RecordedSleep
) -> None:
    sim.inject_fault("429", retry_after="7")
    await make_client().list_page(0, 5)
    assert sleep.delays == [7.0]


async def test_retry_after_http_date_is_honoured(
    sim: Simulator,
    make_client: Callable[..., MunsitClient],
    sleep: RecordedSleep,
    clock: FakeClock,
) -> None:
    when = datetime.fromtimestamp(int(clock.now()) + 12, UTC)
    sim.inject_fault("429", retry_after=format_datetime(when, usegmt=True))
    await make_client().list_page(0, 5)
    assert len(sleep.delays) == 1 and 11.0 <= sleep.delays[0] <= 12.0


async def test_total_wait_is_bounded(
    sim: Simulator, make_client: Callable[..., MunsitClient], sleep: RecordedSleep
) -> None:
    sim.inject_fault("429", count=2, retry_after="40")
    with pytest.raises(UpstreamUnavailable, match="429"):
        await make_client(max_wait_s=60.0).list_page(0, 5)
    assert sleep.delays == [40.0]  # a second 40 s wait would pass the 60 s budget
    assert sim.list_requests == 2
    sim.inject_fault("500", count=100)
    with pytest.raises(UpstreamUnavailable, match="500"):
        await make_client(max_attempts=4).list_page(0, 5)
    assert sim.list_requests == 2 + 4


@pytest.mark.parametrize(
    ("kind", "message"),
    [("malformed", "malformed JSON"), ("non_array", "returned a JSON dict, expected an array")],
)
async def test_protocol_errors_are_clear_and_not_retried(
    kind: str, message: str, sim: Simulator, make_client: Callable[..., MunsitClient]
) -> None:
    sim.inject_fault(kind)
    with pytest.raises(UpstreamProtocolError, match=message):
        await make_client().list_page(0, 5)
    assert sim.list_requests == 1


async def test_timeout_is_retried(aiohttp_server: ServerFactory, sleep: RecordedSleep) -> None:
    sim = Simulator(api_key="k", clock=SystemClock())
    sim.add_records(1)
    sim.inject_fault("latency", latency_s=5.0)
    server: TestServer = await aiohttp_server(sim.make_app())
    async with aiohttp.ClientSession() as session:
        client = MunsitClient(
            session,
            base_url=str(server.make_url("")),
            api_key=SecretStr("k"),
            timeout_s=0.2,
            sleep=sleep,
            now=SystemClock().now,
        )
        assert len(await client.list_page(0, 5)) == 1
    assert len(sleep.delays) == 1


async def test_unknown_fields_kept(
    sim: Simulator, make_client: Callable[..., MunsitClient]
) -> None:
    sim.add_records(1)
    sim.add_field("model_version", "v7")
    [record] = await make_client().list_page(0, 5)
    assert record.data["model_version"] == "v7"
    assert set(record.data) >= {"id", "status", "audio_url", "file_name", "created_at"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 10 ", 10.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == expected


# ---- poison: answers too big, records quarantined, streams cut ---------------------------


async def test_an_endless_list_answer_is_refused_at_the_cap_and_not_retried(
    sim: Simulator, make_client: Callable[..., MunsitClient], sleep: RecordedSleep
) -> None:
    """Reading stops at `max_response_bytes`: an answer that never ends is refused."""
    sim.poison([(b"[", 1), (b" " * 65_536, 10**12)])
    async with asyncio.timeout(20):  # were it read whole, this would never end
        with pytest.raises(UpstreamProtocolError, match=r"more than 262,144 bytes"):
            await make_client(max_response_bytes=256 * 1024).list_page(0, 5)
    assert sim.list_requests == 1 and sleep.delays == []


async def test_an_answer_just_under_the_cap_is_read(
    sim: Simulator, make_client: Callable[..., MunsitClient]
) -> None:
    sim.add_records(2)
    body = json.dumps(sim.records).encode()
    sim.poison([(body[:-1], 1), (b" " * (8192 - len(body)), 1), (b"]", 1)])
    assert len(await make_client(max_response_bytes=8192).list_page(0, 5)) == 2
    sim.poison([(body[:-1], 1), (b" " * (8193 - len(body)), 1), (b"]", 1)])
    with pytest.raises(UpstreamProtocolError, match="max_response_bytes"):
        await make_client(max_response_bytes=8192).list_page(0, 5)


async def test_quarantined_records_are_left_out_and_reported_once(
    sim: Simulator, make_client: Callable[..., MunsitClient]
) -> None:
    sim.add_records(3)
    sim.add_raw_record(b'{"id": "rec-\\ud800", "status": "pending", "created_at": "2026"}')
    sim.add_raw_record(b'{"id": "x", "status": 5, "created_at": "2026-01-01T00:00:00Z"}')
    counted: list[int] = []
    client = make_client(on_quarantine=counted.append)
    with structlog.testing.capture_logs() as logs:
        pages = [await client.list_page(0, 5) for _ in range(3)]
    assert all([r.id for r in page] == [r["id"] for r in sim.records] for page in pages)
    assert all(page.size == 5 and len(page.quarantined) == 2 for page in pages)
    assert counted == [2]  # the first time only
    reported = [e for e in logs if e["event"].startswith("record quarantined")]
    assert [(e["record_id"], e["position"]) for e in reported] == [("x", 0), ("rec-\\ud800", 1)]


@pytest.mark.parametrize(
    "body",
    [
        '{"errorCode": 1, "errorMessage": "\\ud800"}',  # a lone surrogate
        "[" * 100_000,  # deep nesting
        '{"errorCode": 1, "errorMessage": "' + "x" * 100_000 + '"}',
    ],
)
async def test_an_error_body_is_read_short_and_printable(
    body: str, aiohttp_server: ServerFactory, sleep: RecordedSleep
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=400, text=body)

    app = web.Application()
    app.router.add_get("/denoise", answer)
    server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        client = MunsitClient(
            session,
            base_url=str(server.make_url("")),
            api_key=SecretStr("k"),
            timeout_s=5.0,
            sleep=sleep,
            now=SystemClock().now,
        )
        with pytest.raises(UpstreamProtocolError, match="answered 400") as info:
            await client.list_page(0, 5)
    text = str(info.value)
    assert len(text) < 300
    text.encode("ascii")


async def test_a_record_id_is_one_path_segment_of_the_progress_url(
    aiohttp_server: ServerFactory, sleep: RecordedSleep
) -> None:
    paths: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.Response(status=404, text="{}")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        client = MunsitClient(
            session,
            base_url=str(server.make_url("/api/v1")),
            api_key=SecretStr("k"),
            timeout_s=5.0,
            sleep=sleep,
            now=SystemClock().now,
        )
        for record_id in ("..", "a/../../b", "x?y#z", "é"):
            with pytest.raises(UpstreamNotFound):
                async for _ in client.progress(record_id):
                    pass
    assert paths == [
        "/api/v1/denoise/%2E%2E/progress",
        "/api/v1/denoise/a%2F..%2F..%2Fb/progress",
        "/api/v1/denoise/x%3Fy%23z/progress",
        "/api/v1/denoise/%C3%A9/progress",
    ]


async def test_a_progress_stream_without_message_ends_is_cut_at_64_kib(
    sim: Simulator, make_client: Callable[..., MunsitClient]
) -> None:
    [job] = sim.add_records(1, status="pending")
    sim.poison([(b"data: 1\n", 10**12)], endpoint="progress")
    async with asyncio.timeout(20):
        with pytest.raises(UpstreamProtocolError, match="over 65,536 bytes"):
            async for _ in make_client().progress(job["id"]):
                pass
