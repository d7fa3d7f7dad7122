"""SSRF guard: refuse to connect to non-public addresses, checked on every resolved address at
connect time (a socket factory), so DNS answers and IP literals are both covered."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable

from aiohappyeyeballs import AddrInfoType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why a destination address is refused, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return f"{reason} (IPv4 inside IPv6)" if reason else None
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared (CGNAT)"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-global"),
    )
    return next((name for hit, name in checks if hit), None)


def guarded_socket_factory() -> Callable[[AddrInfoType], socket.socket]:
    """A socket factory for aiohttp's connector that refuses forbidden addresses."""

    def factory(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        ip = ipaddress.ip_address(sockaddr[0])
        reason = forbidden_reason(ip)
        if reason is not None:
            raise OSError(
                errno.EACCES,
                f"destination {ip} refused: {reason} address "
                "(set delivery.allow_private_destinations to allow it)",
            )
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        return sock

    return factory
