"""Request bodies: a pure function of the event and the subscriber's format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge import jsontext
from bridge.deliver import reports
from bridge.deliver.chat_formats import discord_body, slack_body, teams_body
from bridge.models import REPORTS, Event, iso_utc

ZAPIER_FIELDS = (
    "file_name",
    "audio_url",
    "original_audio_url",
    "audio_duration",
    "audio_size",
    "audio_format",
    "source_type",
    "error",
    "created_at",
    "updated_at",
)


def standard_body(event: Event) -> dict[str, Any]:
    """The `standard` body of CONTRACT §3: the Munsit record exactly as last fetched, and
    the account it comes from (`denoise.*` events; the bridge's own have none)."""
    body: dict[str, Any] = {
        "id": event.id,
        "type": event.type,
        "timestamp": iso_utc(event.occurred_at),
        "previous_status": event.previous_status,
    }
    if (account := event.account) is not None:
        body["account"] = account
    body["data"] = dict(event.data)
    return body


def callback_body(event: Event, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A gateway job's callback: the `standard` body plus the client's `metadata` as
    submitted (a JSON object, or null when it gave none)."""
    return {**standard_body(event), "metadata": None if metadata is None else dict(metadata)}


def render_callback(event: Event, metadata: Mapping[str, Any] | None) -> str:
    """A callback's body as compact JSON text (signed with the client's secret)."""
    return jsontext.dumps(callback_body(event, metadata))


def zapier_body(event: Event) -> dict[str, Any]:
    """Flat scalar keys only: Zapier turns nesting and arrays into awkward line items. The
    bridge's reports on itself carry their own keys (`reports.zapier_fields`)."""
    if event.type in REPORTS:
        return reports.zapier_fields(event)
    data = event.data
    body: dict[str, Any] = {
        "event_id": event.id,
        "event_type": event.type,
        "occurred_at": iso_utc(event.occurred_at),
        "record_id": data.get("id", event.record_id),
        "status": data.get("status"),
        "previous_status": event.previous_status,
    }
    for key in ZAPIER_FIELDS:
        value = data.get(key)
        body[key] = (
            value if value is None or isinstance(value, str | int | float | bool) else str(value)
        )
    body["account"] = event.account
    return body


FORMATS = {
    "standard": standard_body,
    "zapier": zapier_body,
    "slack": slack_body,
    "discord": discord_body,
    "teams": teams_body,
}
SUPPORTED_FORMATS = frozenset(FORMATS)


def body(event: Event, fmt: str) -> dict[str, Any]:
    """The request body for format `fmt`."""
    return FORMATS[fmt](event)


def render(event: Event, fmt: str) -> str:
    """The request body as compact JSON text (signed and sent as UTF-8)."""
    return jsontext.dumps(body(event, fmt))
