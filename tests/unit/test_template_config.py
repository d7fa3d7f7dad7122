"""The template keys of a `[[subscribers]]` table, through `load_settings`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError

HEAD = '[upstream]\napi_key = "k"\n[[subscribers]]\nid = "hook"\nurl = "https://example.com/h"\n'


def load(tmp_path: Path, *lines: str) -> Settings:
    path = tmp_path / "conf" / "bridge.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(HEAD + "".join(f"{line}\n" for line in lines))
    return load_settings(path)


def problems(tmp_path: Path, *lines: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, *lines)
    return info.value.problems


def test_template_file_is_relative_to_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "hooks").mkdir(parents=True)
    (tmp_path / "conf" / "hooks" / "n8n.j2").write_text("{{ event.id | tojson }}\n")
    monkeypatch.chdir(tmp_path)  # not where the file is looked for
    settings = load(tmp_path, 'format = "template"', 'template_file = "hooks/n8n.j2"')
    [sub] = settings.subscribers
    assert sub.template_source == "{{ event.id | tojson }}\n"
    assert sub.media_type == "application/json" and sub.secret is None  # secret optional


def test_template_file_absolute(tmp_path: Path) -> None:
    template = tmp_path / "abs.j2"
    template.write_text("{{ event.type }}")
    settings = load(
        tmp_path, 'format = "template"', f'template_file = "{template}"',
        'content_type = "text/plain; charset=utf-8"',
    )  # fmt: skip
    [sub] = settings.subscribers
    assert sub.template_source == "{{ event.type }}"
    assert sub.media_type == "text/plain; charset=utf-8"


def test_template_file_missing_or_not_utf8(tmp_path: Path) -> None:
    assert problems(tmp_path, 'format = "template"', 'template_file = "gone.j2"') == [
        f"subscribers[0].template_file: cannot read {tmp_path / 'conf' / 'gone.j2'} "
        "(No such file or directory)"
    ]
    (tmp_path / "conf" / "latin1.j2").write_bytes("caf\xe9 {{ event.id }}".encode("latin-1"))
    assert problems(tmp_path, 'format = "template"', 'template_file = "latin1.j2"') == [
        f"subscribers[0].template_file: {tmp_path / 'conf' / 'latin1.j2'} is not UTF-8 text"
    ]


def test_syntax_errors_name_the_key_and_the_line(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "bad.j2").write_text('{\n  "a": {{ event.id | tojson }},\n  {% if %}\n}')
    [line] = problems(tmp_path, 'format = "template"', 'template_file = "bad.j2"')
    assert line.startswith("subscribers[0].template_file: template line 3: ")
    [line] = problems(tmp_path, 'format = "template"', 'template = """\nok\n{% if %}\n"""')
    assert line.startswith("subscribers[0].template: template line 2: Expected an expression")
    [line] = problems(tmp_path, 'format = "template"', 'template = "{{ event.id | nosuch }}"')
    assert line == "subscribers[0].template: template line 1: No filter named 'nosuch'."


def test_exactly_one_source_and_only_with_format_template(tmp_path: Path) -> None:
    assert problems(tmp_path, 'format = "template"') == [
        "subscribers[0].format: format 'template' needs template or template_file"
    ]
    assert problems(
        tmp_path, 'format = "template"', 'template = "x"', 'template_file = "x.j2"'
    ) == ["subscribers[0].template_file: cannot be combined with template: give one"]
    assert problems(tmp_path, 'format = "slack"', 'template = "x"') == [
        "subscribers[0].template: only with format 'template', not 'slack'"
    ]
    assert problems(tmp_path, 'format = "slack"', 'content_type = "text/plain"') == [
        "subscribers[0].content_type: only with format 'template', not 'slack'"
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"text/plain\\nX-A: 1"', "contains a line break"),
        ('"text/plain\\r"', "contains a line break"),
        ('"json"', "is not a media type"),
        ('"text/ plain"', "is not a media type"),
        ('"text/plain; charset"', "is not a media type"),
        ('""', "is not a media type"),
    ],
)
def test_bad_content_types(tmp_path: Path, value: str, reason: str) -> None:
    [line] = problems(tmp_path, 'format = "template"', 'template = "x"', f"content_type = {value}")
    assert line.startswith("subscribers[0].content_type: ") and reason in line


def test_good_content_types(tmp_path: Path) -> None:
    for value in ("application/x-www-form-urlencoded", 'text/plain; charset="utf-8"'):
        settings = load(
            tmp_path, 'format = "template"', 'template = "x"', f"content_type = '{value}'"
        )
        assert settings.subscribers[0].media_type == value
