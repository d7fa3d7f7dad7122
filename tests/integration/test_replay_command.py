"""`munsit-bridge replay` through the CLI entry point, on the store a service filled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from bridge.cli import main
from bridge.config import load_settings
from bridge.models import DeliveryFilter, DeliveryState, iso_utc
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive


async def replay_cli(*args: str) -> int:
    """The CLI runs its own event loop: call it from a thread, as a terminal would."""
    return await asyncio.to_thread(main, list(args))


def write_config(path: Path, sim_url: str, rx_url: str, secret: str) -> Path:
    path.write_text(
        f"""
[upstream]
base_url = "{sim_url}"
api_key = "test-key"
progress_stream = false
backfill = true
[store]
url = "sqlite:///{path.parent / "s.db"}"
[delivery]
allow_private_destinations = true
[admin]
enabled = false
[[subscribers]]
id = "rx"
url = "{rx_url}"
secret = "{secret}"
events = ["denoise.*"]
[[subscribers]]
id = "late"
url = "{rx_url}"
secret = "{secret}"
events = ["denoise.completed"]
enabled = false
"""
    )
    return path


async def test_replay_reenqueues_stored_events_with_their_ids(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    secret: str,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = Simulator(api_key="test-key", clock=clock)
    sim.add_records(2, status="success")
    receiver = RecordingReceiver()
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    config = write_config(
        tmp_path / "bridge.toml",
        str(sim_server.make_url("")).rstrip("/"),
        str(rx_server.make_url("/hook")),
        secret,
    )
    settings = load_settings(config)
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()  # backfill: created + completed for both records
        await drive(clock, svc.dispatcher.drain_once())
    first_ids = sorted(r.headers["webhook-id"] for r in receiver.requests)
    assert len(first_ids) == 4

    since = iso_utc(clock.now() - 60)
    args = ["replay", "--since", since, "--config", str(config)]
    assert await replay_cli(*args, "--subscriber", "rx", "--type", "denoise.completed") == 0
    assert "replayed 2 stored events: 2 deliveries queued" in capsys.readouterr().out
    # every subscriber: rx's created events go again; rx's completed and paused `late`'s
    # deliveries are still pending and stay as they are
    assert await replay_cli(*args) == 0
    assert "replayed 4 stored events: 2 deliveries queued" in capsys.readouterr().out

    async with Service(settings, clock=clock) as svc:
        pending = await svc.store.list_deliveries(where=DeliveryFilter(state=DeliveryState.PENDING))
        assert sorted((v.subscriber_id, v.event_type) for v in pending) == [
            ("late", "denoise.completed"),
            ("late", "denoise.completed"),
            ("rx", "denoise.completed"),
            ("rx", "denoise.completed"),
            ("rx", "denoise.created"),
            ("rx", "denoise.created"),
        ]
        receiver.requests.clear()
        await clock.advance(5)  # the command stamped them with the wall clock
        await drive(clock, svc.dispatcher.drain_once())  # `late` is paused: only rx's go
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == first_ids

    future = ["replay", "--since", iso_utc(clock.now() + 60), "--config", str(config)]
    assert await replay_cli(*future) == 0
    assert "replayed 0 stored events" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--since", "yesterday"], "since: 'yesterday' is not an ISO 8601 time"),
        (["--since", "2026-01-01", "--subscriber", "nobody"], "no subscriber 'nobody'"),
        (["--since", "2026-01-01", "--type", "denoise.done"], "unknown event type 'denoise.done'"),
    ],
)
def test_replay_refuses_bad_parameters(
    tmp_path: Path,
    secret: str,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "bridge.toml", "http://127.0.0.1:9", "http://x/hook", secret)
    assert main(["replay", *extra, "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


async def test_replay_says_why_events_went_nowhere(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    secret: str,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = Simulator(api_key="test-key", clock=clock)
    sim.add_records(2, status="success")
    receiver = RecordingReceiver()
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(receiver.app())
    config = write_config(
        tmp_path / "bridge.toml",
        str(sim_server.make_url("")).rstrip("/"),
        str(rx_server.make_url("/hook")),
        secret,
    )
    async with Service(load_settings(config), clock=clock) as svc:
        await svc.poller.tick()  # backfill: created + completed for both records
        await drive(clock, svc.dispatcher.drain_once())  # rx's four delivered; late is paused
    args = ["replay", "--since", iso_utc(clock.now() - 60), "--config", str(config)]

    assert await replay_cli(*args, "--subscriber", "late") == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "replayed 4 stored events: 0 deliveries queued; 2 deliveries already pending"
        " (left as they are); 2 events match none of subscriber late's events or accounts"
    )
    assert await replay_cli(*args) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith(
            "replayed 4 stored events: 4 deliveries queued; 2 deliveries already pending"
            " (left as they are) (a running bridge sends them"
        )
    )
    # rx now takes only completed events: the created ones go to nobody
    config.write_text(config.read_text().replace('["denoise.*"]', '["denoise.completed"]'))
    assert await replay_cli(*args) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith(
            "replayed 4 stored events: 0 deliveries queued; 4 deliveries already pending"
            " (left as they are); 2 events match no subscriber's events or accounts"
        )
    )
