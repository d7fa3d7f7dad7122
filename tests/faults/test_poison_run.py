"""Poison from upstream against a real `munsit-bridge run` process: the simulator answers the
list or a progress stream with bytes no Munsit should send (invalid UTF-8, lone surrogates,
100,000 `[`, NaN and huge numbers, wrong types, missing fields, duplicate ids, a 100 MB body,
endless lines), or keeps listing a broken record. After each, the process is still running,
says nothing at error level, and a new record is still delivered to a local receiver; a broken
record is logged once, however many polls list it, and never announced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, bridge_process

ServerFactory = Callable[..., Any]

REAL_LIMIT_S = 30.0  # any one wait; the cases take a second or two each
MB = 1024 * 1024
QUARANTINED = "record quarantined: skipped until Munsit lists it whole"
REFUSED = "poll failed, will try again"


def raw(**fields: str) -> bytes:
    """A record as JSON text, each field's value written as given (raw JSON; "" leaves the
    field out). Characters U+DC80-U+DCFF become the single bytes 0x80-0xFF: invalid UTF-8."""
    values = {"id": '"poison-1"', "status": '"success"', "created_at": '"2026-01-01T00:00:00Z"'}
    values.update(fields)  # created long before the baseline: never announced once readable
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in values.items() if v) + "}"
    return text.encode("utf-8", "surrogateescape")


RECORD = raw(id='"big"', file_name='"' + "x" * 400 + '"') + b","

# the whole next list answer, and what the bridge says of it: why the poll failed, or None
# when the poll went on with the answer's items quarantined
LIST_ANSWERS: dict[str, tuple[bytes | list[tuple[bytes, int]], str | None]] = {
    "invalid-utf8": (b"\xff\xfe[\x80\x81]", "malformed JSON"),
    "invalid-utf8-in-a-string": (b"[" + raw(file_name='"\udcc3("') + b"]", None),
    "lone-surrogate": (b'["\\ud800", {"id": "rec-\\udfff"}]', None),
    "deep-nesting": (b"[" * 100_000, "deeper than 64 levels"),
    "100-mb": ([(b"[", 1), (RECORD, 100 * MB // len(RECORD)), (b"{}]", 1)], "max_response_bytes"),
    "endless-line": ([(b"[", 1), (b" " * 65_536, 10**12)], "max_response_bytes"),
    "nan-and-huge-numbers": (b"[NaN, Infinity, 1e999999, " + b"9" * 5000 + b"]", None),
    "not-an-array": (b'{"data": [], "message": "ok"}', "expected an array of records"),
    "wrong-types": (b'[1, "x", null, [], true, {"id": 5}]', None),
    "truncated": (b'[{"id": "0b7c1a', "malformed JSON"),
    "empty": (b"", "malformed JSON"),
}

# listed on top of every answer from now on, as a broken record stays listed
STAYING: dict[str, list[bytes]] = {
    "lone-surrogate-id": [raw(id='"rec-\\ud800"')],
    "lone-surrogate-in-a-field": [raw(file_name='"voice-\\udcff.wav"')],
    "invalid-utf8-in-a-field": [raw(file_name='"voice-\udcff.wav"')],
    "nan": [raw(audio_duration="NaN")],
    "huge-numbers": [raw(audio_size="1e400"), raw(id='"poison-2"', audio_size="9" * 5000)],
    "wrong-types": [raw(status="[]"), raw(id='"poison-2"', created_at="1790000000"), raw(id="5")],
    "missing-fields": [raw(status=""), raw(id='"poison-2"', created_at=""), raw(id="")],
    "not-records": [b"null", b'"text"', b"[1, 2]"],
}

# the next progress stream, on the record being watched
STREAMS: dict[str, list[tuple[bytes, int]]] = {
    "endless-data-lines": [(b"data: 1\n", 10**12)],
    "endless-line": [(b"data: ", 1), (b"x" * 65_536, 10**12)],
    "unreadable-messages": [
        (b"data: \xff\xfe\n\n", 1),
        (b'data: {"stage": "processing", "pct": NaN}\n\n', 1),
        (b'data: {"stage": "processing", "pct": 1e400}\n\n', 1),
        (b'data: {"stage": "processing", "pct": 1e308}\n\n', 1),
        (b'data: {"stage": "processing", "pct": true}\n\n', 1),
        (b'data: {"stage": "processing", "pct": 5, "message": "\\ud800"}\n\n', 1),
        (b"data: " + b"[" * 60_000 + b"\n\n", 1),
    ],
    "closed-at-once": [(b"", 1)],
}


@dataclass
class Bridge:
    """The `run` process, its log lines as they come, and what the receiver got."""

    proc: asyncio.subprocess.Process
    sim: Simulator
    receiver: RecordingReceiver
    lines: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))
            self.changed.set()
        self.changed.set()

    async def until(self, what: str, done: Callable[[], bool]) -> None:
        """Wait for log lines or deliveries until `done()`; fail if the process ends first."""
        async with asyncio.timeout(REAL_LIMIT_S):
            while not done():
                assert self.proc.returncode is None, f"the process ended waiting for {what}"
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event]

    def polls(self) -> int:
        return len(self.logged("poll"))

    def delivered(self, record_id: str) -> list[dict[str, Any]]:
        bodies = [json.loads(r.body) for r in self.receiver.requests]
        return [b for b in bodies if b["data"]["id"] == record_id]

    async def still_delivers(self) -> None:
        """A record created now reaches the receiver, once, and polling carries on."""
        [record] = self.sim.add_records(1, status="success")
        await self.until("a new record's delivery", lambda: bool(self.delivered(record["id"])))
        polls = self.polls()
        await self.until("three more polls", lambda: self.polls() >= polls + 3)
        assert [b["type"] for b in self.delivered(record["id"])] == ["denoise.completed"]
        assert self.proc.returncode is None
        assert [line for line in self.lines if line["level"] in ("error", "critical")] == []


@pytest.fixture
async def start(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> AsyncIterator[Callable[..., Any]]:
    sim = Simulator(api_key="poison-key", clock=SystemClock(), processing_s=3600)
    sim.add_records(3, status="success")
    receiver = RecordingReceiver()
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    bridges: list[tuple[Bridge, asyncio.Task[None]]] = []

    async def begin() -> Bridge:
        config = tmp_path / "bridge.toml"
        config.write_text(
            f"""
