"""The bridge's reports on itself: builders, ids, routing and every format's rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bridge.config import SubscriberConfig
from bridge.deliver import reports
from bridge.deliver.formats import FORMATS, render, standard_body
from bridge.deliver.routing import route, wants
from bridge.models import (
    DEAD_LETTERED,
    SUBSCRIBER_DISABLED,
    TEST,
    Attempt,
    Delivery,
    Event,
    event_id,
)
from bridge.store.base import SubscriberHealth
from tests.conftest import make_secret

HOOK = "https://hooks.slack.com:8443/services/T000/B000/XXXXSECRETXXXX?token=qs-secret-value"
T0 = 1_795_460_400.0


def sub(sid: str = "team", url: str = HOOK, **kw: Any) -> SubscriberConfig:
    return SubscriberConfig(id=sid, url=url, secret=make_secret(), **kw)


def disabled(at: float = T0 + 5, *, since: float | None = T0) -> Event:
    health = SubscriberHealth(
        failing_since=since, disabled_at=at, reason="the endpoint answered 410 Gone"
    )
    return reports.disabled_event(sub(), health)


RECORD_EVENT = Event("evt_abc", "denoise.completed", "rec-1", T0, "pending", {"id": "rec-1"})


def delivery(attempts: int = 7, *, event: Event = RECORD_EVENT, did: int = 42) -> Delivery:
    return Delivery(did, event, "team", attempts, "lease")


def dead(attempts: int = 7, *, error: str | None = None, code: int | None = 500) -> Event:
    attempt = Attempt(T0 + 60, code, 12.0, error if error is not None else f"HTTP {code}", "")
    return reports.dead_lettered_event(delivery(attempts), attempt, url=HOOK)


def test_disabled_event_shape() -> None:
    event = disabled()
    assert event.type == SUBSCRIBER_DISABLED and event.record_id == "subscriber:team"
    assert event.previous_status is None and event.occurred_at == T0 + 5
    assert event.id.startswith("evt_") and len(event.id) == 36
    assert dict(event.data) == {
        "subscriber": "team",
        "url": "https://hooks.slack.com:8443",
        "reason": "the endpoint answered 410 Gone",
        "disabled_at": "2026-11-23T19:00:05.000Z",
        "failing_since": "2026-11-23T19:00:00.000Z",
    }
    assert disabled(since=None).data["failing_since"] is None
    with pytest.raises(ValueError, match="not disabled"):
        reports.disabled_event(sub(), SubscriberHealth(failing_since=T0))


def test_dead_letter_event_shape() -> None:
    event = dead()
    assert event.type == DEAD_LETTERED and event.record_id == "delivery:42"
    assert event.previous_status is None and event.occurred_at == T0 + 60
    assert dict(event.data) == {
        "delivery_id": 42,
        "subscriber": "team",
        "event_id": "evt_abc",
        "event_type": "denoise.completed",
        "record_id": "rec-1",
        "attempts": 8,  # the attempt that dead-lettered it included
        "last_status_code": 500,
        "last_error": "HTTP 500",
    }
    assert dead(error="", code=None).data["last_status_code"] is None


def test_same_occurrence_same_id_a_later_one_another() -> None:
    assert disabled().id == disabled().id
    assert disabled(T0 + 5).id != disabled(T0 + 6).id  # disabled again later
    other = reports.disabled_event(
        sub("other"), SubscriberHealth(failing_since=T0, disabled_at=T0 + 5, reason="x")
    )
    assert other.id != disabled().id
    assert dead(7).id == dead(7).id
    assert dead(7).id != dead(9).id  # retried by an operator and dead-lettered again
    attempt = Attempt(T0, 500, 1.0, "HTTP 500", "")
    assert (
        reports.dead_lettered_event(delivery(did=43), attempt, url=HOOK).id
        != reports.dead_lettered_event(delivery(did=42), attempt, url=HOOK).id
    )
    # a digest of subject, type and occurrence, never the plain record-event id
    assert disabled().id != event_id("subscriber:team", SUBSCRIBER_DISABLED)
    assert dead().id != disabled().id


def test_secrets_and_url_paths_never_show() -> None:
    leaky = (
        f"cannot connect: POST {HOOK} failed; /services/T000/B000/XXXXSECRETXXXX echoed,"
        " user:pw@ qs-secret-value"
    )
    events = [disabled(), dead(error=leaky, code=None)]
    for event in events:
        for fmt in FORMATS:
            text = render(event, fmt)
            for secret in ("XXXXSECRETXXXX", "qs-secret-value", "/services", "token="):
                assert secret not in text, (fmt, secret)
    assert "https://hooks.slack.com:8443" in events[1].data["last_error"]


def test_dead_letter_of_a_report_is_never_reported() -> None:
    subs = [sub("ops", events=[DEAD_LETTERED])]
    attempt = Attempt(T0, 500, 1.0, "HTTP 500", "")
    for etype in (DEAD_LETTERED, SUBSCRIBER_DISABLED, TEST):
        report_event = Event("evt_r", etype, "delivery:1", T0, None, {})
        assert (
            reports.dead_lettered(delivery(event=report_event), attempt, url=HOOK, subscribers=subs)
            is None
        )
    report = reports.dead_lettered(delivery(), attempt, url=HOOK, subscribers=subs)
    assert report is not None and report.targets == ("ops",)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([SUBSCRIBER_DISABLED], True),
        ([DEAD_LETTERED], False),
        (["bridge.*"], False),
        (["*"], False),
        (["bridge.subscriber_*"], False),
        (["denoise.*", SUBSCRIBER_DISABLED], True),
    ],
)
def test_reports_go_only_to_subscribers_naming_them_exactly(
    patterns: list[str], expected: bool
) -> None:
    assert wants(patterns, SUBSCRIBER_DISABLED) is expected
    assert wants([DEAD_LETTERED], DEAD_LETTERED)
    assert not wants(["bridge.*", "*"], DEAD_LETTERED)


def test_targets_include_disabled_and_paused_subscribers() -> None:
    subs = [
        sub("a", events=[SUBSCRIBER_DISABLED]),
        sub("b", events=["*"]),
        sub("c", events=[SUBSCRIBER_DISABLED, DEAD_LETTERED], enabled=False),
    ]
    health = SubscriberHealth(failing_since=T0, disabled_at=T0, reason="gone")
    assert reports.subscriber_disabled(subs[0], health, subs).targets == ("a", "c")
    assert route(DEAD_LETTERED, subs) == ["c"]


def test_standard_body_is_the_usual_envelope() -> None:
    event = dead()
    assert standard_body(event) == {
        "id": event.id,
        "type": DEAD_LETTERED,
        "timestamp": "2026-11-23T19:01:00.000Z",
        "previous_status": None,
        "data": dict(event.data),
    }


def test_headlines() -> None:
    assert reports.headline(disabled()) == (
        "⚠️ munsit-bridge disabled subscriber team: the endpoint answered 410 Gone"
    )
    event = dead()
    assert reports.headline(event) == (
        "❌ Delivery 42 of evt_abc to team failed for good after 8 attempts: HTTP 500"
    )
    one = reports.dead_lettered_event(delivery(0), Attempt(T0, None, 1.0, None, ""), url=HOOK)
    assert reports.headline(one).endswith("after 1 attempt: no answer")


REPORT_EVENTS = {"disabled": disabled(), "dead": dead(), "dead-long": dead(error="x" * 5000)}


@pytest.mark.parametrize("name", REPORT_EVENTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_reports(name: str, fmt: str) -> None:
    assert isinstance(json.loads(render(REPORT_EVENTS[name], fmt)), dict)


@pytest.mark.parametrize("name", REPORT_EVENTS)
def test_slack_report(name: str) -> None:
    event = REPORT_EVENTS[name]
    body = FORMATS["slack"](event)
    assert body["text"].startswith(("⚠️ munsit-bridge disabled", "❌ Delivery 42 of evt_abc"))
    assert len(body["text"]) <= 3000 and len(body["blocks"]) <= 50
    for raw in body["blocks"]:
        block = Block.parse(raw)
        assert block is not None
        block.validate_json()
    assert body["blocks"][0]["text"]["text"] == reports.TITLES[event.type]
    assert event.id in body["blocks"][-1]["elements"][0]["text"]
    assert not [b for b in body["blocks"] if b["type"] == "actions"]  # nothing to click


def test_slack_report_escapes() -> None:
    event = dead(error="<!channel> & <https://x.example/a/secretpath>")
    text = json.dumps(FORMATS["slack"](event))
    assert "<!channel>" not in text and "&lt;!channel&gt; &amp;" in text
    assert "secretpath" not in text


@pytest.mark.parametrize("name", REPORT_EVENTS)
def test_discord_report(name: str) -> None:
    event = REPORT_EVENTS[name]
    body = FORMATS["discord"](event)
    assert body["content"] == reports.headline(event)[:2000] or body["content"].endswith("…")
    assert len(body["content"]) <= 2000 and body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    assert embed["title"] == reports.TITLES[event.type] and embed["footer"]["text"] == event.id
    assert embed["color"] == (0xE67E22 if event.type == SUBSCRIBER_DISABLED else 0xE01E5A)
    assert all(len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000
    assert "url" not in embed


def test_teams_report() -> None:
    for event in REPORT_EVENTS.values():
        body = FORMATS["teams"](event)
        [attachment] = body["attachments"]
        card = attachment["content"]
        assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
        assert card["body"][0]["text"] == reports.TITLES[event.type]
        assert card["body"][1]["text"] == reports.headline(event)
        facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
        assert facts["Subscriber"] == "team" and "actions" not in card
    facts = {
        f["title"]: f["value"]
        for f in FORMATS["teams"](disabled())["attachments"][0]["content"]["body"][2]["facts"]
    }
    assert facts["Endpoint"] == "https://hooks.slack.com:8443"


def test_zapier_reports_are_flat() -> None:
    body = FORMATS["zapier"](disabled())
    assert list(body) == [
        "event_id",
        "event_type",
        "occurred_at",
        "record_id",
        "status",
        "previous_status",
        "message",
        "subscriber",
        "url",
        "reason",
        "disabled_at",
        "failing_since",
    ]
    assert (body["status"], body["record_id"]) == ("disabled", "subscriber:team")
    event = dead()
    body = FORMATS["zapier"](event)
    assert body == {
        "event_id": event.id,
        "event_type": DEAD_LETTERED,
        "occurred_at": "2026-11-23T19:01:00.000Z",
        "record_id": "delivery:42",
        "status": "failed",
        "previous_status": None,
        "message": reports.headline(event),
        "delivery_id": 42,
        "subscriber": "team",
        "failed_event_id": "evt_abc",
        "failed_event_type": "denoise.completed",
        "failed_record_id": "rec-1",
        "attempts": 8,
        "last_status_code": 500,
        "last_error": "HTTP 500",
    }
    assert all(v is None or isinstance(v, str | int | float | bool) for v in body.values())
