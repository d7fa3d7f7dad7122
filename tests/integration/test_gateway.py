"""The gateway against the Munsit simulator: submit with a callback, Munsit's errors passed
through, the upload cap, callback URL checks before anything reaches Munsit, tokens and
ownership, the list and the progress relay."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.config import Settings
from bridge.gateway.app import create_gateway_app
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.gateway_rig import Rig, gateway_rig, make_secret, wav
from tests.integration.helpers import RecordingReceiver

ServerFactory = Callable[..., Any]
BOUNDARY = "test-boundary-7f3a"


def form(*fields: tuple[str, str], audio: bytes | None = None, first: bool = False) -> Any:
    """A multipart form: the option fields, then (or, `first`, before them) the audio."""
    data = aiohttp.FormData()

    def add_audio() -> None:
        if audio is not None:
            data.add_field("audio", audio, filename="voice.wav", content_type="audio/wav")

    if first:
        add_audio()
    for name, value in fields:
        data.add_field(name, value)
    if not first:
        add_audio()
    return data


async def post(rig: Rig, data: Any, client: str = "alice") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(rig.url(), data=data, headers=rig.auth(client)) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def posts(rig: Rig) -> list[tuple[str, str, int]]:
    return [entry for entry in rig.sim.request_log if entry[0] == "POST"]


async def test_submit_with_callback_and_metadata(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        status, body = await post(
            rig,
            form(
                ("callback_url", "http://127.0.0.1:9/hooks/munsit?token=s3cret-value"),
                ("callback_events", "denoise.completed, denoise.progress"),
                ("metadata", json.dumps({"order": 7, "who": "Ana"})),
                audio=wav(),
            ),
        )
        assert status == 200, body
        record_id = body["denoiseId"]
        assert body["jobId"] == record_id
        assert body["callback_id"].startswith("cb_")
        assert rig.host.watched == [record_id]
        [record] = rig.sim.records
        assert record["id"] == record_id and record["file_name"] == "voice.wav"
        assert record["audio_duration"] == 1.0  # the whole file reached the simulator
        job = await rig.host.store.job(record_id)
        assert job is not None and job.client_id == "alice"
        assert job.callback_id == body["callback_id"]
        assert job.callback is not None
        assert job.callback.url == "http://127.0.0.1:9/hooks/munsit?token=s3cret-value"
        assert job.callback.events == ("denoise.completed", "denoise.progress")
        assert job.callback.metadata == {"order": 7, "who": "Ana"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(rig.url(f"/api/v1/denoise/{record_id}"), headers=rig.auth()) as r,
        ):
            assert r.status == 200
            seen = await r.json()
        assert seen["id"] == record_id and seen["status"] == "pending"


async def test_submit_without_callback_and_audio_first(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        status, body = await post(rig, form(audio=wav()))
        assert status == 200, body
        assert body["callback_id"] is None
        job = await rig.host.store.job(body["denoiseId"])
        assert job is not None and job.callback is None and job.callback_id is None
        # the audio before its options: streamed, the options checked before it ends
        status, body = await post(
            rig,
            form(("callback_url", "https://hooks.example.com/x"), audio=wav(2), first=True),
        )
        assert status == 200, body
        job = await rig.host.store.job(body["denoiseId"])
        assert job is not None and job.callback is not None
        assert job.callback.url == "https://hooks.example.com/x"
        assert job.callback.events == ("denoise.completed", "denoise.failed")
        assert {r["audio_duration"] for r in rig.sim.records} == {1.0, 2.0}
        assert rig.sim.submissions == 2


async def test_munsit_errors_pass_through(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        data = aiohttp.FormData()
        data.add_field("audio", b"hello", filename="notes.txt", content_type="text/plain")
        status, body = await post(rig, data)
        assert status == 400 and body["errorCode"] == "40002"
        rig.sim.balance = 0
        status, body = await post(rig, form(audio=wav()))
        assert (status, body) == (
            402,
            {"errorCode": "40201", "errorMessage": "Insufficient wallet balance"},
        )
        rig.sim.balance = None
        rig.sim.inject_fault("429", endpoint="submit", retry_after="7")
        async with (
            aiohttp.ClientSession() as http,
            http.post(rig.url(), data=form(audio=wav()), headers=rig.auth()) as resp,
        ):
            assert resp.status == 429 and resp.headers["Retry-After"] == "7"
            assert await resp.json() == {
                "errorCode": 42901,  # numeric, as Munsit sent it
                "errorMessage": "Too many concurrent requests",
            }
        rig.sim.inject_fault("500", endpoint="submit")
        status, body = await post(rig, form(audio=wav()))
        assert status == 500 and body["errorCode"] == "50000"
        assert rig.sim.submissions == 0
        assert await rig.host.store.client_jobs("alice", limit=10) == []
        assert rig.host.watched == []


async def test_munsit_refusing_the_bridge_key_passes_through(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path, upstream_key="wrong-key") as rig:
        status, body = await post(rig, form(audio=wav()))
        assert (status, body) == (
            401,
            {"errorCode": "40101", "errorMessage": "Invalid or missing API key"},
        )


async def test_munsit_unreachable_is_502(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        await rig.sim_server.close()
        status, body = await post(rig, form(("metadata", "{}"), audio=wav()))
        assert status == 502 and body["errorCode"] == "50201"
        status, body = await post(rig, form(audio=wav()))  # no option field: the same answer
        assert status == 502 and body["errorCode"] == "50201"
        counted = rig.host.metrics.gateway_requests.labels("/api/v1/denoise", "502")
        assert counted._value.get() == 2  # bridge_gateway_requests_total{route, code}


async def test_over_the_cap_by_content_length(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path, max_upload_bytes=1000) as rig:
        status, body = await post(rig, form(audio=b"\x00" * 200_000))
        assert status == 413 and body["errorCode"] == "41301"
        assert posts(rig) == []


async def _chunked_form(
    head: list[tuple[str, str]], chunks: int, pulled: list[int], chunk: bytes
) -> AsyncIterator[bytes]:
    for name, value in head:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    yield (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="audio"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    yield wav(0.1)
    for _ in range(chunks):
        pulled.append(len(chunk))
        yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def test_over_the_cap_while_streaming_stops_reading(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """No Content-Length: the upload is cut at the cap, Munsit's request aborted before its
    body is complete, 413, and the rest of the client's body never read."""
    cap = 512 * 1024
    chunk = b"\x00" * (64 * 1024)
    total = 4096  # chunks: 256 MiB, far more than is ever read
    async with gateway_rig(aiohttp_server, tmp_path, max_upload_bytes=cap) as rig:
        for head in ([("metadata", '{"a": 1}')], []):  # with an option field, then without
            pulled: list[int] = []
            headers = {
                **rig.auth(),
                "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    rig.url(), data=_chunked_form(head, total, pulled, chunk), headers=headers
                ) as resp,
            ):
                assert resp.status == 413
                assert (await resp.json())["errorCode"] == "41301"
            assert sum(pulled) < 32 * 1024 * 1024, "the gateway read far past its cap"
            assert len(pulled) < total
        assert rig.sim.submissions == 0 and rig.sim.records == []
        assert rig.host.watched == []


