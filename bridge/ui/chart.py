"""Deliveries per minute over the last hour by outcome, as an inline SVG bar chart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MINUTES = 60
WIDTH, HEIGHT = 600, 120
BAR = WIDTH / MINUTES


@dataclass(frozen=True)
class Bar:
    x: float
    ok_y: float
    ok_h: float
    fail_y: float
    fail_h: float
    minute: int  # minutes ago
    ok: int
    failed: int


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    ok_total: int
    failed_total: int
    peak: int
    width: int = WIDTH
    height: int = HEIGHT
    bar_width: float = BAR - 1


Attempt = tuple[float, int | None]  # when (unix seconds), the status code (None: no answer)


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def attempts_of(deliveries: Iterable[Mapping[str, Any]]) -> list[Attempt]:
    """The attempts of deliveries as `ops.deliveries` shows them: every attempt when the
    view lists them (`attempts`), else the last one."""
    found: list[Attempt] = []
    for view in deliveries:
        listed = view.get("attempts")
        if listed is None:
            listed = [view["last_attempt"]] if view.get("last_attempt") else []
        found += [(_seconds(a["attempted_at"]), a["status_code"]) for a in listed]
    return found


def per_minute(attempts: Iterable[Attempt], now: float) -> Chart:
    """Every attempt in the last hour, counted by minute: a 2xx answer is delivered,
    anything else (another status, no answer) a failure."""
    ok = [0] * MINUTES
    failed = [0] * MINUTES
    for attempted_at, code in attempts:
        ago = int((now - attempted_at) // 60)
        if not 0 <= ago < MINUTES:
            continue
        if code is not None and 200 <= code < 300:
            ok[ago] += 1
        else:
            failed[ago] += 1
    peak = max([a + b for a, b in zip(ok, failed, strict=True)] + [1])
    bars = []
    for ago in range(MINUTES):
        x = (MINUTES - 1 - ago) * BAR
        ok_h = HEIGHT * ok[ago] / peak
        fail_h = HEIGHT * failed[ago] / peak
        bars.append(
            Bar(
                x=round(x, 1),
                ok_y=round(HEIGHT - ok_h, 1),
                ok_h=round(ok_h, 1),
                fail_y=round(HEIGHT - ok_h - fail_h, 1),
                fail_h=round(fail_h, 1),
                minute=ago,
                ok=ok[ago],
                failed=failed[ago],
            )
        )
    return Chart(bars=bars, ok_total=sum(ok), failed_total=sum(failed), peak=peak)
