"""Where configuration values come from besides the TOML file: `BRIDGE_*` variables, and
the secrets that `*_env` and `*_file` keys point at. Used by the `bridge.config*` modules only."""

from __future__ import annotations

import difflib
import json
import os
import types
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

ENV_PREFIX = "BRIDGE_"
CONFIG_VARIABLE = "BRIDGE_CONFIG"  # the config file's path, not a key
SOURCE_ERROR = "config_source"  # an error about `ctx["key"]` of the table it is raised in

Loc = tuple[str | int, ...]

# the directory of the config file being loaded; relative `*_file` paths are relative to it
config_dir: ContextVar[Path | None] = ContextVar("bridge_config_dir", default=None)


def base_dir() -> Path:
    """The config file's directory, else the working directory."""
    return config_dir.get() or Path.cwd()


# --- BRIDGE_* variables -------------------------------------------------------------------


@dataclass
class EnvValues:
    """What the environment sets: `data` shaped like the file, the variable behind each key
    path, variables that name no key, and variables whose JSON does not parse."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[Loc, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _unwrap(annotation: Any) -> Any:
    """`X | None` → `X`."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_json(annotation: Any) -> bool:
    """Lists, tables and whole sections are given as JSON."""
    return get_origin(annotation) in (list, dict) or _is_model(annotation)


def _target(model: type[BaseModel], parts: list[str]) -> Any | None:
    """The annotation of the key `parts` names in `model`, None when there is no such key."""
    annotation: Any = model
    for part in parts:
        annotation = _unwrap(annotation)
        fields = annotation.model_fields if _is_model(annotation) else {}
        if part not in fields:
            return None
        annotation = fields[part].annotation
    return _unwrap(annotation)


def variable_names(model: type[BaseModel]) -> dict[str, str]:
    """Every variable that names a key, upper case → the key path."""
    names = {}
    for section, info in model.model_fields.items():
        names[f"{ENV_PREFIX}{section}".upper()] = section
        inner = _unwrap(info.annotation)
        if _is_model(inner):
            for key in inner.model_fields:
                names[f"{ENV_PREFIX}{section}__{key}".upper()] = f"{section}.{key}"
    return names


def read_env(model: type[BaseModel], environ: Mapping[str, str]) -> EnvValues:
    """Map `BRIDGE_<SECTION>[__<KEY>]` variables (any case) onto `model`'s keys."""
    found = EnvValues()
    matched = []
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_VARIABLE:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        annotation = _target(model, parts) if all(parts) else None
        if annotation is None:
            found.unknown.append(name)
        else:
            matched.append((len(parts), name, parts, annotation))
    for _, name, parts, annotation in sorted(matched):  # sections before keys inside them
        value: Any = environ[name]
        if _is_json(annotation):
            try:
                value = json.loads(value)
            except ValueError:
                found.problems.append(
                    f"{'.'.join(parts)}: {name} is not valid JSON (lists and tables are JSON here)"
                )
                continue
        container = found.data
        for part in parts[:-1]:
            container = container.setdefault(part, {})
            if not isinstance(container, dict):
                break  # the section's own variable is not a table: that is the error shown
        else:
            container[parts[-1]] = value
            found.origins[tuple(parts)] = name
            if isinstance(value, dict) and _is_model(annotation):
                found.origins.update({(*parts, key): name for key in value})
    return found


def unknown_variable(name: str, model: type[BaseModel]) -> str:
    """`NAME: no such setting (…)` with the nearest real variable, if one is near."""
    known = variable_names(model)
    upper = name.upper()
    for variable, key in known.items():
        if (
            "." not in key
            and upper.startswith(f"{variable}__")
            and not _is_model(_target(model, [key]))
        ):
            return f"{name}: no such setting ({key} is set whole: {variable} as JSON)"
    # compared without the common prefix, which would make every name look alike
    bare = {n[len(ENV_PREFIX) :]: n for n in known}
    near = difflib.get_close_matches(upper[len(ENV_PREFIX) :], list(bare), n=1, cutoff=0.8)
    if near:
        variable = bare[near[0]]
        return f"{name}: no such setting ({known[variable]}? that is {variable})"
    section, _, key = upper[len(ENV_PREFIX) :].lower().partition("__")
    if key and _is_model(_target(model, [section])):
        return f"{name}: no such setting ({section} has no key {key!r})"
    return (
        f"{name}: no such setting (variables are {ENV_PREFIX}<SECTION>__<KEY>, "
        f"e.g. {ENV_PREFIX}UPSTREAM__POLL_INTERVAL_S; {CONFIG_VARIABLE} is the file's path)"
    )


def origin_of(loc: Loc, origins: Mapping[Loc, str]) -> str | None:
    """The variable that set the value at `loc` (or a table around it)."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return None


def referenced_variables(data: Mapping[str, Any]) -> set[str]:
    """Variables the configuration names as secret sources (`secret_env` and the like)."""
    names: set[str] = set()
    subscribers = data.get("subscribers")
    for sub in subscribers if isinstance(subscribers, list) else []:
        if not isinstance(sub, dict):
            continue
        if isinstance(sub.get("secret_env"), str):
            names.add(sub["secret_env"])
        previous = sub.get("previous_secrets_env")
        if isinstance(previous, list):
            names.update(p for p in previous if isinstance(p, str))
    return names


# --- secrets from variables and files -----------------------------------------------------


def source_error(key: str, reason: str) -> PydanticCustomError:
    """An error about the sibling key `key` of the table being validated."""
    return PydanticCustomError(SOURCE_ERROR, "{key}: {reason}", {"key": key, "reason": reason})


def _given(value: Any) -> bool:
    return value is not None and value != []


def _read(source: str, ref: str) -> tuple[str, str]:
    """The secret `ref` points at and how to name where it came from."""
    if source.endswith("_env"):
        if not ref:
            raise ValueError("must name an environment variable")
        value = os.environ.get(ref)
        if value is None:
            raise ValueError(f"environment variable {ref} is not set")
        return value, f"value of {ref}"
    path = Path(ref) if Path(ref).is_absolute() else base_dir() / ref
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    return text.rstrip("\r\n"), f"content of {path}"


def take_secret(
    data: Any,
    key: str,
    sources: tuple[str, ...],
    check: Callable[[str], object],
    *,
    many: bool = False,
) -> Any:
    """Put the secret that one of `sources` (`*_env`, `*_file`) points at under `key`.

    At most one of `key` and `sources` may be given; with `many` they are lists. Values read
    are checked here, so an error names the key the user wrote and where the value came
    from, never the value."""
    if not isinstance(data, dict):
        return data
    given = [k for k in (key, *sources) if _given(data.get(k))]
    if len(given) > 1:
        raise source_error(
            given[1], f"cannot be combined with {given[0]}: give each secret one source"
        )
    if not given or given[0] == key:
        return data
    source = given[0]
    refs = data[source]
    if many != isinstance(refs, list) or not all(
        isinstance(r, str) for r in (refs if many else [refs])
    ):
        raise source_error(source, "must be a list of strings" if many else "must be a string")
    values = []
    for i, ref in enumerate(refs if many else [refs]):
        item = f"item {i}: " if many else ""
        try:
            value, where = _read(source, ref)
        except ValueError as exc:
            raise source_error(source, f"{item}{exc}") from None
        try:
            check(value)
        except ValueError as exc:
            raise source_error(source, f"{item}{exc} ({where})") from None
        values.append(value)
    return {**data, key: values if many else values[0]}
