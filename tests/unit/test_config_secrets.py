"""Secrets from the environment or from files (Docker and Kubernetes secrets), one source per
secret, and the Standard Webhooks specification's public example secret refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import PUBLIC_EXAMPLE_SECRET, load_settings
from bridge.errors import ConfigError
from tests.conftest import make_secret

SECRET, OLD, OLDER = make_secret(seed=21), make_secret(seed=22), make_secret(seed=23)
TOKEN = "admin-token-0123456789"
UPSTREAM = '[upstream]\napi_key = "k"\n'


def subscriber(*lines: str) -> str:
    return '[[subscribers]]\nid = "ops"\nurl = "https://example.com/hook"\n' + "".join(
        f"{line}\n" for line in lines
    )


def write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bridge.toml"
    path.write_text(UPSTREAM + text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    for value in (SECRET, OLD, OLDER, TOKEN):
        assert value not in text  # a secret read from anywhere is never shown
    return info.value.problems


def test_secret_env_and_previous_secrets_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPS_SECRET", SECRET)
    monkeypatch.setenv("OPS_OLD", OLD)
    monkeypatch.setenv("OPS_OLDER", OLDER)
    path = write(
        tmp_path,
        subscriber('secret_env = "OPS_SECRET"', 'previous_secrets_env = ["OPS_OLD", "OPS_OLDER"]'),
    )
    [ops] = load_settings(path).subscribers
    assert ops.secret is not None and ops.secret.get_secret_value() == SECRET
    assert [s.get_secret_value() for s in ops.previous_secrets] == [OLD, OLDER]
    assert SECRET not in repr(ops) and OLD not in repr(ops)


def test_secret_file_relative_to_the_config_and_newline_stripped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "etc" / "bridge"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "ops").write_text(SECRET + "\n")  # as `echo` and kubectl write them
    (tmp_path / "old").write_text(OLD + "\r\n")
    (home / "admin-token").write_text(TOKEN + "\n")
    path = write(
        home,
        '[admin]\ntoken_file = "admin-token"\n'
        + subscriber(
            'secret_file = "secrets/ops"', f'previous_secrets_file = ["{tmp_path / "old"}"]'
        ),
    )
    monkeypatch.chdir(tmp_path)  # relative paths are not relative to the working directory
    settings = load_settings(path)
    [ops] = settings.subscribers
    assert ops.secret is not None and ops.secret.get_secret_value() == SECRET
    assert [s.get_secret_value() for s in ops.previous_secrets] == [OLD]
    assert settings.admin.token is not None and settings.admin.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)


def test_missing_variable_or_file_names_the_key_and_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, subscriber('secret_env = "OPS_SECRET"'))
    assert problems_of(path) == [
        "subscribers[0].secret_env: environment variable OPS_SECRET is not set"
    ]
    path = write(tmp_path, subscriber('secret_file = "ops.secret"'))
    assert problems_of(path) == [
        f"subscribers[0].secret_file: cannot read {tmp_path / 'ops.secret'} "
        "(No such file or directory)"
    ]
    monkeypatch.setenv("OPS_OLD", OLD)
    path = write(
        tmp_path, subscriber(f'secret = "{SECRET}"', 'previous_secrets_env = ["OPS_OLD", "GONE"]')
    )
    assert problems_of(path) == [
        "subscribers[0].previous_secrets_env: item 1: environment variable GONE is not set"
    ]
    path = write(tmp_path, subscriber(f'secret = "{SECRET}"', 'previous_secrets_file = ["old"]'))
    assert problems_of(path) == [
        f"subscribers[0].previous_secrets_file: item 0: cannot read {tmp_path / 'old'} "
        "(No such file or directory)"
    ]
    path = write(tmp_path, '[admin]\ntoken_file = "/nonexistent/token"\n')
    assert problems_of(path) == [
        "admin.token_file: cannot read /nonexistent/token (No such file or directory)"
    ]


TWO_SOURCES = [
    (
        subscriber(f'secret = "{SECRET}"', 'secret_env = "OPS_SECRET"'),
        "subscribers[0].secret_env: cannot be combined with secret: give each secret one source",
    ),
    (
        subscriber('secret_env = "OPS_SECRET"', 'secret_file = "ops.secret"'),
        "subscribers[0].secret_file: cannot be combined with secret_env",
    ),
    (
        subscriber(
            f'secret = "{SECRET}"',
            f'previous_secrets = ["{OLD}"]',
            'previous_secrets_file = ["old"]',
        ),
        "subscribers[0].previous_secrets_file: cannot be combined with previous_secrets",
    ),
    (
        f'[admin]\ntoken = "{TOKEN}"\ntoken_file = "token"\n',
        "admin.token_file: cannot be combined with token",
    ),
]


@pytest.mark.parametrize(("text", "message"), TWO_SOURCES, ids=[t[1] for t in TWO_SOURCES])
def test_two_sources_for_one_secret_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setenv("OPS_SECRET", SECRET)
    for name, value in (("ops.secret", SECRET), ("old", OLD), ("token", TOKEN)):
        (tmp_path / name).write_text(value)
    [problem] = problems_of(write(tmp_path, text))
    assert problem.startswith(message), problem


def test_a_bad_value_from_a_source_is_checked_like_one_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = make_secret(seed=24, size=16)
    monkeypatch.setenv("OPS_SECRET", short)
    path = write(tmp_path, subscriber('secret_env = "OPS_SECRET"'))
    assert problems_of(path) == [
        "subscribers[0].secret_env: must encode 24-64 bytes, this one encodes 16 "
        "(value of OPS_SECRET)"
    ]
    assert short not in str(problems_of(path))
    (tmp_path / "token").write_text("too-short\n")
    path = write(tmp_path, '[admin]\ntoken_file = "token"\n')
    assert problems_of(path) == [
        f"admin.token_file: must be at least 16 characters (content of {tmp_path / 'token'})"
    ]
    (tmp_path / "empty").write_text("\n")
    path = write(tmp_path, subscriber('secret_file = "empty"'))
    [problem] = problems_of(path)
    assert problem.startswith("subscribers[0].secret_file: must start with 'whsec_'")


EXAMPLE = [
    subscriber(f'secret = "{PUBLIC_EXAMPLE_SECRET}"'),
    subscriber(f'secret = "{SECRET}"', f'previous_secrets = ["{PUBLIC_EXAMPLE_SECRET}"]'),
    subscriber('secret_env = "OPS_SECRET"'),
    subscriber(f'secret = "{SECRET}"', 'previous_secrets_file = ["example"]'),
]


@pytest.mark.parametrize("text", EXAMPLE, ids=["secret", "previous", "env", "file"])
def test_the_public_example_secret_is_refused_naming_the_subscriber(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
) -> None:
    monkeypatch.setenv("OPS_SECRET", PUBLIC_EXAMPLE_SECRET)
    (tmp_path / "example").write_text(PUBLIC_EXAMPLE_SECRET + "\n")
    path = write(tmp_path, text)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "subscriber 'ops' uses the public example secret" in err
    assert "munsit-bridge secret" in err
    assert main(["run", "--config", str(path)]) == 2  # and `run` refuses it the same way
    assert "subscriber 'ops' uses the public example secret" in capsys.readouterr().err


def test_a_chat_subscriber_needs_no_secret_source(tmp_path: Path) -> None:
    text = subscriber('format = "slack"').replace("example.com", "hooks.slack.com")
    [chat] = load_settings(write(tmp_path, text)).subscribers
    assert chat.secret is None and chat.previous_secrets == []
