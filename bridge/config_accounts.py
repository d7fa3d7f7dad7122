"""`[[accounts]]`: several Munsit accounts polled by one bridge, each with its own key.

Without any, `[upstream]` is the one account `default`. With some, `[upstream]` holds what
they share and their defaults (page size, intervals, streams, and a key for an account that
gives none)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from bridge.config_checks import Section, api_root, header_token, slug
from bridge.config_sources import take_secret


class AccountConfig(Section):
    id: str
    api_key_env: str | None = None
    api_key: SecretStr | None = Field(None, validate_default=True)
    base_url: str | None = None  # default: upstream.base_url
    poll_interval_s: float | None = Field(None, gt=0)  # default: upstream.poll_interval_s
    idle_poll_interval_s: float | None = Field(None, gt=0)  # default: upstream.idle_…

    @model_validator(mode="before")
    @classmethod
    def _key_source(cls, data: Any) -> Any:
        return take_secret(data, "api_key", ("api_key_env",), lambda v: header_token(SecretStr(v)))

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return slug(value)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else header_token(value)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else api_root(value)


def check_accounts(accounts: Sequence[AccountConfig], fallback_key: SecretStr | None) -> None:
    """Ids unique; every account has a key (its own or `upstream.api_key`), and no two the
    same one: the same Munsit account polled twice would announce every job twice."""
    ids: set[str] = set()
    keys: dict[str, str] = {}
    for i, account in enumerate(accounts):
        if account.id in ids:
            raise ValueError(f"accounts[{i}].id: duplicate id {account.id!r}")
        ids.add(account.id)
        key = account.api_key or fallback_key
        if key is None:
            raise ValueError(
                f"accounts[{i}].api_key: required (or api_key_env, or upstream.api_key for"
                " every account that gives none)"
            )
        if (other := keys.get(key.get_secret_value())) is not None:
            raise ValueError(
                f"accounts[{i}].api_key: the same key as account {other!r}: one Munsit account"
                " polled twice would announce every job twice"
            )
        keys[key.get_secret_value()] = account.id


def check_names(where: str, names: Sequence[str], known: Sequence[str]) -> None:
    """Each of `names` is a configured account."""
    for name in names:
        if name not in known:
            raise ValueError(f"{where}: no account {name!r} (known: {', '.join(known)})")
