"""Rate limiting (docs/api.md, Rate limits): a token bucket per client address in each pool, before authentication.

Pools: ``containers`` (every ``/api/v1/containers*`` route), ``apps`` (the apps API and discovery),
``websocket`` (the ``/api/v1/ws`` upgrade) and ``status`` (everything else: the status page and /metrics,
which list containers from the engine, the probes, the API description and paths no route matches). Every
request of a remote client thus spends a token somewhere; local clients are exempt while ``exempt_local``
is true.

A bucket is kept as one float, the moment it will be full again (GCRA, equivalent to a token bucket):
a full bucket holds no information, so it is dropped. Buckets are ordered by the last token spent, and
full ones are dropped from the front, O(1) each, as requests arrive; no background task is needed. A
full bucket behind one that is still refilling waits for it, but no bucket refills for longer than one
refill period (``burst`` tokens' worth) after its last token, so every bucket idle for that long is gone.
Memory is thus bounded by the clients seen within one refill period, and by ``max_buckets`` on top (the
least recently used bucket goes first).

Exempt local clients get no ``RateLimit-*`` headers: they are not limited, and the headers cannot say so.

IPv6 clients are limited per /64: one subscriber usually holds a whole /64 and could otherwise get a
fresh bucket for every request by rotating addresses.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from .config import IPNetwork, RateLimitConfig, RatePool
from .errors import ApiError
from .realip import CLIENT, IPAddress, in_networks

MAX_BUCKETS = 20_000  # per pool: about 5 MB at most (some 240 bytes a bucket)
DECISION: web.RequestKey[Decision] = web.RequestKey("rate_limit_decision")  # for the response headers
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until the next request can pass (0 when allowed)

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


class Pool:
    """Token buckets of one pool, keyed by client."""

    def __init__(self, name: str, config: RatePool, clock: Callable[[], float] = time.monotonic,
                 max_buckets: int = MAX_BUCKETS) -> None:
        self.name = name
        self.burst = int(config.burst)
        self.interval = 60.0 / config.per_minute  # seconds per token
        self.max_buckets = max_buckets
        self.rejected = 0
        self._clock = clock
        self._full_at: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._full_at)

    def take(self, key: Hashable) -> Decision:
        """Spend one token of ``key``'s bucket if it has one."""
        now = self._clock()
        self._drop_idle(now)
        full_at = max(self._full_at.get(key, now), now)
        debt = full_at - now  # seconds of refill the bucket is short of full
        allowed = debt <= (self.burst - 1) * self.interval + _EPSILON
        if allowed:
            full_at += self.interval
            debt += self.interval
            self._full_at[key] = full_at
            self._full_at.move_to_end(key)
            while len(self._full_at) > self.max_buckets:
                self._full_at.popitem(last=False)
            retry_after = 0
        else:
            self.rejected += 1
            retry_after = max(1, math.ceil(debt - (self.burst - 1) * self.interval - _EPSILON))
        remaining = max(0, math.floor(self.burst - debt / self.interval + _EPSILON))
        return Decision(allowed, self.burst, remaining, math.ceil(debt - _EPSILON), retry_after)

    def _drop_idle(self, now: float) -> None:
        buckets = self._full_at
        while buckets:
            key, full_at = next(iter(buckets.items()))
            if full_at > now:
                return
            del buckets[key]


def client_key(addr: IPAddress | None) -> Hashable:
    """IPv4 addresses as themselves, IPv6 by /64 (negative, so the two never collide); None when unknown."""
    if addr is None:
        return None
    if addr.version == 4:
        return int(addr)
    return -(int(addr) >> 64) - 1


POOLS = ("containers", "apps", "websocket", "status")


def pool_name(path: str) -> str:
    """Which pool a request path belongs to: every path has one, so no route (present or future) is left
    unlimited by being forgotten here."""
    if path == "/api/v1/containers" or path.startswith("/api/v1/containers/"):
        return "containers"
    if path in ("/api/v1/apps", "/api/v1/discovery") or path.startswith("/api/v1/apps/"):
        return "apps"
    if path == "/api/v1/ws":
        return "websocket"
    return "status"


class RateLimiter:
    """The daemon's pools; ``rejected`` counts every 429 (the status page shows it)."""

    def __init__(self, config: RateLimitConfig, local_networks: tuple[IPNetwork, ...],
                 clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS) -> None:
        self.pools = {name: Pool(name, getattr(config, name), clock, max_buckets)
                      for name in POOLS}
        self.exempt_local = config.exempt_local
        self.local_networks = local_networks
        # addresses inside local_networks that are not local clients (the host's containers: containernets)
        self.not_local: Callable[[IPAddress | None], bool] = lambda _addr: False
        self.rejected = 0

    def check(self, path: str, addr: IPAddress | None) -> Decision | None:
        """The decision for one request, or None when it is not limited (an exempt local client)."""
        if self.exempt_local and in_networks(addr, self.local_networks) and not self.not_local(addr):
            return None
        decision = self.pools[pool_name(path)].take(client_key(addr))
        if not decision.allowed:
            self.rejected += 1
        return decision


def rate_limited(decision: Decision) -> ApiError:
    return ApiError(429, "RATE_LIMITED", f"Too many requests; retry in {decision.retry_after} s",
                    {"retryAfter": decision.retry_after, "limit": decision.limit},
                    {"Retry-After": str(decision.retry_after)})


def setup(app: web.Application, limiter: RateLimiter) -> None:
    """Install the middleware (after the client address one) and the hook that adds the RateLimit-* headers
    to every response of a pool: successes, errors and the WebSocket upgrade alike."""

    @web.middleware
    async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        decision = limiter.check(request.path, request[CLIENT])
        if decision is not None:
            request[DECISION] = decision
            if not decision.allowed:
                raise rate_limited(decision)
        return await handler(request)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        decision = request.get(DECISION)
        if decision is not None:
            response.headers.update(decision.headers())

    app.middlewares.append(rate_limit_middleware)
    app.on_response_prepare.append(add_headers)
