"""The operator's dashboard under `/ui/`: server-rendered pages over the running `Service`.

`setup(app)` adds the routes to the admin app `create_app` built. The admin API's guard
takes only JSON bodies, so `/ui` requests are answered by `ui_guard`, put in front of the
app's middlewares: the same Host and Origin rules (the guard's own functions), a session
cookie when `admin.token` is set, and every POST from our own Origin or Referer only.
"""

from __future__ import annotations

from bridge.ui.routes import setup

__all__ = ["setup"]
