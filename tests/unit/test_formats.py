"""Body formats: tables of events through every format, limits, escaping, Slack validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bridge.deliver.chat_formats import cut, duration, size
from bridge.deliver.formats import FORMATS, render, standard_body, zapier_body
from bridge.models import Event

RECORD: dict[str, Any] = {
    "id": "0b7c2f6e-1111-4222-8333-944455556666",
    "user_id": "user_1",
    "transaction_id": None,
    "audio_url": "https://cdn.munsit.com/denoised/0b7c.wav",
    "original_audio_url": "https://cdn.munsit.com/uploads/0b7c.wav",
    "file_name": "standup <team> & co.wav",
    "audio_duration": 93.4,
    "audio_size": 2_990_000,
    "audio_format": "wav",
    "source_type": "audio",
    "status": "success",
    "error": None,
    "created_at": "2026-11-23T18:58:00.000Z",
    "updated_at": "2026-11-23T19:00:00.123Z",
    "tags": ["new", "field"],
}


def event(type_: str, **data: Any) -> Event:
    return Event(
        f"evt_{type_}", type_, RECORD["id"], 1_763_924_400.123, "pending", {**RECORD, **data}
    )


EVENTS = {
    "completed": event("denoise.completed"),
    "failed": event(
        "denoise.failed",
        status="failed",
        audio_url=None,
        error="Could not decode <audio> & stream " * 200,
    ),
    "created": event("denoise.created", status="pending", audio_url=None),
    "progress": event("denoise.progress", pct=40),
    "test": event("bridge.test"),
    "long name": event(
        "denoise.completed", file_name="x" * 5000, audio_url="https://c/" + "a" * 4000
    ),
    "sparse": Event("evt_s", "denoise.completed", "r", 0.0, None, {"id": "r"}),
}


@pytest.mark.parametrize("name", EVENTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_json(name: str, fmt: str) -> None:
    assert isinstance(json.loads(render(EVENTS[name], fmt)), dict)


@pytest.mark.parametrize("name", EVENTS)
def test_body_text_is_compact_utf8_json(name: str) -> None:
    expected = json.dumps(standard_body(EVENTS[name]), ensure_ascii=False, separators=(",", ":"))
    assert render(EVENTS[name], "standard") == expected


def test_numbers_beyond_64_bits_are_kept_exactly() -> None:
    huge = event("denoise.completed", audio_size=2**70, file_name="réunion ✓.wav")
    text = render(huge, "standard")
    assert json.loads(text)["data"]["audio_size"] == 2**70
    assert "réunion ✓.wav" in text


def test_standard_body_is_the_contract() -> None:
    body = standard_body(EVENTS["completed"])
    assert body == {
        "id": "evt_denoise.completed",
        "type": "denoise.completed",
        "timestamp": "2025-11-23T19:00:00.123Z",
        "previous_status": "pending",
        "account": "default",
        "data": RECORD,
    }


def test_zapier_is_flat_with_the_contract_keys() -> None:
    body = zapier_body(EVENTS["completed"])
    assert list(body) == [
        "event_id",
        "event_type",
        "occurred_at",
        "record_id",
        "status",
        "previous_status",
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
        "account",
    ]
    assert all(v is None or isinstance(v, str | int | float | bool) for v in body.values())
    assert body["record_id"] == RECORD["id"] and body["audio_duration"] == 93.4


@pytest.mark.parametrize("name", EVENTS)
def test_slack_blocks_validate_and_respect_limits(name: str) -> None:
    body = FORMATS["slack"](EVENTS[name])
    assert body["text"] and len(body["text"]) <= 3000
    assert len(body["blocks"]) <= 50
    for raw in body["blocks"]:
        block = Block.parse(raw)
        assert block is not None
        block.validate_json()  # raises on any Slack limit
        if raw["type"] == "section" and "text" in raw:
            assert len(raw["text"]["text"]) <= 3000


def test_slack_escapes_and_shows_outcome() -> None:
    done = FORMATS["slack"](EVENTS["completed"])
    assert "standup &lt;team&gt; &amp; co.wav" in done["text"]
    assert done["blocks"][0]["text"]["text"] == "✅ Denoise completed"
    [button] = next(b for b in done["blocks"] if b["type"] == "actions")["elements"]
    assert button["url"] == RECORD["audio_url"]
    failed = FORMATS["slack"](EVENTS["failed"])
    error = [b for b in failed["blocks"] if b.get("text", {}).get("text", "").startswith("*Error*")]
    assert error and "&lt;audio&gt; &amp;" in error[0]["text"]["text"]
    assert error[0]["text"]["text"].endswith("…")
    assert not [b for b in failed["blocks"] if b["type"] == "actions"]


@pytest.mark.parametrize("name", EVENTS)
def test_discord_limits(name: str) -> None:
    body = FORMATS["discord"](EVENTS[name])
    assert len(body["content"]) <= 2000 and body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    assert len(embed["title"]) <= 256 and len(embed.get("description", "")) <= 4096
    assert len(embed["fields"]) <= 25 and all(len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed.get("description", "")) + len(embed["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000


def test_discord_colour_by_outcome() -> None:
    assert FORMATS["discord"](EVENTS["completed"])["embeds"][0]["color"] == 0x2EB67D
    assert FORMATS["discord"](EVENTS["failed"])["embeds"][0]["color"] == 0xE01E5A


def test_teams_adaptive_card() -> None:
    body = FORMATS["teams"](EVENTS["completed"])
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["actions"][0] == {
        "type": "Action.OpenUrl",
        "title": "Download denoised audio",
        "url": RECORD["audio_url"],
    }
    failed = FORMATS["teams"](EVENTS["failed"])["attachments"][0]["content"]
    assert any(b.get("color") == "Attention" for b in failed["body"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(93.4, "1:33"), (9.5, "9.5 s"), (None, "—"), (600, "10:00")],
)
def test_duration(value: object, expected: str) -> None:
    assert duration(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(999, "999 B"), (2_990_000, "3.0 MB"), (1500, "1.5 KB"), ("x", "—")],
)
def test_size(value: object, expected: str) -> None:
    assert size(value) == expected


def test_cut() -> None:
    assert cut("abc", 3) == "abc" and cut("abcd", 3) == "ab…"
