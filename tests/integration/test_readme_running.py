"""Every shell command of the README's "Running it for real" section, run as a new user
would, against the simulator: the local try (simulator, secret, receiver, check, run, a job
submitted, status, deliveries), then the same "for real" steps from the example config.

What a reader fills in is filled in here: the secret `munsit-bridge secret` printed where
the README writes `whsec_…`, the simulator's key where it writes `...`, free ports for the
README's 8099, 8000 and 8080, and the edits the example config asks for."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import check_secret
from tests.integration.helpers import free_port

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
LONG_RUNNING = ("munsit-bridge simulate", "python receiver.py", "munsit-bridge run", "make run")


def section() -> str:
    text = README.read_text()
    return text[text.index("## Running it for real\n") : text.index("### Commands\n")]


def blocks(kind: str, text: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```$", text, re.S | re.M)


def commands(block: str) -> list[str]:
    """The block's commands, comments cut (a `#` after two spaces starts one)."""
    lines = [re.split(r"\s{2,}#|^#", line)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def wait_port(port: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args!r} ended: {proc.communicate()}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # another process starting: real time is what it takes
    raise AssertionError(f"nothing listens on {port}")


class Reader:
    """Runs the section's commands in one directory, as one user session."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.ports = {"8099": str(free_port()), "8000": str(free_port())}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "MUNSIT_"))}
        self.env["BRIDGE_ADMIN__PORT"] = str(free_port())  # the README's 8080 may be taken
        self.env["PORT"] = self.ports["8000"]  # the receiver recipe's port
        self.secret = ""
        self.background: list[subprocess.Popen[str]] = []
        self.outputs: dict[str, str] = {}

    def fill(self, command: str) -> str:
        for port, free in self.ports.items():
            command = command.replace(port, free)
        command = command.replace("whsec_…", self.secret)
        return command.replace("python receiver.py", f"{sys.executable} receiver.py")

    def run(self, command: str) -> str:
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            self.env[name] = "sim-key" if value == "..." else value
            return ""
        filled = self.fill(command)
        if command.startswith(LONG_RUNNING) or " python receiver.py" in command:
            proc = subprocess.Popen(
                ["bash", "-c", filled],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.background.append(proc)
            return ""
        done = subprocess.run(
            ["bash", "-c", filled],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{command!r} failed: {done.stdout}\n{done.stderr}"
        self.outputs[command] = done.stdout
        return done.stdout

    def stop(self, proc: subprocess.Popen[str]) -> str:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        return out

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    for name in ("Makefile", "pyproject.toml", ".venv", "config", "bridge"):
        (tmp_path / name).symlink_to(ROOT / name)
    receiver = re.search(
        r"<!-- recipe:python -->\n```python\n(.*?)^```$", README.read_text(), re.S | re.M
    )
    assert receiver
    (tmp_path / "receiver.py").write_text(receiver.group(1))
    with wave.open(str(tmp_path / "some.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 8000)
    r = Reader(tmp_path)
    try:
        yield r
    finally:
        r.close()


def port_of(reader: Reader, command: str) -> int:
    """Where a long-running command of the section listens once it is up."""
    if "simulate" in command:
        return int(reader.ports["8099"])
    if "receiver.py" in command:
        return int(reader.ports["8000"])
    return int(reader.env["BRIDGE_ADMIN__PORT"])  # munsit-bridge run, make run


def test_every_command_of_running_it_for_real_works(reader: Reader) -> None:
    text = section()
    setup, local, trying, for_real = [commands(block) for block in blocks("sh", text)]
    [toml] = blocks("toml", text)

    def run_all(block: list[str]) -> None:
        for command in block:
            started = len(reader.background)
            out = reader.run(command)
            if len(reader.background) > started:  # a long-running one: wait until it is up
                wait_port(port_of(reader, command), reader.background[-1])
            if command == "munsit-bridge secret":
                reader.secret = out.strip()
                check_secret(reader.secret)
            if command.startswith(". .venv/bin/activate"):
                reader.env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{reader.env['PATH']}"
            if command.startswith("munsit-bridge check"):
                assert "warning:" not in out, out
                assert re.search(r"\b20[04]\b", out), out  # the test event was answered
            if command.startswith("cp config/bridge.example.toml"):
                edit_example(reader)

    # getting munsit-bridge on the PATH: the activation line, checked in its own shell
    where = reader.run(". .venv/bin/activate && command -v munsit-bridge")
    found = Path(where.strip())
    assert found.name == "munsit-bridge" and found.parent.parent.name == ".venv"
    run_all(setup)
    assert "munsit-bridge" in reader.outputs["munsit-bridge --version"]

    # the local try: simulator, secret, receiver; the config; check, run, a job, status
    run_all(local)
    receiver = reader.background[-1]
    (reader.cwd / "bridge.toml").write_text(reader.fill(toml))
    run_all(trying)
    assert '"jobId"' in next(out for c, out in reader.outputs.items() if c.startswith("curl"))
    assert "local" in reader.outputs["munsit-bridge status"]
    assert "baseline recorded" in reader.stop(reader.background[-1])  # the bridge, stopped

    # then for real, from the example config, with the edits it asks for
    run_all(for_real)
    out = reader.stop(reader.background[-1]).splitlines()
    logged = [json.loads(line) for line in out if line.startswith("{")]  # make echoes first
    [started] = [e for e in logged if e.get("event") == "munsit-bridge started"]  # make run
    assert started["config"] == str(reader.cwd / "bridge.toml")
    assert started["store"] == str(reader.cwd / "data" / "bridge.db")
    assert started["subscribers"] == ["my-backend"]
    assert (reader.cwd / "data" / "bridge.db").exists()  # beside the config
    received = reader.stop(receiver)
    assert received.count("bridge.test munsit-bridge-test.wav") == 2  # both checks' sends


def edit_example(reader: Reader) -> None:
    """What the example asks a reader to fill in: Munsit (here the simulator), their
    endpoint (here the receiver, on this machine) and its secret."""
    config = reader.cwd / "bridge.toml"
    text = re.sub(
        r'^base_url = ".*"$',
        f'base_url = "http://127.0.0.1:{reader.ports["8099"]}"',
        config.read_text(),
        flags=re.M,
    )
    text = re.sub(
        r"^(secret|secret_env|secret_file) = .*$", f'secret = "{reader.secret}"', text, flags=re.M
    )
    text = re.sub(
        r'^url = "https?://.*"$',
        f'url = "http://127.0.0.1:{reader.ports["8000"]}/"',
        text,
        flags=re.M,
    )
    text = text.replace("allow_private_destinations = false", "allow_private_destinations = true")
    config.write_text(text)
