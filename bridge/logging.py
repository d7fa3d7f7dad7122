"""structlog set-up: JSON lines when not on a terminal, readable console output on one."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog

from bridge.redact import redact_text

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _json_line(event_dict: Any, default: Callable[[Any], Any] | None = None) -> str:
    """One JSON line, compact (keys in the order they were bound)."""
    return orjson.dumps(event_dict, default=default).decode()


def _redact_errors(_logger: Any, _name: str, event_dict: Any) -> Any:
    """Tracebacks and error texts carry exception messages, which may embed a webhook URL:
    cut every URL in them to scheme, host and port."""
    for key in ("exception", "error", "event"):
        value = event_dict.get(key)
        if isinstance(value, str) and "://" in value:
            event_dict[key] = redact_text(value)
    return event_dict


def _add_replica(replica: str) -> structlog.typing.Processor:
    """Every line says which process wrote it (replicas sharing a store log alike)."""

    def add(_logger: Any, _name: str, event_dict: Any) -> Any:
        event_dict.setdefault("replica", replica)
        return event_dict

    return add


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    cache: bool = False,
    replica: str | None = None,
) -> None:
    """Configure structlog; every line has timestamp, level and event (and `replica`, when
    given). `cache` binds each logger once (faster; for a process that configures logging
    once, as `run` does)."""
    out = stream or sys.stdout
    named: list[structlog.typing.Processor] = [] if replica is None else [_add_replica(replica)]
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        # plain tracebacks: a "pretty" one prints local variables, secrets among them
        structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        if use_console
        else structlog.processors.JSONRenderer(serializer=_json_line)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *named,
            structlog.processors.format_exc_info,
            _redact_errors,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(out, _LEVELS[level], renderer, named)


def _route_stdlib(
    out: TextIO,
    level: int,
    renderer: structlog.typing.Processor,
    named: list[structlog.typing.Processor],
) -> None:
    """What asyncio and aiohttp log through `logging` ("Task exception was never
    retrieved", …) comes out as the same lines, redacted the same way; one handler of ours
    on the root logger, replaced at each `configure` (other handlers are left alone)."""
    global _handler
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *named,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_errors,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))  # libraries: their warnings and errors only
    _handler = handler


_handler: logging.Handler | None = None