async def test_refused_callback_urls_reach_nothing(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path, allow_private=False) as rig:
        cases = [
            ("alice", "https://evil.test/hook", True),  # not in alice's allowed_callback_hosts
            ("alice", "https://evil.test/hook", False),  # the same, the audio first
            ("bob", "http://10.1.2.3/hook", True),  # bob: any host, but a private address
            ("bob", "http://[::1]:8080/hook", True),
            ("bob", "http://169.254.169.254/latest/meta-data", False),
            ("bob", "http://localhost:8000/hook", True),  # a name resolving to loopback only
            ("alice", "http://127.0.0.1:9/hook", True),  # allowed host, refused address
        ]
        for client, url, options_first in cases:
            status, body = await post(
                rig, form(("callback_url", url), audio=wav(), first=not options_first), client
            )
            assert status == 422, (url, body)
            assert body["errorCode"] == "42201"
            assert "meta-data" not in body["errorMessage"] and "/hook" not in body["errorMessage"]
        assert posts(rig) == [] and rig.sim.submissions == 0
        for url in ("ftp://x.example.com/", "https:///no-host", "http://x.example.com:99999/"):
            status, body = await post(rig, form(("callback_url", url), audio=wav()))
            assert (status, body["errorCode"]) == (422, "42201"), url
        assert posts(rig) == []


