"""API overhead: the daemon's container list against the raw engine, idle RSS, start-up time.

Runs a private dockerd with 30 containers and a real `nekzusd serve` process (plain HTTP on loopback),
then prints each figure with its target. Ratios are against the engine measured in the same run.

    python -m bench.api_overhead [--containers 30] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.engines import start_dockerd  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_daemon(engine_url: str, state: Path) -> tuple[subprocess.Popen, str, float]:
    """Start `nekzusd serve`; returns the process, its base URL and seconds until the first 200."""
    port = free_port()
    config = state / "nekzusd.yaml"
    config.write_text(json.dumps({
        "server": {"listen": f"127.0.0.1:{port}", "tls": {"mode": "off"}},
        "state_dir": str(state), "runtimes": {"docker": {"host": engine_url}},
        "apps": [{"id": "bench", "name": "Bench"}],
    }))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nekzusd", "--log-level", "warning", "serve", "--config",
                             str(config)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    import urllib.request
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/containers", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("daemon exited during start-up")
            time.sleep(0.005)
    return proc, url, time.perf_counter() - started


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
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(engine_sock)) as raw, \
            aiohttp.ClientSession() as api:
        await median_latency(raw, "http://docker/containers/json?all=1", 20)  # warm both paths
        await median_latency(api, f"{daemon_url}/api/v1/containers?all=true", 20)
        engine_ms, daemon_ms = [], []
        for _ in range(5):  # interleave rounds so that machine noise hits both alike
            engine_ms.append(await median_latency(raw, "http://docker/containers/json?all=1", requests // 5))
            daemon_ms.append(await median_latency(api, f"{daemon_url}/api/v1/containers?all=true", requests // 5))
        return statistics.median(engine_ms) * 1000, statistics.median(daemon_ms) * 1000


def report(rows: list[tuple[str, float, str, str]]) -> None:
    print(f"{'figure':46} {'value':>10}  {'target':>10}  verdict")
    for name, value, target, verdict in rows:
        print(f"{name:46} {value:10.3f}  {target:>10}  {verdict}")


def run(containers: int, requests: int) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="nkb-"))
    engine = start_dockerd(base / "engine")
    try:
        engine.ensure_busybox()
        for i in range(containers):
            engine.run(f"bench-{i:02d}", "sleep 100000", labels={"nekzus.app.id": "bench"})
        state = base / "state"
        state.mkdir()
        proc, url, startup = start_daemon(engine.url, state)
        try:
            engine_ms, daemon_ms = asyncio.run(measure(str(engine.socket_path), url, requests))
            time.sleep(2)  # idle
            idle_rss = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        engine.stop()
        shutil.rmtree(base, ignore_errors=True)
    ratio = daemon_ms / engine_ms
    results = [
        {"name": "engine GET /containers/json median (ms)", "value": engine_ms, "target": "-"},
        {"name": "daemon GET /containers?all=true median (ms)", "value": daemon_ms, "target": "-"},
        {"name": "list latency ratio daemon/engine", "value": ratio, "target": "<= 1.5", "ok": ratio <= 1.5},
        {"name": "idle RSS (MB)", "value": idle_rss, "target": "<= 60", "ok": idle_rss <= 60},
        {"name": "start-up to first 200 (s)", "value": startup, "target": "<= 1.0", "ok": startup <= 1.0},
    ]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    results = run(args.containers, args.requests)
    report([(r["name"], r["value"], r["target"], "" if "ok" not in r else ("ok" if r["ok"] else "MISSED"))
            for r in results])


if __name__ == "__main__":
    main()
