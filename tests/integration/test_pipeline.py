"""End to end through the real service: simulator upstream → SQLite → recording receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from bridge.config import Settings
from bridge.errors import UpstreamUnavailable
from bridge.models import DeliveryFilter, DeliveryState, Record, event_id
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, drive, settings_for

ServerFactory = Callable[..., Any]


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=3.0)


@pytest.fixture
async def sim_url(sim: Simulator, aiohttp_server: ServerFactory) -> str:
    server: TestServer = await aiohttp_server(sim.make_app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def receiver() -> RecordingReceiver:
    return RecordingReceiver()


@pytest.fixture
async def receiver_url(receiver: RecordingReceiver, aiohttp_server: ServerFactory) -> str:
    server: TestServer = await aiohttp_server(receiver.app())
    return str(server.make_url("/hook"))


@pytest.fixture
def make_settings(
    sim_url: str, receiver_url: str, secret: str, tmp_path: Path
) -> Callable[..., Settings]:
    def build(**kwargs: Any) -> Settings:
        return settings_for(sim_url, receiver_url, secret, tmp_path / "bridge.db", **kwargs)

    return build


@pytest.fixture
async def service(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[Service]:
    async with Service(make_settings(), clock=clock, rand=lambda: 0.5) as svc:
        yield svc


def verify(secret: str, headers: dict[str, str], body: str) -> dict[str, Any]:
    result: dict[str, Any] = Webhook(secret).verify(body, headers)
    return result


def signature_matches(secret: str, headers: dict[str, str], body: str) -> bool:
    """Signature check without the receiver library's wall-clock tolerance (the clock is fake)."""
    ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], ts, body)
    return expected in headers["webhook-signature"].split(" ")


async def one_completed_job(sim: Simulator, svc: Service, clock: FakeClock) -> dict[str, Any]:
    """Baseline with one pending job, let it finish, and poll: one completion is queued."""
    [job] = sim.add_records(1, status="pending")
    await svc.poller.tick()
    await clock.advance(3.5)
    await svc.poller.tick()
    return job


async def test_baseline_emits_nothing(
    sim: Simulator, service: Service, receiver: RecordingReceiver
) -> None:
    sim.add_records(7, status="success")
    sim.add_records(2, status="pending")
    with capture_logs() as logs:
        result = await service.poller.tick()
    assert result.baseline and result.records_seen == 9
    [warned] = [e for e in logs if e["log_level"] == "warning"]  # said, not silent
    assert warned["event"].startswith("baseline recorded: the records already in the Munsit")
    assert "not announced" in warned["event"] and warned["records"] == 9
    assert result.events == []
    assert await service.dispatcher.drain_once() == 0
    assert receiver.requests == []
    assert len(await service.store.tracked_pending()) == 2


async def test_pending_to_success_gives_one_verified_completed_event(
    sim: Simulator,
    service: Service,
    receiver: RecordingReceiver,
    clock: FakeClock,
    secret: str,
) -> None:
    sim.add_records(12, status="success")
    [job] = sim.add_records(1, status="pending")
    await service.poller.tick()
    await clock.advance(3.5)
    result = await service.poller.tick()
    assert [e.type for e in result.events] == ["denoise.completed"]
    assert await service.dispatcher.drain_once() == 1
    [req] = receiver.requests
    body = verify(secret, req.headers, req.body)
    assert body["id"] == req.headers["webhook-id"] == event_id(job["id"], "denoise.completed")
    assert body["type"] == "denoise.completed"
    assert body["previous_status"] == "pending"
    assert body["data"]["id"] == job["id"] and body["data"]["status"] == "success"
    assert body["data"]["audio_url"].startswith("https://cdn.munsit.com/")
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("munsit-bridge/")
    # nothing more, however often we look
    assert (await service.poller.tick()).events == []
    assert await service.dispatcher.drain_once() == 0
    assert len(receiver.requests) == 1


