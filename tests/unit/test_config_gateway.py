"""`[gateway]` and `[[clients]]`: defaults, sources, and every mistake named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import PUBLIC_EXAMPLE_SECRET, load_settings
from bridge.errors import ConfigError
from tests.conftest import make_secret

SECRET = make_secret()
TOKEN = "client-token-0123456789"
BASE = '[upstream]\napi_key = "k"\n'


def client(**fields: str) -> str:
    values = {"id": '"app"', "token": f'"{TOKEN}"', "secret": f'"{SECRET}"'}
    values.update(fields)
    return "[[clients]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v)


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return load_settings(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    settings = load(tmp_path, BASE)
    gateway = settings.gateway  # type: ignore[attr-defined]
    assert (gateway.enabled, gateway.host, gateway.port) == (False, "127.0.0.1", 8081)
    assert gateway.max_upload_bytes == 200 * 1024 * 1024
    assert settings.clients == []  # type: ignore[attr-defined]


def test_a_client_with_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_TOKEN", TOKEN)
    token_free = client(token="", token_env='"APP_TOKEN"')
    text = (
        BASE
        + "[gateway]\nenabled = true\nport = 9000\n"
        + token_free.replace(
            "[[clients]]\n",
            '[[clients]]\nallowed_callback_hosts = ["Hooks.Example.com.", "*.example.org"]\n',
        )
    )
    settings = load(tmp_path, text)
    [app] = settings.clients  # type: ignore[attr-defined]
    assert app.token.get_secret_value() == TOKEN
    assert app.allowed_callback_hosts == ["hooks.example.com", "*.example.org"]
    assert settings.gateway.port == 9000  # type: ignore[attr-defined]
    assert TOKEN not in repr(settings) and SECRET not in repr(settings)


def test_the_environment_overrides_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_GATEWAY__PORT", "9100")
    monkeypatch.setenv("BRIDGE_GATEWAY__MAX_UPLOAD_BYTES", "1024")
    gateway = load(tmp_path, BASE).gateway  # type: ignore[attr-defined]
    assert (gateway.port, gateway.max_upload_bytes) == (9100, 1024)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "[gateway]\nenabled = true\n", "gateway.enabled: the gateway needs at least one"),
        (BASE + client(token='"short"'), "clients[0].token"),
        (
            BASE + client(secret=f'"{PUBLIC_EXAMPLE_SECRET}"'),
            "client 'app' uses the public example",
        ),
        (BASE + client(secret='"nope"'), "clients[0].secret"),
        (BASE + client(id='"App"'), "clients[0].id"),
        (BASE + client() + client(token='"another-token-0123456789"'), "duplicate id 'app'"),
        (BASE + client() + client(id='"other"'), "clients[1].token: the same token"),
        (BASE + client(account='"eu"'), "clients[0].account: no account 'eu'"),
        (BASE + client(allowed_callback_hosts='["https://x.example/"]'), "allowed_callback_hosts"),
        (
            BASE + client(token="", token_env='"NO_SUCH_VARIABLE_SET"'),
            "NO_SUCH_VARIABLE_SET is not set",
        ),
        (BASE + client(colour='"red"'), "clients[0].colour"),
        (
            BASE + f'[admin]\ntoken = "{TOKEN}"\n' + client(),
            "clients[0].token: the same as an admin or feed token",
        ),
    ],
)
def test_mistakes_name_their_key(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert all(TOKEN not in p and SECRET not in p for p in found)
