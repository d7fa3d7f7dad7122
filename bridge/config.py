"""Configuration: TOML file, then `BRIDGE_<SECTION>__<KEY>` env, then `MUNSIT_API_KEY`.

The only module that reads the environment or configuration files.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import json
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bridge.errors import ConfigError
from bridge.models import EVENT_TYPES
from bridge.redact import redact_url

DEFAULT_CONFIG_PATH = "bridge.toml"
DEFAULT_EVENTS = ["denoise.completed", "denoise.failed"]
MIN_TOKEN_CHARS = 16
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "transfer-encoding",
    }
)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_file_data: ContextVar[dict[str, Any] | None] = ContextVar("bridge_config_file", default=None)

Format = Literal["standard", "zapier", "slack", "discord", "teams"]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    # the value is never echoed whole: a webhook URL's path or query is its credential
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"must be an http:// or https:// URL with a host, got {redact_url(value)!r}"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port: {redact_url(value)!r}") from None
    return value


def _shown(value: str) -> str:
    """A value as an error may quote it: a URL without its user-info, path or query."""
    return redact_url(value) if "://" in value else value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _header_token(value: SecretStr) -> SecretStr:
    """A credential sent in a request header: not blank, no control characters."""
    text = value.get_secret_value()
    if not text.strip():
        raise ValueError("must not be empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("must not contain line breaks or other control characters")
    return value


def _listen_host(value: str) -> str:
    """An IP address or a DNS host name to listen on."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(f"must be an IP address or a host name, got {value!r}") from None
    return value


def check_secret(value: str) -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 to 64 bytes."""
    if not value.startswith("whsec_"):
        raise ValueError("must start with 'whsec_' followed by base64 of 24-64 random bytes")
    try:
        raw = base64.b64decode(value[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the part after 'whsec_' is not valid base64") from exc
    if not 24 <= len(raw) <= 64:
        raise ValueError(f"must encode 24-64 bytes, this one encodes {len(raw)}")
    return value


class _Section(BaseModel):
    # TOML and JSON both spell inf and nan: no period, timeout or rate may be either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UpstreamConfig(_Section):
    base_url: str = "https://api.munsit.com/api/v1"
    api_key: SecretStr
    page_size: int = Field(50, ge=1, le=1000)
    poll_interval_s: float = Field(5.0, gt=0)
    idle_poll_interval_s: float = Field(30.0, gt=0)
    request_timeout_s: float = Field(15.0, gt=0)
    progress_stream: bool = True
    max_progress_streams: int = Field(50, ge=1)
    full_scan_interval_s: float = Field(86400.0, ge=0)
    max_pages_per_scan: int = Field(200, ge=3)
    backfill: bool = False
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=4096)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _http_url(value).rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr) -> SecretStr:
        return _header_token(value)


class StoreConfig(_Section):
    url: str = "sqlite:///data/bridge.db"
    retention_days: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            raise ValueError(
                "must be sqlite:///relative/path or sqlite:////absolute/path, "
                f"got {_shown(value)!r}"
            )
        return value

    def sqlite_path(self, cwd: Path | None = None) -> Path:
        """The database file; relative paths are relative to the working directory."""
        path = Path(self.url[len("sqlite:///") :])
        return path if path.is_absolute() else (cwd or Path.cwd()) / path


class DeliveryConfig(_Section):
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        max_length=50,
    )
    jitter: float = Field(0.2, ge=0, lt=1)
    timeout_s: float = Field(15.0, gt=0)
    max_in_flight: int = Field(100, ge=1)
    disable_after_s: float = Field(432000.0, gt=0)
    allow_private_destinations: bool = False

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        for i, delay in enumerate(value):
            if delay <= 0:
                raise ValueError(f"every delay must be > 0, item {i} is {delay}")
        return value


class AdminConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _listen_host(value)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty or short token would be guessed
        if value is None:
            return None
        _header_token(value)
        if len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        for i, host in enumerate(value):
            try:
                _listen_host(host)
            except ValueError:
                raise ValueError(f"item {i}: must be a host name or IP address") from None
        return [h.lower().removesuffix(".") for h in value]

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminConfig:
        if self.enabled and self.token is None and not _is_loopback(self.host):
            raise ValueError(f"admin.token: required when admin.host ({self.host}) is not loopback")
        return self


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


class SubscriberConfig(_Section):
    id: str
    url: str
    format: Format = "standard"
    secret: SecretStr | None = Field(None, validate_default=True)
    previous_secrets: list[SecretStr] = Field(default_factory=list)
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)
    max_concurrency: int = Field(4, ge=1)
    rate_limit_per_s: float | None = Field(None, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True

    @property
    def rate_per_s(self) -> float | None:
        """`rate_limit_per_s`, or 1/s for Slack, which throttles incoming webhooks at that."""
        if self.rate_limit_per_s is None and self.format == "slack":
            return 1.0
        return self.rate_limit_per_s

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError(
                "must be a slug (lower-case letters, digits, '-' or '_', at most 64), "
                f"got {value!r}"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        fmt = info.data.get("format", "standard")
        if value is None:
            if fmt in ("standard", "zapier"):
                raise ValueError(f"required for format {fmt!r}")
            return None
        check_secret(value.get_secret_value())
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _previous(cls, value: list[SecretStr]) -> list[SecretStr]:
        for i, secret in enumerate(value):
            try:
                check_secret(secret.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"item {i} {exc}") from None
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not any(fnmatch.fnmatchcase(t, pattern) for t in EVENT_TYPES):
                raise ValueError(
                    f"unknown event type {pattern!r} (known: {', '.join(EVENT_TYPES)}; "
                    "globs like 'denoise.*' are allowed)"
                )
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the bridge and cannot be overridden")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"value of {name!r} contains a line break")
        return value


class Settings(BaseSettings):
    """The whole configuration (CONTRACT §2)."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    upstream: UpstreamConfig = Field(default_factory=dict, validate_default=True)
    store: StoreConfig = StoreConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    subscribers: list[SubscriberConfig] = Field(default_factory=list)

    @field_validator("subscribers")
    @classmethod
    def _unique_ids(cls, value: list[SubscriberConfig]) -> list[SubscriberConfig]:
        seen: set[str] = set()
        for i, sub in enumerate(value):
            if sub.id in seen:
                raise ValueError(f"subscribers[{i}].id: duplicate id {sub.id!r}")
            seen.add(sub.id)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        api_key = os.environ.get("MUNSIT_API_KEY")
        munsit = {"upstream": {"api_key": api_key}} if api_key else {}
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, munsit),
            InitSettingsSource(settings_cls, _file_data.get() or {}),
        )


