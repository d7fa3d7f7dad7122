"""Logging in and out, and the dashboard's two static files."""

from __future__ import annotations

from aiohttp import web

from bridge.ui.render import HERE, SESSIONS, host, redirect, render
from bridge.ui.session import COOKIE, SESSION_S, is_https, token_matches

STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}


async def to_overview(request: web.Request) -> web.Response:
    return redirect("/ui/")


async def login_form(request: web.Request) -> web.Response:
    if host(request).settings.admin.token is None:
        return redirect("/ui/")
    return render(request, "login.html", title="Log in")


async def login(request: web.Request) -> web.Response:
    admin = host(request).settings.admin
    if admin.token is None:
        return redirect("/ui/")
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not token_matches(given, admin):
        return render(request, "login.html", 401, title="Log in", error="wrong token")
    response = redirect("/ui/")
    sessions = request.app[SESSIONS]
    sessions.drop(request.cookies.get(COOKIE))
    response.set_cookie(
        COOKIE,
        sessions.create(),
        max_age=int(SESSION_S),
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].drop(request.cookies.get(COOKIE))
    response = redirect("/ui/login")
    response.del_cookie(COOKIE, path="/ui")
    return response


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound(text=f"no file {name!r}")
    body = (HERE / "static" / name).read_bytes()
    return web.Response(
        body=body,
        content_type=STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "max-age=300"},
    )
