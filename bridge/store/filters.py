"""The SQL for an operator's `DeliveryFilter`, shared by both store adapters: the listing
(`list_deliveries`) and the bulk retry (`retry_failed`) select the same deliveries.

A condition is written over `deliveries d JOIN events e ON e.seq = d.event_seq`: the event's
type and record come from `e` (the record through the index `events_record (record_id, seq)`:
a record has few events, each with a delivery per subscriber, found by the unique
`(event_seq, subscriber_id)`), the rest from `d`. The adapters differ only in how a value is
written into a statement (`?` or `%s`) and stored (PostgreSQL's text cannot hold NUL:
`storable`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bridge.models import DeliveryFilter
from bridge.store.base import ALL_JOBS
from bridge.store.jobs_common import JOB_RANGE

# what both adapters select for a `DeliveryView` (see their `view`s)
VIEW_COLUMNS = (
    "SELECT d.id, e.id, e.type, d.subscriber_id, d.state, d.attempts, d.next_attempt_at,"
    " e.record_id, d.created_at, d.updated_at FROM deliveries d JOIN events e"
    " ON e.seq = d.event_seq"
)


def _same(text: str) -> str:
    return text


@dataclass(frozen=True, slots=True)
class Dialect:
    """How an adapter writes a value into a statement: its placeholder, how it stores text
    given by others, and how a bulk update locks the rows it picked (in a sub-SELECT)."""

    mark: str  # "?" or "%s"
    text: Callable[[str], str] = _same
    lock: str = ""  # e.g. " ORDER BY d.id FOR UPDATE OF d"
    jobs: str = JOB_RANGE  # the condition on `d` of every job target (see `jobs_common`)


def conditions(
    dialect: Dialect, where: DeliveryFilter, *, before: int | None = None
) -> tuple[list[str], list[Any]]:
    """The conditions (to be joined with AND) on `d` and `e` that `where` means, and their
    parameters in order; with `before`, only ids below it."""
    mark = dialect.mark
    found: list[str] = []
    params: list[Any] = []

    def add(sql: str, value: Any) -> None:
        found.append(sql.replace("?", mark))
        params.append(value)

    if where.state is not None:
        add("d.state = ?", where.state.value)
    if where.subscriber is not None:
        add("d.subscriber_id = ?", dialect.text(where.subscriber))
    if where.event_type is not None:
        add("e.type = ?", dialect.text(where.event_type))
    if where.record_id is not None:
        add("e.record_id = ?", dialect.text(where.record_id))
    if where.since is not None:
        add("d.created_at >= ?", where.since)
    if where.until is not None:
        add("d.created_at < ?", where.until)
    if before is not None:
        add("d.id < ?", before)
    return found, params


def clause(conds: list[str]) -> str:
    """`WHERE a AND b …`, or nothing."""
    return f"WHERE {' AND '.join(conds)}" if conds else ""


def listing(
    dialect: Dialect, where: DeliveryFilter, *, before: int | None
) -> tuple[str, list[Any]]:
    """The listing's statement, newest first, its LIMIT the last parameter (to be added),
    and its parameters."""
    conds, params = conditions(dialect, where, before=before)
    sql = f"{VIEW_COLUMNS} {clause(conds)} ORDER BY d.id DESC LIMIT {dialect.mark}"
    return sql, params


def retrying(
    dialect: Dialect, where: DeliveryFilter, *, now: float, subscribers: Sequence[str]
) -> tuple[str, list[Any]] | None:
    """The bulk retry, one statement: every `failed` delivery of `subscribers` (the
    configured ones: a dead letter of a subscriber no longer configured stays failed, as no
    lane would send it) that `where` matches (its `state` ignored) pending again with a
    fresh schedule, as `retry` does to one (`schedule_from` its attempts until now, due and
    updated at `now`), with its parameters. The dead letters are found through the partial
    index `deliveries_failed`, their events joined only when `where` asks about them; with
    the dialect's `lock`, their rows are locked in id order first. `state = 'failed'` is
    checked again on each row as it is updated (a delivery retried meanwhile by someone else
    is left alone). `job:*` among `subscribers` stands for every job target. Returns a row
    per delivery retried. None: no subscriber, nothing to do."""
    jobs = ALL_JOBS in subscribers  # every job target: a range of ids, not a list
    subs = list(dict.fromkeys(dialect.text(sub) for sub in subscribers if sub != ALL_JOBS))
    if not subs and not jobs:
        return None
    conds, params = conditions(dialect, replace(where, state=None))
    marks = ", ".join([dialect.mark] * len(subs))
    which = [f"d.subscriber_id IN ({marks})"] if subs else []
    which += [f"({dialect.jobs})"] if jobs else []
    conds[0:0] = ["d.state = 'failed'", f"({' OR '.join(which)})"]
    params[0:0] = subs
    joined = where.event_type is not None or where.record_id is not None
    source = "deliveries d JOIN events e ON e.seq = d.event_seq" if joined else "deliveries d"
    mark = dialect.mark
    sql = (
        f"UPDATE deliveries SET state = 'pending', schedule_from = attempts,"
        f" next_attempt_at = {mark}, updated_at = {mark} WHERE state = 'failed'"
        f" AND id IN (SELECT d.id FROM {source} {clause(conds)}{dialect.lock}) RETURNING id"
    )
    return sql, [now, now, *params]
