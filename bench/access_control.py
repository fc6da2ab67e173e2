"""What access control costs per request: client address, rate limit and JWT verification.

A real `nekzusd serve` with the lab's dockerd (20 containers linked for it). The same container list is asked
for by a local client (127.0.0.1: no token, exempt from the limiter) and by a remote one (127.0.0.2:
Bearer token verified, bucket charged), over kept-alive connections; the engine's own list is measured
in the same run. Also: how fast a refused request is answered (401 without token, 429 past the burst)
against the engine's /_ping, and the limiter's own cost per decision.

    python -m bench.access_control [--containers 20] [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import statistics
import time

from bench.common import Daemon, Lab, Row, linked, scratch, standalone
from nekzusd.auth import Tokens, load_or_create_secret
from nekzusd.config import RatePool
from nekzusd.ratelimit import Pool, client_key

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
    per_decision = limiter_ns_per_decision()
    return [
        Row("container list, local client (no token, exempt), median", local_list, "ms", engine_list),
        Row("container list, remote client (JWT + rate limit), median", remote_list, "ms", engine_list),
        Row("access control cost per request (remote - local)", remote_list - local_list, "ms", engine_list),
        Row("401 without token (engine: its /_ping), median", refused_401, "ms", engine_ping),
        Row("429 past the burst (engine: its /_ping), median", refused_429, "ms", engine_ping),
        Row("limiter decision, 5000 clients (engine: its /_ping)", per_decision, "ns", engine_ping * 1e6),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    standalone("access_control", run, 0, containers=args.containers, requests=args.requests)


if __name__ == "__main__":
    main()
