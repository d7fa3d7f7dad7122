"""Bad-config matrix through `munsit-bridge check`: exit 2 and the key named, for every key.

Each row takes a valid configuration, breaks exactly one key and runs the real command line.
The table must hold a row for every key of the `Settings` model (a completeness test walks
the model), so a key added later without a bad-value row fails here. Secrets of the
configuration, good or bad, never appear in the output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from bridge.cli import main
from bridge.config import PUBLIC_EXAMPLE_SECRET, Settings
from tests.conftest import make_secret

# distinctive values, so that a leak into the output is detectable
API_KEY = "mk-live-3b9e51c07d2a4f68"
SECRET = make_secret(seed=7)
SHORT_SECRET = make_secret(seed=9, size=20)  # well-formed but too short
OTHER_SECRET = make_secret(seed=11)
CLIENT_TOKEN = "client-4471-token-0123456789"
ACCOUNT_KEY = "mk-live-account-5c2d"

Tables = dict[str, dict[str, str]]


def base_tables(tmp_path: Path) -> Tables:
    """A valid configuration as TOML literals: section (or `subscribers[0]`) → key → value."""
    return {
        "upstream": {"api_key": f'"{API_KEY}"'},
        "store": {"url": f'"sqlite:///{tmp_path / "state" / "bridge.db"}"'},
        "subscribers[0]": {
            "id": '"ops"',
            "url": '"https://example.com/hook"',
            "secret": f'"{SECRET}"',
        },
        "clients[0]": {"id": '"app"', "token": f'"{CLIENT_TOKEN}"', "secret": f'"{OTHER_SECRET}"'},
    }


def render(tables: Tables) -> str:
    lines: list[str] = []
    for section, values in tables.items():
        table, bracket, _ = section.partition("[")
        lines.append(f"[[{table}]]" if bracket else f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Row:
    key: str  # the key path, as `check` names it
    value: str | None  # a TOML literal; None removes the key
    reason: str  # what the message says is wrong
    hidden: str = ""  # part of the bad value that is a secret: never in the output
    drop: str = ""  # a key of the same table removed too (another source of the same secret)

    @property
    def id(self) -> str:
        return f"{self.key}={self.value}"


# a table a row's key needs that the base configuration does not have: made valid first
SEEDS: Tables = {"accounts[0]": {"id": '"main"', "api_key": f'"{ACCOUNT_KEY}"'}}


def with_row(tmp_path: Path, row: Row) -> str:
    tables = base_tables(tmp_path)
    section, _, key = row.key.rpartition(".")
    values = tables.setdefault(section, dict(SEEDS.get(section, {})))
    values.pop(row.drop, None)
    if row.value is None:
        del values[key]
    else:
        values[key] = row.value
    return render(tables)


ROWS = [
    # [upstream]
    Row("upstream.base_url", '"https://"', "must be an http:// or https:// URL with a host"),
    Row("upstream.base_url", '"https://api.munsit.com:99999/api/v1"', "has an invalid port"),
    Row(
        "upstream.base_url",
        '"https://me:pa55word-78@api.munsit.com/api/v1"',
        "must not hold a user name or password",
        hidden="pa55word-78",
    ),
    Row("upstream.api_key", '""', "must not be empty"),
    Row("upstream.api_key", '"   "', "must not be empty"),
    Row(
        "upstream.api_key",
        '"leaky-key-4471\\r\\nX-Injected: 1"',
        "must not contain line breaks or other control characters",
        hidden="leaky-key-4471",
    ),
    Row("upstream.api_key", "4471009", "Input should be a valid string", hidden="4471009"),
    Row("upstream.page_size", "1001", "Input should be less than or equal to 1000"),
    Row("upstream.page_size", '"fifty"', "Input should be a valid integer"),
    Row("upstream.poll_interval_s", "inf", "Input should be a finite number"),
    Row("upstream.poll_interval_s", '"often"', "Input should be a valid number"),
    Row("upstream.idle_poll_interval_s", "0", "Input should be greater than 0"),
    Row("upstream.request_timeout_s", "inf", "Input should be a finite number"),
    Row("upstream.request_timeout_s", "-15", "Input should be greater than 0"),
    Row("upstream.progress_stream", "2", "Input should be a valid boolean"),
    Row("upstream.max_progress_streams", "-3", "Input should be greater than or equal to 1"),
    Row("upstream.full_scan_interval_s", "nan", "Input should be a finite number"),
    Row("upstream.max_pages_per_scan", "2", "Input should be greater than or equal to 3"),
    Row("upstream.backfill", "[true]", "Input should be a valid boolean"),
    Row("upstream.max_response_bytes", "1000", "Input should be greater than or equal to 4096"),
    Row("store.retention_days", "0", "Input should be greater than 0"),
    # [store]
    Row("store.url", '"mysql://db.example/bridge"', "must be sqlite:///relative/path"),
    Row("store.url", '"postgresql://db.example"', "must name a database"),
    Row(
        "store.url",
        '"postgresql://bridge:S3cretPw@db.example:99999/bridge?sslkey=K3Y"',
        "has an invalid port: 'postgresql://<url>'",
        hidden="S3cretPw",
    ),
    Row(
        "store.url",
        '"mysql://bridge:S3cretPw@db.example/bridge?sslkey=K3Y"',
        "got 'mysql://db.example'",
        hidden="S3cretPw",
    ),
    Row(
        "store.url",
        '"postgresql://bridge:S3cretPW%zz@db.example/bridge"',
        "is not a valid PostgreSQL URL",
        hidden="S3cretPW",
    ),
    Row(
        "store.url",
        '"postgresql://bridge:S3cret PW@db.example/bridge"',
        "is not a valid PostgreSQL URL",
        hidden="S3cret",
    ),
    Row(
        "store.url",
        '"postgresql://bridge:S3cr@tPW@db.example/bridge"',
        "percent-encode an @",
        hidden="tPW",
    ),
    Row("store.leader_lease_s", "0.1", "Input should be greater than or equal to 0.3"),
    Row("store.replica_id", '""', "String should have at least 1 character"),
    Row("store.replica_id", '"a\\tb"', "must be printable"),
    Row("store.url", '"sqlite:///"', "must be sqlite:///relative/path"),
    Row("store.url", "5", "Input should be a valid string"),
    # [delivery]
    Row("delivery.retry_schedule_s", "[5, -300]", "every delay must be > 0, item 1 is -300"),
    Row("delivery.retry_schedule_s", "[5, nan]", "Input should be a finite number"),
    Row("delivery.retry_schedule_s", "[" + ", ".join(["1"] * 51) + "]", "at most 50 items"),
    Row("delivery.retry_schedule_s", '"5, 300"', "Input should be a valid list"),
    Row("delivery.jitter", "-0.1", "Input should be greater than or equal to 0"),
    Row("delivery.jitter", "nan", "Input should be a finite number"),
    Row("delivery.timeout_s", "inf", "Input should be a finite number"),
    Row("delivery.timeout_s", "-1", "Input should be greater than 0"),
    Row("delivery.max_in_flight", "2.5", "Input should be a valid integer"),
    Row("delivery.disable_after_s", "-1", "Input should be greater than 0"),
    Row("delivery.allow_private_destinations", '"maybe"', "Input should be a valid boolean"),
    # [admin]
    Row("admin.enabled", '"sometimes"', "Input should be a valid boolean"),
    Row("admin.host", '""', "must be an IP address or a host name"),
    Row("admin.host", '"not a host!"', "must be an IP address or a host name"),
    Row("admin.port", "-1", "Input should be greater than or equal to 0"),
    Row("admin.port", '"http"', "Input should be a valid integer"),
    Row("admin.token", '""', "must not be empty"),
    Row(
        "admin.token",
        '"tok-5521-short"',
        "must be at least 16 characters",
        hidden="tok-5521-short",
    ),
    Row(
        "admin.token_file",
        '"secrets/admin-token"',
        "cannot read {dir}/secrets/admin-token (No such file or directory)",
    ),
    Row("admin.token_file", '"/etc"', "cannot read /etc (Is a directory)"),
    Row("admin.allowed_hosts", '["bridge.example", "not a host!"]', "item 1: must be a host name"),
    Row("admin.allowed_hosts", '"bridge.example"', "Input should be a valid list"),
    Row("admin.feed_tokens", '["long-enough-feed-token", "short"]', "item 1: must be at least"),
    Row(
        "admin.token",
        '"tok-5521-secret\\nX-Injected: 1"',
        "must not contain line breaks or other control characters",
        hidden="tok-5521-secret",
    ),
    # [gateway]
    Row("gateway.enabled", '"sometimes"', "Input should be a valid boolean"),
    Row("gateway.host", '"not a host!"', "must be an IP address or a host name"),
    Row("gateway.port", "65536", "Input should be less than or equal to 65535"),
    Row("gateway.max_upload_bytes", "0", "Input should be greater than or equal to 1"),
    # [[clients]]
    Row("clients[0].id", '"App"', "must be a slug"),
    Row("clients[0].token", '"tok-8812-short"', "at least 16 characters", hidden="tok-8812-short"),
    Row(
        "clients[0].token_env",
        '"MATRIX_UNSET_TOKEN"',
        "environment variable MATRIX_UNSET_TOKEN is not set",
        drop="token",
    ),
    Row(
        "clients[0].token_file",
        '"no-such-token"',
        "cannot read {dir}/no-such-token (No such file or directory)",
        drop="token",
    ),
    Row(
        "clients[0].secret",
        '"sk_live_77leaky0secret"',
        "must start with 'whsec_'",
        hidden="sk_live_77leaky0secret",
    ),
    Row(
        "clients[0].secret_env",
        '"MATRIX_UNSET_SECRET"',
        "environment variable MATRIX_UNSET_SECRET is not set",
        drop="secret",
    ),
    Row("clients[0].secret_file", '"/etc/hostname"', "cannot be combined with secret"),
    Row("clients[0].allowed_callback_hosts", '["ok.example", "a b"]', "item 1:"),
    Row("clients[0].account", '"eu"', "no account 'eu' (known: default)"),
    # [[accounts]]
    Row("accounts[0].id", '"Main"', "must be a slug"),
    Row("accounts[0].id", None, "required"),
    Row("accounts[0].api_key", '""', "must not be empty"),
    Row(
        "accounts[0].api_key",
        '"leaky-acc-5513\\r\\nX-Injected: 1"',
        "must not contain line breaks or other control characters",
        hidden="leaky-acc-5513",
    ),
    Row(
        "accounts[0].api_key_env",
        '"MATRIX_UNSET_KEY"',
        "environment variable MATRIX_UNSET_KEY is not set",
        drop="api_key",
    ),
    Row("accounts[0].api_key_env", '"MATRIX_UNSET_KEY"', "cannot be combined with api_key"),
    Row("accounts[0].base_url", '"ftp://munsit.example"', "must be an http:// or https:// URL"),
    Row(
        "accounts[0].base_url",
        '"https://me:pa55word-77@munsit.example/api/v1"',
        "must not hold a user name or password",
        hidden="pa55word-77",
    ),
    Row("accounts[0].poll_interval_s", "0", "Input should be greater than 0"),
    Row("accounts[0].idle_poll_interval_s", "-1", "Input should be greater than 0"),
    # [log]
    Row("log.level", '"verbose"', "Input should be 'debug', 'info', 'warning' or 'error'"),
    Row("log.format", '"yaml"', "Input should be 'json', 'console' or 'auto'"),
    # [[subscribers]]
    Row("subscribers[0].accounts", '["eu"]', "no account 'eu' (known: default)"),
    Row("subscribers[0].accounts", "[]", "List should have at least 1 item"),
    Row("subscribers[0].accounts", '["EU"]', "item 0: must be a slug"),
    Row("subscribers[0].id", '"-ops"', "must be a slug"),
    Row("subscribers[0].id", None, "required"),
    Row("subscribers[0].url", '"mailto:ops@example.com"', "must be an http:// or https:// URL"),
    Row("subscribers[0].url", None, "required"),
    Row("subscribers[0].format", '"email"', "Input should be 'standard', 'zapier', 'slack'"),
    Row(
        "subscribers[0].secret",
        f'"{SHORT_SECRET}"',
        "must encode 24-64 bytes, this one encodes 20",
        hidden=SHORT_SECRET,
    ),
    Row(
        "subscribers[0].secret",
        '"sk_live_51Hleaky0secret"',
        "must start with 'whsec_'",
        hidden="sk_live_51Hleaky0secret",
    ),
    Row(
        "subscribers[0].previous_secrets",
        f'["{SHORT_SECRET}"]',
        "item 0 must encode 24-64 bytes",
        hidden=SHORT_SECRET,
    ),
    Row(
        "subscribers[0].previous_secrets",
        f'["{OTHER_SECRET}", "whsec_%%leaky%%"]',
        "item 1 the part after 'whsec_' is not valid base64",
        hidden="whsec_%%leaky%%",
    ),
    Row(
        "subscribers[0].previous_secrets",
        f'"{OTHER_SECRET}"',
        "Input should be a valid list",
        hidden=OTHER_SECRET,
    ),
    Row(
        "subscribers[0].secret",
        f'"{PUBLIC_EXAMPLE_SECRET}"',
        "subscriber 'ops' uses the public example secret of the Standard Webhooks specification",
    ),
    Row(
        "subscribers[0].previous_secrets",
        f'["{OTHER_SECRET}", "{PUBLIC_EXAMPLE_SECRET}"]',
        "item 1 subscriber 'ops' uses the public example secret",
    ),
    Row(
        "subscribers[0].secret_env",
        '"MATRIX_UNSET_SECRET"',
        "environment variable MATRIX_UNSET_SECRET is not set",
        drop="secret",
    ),
    Row("subscribers[0].secret_env", '"MATRIX_UNSET_SECRET"', "cannot be combined with secret"),
    Row("subscribers[0].secret_env", "7", "must be a string", drop="secret"),
    Row(
        "subscribers[0].secret_file",
        '"no-such-secret"',
        "cannot read {dir}/no-such-secret (No such file or directory)",
        drop="secret",
    ),
    Row("subscribers[0].secret_file", '"/etc/hostname"', "cannot be combined with secret"),
    Row(
        "subscribers[0].previous_secrets_env",
        '["MATRIX_UNSET_OLD"]',
        "item 0: environment variable MATRIX_UNSET_OLD is not set",
    ),
    Row(
        "subscribers[0].previous_secrets_env",
        '"MATRIX_OLD"',
        "must be a list of strings",
    ),
    Row(
        "subscribers[0].previous_secrets_file",
        '["/nonexistent/old-secret"]',
        "item 0: cannot read /nonexistent/old-secret (No such file or directory)",
    ),
    Row(
        "subscribers[0].previous_secrets_file",
        f'["/etc/hostname"]\nprevious_secrets = ["{OTHER_SECRET}"]',
        "cannot be combined with previous_secrets",
    ),
    Row("subscribers[0].events", '["denoise.*", "bridge.tested"]', "unknown event type"),
    Row("subscribers[0].events", '"denoise.completed"', "Input should be a valid list"),
    Row("subscribers[0].max_concurrency", "-1", "Input should be greater than or equal to 1"),
    Row("subscribers[0].rate_limit_per_s", "inf", "Input should be a finite number"),
    Row("subscribers[0].rate_limit_per_s", "-2", "Input should be greater than 0"),
    Row("subscribers[0].headers", '{ "X-Ok" = "a\\r\\nb" }', "contains a line break"),
    Row("subscribers[0].headers", '{ "Host" = "evil.example" }', "is set by the bridge"),
    Row("subscribers[0].headers", '{ "X A" = "1" }', "is not a valid header name"),
    Row("subscribers[0].headers", '{ "X-Count" = 1 }', "Input should be a valid string"),
    Row("subscribers[0].enabled", '"sometimes"', "Input should be a valid boolean"),
    # format = "template"
    Row("subscribers[0].format", '"template"', "format 'template' needs template or template_file"),
    Row("subscribers[0].template", '"{{ body | tojson }}"', "only with format 'template'"),
    Row(
        "subscribers[0].template",
        '"{\\"a\\": 1,\\n\\"b\\": {{ event.id "\nformat = "template"',
        "template line 2: unexpected end of template",
    ),
    Row(
        "subscribers[0].template_file",
        '"hook.j2"\ntemplate = "{}"\nformat = "template"',
        "cannot be combined with template",
    ),
    Row(
        "subscribers[0].template_file",
        '"no-such.j2"\nformat = "template"',
        "cannot read {dir}/no-such.j2 (No such file or directory)",
    ),
    Row("subscribers[0].template_file", '"hook.j2"', "only with format 'template'"),
    Row(
        "subscribers[0].content_type",
        '"text/plain\\r\\nX-Injected: 1"\nformat = "template"\ntemplate = "hi"',
        "contains a line break",
    ),
    Row(
        "subscribers[0].content_type",
        '"plain text"\nformat = "template"\ntemplate = "hi"',
        "is not a media type",
    ),
    Row("subscribers[0].content_type", '"text/plain"', "only with format 'template'"),
    Row(
        "subscribers[0].content_type",
        '"text/plain; charset=iso-8859-1"\nformat = "template"\ntemplate = "hi"',
        "charset 'iso-8859-1': bodies are sent as UTF-8",
    ),
]


def problem_lines(err: str) -> list[str]:
    """The `key: reason` lines under `invalid configuration:`."""
    head, _, rest = err.partition("invalid configuration:\n")
    assert head == "munsit-bridge: ", err
    return [line.removeprefix("  ") for line in rest.splitlines()]


def names_key(line: str, key: str) -> bool:
    """`line` is about `key` (or a list item or table entry inside it)."""
    return re.match(rf"{re.escape(key)}(\[\d+\]|\.[\w-]+)?: ", line) is not None


def assert_no_secret(output: str, *extra: str) -> None:
    for secret in (API_KEY, SECRET, OTHER_SECRET, *extra):
        if secret:
            assert secret not in output, f"secret leaked into: {output}"


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


# --- the matrix -----------------------------------------------------------------------------


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf key of `model` as `check` names it; a list of tables is `name[0].key`."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + name
        annotation = field.annotation
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else annotation
            origin = get_origin(annotation)
        if origin is list and _is_model(get_args(annotation)[0]):
            keys |= model_keys(get_args(annotation)[0], f"{path}[0].")
        elif _is_model(annotation):
            keys |= model_keys(annotation, f"{path}.")
        else:
            keys.add(path)
    return keys


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def test_every_key_of_the_model_has_a_bad_value_row() -> None:
    keys = model_keys(Settings)
    # the walk reaches into sections and subscriber tables
    assert {"delivery.timeout_s", "admin.token", "subscribers[0].rate_limit_per_s"} <= keys
    for section in Settings.model_fields:
        assert any(key.startswith((f"{section}.", f"{section}[0].")) for key in keys), section
    covered = {row.key for row in ROWS}
    assert keys - covered == set(), f"keys without a bad-value row: {sorted(keys - covered)}"
    assert covered - keys == set(), f"rows for keys the model lacks: {sorted(covered - keys)}"


def test_the_base_configuration_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """So that every failure below is caused by the one bad key of its row."""
    code, output = check(write(tmp_path, render(base_tables(tmp_path))), capsys)
    assert code == 0, output
    assert "config ok" in output
    assert f"store: {tmp_path / 'state' / 'bridge.db'}" in output


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_value_exits_2_and_names_the_key(
    tmp_path: Path, row: Row, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = check(write(tmp_path, with_row(tmp_path, row)), capsys)
    assert code == 2, output
    lines = problem_lines(output)
    assert lines, output
    # every problem reported is about this key, and one of them says what is wrong with it
    assert all(names_key(line, row.key) for line in lines), lines
    reason = row.reason.format(dir=tmp_path)  # relative paths: beside the config file
    assert any(reason in line for line in lines), lines
    assert_no_secret(output, row.hidden)
    assert not (tmp_path / "state").exists()  # a bad configuration never touches the store


SECTIONS = [name for name, f in Settings.model_fields.items() if _is_model(f.annotation)]


@pytest.mark.parametrize("section", [*SECTIONS, "subscribers[0]", "clients[0]"])
def test_unknown_key_in_every_section_is_named(
    tmp_path: Path, section: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = base_tables(tmp_path)
    tables.setdefault(section, {})["colour"] = '"red"'
    code, output = check(write(tmp_path, render(tables)), capsys)
    assert code == 2, output
    assert problem_lines(output) == [f"{section}.colour: unknown key"]


WRONG_SHAPES = [
    ("upstream", "upstream = 5\n", "upstream: Input should be a valid dictionary"),
    ("delivery", "[[delivery]]\njitter = 0.1\n", "delivery: Input should be a valid dictionary"),
    ("subscribers", 'subscribers = "ops"\n', "subscribers: Input should be a valid list"),
    ("subscribers", "subscribers = [1]\n", "subscribers[0]: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(
    ("name", "text", "message"), WRONG_SHAPES, ids=[w[1] for w in WRONG_SHAPES]
)
def test_wrong_type_for_a_whole_section_is_named(
    tmp_path: Path, name: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = base_tables(tmp_path)
    tables.pop("subscribers[0]")
    tables.pop(name, None)
    # top-level keys go before any table
    code, output = check(write(tmp_path, text + render(tables)), capsys)
    assert code == 2, output
    assert any(line.startswith(message) for line in problem_lines(output)), output
    assert_no_secret(output)


# --- TOML syntax ----------------------------------------------------------------------------

KEY_END_COLUMN = len("api_key = ") + 1 + len(API_KEY) + 1  # after the opening quote and key
SYNTAX = [
    ('[upstream]\napi_key = "k"\npage_size = = 5\n', "Invalid value (at line 3, column 13)"),
    (
        "[upstream]\npage_size = 1\npage_size = 2\n",
        "Cannot overwrite a value (at line 3, column 14)",
    ),
    (  # the unterminated string holds the key: the message points at it, never quotes it
        f'[upstream]\napi_key = "{API_KEY}\n',
        f"Illegal character '\\n' (at line 2, column {KEY_END_COLUMN})",
    ),
    ("[upstream\n", "Expected ']' at the end of a table declaration (at line 1, column 10)"),
]


@pytest.mark.parametrize(("text", "message"), SYNTAX, ids=[s[1] for s in SYNTAX])
def test_toml_syntax_error_names_line_and_column(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    code, output = check(path, capsys)
    assert code == 2, output
    assert problem_lines(output) == [f"{path}: not valid TOML: {message}"]
    assert_no_secret(output)


# --- environment overrides ------------------------------------------------------------------

ENV_ROWS = [
    # (variable, value, key, reason, hidden)
    ("BRIDGE_DELIVERY__TIMEOUT_S", "0", "delivery.timeout_s", "greater than 0", ""),
    ("BRIDGE_UPSTREAM__PAGE_SIZE", "many", "upstream.page_size", "valid integer", ""),
    ("BRIDGE_UPSTREAM__POLL_INTERVAL_S", "inf", "upstream.poll_interval_s", "finite number", ""),
    ("BRIDGE_ADMIN__PORT", "65536", "admin.port", "less than or equal to 65535", ""),
    ("BRIDGE_ADMIN__HOST", "bad host", "admin.host", "must be an IP address or a host name", ""),
    ("BRIDGE_ADMIN__TOKEN", "", "admin.token", "must not be empty", ""),
    (
        "BRIDGE_ADMIN__TOKEN",
        "env-tok-3319x",
        "admin.token",
        "at least 16 characters",
        "env-tok-3319x",
    ),
    (
        "BRIDGE_ADMIN__ALLOWED_HOSTS",
        '["ok.example", "bad host"]',
        "admin.allowed_hosts",
        "item 1: must be a host name",
        "",
    ),
    ("BRIDGE_LOG__LEVEL", "trace", "log.level", "Input should be 'debug'", ""),
    ("BRIDGE_STORE__URL", "mysql://db.example/x", "store.url", "must be sqlite:///", ""),
    ("BRIDGE_UPSTREAM__API_KEY", "  ", "upstream.api_key", "must not be empty", ""),
    (
        "MUNSIT_API_KEY",
        "env-key-7731\nX-Injected: 1",
        "upstream.api_key",
        "must not contain line breaks",
        "env-key-7731",
    ),
    ("bridge_delivery__jitter", "2", "delivery.jitter", "less than 1", ""),
    (
        "BRIDGE_SUBSCRIBERS",
        f'[{{"id": "env-sub", "url": "https://example.com/h", "colour": 1, "secret": "{SECRET}"}}]',
        "subscribers[0].colour",
        "unknown key",
        "",
    ),
    (
        "BRIDGE_SUBSCRIBERS",
        '[{"id": "env-sub", "url": "https://example.com/h", "secret_env": "MATRIX_UNSET"}]',
        "subscribers[0].secret_env",
        "environment variable MATRIX_UNSET is not set",
        "",
    ),
    ("BRIDGE_ADMIN__TOKEN_FILE", "/nonexistent/tok", "admin.token_file", "cannot read", ""),
    (
        "BRIDGE_DELIVERY__RETRY_SCHEDULE_S",
        "[5, -1]",
        "delivery.retry_schedule_s",
        "every delay must be > 0, item 1 is -1",
        "",
    ),
    (
        "BRIDGE_DELIVERY__RETRY_SCHEDULE_S",
        "5, 300",
        "delivery.retry_schedule_s",
        "BRIDGE_DELIVERY__RETRY_SCHEDULE_S is not valid JSON",
        "",
    ),
    (
        "BRIDGE_SUBSCRIBERS",
        f'[{{"id": "env-sub", "url": "https://example.com/h", "secret": "{SHORT_SECRET}"}}]',
        "subscribers[0].secret",
        "must encode 24-64 bytes",
        SHORT_SECRET,
    ),
    (
        "BRIDGE_SUBSCRIBERS",
        f'[{{"id": "env-sub", "secret": "{OTHER_SECRET}"',
        "subscribers",
        "BRIDGE_SUBSCRIBERS is not valid JSON",
        OTHER_SECRET,
    ),
]


@pytest.mark.parametrize(
    ("variable", "value", "key", "reason", "hidden"), ENV_ROWS, ids=[r[0] for r in ENV_ROWS]
)
def test_bad_env_override_exits_2_and_names_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    key: str,
    reason: str,
    hidden: str,
) -> None:
    # the file holds a good value for the key, so the problem is the override
    tables = base_tables(tmp_path)
    tables["delivery"] = {"timeout_s": "15", "jitter": "0.2", "retry_schedule_s": "[5]"}
    path = write(tmp_path, render(tables))
    assert check(path, capsys)[0] == 0
    monkeypatch.setenv(variable, value)
    code, output = check(path, capsys)
    assert code == 2, output
    lines = problem_lines(output)
    assert all(names_key(line, key) for line in lines), lines
    assert any(reason in line for line in lines), lines
    # and the variable the value came from, not only the key
    assert all(variable in line for line in lines), lines
    assert_no_secret(output, hidden)


# --- the real executable --------------------------------------------------------------------


def run_check(*command: str, path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "check", "--config", str(path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_script_exits_2_and_names_the_key(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "munsit-bridge"
    row = Row("subscribers[0].secret", f'"{SHORT_SECRET}"', "must encode 24-64 bytes")
    bad = run_check(str(script), path=write(tmp_path, with_row(tmp_path, row)), env={})
    assert bad.returncode == 2, bad.stderr
    assert "subscribers[0].secret: must encode 24-64 bytes, this one encodes 20" in bad.stderr
    assert_no_secret(bad.stdout + bad.stderr, SHORT_SECRET)
    good = run_check(str(script), path=write(tmp_path, render(base_tables(tmp_path))), env={})
    assert good.returncode == 0, good.stderr
    assert "config ok" in good.stdout


def test_python_m_bridge_exits_2_for_a_bad_env_override(tmp_path: Path) -> None:
    path = write(tmp_path, render(base_tables(tmp_path)))
    result = run_check(
        sys.executable, "-m", "bridge", path=path, env={"BRIDGE_DELIVERY__TIMEOUT_S": "-3"}
    )
    assert result.returncode == 2, result.stderr
    assert "delivery.timeout_s: Input should be greater than 0" in result.stderr
    assert_no_secret(result.stdout + result.stderr)
