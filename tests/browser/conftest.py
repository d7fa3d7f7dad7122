"""The dashboard driven by a real Chromium: a running `Service` over the simulator, its admin
app with the dashboard on a real local port, and a Playwright page. Every page visited is
saved under `tests/browser/screenshots/`, and the page as it was when a test failed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright
from pydantic import SecretStr

from bridge.admin.app import create_app
from bridge.config import Settings
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.ui import setup
from tests.browser import chromium
from tests.integration.helpers import RecordingReceiver, ServerFactory, settings_for

SHOTS = Path(__file__).parent / "screenshots"
TOKEN = "tok-ui-7c2e9b-admin"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@dataclass
class Dashboard:
    """The running service, its dashboard's base URL and the things it talks to."""

    svc: Service
    clock: FakeClock
    sim: Simulator
    rx: RecordingReceiver
    base: str
    page: Page
    test_name: str
    shots: int = 0

    async def shot(self, label: str) -> None:
        SHOTS.mkdir(exist_ok=True)
        self.shots += 1
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.test_name}-{self.shots:02d}-{label}")
        await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    async def goto(self, path: str, label: str | None = None) -> None:
        response = await self.page.goto(self.base + path)
        assert response is not None and response.ok, (path, response and response.status)
        await self.shot(label or path)


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    """The screenshots of this run only: the previous run's are removed."""
    SHOTS.mkdir(exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    return SHOTS


@pytest.fixture
async def browser(request: pytest.FixtureRequest, shots_dir: Path) -> AsyncIterator[Browser]:
    if chromium.missing():
        chromium.skipped.append(request.node.nodeid)
        pytest.skip(
            f"{chromium.CHROMIUM} is not installed (apt-get install chromium; .ci/run does)"
        )
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=chromium.CHROMIUM, args=["--no-sandbox"]
        )
        yield launched
        await launched.close()


def make_settings(up: str, rx: str, secret: str, db: Path, token: str | None) -> Settings:
    base = settings_for(
        up,
        rx,
        secret,
        db,
        upstream={"backfill": True, "progress_stream": False},
        delivery={"jitter": 0, "retry_schedule_s": [1]},
    )
    admin = base.admin.model_copy(update={"token": SecretStr(token) if token else None})
    return base.model_copy(update={"admin": admin})


@pytest.fixture
async def dashboard(
    request: pytest.FixtureRequest,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    secret: str,
    tmp_path: Path,
    browser: Browser,
) -> AsyncIterator[Dashboard]:
    token = getattr(request, "param", TOKEN)
    sim = Simulator(api_key="test-key", clock=clock, processing_s=3600)
    rx = RecordingReceiver()
    up: TestServer = await aiohttp_server(sim.make_app())
    rx_server: TestServer = await aiohttp_server(rx.app())
    settings = make_settings(
        str(up.make_url("")).rstrip("/"),
        str(rx_server.make_url("/hook")),
        secret,
        tmp_path / "ui.db",
        token,
    )
    async with Service(settings, clock=clock) as svc:
        app: web.Application = create_app(svc)
        setup(app)
        server: TestServer = await aiohttp_server(app)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        name = request.node.name
        board = Dashboard(svc, clock, sim, rx, str(server.make_url("")).rstrip("/"), page, name)
        try:
            yield board
        finally:
            if request.node.stash.get(FAILED, False):
                await board.shot("FAILED")
            await context.close()


@pytest.fixture
def board(dashboard: Dashboard) -> Dashboard:
    return dashboard
