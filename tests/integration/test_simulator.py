"""The Munsit simulator behaves as the API documentation says, and its controls work."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator, serve

KEY = {"x-api-key": "sim-key"}
START = datetime(2026, 11, 23, 19, 0, 0, 123000, tzinfo=UTC)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = {
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
MAGIC = {  # a real first few bytes of each accepted container
    "wav": b"RIFF\x24\x00\x00\x00WAVE",
    "mp3": b"ID3\x04\x00",
    "m4a": b"\x00\x00\x00\x20ftypM4A ",
    "flac": b"fLaC\x00\x00\x00\x22",
    "ogg": b"OggS\x00\x02",
    "mp4": b"\x00\x00\x00\x18ftypmp42",
    "mov": b"\x00\x00\x00\x14ftypqt  ",
    "m4v": b"\x00\x00\x00\x1cftypM4V ",
    "mkv": b"\x1a\x45\xdf\xa3\x01\x00",
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42",
    "avi": b"RIFF\x00\x10\x00\x00AVI LIST",
}
Client = TestClient[web.Request, web.Application]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def wav(seconds: float, rate: int = 8000, extra_chunk: bytes = b"") -> bytes:
    """A mono 16-bit PCM WAV file; `extra_chunk` goes between `fmt ` and `data`."""
    frames = b"\x00\x00" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
    body += b"data" + struct.pack("<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START.timestamp())


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="sim-key", clock=clock, processing_s=3.0, max_upload_bytes=200_000)


@pytest.fixture
async def client(sim: Simulator, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(sim.make_app())


async def upload(
    client: Client, name: str, data: bytes, field: str = "audio"
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field(field, io.BytesIO(data), filename=name)  # streamed, like a real client
    return await client.post("/denoise", data=form, headers=KEY)


async def list_page(client: Client, query: str = "") -> list[dict[str, Any]]:
    resp = await client.get(f"/denoise{query}", headers=KEY)
    assert resp.status == 200
    body: list[dict[str, Any]] = await resp.json()
    return body


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run (no clock time passes) until `condition` holds."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def read_sse(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    messages = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            messages.append(json.loads(line[6:]))
    return messages


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- auth and the list ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/denoise"), ("POST", "/denoise"), ("GET", "/denoise/x/progress")],
)
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}])
async def test_auth_is_required_everywhere(
    sim: Simulator, client: Client, method: str, path: str, headers: dict[str, str]
) -> None:
    resp = await client.request(method, path, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"errorCode": "40101", "errorMessage": "Invalid or missing API key"}
    assert sim.request_log == [(method, path, 401)]
    assert sim.list_requests == (1 if (method, path) == ("GET", "/denoise") else 0)


async def test_list_pages_newest_first(sim: Simulator, client: Client) -> None:
    made = sim.add_records(12)
    everything = await list_page(client)
    assert [r["id"] for r in everything] == [r["id"] for r in reversed(made)]
    assert [r["created_at"] for r in everything] == [
        iso(START - timedelta(milliseconds=i)) for i in range(12)
    ]
    assert [r["id"] for r in await list_page(client, "?offset=10&limit=5")] == [
        made[1]["id"],
        made[0]["id"],
    ]
    assert [r["id"] for r in await list_page(client, "?limit=3")] == [
        r["id"] for r in everything[:3]
    ]
    assert [r["id"] for r in await list_page(client, "?offset=9")] == [
        r["id"] for r in everything[9:]
    ]
    assert await list_page(client, "?offset=12") == []
    assert await list_page(client, "?offset=50&limit=5") == []
    assert sim.list_requests == 6


async def test_records_have_exactly_munsits_fields(sim: Simulator, client: Client) -> None:
    sim.add_records(1)
    [rec] = await list_page(client)
    assert set(rec) == FIELDS
    rid, ext = rec["id"], rec["audio_format"]
    assert uuid.UUID(rid).version == 4 and uuid.UUID(rec["transaction_id"]).version == 4
    assert rec["user_id"] == "user_sim" and rec["status"] == "success" and rec["error"] is None
    assert rec["audio_url"] == f"https://cdn.munsit.com/denoised/{rid}.{ext}"
    assert rec["original_audio_url"] == f"https://cdn.munsit.com/uploads/{rid}.{ext}"
    assert rec["file_name"].endswith(f".{ext}") and ext == ext.lower()
    assert isinstance(rec["audio_duration"], float) and 0 < rec["audio_duration"] <= 900
    assert isinstance(rec["audio_size"], int) and rec["source_type"] in ("audio", "video")
    assert ISO.match(rec["created_at"]) and rec["created_at"] == iso(START)


async def test_ids_are_deterministic_from_the_seed(clock: FakeClock) -> None:
    def ids(seed: int) -> list[str]:
        sim = Simulator(api_key="k", clock=clock, seed=seed)
        return [r["id"] for r in sim.add_records(3)]

    assert ids(7) == ids(7)
    assert ids(7) != ids(8)


async def test_records_created_at_one_instant_stay_strictly_newest_first(
    sim: Simulator, clock: FakeClock
) -> None:
    first = sim.submit("a.wav", wav(1))
    second = sim.submit("b.wav", wav(1))
    batch = sim.add_records(3)
    records = sim.records
    assert [r["id"] for r in records] == [r["id"] for r in reversed([first, second, *batch])]
    created = [r["created_at"] for r in records]
    assert created == sorted(set(created), reverse=True)  # distinct and descending
    assert records[-1]["created_at"] == iso(START)


@pytest.mark.parametrize(
    "query",
    ["offset=-1", "limit=0", "limit=abc", "offset=1.5", "offset=+1", "limit=1_0", "offset="],
)
async def test_bad_query_is_400(client: Client, query: str) -> None:
    resp = await client.get(f"/denoise?{query}", headers=KEY)
    assert resp.status == 400
    body = await resp.json()
    assert body["errorCode"] == "40005" and query.split("=")[0] in body["errorMessage"]


async def test_unknown_routes_answer_json(client: Client) -> None:
    resp = await client.get("/nowhere")
    assert resp.status == 404 and set(await resp.json()) == {"errorCode", "errorMessage"}
    resp = await client.put("/denoise", headers=KEY)
    assert resp.status == 405 and (await resp.json())["errorCode"] == "40500"


# ---- uploads ------------------------------------------------------------------------------


async def test_upload_queues_a_job_that_succeeds(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    data = wav(2.0)
    resp = await upload(client, "Meeting.WAV", data)
    assert resp.status == 200
    ids = await resp.json()
    assert set(ids) == {"jobId", "denoiseId"} and ids["jobId"] == ids["denoiseId"]
    [rec] = sim.records
    assert rec["id"] == ids["jobId"] and rec["status"] == "pending" and rec["audio_url"] is None
    assert rec["file_name"] == "Meeting.WAV" and rec["audio_size"] == len(data)
    assert (rec["audio_format"], rec["source_type"], rec["audio_duration"]) == ("wav", "audio", 2.0)
    assert uuid.UUID(rec["transaction_id"]).version == 4
    await clock.advance(2.999)
    assert sim.records[0]["status"] == "pending"
    await clock.advance(0.001)
    [rec] = await list_page(client)
    assert rec["status"] == "success" and rec["error"] is None
    assert rec["audio_url"] == f"https://cdn.munsit.com/denoised/{rec['id']}.wav"
    assert rec["updated_at"] == iso(START + timedelta(seconds=3))


@pytest.mark.parametrize("ext", sorted(MAGIC))
async def test_magic_numbers_decide_the_outcome(
    sim: Simulator, client: Client, clock: FakeClock, ext: str
) -> None:
    assert (await upload(client, f"real.{ext}", MAGIC[ext] + b"\x00" * 64)).status == 200
    assert (await upload(client, f"junk.{ext}", b"this is not media" * 4)).status == 200
    await clock.advance(3.5)
    junk, real = sim.records
    kind = "video" if ext in ("mp4", "mov", "mkv", "webm", "avi", "m4v") else "audio"
    assert real["source_type"] == junk["source_type"] == kind
    assert real["status"] == "success" and real["audio_url"] is not None
    assert junk["status"] == "failed" and junk["error"] == "Could not decode audio stream"
    assert junk["audio_url"] is None


async def test_mp3_frame_sync_without_id3_is_media(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    assert (await upload(client, "frames.mp3", b"\xff\xfb\x90\x64" + b"\x00" * 64)).status == 200
    await clock.advance(3.0)
    assert sim.records[0]["status"] == "success"


@pytest.mark.parametrize(
    ("name", "data", "field", "code"),
    [
        ("a.wav", wav(1), "file", "40001"),
        ("a.txt", b"hello", "audio", "40002"),
        ("noextension", b"hello", "audio", "40002"),
        ("a.wav", b"\x00" * 200_001, "audio", "40003"),  # the test limit is 200,000 bytes
        ("long.wav", wav(901, rate=100), "audio", "40004"),  # ~180 kB: only too long
    ],
)
async def test_upload_validation(
    sim: Simulator, client: Client, name: str, data: bytes, field: str, code: str
) -> None:
    resp = await upload(client, name, data, field)
    assert resp.status == 400
    body = await resp.json()
    assert body["errorCode"] == code and body["errorMessage"]
    assert sim.records == []


async def test_upload_error_messages(client: Client) -> None:
    body = await (await upload(client, "a.txt", b"x")).json()
    for ext in ("wav", "mp3", "m4a", "flac", "ogg", "mp4", "mov", "mkv", "webm", "avi", "m4v"):
        assert ext in body["errorMessage"]
    body = await (await upload(client, "a.wav", b"\x00" * 300_000)).json()
    assert "exceeds" in body["errorMessage"] and "MB" in body["errorMessage"]


async def test_audio_that_is_not_a_file_is_refused(sim: Simulator, client: Client) -> None:
    form = aiohttp.FormData()
    form.add_field("audio", "just text")
    resp = await client.post("/denoise", data=form, headers=KEY)
    assert resp.status == 400
    assert await resp.json() == {
        "errorCode": "40001",
        "errorMessage": "audio is required and must be a file",
    }
    resp = await client.post("/denoise", json={"audio": "x"}, headers=KEY)
    assert (await resp.json())["errorCode"] == "40001"
    assert sim.records == []


async def test_size_limit_is_inclusive(sim: Simulator, client: Client) -> None:
    assert (await upload(client, "a.mp3", b"ID3" + b"\x00" * 199_997)).status == 200
    assert sim.records[0]["audio_size"] == 200_000


async def test_wav_duration_comes_from_the_header(sim: Simulator, client: Client) -> None:
    junk = b"LIST" + struct.pack("<I", 5) + b"odd!!" + b"\x00"  # odd size, padded
    assert (await upload(client, "a.wav", wav(899, rate=100, extra_chunk=junk))).status == 200
    assert sim.records[0]["audio_duration"] == 899.0


async def test_other_formats_are_estimated_at_128_kbit(clock: FakeClock) -> None:
    sim = Simulator(api_key="k", clock=clock, max_upload_bytes=20_000_000)
    assert sim.submit("talk.ogg", b"OggS" + b"\x00" * 159_996)["audio_duration"] == 10.0
    # WAV without a usable header: estimated too
    assert sim.submit("odd.wav", b"\x00" * 16_000)["audio_duration"] == 1.0
    with pytest.raises(ValueError, match="unsupported"):
        sim.submit("notes.txt", b"hello")


async def test_estimated_duration_over_15_minutes_is_refused(
    clock: FakeClock, aiohttp_client: AiohttpClient
) -> None:
    sim = Simulator(api_key="sim-key", clock=clock, max_upload_bytes=20 * 1024 * 1024)
    client = await aiohttp_client(sim.make_app())
    long_ogg = b"OggS" + b"\x00" * (900 * 16_000 + 12)  # 900.001 s at 128 kbit/s
    resp = await upload(client, "long.ogg", long_ogg)
    assert resp.status == 400 and (await resp.json())["errorCode"] == "40004"
    assert (await upload(client, "ok.ogg", long_ogg[:-16])).status == 200


async def test_payment_required_when_the_balance_is_spent(sim: Simulator, client: Client) -> None:
    sim.balance = 1
    assert (await upload(client, "a.wav", wav(1))).status == 200
    assert sim.balance == 0
    resp = await upload(client, "b.wav", wav(1))
    assert resp.status == 402
    assert await resp.json() == {
        "errorCode": "40201",
        "errorMessage": "Insufficient wallet balance",
    }
    assert len(sim.records) == 1


# ---- statuses -----------------------------------------------------------------------------


async def test_pending_records_complete_after_processing(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    made = sim.add_records(3, status="pending")
    assert {r["status"] for r in made} == {"pending"}
    assert (await (await client.get("/_sim/stats")).json())["pending"] == 3
    await clock.advance(3.0)
    records = await list_page(client)
    assert {r["status"] for r in records} == {"success"}
    for rec in records:
        created = datetime.fromisoformat(rec["created_at"])
        assert datetime.fromisoformat(rec["updated_at"]) - created == timedelta(seconds=3)
    assert (await (await client.get("/_sim/stats")).json())["pending"] == 0


async def test_set_status_and_schema_drift(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    [rec] = sim.add_records(1, status="pending")
    await clock.advance(1.0)
    sim.set_status(rec["id"], "success")
    [got] = sim.records
    assert got["status"] == "success" and got["audio_url"] is not None
    assert got["updated_at"] == iso(START + timedelta(seconds=1))
    sim.set_status(rec["id"], "archived", error="moved to cold storage")
    sim.add_field("region", "eu")
    [got] = await list_page(client)
    assert got["status"] == "archived" and got["region"] == "eu" and got["audio_url"] is None
    assert got["error"] == "moved to cold storage"
    sim.set_status(rec["id"], "failed", error="Too noisy")
    assert sim.records[0]["error"] == "Too noisy"
    sim.set_status(rec["id"], "failed")
    assert sim.records[0]["error"] == "Could not decode audio stream"
    with pytest.raises(KeyError):
        sim.set_status("no-such-id", "success")


async def test_a_status_set_by_hand_is_not_overridden(sim: Simulator, clock: FakeClock) -> None:
    [rec] = sim.add_records(1, status="pending")
    sim.set_status(rec["id"], "pending")
    await clock.advance(10.0)
    assert sim.records[0]["status"] == "pending"
    with pytest.raises(ValueError, match="status"):
        sim.add_records(1, status="archived")


async def test_remove_shifts_later_pages_up(sim: Simulator, client: Client) -> None:
    made = sim.add_records(5)
    before = await list_page(client, "?offset=2&limit=2")
    sim.remove(made[3]["id"])
    after = await list_page(client, "?offset=2&limit=2")
    assert after[0]["id"] == before[1]["id"]
    assert len(sim.records) == 4
    with pytest.raises(KeyError):
        sim.remove(made[3]["id"])


# ---- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("429", 429, {"errorCode": 42901, "errorMessage": "Too many concurrent requests"}),
        ("500", 500, {"errorCode": "50000", "errorMessage": "Internal server error"}),
        ("502", 502, {"errorCode": "50202", "errorMessage": "Upstream error"}),
    ],
)
async def test_error_faults(
    sim: Simulator, client: Client, kind: str, status: int, body: dict[str, Any]
) -> None:
    sim.inject_fault(kind, count=2)
    for _ in range(2):
        resp = await client.get("/denoise", headers=KEY)
        assert resp.status == status
        assert await resp.json() == body
        assert "Retry-After" not in resp.headers
    assert (await client.get("/denoise", headers=KEY)).status == 200
    assert [s for _, _, s in sim.request_log] == [status, status, 200]
    assert sim.list_requests == 3


@pytest.mark.parametrize("value", ["120", "Wed, 21 Oct 2026 07:28:00 GMT"])
async def test_retry_after_is_passed_verbatim(sim: Simulator, client: Client, value: str) -> None:
    sim.inject_fault("429", retry_after=value)
    resp = await client.get("/denoise", headers=KEY)
    assert resp.status == 429 and resp.headers["Retry-After"] == value


async def test_body_faults(sim: Simulator, client: Client) -> None:
    sim.add_records(2)
    sim.inject_fault("malformed")
    sim.inject_fault("non_array")
    resp = await client.get("/denoise", headers=KEY)
    assert resp.status == 200 and resp.content_type == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(await resp.text())
    resp = await client.get("/denoise", headers=KEY)
    assert resp.status == 200 and isinstance(await resp.json(), dict)
    assert len(await list_page(client)) == 2


@pytest.mark.parametrize("endpoint", ["list", "submit", "progress"])
async def test_drop_fault_hangs_up_quietly(
    sim: Simulator, client: Client, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    [rec] = sim.add_records(1)
    sim.inject_fault("drop", endpoint=endpoint)
    with pytest.raises(aiohttp.ClientConnectionError):
        if endpoint == "list":
            await client.get("/denoise", headers=KEY)
        elif endpoint == "submit":
            await upload(client, "a.wav", wav(1))
        else:
            await client.get(f"/denoise/{rec['id']}/progress", headers=KEY)
    assert sim.request_log[-1][2] == 0
    assert len(sim.records) == 1  # a dropped upload creates nothing
    assert (await client.get("/denoise", headers=KEY)).status == 200
    assert (await upload(client, "a.wav", wav(1))).status == 200
    assert problems(caplog) == []


async def test_latency_fault_waits_on_the_clock(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    sim.inject_fault("latency", latency_s=30.0)
    request = asyncio.ensure_future(client.get("/denoise", headers=KEY))
    await until(lambda: clock.next_wakeup_in() is not None)
    assert clock.next_wakeup_in() == 30.0
    await clock.advance(29.0)
    assert not request.done()
    await clock.advance(1.0)
    assert (await request).status == 200


async def test_faults_are_fifo_per_endpoint_and_after_auth(sim: Simulator, client: Client) -> None:
    sim.inject_fault("429")
    sim.inject_fault("502", endpoint="submit")
    sim.inject_fault("500")
    assert (await client.get("/denoise")).status == 401  # no key: the fault stays queued
    assert (await client.get("/denoise", headers=KEY)).status == 429
    assert (await upload(client, "a.wav", wav(1))).status == 502
    assert (await client.get("/denoise", headers=KEY)).status == 500
    assert (await client.get("/denoise", headers=KEY)).status == 200
    assert (await upload(client, "a.wav", wav(1))).status == 200


async def test_fault_arguments_are_checked(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject_fault("teapot")
    with pytest.raises(ValueError, match="unknown endpoint"):
        sim.inject_fault("500", endpoint="nowhere")


# ---- drift --------------------------------------------------------------------------------


async def test_drift_shifts_later_pages(sim: Simulator, client: Client) -> None:
    sim.add_records(6)
    sim.drift(inserts_per_fetch=1, fetches=2)
    first = await list_page(client, "?offset=0&limit=3")
    second = await list_page(client, "?offset=3&limit=3")
    assert second[0]["id"] == first[-1]["id"]  # seen twice: the list moved down by one
    assert len(sim.records) == 8 and sim.records[0]["status"] == "pending"
    await list_page(client, "?limit=1")
    assert len(sim.records) == 8  # both drifting fetches are used up


# ---- progress stream ----------------------------------------------------------------------


async def test_progress_unknown_id_is_json_404(client: Client) -> None:
    resp = await client.get("/denoise/nope/progress", headers=KEY)
    assert resp.status == 404 and resp.content_type == "application/json"
    assert await resp.json() == {"errorCode": "40401", "errorMessage": "Denoise record not found"}


async def test_progress_replays_the_terminal_message(sim: Simulator, client: Client) -> None:
    [ok] = sim.add_records(1)
    [bad] = sim.add_records(1, status="failed")
    resp = await client.get(f"/denoise/{ok['id']}/progress", headers=KEY)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert await read_sse(resp) == [
        {"stage": "done", "url": ok["audio_url"], "denoiseId": ok["id"]}
    ]
    resp = await client.get(f"/denoise/{bad['id']}/progress", headers=KEY)
    assert await read_sse(resp) == [{"stage": "error", "message": "Could not decode audio stream"}]


async def test_progress_streams_until_done(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    resp = await upload(client, "a.wav", wav(1))
    job_id = (await resp.json())["jobId"]
    resp = await client.get(f"/denoise/{job_id}/progress", headers=KEY)
    raw = await resp.content.readline()
    assert raw == b'data: {"stage": "processing", "pct": 0, "message": "Denoising"}\n'
    reader = asyncio.ensure_future(read_sse(resp))
    for _ in range(4):
        await until(lambda: clock.next_wakeup_in() is not None)
        await clock.advance(0.6)
    await until(lambda: clock.next_wakeup_in() is not None)
    assert not reader.done()  # 2.4 s of 3.0
    await clock.advance(0.6)
    await until(reader.done)
    messages = reader.result()
    url = f"https://cdn.munsit.com/denoised/{job_id}.wav"
    assert messages[-1] == {"stage": "done", "url": url, "denoiseId": job_id}
    pcts = [m["pct"] for m in messages[:-1]]
    assert {m["stage"] for m in messages[:-1]} == {"processing"}
    assert pcts == sorted(pcts) and len(set(pcts)) == 4 and pcts[0] > 0 and pcts[-1] < 100


async def test_progress_wakes_when_the_status_is_set(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    sim.processing_s = 600.0
    [job] = sim.add_records(1, status="pending")
    resp = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    reader = asyncio.ensure_future(read_sse(resp))
    await until(lambda: clock.next_wakeup_in() is not None)
    sim.set_status(job["id"], "failed", error="Cancelled by user")
    await until(reader.done)  # no clock time passed
    assert reader.result() == [
        {"stage": "processing", "pct": 0, "message": "Denoising"},
        {"stage": "error", "message": "Cancelled by user"},
    ]


async def test_progress_closes_after_15_idle_minutes(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    [job] = sim.add_records(1)
    sim.set_status(job["id"], "archiving")  # not terminal, not progressing
    resp = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    reader = asyncio.ensure_future(read_sse(resp))
    await until(lambda: clock.next_wakeup_in() is not None)
    await clock.advance(899.0)
    assert not reader.done()
    await until(lambda: clock.next_wakeup_in() is not None)
    await clock.advance(1.0)
    await until(reader.done)
    assert reader.result() == []


async def test_progress_ends_when_the_record_is_removed(
    sim: Simulator, client: Client, clock: FakeClock
) -> None:
    sim.processing_s = 600.0
    [job] = sim.add_records(1, status="pending")
    resp = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    reader = asyncio.ensure_future(read_sse(resp))
    await until(lambda: clock.next_wakeup_in() is not None)
    sim.remove(job["id"])
    await until(reader.done)
    assert [m["stage"] for m in reader.result()] == ["processing"]


async def test_shutdown_ends_streams_and_waits_at_once(
    sim: Simulator, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(sim.make_app())
    sim.processing_s = 600.0
    sim.inject_fault("latency", latency_s=1000.0)
    [job] = sim.add_records(1, status="pending")
    abandoned = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    assert (await abandoned.content.readline()).startswith(b"data: ")
    abandoned.close()  # the client walks away while the server waits on the fake clock
    watched = await client.get(f"/denoise/{job['id']}/progress", headers=KEY)
    slow = asyncio.ensure_future(client.get("/denoise", headers=KEY))
    await until(lambda: sim.list_requests == 1)
    await client.server.close()  # would wait out aiohttp's 60 s grace period if they hung on
    assert (await slow).status == 200
    assert await read_sse(watched) == [{"stage": "processing", "pct": 0, "message": "Denoising"}]
    assert problems(caplog) == []


# ---- control routes -----------------------------------------------------------------------


async def test_control_routes(sim: Simulator, client: Client) -> None:
    resp = await client.post("/_sim/records", json={"count": 3, "status": "pending"})
    made = await resp.json()
    assert [r["status"] for r in made] == ["pending"] * 3 and set(made[0]) == FIELDS
    rid = made[0]["id"]
    resp = await client.post(f"/_sim/records/{rid}/status", json={"status": "failed", "error": "x"})
    assert (await resp.json())["error"] == "x" and sim.records[-1]["status"] == "failed"
    assert (await client.delete(f"/_sim/records/{rid}")).status == 200
    resp = await client.delete(f"/_sim/records/{rid}")
    assert resp.status == 404
    assert await resp.json() == {"errorCode": "40401", "errorMessage": "Denoise record not found"}
    resp = await client.post(f"/_sim/records/{rid}/status", json={"status": "success"})
    assert resp.status == 404
    resp = await client.post("/_sim/faults", json={"kind": "429", "count": 2, "retry_after": 5})
    assert await resp.json() == {"queued": 2}
    resp = await client.post("/_sim/drift", json={"inserts_per_fetch": 1, "fetches": 1})
    assert resp.status == 200
    for _ in range(2):
        resp = await client.get("/denoise", headers=KEY)
        assert resp.status == 429 and resp.headers["Retry-After"] == "5"
    assert len(await list_page(client)) == 2
    stats = await (await client.get("/_sim/stats")).json()
    assert stats == {"records": 3, "pending": 3, "list_requests": 3}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/records", {"count": 0}),
        ("/_sim/records", {"count": "3"}),
        ("/_sim/records", {"count": True}),
        ("/_sim/records", {"count": 1, "status": "archived"}),
        ("/_sim/records", [1, 2]),
        ("/_sim/records", "not json"),
        ("/_sim/faults", {"kind": "nope"}),
        ("/_sim/faults", {"count": 1}),
        ("/_sim/faults", {"kind": "500", "endpoint": "elsewhere"}),
        ("/_sim/faults", {"kind": "latency", "latency_s": "slow"}),
        ("/_sim/faults", {"kind": "500", "count": -1}),
        ("/_sim/drift", {"fetches": 1}),
        ("/_sim/drift", {"inserts_per_fetch": 1, "fetches": "x"}),
        ("/_sim/drift", {"inserts_per_fetch": -1, "fetches": 1}),
    ],
)
async def test_control_routes_refuse_bad_input(
    sim: Simulator, client: Client, path: str, body: object
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    resp = await client.post(path, data=data, headers={"content-type": "application/json"})
    assert resp.status == 400
    error = await resp.json()
    assert error["errorCode"] == "40000" and error["errorMessage"]
    assert sim.records == [] and (await client.get("/denoise", headers=KEY)).status == 200


async def test_control_status_needs_a_status(sim: Simulator, client: Client) -> None:
    [rec] = sim.add_records(1)
    resp = await client.post(f"/_sim/records/{rec['id']}/status", json={"error": "x"})
    assert resp.status == 400 and "status" in (await resp.json())["errorMessage"]
    assert sim.records[0]["status"] == "success"


# ---- scale and the standalone server ------------------------------------------------------


async def test_hundred_thousand_records_page_from_the_end(sim: Simulator, client: Client) -> None:
    made = sim.add_records(100_000)
    page = await list_page(client, "?offset=99990&limit=50")
    assert [r["id"] for r in page] == [r["id"] for r in reversed(made[:10])]
    sim.remove(made[5]["id"])
    page = await list_page(client, "?offset=99990&limit=50")
    assert [r["id"] for r in page] == [r["id"] for r in reversed(made[:10]) if r != made[5]]
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["records"] == 99_999


async def test_serve_runs_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(serve(host="127.0.0.1", port=0, api_key="k", jobs=10))
    printed = ""

    def started() -> bool:
        nonlocal printed
        printed += capsys.readouterr().out
        return "http://" in printed

    await until(started)
    base = re.search(r"http://\S+", printed)
    assert base is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base.group(0)}/denoise", headers={"x-api-key": "k"}) as resp:
            records = await resp.json()
        async with session.get(f"{base.group(0)}/_sim/stats") as resp:
            stats = await resp.json()
    assert len(records) == 10 and {r["status"] for r in records} == {"success", "pending"}
    assert stats["pending"] == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
