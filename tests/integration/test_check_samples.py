"""`check` renders a body template against a sample of every event type its subscriber
gets, from an account it gets events of: a template right for what it receives passes, and
one that fails on any of it is named with the sample's type."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write(tmp_path: Path, template: str, *extra: str, accounts: bool = False) -> Path:
    path = tmp_path / "bridge.toml"
    head = '[upstream]\napi_key = "k"\n'
    if accounts:
        head += '[[accounts]]\nid = "acme"\napi_key = "k1"\n[[accounts]]\nid = "globex"\n'
        head += 'api_key = "k2"\n'
    sub = "\n".join(
        [
            "[[subscribers]]",
            'id = "hook"',
            'url = "https://example.com/hook"',
            'format = "template"',
            f"template = {toml_string(template)}",
            *extra,
        ]
    )
    path.write_text(head + f'[store]\nurl = "sqlite:///{tmp_path / "b.db"}"\n' + sub + "\n")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(path)])
    return code, [line.strip() for line in capsys.readouterr().err.splitlines()]


def test_a_progress_template_is_checked_on_a_progress_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = '{"pct": {{ event.data.pct | tojson }}}'
    assert check(write(tmp_path, template, 'events = ["denoise.progress"]'), capsys) == (0, [])
    # the same template for completions: a completed record has no pct
    code, err = check(write(tmp_path, template), capsys)
    assert code == 2 and any("(on a sample denoise.completed)" in line for line in err), err


def test_a_template_failing_only_on_failures_is_named_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = '{"url": {{ event.data.audio_url.upper() | tojson }}}'  # null on a failure
    code, err = check(write(tmp_path, template), capsys)
    assert code == 2
    [line] = [x for x in err if x.startswith("subscribers[0] (hook):")]
    assert line.endswith("(on a sample denoise.failed)"), line


def test_reports_are_checked_with_their_own_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = '{"who": {{ event.data.subscriber | tojson }}}'
    events = 'events = ["bridge.subscriber_disabled", "bridge.delivery_dead_lettered"]'
    assert check(write(tmp_path, template, events), capsys) == (0, [])


def test_the_sample_comes_from_an_account_the_subscriber_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = '{"team": {{ {"acme": "red", "globex": "blue"}[event.account] | tojson }}}'
    path = write(tmp_path, template, 'accounts = ["globex"]', accounts=True)
    assert check(path, capsys) == (0, [])
    path = write(tmp_path, template, accounts=True)  # every account: the first one's sample
    assert check(path, capsys) == (0, [])


def test_a_record_first_seen_finished_is_a_sample_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job that finished between two polls is announced with `previous_status` null."""
    template = '{"was": {{ event.previous_status.upper() | tojson }}}'
    code, err = check(write(tmp_path, template), capsys)
    assert code == 2 and any("has no attribute 'upper'" in line for line in err), err
