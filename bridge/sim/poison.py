"""Poison for the simulator: raw answers that no real Munsit should send (invalid UTF-8, lone
surrogates, deep nesting, NaN, huge or endless bodies) and broken records that stay listed,
to prove the bridge survives them."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

POISON_ENDPOINTS = ("list", "progress")
BLOCK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Poison:
    """A raw 200 answer: each part written `times` times in turn, streamed, so a 100 MB or an
    endless answer (`times` huge) costs the simulator no memory."""

    parts: tuple[tuple[bytes, int], ...]
    content_type: str

    def blocks(self) -> Iterator[bytes]:
        """The body in writes of about `BLOCK_BYTES` (a one-byte part is not one write each)."""
        for part, times in self.parts:
            if not part or times <= 0:
                continue
            per_block = max(1, BLOCK_BYTES // len(part))
            block = part * per_block
            full, rest = divmod(times, per_block)
            for _ in range(full):
                yield block
            if rest:
                yield part * rest


def make_poison(
    body: bytes | Sequence[tuple[bytes, int]], endpoint: str, content_type: str | None
) -> Poison:
    if endpoint not in POISON_ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r} (known: {', '.join(POISON_ENDPOINTS)})")
    parts = ((body, 1),) if isinstance(body, bytes) else tuple(body)
    if any(times < 0 for _, times in parts):
        raise ValueError("times must be >= 0")
    default = "application/json" if endpoint == "list" else "text/event-stream"
    return Poison(parts, content_type or default)


async def serve(request: web.Request, poison: Poison, closing: Any) -> web.StreamResponse:
    """Write `poison` as the answer until it ends, the client hangs up or the app closes."""
    response = web.StreamResponse(headers={"Content-Type": poison.content_type})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hung up, as it should
        for block in poison.blocks():
            transport = request.transport
            if closing.is_set() or transport is None or transport.is_closing():
                return response
            await response.write(block)
        await response.write_eof()
    return response


def list_body(raw: Sequence[bytes], rows: Sequence[dict[str, Any]]) -> bytes:
    """A list answer of raw record texts, then well-formed records."""
    items = [*raw, *(json.dumps(row).encode() for row in rows)]
    return b"[" + b",".join(items) + b"]"


def payload(spec: Any) -> bytes:
    """The bytes a control request describes: `{"text": "…"}` as UTF-8 (a lone surrogate as
    its three invalid bytes; write `\\ud800` for the JSON escape itself), or `{"b64": "…"}`."""
    if not isinstance(spec, dict):
        raise ValueError("each part must be an object with 'text' or 'b64'")
    if isinstance(spec.get("b64"), str):
        try:
            return base64.b64decode(spec["b64"], validate=True)
        except binascii.Error as exc:
            raise ValueError("b64 is not valid base64") from exc
    if isinstance(spec.get("text"), str):
        return str(spec["text"]).encode("utf-8", "surrogatepass")
    raise ValueError("each part must be an object with 'text' or 'b64'")


def parts(body: dict[str, Any]) -> list[tuple[bytes, int]]:
    """The `parts` of a `/_sim/poison` request: `[{"text" | "b64": …, "times": n}, …]`."""
    specs = body.get("parts")
    if not isinstance(specs, list) or not specs:
        raise ValueError("parts must be a non-empty list")
    out = []
    for spec in specs:
        times = spec.get("times", 1) if isinstance(spec, dict) else 1
        if not isinstance(times, int) or isinstance(times, bool) or times < 0:
            raise ValueError("times must be an integer >= 0")
        out.append((payload(spec), times))
    return out
