"""The simulator's poison controls: raw answers for the list and progress endpoints, and broken
records that stay listed, through its Python methods and its `/_sim/` routes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator

ServerFactory = Callable[..., Any]
KEY = {"x-api-key": "k"}


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="k", clock=clock)


@pytest.fixture
async def client(
    sim: Simulator, aiohttp_server: ServerFactory
) -> AsyncIterator[TestClient[Any, Any]]:
    server: TestServer = await aiohttp_server(sim.make_app())
    async with TestClient(server) as http:
        yield http


async def test_the_next_answers_are_the_poison_then_the_list_again(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    sim.add_records(2)
    answer = await client.post(
        "/_sim/poison",
        json={"parts": [{"b64": base64.b64encode(b"\xff[").decode()}, {"text": "ab", "times": 3}],
              "count": 2},
    )  # fmt: skip
    assert answer.status == 200 and await answer.json() == {"queued": 2}
    for _ in range(2):
        resp = await client.get("/denoise", headers=KEY)
        assert resp.status == 200 and await resp.read() == b"\xff[ababab"
        assert resp.headers["Content-Type"] == "application/json"
    assert len(await (await client.get("/denoise", headers=KEY)).json()) == 2
    assert sim.poison_served == 2


async def test_a_poisoned_progress_stream(sim: Simulator, client: TestClient[Any, Any]) -> None:
    [job] = sim.add_records(1, status="pending")
    sim.poison([(b"data: 1\n", 4)], endpoint="progress")
    resp = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert await resp.read() == b"data: 1\n" * 4


async def test_a_big_poison_streams_in_blocks(sim: Simulator, client: TestClient[Any, Any]) -> None:
    sim.poison([(b"[", 1), (b"0,", 3 * 1024 * 1024), (b"0]", 1)])
    resp = await client.get("/denoise", headers=KEY)
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        size += len(chunk)
    assert size == 1 + 6 * 1024 * 1024 + 2


async def test_poison_needs_the_api_key(sim: Simulator, client: TestClient[Any, Any]) -> None:
    sim.poison(b"[")
    assert (await client.get("/denoise")).status == 401
    assert sim.poison_served == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"parts": []}, {"parts": [{"b64": "!!"}]}, {"parts": [{"text": "x", "times": -1}]},
     {"parts": [{"text": "x"}], "endpoint": "submit"}],
)  # fmt: skip
async def test_bad_poison_requests_are_400(client: TestClient[Any, Any], body: Any) -> None:
    assert (await client.post("/_sim/poison", json=body)).status == 400


@pytest.mark.parametrize(("offset", "limit"), [(0, 2), (0, 3), (1, 2), (2, 2), (3, 5), (0, None)])
async def test_raw_records_sit_on_top_of_the_pages(
    sim: Simulator, client: TestClient[Any, Any], offset: int, limit: int | None
) -> None:
    jobs = [r["id"] for r in reversed(sim.add_records(4))]  # newest first
    await client.post("/_sim/raw-records", json={"text": '"older raw"'})
    await client.post("/_sim/raw-records", json={"text": '"newer raw"'})
    whole = ["newer raw", "older raw", *jobs]
    query = f"?offset={offset}" + ("" if limit is None else f"&limit={limit}")
    page = await (await client.get(f"/denoise{query}", headers=KEY)).json()
    got = [item if isinstance(item, str) else item["id"] for item in page]
    assert got == whole[offset : None if limit is None else offset + limit]
    await client.delete("/_sim/raw-records")
    assert len(await (await client.get("/denoise", headers=KEY)).json()) == 4