async def test_private_callback_allowed_when_configured(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path, allow_private=True) as rig:
        status, body = await post(
            rig, form(("callback_url", "http://10.1.2.3/hook"), audio=wav()), "bob"
        )
        assert status == 200, body
        status, body = await post(
            rig, form(("callback_url", "https://EVIL.test/hook"), audio=wav())
        )
        assert status == 422, "allow_private_destinations does not widen the host list"
        status, body = await post(
            rig, form(("callback_url", "https://Hooks.Example.COM/x"), audio=wav())
        )
        assert status == 200, body


async def test_bad_fields_are_400_before_munsit(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        bad = [
            [("metadata", "[1, 2]")],
            [("metadata", "{not json")],
            [("metadata", json.dumps({"k": "x" * 5000}))],
            [("callback_events", "denoise.completed,denoise.exploded")],
            [("callback_events", " , ")],
        ]
        for fields in bad:
            for first in (False, True):
                status, body = await post(rig, form(*fields, audio=wav(), first=first))
                assert status == 400, (fields, body)
                assert body["errorCode"] == "40006"
        status, body = await post(rig, form(("callback_events", "denoise.exploded"), audio=wav()))
        assert "denoise.exploded" in body["errorMessage"]
        status, body = await post(rig, form(("metadata", "{}")))
        assert (status, body["errorCode"]) == (400, "40001")
        # a bad field after the streamed audio aborts Munsit's request before it is complete
        status, body = await post(
            rig, form(("callback_events", "denoise.failed"), ("x", "y"), audio=wav(), first=False)
        )
        assert status == 200
        data = aiohttp.FormData()
        data.add_field("metadata", "{}")
        data.add_field("audio", wav(), filename="a.wav", content_type="audio/wav")
        data.add_field("metadata", "{}")
        status, body = await post(rig, data)
        assert status == 400 and "twice" in body["errorMessage"]
        assert rig.sim.submissions == 1


async def test_tokens_and_ownership(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        status, body = await post(rig, form(audio=wav()))
        assert status == 200
        record_id = body["denoiseId"]
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"x-api-key": "nope" * 10}, {"Authorization": "Basic abc"}):
                async with http.post(rig.url(), data=form(audio=wav()), headers=headers) as r:
                    assert r.status == 401
                    assert await r.json() == {
                        "errorCode": "40101",
                        "errorMessage": "Invalid or missing API key",
                    }
                async with http.get(rig.url(f"/api/v1/denoise/{record_id}"), headers=headers) as r:
                    assert r.status == 401
            bearer = {"Authorization": f"Bearer {rig.tokens['alice']}"}
            async with http.get(rig.url(f"/api/v1/denoise/{record_id}"), headers=bearer) as r:
                assert r.status == 200
            for path in (f"/api/v1/denoise/{record_id}", f"/api/v1/denoise/{record_id}/progress"):
                async with http.get(rig.url(path), headers=rig.auth("bob")) as r:
                    assert r.status == 404
                    assert await r.json() == {
                        "errorCode": "40401",
                        "errorMessage": "Denoise record not found",
                    }
            async with http.get(rig.url("/api/v1/denoise/unknown-id"), headers=rig.auth()) as r:
                assert r.status == 404
        assert rig.sim.submissions == 1


