"""Shared fixtures: a clean environment, a fake clock, secrets; the run's summary of the
PostgreSQL tests skipped."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest
import structlog

from bridge.sim.clock import FakeClock
from tests import pgdb
from tests.browser import chromium


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's BRIDGE_* or MUNSIT_API_KEY variables."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_") or name == "MUNSIT_API_KEY":
            monkeypatch.delenv(name)
    yield


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults: a level or stream configured by an
    earlier test (the demo logs errors only) must not hide what this one captures."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_secret(seed: int = 1, size: int = 32) -> str:
    return "whsec_" + base64.b64encode(bytes([seed]) * size).decode()


@pytest.fixture
def secret() -> str:
    return make_secret()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say once, at the end, that the PostgreSQL half of the tests did not run, and why."""
    if pgdb.skipped:
        terminalreporter.write_line(
            f"{len(pgdb.skipped)} PostgreSQL tests skipped: BRIDGE_TEST_PG_URL is not set"
            " (set it to a postgresql:// URL to run them; .ci/run does)"
        )
    if chromium.skipped:
        terminalreporter.write_line(
            f"{len(chromium.skipped)} browser tests skipped: {chromium.CHROMIUM} is not installed"
            " (apt-get install chromium; .ci/run does)"
        )
