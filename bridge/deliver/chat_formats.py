"""Slack, Discord and Teams messages: pure functions of the event, within each target's limits."""

from __future__ import annotations

import math
from typing import Any

from bridge.deliver import reports
from bridge.models import (
    COMPLETED,
    CREATED,
    DEAD_LETTERED,
    FAILED_EVENT,
    PROGRESS,
    REPORTS,
    SUBSCRIBER_DISABLED,
    TEST,
    Event,
    iso_utc,
)

SLACK_TEXT_MAX = 3000  # section text
SLACK_FIELD_MAX = 2000
SLACK_HEADER_MAX = 150
SLACK_BUTTON_URL_MAX = 3000
DISCORD_CONTENT_MAX = 2000
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_FIELD_MAX = 1024
COLOURS = {
    COMPLETED: 0x2EB67D,
    FAILED_EVENT: 0xE01E5A,
    CREATED: 0x36C5F0,
    PROGRESS: 0xECB22E,
    SUBSCRIBER_DISABLED: 0xE67E22,
    DEAD_LETTERED: 0xE01E5A,
}

_TITLES = {
    COMPLETED: "✅ Denoise completed",
    FAILED_EVENT: "❌ Denoise failed",
    CREATED: "🆕 Denoise job created",
    PROGRESS: "⏳ Denoising",
    TEST: "🧪 Test event from munsit-bridge",
    **reports.TITLES,
}


def cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, ending in an ellipsis when shortened."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def title(event: Event) -> str:
    base = _TITLES.get(event.type, event.type)
    pct = event.data.get("pct")
    return f"{base} {pct}%" if event.type == PROGRESS and isinstance(pct, int) else base


def _finite(value: object) -> float | None:
    """A record's number as a finite float; None when missing, of another type, NaN, infinite
    or beyond any float (upstream data is not trusted to be sensible)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def duration(value: object) -> str:
    seconds = _finite(value)
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f} s"


def size(value: object) -> str:
    n = _finite(value)
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def facts(event: Event) -> list[tuple[str, str]]:
    """The record's facts people care about, as (label, value)."""
    data = event.data
    return [
        ("File", str(data.get("file_name") or data.get("id") or "—")),
        ("Duration", duration(data.get("audio_duration"))),
        ("Size", size(data.get("audio_size"))),
        ("Source", str(data.get("source_type") or "—")),
    ]


def times(event: Event) -> str:
    data = event.data
    created = data.get("created_at") or "—"
    finished = data.get("updated_at") if event.type in (COMPLETED, FAILED_EVENT) else None
    text = f"created {created}"
    return text + (f" · finished {finished}" if finished else "")


