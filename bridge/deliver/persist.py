"""The delivery side's store writes, retried a few times on a transient `StoreError` (short
waits on the injected clock) instead of being dropped: an attempt that went out is recorded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from bridge.clock import Clock
from bridge.errors import StoreError
from bridge.redact import describe

log = structlog.get_logger("bridge.deliver")

T = TypeVar("T")

WRITE_RETRY_S = (0.1, 0.5, 2.0)  # waits between tries: all within a lease's recording share


async def retried(
    clock: Clock, write: Callable[[], Awaitable[T]], *, what: str, **fields: object
) -> T | None:
    """`write()`, tried again after each of `WRITE_RETRY_S` while it raises `StoreError`;
    None when the last try fails too (an error line with its traceback). `what` names the
    write in the log lines."""
    for wait_s in (*WRITE_RETRY_S, None):
        try:
            return await write()
        except StoreError as exc:
            if wait_s is None:
                log.error("store write failed for good", write=what, exc_info=True, **fields)
                return None
            log.warning(
                "store write failed, trying again",
                write=what,
                error=describe(exc),
                retry_in_s=wait_s,
                **fields,
            )
        await clock.sleep(wait_s)
    raise AssertionError("unreachable")  # pragma: no cover
