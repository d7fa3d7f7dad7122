"""Configuration: defaults, sources and every kind of bad input named by its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import PUBLIC_EXAMPLE_SECRET, load_settings
from bridge.errors import ConfigError
from tests.conftest import make_secret

GOOD_SECRET = make_secret()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


BASE = '[upstream]\napi_key = "k"\n'


def sub(**fields: str) -> str:
    values = {"id": '"ops"', "url": '"https://example.com/hook"', "secret": f'"{GOOD_SECRET}"'}
    values.update(fields)
    return "[[subscribers]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v)


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE + sub()))
    assert s.upstream.base_url == "https://api.munsit.com/api/v1"
    assert (s.upstream.page_size, s.upstream.poll_interval_s, s.upstream.idle_poll_interval_s) == (
        50,
        5.0,
        30.0,
    )
    assert s.upstream.request_timeout_s == 15.0
    assert s.upstream.progress_stream is True and s.upstream.max_progress_streams == 50
    assert s.upstream.full_scan_interval_s == 86400.0 and s.upstream.backfill is False
    assert s.store.url == "sqlite:///data/bridge.db"
    assert s.delivery.retry_schedule_s == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert (s.delivery.jitter, s.delivery.timeout_s, s.delivery.max_in_flight) == (0.2, 15.0, 100)
    assert s.delivery.disable_after_s == 432000.0
    assert s.delivery.allow_private_destinations is False
    assert (s.admin.enabled, s.admin.host, s.admin.port, s.admin.token) == (
        True,
        "127.0.0.1",
        8080,
        None,
    )
    assert (s.log.level, s.log.format) == ("info", "auto")
    [ops] = s.subscribers
    assert ops.events == ["denoise.completed", "denoise.failed"]
    assert (ops.format, ops.max_concurrency, ops.rate_limit_per_s, ops.enabled) == (
        "standard",
        4,
        None,
        True,
    )


def test_env_overrides_file_and_munsit_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[upstream]\npage_size = 10\n")
    monkeypatch.setenv("MUNSIT_API_KEY", "from-env")
    monkeypatch.setenv("BRIDGE_UPSTREAM__POLL_INTERVAL_S", "2")
    monkeypatch.setenv("BRIDGE_DELIVERY__RETRY_SCHEDULE_S", "[1, 2]")
    s = load_settings(path)
    assert s.upstream.api_key is not None
    assert s.upstream.api_key.get_secret_value() == "from-env"
    assert s.upstream.poll_interval_s == 2.0
    assert s.upstream.page_size == 10
    assert s.delivery.retry_schedule_s == [1, 2]


def test_bridge_env_key_wins_over_munsit_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUNSIT_API_KEY", "generic")
    monkeypatch.setenv("BRIDGE_UPSTREAM__API_KEY", "specific")
    key = load_settings(write(tmp_path, "")).upstream.api_key
    assert key is not None and key.get_secret_value() == "specific"


def test_relative_store_path_is_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "srv", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    write(home, BASE)
    monkeypatch.chdir(elsewhere)
    s = load_settings(Path("../srv/bridge.toml"))  # as `--config` may give it: relative
    assert s.config_path == home / "bridge.toml"
    assert s.store.sqlite_path() == home / "data" / "bridge.db"
    assert s.store.url == "sqlite:///data/bridge.db"  # the setting itself is as written
    s = load_settings(write(home, BASE + '[store]\nurl = "sqlite:////var/x.db"\n'))
    assert s.store.sqlite_path() == Path("/var/x.db")


def test_without_a_file_the_store_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MUNSIT_API_KEY", "k")
    s = load_settings(None)
    assert s.config_path is None
    assert s.store.sqlite_path() == tmp_path / "data" / "bridge.db"


def test_config_path_is_not_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "config_path = '/etc/x.toml'\n" + BASE))
    assert info.value.problems == ["config_path: unknown key"]
    monkeypatch.setenv("BRIDGE_CONFIG_PATH", "/etc/x.toml")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE))
    assert info.value.problems[0].startswith("BRIDGE_CONFIG_PATH: no such setting")


BAD = [
    ("", "upstream.api_key: required (or set MUNSIT_API_KEY)"),
    (BASE + "colour = 1\n", "upstream.colour: unknown key"),
    (BASE + "[surprise]\nx = 1\n", "surprise: unknown key"),
    (BASE + 'base_url = "ftp://x"\n', "upstream.base_url: must be an http:// or https://"),
    (BASE + "poll_interval_s = 0\n", "upstream.poll_interval_s: Input should be greater than 0"),
    (BASE + "idle_poll_interval_s = -1\n", "upstream.idle_poll_interval_s: Input should be"),
    (BASE + "request_timeout_s = 0\n", "upstream.request_timeout_s: Input should be greater"),
    (BASE + "page_size = 0\n", "upstream.page_size: Input should be greater than or equal"),
    (BASE + "full_scan_interval_s = -5\n", "upstream.full_scan_interval_s: Input should be"),
    (BASE + "max_progress_streams = 0\n", "upstream.max_progress_streams: Input should be"),
    (BASE + 'backfill = "sometimes"\n', "upstream.backfill: Input should be a valid boolean"),
    (BASE + '[store]\nurl = "mysql://x"\n', "store.url: must be sqlite:///"),
    (BASE + "[delivery]\nretry_schedule_s = [5, 0]\n", "delivery.retry_schedule_s: every delay"),
    (BASE + "[delivery]\njitter = 1.5\n", "delivery.jitter: Input should be less than 1"),
    (BASE + "[delivery]\ntimeout_s = 0\n", "delivery.timeout_s: Input should be greater than 0"),
    (BASE + "[delivery]\nmax_in_flight = 0\n", "delivery.max_in_flight: Input should be"),
    (BASE + "[delivery]\ndisable_after_s = 0\n", "delivery.disable_after_s: Input should be"),
    (BASE + '[admin]\nhost = "0.0.0.0"\n', "admin.token: required when admin.host"),
    (BASE + "[admin]\nport = 70000\n", "admin.port: Input should be less than or equal"),
    (BASE + '[admin]\ntoken = "15-characters!!"\n', "admin.token: must be at least 16 characters"),
    (BASE + '[admin]\nallowed_hosts = ["ok.example", "a b"]\n', "admin.allowed_hosts: item 1"),
    (BASE + '[log]\nlevel = "loud"\n', "log.level: Input should be"),
    (BASE + '[log]\nformat = "xml"\n', "log.format: Input should be"),
    (BASE + sub(secret='"abc"'), "subscribers[0].secret: must start with 'whsec_'"),
    (BASE + sub(secret='"whsec_!!!"'), "subscribers[0].secret: the part after 'whsec_' is not"),
    (BASE + sub(secret=f'"{make_secret(size=16)}"'), "subscribers[0].secret: must encode 24-64"),
    (BASE + sub(secret=f'"{make_secret(size=65)}"'), "subscribers[0].secret: must encode 24-64"),
    (BASE + sub(secret=""), "subscribers[0].secret: required for format 'standard'"),
    (BASE + sub(secret="", format='"zapier"'), "subscribers[0].secret: required for format"),
    (BASE + sub(previous_secrets='["nope"]'), "subscribers[0].previous_secrets: item 0 must"),
    (BASE + sub(url='"not a url"'), "subscribers[0].url: must be an http:// or https://"),
    (BASE + sub(url='"http://x:99999/"'), "subscribers[0].url: has an invalid port"),
    (BASE + sub(id='"Bad Id"'), "subscribers[0].id: must be a slug"),
    (BASE + sub(events='["denoise.finished"]'), "subscribers[0].events: unknown event type"),
    (BASE + sub(events="[]"), "subscribers[0].events: List should have at least 1 item"),
    (BASE + sub(format='"fax"'), "subscribers[0].format: Input should be 'standard'"),
    (BASE + sub(max_concurrency="0"), "subscribers[0].max_concurrency: Input should be"),
    (BASE + sub(rate_limit_per_s="0"), "subscribers[0].rate_limit_per_s: Input should be"),
    (BASE + sub(headers='{"Webhook-Id" = "x"}'), "subscribers[0].headers: 'Webhook-Id' is set"),
    (BASE + sub(color='"red"'), "subscribers[0].color: unknown key"),
    (BASE + sub() + sub(url='"https://b.example/h"'), "subscribers[1].id: duplicate id 'ops'"),
    (BASE + sub() + sub(id='"b"', secret='"x"'), "subscribers[1].secret: must start"),
    ("[upstream\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_input_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert any(message in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(("text", "message"), BAD[:6])
def test_check_exits_2_and_names_the_key(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(write(tmp_path, text))]) == 2
    assert message in capsys.readouterr().err


def test_admin_token_of_16_characters_and_allowed_hosts_as_written(tmp_path: Path) -> None:
    text = '[admin]\ntoken = "16-characters!!!"\nallowed_hosts = ["Bridge.Example.", "::1"]\n'
    s = load_settings(write(tmp_path, BASE + text))
    assert s.admin.token is not None and len(s.admin.token.get_secret_value()) == 16
    # compared with the Host header lower-cased, without the trailing dot
    assert s.admin.allowed_hosts == ["bridge.example", "::1"]
    assert load_settings(write(tmp_path, BASE)).admin.allowed_hosts == []


def test_missing_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: file not found" in capsys.readouterr().err


def test_secrets_never_in_errors_or_repr(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE + sub()))
    assert GOOD_SECRET not in repr(s) and GOOD_SECRET not in str(s)
    bad = make_secret(size=16)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE + sub(secret=f'"{bad}"')))
    assert bad not in str(info.value)


def test_check_ok_names_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "state" / "b.db"
    path = write(tmp_path, BASE + f'[store]\nurl = "sqlite:///{db}"\n' + sub())
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out and f"store: {db}" in out


def test_check_reports_an_unusable_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = write(tmp_path, BASE + f'[store]\nurl = "sqlite:///{blocker}/sub/b.db"\n')
    assert main(["check", "--config", str(path)]) == 1
    assert "cannot open store" in capsys.readouterr().err


def test_example_config_is_valid_and_documents_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import BaseModel

    from bridge.config import Settings
    from bridge.config_accounts import AccountConfig
    from bridge.config_gateway import ClientConfig

    example = Path(__file__).parents[2] / "config" / "bridge.example.toml"
    monkeypatch.setenv("MUNSIT_API_KEY", "k")
    monkeypatch.setenv("MY_BACKEND_SECRET", GOOD_SECRET)  # the example reads it from there
    settings = load_settings(example)
    [backend] = settings.subscribers
    assert backend.id == "my-backend" and backend.secret is not None
    assert backend.secret.get_secret_value() == GOOD_SECRET
    assert backend.headers == {}  # nothing of the example's own goes to a real endpoint
    text = example.read_text()
    assert PUBLIC_EXAMPLE_SECRET not in text
    assert re.search(r"whsec_[A-Za-z0-9+/]{8}", text) is None  # no usable secret at all
    monkeypatch.delenv("MY_BACKEND_SECRET")
    with pytest.raises(ConfigError) as info:
        load_settings(example)  # so a copy without the variable set is refused, not unsigned
    assert info.value.problems == [
        "subscribers[0].secret_env: environment variable MY_BACKEND_SECRET is not set"
    ]
    # every key is documented, in force or commented out
    for section in Settings.model_fields:
        assert f"[{section}]" in text or f"[[{section}]]" in text, section
        tables: dict[str, type[BaseModel]] = {
            "subscribers": type(settings.subscribers[0]),
            "clients": ClientConfig,
            "accounts": AccountConfig,
        }
        model = tables.get(section) or type(getattr(settings, section))
        for key in model.model_fields:
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key}"
