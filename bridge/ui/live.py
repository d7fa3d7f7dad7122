"""`GET /ui/stream`: the admin API's event stream (`/api/stream`) behind the dashboard's
session, for the pages that update themselves (`ui.js`)."""

from __future__ import annotations

from aiohttp import web


async def stream(request: web.Request) -> web.StreamResponse:
    """The same Server-Sent Events as `/api/stream` (`?after=`, `Last-Event-ID`, `?type=`),
    answered by the admin feed's own handler; the session and Origin were checked by
    `ui_guard`, the security headers are set as the response is prepared."""
    from bridge.admin import feed  # here: the admin app imports the dashboard

    return await feed.stream(request)
