"""`munsit-bridge verify` and `munsit-bridge send-test` through the CLI entry point."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from bridge.cli import main
from bridge.config import check_secret
from tests.conftest import make_secret
from tests.integration.leaks import SECRET_PARTS, TOKEN, GarbledReceiver, secret_url

SECRET = make_secret(3)
BODY = '{"id":"evt_1","type":"denoise.completed","data":{"id":"r1"}}'


def signed(body: str = BODY, ts: int | None = None, secret: str = SECRET) -> list[str]:
    ts = int(time.time()) if ts is None else ts
    sig = Webhook(secret).sign("evt_1", datetime.fromtimestamp(ts, UTC), body)
    return ["webhook-id: evt_1", f"webhook-timestamp: {ts}", f"webhook-signature: {sig}"]


def run_verify(tmp_path: Path, headers: list[str], body: str = BODY, secret: str = SECRET) -> int:
    path = tmp_path / "body.json"
    path.write_text(body)
    args = ["verify", "--secret", secret, "--body-file", str(path)]
    for header in headers:
        args += ["--header", header]
    return main(args)


def test_verify_valid_prints_the_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_verify(tmp_path, signed()) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid") and '"type": "denoise.completed"' in out


def test_verify_accepts_any_one_of_several_signatures(tmp_path: Path) -> None:
    other = signed(secret=make_secret(9))[2].split(": ", 1)[1]
    mine = signed()[2].split(": ", 1)[1]
    headers = [*signed()[:2], f"Webhook-Signature: {other} {mine}"]
    assert run_verify(tmp_path, headers) == 0


# built when each test runs, not at collection: a long run must not age the timestamps
FAILURES: list[tuple[Callable[[int], list[str]], str]] = [
    (lambda now: signed()[1:], "missing header webhook-id"),
    (lambda now: [signed()[0], signed()[2]], "missing header webhook-timestamp"),
    (lambda now: signed()[:2], "missing header webhook-signature"),
    (
        lambda now: [signed()[0], "webhook-timestamp: soon", signed()[2]],
        "'soon' is not unix seconds",
    ),
    (lambda now: signed(ts=now - 3600), "timestamp outside tolerance: webhook-timestamp"),
    (lambda now: signed(ts=now + 3600), "s in the future (tolerance 300 s)"),
    (lambda now: [*signed()[:2], "webhook-signature: v2,abc"], "has no v1 signature"),
    (lambda now: [*signed()[:2], "webhook-signature: v1,AAAA"], "bad signature"),
    (lambda now: signed(secret=make_secret(5)), "bad signature"),
    (lambda now: ["webhook-id evt_1"], "is not in the form 'name: value'"),
]


@pytest.mark.parametrize(("headers", "reason"), FAILURES)
def test_verify_names_the_reason(
    tmp_path: Path,
    headers: Callable[[int], list[str]],
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_verify(tmp_path, headers(int(time.time()))) == 1
    assert reason in capsys.readouterr().err


def test_verify_tampered_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_verify(tmp_path, signed(), body=BODY.replace("r1", "r2")) == 1
    assert "bad signature" in capsys.readouterr().err


def test_verify_non_json_body_and_bad_secret_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_verify(tmp_path, signed(body="not json"), body="not json") == 1
    assert "the body is not JSON" in capsys.readouterr().err
    assert run_verify(tmp_path, signed(), secret="whsec_short") == 1
    assert "secret" in capsys.readouterr().err
    assert main(["verify", "--secret", SECRET, "--body-file", str(tmp_path / "nope")]) == 1
    assert "cannot read body file" in capsys.readouterr().err


class ThreadedReceiver:
    """A real HTTP receiver on its own thread and loop, for a synchronous CLI call."""

    def __init__(self, status: int, text: str) -> None:
        self.status, self.text = status, text
        self.requests: list[tuple[dict[str, str], str]] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.text()))
        return web.Response(status=self.status, text=self.text)

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> ThreadedReceiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "bridge.toml"


def write_config(
    path: Path,
    port: int,
    fmt: str = "standard",
    *,
    url: str | None = None,
    private: bool = True,
    previous: tuple[str, ...] = (),
) -> None:
    path.write_text(
        f"""
