"""The gateway's review fixes: a plain Munsit client's audio is streamed, not spooled; an
error before the audio is read hangs up without reading the rest; the fields' total is
capped without a Content-Length; Munsit's error bodies pass through as sent (or quoted,
cleaned, in its shape); metadata that could not be echoed exactly is refused; no
submission before the bridge's first poll."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.upstream.submit import submit_audio
from tests.integration.gateway_rig import SIM_KEY, Rig, gateway_rig, wav

ServerFactory = Callable[..., Any]
BOUNDARY = "review-boundary-2c9e"
CHUNK = b"\x00" * (64 * 1024)
OFFERED = 4096  # chunks: 256 MiB, far more than is ever read
READ_LIMIT = 32 * 1024 * 1024


def field(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    )


AUDIO_HEAD = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="audio"; filename="big.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n"
).encode()
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: Any
    sent: int  # bytes of the client's body the gateway took before it hung up


async def raw_post(rig: Rig, head: bytes, content_type: str | None = None) -> RawAnswer:
    """`head` then 256 MiB of audio, chunked, over a bare socket that keeps sending after
    the answer came (as a client that does not read its answers early would) until the
    gateway stops taking the body or 10 s pass."""
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    reader, writer = await asyncio.open_connection(rig.gateway.host, rig.gateway.port)
    writer.write(
        (
            "POST /api/v1/denoise HTTP/1.1\r\nHost: gateway\r\n"
            f"x-api-key: {rig.tokens['alice']}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    sent = 0

    async def pump() -> None:
        nonlocal sent
        pieces = [head, AUDIO_HEAD + wav(0.1)]
        for piece in pieces + [CHUNK] * OFFERED + [TAIL]:
            if piece:
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
                sent += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    task = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(10):
            lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
        await asyncio.wait({task}, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    return RawAnswer(status, headers, body, sent)


def multipart(rig: Rig) -> dict[str, str]:
    return {**rig.auth(), "content-type": f"multipart/form-data; boundary={BOUNDARY}"}


async def post_raw(rig: Rig, data: Any, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(rig.url(), data=data, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_plain_client_audio_is_streamed_as_it_arrives(
    aiohttp_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No option field at all (a Munsit client unchanged): Munsit gets the audio's first
    chunks while the client is still sending, and the job is made whole."""
    reached = asyncio.Event()

    async def watched(*args: Any, chunks: AsyncIterator[bytes], **kwargs: Any) -> Any:
        async def relay() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                reached.set()
                yield chunk

        return await submit_audio(*args, chunks=relay(), **kwargs)

    monkeypatch.setattr("bridge.gateway.app.submit_audio", watched)
    waited: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield AUDIO_HEAD + wav(0.1)
        for _ in range(16):
            yield CHUNK
        try:  # the rest waits until Munsit has had a first chunk (spooled: never)
            async with asyncio.timeout(5):
                await reached.wait()
            waited.append(True)
        except TimeoutError:
            waited.append(False)
        yield CHUNK
        yield TAIL

    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        status, answer = await post_raw(rig, body(), multipart(rig))
        assert status == 200, answer
        assert waited == [True], "the audio reached Munsit only after the whole upload"
        [record] = rig.sim.records
        assert record["audio_size"] == len(wav(0.1)) + 17 * len(CHUNK)
        assert answer["callback_id"] is None


async def test_bad_field_after_streamed_audio_makes_no_job(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path, allow_private=False) as rig:
        for name, value, code in (
            ("metadata", "[1]", "40006"),
            ("callback_url", "http://10.0.0.1/hook", "42201"),
        ):
            body = (
                AUDIO_HEAD + wav() + b"\r\n" + field(name, value) + f"--{BOUNDARY}--\r\n".encode()
            )
            status, answer = await post_raw(rig, body, multipart(rig))
            assert (status, answer["errorCode"]) == (int(code[:3]), code), answer
        assert rig.sim.submissions == 0 and rig.sim.records == []


