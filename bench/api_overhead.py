"""API overhead: the daemon's container list against the raw engine's, idle RSS, start-up time, and the
list again with one container whose labels are built to make secret masking slow (100 KB of `a=a=…`,
`a.a.…`, `PASSWORD=…`, `sk-sk-…`, `eyJ-eyJ-…`: an image's labels are third-party input).

The lab's dockerd with its base containers (30 by default) and a real `nekzusd serve` process (plain
HTTP on loopback). Ratios are against the engine measured in the same run: its own list, its RSS, and
its own time from start to first answer.

    python -m bench.api_overhead [--containers 30] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from bench.common import Daemon, Lab, Row, rss_mb, standalone


async def median_latency(session: aiohttp.ClientSession, url: str, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            assert response.status == 200, response.status
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


async def measure(engine_sock: str, daemon_url: str, requests: int) -> tuple[float, float]:
    """Median ms of (engine list, daemon list), over kept-alive connections, in interleaved rounds."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(engine_sock)) as raw, \
            aiohttp.ClientSession() as api:
        await median_latency(raw, "http://docker/containers/json?all=1", 20)  # warm both paths
        await median_latency(api, f"{daemon_url}/api/v1/containers?all=true", 20)
        engine_ms, daemon_ms = [], []
        for _ in range(5):  # interleave rounds so that machine noise hits both alike
            engine_ms.append(await median_latency(raw, "http://docker/containers/json?all=1", requests // 5))
            daemon_ms.append(await median_latency(api, f"{daemon_url}/api/v1/containers?all=true", requests // 5))
        return statistics.median(engine_ms) * 1000, statistics.median(daemon_ms) * 1000


HOSTILE_LABELS = {"x": "a=" * 10_000, "y": "a." * 10_000, "z": "PASSWORD=" * 2_200, "s": "sk-" * 6_700,
                  "j": "eyJ-" * 5_000}


def run(lab: Lab, requests: int = 300) -> list[Row]:
    n = len(lab.base)
    with Daemon(lab.engine) as daemon:
        engine_ms, daemon_ms = asyncio.run(measure(str(lab.engine.socket_path), daemon.url, requests))
        time.sleep(2)  # idle
        idle_rss, engine_rss = rss_mb(daemon.pid), rss_mb(lab.engine.pid)
        startup = daemon.startup
        hostile = lab.engine.run("hostile-labels", labels=HOSTILE_LABELS)
        try:
            engine_hostile, daemon_hostile = asyncio.run(measure(str(lab.engine.socket_path), daemon.url,
                                                                 max(10, requests // 3)))
        finally:
            lab.engine.api("DELETE", f"/containers/{hostile}?force=1", timeout=60)
    return [
        Row(f"container list ({n} containers), median", daemon_ms, "ms", engine_ms, "ratio <= 1.5",
            daemon_ms / engine_ms <= 1.5),
        Row(f"idle RSS ({n} containers; engine: dockerd's)", idle_rss, "MB", engine_rss, "<= 60 MB", idle_rss <= 60),
        Row(f"start-up to first 200 ({n} containers; engine: its own)", startup, "s", lab.startup, "<= 1.0 s",
            startup <= 1.0),
        Row(f"container list, one of {n + 1} with 100 KB of hostile labels, median", daemon_hostile, "ms",
            engine_hostile, "ratio <= 3", daemon_hostile / engine_hostile <= 3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    standalone("api_overhead", run, args.containers, requests=args.requests)


if __name__ == "__main__":
    main()
