"""The Munsit simulator behaves as the API documentation says, and its controls work."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bridge.clock import FakeClock
from bridge.upstream.simulator import Simulator

KEY = {"x-api-key": "sim-key"}
ClientFactory = Callable[..., Any]


def wav(seconds: float, rate: int = 8000) -> bytes:
    frames = b"\x00\x00" * int(seconds * rate)
    head = b"RIFF" + struct.pack("<I", 36 + len(frames)) + b"WAVEfmt "
    head += struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return head + b"data" + struct.pack("<I", len(frames)) + frames


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="sim-key", clock=clock, processing_s=3.0, max_upload_bytes=200_000)


@pytest.fixture
async def client(sim: Simulator, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    result: TestClient[Any, Any] = await aiohttp_client(sim.make_app())
    return result


async def upload(
    client: TestClient[Any, Any], name: str, data: bytes, field: str = "audio"
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field(field, data, filename=name)
    return await client.post("/denoise", data=form, headers=KEY)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/denoise"), ("POST", "/denoise"), ("GET", "/denoise/x/progress")],
)
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}])
async def test_auth_is_required_everywhere(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str]
) -> None:
    resp = await client.request(method, path, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"errorCode": "40101", "errorMessage": "Invalid or missing API key"}


async def test_list_pages_newest_first(sim: Simulator, client: TestClient[Any, Any]) -> None:
    made = sim.add_records(12)
    everything = await (await client.get("/denoise", headers=KEY)).json()
    assert [r["id"] for r in everything] == [r["id"] for r in reversed(made)]
    created = [r["created_at"] for r in everything]
    assert created == sorted(created, reverse=True) and len(set(created)) == 12
    page = await (await client.get("/denoise?offset=10&limit=5", headers=KEY)).json()
    assert [r["id"] for r in page] == [made[1]["id"], made[0]["id"]]
    assert await (await client.get("/denoise?offset=50&limit=5", headers=KEY)).json() == []
    assert set(everything[0]) == {
        "id",
        "user_id",
        "transaction_id",
        "audio_url",
        "original_audio_url",
        "file_name",
        "audio_duration",
        "audio_size",
        "audio_format",
        "source_type",
        "status",
        "error",
        "created_at",
        "updated_at",
    }


@pytest.mark.parametrize("query", ["offset=-1", "limit=0", "limit=abc", "offset=1.5"])
async def test_bad_query_is_400(client: TestClient[Any, Any], query: str) -> None:
    resp = await client.get(f"/denoise?{query}", headers=KEY)
    assert resp.status == 400
    body = await resp.json()
    assert body["errorCode"] == "40005" and query.split("=")[0] in body["errorMessage"]


async def test_upload_queues_a_job_that_succeeds(
    sim: Simulator, client: TestClient[Any, Any], clock: FakeClock
) -> None:
    resp = await upload(client, "Meeting.WAV", wav(2.0))
    assert resp.status == 200
    ids = await resp.json()
    assert ids["jobId"] == ids["denoiseId"]
    [rec] = sim.records
    assert rec["id"] == ids["jobId"] and rec["status"] == "pending" and rec["audio_url"] is None
    assert (rec["audio_format"], rec["source_type"], rec["audio_duration"]) == ("wav", "audio", 2.0)
    await clock.advance(3.5)
    [rec] = sim.records
    assert rec["status"] == "success" and rec["error"] is None
    assert rec["audio_url"].startswith("https://cdn.munsit.com/")
    assert rec["updated_at"] > rec["created_at"]


async def test_video_upload_is_video_and_junk_fails(
    sim: Simulator, client: TestClient[Any, Any], clock: FakeClock
) -> None:
    assert (
        await upload(client, "clip.mov", b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 99)
    ).status == 200
    assert (await upload(client, "fake.mp3", b"hello world")).status == 200
    await clock.advance(3.5)
    fake, clip = sim.records
    assert clip["source_type"] == "video" and clip["status"] == "success"
    assert fake["status"] == "failed" and fake["error"] == "Could not decode audio stream"
    assert fake["audio_url"] is None


@pytest.mark.parametrize(
    ("name", "data", "field", "code"),
    [
        ("a.wav", wav(1), "file", "40001"),
        ("a.txt", b"hello", "audio", "40002"),
        ("a.wav", wav(20), "audio", "40003"),  # 320 kB > the 200 kB test limit
    ],
)
async def test_upload_validation(
    client: TestClient[Any, Any], name: str, data: bytes, field: str, code: str
) -> None:
    resp = await upload(client, name, data, field)
    assert resp.status == 400
    assert (await resp.json())["errorCode"] == code


async def test_upload_longer_than_15_minutes_is_refused(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    long_wav = wav(901, rate=100)  # ~180 kB: under the size limit, over the duration limit
    resp = await upload(client, "long.wav", long_wav)
    assert resp.status == 400
    assert (await resp.json())["errorCode"] == "40004"
    assert sim.records == []


async def test_upload_without_multipart_and_payment_required(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    resp = await client.post("/denoise", json={"audio": "x"}, headers=KEY)
    assert (await resp.json())["errorCode"] == "40001"
    sim.balance = 1
    assert (await upload(client, "a.wav", wav(1))).status == 200
    resp = await upload(client, "b.wav", wav(1))
    assert resp.status == 402
    assert await resp.json() == {
        "errorCode": "40201",
        "errorMessage": "Insufficient wallet balance",
    }


async def test_set_status_any_value_and_extra_fields(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    [rec] = sim.add_records(1, status="pending")
    sim.set_status(rec["id"], "archived")
    sim.add_field("region", "eu")
    [got] = await (await client.get("/denoise", headers=KEY)).json()
    assert got["status"] == "archived" and got["region"] == "eu"
    sim.set_status(rec["id"], "failed", error="Too noisy")
    assert sim.records[0]["error"] == "Too noisy"


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("429", 429, 42901), ("500", 500, "50001"), ("502", 502, "50202")],
)
async def test_error_faults(
    sim: Simulator, client: TestClient[Any, Any], kind: str, status: int, code: object
) -> None:
    sim.inject_fault(kind, count=2)
    for _ in range(2):
        resp = await client.get("/denoise", headers=KEY)
        assert resp.status == status
        assert (await resp.json())["errorCode"] == code
        assert "Retry-After" not in resp.headers
    assert (await client.get("/denoise", headers=KEY)).status == 200


async def test_retry_after_is_passed_verbatim(sim: Simulator, client: TestClient[Any, Any]) -> None:
    sim.inject_fault("429", retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    resp = await client.get("/denoise", headers=KEY)
    assert resp.headers["Retry-After"] == "Wed, 21 Oct 2026 07:28:00 GMT"


async def test_body_faults(sim: Simulator, client: TestClient[Any, Any]) -> None:
    sim.inject_fault("malformed")
    sim.inject_fault("non_array")
    with pytest.raises(json.JSONDecodeError):
        json.loads(await (await client.get("/denoise", headers=KEY)).text())
    assert isinstance(await (await client.get("/denoise", headers=KEY)).json(), dict)


async def test_drop_fault_closes_the_connection(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    sim.inject_fault("drop", endpoint="submit")
    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(client, "a.wav", wav(1))
    assert sim.records == []
    assert (await upload(client, "a.wav", wav(1))).status == 200


async def test_latency_fault_waits_on_the_clock(
    sim: Simulator, client: TestClient[Any, Any], clock: FakeClock
) -> None:
    sim.inject_fault("latency", latency_s=30.0)
    request = asyncio.ensure_future(client.get("/denoise", headers=KEY))
    while clock.next_wakeup_in() is None:
        await asyncio.wait({request}, timeout=0.01)
    assert not request.done()
    await clock.advance(30.0)
    assert (await request).status == 200


async def test_faults_target_their_endpoint_and_unknown_kind_is_refused(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject_fault("teapot")
    with pytest.raises(ValueError, match="unknown endpoint"):
        sim.inject_fault("500", endpoint="nowhere")


async def test_submit_fault_does_not_touch_list(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    sim.inject_fault("502", endpoint="submit")
    assert (await client.get("/denoise", headers=KEY)).status == 200
    assert (await upload(client, "a.wav", wav(1))).status == 502


async def test_drift_shifts_later_pages(sim: Simulator, client: TestClient[Any, Any]) -> None:
    sim.add_records(6)
    sim.drift(inserts_per_fetch=1, fetches=1)
    first = await (await client.get("/denoise?offset=0&limit=3", headers=KEY)).json()
    second = await (await client.get("/denoise?offset=3&limit=3", headers=KEY)).json()
    assert second[0]["id"] == first[-1]["id"]  # seen twice: the list moved down by one
    assert len(sim.records) == 7 and sim.records[0]["status"] == "pending"


async def read_sse(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    messages = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            messages.append(json.loads(line[6:]))
    return messages


async def test_progress_unknown_id_is_json_404(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/denoise/nope/progress", headers=KEY)
    assert resp.status == 404
    assert await resp.json() == {"errorCode": "40401", "errorMessage": "Denoise record not found"}


async def test_progress_replays_terminal_message(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    ok, bad = sim.add_records(1)[0], sim.add_records(1, status="failed")[0]
    resp = await client.get(f"/denoise/{ok['id']}/progress", headers=KEY)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    [done] = await read_sse(resp)
    assert done == {"stage": "done", "url": sim.records[1]["audio_url"], "denoiseId": ok["id"]}
    [error] = await read_sse(await client.get(f"/denoise/{bad['id']}/progress", headers=KEY))
    assert error["stage"] == "error" and error["message"]


async def test_progress_streams_until_done(
    sim: Simulator, client: TestClient[Any, Any], clock: FakeClock
) -> None:
    [job] = sim.add_records(1, status="pending")
    resp = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    reader = asyncio.ensure_future(read_sse(resp))
    for _ in range(10):
        while clock.next_wakeup_in() is None and not reader.done():
            await asyncio.wait({reader}, timeout=0.01)
        await clock.advance(0.6)
    messages = await reader
    stages = [m["stage"] for m in messages]
    assert stages[-1] == "done" and set(stages[:-1]) == {"processing"}
    pcts = [m["pct"] for m in messages[:-1]]
    assert pcts == sorted(pcts) and pcts[-1] > pcts[0]


async def test_progress_wakes_on_set_status(
    sim: Simulator, client: TestClient[Any, Any], clock: FakeClock
) -> None:
    sim.processing_s = 600.0
    [job] = sim.add_records(1, status="pending")
    resp = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    reader = asyncio.ensure_future(read_sse(resp))
    while clock.next_wakeup_in() is None:
        await asyncio.wait({reader}, timeout=0.01)
    sim.set_status(job["id"], "failed", error="Cancelled by user")
    messages = await asyncio.wait_for(reader, 10)
    assert messages[-1] == {"stage": "error", "message": "Cancelled by user"}


async def test_control_routes(sim: Simulator, client: TestClient[Any, Any]) -> None:
    made = await (await client.post("/_sim/records", json={"count": 3, "status": "pending"})).json()
    assert len(made) == 3
    rid = made[0]["id"]
    resp = await client.post(f"/_sim/records/{rid}/status", json={"status": "failed", "error": "x"})
    assert (await resp.json())["error"] == "x"
    assert (await client.delete(f"/_sim/records/{rid}")).status == 200
    assert (await client.delete(f"/_sim/records/{rid}")).status == 404
    assert (await client.post("/_sim/faults", json={"kind": "500", "count": 2})).status == 200
    assert (await client.post("/_sim/faults", json={"kind": "nope"})).status == 400
    assert (
        await client.post("/_sim/drift", json={"inserts_per_fetch": 1, "fetches": 1})
    ).status == 200
    assert (await client.post("/_sim/drift", json={"fetches": "x"})).status == 400
    assert (await client.post("/_sim/records", json={"count": 0})).status == 400
    assert (await client.get("/denoise", headers=KEY)).status == 500
    stats = await (await client.get("/_sim/stats")).json()
    assert stats == {"records": 2, "pending": 2, "list_requests": 1}


async def test_hundred_thousand_records_page_from_the_end(
    sim: Simulator, client: TestClient[Any, Any]
) -> None:
    sim.add_records(100_000)
    page = await (await client.get("/denoise?offset=99990&limit=50", headers=KEY)).json()
    assert len(page) == 10
    assert page[-1]["file_name"] == "recording-00001.mp3"
