"""Wake-ups for the pull feed's long polls and streams: no store access, no polling loop.

The service calls `stored()` when this process stored events (a poll, a progress event)
and, on PostgreSQL, when another replica says it did (NOTIFY `events`). A waiter takes
`changed()` *before* it reads the store, reads, and when it found nothing waits for that
event: a store between its read and its wait still wakes it. After a wake it reads the
store again (a wake-up says "look", never what is there). `close()` at shutdown wakes every
waiter for good, so open long polls answer and streams end at once.
"""

from __future__ import annotations

import asyncio


class FeedSignal:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.closed = False

    def changed(self) -> asyncio.Event:
        """Set at the next `stored()` (or `close()`) after this call."""
        return self._changed

    def stored(self) -> None:
        """Events were stored: wake everyone waiting."""
        if self.closed:
            return
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()