async def test_failed_job_gives_failed_event_with_error(
    sim: Simulator,
    make_settings: Callable[..., Settings],
    receiver: RecordingReceiver,
    clock: FakeClock,
    secret: str,
    sim_url: str,
) -> None:
    settings = make_settings(events=["denoise.*"])
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()  # baseline of an empty account
        form = aiohttp.FormData()
        form.add_field("audio", b"definitely not audio", filename="voice.wav")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{sim_url}/denoise", data=form, headers={"x-api-key": "test-key"}) as resp,
        ):
            assert resp.status == 200
            job_id = (await resp.json())["denoiseId"]
        assert [e.type for e in (await svc.poller.tick()).events] == ["denoise.created"]
        await clock.advance(3.5)
        assert [e.type for e in (await svc.poller.tick()).events] == ["denoise.failed"]
        assert await svc.dispatcher.drain_once() == 2
    bodies = [verify(secret, r.headers, r.body) for r in receiver.requests]
    assert [(b["type"], b["data"]["id"]) for b in bodies] == [
        ("denoise.created", job_id),
        ("denoise.failed", job_id),
    ]
    assert bodies[1]["data"]["error"] == "Could not decode audio stream"
    assert bodies[1]["data"]["source_type"] == "audio"


async def test_retries_keep_the_id_and_refresh_the_timestamp(
    sim: Simulator,
    service: Service,
    receiver: RecordingReceiver,
    clock: FakeClock,
    secret: str,
) -> None:
    receiver.script = [500, 500, 200]
    job = await one_completed_job(sim, service, clock)
    assert await service.dispatcher.drain_once() == 1
    assert await service.dispatcher.drain_once() == 0  # not due before its retry time
    await clock.advance(5.0)  # schedule[0] = 5 s, jitter centred by rand = 0.5
    assert await service.dispatcher.drain_once() == 1
    await clock.advance(299.0)
    assert await service.dispatcher.drain_once() == 0
    await clock.advance(1.0)
    assert await service.dispatcher.drain_once() == 1
    assert len(receiver.requests) == 3
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {event_id(job["id"], "denoise.completed")}
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert stamps[1] - stamps[0] == 5 and stamps[2] - stamps[1] == 300
    assert all(signature_matches(secret, r.headers, r.body) for r in receiver.requests)
    assert len({r.body for r in receiver.requests}) == 1
    [view] = await service.store.list_deliveries()
    assert view.state is DeliveryState.DELIVERED
    assert [a.status_code for a in view.history] == [500, 500, 200]
    assert view.history[0].error == "HTTP 500" and view.history[0].response_excerpt == "nope"


async def test_dead_lettered_after_the_last_scheduled_attempt(
    sim: Simulator,
    make_settings: Callable[..., Settings],
    receiver: RecordingReceiver,
    clock: FakeClock,
) -> None:
    receiver.default_status = 503
    settings = make_settings(delivery={"retry_schedule_s": [1, 2], "jitter": 0})
    async with Service(settings, clock=clock) as svc:
        await one_completed_job(sim, svc, clock)
        for wait_s in (0.0, 1.0, 2.0):
            await clock.advance(wait_s)
            assert await svc.dispatcher.drain_once() == 1
        await clock.advance(3600)
        assert await svc.dispatcher.drain_once() == 0
        [view] = await svc.store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED))
    assert view.attempts == 3 and len(receiver.requests) == 3


async def test_redirect_is_not_followed(
    sim: Simulator, service: Service, receiver: RecordingReceiver, clock: FakeClock
) -> None:
    receiver.script = [302]
    await one_completed_job(sim, service, clock)
    await service.dispatcher.drain_once()
    [view] = await service.store.list_deliveries()
    assert view.state is DeliveryState.PENDING
    assert view.history[0].status_code == 302
    assert "not followed" in (view.history[0].error or "")
    assert len(receiver.requests) == 1


async def test_unreachable_receiver_is_a_failed_attempt(
    sim: Simulator, sim_url: str, secret: str, tmp_path: Path, clock: FakeClock
) -> None:
    settings = settings_for(sim_url, "http://127.0.0.1:9/hook", secret, tmp_path / "b.db")
    async with Service(settings, clock=clock) as svc:
        await one_completed_job(sim, svc, clock)
        await svc.dispatcher.drain_once()
        [view] = await svc.store.list_deliveries()
    assert view.state is DeliveryState.PENDING
    assert view.history[0].status_code is None
    assert "cannot connect to 127.0.0.1:9" in (view.history[0].error or "")


