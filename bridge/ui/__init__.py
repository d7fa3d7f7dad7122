"""The operator's dashboard under `/ui/`: server-rendered pages over the running bridge's
`Host` (`request.app[HOST]`): every page and form calls `host.ops`, the overview also
`host.readiness()`; nothing here reads the store, the dispatcher or the poller.

`setup(app)` adds the routes to the admin app `create_app` built. The admin API's guard
takes only JSON bodies, so `/ui` requests are answered by `guard.ui_guard`, put in front of
the app's middlewares: the same Host and Origin rules (the guard's own functions), a session
cookie when `admin.token` is set, and every POST from our own Origin or Referer only. The
security headers are set as each `/ui` response is prepared, the event stream's too.
"""

from __future__ import annotations

from bridge.ui.routes import setup

__all__ = ["setup"]