async def test_list_shows_only_the_clients_jobs(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with gateway_rig(aiohttp_server, tmp_path, clock=clock) as rig:
        mine = []
        for _ in range(3):
            status, body = await post(rig, form(audio=wav()))
            assert status == 200
            mine.append(body["denoiseId"])
            await clock.advance(1)
        _status, body = await post(rig, form(audio=wav()), "bob")
        theirs = body["denoiseId"]
        rig.sim.add_records(2)  # not submitted through the bridge
        async with aiohttp.ClientSession() as http:

            async def listed(query: str, client: str = "alice") -> list[str]:
                url = rig.url("/api/v1/denoise" + query)
                async with http.get(url, headers=rig.auth(client)) as r:
                    assert r.status == 200
                    return [rec["id"] for rec in await r.json()]

            assert await listed("") == mine[::-1]
            assert await listed("?limit=2") == mine[::-1][:2]
            assert await listed("?offset=1&limit=1") == [mine[1]]
            assert await listed("?offset=5") == []
            assert await listed("", "bob") == [theirs]
            async with http.get(rig.url("/api/v1/denoise?limit=0"), headers=rig.auth()) as r:
                assert r.status == 400


async def test_progress_relay_carries_munsits_messages(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        _status, body = await post(rig, form(audio=wav()))
        record_id = body["denoiseId"]
        async with aiohttp.ClientSession() as http:
            url = rig.url(f"/api/v1/denoise/{record_id}/progress")
            async with http.get(url, headers=rig.auth()) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/event-stream"
                first = await r.content.readline()
                assert json.loads(first.removeprefix(b"data: ")) == {
                    "stage": "processing",
                    "pct": 0,
                    "message": "Denoising",
                }
                rig.sim.set_status(record_id, "success")
                rest = (await r.content.read()).decode()
        messages = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: ")]
        assert messages[-1] == {
            "stage": "done",
            "url": f"https://cdn.munsit.com/denoised/{record_id}.wav",
            "denoiseId": record_id,
        }


async def test_callbacks_through_the_service(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    """End to end in process: the real `Service` as the gateway's host; a completed and a
    failed job call back, signed with the client's secret, with the metadata."""
    clock = FakeClock()
    sim = Simulator(api_key="sim-key", clock=clock, processing_s=1.0)
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    receiver = RecordingReceiver()
    rx: TestServer = await aiohttp_server(receiver.app())
    token, client_secret = secrets.token_urlsafe(32), make_secret()
    settings = Settings.model_validate(
        {
            "upstream": {
                "base_url": str(sim_server.make_url("")).rstrip("/"),
                "api_key": "sim-key",
                "progress_stream": False,
            },
            "store": {"url": f"sqlite:///{tmp_path / 'svc.db'}"},
            "delivery": {"allow_private_destinations": True, "jitter": 0},
            "admin": {"enabled": False},
            "gateway": {"enabled": True},
            "clients": [{"id": "alice", "token": token, "secret": client_secret}],
        }
    )
    async with Service(settings, clock=clock) as svc:
        assert svc.dispatcher.callbacks_enabled
        gateway: TestServer = await aiohttp_server(create_gateway_app(svc))
        await svc.poller.tick()  # the baseline
        submitted = {}
        async with aiohttp.ClientSession() as http:
            for name, audio in (("good.wav", wav()), ("bad.wav", b"not audio at all")):
                data = aiohttp.FormData()
                data.add_field("callback_url", str(rx.make_url("/hook")))
                data.add_field("metadata", json.dumps({"file": name}))
                data.add_field("audio", audio, filename=name, content_type="audio/wav")
                async with http.post(
                    gateway.make_url("/api/v1/denoise"), data=data, headers={"x-api-key": token}
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    submitted[name] = (await resp.json())["denoiseId"]
        await clock.advance(1.5)
        await svc.poller.tick()
        for _ in range(3):
            await svc.dispatcher.drain_once()
    events = {}
    for req in receiver.requests:
        body = Webhook(client_secret).verify(req.body, req.headers)
        events[body["data"]["id"]] = body
    good, bad = events[submitted["good.wav"]], events[submitted["bad.wav"]]
    assert good["type"] == "denoise.completed" and good["metadata"] == {"file": "good.wav"}
    assert bad["type"] == "denoise.failed" and bad["metadata"] == {"file": "bad.wav"}


async def test_munsit_answering_early_ends_the_upload(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Munsit refuses the bridge's key before reading the upload: its 401 reaches the client
    at once and the rest of the client's body is not read."""
    chunk = b"\x00" * (64 * 1024)
    total = 4096  # 256 MiB offered
    async with gateway_rig(aiohttp_server, tmp_path, upstream_key="wrong-key") as rig:
        pulled: list[int] = []
        headers = {**rig.auth(), "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                rig.url(),
                data=_chunked_form([("metadata", "{}")], total, pulled, chunk),
                headers=headers,
            ) as resp,
        ):
            assert resp.status == 401
            assert (await resp.json())["errorCode"] == "40101"
        assert sum(pulled) < 32 * 1024 * 1024
        assert rig.host.watched == []
