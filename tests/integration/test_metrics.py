"""`/metrics`: the contract's metric set, scraped and parsed with prometheus-client's parser,
each one moved by the thing it counts."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bridge.admin.app import create_app
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive, settings_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: TestClient[web.Request, web.Application]) -> Samples:
    resp = await http.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_follow_polls_events_and_deliveries(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str, clock: FakeClock
) -> None:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=3600)
    sim.add_records(1, status="success")
    [job, other] = sim.add_records(2, status="pending")
    receiver = RecordingReceiver(script=[500])
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(sim_server.make_url("")).rstrip("/"),
        str(rx_server.make_url("/hook")),
        secret,
        tmp_path / "s.db",
        upstream={"progress_stream": False},
        delivery={"retry_schedule_s": [1], "jitter": 0},
    )
    async with (
        Service(settings, clock=clock) as svc,
        TestClient(TestServer(create_app(svc))) as http,
    ):
        before = await scrape(http)
        assert before[("bridge_records_pending", (("account", "default"),))] == 0
        assert before[("bridge_outbox_pending", ())] == 0
        assert before[("bridge_subscriber_enabled", (("subscriber", "rx"),))] == 1

        await svc.poller.tick()  # baseline: two pending records tracked
        sim.set_status(job["id"], "success")
        sim.set_status(other["id"], "failed", error="Could not decode audio stream")
        await svc.poller.tick()
        mid = await scrape(http)
        assert mid[("bridge_polls_total", (("account", "default"), ("result", "ok")))] == 2
        assert (
            mid[("bridge_upstream_requests_total", (("account", "default"), ("code", "200")))] >= 2
        )
        assert mid[("bridge_upstream_pages_per_poll_count", (("account", "default"),))] == 2
        assert mid[("bridge_events_total", (("type", "denoise.completed"),))] == 1
        assert mid[("bridge_events_total", (("type", "denoise.failed"),))] == 1
        assert mid[("bridge_outbox_pending", ())] == 2
        assert mid[("bridge_records_pending", (("account", "default"),))] == 0

        await drive(clock, svc.dispatcher.drain_once())  # one 500, one delivered
        await clock.advance(2)
        await drive(clock, svc.dispatcher.drain_once())  # the retry is delivered
        sim.api_key = "rotated"
        await svc.poller.poll_once()
        after = await scrape(http)
    rx = ("subscriber", "rx")
    assert after[("bridge_deliveries_total", (("result", "retry"), rx))] == 1
    assert after[("bridge_deliveries_total", (("result", "delivered"), rx))] == 2
    assert after[("bridge_delivery_seconds_count", ())] == 3
    assert after[("bridge_outbox_pending", ())] == 0
    assert after[("bridge_polls_total", (("account", "default"), ("result", "auth_failed")))] == 1
    assert after[("bridge_upstream_requests_total", (("account", "default"), ("code", "401")))] == 1
    assert after[("bridge_last_poll_success_timestamp_seconds", (("account", "default"),))] > 0
