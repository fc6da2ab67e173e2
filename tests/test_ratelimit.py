"""Rate limiting (docs/api.md, Rate limits): token buckets with an injected clock, memory bounds, and the live pools."""

from __future__ import annotations

import ipaddress
import tracemalloc

import aiohttp
import pytest

from nekzusd.config import RateLimitConfig, RatePool
from nekzusd.keys import RATE_LIMITER
from nekzusd.ratelimit import MAX_BUCKETS, Pool, RateLimiter, client_key, pool_name
from tests.harness.app import remote_config

ip = ipaddress.ip_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(per_minute: float = 30, burst: int = 20, **kwargs) -> tuple[Pool, Clock]:
    clock = Clock()
    return Pool("containers", RatePool(per_minute=per_minute, burst=burst), clock, **kwargs), clock


def test_burst_then_refused_with_retry_after():
    p, clock = pool(per_minute=30, burst=20)  # one token every 2 s
    decisions = [p.take("a") for _ in range(21)]
    assert all(d.allowed for d in decisions[:20])
    assert [d.remaining for d in decisions[:20]] == list(range(19, -1, -1))
    assert decisions[0].limit == 20
    denied = decisions[20]
    assert not denied.allowed and denied.remaining == 0
    assert denied.retry_after == 2  # the next token comes 2 s after the 20th was spent
    assert denied.reset == 40  # the whole bucket refills in 20 tokens × 2 s
    assert p.rejected == 1


def test_refill_at_the_configured_rate():
    p, clock = pool(per_minute=30, burst=20)
    for _ in range(20):
        p.take("a")
    clock.now += 1.9
    refused = p.take("a")
    assert not refused.allowed and refused.retry_after == 1  # 0.1 s left, rounded up to at least 1
    clock.now += 0.1
    assert p.take("a").allowed  # one token after 2 s
    assert not p.take("a").allowed
    clock.now += 10
    taken = [p.take("a").allowed for _ in range(6)]
    assert taken == [True] * 5 + [False]  # 10 s = 5 tokens, never more


def test_refill_never_exceeds_burst():
    p, clock = pool(per_minute=60, burst=3)
    clock.now += 3600
    assert [p.take("a").allowed for _ in range(4)] == [True, True, True, False]


def test_retry_after_is_honest():
    """Waiting exactly Retry-After seconds is enough, whatever the rate."""
    for per_minute, burst in ((30, 20), (7, 1), (600, 5), (1, 2)):
        p, clock = pool(per_minute=per_minute, burst=burst)
        while (d := p.take("a")).allowed:
            pass
        clock.now += d.retry_after
        assert p.take("a").allowed, (per_minute, burst)


def test_reset_counts_down_to_a_full_bucket():
    p, clock = pool(per_minute=60, burst=5)  # 1 token/s
    for _ in range(3):
        d = p.take("a")
    assert (d.remaining, d.reset) == (2, 3)
    clock.now += 3
    d = p.take("a")
    assert (d.remaining, d.reset) == (4, 1)


def test_clients_have_separate_buckets():
    p, clock = pool(per_minute=1, burst=1)
    assert p.take("a").allowed and not p.take("a").allowed
    assert p.take("b").allowed


def test_idle_buckets_are_dropped():
    p, clock = pool(per_minute=60, burst=10)  # a bucket is full again 10 s after its last use
    for i in range(1000):
        p.take(i)
    assert len(p) == 1000
    clock.now += 10
    p.take("newcomer")
    assert len(p) == 1  # every full bucket gone; the newcomer's is the only one left


def test_a_full_bucket_waits_behind_a_refilling_one_for_at_most_one_refill_period():
    """Buckets are ordered by last use, not by when they are full: the module docstring's promise."""
    p, clock = pool(per_minute=60, burst=10)  # one token a second, full 10 s after the last token at most
    for _ in range(10):
        p.take("debtor")  # empty: full again in 10 s
    clock.now += 1
    p.take("light")  # one token: full again in 1 s, but behind the debtor
    clock.now += 2
    p.take("third")
    assert len(p) == 3  # "light" is full, yet kept behind the debtor
    clock.now += 6
    p.take("fourth")
    assert len(p) == 4  # light and third full, still kept: the debtor refills for 1 s more
    clock.now += 1  # one refill period after the debtor's last token: everything idle is gone
    p.take("fifth")
    assert len(p) == 1


