"""What must never be written: the credential parts of a subscriber URL; a receiver that
tries to get them written, answering bytes that are not HTTP and quoting the request line it
got (as an echo service or a port running something else may); the store's files to search."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

TOKEN = "T0KEN-SECRET-123"  # where Slack, Discord and Zapier keep theirs: the path
QUERY = "QUERYSECRET"
PASSWORD = "PASSWORDSECRET"
SECRET_PARTS = (TOKEN, QUERY, PASSWORD)


def secret_url(port: int) -> str:
    """A webhook URL carrying a credential in its user-info, path and query."""
    return f"http://bridge:{PASSWORD}@127.0.0.1:{port}/hooks/{TOKEN}/x?sig={QUERY}"


def store_files(db: Path) -> list[str]:
    """The bytes of a SQLite store's files (the database, its -wal and -shm), as text."""
    return [p.read_bytes().decode("latin-1") for p in sorted(db.parent.glob(db.name + "*"))]


@dataclass
class GarbledReceiver:
    """Counts requests; answers each with a line of bytes no HTTP parser accepts."""

    request_lines: list[bytes] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            self.request_lines.append(line)
            writer.write(b"\x00\x01 not http; you sent: " + line + b"\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        """Listen on 127.0.0.1 in this event loop; yields the port."""
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[int]:
        """Listen on 127.0.0.1 from a thread of its own, for a synchronous caller."""
        ready = threading.Event()
        port: list[int] = []
        stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

        async def main() -> None:
            async with self.serving() as bound:
                done = asyncio.Event()
                port.append(bound)
                stop.append((asyncio.get_running_loop(), done))
                ready.set()
                await done.wait()

        thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        thread.start()
        assert ready.wait(10)
        try:
            yield port[0]
        finally:
            loop, done = stop[0]
            loop.call_soon_threadsafe(done.set)
            thread.join(10)
