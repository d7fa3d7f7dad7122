"""The Dockerfile: its shape, and its entry command and health check run as written, with the
image's environment, in this virtualenv (no container engine is needed for that)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import ServerFactory

ROOT = Path(__file__).parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def one(name: str) -> str:
    [value] = [rest for word, rest in instructions() if word == name]
    return value


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    return env


def test_dockerfile_shape() -> None:
    assert re.fullmatch(r"python:3\.1[1-9]-slim", one("FROM"))
    assert one("USER") not in ("root", "0")
    assert json.loads(one("VOLUME")) == ["/config", "/data"]
    assert one("EXPOSE") == "8080"
    assert json.loads(one("CMD")) == ["munsit-bridge", "run"]
    assert "/healthz" in one("HEALTHCHECK")
    env = image_env()
    assert env["BRIDGE_CONFIG"] == "/config/bridge.toml"
    assert env["BRIDGE_STORE__URL"] == "sqlite:////data/bridge.db"
    # installed the way `make` installs: a virtualenv, pip upgraded, the package from the repo
    run = " ".join(rest for word, rest in instructions() if word == "RUN")
    makefile = (ROOT / "Makefile").read_text()
    for step in ("-m venv", "-m pip install --quiet --upgrade pip", "-m pip install --quiet"):
        assert step in run and step in makefile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.db", "bridge.toml"} <= set(ignored)


def healthcheck_command() -> list[str]:
    args = one("HEALTHCHECK").split(" CMD ", 1)[1]
    command: list[str] = json.loads(args)
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def run_healthcheck(env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *healthcheck_command(), env=env, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_image_command_and_healthcheck_work(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    secret: str,
    unused_tcp_port: int,
) -> None:
    sim = Simulator(api_key="k", clock=SystemClock())
    sim_server: TestServer = await aiohttp_server(sim.make_app())
    (tmp_path / "bridge.toml").write_text(
        f'[upstream]\nbase_url = "{str(sim_server.make_url("")).rstrip("/")}"\n'
        f'[[subscribers]]\nid = "rx"\nurl = "https://example.com/hook"\nsecret = "{secret}"\n'
    )
    env = {
        **image_env(),
        # the image's paths, mapped into this test's directory and virtualenv
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "BRIDGE_CONFIG": str(tmp_path / "bridge.toml"),
        "BRIDGE_STORE__URL": f"sqlite:///{tmp_path / 'data' / 'bridge.db'}",
        "BRIDGE_ADMIN__PORT": str(unused_tcp_port),
        "MUNSIT_API_KEY": "k",
    }
    command = json.loads(one("CMD"))

    # admin on 0.0.0.0 without a token is refused, naming the key
    refused = await asyncio.create_subprocess_exec(
        *command, env=env, stderr=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    _, err = await asyncio.wait_for(refused.communicate(), 30)
    assert refused.returncode == 2 and "admin.token" in err.decode()

    env["BRIDGE_ADMIN__TOKEN"] = "t0ken-for-the-test"
    assert await run_healthcheck(env) != 0  # nothing listens yet
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"admin server listening" not in (line := await proc.stdout.readline()):
                assert line, "the service ended before its admin server listened"
        assert json.loads(line)["host"] == "0.0.0.0"
        assert await run_healthcheck(env) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert (tmp_path / "data" / "bridge.db").exists()