def slack_escape(text: str) -> str:
    """mrkdwn escaping: `&`, `<` and `>` only, as Slack documents."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(event: Event) -> dict[str, Any]:
    """`text` fallback plus Block Kit `blocks`: header, facts, error or link, times."""
    if event.type in REPORTS:
        return slack_report(event)
    head = title(event)
    name = facts(event)[0][1]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(head, SLACK_HEADER_MAX)}},
        {
            "type": "section",
            "fields": [
                {
                    "type": "mrkdwn",
                    "text": cut(f"*{label}*\n{slack_escape(value)}", SLACK_FIELD_MAX),
                }
                for label, value in facts(event)
            ],
        },
    ]
    error = event.data.get("error")
    if event.type == FAILED_EVENT and error:
        text = cut(slack_escape(str(error)), SLACK_TEXT_MAX - 20)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Error*\n{text}"}})
    url = event.data.get("audio_url")
    if event.type == COMPLETED and isinstance(url, str) and len(url) <= SLACK_BUTTON_URL_MAX:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Download denoised audio"},
                        "url": url,
                    }
                ],
            }
        )
    context = f"{times(event)} · {event.id}"
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": cut(slack_escape(context), 2000)}],
        }
    )
    return {"text": cut(slack_escape(f"{head}: {name}"), SLACK_TEXT_MAX), "blocks": blocks}


def discord_body(event: Event) -> dict[str, Any]:
    """`content` plus one embed, coloured by outcome; mentions never ping anyone."""
    if event.type in REPORTS:
        return discord_report(event)
    head = title(event)
    name = facts(event)[0][1]
    embed: dict[str, Any] = {
        "title": cut(head, DISCORD_TITLE_MAX),
        "color": COLOURS.get(event.type, 0x95A5A6),
        "fields": [
            {"name": label, "value": cut(value, DISCORD_FIELD_MAX), "inline": True}
            for label, value in facts(event)
        ],
        "timestamp": iso_utc(event.occurred_at),
        "footer": {"text": cut(f"{times(event)} · {event.id}", 2048)},
    }
    error = event.data.get("error")
    if event.type == FAILED_EVENT and error:
        embed["description"] = cut(str(error), DISCORD_DESCRIPTION_MAX)
    url = event.data.get("audio_url")
    if event.type == COMPLETED and isinstance(url, str):
        embed["url"] = url
    return {
        "content": cut(f"{head}: {name}", DISCORD_CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


def teams_body(event: Event) -> dict[str, Any]:
    """A Workflows-compatible message with one Adaptive Card 1.4."""
    if event.type in REPORTS:
        return teams_report(event)
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title(event),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
        {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts(event)]},
    ]
    error = event.data.get("error")
    if event.type == FAILED_EVENT and error:
        body.append({"type": "TextBlock", "text": str(error), "color": "Attention", "wrap": True})
    body.append(
        {"type": "TextBlock", "text": times(event), "isSubtle": True, "size": "Small", "wrap": True}
    )
    card = _card(body)
    url = event.data.get("audio_url")
    if event.type == COMPLETED and isinstance(url, str):
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": "Download denoised audio", "url": url}
        ]
    return _message(card)


def _card(body: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }


def _message(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


# The bridge's reports on itself: the headline, then the facts; no links (the endpoint is
# shown as scheme, host and port only, never as something to click with its path).


def slack_report(event: Event) -> dict[str, Any]:
    line = reports.headline(event)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": cut(title(event), SLACK_HEADER_MAX)},
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(slack_escape(line), SLACK_TEXT_MAX)},
        },
        {
            "type": "section",
            "fields": [
                {
                    "type": "mrkdwn",
                    "text": cut(f"*{label}*\n{slack_escape(value)}", SLACK_FIELD_MAX),
                }
                for label, value in reports.facts(event)
            ],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": cut(slack_escape(f"{iso_utc(event.occurred_at)} · {event.id}"), 2000),
                }
            ],
        },
    ]
    return {"text": cut(slack_escape(line), SLACK_TEXT_MAX), "blocks": blocks}


def discord_report(event: Event) -> dict[str, Any]:
    line = reports.headline(event)
    embed: dict[str, Any] = {
        "title": cut(title(event), DISCORD_TITLE_MAX),
        "description": cut(line, DISCORD_DESCRIPTION_MAX),
        "color": COLOURS.get(event.type, 0x95A5A6),
        "fields": [
            {"name": label, "value": cut(value, DISCORD_FIELD_MAX), "inline": True}
            for label, value in reports.facts(event)
        ],
        "timestamp": iso_utc(event.occurred_at),
        "footer": {"text": cut(event.id, 2048)},
    }
    return {
        "content": cut(line, DISCORD_CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


def teams_report(event: Event) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title(event),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
        {
            "type": "TextBlock",
            "text": reports.headline(event),
            "color": "Attention",
            "wrap": True,
        },
        {
            "type": "FactSet",
            "facts": [{"title": k, "value": v} for k, v in reports.facts(event)],
        },
        {
            "type": "TextBlock",
            "text": f"{iso_utc(event.occurred_at)} · {event.id}",
            "isSubtle": True,
            "size": "Small",
            "wrap": True,
        },
    ]
    return _message(_card(body))
