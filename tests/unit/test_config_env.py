"""`BRIDGE_*` variables: one that names no key is refused by name, and a bad value that came
from the environment is reported with the variable that set it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import load_settings
from bridge.errors import ConfigError
from tests.conftest import make_secret

SECRET = make_secret(seed=3)
BASE = f"""[upstream]
api_key = "k"
[[subscribers]]
id = "ops"
url = "https://example.com/hook"
secret = "{SECRET}"
"""


def config(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """`check`'s problem lines; it must exit 2."""
    assert main(["check", "--config", str(config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("munsit-bridge: invalid configuration:\n"), err
    return [line.strip() for line in err.splitlines()[1:]]


UNKNOWN = [
    (
        "BRIDGE_UPSTRAEM__POLL_INTERVAL_S",
        "BRIDGE_UPSTRAEM__POLL_INTERVAL_S: no such setting "
        "(upstream.poll_interval_s? that is BRIDGE_UPSTREAM__POLL_INTERVAL_S)",
    ),
    (  # a single underscore between section and key
        "BRIDGE_UPSTREAM_POLL_INTERVAL_S",
        "BRIDGE_UPSTREAM_POLL_INTERVAL_S: no such setting "
        "(upstream.poll_interval_s? that is BRIDGE_UPSTREAM__POLL_INTERVAL_S)",
    ),
    (
        "BRIDGE_UPSTREAM__POLL_INTERVALL_S",
        "BRIDGE_UPSTREAM__POLL_INTERVALL_S: no such setting "
        "(upstream.poll_interval_s? that is BRIDGE_UPSTREAM__POLL_INTERVAL_S)",
    ),
    (
        "BRIDGE_ADMIN_TOKEN",
        "BRIDGE_ADMIN_TOKEN: no such setting (admin.token? that is BRIDGE_ADMIN__TOKEN)",
    ),
    (
        "BRIDGE_UPSTREAM__COLOUR",
        "BRIDGE_UPSTREAM__COLOUR: no such setting (upstream has no key 'colour')",
    ),
    (
        "bridge_upstream__colour",
        "bridge_upstream__colour: no such setting (upstream has no key 'colour')",
    ),
    (
        "BRIDGE_SUBSCRIBERS__0__SECRET",
        "BRIDGE_SUBSCRIBERS__0__SECRET: no such setting "
        "(subscribers is set whole: BRIDGE_SUBSCRIBERS as JSON)",
    ),
    (
        "BRIDGE_SURPRISE",
        "BRIDGE_SURPRISE: no such setting (variables are BRIDGE_<SECTION>__<KEY>, "
        "e.g. BRIDGE_UPSTREAM__POLL_INTERVAL_S; BRIDGE_CONFIG is the file's path)",
    ),
]


@pytest.mark.parametrize(("variable", "line"), UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_a_variable_that_names_no_key_exits_2_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    line: str,
) -> None:
    assert main(["check", "--config", str(config(tmp_path))]) == 0
    capsys.readouterr()
    monkeypatch.setenv(variable, "2")
    assert problems(tmp_path, capsys) == [line]


def test_every_unknown_variable_and_every_bad_value_are_reported_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "debug")
    monkeypatch.setenv("BRIDGE_STORE__URI", "sqlite:///x.db")
    monkeypatch.setenv("BRIDGE_DELIVERY__TIMEOUT_S", "0")
    assert problems(tmp_path, capsys) == [
        "BRIDGE_LOG_LEVEL: no such setting (log.level? that is BRIDGE_LOG__LEVEL)",
        "BRIDGE_STORE__URI: no such setting (store.url? that is BRIDGE_STORE__URL)",
        "delivery.timeout_s: Input should be greater than 0 (from BRIDGE_DELIVERY__TIMEOUT_S)",
    ]


def test_an_unknown_key_inside_a_json_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_UPSTREAM", '{"api_key": "k", "poll_intervall_s": 2}')
    assert problems(tmp_path, capsys) == [
        "upstream.poll_intervall_s: unknown key (from BRIDGE_UPSTREAM)"
    ]


def test_the_same_key_from_the_file_is_named_as_a_file_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_DELIVERY__JITTER", "0.1")  # an unrelated, good variable
    with pytest.raises(ConfigError) as info:
        load_settings(config(tmp_path, BASE + "[delivery]\ntimeout_s = 0\n"))
    assert info.value.problems == ["delivery.timeout_s: Input should be greater than 0"]


def test_bridge_config_is_the_file_not_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", str(config(tmp_path)))
    monkeypatch.chdir(tmp_path.parent)
    assert main(["check"]) == 0, capsys.readouterr().err
    assert "config ok" in capsys.readouterr().out


def test_good_variables_of_every_shape_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("bridge_upstream__page_size", "7")  # any case
    monkeypatch.setenv("BRIDGE_ADMIN__ALLOWED_HOSTS", '["proxy.example"]')
    monkeypatch.setenv("BRIDGE_LOG", '{"level": "debug"}')
    monkeypatch.setenv("BRIDGE_LOG__FORMAT", "json")  # a key inside a section given whole
    s = load_settings(config(tmp_path))
    assert s.upstream.page_size == 7
    assert s.admin.allowed_hosts == ["proxy.example"]
    assert (s.log.level, s.log.format) == ("debug", "json")


def test_a_variable_the_config_names_as_a_secret_source_is_not_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`secret_env = "BRIDGE_OPS_SECRET"` makes that variable a secret, not an unknown key."""
    monkeypatch.setenv("BRIDGE_OPS_SECRET", SECRET)
    monkeypatch.setenv("BRIDGE_OPS_OLD", make_secret(seed=4))
    text = BASE.replace(
        f'secret = "{SECRET}"',
        'secret_env = "BRIDGE_OPS_SECRET"\nprevious_secrets_env = ["BRIDGE_OPS_OLD"]',
    )
    [ops] = load_settings(config(tmp_path, text)).subscribers
    assert ops.secret is not None and ops.secret.get_secret_value() == SECRET
    monkeypatch.setenv("BRIDGE_OPS_OTHER", SECRET)  # named by nothing
    with pytest.raises(ConfigError) as info:
        load_settings(config(tmp_path, text))
    assert [p.split(":")[0] for p in info.value.problems] == ["BRIDGE_OPS_OTHER"]


def test_the_console_script_exits_2_for_a_mistyped_variable(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "munsit-bridge"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    result = subprocess.run(
        [str(script), "check", "--config", str(config(tmp_path))],
        env={**env, "BRIDGE_UPSTRAEM__POLL_INTERVAL_S": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "BRIDGE_UPSTRAEM__POLL_INTERVAL_S: no such setting" in result.stderr
    assert "config ok" not in result.stdout
