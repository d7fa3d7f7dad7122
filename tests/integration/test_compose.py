"""deploy/compose.yaml: PostgreSQL and three replicas of one configuration. Each replica's
environment, on top of the image's, loads as valid settings naming the same database and a
replica name of its own (no container engine is needed for that)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import load_settings
from tests.integration.test_dockerfile import image_env

ROOT = Path(__file__).parents[2]
REPLICAS = ("bridge-1", "bridge-2", "bridge-3")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return loaded


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` and `${VAR:?message}`, with stand-in values."""
    stand_in = {"MUNSIT_API_KEY": "sk-compose-test", "BRIDGE_ADMIN__TOKEN": "t" * 24}
    return re.sub(
        r"\$\{(\w+)(?::([-?])([^}]*))?\}",
        lambda m: stand_in.get(m.group(1), m.group(3) if m.group(2) == "-" else "x"),
        value,
    )


def test_three_replicas_share_one_database() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", *REPLICAS}
    assert services["postgres"]["image"] == "postgres:15"
    assert "healthcheck" in services["postgres"]
    envs = [services[name]["environment"] for name in REPLICAS]
    assert {env["BRIDGE_STORE__URL"] for env in envs} == {
        "postgresql://bridge@postgres:5432/bridge"
    }
    assert [env["BRIDGE_STORE__REPLICA_ID"] for env in envs] == list(REPLICAS)
    ports = [services[name]["ports"][0] for name in REPLICAS]
    assert len(set(ports)) == 3 and all(p.endswith(":8080") for p in ports)
    for name in REPLICAS:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["build"] == ".."


@pytest.mark.parametrize("name", REPLICAS)
def test_each_replica_environment_is_a_valid_configuration(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose()["services"][name]
    env = {**image_env(), **{k: interpolate(str(v)) for k, v in service["environment"].items()}}
    for key, value in env.items():
        if key.startswith("BRIDGE_") or key in ("MUNSIT_API_KEY", "PGPASSWORD"):
            monkeypatch.setenv(key, value)
    [mount] = service["volumes"]
    source, target, _mode = mount.split(":")
    assert target == os.environ["BRIDGE_CONFIG"] == "/config/bridge.toml"
    settings = load_settings(ROOT / "deploy" / source)
    assert settings.store.is_postgres
    assert settings.store.shown() == "postgresql://postgres:5432/bridge"
    assert settings.store.replica_id == name
    assert settings.admin.host == "0.0.0.0" and settings.admin.token is not None
