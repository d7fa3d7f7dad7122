"""`[gateway]` (the submit-through listener) and `[[clients]]` (who may submit through it,
and the secret that signs their callbacks)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from bridge.config_checks import Section, admin_token, listen_host, signing_secret, slug
from bridge.config_sources import take_secret
from bridge.models import COMPLETED, CREATED, FAILED_EVENT, PROGRESS

MIB = 1024 * 1024
_HOST_GLOB = re.compile(r"^[a-z0-9*?.\-\[\]:]{1,253}$")
DEFAULT_CALLBACK_EVENTS = (COMPLETED, FAILED_EVENT)
CALLBACK_EVENTS = frozenset({CREATED, COMPLETED, FAILED_EVENT, PROGRESS})


class GatewayConfig(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    max_upload_bytes: int = Field(200 * MIB, ge=1)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return listen_host(value)


class ClientConfig(Section):
    """A caller of the gateway: its token (sent as `x-api-key` or `Authorization: Bearer`),
    the secret that signs its callbacks, and where its callbacks may go."""

    id: str
    token_env: str | None = None
    token_file: str | None = None
    token: SecretStr = Field(validate_default=True)
    secret_env: str | None = None
    secret_file: str | None = None
    secret: SecretStr = Field(validate_default=True)
    allowed_callback_hosts: list[str] = Field(default_factory=list)
    account: str | None = None  # which Munsit account its submissions use (the only one)

    @model_validator(mode="before")
    @classmethod
    def _sources(cls, data: Any) -> Any:
        client_id = data.get("id") if isinstance(data, dict) else None
        data = take_secret(
            data, "token", ("token_env", "token_file"), lambda v: admin_token(SecretStr(v))
        )
        return take_secret(
            data,
            "secret",
            ("secret_env", "secret_file"),
            lambda v: signing_secret(v, client_id, "client"),
        )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return slug(value)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        return admin_token(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        signing_secret(value.get_secret_value(), info.data.get("id", "?"), "client")
        return value

    @field_validator("allowed_callback_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for i, glob in enumerate(value):
            host = glob.strip().lower().removesuffix(".")
            if not _HOST_GLOB.match(host):
                raise ValueError(
                    f"item {i}: {glob!r} is not a host name or a glob like '*.example.com'"
                )
            out.append(host)
        return out
