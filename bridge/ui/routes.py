"""The dashboard's routes: pages (`pages`), forms (`actions`), the live stream (`live`),
login (`login`), all behind `guard.ui_guard`."""

from __future__ import annotations

from aiohttp import web

from bridge.ui import actions, live, login, pages
from bridge.ui.guard import security_headers, ui_guard
from bridge.ui.render import SESSIONS, TEMPLATES, templates
from bridge.ui.session import Sessions


def setup(app: web.Application) -> None:
    """Add the dashboard to the admin app `create_app` built (before it starts); the app
    holds the running bridge's `Host` under `HOST`."""
    if TEMPLATES in app:  # already added
        return
    app[TEMPLATES] = templates()
    app[SESSIONS] = Sessions()
    app.middlewares.insert(0, ui_guard)
    app.on_response_prepare.append(security_headers)
    r = app.router
    r.add_get("/ui", login.to_overview)
    r.add_get("/ui/", pages.overview)
    r.add_get("/ui/login", login.login_form)
    r.add_post("/ui/login", login.login)
    r.add_post("/ui/logout", login.logout)
    r.add_get("/ui/static/{name}", login.static)
    r.add_get("/ui/stream", live.stream)
    r.add_get("/ui/subscribers", pages.subscribers)
    r.add_post("/ui/subscribers/{id}/{action:enable|disable|test}", actions.subscriber_action)
    r.add_get("/ui/deliveries", pages.deliveries)
    r.add_post("/ui/deliveries/retry-failed", actions.retry_failed)
    r.add_get("/ui/deliveries/{id}", pages.delivery)
    r.add_post("/ui/deliveries/{id}/retry", actions.retry)
    r.add_get("/ui/events", pages.events)
    r.add_post("/ui/replay", actions.replay)
