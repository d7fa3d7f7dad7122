"""The middleware in front of every `/ui` request, the security headers of its answers and
how the operations' errors become pages."""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.errors import RequestError, StoreError
from bridge.redact import redact_text
from bridge.ui.render import host, logged_in, redirect, render
from bridge.ui.session import Handler, refusal

log = structlog.get_logger("bridge.ui")

PUBLIC = frozenset({"/ui/login"})
STREAM = "/ui/stream"
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def is_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


@web.middleware
async def ui_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`/ui` requests are answered here, as HTML, past the API's JSON-only guard; the
    others go on to it."""
    if not is_ui(request.path):
        return await handler(request)
    refused = refusal(request, host(request).settings.admin)
    if refused is not None:
        return render(request, "error.html", 403, title="Refused", message=refused)
    if (
        request.path not in PUBLIC
        and not request.path.startswith("/ui/static/")
        and not logged_in(request)
    ):
        if request.path == STREAM:  # not a page: an EventSource gets no login form
            return web.Response(status=401, text="log in at /ui/login first")
        return redirect("/ui/login")
    return await answer(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every `/ui` answer, a page or the event stream (prepared by
    its handler, so the headers must be set before they are sent), gets the same headers."""
    if not is_ui(request.path):
        return
    request[PREPARED] = True
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"


PREPARED = web.RequestKey("ui_prepared", bool)  # its answer's headers are on their way


TITLES = {400: "Bad request", 404: "Not found", 409: "Conflict", 410: "Gone"}


async def answer(request: web.Request) -> web.StreamResponse:
    """The route's answer; an error as a page with its status code."""
    try:
        if (exc := request.match_info.http_exception) is not None:
            raise exc
        return await request.match_info.handler(request)
    except Exception as exc:
        if request.get(PREPARED):  # a stream already begun: nothing else can be sent
            raise
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise
        return failure(request, exc)


def failure(request: web.Request, exc: Exception) -> web.Response:
    """The error page for `exc`: an operation's error with its status (400, 404, 409, 410),
    the store's as 503, anything else a logged 500."""
    if isinstance(exc, RequestError):
        status = exc.status
        return render(request, "error.html", status, title=TITLES[status], message=str(exc))
    if isinstance(exc, StoreError):
        message = f"store unavailable: {redact_text(str(exc))}"
        log.error("dashboard request failed: store", path=request.path, error=message)
        return render(request, "error.html", 503, title="Store unavailable", message=message)
    if isinstance(exc, web.HTTPException):
        return render(request, "error.html", exc.status, title=exc.reason, message=exc.text or "")
    log.exception("dashboard request crashed", path=request.path)
    return render(request, "error.html", 500, title="Error", message="internal error (logged)")