@pytest.mark.slow
def test_a_million_addresses_stay_bounded():
    """One request from each of a million distinct addresses within one refill period: the pool never
    holds more than max_buckets, all of them idle are dropped after one refill period, and a full pool
    takes a few MB."""
    p, clock = pool(per_minute=30, burst=20)
    assert p.max_buckets == MAX_BUCKETS
    first = client_key(ip("10.0.0.0"))  # IPv4 keys are the address as an integer
    for n in range(1_000_000):
        p.take(first + n)
        if n % 10_000 == 0:
            clock.now += 0.01
            assert len(p) <= MAX_BUCKETS
    assert len(p) == MAX_BUCKETS
    clock.now += 41
    p.take(client_key(ip("192.0.2.1")))
    assert len(p) == 1

    fresh, clock = pool(per_minute=30, burst=20)
    tracemalloc.start()
    try:
        for n in range(MAX_BUCKETS * 2):
            fresh.take(first + n)
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(fresh) == MAX_BUCKETS
    assert size < MAX_BUCKETS * 300, size  # bytes per bucket, generously: 6 MB for a full pool


def test_ipv6_clients_share_a_bucket_per_64():
    assert client_key(ip("2001:db8:1:2::1")) == client_key(ip("2001:db8:1:2:ffff::9"))
    assert client_key(ip("2001:db8:1:2::1")) != client_key(ip("2001:db8:1:3::1"))
    assert client_key(ip("10.0.0.1")) != client_key(ip("10.0.0.2"))
    assert client_key(ip("0.0.0.1")) != client_key(ip("::1"))  # the families never collide
    assert client_key(None) is None


@pytest.mark.parametrize("path, name", [
    ("/api/v1/containers", "containers"),
    ("/api/v1/containers/abc/start", "containers"),
    ("/api/v1/containers/stats", "containers"),
    ("/api/v1/containersX", "status"),  # not a container route: an unknown path
    ("/api/v1/apps", "apps"),
    ("/api/v1/apps/grafana", "apps"),
    ("/api/v1/discovery", "apps"),
    ("/api/v1/ws", "websocket"),
    ("/api/v1/openapi.json", "status"),
    ("/healthz", "status"),
    ("/readyz", "status"),
    ("/metrics", "status"),
    ("/", "status"),
    ("/no/such/route", "status"),
])
def test_pool_of_a_path(path, name):
    assert pool_name(path) == name


def test_local_clients_exempt_unless_configured():
    local = (ipaddress.ip_network("127.0.0.0/8"),)
    limiter = RateLimiter(RateLimitConfig(), local, clock=Clock())
    assert limiter.check("/api/v1/containers", ip("127.0.0.1")) is None
    assert limiter.check("/api/v1/containers", ip("198.51.100.1")).allowed
    strict = RateLimiter(RateLimitConfig(exempt_local=False), local, clock=Clock())
    assert strict.check("/api/v1/containers", ip("127.0.0.1")).allowed


# --- the running daemon ---------------------------------------------------------------------

def remote(config_data, **rate_limit):
    remote_config(config_data)
    config_data["rate_limit"] = rate_limit
    return config_data


async def test_container_routes_share_one_pool_with_headers(remote_client, config_data):
    client = await remote_client(remote(config_data, containers={"per_minute": 6, "burst": 3}))
    seen = []
    for path in ("/api/v1/containers", "/api/v1/containers/abc", "/api/v1/containers/stats"):
        async with client.get(path) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error"] == "UNAUTHORIZED"  # limited before auth: counted too
            seen.append((resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"],
                         resp.headers["RateLimit-Reset"]))
    assert seen == [("3", "2", "10"), ("3", "1", "20"), ("3", "0", "30")]
    async with client.post("/api/v1/containers/abc/start") as resp:
        body = await resp.json()
        assert resp.status == 429 and body["error"] == "RATE_LIMITED" and body["message"]
        assert resp.headers["Retry-After"] == "10" and body["details"]["retryAfter"] == 10
        assert resp.headers["RateLimit-Remaining"] == "0"
    assert client.app[RATE_LIMITER].rejected == 1
    async with client.get("/api/v1/apps") as resp:  # another pool: not affected
        assert resp.status == 401 and resp.headers["RateLimit-Remaining"] == "19"


async def test_websocket_upgrade_has_its_own_pool(remote_client, config_data):
    client = await remote_client(remote(config_data, websocket={"per_minute": 1, "burst": 2}))
    remaining = []
    for _ in range(2):
        ws = await client.ws_connect("/api/v1/ws")
        remaining.append(ws._response.headers["RateLimit-Remaining"])  # on the 101 itself
        await ws.close()
    assert remaining == ["1", "0"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/api/v1/ws")
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "60"
    async with client.get("/api/v1/containers") as resp:
        assert resp.status == 401  # the containers pool is untouched


async def test_local_clients_are_exempt_by_default(make_client, config_data):
    config_data["rate_limit"] = {"containers": {"per_minute": 1, "burst": 1}}
    client = await make_client(config_data)
    for _ in range(5):
        async with client.get("/api/v1/containers") as resp:
            assert resp.status == 200 and "RateLimit-Limit" not in resp.headers
    config_data["rate_limit"]["exempt_local"] = False
    client = await make_client(config_data)
    statuses = []
    for _ in range(2):
        async with client.get("/api/v1/containers") as resp:
            statuses.append(resp.status)
    assert statuses == [200, 429]
