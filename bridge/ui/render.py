"""What every dashboard page shares: the app keys, the templates, rendering and redirects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from bridge.admin.host import HOST, Host
from bridge.ui.session import COOKIE, Sessions

HERE = Path(__file__).parent
SESSIONS = web.AppKey("ui_sessions", Sessions)
TEMPLATES = web.AppKey("ui_templates", jinja2.Environment)


def _when(value: object) -> str:
    """A time as the views give it (ISO 8601 text) or None."""
    return "—" if value is None or value == "" else str(value)


def templates() -> jinja2.Environment:
    """The pages' templates, every value escaped."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    return env


def host(request: web.Request) -> Host:
    """The running bridge as the admin app knows it: settings, clock, `ops`, readiness."""
    return request.app[HOST]


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def logged_in(request: web.Request) -> bool:
    admin = host(request).settings.admin
    return admin.token is None or request.app[SESSIONS].valid(request.cookies.get(COOKIE))


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    template = request.app[TEMPLATES].get_template(name)
    context.setdefault("notice", None)
    context.setdefault("error", None)
    context.setdefault("live", None)
    html = template.render(
        path=request.path,
        login_needed=host(request).settings.admin.token is not None,
        logged_in=logged_in(request),
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
