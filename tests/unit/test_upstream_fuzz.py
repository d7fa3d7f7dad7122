"""The list and progress-stream parsers against arbitrary bytes and arbitrary JSON: out comes a
page (records the bridge can store and send, the rest quarantined) or `UpstreamProtocolError`,
never any other exception."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.errors import UpstreamProtocolError
from bridge.models import Page
from bridge.upstream.parse import MAX_DEPTH, SseParser, check_shape, parse_list

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# every code point, lone surrogates included
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
CREATED = "2026-11-23T19:00:00.123Z"


def good(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"rec-{i}", "status": "success", "created_at": CREATED, **extra}


def check(page: Page) -> None:
    """What the rest of the bridge relies on in a page."""
    assert page.size == len(page) + len(page.quarantined)
    ids = [r.id for r in page]
    assert len(ids) == len(set(ids))
    for record in page:
        assert isinstance(record.id, str) and record.id
        assert isinstance(record.status, str) and isinstance(record.created_at, str)
        # storable and sendable exactly as fetched: UTF-8 everywhere, strict JSON numbers
        orjson.dumps(record.data)
        json.dumps(record.data, ensure_ascii=False, allow_nan=False).encode()
    for item in page.quarantined:
        item.label.encode("ascii")  # printable in any log
        if item.record_id is not None:
            item.record_id.encode()


def parse_or_refuse(body: bytes) -> Page | None:
    try:
        page = parse_list(body, offset=0)
    except UpstreamProtocolError:
        return None
    check(page)
    return page


@FUZZ
@given(st.binary(max_size=3000))
@example(b"[" * 100_000)
@example(b'[{"id": "\xff\xfe", "status": "success", "created_at": "2026-11-23T19:00:00Z"}]')
@example(b"[NaN, Infinity, -Infinity, 1e999999]")
@example(b"[" + b"1" * 5000 + b"]")
@example(b'["' + b"\\" * 3001)
def test_arbitrary_bytes_make_a_page_or_a_protocol_error(body: bytes) -> None:
    parse_or_refuse(body)


@FUZZ
@given(JSON_VALUES, st.booleans())
def test_arbitrary_json_makes_a_page_or_a_protocol_error(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    parse_or_refuse(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(
    st.lists(st.integers(0, 10**6), min_size=0, max_size=8, unique=True),
    st.integers(0, 8),
    st.one_of(
        JSON_VALUES,
        st.fixed_dictionaries({"id": JSON_VALUES, "status": JSON_VALUES, "created_at": ANY_TEXT}),
        st.builds(lambda v: good(999_999_999, extra=v), JSON_VALUES),
    ),
)
def test_one_bad_item_is_quarantined_and_every_other_record_read(
    numbers: list[int], where: int, bad: Any
) -> None:
    """Whatever one item holds, the good records around it all come out, in order."""
    items: list[Any] = [good(n) for n in numbers]
    where = min(where, len(items))
    items.insert(where, bad)
    body = json.dumps(items).encode("utf-8", "surrogatepass")
    page = parse_or_refuse(body)
    assert page is not None  # an item, however bad, never costs the whole page
    expected = [f"rec-{n}" for n in numbers]
    got = [r.id for r in page]
    if page.quarantined:
        assert got == expected
        [item] = page.quarantined
        assert item.position == where
    else:  # it was a sound record after all
        assert got == [*expected[:where], bad["id"], *expected[where:]]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (good(1, id="rec-\ud800"), "not valid Unicode"),
        (good(1, file_name="a\udcffb"), "not valid Unicode"),
        (good(1, audio_duration=float("nan")), "NaN or infinite"),
        (good(1, audio_duration=float("inf")), "NaN or infinite"),
        (good(1, id=7), "field 'id' is missing or not a string"),
        (good(1, id=""), "field 'id' is missing or not a string"),
        (good(1, id="x" * 257), "longer than 256"),
        (good(1, id="a\nb"), "control characters"),
        (good(1, status=None), "field 'status'"),
        (good(1, status="succ\u0000ess"), "field 'status' holds control characters"),
        (good(1, created_at=1_790_000_000), "field 'created_at'"),
        (good(1, created_at="yesterday"), "not an ISO 8601 time"),
        ({"status": "success", "created_at": CREATED}, "field 'id'"),
        ("just text", "expected a JSON object, got string"),
        ([good(1)], "expected a JSON object, got array"),
        (None, "expected a JSON object, got null"),
    ],
)
def test_poison_records_are_quarantined_with_their_reason(item: Any, reason: str) -> None:
    body = json.dumps([good(0), item, good(2)], allow_nan=True).encode("utf-8", "surrogatepass")
    page = parse_list(body, offset=10)
    assert [r.id for r in page] == ["rec-0", "rec-2"]
    [skipped] = page.quarantined
    assert reason in skipped.reason
    assert skipped.position == 11 and page.size == 3


def test_invalid_utf8_and_huge_numbers_quarantine_only_their_record() -> None:
    raw = b'{"id": "rec-1", "status": "success", "created_at": "%s", "f": "\xff"}' % (
        CREATED.encode()
    )
    huge = b'{"id": "rec-3", "status": "success", "created_at": "%s", "n": %s}' % (
        CREATED.encode(),
        b"9" * 5000,
    )
    beyond = b'{"id": "rec-4", "status": "success", "created_at": "%s", "n": 1e400}' % (
        CREATED.encode()
    )
    body = b"[%s,%s,%s,%s,%s]" % (
        json.dumps(good(0)).encode(),
        raw,
        json.dumps(good(2)).encode(),
        huge,
        beyond,
    )
    page = parse_list(body)
    assert [r.id for r in page] == ["rec-0", "rec-2"]
    assert [q.record_id for q in page.quarantined] == ["rec-1", "rec-3", "rec-4"]


def test_a_lone_surrogate_id_is_shown_escaped_and_never_stored() -> None:
    body = b'[{"id": "rec-\\ud800", "status": "pending", "created_at": "%s"}]' % CREATED.encode()
    [item] = parse_list(body).quarantined
    assert item.label == "rec-\\ud800"
    assert item.record_id is None  # it could not be written to the store


def test_duplicate_ids_keep_the_first() -> None:
    first, again = good(1, file_name="first"), good(1, file_name="again", status="failed")
    page = parse_list(json.dumps([first, good(2), again]).encode())
    assert [r.id for r in page] == ["rec-1", "rec-2"]
    assert page[0].data["file_name"] == "first"
    [item] = page.quarantined
    assert item.record_id == "rec-1" and item.position == 2
    assert "the same id again" in item.reason


def test_quarantine_keys_are_stable_across_polls_and_positions() -> None:
    bad = good(5, status=None)
    one = parse_list(json.dumps([bad]).encode(), offset=0).quarantined[0]
    two = parse_list(json.dumps([good(1), bad]).encode(), offset=50).quarantined[0]
    assert one.key == two.key and one.position != two.position


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000, f"deeper than {MAX_DEPTH} levels"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH} levels"),
        (b"[" + b"0," * 300_000 + b"0]", "more than 250,000 JSON values"),
        (b'{"data": []}', "returned a JSON dict, expected an array"),
        (b'[{"id": "0b7c1a', "malformed JSON"),
        (b"", "malformed JSON"),
    ],
)
def test_answers_refused_whole(body: bytes, says: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=says):
        parse_list(body)


def test_nesting_up_to_the_cap_is_read() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH - 2):  # the array and the record are two levels
        deep = [deep]
    page = parse_list(json.dumps([good(1, deep=deep)]).encode())
    assert [r.id for r in page] == ["rec-1"]
    assert check_shape(json.dumps([good(1, deep=[deep])]).encode())


# ---- Server-Sent Events ---------------------------------------------------------------------


def feed_all(chunks: list[bytes], max_bytes: int = 64 * 1024) -> list[dict[str, Any]]:
    parser = SseParser(max_bytes=max_bytes)
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6))
@example(b"data: " + b"[" * 5000 + b"\n\n", [])
@example(b'data: {"stage": "processing", "pct": NaN}\n\n', [3])
@example(b'data: {"m": "\\ud800"}\n\ndata: {"m": "\xff"}\n\n', [])
def test_arbitrary_stream_bytes_give_messages_or_a_protocol_error(
    body: bytes, cuts: list[int]
) -> None:
    try:
        messages = feed_all(split(body, cuts), max_bytes=1024)
    except UpstreamProtocolError:
        return
    for message in messages:
        assert isinstance(message, dict)
        orjson.dumps(message)  # no lone surrogate, no NaN


@FUZZ
@given(
    st.lists(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3), max_size=5),
    st.lists(st.integers(0, 4000), max_size=8),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
@example([{"a": 2**70, "b": 10**400, "c": "\ud800"}, {"pct": float("nan")}], [7, 30], b"\r")
def test_messages_come_out_the_same_however_the_stream_is_cut(
    messages: list[dict[str, Any]], cuts: list[int], eol: bytes
) -> None:
    """Each message as orjson reads it (beyond 64 bits an integer is a float), or skipped
    when orjson cannot read it (lone surrogates, NaN, numbers beyond a double)."""
    texts = [json.dumps(m).encode("utf-8", "surrogatepass") for m in messages]
    body = b"".join(b"data: " + text + eol + eol for text in texts)
    whole = feed_all([body])
    assert feed_all(split(body, cuts)) == whole
    assert whole == [m for m in map(strict, texts) if m is not None]


def strict(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def test_a_message_split_over_data_lines_is_joined() -> None:
    body = b'data: {"stage":\ndata: "processing", "pct": 40}\n\n: comment\nevent: x\n\n'
    assert feed_all([body]) == [{"stage": "processing", "pct": 40}]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * 70_000],  # one line, no end
        [b"data: x" * 20_000],  # still one line
        [b"data: 1\n" * 40_000],  # data lines, never a blank one
        [b"data: 1\n"] * 40_000,
        [b"data:\n"] * 70_000,  # empty ones too
    ],
)
def test_endless_lines_and_messages_end_the_stream(chunks: list[bytes]) -> None:
    parser = SseParser()
    with pytest.raises(UpstreamProtocolError, match="over 65,536 bytes"):
        for chunk in chunks:
            parser.feed(chunk)


def test_unreadable_messages_are_counted_and_skipped() -> None:
    parser = SseParser()
    body = b'data: nope\n\ndata: [1]\n\ndata: {"pct": NaN}\n\ndata: {"stage": "done"}\n\n'
    assert parser.feed(body) == [{"stage": "done"}]
    assert parser.ignored == 3