[upstream]
api_key = "k"
[store]
url = "sqlite:///{path.parent / "s.db"}"
[delivery]
allow_private_destinations = {"true" if private else "false"}
[[subscribers]]
id = "rx"
url = "{url or f"http://127.0.0.1:{port}/hook"}"
secret = "{SECRET}"
previous_secrets = {json.dumps(list(previous))}
format = "{fmt}"
"""
    )


@pytest.mark.parametrize("fmt", ["standard", "slack"])
def test_send_test_delivers_a_signed_test_event(
    config: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedReceiver(200, "ok") as rx:
        write_config(config, rx.port, fmt)
        assert main(["send-test", "rx", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rx: 200 in ") and "response: ok" in out
    [(headers, body)] = rx.requests
    event = Webhook(SECRET).verify(body, headers)
    assert headers["webhook-id"].startswith("evt_test_")
    if fmt == "standard":
        assert event["type"] == "bridge.test"
    else:
        assert "Test event" in json.loads(body)["blocks"][0]["text"]["text"]


def test_send_test_reports_a_failure(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadedReceiver(400, "invalid_payload") as rx:
        write_config(config, rx.port)
        assert main(["send-test", "rx", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "rx: 400" in out and "response: invalid_payload" in out


def test_send_test_unknown_subscriber(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(config, 9)
    assert main(["send-test", "nobody", "--config", str(config)]) == 2
    assert "no subscriber 'nobody' (known: rx)" in capsys.readouterr().err


def test_send_test_signs_with_every_secret_during_rotation(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receiver still holding a previous secret accepts the test event, as it does the
    deliveries."""
    previous = (make_secret(4), make_secret(5))
    with ThreadedReceiver(200, "ok") as rx:
        write_config(config, rx.port, previous=previous)
        assert main(["send-test", "rx", "--config", str(config)]) == 0
    [(headers, body)] = rx.requests
    assert len(headers["webhook-signature"].split()) == 3
    for secret in (SECRET, *previous):
        assert Webhook(secret).verify(body, headers)["type"] == "bridge.test"


def test_send_test_refuses_a_private_destination_unless_allowed(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedReceiver(200, "ok") as rx:
        write_config(config, rx.port, private=False)
        assert main(["send-test", "rx", "--config", str(config)]) == 1
    assert rx.requests == []
    out = capsys.readouterr().out
    assert out.startswith("rx: no response in ")
    assert f"error: cannot connect to 127.0.0.1:{rx.port}: " in out
    assert "destination 127.0.0.1 refused: loopback address" in out


def test_send_test_output_shows_the_url_as_scheme_host_and_port_only(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receiver answering bytes that are not HTTP, quoting the request line back: the
    output names what happened without the URL's user-info, path or query."""
    rx = GarbledReceiver()
    with rx.threaded() as port:
        write_config(config, port, url=secret_url(port))
        assert main(["send-test", "rx", "--config", str(config)]) == 1
    assert len(rx.request_lines) == 1
    assert TOKEN.encode() in rx.request_lines[0]  # the bytes did quote it
    out, err = capsys.readouterr()
    assert "error: invalid HTTP answer: " in out and "you sent: POST <redacted> HTTP/1.1" in out
    for secret in SECRET_PARTS:
        assert secret not in out + err


def test_verify_reads_the_body_from_stdin() -> None:
    """`--body-file -`: the body piped in, as a receiver's shell script would."""

    def verify_stdin(body: str, headers: list[str]) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "bridge", "verify", "--secret", SECRET, "--body-file", "-"]
        for header in headers:
            args += ["--header", header]
        return subprocess.run(
            args, input=body, capture_output=True, text=True, timeout=60, check=False
        )

    good = verify_stdin(BODY, signed())
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("valid") and '"id": "r1"' in good.stdout
    tampered = verify_stdin(BODY.replace("r1", "r2"), signed())
    assert tampered.returncode == 1 and "bad signature" in tampered.stderr


def test_secret_prints_a_new_valid_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secret"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["secret"]) == 0
    second = capsys.readouterr().out.strip()
    assert check_secret(first) == first and check_secret(second) == second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second
