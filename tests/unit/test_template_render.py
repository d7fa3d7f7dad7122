"""Body templates rendered for real (in the worker processes): exact bytes, the sandbox, the
caps, the time limit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bridge.config import SubscriberConfig
from bridge.deliver import formats
from bridge.deliver.templates import pool, worker
from bridge.deliver.templates.body import body_for, context, render_template, why
from bridge.deliver.templates.sandbox import MAX_BODY_BYTES, compiled, render
from bridge.examples import EXAMPLE
from bridge.models import COMPLETED, TEST, Event

AWKWARD = 'say "hi" <b>&amp;</b> — ümlaut\nnext line'
EVENT = Event(
    id="evt_0123",
    type=COMPLETED,
    record_id="acme/rec-1",
    occurred_at=1795460400.456,
    previous_status="pending",
    data={"id": "rec-1", "status": "success", "file_name": AWKWARD, "audio_duration": 93.4},
)


def run(source: str, event: Event = EVENT, content_type: str = "text/plain") -> str:
    return asyncio.run(render_template(source, event, content_type, "test"))


def failure(source: str, event: Event = EVENT, content_type: str = "text/plain") -> str:
    with pytest.raises(Exception) as info:
        run(source, event, content_type)
    return why(info.value)


def test_known_answer_exact_bytes() -> None:
    source = (
        '{"event": {{ event.type | tojson }}, "at": {{ event.timestamp | tojson }},\n'
        ' "account": {{ event.account | tojson }}, "record": {{ event.record_id | tojson }},\n'
        ' "name": {{ event.data.file_name | tojson }}, "secs": {{ event.data.audio_duration }},\n'
        ' "was": {{ event.previous_status | tojson }}, "id": "{{ event.id }}"}\n'
    )
    text = run(source, content_type="application/json")
    assert (
        text.encode()
        == (
            '{"event": "denoise.completed", "at": "2026-11-23T19:00:00.456Z",\n'
            ' "account": "acme", "record": "acme/rec-1",\n'
            ' "name": "say \\"hi\\" <b>&amp;</b> — ümlaut\\nnext line", "secs": 93.4,\n'
            ' "was": "pending", "id": "evt_0123"}'
        ).encode()
    )
    assert json.loads(text)["name"] == AWKWARD  # the value comes back whole


def test_body_tojson_reproduces_the_standard_body() -> None:
    text = run("{{ body | tojson }}", content_type="application/json")
    assert json.loads(text) == formats.standard_body(EVENT)
    assert text == json.dumps(
        formats.standard_body(EVENT), ensure_ascii=False, separators=(",", ":")
    )


def test_bridge_events_have_no_account() -> None:
    event = Event("evt_t", TEST, "rec-1", 0.0, "pending", {"id": "rec-1"})
    assert run("{{ event.account | tojson }}", event) == "null"
    assert context(event)["event"]["account"] is None


def test_context_is_plain_values() -> None:
    values = context(EVENT)
    assert set(values) == {"event", "body"}
    assert set(values["event"]) == {
        "id", "type", "timestamp", "previous_status", "account", "record_id", "data"
    }  # fmt: skip

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return value is None or isinstance(value, str | int | float | bool)

    assert plain(values)


ESCAPES = [
    ("{{ event.__class__ }}", "'__class__'"),
    ("{{ ''.__class__.__mro__ }}", "'__class__'"),
    ("{{ cycler.__init__.__globals__ }}", "'__init__'"),
    ("{{ joiner.__init__.__globals__ }}", "'__init__'"),
    ("{{ namespace.__init__ }}", "'__init__'"),
    ("{{ self.__dict__ }}", "'__dict__'"),
    ("{{ lipsum.__globals__ }}", "'__globals__'"),
    ("{{ event.data.items.__self__ }}", "'__self__'"),
    ("{{ event.data.items().__class__ }}", "'__class__'"),
    ("{% if event.__class__ %}yes{% endif %}", "'__class__'"),
    ("{{ event.data.items.__self__.__class__ | string }}", "'__class__'"),
    ("{% for k in event.__class__ %}{{ k }}{% endfor %}", "'__class__'"),
]


@pytest.mark.parametrize(("source", "attribute"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_sandbox_escapes_are_errors_not_empty_output(source: str, attribute: str) -> None:
    error = failure("line one\n" + source)
    assert error.startswith("template line 2: access to attribute ")
    assert attribute in error and "is unsafe" in error


MUTATIONS = [
    ("{% set l = [] %}{{ l.append(1) }}", "'append' of 'list'"),
    (
        "{% set l = [0] %}{% set _ = l.extend([1] * 1000000) %}{{ l | length }}",
        "'extend' of 'list'",
    ),
    ("{% set d = {} %}{% set _ = d.update({'a': 1}) %}{{ d }}", "'update' of 'dict'"),
    ("{% set d = {'a': 1} %}{{ d.setdefault('b', 2) }}", "'setdefault' of 'dict'"),
    ("{{ event.data.pop('id') }}", "'pop' of 'dict'"),
    ("{% set l = [1] %}{% set _ = l.insert(0, 2) %}{{ l }}", "'insert' of 'list'"),
]


@pytest.mark.parametrize(("source", "what"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_lists_and_dicts_cannot_change_in_place(source: str, what: str) -> None:
    error = failure(source)
    assert error.startswith("template line 1: access to attribute ") and what in error, error


def test_a_list_grown_by_extend_past_the_caps_is_refused() -> None:
    """`extend` bypassed the size caps: twenty of a million items made a 20 M item list."""
    source = (
        "{% set big = [0] * 1000000 %}{% set l = [] %}{% for i in range(20) %}"
        "{% set _ = l.extend(big) %}{% endfor %}{{ l | length }}"
    )
    assert failure(source).startswith("template line 1: access to attribute 'extend' of 'list'")


def test_the_documented_ways_still_work() -> None:
    """`namespace` assignment, `.get`, `default(none)`, `urlencode` and building new values."""
    source = (
        "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% endfor %}"
        "{{ ns.n }} {{ event.data.get('nope') | tojson }} {{ event.data.nope | default(none) }}"
        " {{ (event.data.id ~ '&x') | urlencode }} {{ ([1] + [2]) | tojson }}"
        " {{ dict(event.data, extra=1) | length }} {{ event.data.items() | list | length }}"
    )
    assert run(source) == "10 null None rec-1%26x [1,2] 5 4"


def test_missing_key_is_an_error_naming_it() -> None:
    assert failure("a\nb\n{{ event.data.nope }}") == (
        "template line 3: 'dict object' has no attribute 'nope'"
    )
    assert failure("{{ nothing }}") == "template line 1: 'nothing' is undefined"


HUGE = [
    ("{{ 'x' * 10**10 }}", "the result of * is too large"),
    ("{{ [1] * 10**7 }}", "the result of * is too large"),
    ("{{ 10 ** (10 ** 10) }}", "is too large"),
    ("{{ (10 ** 15000) * (10 ** 15000) }}", "the product is too large"),
    ("{{ '%999999999d' % 1 }}", "a width in the format is too large"),
    ("{{ '%s' % (10 ** 9) }}", "the argument 1000000000 is too large"),
    ("{{ '{:>99999999}'.format(1) }}", "a width in the format is too large"),
    ("{{ 'x'.ljust(10 ** 10) }}", "the argument 10000000000 is too large"),
    ("{{ 'x' | center(10 ** 10) }}", "the argument 10000000000 is too large"),
    ("{{ 'x' | indent(10 ** 9) }}", "the argument 1000000000 is too large"),
    ("{% set a = 'x' * 100000 %}{{ a | replace('x', a) }}", "the result of replace is too large"),
    ("{% set a = 'x' * 1000000 %}{{ ([a] * 1000) | join }}", "the joined string is too large"),
    ("{% set a = 'x' * 1000000 %}{{ ''.join([a] * 1000) }}", "the joined string is too large"),
    ("{% set a = 'x' * 1000000 %}{{ a.replace('x', 'yy') }}", "the result of replace is too large"),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "the result of ~ is too large",
    ),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "the result of + is too large",
    ),
]


@pytest.mark.parametrize(("source", "reason"), HUGE, ids=[h[0] for h in HUGE])
def test_huge_values_are_refused_before_they_are_made(source: str, reason: str) -> None:
    error = failure(source)
    assert error.startswith("template line 1: ") and reason in error


def test_ordinary_arithmetic_and_formatting_still_work() -> None:
    source = "{{ '%.2f' % 3.14159 }} {{ '{:.1f}'.format(2.25) }} {{ 'ab' * 3 }} {{ 2 ** 10 }}"
    assert run(source + " {{ [1, 2] | join(',') }} {{ 'a' ~ 1 }}") == "3.14 2.2 ababab 1024 1,2 a1"


def test_output_is_capped() -> None:
    error = failure("{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}")
    assert error == f"template: the body is larger than {MAX_BODY_BYTES >> 20} MiB"


def test_a_json_type_needs_json() -> None:
    assert failure('{"a": {{ event.id }}}', content_type="application/json") == (
        "template: the result is not JSON: Expecting value: line 1 column 7 (char 6)"
    )
    assert failure("oops", content_type="application/cloudevents+json; charset=utf-8").startswith(
        "template: the result is not JSON: "
    )
    assert run('{"a": {{ event.id }}}', content_type="text/plain") == '{"a": evt_0123}'


def test_a_long_loop_is_stopped_at_the_limit() -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    assert failure(source) == (f"template: rendering took longer than {pool.RENDER_LIMIT_S:g} s")


def test_recursion_is_an_error() -> None:
    assert failure("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}") == (
        "template line 1: too deeply nested (recursion)"
    )


def test_compiled_once_per_source() -> None:
    """The worker's answer to a request, called here: the second compiles nothing."""
    source = "{{ event.id }} once"
    request = json.dumps([source, "text/plain", context(EVENT)]).encode()
    compiled.cache_clear()
    assert worker.answer(request) == {"text": "evt_0123 once"}
    assert worker.answer(request) == {"text": "evt_0123 once"}
    info = compiled.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_the_worker_answers_errors_as_plain_text() -> None:
    request = json.dumps(["a\n{{ event.data.nope }}", "text/plain", context(EVENT)]).encode()
    assert worker.answer(request) == {
        "error": "template line 2: 'dict object' has no attribute 'nope'"
    }


def test_body_for_a_template_subscriber_and_a_built_in_one() -> None:
    sub = SubscriberConfig(
        id="t", url="https://example.com/h", format="template",
        template="{{ event.record_id }}", content_type="text/plain",
    )  # fmt: skip
    body = asyncio.run(body_for(sub, EXAMPLE))
    assert (body.text, body.content_type) == (EXAMPLE.record_id, "text/plain")
    std = SubscriberConfig(id="s", url="https://example.com/h", format="slack")
    body = asyncio.run(body_for(std, EXAMPLE))
    assert (body.text, body.content_type) == (formats.render(EXAMPLE, "slack"), "application/json")


def test_sync_render_known_answer() -> None:
    template = compiled("{{ event.data.file_name | tojson }}")
    assert render(template, context(EVENT), "application/json") == json.dumps(
        AWKWARD, ensure_ascii=False
    )
