"""`run` and `check` started from another working directory use the store beside the config
file (a relative `store.url` is relative to the file, not to where the command runs)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import bridge_process

ServerFactory = Callable[..., Any]


def layout(tmp_path: Path, base_url: str = "https://api.munsit.com/api/v1") -> tuple[Path, Path]:
    """A config in `srv/` with the default relative store, and an empty `elsewhere/`."""
    home, elsewhere = tmp_path / "srv", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (home / "bridge.toml").write_text(
        f'[upstream]\nbase_url = "{base_url}"\npoll_interval_s = 0.1\nidle_poll_interval_s = 0.1\n'
        '[store]\nurl = "sqlite:///data/bridge.db"\n'
        '[admin]\nenabled = false\n[log]\nformat = "json"\n'
    )
    return home, elsewhere


async def test_check_from_another_directory_names_the_store_beside_the_config(
    tmp_path: Path,
) -> None:
    home, elsewhere = layout(tmp_path)
    proc = await bridge_process(
        "check",
        "--config",
        "../srv/bridge.toml",  # relative to the working directory, as a user types it
        cwd=elsewhere,
        env={"MUNSIT_API_KEY": "k"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert f"store: {home / 'data' / 'bridge.db'}" in out.decode()
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory


async def test_run_from_another_directory_uses_the_store_beside_the_config(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    sim = Simulator(api_key="loc-key", clock=SystemClock())
    sim.add_records(2, status="success")
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    home, elsewhere = layout(tmp_path, str(sim_server.make_url("")).rstrip("/"))
    proc = await bridge_process(
        "run",
        "--config",
        str(home / "bridge.toml"),
        cwd=elsewhere,
        env={"MUNSIT_API_KEY": "loc-key"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"baseline recorded" not in (line := await proc.stdout.readline()):
                assert line, "the process ended before its baseline"
        assert (home / "data" / "bridge.db").is_file()
        assert list(elsewhere.iterdir()) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert list(elsewhere.iterdir()) == []
