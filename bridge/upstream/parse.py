"""What Munsit's bytes mean: list answers and progress streams, read by pure functions that
return what they could read or raise `UpstreamProtocolError`, never anything else.

A list answer is refused whole when it is not a JSON array, nests deeper than `MAX_DEPTH`
or holds more than `MAX_VALUES` values (memory: parsed JSON takes many times its size).
Inside an array, an item that cannot be stored or delivered as sent (not a record, a missing
or mistyped field, a lone surrogate or invalid UTF-8 in any string, NaN or a number beyond a
double, an id seen before in the same answer) is quarantined alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import orjson

from bridge.errors import UpstreamProtocolError
from bridge.models import Page, Quarantined, Record, id_problem, record_problem

MAX_DEPTH = 64
MAX_VALUES = 250_000
MAX_SSE_MESSAGE_BYTES = 64 * 1024
LABEL_CHARS = 80

# a JSON string, or an unterminated one up to the end (possessive: linear time on any input)
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")
_EOL = re.compile(rb"\r\n|\r|\n")


class _Huge:
    """A JSON number beyond a double's range, as the fallback parser reads it."""

    def __repr__(self) -> str:
        return "<number beyond a double>"


HUGE = _Huge()


def check_shape(
    body: bytes | bytearray, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> str:
    """'' if `body` may be parsed safely, else why not: too deeply nested (or its brackets do
    not match), or too many values. Counts what lies outside strings, at C speed."""
    skeleton = _STRING.sub(b'"', body)
    values = sum(skeleton.count(c) for c in (b",", b":", b"[", b"{"))
    if values > max_values:
        return f"holds more than {max_values:,} JSON values"
    brackets = skeleton.translate(None, _NOT_BRACKET)
    for _ in range(max_depth):  # each round takes away exactly one level of nesting
        if not brackets:
            return ""
        inner = _INNERMOST.sub(b"", brackets)
        if len(inner) == len(brackets):
            break  # brackets that do not match: malformed, said here as nesting is checked
        brackets = inner
    return f"is malformed or nests deeper than {max_depth} levels" if brackets else ""


def load_json(
    body: bytes | bytearray, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> Any:
    """The JSON value of `body`; ValueError with a short reason if it cannot be read.

    orjson first (fast and strict). What it refuses is read again by the standard library
    with invalid UTF-8 kept as lone surrogates, NaN and infinities as floats and numbers
    beyond a double as `HUGE`: `flaw()` finds those in the value, so that only the items
    holding them are refused, not the whole answer.
    """
    shape = check_shape(body, max_depth=max_depth, max_values=max_values)
    if shape:
        raise ValueError(shape)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    text = bytes(body).decode("utf-8", "surrogateescape")
    try:
        return json.loads(text, parse_int=_int)
    except RecursionError as exc:  # not reached after check_shape; never let one escape
        raise ValueError("nests too deeply") from exc
    except ValueError as exc:
        raise ValueError(f"malformed JSON: {str(exc)[:120]}") from exc


def _int(text: str) -> Any:
    """As orjson reads integers: exact within 64 bits, else a float, else `HUGE`."""
    if len(text) > 330:  # no leading zeros in JSON: far beyond a double
        return HUGE
    value = int(text)
    if -(2**63) <= value < 2**64:
        return value
    try:
        return float(value)
    except OverflowError:
        return HUGE


def flaw(value: Any) -> str | None:
    """Why a parsed value cannot be stored or delivered as sent, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return "a string that is not valid Unicode (a lone surrogate or invalid UTF-8)"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "a number that is NaN or infinite"
        elif item is HUGE:
            return "a number beyond the range of a double"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str, limit: int = LABEL_CHARS) -> str:
    """`text` safe for any log or answer: escapes for what is not printable, cut short."""
    shown = ascii(text)[1:-1] if not text.isprintable() or not text.isascii() else text
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def parse_list(
    body: bytes | bytearray,
    *,
    offset: int = 0,
    max_depth: int = MAX_DEPTH,
    max_values: int = MAX_VALUES,
) -> Page:
    """The records of a `GET /denoise` answer, bad items quarantined; UpstreamProtocolError
    when the answer as a whole cannot be read."""
    what = f"GET /denoise?offset={offset}"
    try:
        data = load_json(body, max_depth=max_depth, max_values=max_values)
    except ValueError as exc:
        raise UpstreamProtocolError(f"{what} returned malformed JSON: {exc}", status=200) from exc
    if not isinstance(data, list):
        raise UpstreamProtocolError(
            f"{what} returned a JSON {type(data).__name__}, expected an array of records",
            status=200,
        )
    records: list[Record] = []
    quarantined: list[Quarantined] = []
    kept: set[str] = set()
    for index, item in enumerate(data):
        reason = record_problem(item) or flaw(item)
        if reason is None and item["id"] in kept:
            reason = "the same id again in one answer (the first is kept)"
        if reason is not None:
            quarantined.append(_quarantined(item, offset + index, reason))
            continue
        kept.add(item["id"])
        records.append(Record(item["id"], item["status"], item["created_at"], item))
    return Page(records, size=len(data), quarantined=quarantined)


def _quarantined(item: Any, position: int, reason: str) -> Quarantined:
    rid = item.get("id") if isinstance(item, dict) else None
    if isinstance(rid, str) and rid:
        record_id = rid if id_problem(rid) is None and _encodable(rid) else None
        identity = "id:" + ascii(rid)
        return Quarantined(position, printable(rid), record_id, reason, _key(identity, reason))
    return Quarantined(position, "", None, reason, _key("item:" + ascii(item), reason))


def _key(identity: str, reason: str) -> str:
    return hashlib.sha256(f"{identity}\x00{reason}".encode()).hexdigest()


def error_text(body: bytes | bytearray) -> str:
    """A short, printable text of an error answer: Munsit's `errorCode errorMessage`, or the
    start of the body."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "errorMessage" in data:
        return printable(f"{data.get('errorCode')} {data['errorMessage']}", 200)
    return printable(body[:200].decode("utf-8", "replace"), 200)


class SseParser:
    """Server-Sent Events, fed chunk by chunk: `feed()` returns the JSON objects of the
    messages its chunk completed. A line or a message over `max_bytes` raises
    `UpstreamProtocolError`; data that is not a sound JSON object is skipped and counted in
    `ignored`."""

    def __init__(self, *, max_bytes: int = MAX_SSE_MESSAGE_BYTES) -> None:
        self._max = max_bytes
        self._line = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._after_cr = False  # the last chunk ended with CR: a LF opening the next ends nothing
        self.ignored = 0

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        start = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        self._after_cr = False
        for end in _EOL.finditer(chunk, start):
            self._line += chunk[start : end.start()]
            self._check_line()
            message = self._end_line(bytes(self._line))
            self._line.clear()
            if message is not None:
                messages.append(message)
            start = end.end()
            self._after_cr = end.group() == b"\r" and start == len(chunk)
        self._line += chunk[start:]
        self._check_line()
        return messages

    def _check_line(self) -> None:
        if len(self._line) > self._max:
            raise UpstreamProtocolError(f"a progress stream line over {self._max:,} bytes")

    def _end_line(self, line: bytes) -> dict[str, Any] | None:
        if not line:  # a blank line ends the message (none without data, as in the spec)
            data, self._data, self._size = b"\n".join(self._data), [], 0
            return self._message(data) if data else None
        name, _, value = line.partition(b":")
        if name != b"data":  # comments, `event`, `id`, `retry`: nothing the bridge uses
            return None
        value = value.removeprefix(b" ")
        self._size += len(value) + 1
        if self._size > self._max:
            raise UpstreamProtocolError(f"a progress message over {self._max:,} bytes")
        self._data.append(value)
        return None

    def _message(self, data: bytes) -> dict[str, Any] | None:
        try:
            value = load_json(data)
        except ValueError:
            value = None
        if isinstance(value, dict) and flaw(value) is None:
            return value
        self.ignored += 1
        return None
