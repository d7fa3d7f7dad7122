"""A `[[subscribers]]` table: one webhook endpoint, its secrets and what it receives."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.config_checks import Section, http_url, signing_secret, slug
from bridge.config_sources import base_dir, source_error, take_secret
from bridge.deliver.templates.sandbox import JSON_TYPE, TemplateError, compiled
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
_CHARSET = re.compile(r";\s*charset\s*=\s*([^;\s]+)", re.I)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf'^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|"[^"\\]*"))*$')

Format = Literal["standard", "zapier", "slack", "discord", "teams", "template"]
TEMPLATE_KEYS = ("template", "template_file", "content_type")  # format template's own


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
    accounts: list[str] | None = Field(None, min_length=1)  # None: every account's events
    template: str | None = None  # format template: the Jinja2 template itself...
    template_file: str | None = None  # ...or its file (relative: to the config file's dir)
    content_type: str | None = None  # format template: the body's media type
    _template_source: str | None = PrivateAttr(None)

    @property
    def template_source(self) -> str | None:
        """The template's text (from `template` or `template_file`), checked to compile."""
        return self._template_source

    @property
    def media_type(self) -> str:
        """The `content-type` of this subscriber's requests."""
        return self.content_type or JSON_TYPE

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

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for i, account in enumerate(value):
                try:
                    slug(account)
                except ValueError as exc:
                    raise ValueError(f"item {i}: {exc}") from None
        return value

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str | None) -> str | None:
        if value is not None:
            if "\r" in value or "\n" in value:
                raise ValueError("contains a line break")
            if not _MEDIA_TYPE.match(value.strip()):
                raise ValueError(
                    f"{value!r} is not a media type (like 'text/plain' or "
                    "'application/json; charset=utf-8')"
                )
            charset = _CHARSET.search(value)
            if charset and charset.group(1).strip("\"'").lower() not in ("utf-8", "utf8"):
                raise ValueError(
                    f"charset {charset.group(1)!r}: bodies are sent as UTF-8 (give charset=utf-8"
                    " or none)"
                )
        return None if value is None else value.strip()

    @model_validator(mode="after")
    def _template_keys(self) -> SubscriberConfig:
        """Format template takes `template` or `template_file` (exactly one), compiled here so
        that a syntax error names its key and line; other formats take neither."""
        given = [k for k in TEMPLATE_KEYS if getattr(self, k) is not None]
        if self.format != "template":
            if given:
                raise source_error(given[0], f"only with format 'template', not {self.format!r}")
            return self
        if self.template is not None and self.template_file is not None:
            raise source_error("template_file", "cannot be combined with template: give one")
        if self.template is None and self.template_file is None:
            raise source_error("format", "format 'template' needs template or template_file")
        key, source = "template", self.template
        if self.template_file is not None:
            key, source = "template_file", _read_template(self.template_file)
        assert source is not None
        try:
            compiled(source)
        except TemplateError as exc:
            raise source_error(key, str(exc)) from None
        self._template_source = source
        return self

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


def _read_template(ref: str) -> str:
    path = Path(ref) if Path(ref).is_absolute() else base_dir() / ref
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = f"cannot read {path} ({exc.strerror or exc})"
    except UnicodeDecodeError:
        reason = f"{path} is not UTF-8 text"
    raise source_error("template_file", reason)
