"""Caps on what WebSocket clients subscribe to (log streams, live stats): the one counting both share.

A subscription costs the daemon work for as long as it lasts, so it is bounded three ways:
- per connection (``per_connection``, passed at each check: the feature owns that figure);
- for the whole daemon (``total``), of which ``local_reserve`` only local clients may use;
- per remote holder: each client address (an IPv6 /64, like the rate limits) and each token subject holds
  at most ``remote_share`` = max(``REMOTE_SHARE_MIN``, total / 8). Without that, one read token from one
  address, over 32 connections, held all 1,024 log streams and the owner got none.
Over a cap the subscribe is refused with ``TOO_MANY_SUBSCRIPTIONS``: 429 when the client can make room
itself (its connection, its share), 503 when the daemon is full.
"""

from __future__ import annotations

from collections.abc import Hashable

from aiohttp import web

from .auth import PRINCIPAL
from .errors import ApiError
from .ratelimit import client_key
from .realip import CLIENT

REMOTE_SHARE_MIN = 32
LOCAL_RESERVE_FRACTION = 8

# What a remote subscription counts against: ("address", client key) and ("subject", token subject).
# A local client's holder is empty: it is bounded by the daemon-wide cap only.
Holder = tuple[tuple[str, Hashable], ...]
LOCAL: Holder = ()


def holder_of(request: web.Request, subject: str | None) -> Holder:
    """Who a client's subscriptions and streams (WebSocket or HTTP) count against. By address, because that
    is what one attacker cannot multiply cheaply (like the rate limits and the connection cap); and by token
    subject too, because a token is what the owner handed out, and one token used from many addresses is
    still one grant."""
    principal = request.get(PRINCIPAL)
    if principal is not None and principal.local:
        return LOCAL
    return (("address", client_key(request.get(CLIENT))), ("subject", subject))


class Caps:
    """The counts of one kind of subscription. ``unit`` names it in the errors ("log streams");
    ``per_connection_unit`` names what one connection holds ("log subscriptions")."""

    def __init__(self, total: int, unit: str, per_connection_unit: str | None = None) -> None:
        self.total = total
        self.unit = unit
        self.per_connection_unit = per_connection_unit or unit
        self.local_reserve = max(1, total // LOCAL_RESERVE_FRACTION)
        self.remote_share = max(1, min(max(REMOTE_SHARE_MIN, total // 8), total - self.local_reserve))
        self.active = 0
        self._held: dict[tuple[str, Hashable], int] = {}  # per holder part; ("remote", None): all remote

    def check(self, holder: Holder, *, connection_holds: int, per_connection: int, more: int = 1) -> None:
        """Room for ``more`` subscriptions of a connection that holds ``connection_holds``, else ApiError."""
        if connection_holds + more > per_connection:
            raise ApiError(429, "TOO_MANY_SUBSCRIPTIONS",
                           f"At most {per_connection} {self.per_connection_unit} per connection",
                           {"limit": per_connection, "held": connection_holds})
        if self.active + more > self.total:
            raise ApiError(503, "TOO_MANY_SUBSCRIPTIONS",
                           f"The daemon follows {self.total} {self.unit} already; try again later",
                           {"limit": self.total})
        self.check_share(holder, more)

    def check_share(self, holder: Holder, more: int = 1) -> None:
        """A remote holder over its share, or remote clients over the cap less the local reserve: 429."""
        if not holder:
            return
        if self.held(("remote", None)) + more > self.total - self.local_reserve:
            raise ApiError(429, "TOO_MANY_SUBSCRIPTIONS",
                           f"Remote clients follow {self.total - self.local_reserve} {self.unit} "
                           "already (the rest is kept for local clients); try again later")
        for kind, value in holder:
            if self.held((kind, value)) + more > self.remote_share:
                raise ApiError(429, "TOO_MANY_SUBSCRIPTIONS",
                               f"At most {self.remote_share} {self.unit} per client {kind}; unsubscribe first",
                               {"limit": self.remote_share})

    def take(self, holder: Holder, count: int = 1) -> None:
        self.active += count
        for part in self._parts(holder):
            self._held[part] = self._held.get(part, 0) + count

    def release(self, holder: Holder, count: int = 1) -> None:
        self.active -= count
        for part in self._parts(holder):
            left = self._held.get(part, 0) - count
            if left > 0:
                self._held[part] = left
            else:
                self._held.pop(part, None)

    def held(self, part: tuple[str, Hashable]) -> int:
        """Subscriptions held by one holder part: ("address", key), ("subject", name) or ("remote", None)."""
        return self._held.get(part, 0)

    @staticmethod
    def _parts(holder: Holder) -> tuple[tuple[str, Hashable], ...]:
        return (("remote", None), *holder) if holder else ()