def resolve_path(explicit: str | None) -> Path:
    """`--config`, else `BRIDGE_CONFIG`, else `./bridge.toml`."""
    return Path(explicit or os.environ.get("BRIDGE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read, merge and validate; any problem raises `ConfigError` naming each bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    token = _file_data.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None
    except SettingsError as exc:  # a BRIDGE_ variable of a list or table that is not JSON
        raise ConfigError(_env_json_problems() or [str(exc)]) from None
    finally:
        _file_data.reset(token)


def _env_json_problems() -> list[str]:
    """`key: reason` for each `BRIDGE_` variable of a list, table or section that is not JSON
    (the value is never shown: it may hold secrets)."""
    problems = []
    for name, value in sorted(os.environ.items()):
        section, *keys = name.lower().removeprefix("bridge_").split("__")
        if not name.upper().startswith("BRIDGE_") or section not in Settings.model_fields:
            continue
        annotation = Settings.model_fields[section].annotation
        for key in keys:
            fields = getattr(annotation, "model_fields", {})
            annotation = fields[key].annotation if key in fields else None
        if not (get_origin(annotation) in (list, dict) or hasattr(annotation, "model_fields")):
            continue
        try:
            json.loads(value)
        except ValueError:
            path = ".".join([section, *keys])
            problems.append(f"{path}: {name} is not valid JSON (lists and tables are JSON here)")
    return problems


def format_errors(exc: ValidationError) -> list[str]:
    """One `key.path: reason` line per problem, with list items as `[i]`."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        key = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in err["loc"]
        ).lstrip(".")
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required" + (" (or set MUNSIT_API_KEY)" if key == "upstream.api_key" else "")
        if key and msg.startswith(key.split(".")[0]) and ":" in msg:
            lines.append(msg)
        else:
            lines.append(f"{key}: {msg}" if key else msg)
    return lines
