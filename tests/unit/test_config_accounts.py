"""`[[accounts]]`: several Munsit accounts, their keys and defaults, and who refers to them
(subscribers' `accounts`, clients' `account`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from tests.conftest import make_secret

SUB = f'[[subscribers]]\nid = "rx"\nurl = "https://example.com/h"\nsecret = "{make_secret()}"\n'
TWO = (
    '[[accounts]]\nid = "a"\napi_key = "key-of-a"\n'
    '[[accounts]]\nid = "b"\napi_key_env = "ACCOUNT_B_KEY"\nbase_url = "https://b.example/api/v1/"\n'
    "poll_interval_s = 2\n"
)


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return load_settings(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUNSIT_API_KEY", raising=False)
    monkeypatch.setenv("ACCOUNT_B_KEY", "key-of-b")


def test_without_accounts_upstream_is_the_default_account(tmp_path: Path) -> None:
    settings = load(tmp_path, '[upstream]\napi_key = "k1"\n')
    assert settings.account_ids == ["default"]
    [(name, up)] = settings.account_upstreams().items()
    assert name == "default" and up is settings.upstream


def test_the_default_accounts_key_is_required(tmp_path: Path) -> None:
    assert problems(tmp_path, "") == ["upstream.api_key: required (or set MUNSIT_API_KEY)"]


def test_accounts_take_their_own_key_url_and_intervals_and_upstreams_defaults(
    tmp_path: Path,
) -> None:
    settings = load(tmp_path, "[upstream]\npage_size = 7\nidle_poll_interval_s = 40\n" + TWO)
    ups = settings.account_upstreams()
    assert list(ups) == settings.account_ids == ["a", "b"]
    a, b = ups["a"], ups["b"]
    assert a.api_key is not None and a.api_key.get_secret_value() == "key-of-a"
    assert b.api_key is not None and b.api_key.get_secret_value() == "key-of-b"  # from the env
    assert (
        a.base_url == "https://api.munsit.com/api/v1" and b.base_url == "https://b.example/api/v1"
    )
    assert (a.poll_interval_s, b.poll_interval_s) == (5.0, 2.0)
    assert a.idle_poll_interval_s == b.idle_poll_interval_s == 40.0
    assert a.page_size == b.page_size == 7
    assert "key-of" not in repr(settings)


def test_an_account_without_a_key_takes_upstreams(tmp_path: Path) -> None:
    settings = load(tmp_path, '[upstream]\napi_key = "shared"\n[[accounts]]\nid = "a"\n')
    key = settings.account_upstreams()["a"].api_key
    assert key is not None and key.get_secret_value() == "shared"
    assert problems(tmp_path, '[[accounts]]\nid = "a"\n') == [
        "accounts[0].api_key: required (or api_key_env, or upstream.api_key for every account"
        " that gives none)"
    ]


def test_duplicate_ids_and_keys_are_refused(tmp_path: Path) -> None:
    twice = '[[accounts]]\nid = "a"\napi_key = "k1"\n[[accounts]]\nid = "a"\napi_key = "k2"\n'
    assert problems(tmp_path, twice) == ["accounts[1].id: duplicate id 'a'"]
    same = '[[accounts]]\nid = "a"\napi_key = "k1"\n[[accounts]]\nid = "b"\napi_key = "k1"\n'
    [line] = problems(tmp_path, same)
    assert line.startswith("accounts[1].api_key: the same key as account 'a'") and "k1" not in line


def test_subscribers_and_clients_name_known_accounts(tmp_path: Path) -> None:
    settings = load(tmp_path, TWO + SUB + 'accounts = ["b"]\n')
    assert settings.subscribers[0].accounts == ["b"]
    assert problems(tmp_path, TWO + SUB + 'accounts = ["c"]\n') == [
        "subscribers[0].accounts: no account 'c' (known: a, b)"
    ]
    client = (
        '[[clients]]\nid = "app"\ntoken = "client-token-0123456789"\n'
        f'secret = "{make_secret(seed=3)}"\n'
    )
    assert problems(tmp_path, TWO + client) == [
        "clients[0].account: required with several accounts (known: a, b)"
    ]
    settings = load(tmp_path, TWO + client + 'account = "b"\n')
    assert settings.client_account(settings.clients[0]) == "b"
    one = '[[accounts]]\nid = "solo"\napi_key = "k"\n'
    settings = load(tmp_path, one + client)
    assert settings.client_account(settings.clients[0]) == "solo"
