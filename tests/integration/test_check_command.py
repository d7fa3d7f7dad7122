"""`munsit-bridge check`: creates nothing, reports the store, warns about what would fail
silently, and `--live --send-test` sends `bridge.test` to every subscriber."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.cli import main
from bridge.clock import SystemClock
from bridge.sim.simulator import Simulator
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_schema import MIGRATIONS
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver, ServerFactory, bridge_process

SECRET = "whsec_" + "A" * 43 + "="


def subscriber(sid: str, url: str, *extra: str) -> str:
    lines = [f'id = "{sid}"', f'url = "{url}"', f'secret = "{SECRET}"', *extra]
    return "[[subscribers]]\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, *subs: str, private: bool = False) -> Path:
    path = tmp_path / "bridge.toml"
    url = f"sqlite:///{tmp_path / 'state' / 'b.db'}"
    path.write_text(
        '[upstream]\napi_key = "k"\n'
        f'[store]\nurl = "{url}"\n'
        f"[delivery]\nallow_private_destinations = {str(private).lower()}\n" + "".join(subs)
    )
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(path)])
    return code, capsys.readouterr().out.splitlines()


def warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("warning:")]


def test_warns_about_a_literal_address_the_guard_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subs = (
        subscriber("local", "http://127.0.0.1:9000/hook"),
        subscriber("lan", "http://10.1.2.3/hook"),
        subscriber("public", "https://93.184.215.14/hook"),
    )
    code, lines = check(write(tmp_path, *subs), capsys)
    assert code == 0
    found = warnings(lines)
    assert len(found) == 2
    assert found[0].startswith("warning: subscriber local: destination 127.0.0.1 is a loopback")
    assert found[1].startswith("warning: subscriber lan: destination 10.1.2.3 is a private")
    assert "delivery.allow_private_destinations" in found[0]
    # allowed: the same configuration passes without a word
    code, lines = check(write(tmp_path, *subs, private=True), capsys)
    assert code == 0 and warnings(lines) == []


def test_warns_about_a_name_that_resolves_only_to_refused_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = check(write(tmp_path, subscriber("rx", "http://localhost:8000/hook")), capsys)
    assert code == 0
    [warning] = warnings(lines)
    assert warning.startswith(
        "warning: subscriber rx: destination localhost resolves only to refused addresses: "
    )
    assert "127.0.0.1 (loopback)" in warning


def test_warns_about_a_name_that_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`.invalid` never resolves (RFC 6761), whatever the machine's DNS."""
    subs = (subscriber("typo", "https://hooks.example.invalid/in"),)
    code, lines = check(write(tmp_path, *subs, private=True), capsys)
    assert code == 0
    [warning] = warnings(lines)
    assert warning.startswith("warning: subscriber typo: destination hooks.example.invalid d")
    assert "resolve" in warning


def test_warns_about_events_no_emitted_event_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subs = (
        subscriber("tests-only", "http://127.0.0.1:9/h", 'events = ["bridge.test"]'),
        subscriber("progress", "http://127.0.0.1:9/h", 'events = ["denoise.progress"]'),
        subscriber("glob", "http://127.0.0.1:9/h", 'events = ["*"]'),
    )
    code, lines = check(write(tmp_path, *subs, private=True), capsys)
    assert code == 0
    [warning] = warnings(lines)
    assert warning.startswith(
        "warning: subscriber tests-only: events [bridge.test] match no event the bridge sends"
    )


def test_warns_about_no_subscribers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(write(tmp_path), capsys)
    assert code == 0
    assert "config ok: subscribers: none" in lines
    assert warnings(lines) == ["warning: no subscribers: events are recorded but sent nowhere"]
    gateway = (
        '[gateway]\nenabled = true\n[[clients]]\nid = "app"\n'
        f'token = "client-token-0123456789"\nsecret = "{make_secret(5)}"\n'
    )
    code, lines = check(write(tmp_path, gateway), capsys)
    assert code == 0
    assert warnings(lines) == [
        "warning: no subscribers: events are recorded and sent only to the callbacks of jobs"
        " submitted through the gateway"
    ]


async def test_check_creates_nothing(tmp_path: Path) -> None:
    """Not the store's directory, database or lock file, even with a relative store path;
    it says where the store will be."""
    (tmp_path / "bridge.toml").write_text('[upstream]\napi_key = "k"\n')  # the default store
    proc = await bridge_process(
        "check", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    store = tmp_path / "data" / "bridge.db"
    assert f"store: {store} does not exist yet (the first run creates it)" in out.decode()
    assert sorted(os.listdir(tmp_path)) == ["bridge.toml"]


async def test_check_reports_an_existing_store_and_leaves_it_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state" / "b.db"
    store = SqliteStore(db)
    await store.open()
    await store.close()
    before = {p.name: p.stat().st_mtime_ns for p in db.parent.iterdir()}
    code = await asyncio.to_thread(main, ["check", "--config", str(write(tmp_path))])
    assert code == 0
    assert f"store: {db} (schema version {len(MIGRATIONS)})" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in db.parent.iterdir()} == before


async def test_check_live_send_test_reaches_every_subscriber(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    sim = Simulator(api_key="good-key", clock=SystemClock())
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    good, broken = RecordingReceiver(), RecordingReceiver(default_status=500)
    good_server: TestServer = await aiohttp_server(good.app())
    broken_server: TestServer = await aiohttp_server(broken.app())
    base = str(sim_server.make_url("")).rstrip("/")

    async def run(*subs: str) -> tuple[int | None, str]:
        config = write(tmp_path, *subs, private=True)
        config.write_text(config.read_text().replace("[store]", f'base_url = "{base}"\n[store]'))
        proc = await bridge_process(
            "check",
            "--live",
            "--send-test",
            "--config",
            str(config),
            env={"MUNSIT_API_KEY": "good-key"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode() + err.decode()

    ok = subscriber("ok", str(good_server.make_url("/hook")))
    code, out = await run(ok)
    assert code == 0, out
    assert "upstream ok:" in out and "send-test ok: 200 in " in out
    [req] = good.requests
    assert Webhook(SECRET).verify(req.body, req.headers)["type"] == "bridge.test"

    code, out = await run(ok, subscriber("down", str(broken_server.make_url("/hook"))))
    assert code == 1, out
    assert "send-test ok: 200 in " in out
    assert "send-test down: 500 in " in out and "(FAILED)" in out
    assert len(good.requests) == 2 and len(broken.requests) == 1
