"""Configuration: TOML file, then `MUNSIT_API_KEY`, then `BRIDGE_<SECTION>__<KEY>` env.

With `config_sources` (variables, secret files) the only place that reads the environment
or configuration files.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bridge.config_accounts import AccountConfig, check_accounts, check_names
from bridge.config_checks import (
    PUBLIC_EXAMPLE_SECRET,
    Section,
    admin_token,
    api_root,
    check_secret,
    header_token,
    is_loopback,
    listen_host,
)
from bridge.config_gateway import ClientConfig, GatewayConfig
from bridge.config_sources import (
    SOURCE_ERROR,
    Loc,
    config_dir,
    origin_of,
    read_env,
    referenced_variables,
    take_secret,
    unknown_variable,
)
from bridge.config_store import (
    default_replica_id,
    is_postgres_url,
    replica_name,
    shown_store_url,
    store_url,
)
from bridge.config_subscriber import SubscriberConfig
from bridge.errors import ConfigError
from bridge.models import DEFAULT_ACCOUNT

__all__ = [
    "PUBLIC_EXAMPLE_SECRET",
    "AdminConfig",
    "DeliveryConfig",
    "LogConfig",
    "Settings",
    "StoreConfig",
    "SubscriberConfig",
    "UpstreamConfig",
    "check_secret",
    "load_settings",
    "resolve_path",
]

DEFAULT_CONFIG_PATH = "bridge.toml"
_file_data: ContextVar[dict[str, Any] | None] = ContextVar("bridge_config_file", default=None)
_env_data: ContextVar[dict[str, Any] | None] = ContextVar("bridge_config_env", default=None)
_config_file: ContextVar[Path | None] = ContextVar("bridge_config_path", default=None)


class UpstreamConfig(Section):
    base_url: str = "https://api.munsit.com/api/v1"
    api_key: SecretStr | None = None  # required without [[accounts]]
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
        return api_root(value)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else header_token(value)


class StoreConfig(Section):
    url: str = "sqlite:///data/bridge.db"
    retention_days: float = Field(30.0, gt=0)
    leader_lease_s: float = Field(15.0, ge=0.3, le=3600)
    replica_id: str = Field(default_factory=default_replica_id, min_length=1, max_length=128)
    # where a relative path starts: the config file's directory (set by `Settings`)
    _base_dir: Path | None = PrivateAttr(None)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return store_url(value)

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, value: str) -> str:
        return replica_name(value)

    @property
    def is_postgres(self) -> bool:
        return is_postgres_url(self.url)

    def shown(self) -> str:
        """The store as logs and messages show it: the file, or the server without its
        user-info, password or parameters."""
        return shown_store_url(self.url) if self.is_postgres else str(self.sqlite_path())

    def sqlite_path(self) -> Path:
        """The database file, absolute: a relative path is relative to the config file's
        directory, or to the working directory when no file was read."""
        path = Path(self.url[len("sqlite:///") :])
        return path if path.is_absolute() else (self._base_dir or Path.cwd()) / path


class DeliveryConfig(Section):
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


class AdminConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    feed_tokens: list[SecretStr] = Field(default_factory=list)  # read-only: feed and stream

    @model_validator(mode="before")
    @classmethod
    def _token_source(cls, data: Any) -> Any:
        return take_secret(data, "token", ("token_file",), lambda v: admin_token(SecretStr(v)))

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return listen_host(value)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty or short token would be guessed
        return None if value is None else admin_token(value)

    @field_validator("feed_tokens")
    @classmethod
    def _feed_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        for i, token in enumerate(value):
            try:
                admin_token(token)
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        for i, host in enumerate(value):
            try:
                listen_host(host)
            except ValueError:
                raise ValueError(f"item {i}: must be a host name or IP address") from None
        return [h.lower().removesuffix(".") for h in value]

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminConfig:
        if self.enabled and self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"admin.token: required when admin.host ({self.host}) is not loopback "
                "(or give admin.token_file)"
            )
        return self


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


class Settings(BaseSettings):
    """The whole configuration (CONTRACT §2)."""

    # the environment is read by `load_settings` (config_sources.read_env), not by pydantic
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    upstream: UpstreamConfig = Field(default_factory=dict, validate_default=True)
    store: StoreConfig = Field(default_factory=StoreConfig)
    delivery: DeliveryConfig = DeliveryConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    gateway: GatewayConfig = GatewayConfig()
    clients: list[ClientConfig] = Field(default_factory=list)
    accounts: list[AccountConfig] = Field(default_factory=list)
    subscribers: list[SubscriberConfig] = Field(default_factory=list)
    _config_path: Path | None = PrivateAttr(None)

    @property
    def config_path(self) -> Path | None:
        """The absolute path of the file this configuration was read from; None without one."""
        return self._config_path

    @model_validator(mode="after")
    def _remember_the_file(self) -> Settings:
        self._config_path = _config_file.get()
        self.store._base_dir = self._config_path.parent if self._config_path else None
        return self

    @field_validator("subscribers")
    @classmethod
    def _unique_ids(cls, value: list[SubscriberConfig]) -> list[SubscriberConfig]:
        seen: set[str] = set()
        for i, sub in enumerate(value):
            if sub.id in seen:
                raise ValueError(f"subscribers[{i}].id: duplicate id {sub.id!r}")
            seen.add(sub.id)
        return value

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, value: list[ClientConfig]) -> list[ClientConfig]:
        ids: set[str] = set()
        tokens: set[str] = set()
        for i, client in enumerate(value):
            if client.id in ids:
                raise ValueError(f"clients[{i}].id: duplicate id {client.id!r}")
            if client.token.get_secret_value() in tokens:
                raise ValueError(f"clients[{i}].token: the same token as another client's")
            ids.add(client.id)
            tokens.add(client.token.get_secret_value())
        return value

    @model_validator(mode="after")
    def _accounts(self) -> Settings:
        if not self.accounts and self.upstream.api_key is None:
            raise ValueError("upstream.api_key: required (or set MUNSIT_API_KEY)")
        check_accounts(self.accounts, self.upstream.api_key)
        known = self.account_ids
        for i, sub in enumerate(self.subscribers):
            check_names(f"subscribers[{i}].accounts", sub.accounts or (), known)
        for i, client in enumerate(self.clients):
            if client.account is not None:
                check_names(f"clients[{i}].account", [client.account], known)
            elif len(known) > 1:
                raise ValueError(
                    f"clients[{i}].account: required with several accounts (known:"
                    f" {', '.join(known)})"
                )
        return self

    @property
    def account_ids(self) -> list[str]:
        """The Munsit accounts polled, in the order configured (`default` without any)."""
        return [a.id for a in self.accounts] or [DEFAULT_ACCOUNT]

    def account_upstreams(self) -> dict[str, UpstreamConfig]:
        """Each account's upstream settings: `[upstream]` with the account's own key, URL
        and intervals where it gives them."""
        if not self.accounts:
            return {DEFAULT_ACCOUNT: self.upstream}
        out = {}
        for account in self.accounts:
            update: dict[str, Any] = {"api_key": account.api_key or self.upstream.api_key}
            for name in ("base_url", "poll_interval_s", "idle_poll_interval_s"):
                if (value := getattr(account, name)) is not None:
                    update[name] = value
            out[account.id] = self.upstream.model_copy(update=update)
        return out

    def account_key(self, account: str) -> SecretStr:
        """`account`'s API key (validation made sure every account has one)."""
        key = self.account_upstreams()[account].api_key
        if key is None:
            raise ConfigError([f"account {account!r} has no API key"])
        return key

    def client_account(self, client: ClientConfig) -> str:
        """The account a gateway client's submissions use."""
        return client.account or self.account_ids[0]

    @model_validator(mode="after")
    def _gateway_clients(self) -> Settings:
        if self.gateway.enabled and not self.clients:
            raise ValueError(
                "gateway.enabled: the gateway needs at least one [[clients]] table "
                "(id, token, secret) to answer anyone"
            )
        admin = {t.get_secret_value() for t in self.admin.feed_tokens}
        if self.admin.token is not None:
            admin.add(self.admin.token.get_secret_value())
        for i, client in enumerate(self.clients):
            if client.token.get_secret_value() in admin:
                raise ValueError(f"clients[{i}].token: the same as an admin or feed token")
        return self

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
            InitSettingsSource(settings_cls, _env_data.get() or {}),
            InitSettingsSource(settings_cls, munsit),
            InitSettingsSource(settings_cls, _file_data.get() or {}),
        )


