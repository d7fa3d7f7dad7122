"""The README's example payloads and its Python receiver are the real thing."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.deliver.formats import FORMATS
from bridge.examples import blocks, refresh, rendered
from tests.conftest import make_secret
from tests.integration.helpers import free_port

README = Path(__file__).parents[2] / "README.md"


def recipe(name: str) -> str:
    match = re.search(
        rf"<!-- recipe:{name} -->\n```\w+\n(.*?)^```$", README.read_text(), re.S | re.M
    )
    assert match, f"README has no recipe:{name} block"
    return match.group(1)


def test_readme_shows_every_format_exactly_as_rendered() -> None:
    text = README.read_text()
    found = blocks(text)
    assert set(found) == set(FORMATS)
    for fmt in FORMATS:
        assert found[fmt] == rendered(fmt), f"README example for {fmt} is stale: run make examples"
    assert refresh(text) == text


def test_refresh_replaces_a_stale_block_and_leaves_the_rest() -> None:
    text = 'intro\n<!-- example:zapier -->\n```json\n{"old": 1}\n```\noutro\n```json\n{}\n```\n'
    fresh = refresh(text)
    assert blocks(fresh) == {"zapier": rendered("zapier")}
    assert fresh.startswith("intro\n") and fresh.endswith("outro\n```json\n{}\n```\n")
    assert refresh(fresh) == fresh


@pytest.fixture
def python_receiver(tmp_path: Path) -> Iterator[tuple[int, str, subprocess.Popen[str]]]:
    script = tmp_path / "receiver.py"
    script.write_text(recipe("python"))
    port, secret = free_port(), make_secret(9)
    env = {**os.environ, "WEBHOOK_SECRET": secret, "PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:  # wait until the child listens (readiness, not timing)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "receiver did not start listening"
            time.sleep(0.05)
    yield port, secret, proc
    proc.terminate()
    proc.wait(10)


def subscriber_config(path: Path, port: int, secret: str) -> Path:
    path.write_text(
        f"""
[upstream]
api_key = "k"
[store]
url = "sqlite:///{path.parent / "s.db"}"
[delivery]
allow_private_destinations = true
[[subscribers]]
id = "mine"
url = "http://127.0.0.1:{port}/"
secret = "{secret}"
"""
    )
    return path


def test_python_receiver_recipe_accepts_the_bridge_and_refuses_a_forgery(
    python_receiver: tuple[int, str, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, secret, proc = python_receiver
    good = subscriber_config(tmp_path / "good.toml", port, secret)
    assert main(["send-test", "mine", "--config", str(good)]) == 0
    assert capsys.readouterr().out.startswith("mine: 204 in ")

    forged = subscriber_config(tmp_path / "forged.toml", port, make_secret(10))
    assert main(["send-test", "mine", "--config", str(forged)]) == 1
    out = capsys.readouterr().out
    assert "mine: 400" in out and "No matching signature found" in out

    proc.terminate()
    stdout, _ = proc.communicate(timeout=10)
    assert stdout.splitlines() == ["bridge.test munsit-bridge-test.wav"]
