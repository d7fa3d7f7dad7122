"""A subscriber's request body and its content type, whatever its format: the JSON of a
built-in format, or its own template rendered in a worker process (`pool`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.config import SubscriberConfig
from bridge.deliver import formats
from bridge.deliver.templates.pool import POOL
from bridge.deliver.templates.sandbox import JSON_TYPE, TemplateError
from bridge.models import Event, iso_utc
from bridge.redact import describe


@dataclass(frozen=True)
class Body:
    text: str  # sent as UTF-8
    content_type: str


def context(event: Event) -> dict[str, Any]:
    """What a template sees: plain values only, nothing of the bridge's objects."""
    return {
        "event": {
            "id": event.id,
            "type": event.type,
            "timestamp": iso_utc(event.occurred_at),
            "previous_status": event.previous_status,
            "account": event.account,
            "record_id": event.record_id,
            "data": dict(event.data),
        },
        "body": formats.standard_body(event),
    }


async def render_template(source: str, event: Event, content_type: str, key: str) -> str:
    """`source` rendered for `event` in the worker process of subscriber `key`, time-capped
    (`pool`)."""
    return await POOL.render(key, source, content_type, context(event))


async def body_for(sub: SubscriberConfig, event: Event) -> Body:
    """The body `sub` gets for `event`; raises when it cannot be made (`why` says why)."""
    if sub.format != "template":
        return Body(formats.render(event, sub.format), JSON_TYPE)
    source = sub.template_source
    assert source is not None  # the configuration guarantees it with format template
    text = await render_template(source, event, sub.media_type, sub.id)
    return Body(text, sub.media_type)


def why(exc: BaseException) -> str:
    """A render failure as an attempt's error: a template's own message, else the exception."""
    return str(exc) if isinstance(exc, TemplateError) else describe(exc)
