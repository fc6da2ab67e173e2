"""Who is calling, by address (docs/api.md, Authentication): the one client address that auth and rate limiting share.

The address is the TCP peer. ``X-Forwarded-For`` is believed only when the peer is a configured trusted
proxy, and then only up to the right-most hop that is not itself a trusted proxy: everything left of
that was written by the client and proves nothing. A request from a trusted proxy without a usable hop
(no header, an empty or garbled one, or only proxies' addresses) comes from a client of unknown address,
never from the proxy itself: a stock ``proxy_pass`` that forgot the header would otherwise make every
internet client look like the (local) proxy. Only ``X-Forwarded-For`` is read; a proxy that sends only
``Forwarded`` is thus heard as unknown clients, which fails closed.

IPv4-mapped IPv6 peers (``::ffff:10.0.0.5`` from a dual-stack socket) are treated as the IPv4 address they
carry, so that IPv4 networks in the config apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from .config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLIENT: web.RequestKey[IPAddress | None] = web.RequestKey("client")  # None: unknown, treated as remote


def peer_address(host: str) -> IPAddress | None:
    """A socket's peer as an address; IPv4-mapped IPv6 as the IPv4 it carries (so IPv4 networks apply)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_ip(text: str) -> IPAddress | None:
    """An address as written by a socket or a proxy: plain, ``[v6]``, ``v4:port``, ``[v6]:port`` or with a zone."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        text = text.partition(":")[0]
    return peer_address(text)


def in_networks(addr: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    return addr is not None and any(addr.version == n.version and addr in n for n in networks)


def client_address(peer: str | None, forwarded_for: list[str],
                   trusted_proxies: Iterable[IPNetwork]) -> IPAddress | None:
    """The TCP peer, or, when the peer is a trusted proxy, the right-most forwarded hop that is not one.

    None (an unknown, remote client) when that hop is missing or garbled: falling back to the proxy's own
    address, or to a proxy named in the header, would make a request that went through a local proxy look
    local. The rate limiter keeps one bucket for all unknown clients.
    """
    addr = parse_ip(peer) if peer else None
    trusted = tuple(trusted_proxies)
    if not in_networks(addr, trusted):
        return addr
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        hop_addr = parse_ip(hop)
        if hop_addr is None:
            return None
        if not in_networks(hop_addr, trusted):
            return hop_addr
    return None  # no header, or only proxies in it: who sent the request is unknown


def setup(app: web.Application, trusted_proxies: tuple[IPNetwork, ...]) -> None:
    """Install the middleware that stores the client address under ``request[CLIENT]`` for later middlewares."""

    @web.middleware
    async def client_address_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CLIENT] = client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                                         trusted_proxies)
        return await handler(request)

    app.middlewares.append(client_address_middleware)
