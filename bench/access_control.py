"""What access control costs per request: client address, rate limit and JWT verification.

A real `nekzusd serve` with a private dockerd (20 linked containers). The same container list is asked
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
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import LINKED, Daemon, private_dockerd, report  # noqa: E402
from nekzusd.auth import Tokens, load_or_create_secret  # noqa: E402
from nekzusd.config import RatePool  # noqa: E402
from nekzusd.ratelimit import Pool, client_key  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    n = args.requests
    with private_dockerd() as engine:
        for i in range(args.containers):
            engine.run(f"ac-{i}", labels=LINKED)
        config = {"auth": {"local_networks": ["127.0.0.1/32"]},
                  "rate_limit": {"containers": GENEROUS, "apps": {"per_minute": 1, "burst": 5}}}
        with Daemon(engine, **config) as daemon:
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
    report(f"access control: {args.containers} containers, median of {n} requests (ms unless stated)", [
        ("engine GET /containers/json", engine_list, "", None),
        ("engine GET /_ping", engine_ping, "", None),
        ("daemon list, local client (no token, exempt)", local_list, "", None),
        ("daemon list, remote client (JWT + rate limit)", remote_list, "", None),
        ("  ratio local / engine list", local_list / engine_list, "", None),
        ("  ratio remote / engine list", remote_list / engine_list, "", None),
        ("  access control cost (remote - local) / engine list", (remote_list - local_list) / engine_list,
         "", None),
        ("401 without token", refused_401, "", None),
        ("  ratio 401 / engine ping", refused_401 / engine_ping, "", None),
        ("429 past the burst", refused_429, "", None),
        ("  ratio 429 / engine ping", refused_429 / engine_ping, "", None),
        ("limiter decision (ns, 5000 clients)", per_decision, "", None),
        ("  ratio decision / engine ping", per_decision / 1e6 / engine_ping, "", None),
    ])


if __name__ == "__main__":
    main()
