"""`run` says at start, in one line, what it works with."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from bridge import __version__
from bridge.service import Service
from bridge.sim.clock import FakeClock
from tests.integration.helpers import settings_for


async def test_one_summary_line_at_start(tmp_path: Path, clock: FakeClock, secret: str) -> None:
    settings = settings_for(
        "http://127.0.0.1:9/api/v1", "http://127.0.0.1:9/hook", secret, tmp_path / "b.db"
    )
    settings = settings.model_copy(
        update={"admin": settings.admin.model_copy(update={"enabled": True, "port": 0})}
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with Service(settings, clock=clock) as svc:
            stop.set()  # stop at once: the summary comes before any work
            await svc.run(stop)
    [line] = [e for e in logs if e["event"] == "munsit-bridge started"]
    assert line["version"] == __version__
    assert line["config"] == "(none: defaults and env)"  # settings built without a file
    assert line["store"] == str(tmp_path / "b.db") and Path(line["store"]).is_absolute()
    assert line["upstream"] == ["http://127.0.0.1:9/api/v1"]
    assert line["subscribers"] == ["rx"] and line["accounts"] == ["default"]
    assert line["admin"] == f"http://127.0.0.1:{svc.admin_port}" and svc.admin_port > 0
    assert line["gateway"] == "off" and line["role"] == "leader"
    new_store = [e for e in logs if e["event"].startswith("new store created")]
    assert len(new_store) == 1 and new_store[0]["log_level"] == "warning"
