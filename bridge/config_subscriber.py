"""A `[[subscribers]]` table: one webhook endpoint, its secrets and what it receives."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from bridge.config_checks import Section, http_url, signing_secret, slug
from bridge.config_sources import take_secret
from bridge.models import EVENT_TYPES

DEFAULT_EVENTS = ["denoise.completed", "denoise.failed"]
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
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

Format = Literal["standard", "zapier", "slack", "discord", "teams"]


class SubscriberConfig(Section):
    id: str
    url: str
    format: Format = "standard"
    secret_env: str | None = None
    secret_file: str | None = None
    secret: SecretStr | None = Field(None, validate_default=True)
    previous_secrets_env: list[str] = Field(default_factory=list)
    previous_secrets_file: list[str] = Field(default_factory=list)
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

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        """`secret_env`/`secret_file` and the `previous_secrets_` lists, read once here."""
        sub_id = data.get("id") if isinstance(data, dict) else None
        data = take_secret(
            data, "secret", ("secret_env", "secret_file"), lambda v: signing_secret(v, sub_id)
        )
        return take_secret(
            data,
            "previous_secrets",
            ("previous_secrets_env", "previous_secrets_file"),
            lambda v: signing_secret(v, sub_id),
            many=True,
        )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return slug(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        fmt = info.data.get("format", "standard")
        if value is None:
            if fmt in ("standard", "zapier"):
                raise ValueError(f"required for format {fmt!r}")
            return None
        signing_secret(value.get_secret_value(), info.data.get("id", "?"))
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _previous(cls, value: list[SecretStr], info: ValidationInfo) -> list[SecretStr]:
        for i, secret in enumerate(value):
            try:
                signing_secret(secret.get_secret_value(), info.data.get("id", "?"))
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
