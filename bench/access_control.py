"""What access control costs per request: client address, rate limit and JWT verification.

A real `nekzusd serve` with the lab's dockerd (20 containers linked for it). The same container list is asked
for by a local client (127.0.0.1: no token, exempt from the limiter) and by a remote one (127.0.0.2:
Bearer token verified, bucket charged), over kept-alive connections; the engine's own list is measured
in the same run. Also: how fast a refused request is answered (401 without token, 429 past the burst)
against the engine's /_ping, and the limiter's own cost per decision.

The checks alone on the list path (client address, rate limit, Host, Origin, token) are measured apart from
the engine and the handler: the daemon's own access middlewares (installed by the same ``setup`` functions
the daemon uses) in front of a handler that answers ``[]`` at once, against the same handler without them,
both served by a real aiohttp server in this process over kept-alive connections. The difference per request
is set against the engine's own container list, measured in the same run.

    python -m bench.access_control [--containers 20] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import ipaddress
import statistics
import threading
import time
from collections.abc import Iterator

from aiohttp import web

from bench.common import Daemon, Lab, Row, lab, linked, scratch, table
from nekzusd import auth, ratelimit, realip
from nekzusd.auth import Tokens, load_or_create_secret
from nekzusd.config import AuthConfig, RateLimitConfig, RatePool
from nekzusd.hostnames import ServerNames, own_names
from nekzusd.keys import TOKENS
from nekzusd.ratelimit import Pool, RateLimiter, client_key

APP = "access"

GENEROUS = {"per_minute": 1_000_000, "burst": 1_000_000}  # the limiter runs but never refuses


def median_ms(call, n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def requester(port: int, source: str, headers: dict[str, str]):
    connection = http.client.HTTPConnection("127.0.0.1", port, source_address=(source, 0), timeout=30)

    def call(path: str = "/api/v1/containers", want: int = 200) -> None:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != want:
            raise RuntimeError(f"{path} from {source}: {response.status}, expected {want}")
    return call


def limiter_ns_per_decision(n: int = 200_000) -> float:
    pool = Pool("bench", RatePool(per_minute=1_000_000, burst=1_000_000))
    keys = [client_key(ipaddress.IPv4Address(0x0A000000 + i % 5000)) for i in range(n)]
    started = time.perf_counter()
    for key in keys:
        pool.take(key)
    return (time.perf_counter() - started) / n * 1e9


def host_check_ns(n: int = 200_000) -> float:
    """The Host check alone, on the values a client repeats (IP literal with port, localhost, the machine's
    name, a rebinding name): after the first request each is a remembered answer, as on the hot path."""
    names = ServerNames([*own_names("srv", "srv.home.example"), "nas.home.arpa"])
    hosts = ["127.0.0.1:8443", "localhost:8443", "srv.local:8443", "[::1]:8443", "rebind.attacker.example:8443"]
    samples = [hosts[i % len(hosts)] for i in range(n)]
    started = time.perf_counter()
    for host in samples:
        names.match(host)
    return (time.perf_counter() - started) / n * 1e9


async def _empty_list(request: web.Request) -> web.Response:
    return web.Response(body=b"[]", content_type="application/json")


def checks_app(secret: bytes, checked: bool) -> web.Application:
    """A handler answering ``[]`` on the list path, behind the daemon's access middlewares when ``checked``.

    127.0.0.1 is local; 127.0.0.2 is remote and charged to a pool too generous to refuse; no proxy is trusted,
    as in the default configuration. The same ``setup`` functions as ``nekzusd.app.create_app`` install them.
    """
    app = web.Application()
    app[TOKENS] = Tokens(secret, "nekzus", "nekzus")
    if checked:
        config = AuthConfig(local_networks=(ipaddress.ip_network("127.0.0.1/32"),))
        realip.setup(app, ())
        pools = RateLimitConfig(containers=RatePool(**GENEROUS))
        ratelimit.setup(app, RateLimiter(pools, config.local_networks))
        auth.setup(app, config, ("nas.home.arpa",))
    app.router.add_get("/api/v1/containers", _empty_list)
    return app


@contextlib.contextmanager
def served(apps: list[web.Application]) -> Iterator[list[int]]:
    """Serve each app on its own loopback port from one event loop in a thread; yields the ports."""
    loop = asyncio.new_event_loop()
    runners = [web.AppRunner(app, access_log=None) for app in apps]

    async def start() -> list[int]:
        ports = []
        for runner in runners:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(runner.addresses[0][1])
        return ports

    thread = threading.Thread(target=loop.run_forever, name="bench-access-checks", daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    finally:
        async def stop() -> None:
            for runner in runners:
                await runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def checks_cost_ms(secret: bytes, token: str, n: int) -> tuple[float, float]:
    """Per request, the access checks' cost on the list path: (local client, remote client with a token),
    each as the median with the checks minus the median without them."""
    with served([checks_app(secret, False), checks_app(secret, True)]) as (bare_port, checked_port):
        local_headers = {"Host": "127.0.0.1:8443", "Origin": "http://127.0.0.1:8443", "Sec-Fetch-Site": "same-origin"}
        remote_headers = {"Host": "nekzus.example.com", "Authorization": f"Bearer {token}"}
        figures = []
        for source, headers in (("127.0.0.1", local_headers), ("127.0.0.2", remote_headers)):
            bare = requester(bare_port, source, headers)
            checked = requester(checked_port, source, headers)
            for call in (bare, checked):  # warm up
                for _ in range(50):
                    call()
            bare_ms, checked_ms = [], []
            for _ in range(3):  # interleaved rounds, so that drift in the machine's load hits both alike
                bare_ms.append(median_ms(bare, n))
                checked_ms.append(median_ms(checked, n))
            figures.append(statistics.median(checked_ms) - statistics.median(bare_ms))
    return figures[0], figures[1]


def run(lab: Lab, containers: int = 20, requests: int = 300) -> list[Row]:
    n, engine = requests, lab.engine
    with scratch(engine):
        for i in range(containers):
            engine.run(f"ac-{i}", labels=linked(APP))
        config = {"auth": {"local_networks": ["127.0.0.1/32"]},
                  "rate_limit": {"containers": GENEROUS, "apps": {"per_minute": 1, "burst": 5}}}
        with Daemon(engine, APP, **config) as daemon:
            port = int(daemon.url.rsplit(":", 1)[1])
            secret = load_or_create_secret(daemon.state / "jwt.secret")
            token = Tokens(secret, "nekzus", "nekzus").create("bench", ["read:containers"], 3600)
            local = requester(port, "127.0.0.1", {})
            remote = requester(port, "127.0.0.2", {"Authorization": f"Bearer {token}"})
            anonymous = requester(port, "127.0.0.2", {})
            for call in (local, remote):  # warm up connections and the daemon's engine client
                for _ in range(10):
                    call()
            engine_list = median_ms(lambda: engine.api("GET", "/containers/json?all=1"), n)
            engine_ping = median_ms(lambda: engine.api("GET", "/_ping"), n)
            local_list = median_ms(local, n)
            remote_list = median_ms(remote, n)
            refused_401 = median_ms(lambda: anonymous("/api/v1/containers", 401), n)
            for _ in range(5):
                anonymous("/api/v1/apps", 401)  # spend the apps pool's burst of 5
            refused_429 = median_ms(lambda: anonymous("/api/v1/apps", 429), n)
            local_checks, remote_checks = checks_cost_ms(secret, token, n)
    per_decision = limiter_ns_per_decision()
    per_host = host_check_ns()
    return [
        Row("container list, local client (no token, exempt), median", local_list, "ms", engine_list),
        Row("container list, remote client (JWT + rate limit), median", remote_list, "ms", engine_list),
        Row("access control cost per request (remote - local)", remote_list - local_list, "ms", engine_list),
        Row("401 without token (engine: its /_ping), median", refused_401, "ms", engine_ping),
        Row("429 past the burst (engine: its /_ping), median", refused_429, "ms", engine_ping),
        Row("limiter decision, 5000 clients (engine: its /_ping)", per_decision, "ns", engine_ping * 1e6),
        Row("access checks alone, list path, local (Host, Origin)", local_checks, "ms", engine_list),
        Row("access checks alone, list path, remote (JWT)", remote_checks, "ms", engine_list),
        Row("Host check per request (engine: its /_ping)", per_host, "ns", engine_ping * 1e6),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with lab(0) as the_lab:  # standalone() would pass its own ``containers`` to run() as well
        rows = run(the_lab, containers=args.containers, requests=args.requests)
    print(table({"access_control": rows}))


if __name__ == "__main__":
    main()
