"""The admin API against hostile browsers (CONTRACT §5), over a real admin server: a
cross-site page, a DNS-rebinding page and a "simple" text/plain POST are refused and change
nothing; curl and same-origin calls work; `admin.allowed_hosts` and a token change only what
they should; probes stay open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.app import create_app
from bridge.config import AdminConfig
from bridge.models import DeliveryState
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, ServerFactory, drive, settings_for

Client = TestClient[web.Request, web.Application]
TOKEN = "guard-token-5c1e9a77"
EVIL = "https://evil.example"
REPLAY = {"since": "2000-01-01T00:00:00Z"}


@dataclass
class Admin:
    svc: Service
    http: Client

    @property
    def port(self) -> int:
        assert self.http.server.port is not None
        return self.http.server.port

    @property
    def local(self) -> str:
        """The `Host` curl sends to `http://127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    async def nothing_happened(self) -> None:
        """No refused request disabled the subscriber or queued a delivery."""
        assert self.svc.dispatcher.active == ["rx"]
        assert (await self.svc.store.count_deliveries())[DeliveryState.PENDING] == 0


@pytest.fixture
def serve(aiohttp_server: ServerFactory, clock: FakeClock, secret: str, tmp_path: Path) -> Any:
    """`serve(**admin)`: a service whose two records are delivered, and its admin app on a real
    local port, `admin` being the `[admin]` table."""

    @asynccontextmanager
    async def serving(**admin: Any) -> AsyncIterator[Admin]:
        sim = Simulator(api_key="test-key", clock=clock, processing_s=3600)
        sim.add_records(2, status="success")
        up: TestServer = await aiohttp_server(sim.make_app())
        rx: TestServer = await aiohttp_server(RecordingReceiver().app())
        settings = settings_for(
            str(up.make_url("")).rstrip("/"),
            str(rx.make_url("/hook")),
            secret,
            tmp_path / "guard.db",
            upstream={"backfill": True, "progress_stream": False},
            delivery={"jitter": 0, "retry_schedule_s": [1]},
        )
        config = AdminConfig.model_validate({"enabled": False, **admin})
        settings = settings.model_copy(update={"admin": config})
        async with (
            Service(settings, clock=clock) as svc,
            TestClient(TestServer(create_app(svc))) as http,
        ):
            await svc.poller.tick()
            await drive(clock, svc.dispatcher.drain_once())
            assert (await svc.store.count_deliveries())[DeliveryState.DELIVERED] == 2
            yield Admin(svc, http)

    return serving


async def refused(
    http: Client, method: str, path: str, status: int, *words: str, **kw: Any
) -> None:
    resp = await http.request(method, path, **kw)
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    message = json.loads(body)["error"]
    for word in words:
        assert word in message, (word, message)


async def ok(http: Client, method: str, path: str, **kw: Any) -> Any:
    resp = await http.request(method, path, **kw)
    body = await resp.text()
    assert resp.status == 200, body
    return json.loads(body)


async def raw(admin: Admin, request: str) -> tuple[int, bytes]:
    """Bytes over a real socket, as curl sends them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    try:
        writer.write(request.encode())
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# --- a cross-site page -------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        EVIL,
        "null",  # a sandboxed frame, a file:// page, a redirect
        "http://127.0.0.1:1",  # another local port is another site
        "http://localhost:{port}",  # the same server under another name is another origin
        "http://127.0.0.1:{port}.evil.example",
        "http://127.0.0.1:{port}/",
        "",
    ],
)
async def test_a_cross_site_origin_is_refused(serve: Any, origin: str) -> None:
    async with serve() as admin:
        header = {"Origin": origin.format(port=admin.port)}
        for method, path, kw in [
            ("POST", "/api/subscribers/rx/disable", {}),
            ("POST", "/api/replay", {"json": REPLAY}),
            ("GET", "/api/deliveries", {}),
        ]:
            await refused(
                admin.http, method, path, 403, "Origin", "cross-site", headers=header, **kw
            )
        await admin.nothing_happened()


async def test_the_servers_own_origin_is_accepted(serve: Any) -> None:
    async with serve() as admin:
        own = {"Origin": f"http://{admin.local}"}
        off = await ok(admin.http, "POST", "/api/subscribers/rx/disable", headers=own)
        assert off["state"] == "disabled"
        body = await ok(admin.http, "POST", "/api/replay", json=REPLAY, headers=own)
        assert body["deliveries"] == 2
        upper = {"Origin": f"HTTP://{admin.local}"}  # scheme and host are case-insensitive
        assert (await ok(admin.http, "GET", "/api/deliveries", headers=upper))["deliveries"]


# --- a DNS-rebinding page ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8080",
        "attacker.example",
        # what a rebinding page sends: its own name (resolving to 127.0.0.1) and this port
        "attacker.example:{port}",
        "127.0.0.1.attacker.example:{port}",
        "localhost.attacker.example:{port}",
        "10.0.0.5:{port}",
        "[::2]:{port}",
        "127.1:{port}",  # not how a browser writes an address: not trusted
        "127.0.0.1:99999",
        "",
    ],
)
async def test_without_a_token_a_foreign_host_is_refused(serve: Any, host: str) -> None:
    async with serve() as admin:
        name = host.format(port=admin.port)
        # a rebinding page is same-origin with itself: only the Host tells it apart
        headers = {"Host": name, "Origin": f"http://{name}"}
        for method, path, kw in [
            ("GET", "/api/deliveries", {}),
            ("GET", "/api/subscribers", {}),
            ("POST", "/api/subscribers/rx/disable", {}),
            ("POST", "/api/replay", {"json": REPLAY}),
            ("GET", "/api/nothing-here", {}),  # every route but the probes, present and future
        ]:
            await refused(
                admin.http, method, path, 403, "Host", "DNS rebinding", headers=headers, **kw
            )
        for path in ("/ui/", "/ui/deliveries"):  # the dashboard answers in HTML, as refusing
            resp = await admin.http.get(path, headers=headers)
            assert resp.status == 403, path
        await admin.nothing_happened()


async def test_a_request_without_a_host_header_is_refused(serve: Any) -> None:
    async with serve() as admin:
        status, body = await raw(
            admin, "GET /api/subscribers HTTP/1.0\r\nUser-Agent: curl/8.5.0\r\n\r\n"
        )
        assert status == 403 and "Host" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "127.0.0.1",
        "127.8.9.10:{port}",
        "localhost:{port}",
        "LOCALHOST.:{port}",
        "[::1]:{port}",
        "[0:0:0:0:0:0:0:1]",
    ],
)
async def test_loopback_hosts_are_answered(serve: Any, host: str) -> None:
    async with serve() as admin:
        headers = {"Host": host.format(port=admin.port)}
        assert (await ok(admin.http, "GET", "/api/subscribers", headers=headers))["subscribers"]


async def test_allowed_hosts_are_answered_and_nothing_else(serve: Any) -> None:
    async with serve(allowed_hosts=["Bridge.Example.", "10.0.0.5"]) as admin:
        for host in ("bridge.example", "BRIDGE.example.:8080", "10.0.0.5:8080", admin.local):
            assert await ok(admin.http, "GET", "/api/deliveries", headers={"Host": host})
        # behind a TLS proxy that keeps the Host: the browser's https origin is this server
        proxied = {"Host": "bridge.example", "Origin": "https://bridge.example"}
        off = await ok(admin.http, "POST", "/api/subscribers/rx/disable", headers=proxied)
        assert off["state"] == "disabled"
        for host in ("evil.bridge.example", "bridge.example.evil", "10.0.0.6"):
            await refused(admin.http, "GET", "/api/deliveries", 403, "Host", headers={"Host": host})
        # an allowed host is still not an allowed origin for another site's page
        await refused(
            admin.http,
            "POST",
            "/api/replay",
            403,
            "Origin",
            json=REPLAY,
            headers={"Host": "bridge.example", "Origin": EVIL},
        )
        assert (await admin.svc.store.count_deliveries())[DeliveryState.PENDING] == 0


# --- bodies a page may send without asking -----------------------------------------------

SINCE = json.dumps(REPLAY)


@pytest.mark.parametrize(
    ("kw"),
    [
        {"data": SINCE, "headers": {"Content-Type": "text/plain"}},
        {"data": SINCE, "headers": {"Content-Type": "text/plain;charset=UTF-8"}},
        {"data": SINCE, "headers": {"Content-Type": "Text/Plain"}},
        {"data": {"since": REPLAY["since"]}},  # an HTML form: x-www-form-urlencoded
        {"data": FormData({"since": REPLAY["since"]}, default_to_multipart=True)},
        # a browser reads the last type of a list, a parser may read the first
        {"data": SINCE, "headers": {"Content-Type": "application/json, text/plain"}},
        {"data": SINCE, "headers": {"Content-Type": "application/json;charset=utf-8, text/plain"}},
        # JSON without its type: a page's Blob body carries none
        {"data": SINCE, "skip_auto_headers": ["Content-Type"]},
        {"data": SINCE, "headers": {"Content-Type": "application/octet-stream"}},
    ],
)
async def test_a_body_that_is_not_json_is_refused(serve: Any, kw: dict[str, Any]) -> None:
    async with serve() as admin:
        await refused(admin.http, "POST", "/api/replay", 415, "application/json", **kw)
        await admin.nothing_happened()


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "TEXT/plain ; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        # a browser takes the last type of a list: this one is text/plain to it
        "application/octet-stream, text/plain",
    ],
)
async def test_an_empty_post_of_a_cross_site_type_is_refused(serve: Any, content_type: str) -> None:
    async with serve() as admin:
        headers = {"Content-Type": content_type}
        await refused(admin.http, "POST", "/api/subscribers/rx/disable", 415, headers=headers)
        await admin.nothing_happened()


async def test_curl_without_a_body_or_content_type_works(serve: Any) -> None:
    async with serve() as admin:
        status, body = await raw(
            admin,
            f"POST /api/subscribers/rx/disable HTTP/1.1\r\nHost: {admin.local}\r\n"
            "User-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        )
        assert status == 200 and json.loads(body)["state"] == "disabled"
        # aiohttp labels an empty POST application/octet-stream: no body, nothing to refuse
        on = await ok(admin.http, "POST", "/api/subscribers/rx/enable")
        assert on["state"] == "active"
        explicit = {"Content-Length": "0"}
        empty = await ok(
            admin.http,
            "POST",
            "/api/subscribers/rx/disable",
            headers=explicit,
            skip_auto_headers=["Content-Type"],
        )
        assert empty["state"] == "disabled"
        body = await ok(
            admin.http,
            "POST",
            "/api/replay",
            data=SINCE,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert body["deliveries"] == 2


# --- with a token ------------------------------------------------------------------------


async def test_a_token_still_refuses_foreign_origins_and_bodies_not_json(serve: Any) -> None:
    async with serve(token=TOKEN) as admin:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        await refused(
            admin.http,
            "POST",
            "/api/subscribers/rx/disable",
            403,
            "Origin",
            headers={**auth, "Origin": EVIL},
        )
        await refused(
            admin.http,
            "POST",
            "/api/replay",
            415,
            "application/json",
            data=SINCE,
            headers={**auth, "Content-Type": "text/plain"},
        )
        await refused(
            admin.http,
            "POST",
            "/api/subscribers/rx/disable",
            415,
            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        await admin.nothing_happened()
        # the token stands for the Host rule: a proxy's or a remote name is fine
        far = {**auth, "Host": "bridge.example:8080"}
        assert (await ok(admin.http, "GET", "/api/subscribers", headers=far))["subscribers"]
        off = await ok(admin.http, "POST", "/api/subscribers/rx/disable", headers=auth)
        assert off["state"] == "disabled"
        body = await ok(admin.http, "POST", "/api/replay", json=REPLAY, headers=auth)
        assert body["deliveries"] == 2
        # and without it, nothing but 401
        await refused(admin.http, "GET", "/api/subscribers", 401, "bearer token")


# --- probes ------------------------------------------------------------------------------


async def test_probes_answer_any_host_and_origin(serve: Any) -> None:
    """Health, readiness and metrics hold no secret and are read by probes and scrapers
    under whatever name they were given: no Host or Origin rule."""
    async with serve() as admin:
        foreign = {"Host": "monitor.example:9090", "Origin": EVIL}
        assert await ok(admin.http, "GET", "/healthz", headers=foreign) == {"status": "ok"}
        assert (await ok(admin.http, "GET", "/readyz", headers=foreign))["ready"] is True
        metrics = await admin.http.get("/metrics", headers=foreign)
        assert metrics.status == 200 and "bridge_polls_total" in await metrics.text()
