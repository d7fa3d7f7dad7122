"""Redaction: a URL keeps its scheme, host and port, never its user-info, path, query or
fragment, wherever it appears in a text; an exception becomes one line the same way."""

from __future__ import annotations

import pytest

from bridge.redact import HIDDEN, describe, redact_text, redact_url, scrub

SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"

URLS = [
    ("https://example.com", "https://example.com"),
    ("https://example.com/", "https://example.com"),
    (SLACK, "https://hooks.slack.com"),
    ("https://user:p4ssw0rd@example.com/x", "https://example.com"),
    ("https://p4ssw0rd@example.com:8443/x", "https://example.com:8443"),
    ("https://us@er:p@ss@example.com/x", "https://example.com"),
    ("https://example.com?sig=QUERYSECRET", "https://example.com"),
    ("https://example.com:8443/hook?sig=QUERYSECRET#frag", "https://example.com:8443"),
    ("https://example.com#FRAGSECRET", "https://example.com"),
    ("HTTP://Example.COM:80/P", "http://example.com:80"),
    ("http://[::1]:8080/hooks/T0KEN", "http://[::1]:8080"),
    ("http://127.0.0.1:9/x", "http://127.0.0.1:9"),
    ("  https://example.com/x  ", "https://example.com"),
    ("https://user:pa/ss@example.com/x", "https://<url>"),  # ambiguous: nothing of it shows
    ("https://example.com:notaport/x", "https://<url>"),
    ("not a url", "<url>"),
    ("", "<url>"),
]


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_redact_url_keeps_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact_url(url) == shown


TEXTS = [
    (
        "400, message='Bad status line', url='http://127.0.0.1:34781/hooks/T0KEN/x?sig=Q'",
        "400, message='Bad status line', url='http://127.0.0.1:34781'",
    ),
    (
        "Cannot connect to https://user:p4ss@db.internal:5432/x and http://h/p?q=1 now.",
        "Cannot connect to https://db.internal:5432 and http://h now.",
    ),
    ("url=URL('https://hooks.slack.com/services/T/B/X')", "url=URL('https://hooks.slack.com')"),
    ('"https://discord.com/api/webhooks/1/SECRET" failed', '"https://discord.com" failed'),
    ("(see https://example.com/a?b=c)", "(see https://example.com)"),
    (
        "no url here: Errno 111 [Connect call failed]",
        "no url here: Errno 111 [Connect call failed]",
    ),
    ("postgresql://bridge:pw@db:5432/bridge", "postgresql://db:5432"),
    # characters legal inside a URL that once ended it early, leaving the rest in place
    ("http://h/hook(abc)/SECRETTOKEN123", "http://h"),
    ("https://user:pa'ss@h/TOKEN", "https://h"),
    ("a https://h/a?token=ab'SECRET b", "a https://h b"),
    # no word boundary before the scheme, however long the run of letters
    ("url_https://h/SECRET", "url_https://h"),
    ("éhttps://h/SECRET", "éhttps://h"),
    ("a" * 40 + "https://h/SECRET", "a" * 40 + "https://h"),
    # as JSON may write it
    (
        '{"u": "https:\\/\\/hooks.slack.com\\/services\\/T0\\/SECRET"}',
        '{"u": "https://hooks.slack.com"}',
    ),
    ("HTTPS://Hooks.Example:443/a/b.", "https://hooks.example:443."),
    ("URL('http://u:p@[::1]:81/x?y=z')", "URL('http://[::1]:81')"),
]


@pytest.mark.parametrize(("text", "shown"), TEXTS)
def test_redact_text_cuts_every_url(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_scrub_hides_a_urls_parts_where_they_appear_alone() -> None:
    """An answer that echoes the request line quotes the path and query without the host."""
    url = "http://user:PASSWORDSECRET@127.0.0.1:9/hooks/T0KEN%2DSECRET%2D123/x?sig=QUERYSECRET"
    text = (
        "invalid HTTP answer: b'echo: POST /hooks/T0KEN-SECRET-123/x?sig=QUERYSECRET HTTP/1.1' "
        "then /hooks/T0KEN-SECRET-123/x, sig=QUERYSECRET, /hooks/T0KEN%2DSECRET%2D123/x "
        "decoded, T0KEN-SECRET-123 alone, PASSWORDSECRET, at " + url
    )
    shown = scrub(text, url)
    for secret in ("T0KEN", "QUERYSECRET", "PASSWORDSECRET"):
        assert secret not in shown
    assert shown.startswith(f"invalid HTTP answer: b'echo: POST {HIDDEN} HTTP/1.1' then {HIDDEN}")
    assert shown.endswith("at http://127.0.0.1:9")


def test_scrub_leaves_short_parts_alone() -> None:
    assert scrub("a / b /x c q=1", "https://example.com/x?q=1") == "a / b /x c q=1"


class Loud(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            ValueError("bad\n  value at https://u:p@h.example/path?q=1"),
            "ValueError: bad value at https://h.example",
        ),
        (TimeoutError(), "TimeoutError"),
        (Loud(), "Loud"),
    ],
)
def test_describe_is_one_redacted_line(exc: BaseException, line: str) -> None:
    assert describe(exc) == line


def test_redacting_twice_changes_nothing_more() -> None:
    """A store error names its server; wrapped in another error it is redacted again."""
    once = redact_text("store postgresql://u:pw@127.0.0.1:5432/test: holding the lease")
    assert once == "store postgresql://127.0.0.1:5432: holding the lease"
    assert redact_text(once) == once
    assert redact_text("see http://h:80: it failed") == "see http://h:80: it failed"
    assert redact_url("http://h:/x") == "http://h"