[upstream]
base_url = "{str(sim_server.make_url("")).rstrip("/")}"
page_size = 5
poll_interval_s = 0.1
idle_poll_interval_s = 0.1
max_response_bytes = 1048576
[store]
url = "sqlite:///{tmp_path / "state.db"}"
[delivery]
allow_private_destinations = true
[admin]
enabled = false
[log]
format = "json"
[[subscribers]]
id = "rx"
url = "{rx_server.make_url("/hook")}"
secret = "{secret}"
"""
        )
        proc = await bridge_process(
            "run",
            "--config",
            str(config),
            env={"MUNSIT_API_KEY": "poison-key"},
            stdout=asyncio.subprocess.PIPE,
        )
        bridge = Bridge(proc, sim, receiver)
        receiver.arrived = bridge.changed  # a delivery wakes the waits as a log line does
        bridges.append((bridge, asyncio.create_task(bridge.read())))
        await bridge.until("the baseline", lambda: bool(bridge.logged("baseline recorded")))
        return bridge

    yield begin
    for bridge, reader in bridges:
        if bridge.proc.returncode is None:
            bridge.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(bridge.proc.wait(), REAL_LIMIT_S)
        await reader
        assert bridge.proc.returncode == 0


@pytest.mark.parametrize("name", list(LIST_ANSWERS))
async def test_a_poisoned_list_answer_costs_one_poll_at_most(
    name: str, start: Callable[..., Any]
) -> None:
    bridge: Bridge = await start()
    body, says = LIST_ANSWERS[name]
    bridge.sim.poison(body)

    if says is not None:
        await bridge.until("the refused poll", lambda: bool(bridge.logged(REFUSED)))
        assert all(says in line["error"] for line in bridge.logged(REFUSED))
    else:
        await bridge.until("the quarantine", lambda: bool(bridge.logged(QUARANTINED)))
    await bridge.still_delivers()

    assert len(bridge.receiver.requests) == 1  # the new record's completion alone
    assert len(bridge.logged(REFUSED)) == (says is not None)


@pytest.mark.parametrize("name", list(STAYING))
async def test_a_broken_record_staying_listed_is_quarantined_once(
    name: str, start: Callable[..., Any]
) -> None:
    bridge: Bridge = await start()
    for text in STAYING[name]:
        bridge.sim.add_raw_record(text)
    count = len(STAYING[name])

    await bridge.until("the quarantine", lambda: len(bridge.logged(QUARANTINED)) >= count)
    await bridge.still_delivers()

    assert len(bridge.logged(QUARANTINED)) == count  # once each, though every poll lists them
    assert all(line["reason"] for line in bridge.logged(QUARANTINED))
    assert len(bridge.receiver.requests) == 1  # the new record alone
    assert bridge.logged(REFUSED) == []


async def test_duplicate_ids_in_one_answer_keep_the_first(start: Callable[..., Any]) -> None:
    bridge: Bridge = await start()
    created = '"2099-01-01T00:00:00.000Z"'  # newer than the baseline: announced
    bridge.sim.add_raw_record(raw(id='"dup-1"', created_at=created, file_name='"older"'))
    bridge.sim.add_raw_record(raw(id='"dup-1"', created_at=created, file_name='"newer"'))

    await bridge.until("the first copy's delivery", lambda: bool(bridge.delivered("dup-1")))
    await bridge.still_delivers()

    [body] = bridge.delivered("dup-1")  # once, under its own id
    assert body["type"] == "denoise.completed"
    assert body["data"]["file_name"] == "newer"  # listed first: the record added last
    [line] = bridge.logged(QUARANTINED)
    assert line["record_id"] == "dup-1" and "the same id again" in line["reason"]


@pytest.mark.parametrize("name", list(STREAMS))
async def test_a_poisoned_progress_stream_is_dropped_and_reopened(
    name: str, start: Callable[..., Any]
) -> None:
    bridge: Bridge = await start()
    sim = bridge.sim
    sim.poison(STREAMS[name], endpoint="progress")
    [job] = sim.add_records(1, status="pending")

    def reopened() -> bool:
        return sim.poison_served == 1 and bool(sim._jobs[job["id"]].watchers)

    await bridge.until("the stream reopened after the poison", reopened)
    sim.set_status(job["id"], "success")
    await bridge.until("the job's completion", lambda: bool(bridge.delivered(job["id"])))
    await bridge.still_delivers()

    assert [b["type"] for b in bridge.delivered(job["id"])] == ["denoise.completed"]