def resolve_path(explicit: str | None) -> Path:
    """`--config`, else `BRIDGE_CONFIG`, else `./bridge.toml`."""
    return Path(explicit or os.environ.get("BRIDGE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read, merge and validate; any problem raises `ConfigError` naming each bad key, and
    the variable when the value came from the environment."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(os.path.abspath(path))  # symbolic links kept: a mounted file's own place
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    env = read_env(Settings, os.environ)
    referenced = referenced_variables({**data, **env.data})
    problems = [unknown_variable(n, Settings) for n in sorted(env.unknown) if n not in referenced]
    problems += env.problems
    if "MUNSIT_API_KEY" in os.environ:
        env.origins.setdefault(("upstream", "api_key"), "MUNSIT_API_KEY")
    file_token, env_token = _file_data.set(data), _env_data.set(env.data)
    path_token, dir_token = _config_file.set(path), config_dir.set(path and path.parent)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(problems + format_errors(exc, env.origins)) from None
    finally:
        config_dir.reset(dir_token)
        _config_file.reset(path_token)
        _env_data.reset(env_token)
        _file_data.reset(file_token)
    if problems:
        raise ConfigError(problems)
    return settings


def format_errors(exc: ValidationError, origins: dict[Loc, str] | None = None) -> list[str]:
    """One `key.path: reason` line per problem, with list items as `[i]`; a value set by an
    environment variable says which."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == SOURCE_ERROR:
            ctx = err.get("ctx") or {}
            loc, msg = (*loc, str(ctx["key"])), str(ctx["reason"])
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        key = key.lstrip(".")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required" + (" (or set MUNSIT_API_KEY)" if key == "upstream.api_key" else "")
        variable = origin_of(loc, origins or {}) if err["type"] != "missing" else None
        if variable:
            msg += f" (from {variable})"
        if key and msg.startswith(key.split(".")[0]) and ":" in msg:
            lines.append(msg)
        else:
            lines.append(f"{key}: {msg}" if key else msg)
    return lines
