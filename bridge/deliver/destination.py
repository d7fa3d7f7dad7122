"""Before any request: would the SSRF guard refuse a destination? A literal address in a
refused range, or a name that resolves only to refused addresses (or not at all). Used by
`check` for subscribers and by the gateway for callback URLs; the guard itself still checks
every address at connect time."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import NamedTuple

from bridge.deliver.guard import forbidden_reason

RESOLVE_TIMEOUT_S = 3.0


class Refusal(NamedTuple):
    """Why: `text` follows the host name (`is a loopback address`, `does not resolve …`);
    `refused` is True when the guard refuses the addresses (not a resolution failure)."""

    text: str
    refused: bool


async def refusal(
    host: str, port: int, *, allow_private: bool, timeout_s: float = RESOLVE_TIMEOUT_S
) -> Refusal | None:
    """Why deliveries to `host` would fail before a request is sent, or None. With
    `allow_private` addresses are not refused, but a name must still resolve."""
    try:
        literal = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        literal = None
    if literal is not None:
        reason = None if allow_private else forbidden_reason(literal)
        return Refusal(f"is a {reason} address", True) if reason else None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        return Refusal(f"did not resolve within {timeout_s:g} s", False)
    except OSError as exc:
        return Refusal(f"does not resolve ({exc.strerror or exc})", False)
    if allow_private:
        return None
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    found = {ip: forbidden_reason(ip) for ip in addresses}
    if not addresses or not all(found.values()):
        return None
    shown = ", ".join(f"{ip} ({why})" for ip, why in sorted(found.items(), key=str))
    return Refusal(f"resolves only to refused addresses: {shown}", True)
