"""`munsit-bridge check` renders every body template against a sample event: any error
exits 2 naming the subscriber and the template line; a syntax error stops `run` too."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main
from bridge.deliver.templates.pool import POOL, RENDER_LIMIT_S
from tests.integration.helpers import bridge_process

ON = " (on a sample denoise.completed)"  # the sample event a template failed on
SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def subscriber(sid: str, template: str, *extra: str) -> str:
    lines = [
        f'id = "{sid}"', 'url = "https://example.com/hook"', 'format = "template"',
        f"template = {toml_string(template)}", *extra,
    ]  # fmt: skip
    return "[[subscribers]]\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, *subs: str) -> Path:
    path = tmp_path / "bridge.toml"
    url = f"sqlite:///{tmp_path / 'state' / 'b.db'}"
    path.write_text(f'[upstream]\napi_key = "k"\n[store]\nurl = "{url}"\n' + "".join(subs))
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(["check", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, [line.strip() for line in err.splitlines()]


GOOD = '{"event": {{ event.type | tojson }},\n "job": {{ event.data | tojson }}}'


def test_good_templates_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subs = (
        subscriber("n8n", GOOD),
        subscriber("form", "id={{ event.data.id | urlencode }}", 'content_type = "text/plain"'),
    )
    code, out, err = check(write(tmp_path, *subs), capsys)
    assert (code, err) == (0, [])
    assert "config ok: subscribers: n8n, form" in out
    assert POOL.pids() == []  # the workers that rendered them are ended


ESCAPES = [
    "{{ event.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ self.__dict__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ event.data.items.__self__ }}",
]


def test_sandbox_escapes_exit_2_naming_subscriber_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subs = [subscriber("ok", GOOD)]
    subs += [
        subscriber(f"esc{i}", "{\n" * (i + 1) + escape, 'content_type = "text/plain"')
        for i, escape in enumerate(ESCAPES)
    ]
    code, out, err = check(write(tmp_path, *subs), capsys)
    assert code == 2, err
    assert "config ok" not in out
    assert err[0] == "munsit-bridge: invalid configuration:"
    problems = err[1:]
    assert len(problems) == len(ESCAPES)
    for i, line in enumerate(problems):
        prefix = f"subscribers[{i + 1}] (esc{i}): template line {i + 2}: access to attribute "
        assert line.startswith(prefix) and line.endswith("is unsafe." + ON), line
    assert not (tmp_path / "state").exists()


def test_runtime_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subs = (
        subscriber("n8n", '{\n  "a": 1,\n  "b": {{ event.data.foo }}\n}'),
        subscriber("notjson", '{"job": {{ event.data.status }}}'),
        subscriber("slow", SLOW, 'content_type = "text/plain"'),
        subscriber("json2", "hello", 'content_type = "application/vnd.api+json"'),
        subscriber("fine", "hello", 'content_type = "text/plain"'),
    )
    code, _, err = check(write(tmp_path, *subs), capsys)
    assert code == 2
    assert err[1:] == [
        "subscribers[0] (n8n): template line 3: 'dict object' has no attribute 'foo'" + ON,
        "subscribers[1] (notjson): template: the result is not JSON: "
        "Expecting value: line 1 column 9 (char 8)" + ON,
        f"subscribers[2] (slow): template: rendering took longer than {RENDER_LIMIT_S:g} s" + ON,
        "subscribers[3] (json2): template: the result is not JSON: "
        "Expecting value: line 1 column 1 (char 0)" + ON,
    ]
    assert POOL.pids() == []  # the workers that rendered them are ended


async def test_a_syntax_error_stops_check_and_run(tmp_path: Path) -> None:
    path = write(tmp_path, subscriber("n8n", '{\n  "a": {{ event.id | tojson }},\n  "b": {{ }}\n}'))
    expected = "subscribers[0].template: template line 3: Expected an expression"
    for command in ("check", "run"):
        proc = await bridge_process(
            command, "--config", str(path), stdout=-1, stderr=-1, env={"HOME": str(tmp_path)}
        )
        _, err = await proc.communicate()
        assert proc.returncode == 2, (command, err)
        assert expected in err.decode(), err.decode()
    assert not (tmp_path / "state").exists()
