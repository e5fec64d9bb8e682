"""What a trusted reverse proxy says about the client: its scheme and address.

Behind the documented TLS proxy the service hears plain http, so without this a session cookie
would never be `Secure`. `X-Forwarded-Proto` and `X-Forwarded-For` are believed only from the
addresses in TRUSTED_PROXIES: from anyone else they would let a client claim https, or another
address (its rate-limit bucket).
"""

from __future__ import annotations

import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


class ForwardedFromTrustedProxies:
    """ASGI, in front of the app: the scheme and client a trusted proxy forwarded."""

    def __init__(self, app: Any, trusted: tuple[Network, ...]):
        self.app = app
        self.trusted = trusted

    def _trusted(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.trusted and self._trusted(scope):
            headers = dict(scope.get("headers", ()))
            scope = dict(scope)
            proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1")
            # The first value is the scheme the client used with the first proxy.
            proto = proto.split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto
            forwarded_for = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            # The last entry is what our proxy saw; earlier ones the client could have written.
            last = forwarded_for.split(",")[-1].strip()
            try:
                scope["client"] = (str(ipaddress.ip_address(last)), 0)
            except ValueError:
                pass
        await self.app(scope, receive, send)
