"""The process body templates render in (started by `pool`): one request at a time, each
template compiled once, rendered in the sandbox, answered as JSON (`{"text": …}` or
`{"error": "template line N: …"}`), never as a pickled object.

Its address space is capped at `MAX_MEMORY_BYTES`, so a template that builds a huge value
fails with a `MemoryError` here. It ends on the end of its pipe (its parent closed it or is
gone), and an alarm ends it should one render outlast `backstop_s`: its parent kills it long
before, unless the parent is gone. It imports the sandbox and Jinja2, nothing more.
"""

from __future__ import annotations

import json
import resource
import signal
from multiprocessing.connection import Connection
from typing import Any

from bridge.deliver.templates.sandbox import MAX_MEMORY_BYTES, compiled, problem, render

READY = b"ready"  # sent once the worker has started, before its first request


def answer(request: bytes) -> dict[str, Any]:
    """`[source, content_type, context]` (JSON) rendered: `{"text": body}` or `{"error": why}`."""
    try:
        source, content_type, context = json.loads(request)
        return {"text": render(compiled(source), context, content_type)}
    except Exception as exc:  # a TemplateError already; anything else said the same way
        return {"error": str(problem(exc))}


def cap_memory(limit: int = MAX_MEMORY_BYTES) -> None:
    """This process's address space at most `limit` (or the lower limit it already has)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def serve(conn: Connection, backstop_s: float) -> None:
    """The worker's loop, until the parent's end of the pipe is closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the parent's
    cap_memory()
    conn.send_bytes(READY)
    while True:
        try:
            request = conn.recv_bytes()
        except EOFError:
            return
        signal.setitimer(signal.ITIMER_REAL, backstop_s)  # SIGALRM's default: the process ends
        reply = answer(request)
        signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send_bytes(json.dumps(reply).encode())
