"""The dashboard's parts without a browser: the chart's counting, sessions, the refusal
rules and autoescaping."""

from __future__ import annotations

from unittest import mock

from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from bridge.config import AdminConfig
from bridge.errors import ConflictError, GoneError, NotFoundError, RequestError
from bridge.models import DeliveryFilter, iso_utc
from bridge.params import parse_filter
from bridge.ui.chart import attempts_of, per_minute
from bridge.ui.pages import deliveries_url, filter_fields
from bridge.ui.render import templates
from bridge.ui.session import Sessions, refusal, token_matches

NOW = 1_800_000_000.0


def attempt(ago: float, code: int | None) -> dict[str, object]:
    return {"attempted_at": iso_utc(NOW - ago), "status_code": code}


def test_chart_reads_the_attempts_of_delivery_views() -> None:
    listed = {"attempts": [attempt(10, 200), attempt(20, 500)], "last_attempt": attempt(20, 500)}
    last_only = {"last_attempt": attempt(70, None)}
    never = {"last_attempt": None}
    assert attempts_of([listed, last_only, never]) == [
        (NOW - 10, 200),
        (NOW - 20, 500),
        (NOW - 70, None),
    ]


def test_chart_counts_attempts_of_the_last_hour_by_minute_and_outcome() -> None:
    found = [(NOW - 10, 200), (NOW - 20, 500), (NOW - 30, None), (NOW - 70, 204)]
    chart = per_minute([*found, (NOW - 3601, 200)], NOW)
    assert (chart.ok_total, chart.failed_total, chart.peak) == (2, 2, 3)
    newest, older = chart.bars[0], chart.bars[1]
    assert (newest.minute, newest.ok, newest.failed) == (0, 1, 2)
    assert (older.minute, older.ok, older.failed) == (1, 1, 0)
    assert newest.x > older.x  # now on the right
    assert newest.ok_h + newest.fail_h == chart.height


def test_sessions_expire_and_are_dropped() -> None:
    sessions = Sessions(lifetime_s=10)
    with mock.patch("time.monotonic", return_value=100.0):
        sid = sessions.create()
        assert sessions.valid(sid) and not sessions.valid("guess") and not sessions.valid(None)
    with mock.patch("time.monotonic", return_value=111.0):
        assert not sessions.valid(sid)
    other = sessions.create()
    sessions.drop(other)
    assert not sessions.valid(other)


def test_token_compare() -> None:
    admin = AdminConfig(token=SecretStr("s3cret-token-for-the-ui-123456"))
    assert token_matches("s3cret-token-for-the-ui-123456", admin)
    assert not token_matches("s3cret", admin)
    assert not token_matches("anything", AdminConfig())


def test_refusals() -> None:
    def ask(method: str, **headers: str) -> str | None:
        request = make_mocked_request(method, "/ui/", headers=headers)
        return refusal(request, AdminConfig())

    own = "http://127.0.0.1:8080"
    assert ask("GET", Host="127.0.0.1:8080") is None
    assert ask("GET", Host="evil.example") is not None  # DNS rebinding, no token
    assert ask("GET", Host="127.0.0.1:8080", Origin="https://evil.example") is not None
    assert ask("POST", Host="127.0.0.1:8080", Origin=own) is None
    assert ask("POST", Host="127.0.0.1:8080", Referer=own + "/ui/events") is None
    assert ask("POST", Host="127.0.0.1:8080") is not None  # neither Origin nor Referer
    assert ask("POST", Host="127.0.0.1:8080", Referer="http://evil.example/") is not None
    assert ask("POST", Host="127.0.0.1:8080", Origin="null") is not None


def test_templates_escape_every_value() -> None:
    html = (
        templates()
        .get_template("error.html")
        .render(
            title="<t>",
            message='<script>alert("x")</script>',
            path="/ui/",
            login_needed=False,
            logged_in=False,
            notice=None,
            error=None,
            live=None,
        )
    )
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_operation_errors_keep_their_status() -> None:
    assert NotFoundError("no delivery 9").status == 404
    assert ConflictError("delivered").status == 409
    assert GoneError("cursor").status == 410
    assert RequestError("since: bad").status == 400


def test_the_filter_goes_back_into_the_url_in_utc() -> None:
    raw = {"state": "failed", "subscriber": "", "type": "", "record": "", "since": "", "until": ""}
    raw["since"] = "2026-11-24T10:00:00+02:00"
    where = parse_filter(lambda key: raw[key] or None)
    fields = filter_fields(where, raw)
    assert fields["since"] == "2026-11-24T08:00"  # as a datetime-local input shows it, UTC
    url = deliveries_url(fields, before=7)
    assert url == "/ui/deliveries?state=failed&since=2026-11-24T08%3A00&before=7"
    assert deliveries_url(filter_fields(DeliveryFilter(), {})) == "/ui/deliveries"