@pytest.mark.parametrize(
    ("head", "content_type", "status", "code"),
    [
        (field("callback_url", "https://evil.test/hook"), None, 422, "42201"),
        (field("callback_events", "a") + field("callback_events", "b"), None, 400, "40006"),
        (field("metadata", "{}") + field("metadata", "{}"), None, 400, "40006"),
        (field("callback_events", "x" * 2000), None, 400, "40006"),
        (b"", "multipart/form-data", 400, "40001"),  # no boundary
    ],
)
async def test_errors_before_the_audio_do_not_read_the_rest(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    head: bytes,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        got = await raw_post(rig, head, content_type)
        assert (got.status, got.body["errorCode"]) == (status, code), got.body
        assert got.headers.get("connection", "").lower() == "close"
        assert got.sent < READ_LIMIT, "the gateway read the rest of a refused upload"
        assert rig.sim.submissions == 0


async def test_munsit_answering_early_stops_reading_the_upload(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Munsit refuses the bridge's key before the upload is complete: its answer reaches
    the client and the gateway takes no more of a client that keeps sending."""
    async with gateway_rig(aiohttp_server, tmp_path, upstream_key="wrong-key") as rig:
        got = await raw_post(rig, b"")
        assert (got.status, got.body["errorCode"]) == (401, "40101"), got.body
        assert got.sent < READ_LIMIT, "the gateway read the rest of an upload Munsit refused"


async def test_fields_in_all_are_capped_without_content_length(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        many = b"".join(field(f"extra{i}", "x" * 8000) for i in range(4))

        async def chunked(head: bytes) -> AsyncIterator[bytes]:
            yield head
            yield AUDIO_HEAD + wav() + TAIL

        status, answer = await post_raw(rig, chunked(many), multipart(rig))
        assert status == 200, answer  # 32 KB of fields: within the 64 KiB
        endless = b"".join(field(f"extra{i}", "x" * 8000) for i in range(200))  # 1.6 MB
        got = await raw_post(rig, endless)
        assert (got.status, got.body["errorCode"]) == (400, "40006"), got.body
        assert "65536" in got.body["errorMessage"]
        assert got.sent < READ_LIMIT
        assert rig.sim.submissions == 1


class Munsit:
    """A Munsit that reads the upload, then answers what it is told."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes, str]] = []

    async def submit(self, request: web.Request) -> web.Response:
        await request.read()
        status, body, content_type = self.answers.pop(0)
        return web.Response(status=status, body=body, content_type=content_type)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024 * 1024)
        app.router.add_post("/denoise", self.submit)
        return app


async def test_munsit_error_bodies_pass_through_or_are_quoted(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    munsit = Munsit()
    server: TestServer = await aiohttp_server(munsit.app())
    upstream = str(server.make_url("")).rstrip("/")
    shaped = b'{ "errorCode" : 40299,\n  "errorMessage": "Wallet frozen", "extra": [1, 2.50] }'
    html = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\x07\x1b[31m"
        b"<body>x-api-key: " + SIM_KEY.encode() + b"</body>" + b"." * 400
    )
    munsit.answers = [
        (402, shaped, "application/json"),
        (402, b'{"detail": "payment required"}', "application/json"),
        (502, html, "text/html"),
        (503, b"", "text/plain"),
    ]
    async with gateway_rig(aiohttp_server, tmp_path, upstream_url=upstream) as rig:
        async with aiohttp.ClientSession() as http:
            data = aiohttp.FormData()
            data.add_field("audio", wav(), filename="a.wav", content_type="audio/wav")
            async with http.post(rig.url(), data=data, headers=rig.auth()) as resp:
                assert resp.status == 402
                assert await resp.read() == shaped  # byte for byte
        status, answer = await post_raw(rig, AUDIO_HEAD + wav() + TAIL, multipart(rig))
        assert (status, answer) == (
            402,
            {
                "errorCode": "40200",
                "errorMessage": 'Munsit answered 402: {"detail": "payment required"}',
            },
        )
        status, answer = await post_raw(rig, AUDIO_HEAD + wav() + TAIL, multipart(rig))
        assert status == 502 and answer["errorCode"] == "50200"
        message = answer["errorMessage"]
        assert message.startswith("Munsit answered 502: <html><head><title>502 Bad Gateway")
        assert "\x07" not in message and "\x1b" not in message and "\r" not in message
        assert "[31m<body>x-api-key: [redacted]</body>" in message
        assert SIM_KEY not in message and rig.tokens["alice"] not in message
        assert len(message) <= len("Munsit answered 502: ") + 200
        status, answer = await post_raw(rig, AUDIO_HEAD + wav() + TAIL, multipart(rig))
        assert (status, answer) == (
            503,
            {"errorCode": "50300", "errorMessage": "Munsit answered 503:"},
        )
        assert rig.host.watched == []


@pytest.mark.parametrize(
    "metadata",
    [
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": [-Infinity]}',
        '{"a": 1e400}',
        '{"a": {"b": -2E+999}}',
        '{"\\ud800": 1}',
        '{"a": "x\\udfffy"}',
        '{"a": ["\\ud83d"]}',
    ],
)
async def test_metadata_that_cannot_be_echoed_exactly_is_400(
    aiohttp_server: ServerFactory, tmp_path: Path, metadata: str
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        for first in (True, False):
            data = aiohttp.FormData()
            if not first:
                data.add_field("audio", wav(), filename="a.wav", content_type="audio/wav")
            data.add_field("callback_url", "https://hooks.example.com/x")
            data.add_field("metadata", metadata)
            if first:
                data.add_field("audio", wav(), filename="a.wav", content_type="audio/wav")
            status, answer = await post_raw(rig, data, rig.auth())
            assert (status, answer["errorCode"]) == (400, "40006"), answer
            assert "metadata" in answer["errorMessage"]
        assert rig.sim.submissions == 0 and rig.sim.records == []
        status, answer = await post_raw(
            rig,
            field("metadata", '{"ok": "\\ud83d\\ude00", "n": 1.5e300}') + AUDIO_HEAD + wav() + TAIL,
            multipart(rig),
        )
        assert status == 200, answer


async def test_no_submission_before_the_first_poll(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with gateway_rig(aiohttp_server, tmp_path) as rig:
        rig.host.baseline = False
        got = await raw_post(rig, b"")
        assert got.status == 503
        assert got.headers["retry-after"] == "5"
        assert got.body == {
            "errorCode": "50301",
            "errorMessage": "the bridge has not finished its first poll of Munsit yet;"
            " try again in a few seconds",
        }
        assert got.sent < READ_LIMIT
        async with (
            aiohttp.ClientSession() as http,
            http.post(rig.url(), data=b"x", headers={"x-api-key": "nope" * 8}) as resp,
        ):
            assert resp.status == 401  # the token first
        assert rig.sim.submissions == 0
        rig.host.baseline = True
        body = AUDIO_HEAD + wav() + TAIL
        status, answer = await post_raw(rig, body, multipart(rig))
        assert status == 200, answer
        rig.host.baseline = False  # once seen, remembered
        status, answer = await post_raw(rig, body, multipart(rig))
        assert status == 200, answer
        assert rig.sim.submissions == 2
