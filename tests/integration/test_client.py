"""The upstream client against the simulator: auth, retries, Retry-After, protocol errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge.clock import FakeClock, SystemClock
from bridge.errors import UpstreamAuthError, UpstreamProtocolError, UpstreamUnavailable
from bridge.retry_after import parse_retry_after
from bridge.upstream.client import MunsitClient
from bridge.upstream.simulator import Simulator

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