async def test_restart_emits_missed_changes_once(
    sim: Simulator,
    make_settings: Callable[..., Settings],
    receiver: RecordingReceiver,
    clock: FakeClock,
    secret: str,
) -> None:
    settings = make_settings(events=["denoise.*"])
    sim.add_records(20, status="success")
    pending = sim.add_records(3, status="pending")
    async with Service(settings, clock=clock) as svc:
        assert (await svc.poller.tick()).events == []
    # while the bridge is down: jobs finish, one fails, new ones arrive
    sim.set_status(pending[1]["id"], "failed", error="Audio too noisy")
    await clock.advance(10.0)
    new = sim.add_records(8, status="success")
    async with Service(settings, clock=clock) as svc:
        result = await svc.poller.tick()
        assert await svc.dispatcher.drain_once() == len(result.events)
        assert (await svc.poller.tick()).events == []
        assert await svc.dispatcher.drain_once() == 0
    async with Service(settings, clock=clock) as svc:
        assert (await svc.poller.tick()).events == []
        assert await svc.dispatcher.drain_once() == 0
    got = [
        (b["data"]["id"], b["type"])
        for b in (verify(secret, r.headers, r.body) for r in receiver.requests)
    ]
    assert len(got) == len(set(got))
    expected = {(p["id"], "denoise.completed") for p in (pending[0], pending[2])}
    expected.add((pending[1]["id"], "denoise.failed"))
    expected |= {(n["id"], t) for n in new for t in ("denoise.created", "denoise.completed")}
    assert set(got) == expected
    # oldest record first: the old pending jobs before the new ones
    assert got.index((pending[0]["id"], "denoise.completed")) < got.index(
        (new[0]["id"], "denoise.created")
    )


async def test_failed_scan_changes_nothing(
    sim: Simulator, service: Service, clock: FakeClock
) -> None:
    sim.add_records(12, status="success")

    class FailOnSecondPage:
        async def list_page(self, offset: int, limit: int) -> list[Record]:
            if offset > 0:
                sim.inject_fault("500", count=10)
            return await service.client.list_page(offset, limit)

    service.poller._client = FailOnSecondPage()
    with pytest.raises(UpstreamUnavailable):
        await drive(clock, service.poller.tick())
    assert not await service.store.baseline_done()
    assert await service.store.known_states([r["id"] for r in sim.records]) == {}


async def test_unknown_fields_are_delivered_and_unknown_status_is_not_terminal(
    sim: Simulator,
    service: Service,
    receiver: RecordingReceiver,
    clock: FakeClock,
    secret: str,
) -> None:
    [job] = sim.add_records(1, status="pending")
    await service.poller.tick()
    sim.add_field("priority", "high")
    sim.set_status(job["id"], "archiving")
    assert (await service.poller.tick()).events == []
    assert [s.status for s in await service.store.tracked_pending()] == ["archiving"]
    sim.set_status(job["id"], "success")
    assert [e.type for e in (await service.poller.tick()).events] == ["denoise.completed"]
    await service.dispatcher.drain_once()
    body = verify(secret, receiver.requests[0].headers, receiver.requests[0].body)
    assert body["previous_status"] == "archiving"
    assert body["data"]["priority"] == "high"


async def test_backfill_announces_existing_records(
    sim: Simulator, make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    sim.add_records(2, status="success")
    sim.add_records(1, status="pending")
    settings = make_settings(upstream={"backfill": True}, events=["denoise.*"])
    async with Service(settings, clock=clock) as svc:
        result = await svc.poller.tick()
    assert sorted(e.type for e in result.events) == sorted(
        ["denoise.created"] * 3 + ["denoise.completed"] * 2
    )


async def test_disabled_subscriber_keeps_its_deliveries_queued(
    sim: Simulator,
    make_settings: Callable[..., Settings],
    receiver: RecordingReceiver,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    settings = make_settings()
    disabled = make_settings(subscriber={"enabled": False})
    sim.add_records(1, status="pending")
    async with Service(disabled, clock=clock) as svc:
        await svc.poller.tick()
        await clock.advance(3.5)
        await svc.poller.tick()
        assert await svc.dispatcher.drain_once() == 0
    async with Service(settings, clock=clock) as svc:
        assert await svc.dispatcher.drain_once() == 1
    assert len(receiver.requests) == 1
