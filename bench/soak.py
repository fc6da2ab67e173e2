"""Soak test: many clients, mixed API load, log streams and engine faults against a real daemon.

A private dockerd and a real `nekzusd serve` process (plain HTTP on loopback). For SOAK_SECONDS
(default 600): WebSocket clients (20 of them following logs of busy containers), a paced mix of API
requests including lifecycle, batch and bulk operations, and the engine killed and restarted twice.
At the end it prints per-route latency and checks:

- no 5xx outside the engine's outage windows (and only 503 RUNTIME_UNAVAILABLE inside them);
- every lifecycle notification (by operationId) reached every WebSocket client;
- log streams cut by the outage ended with reason "error";
- no growth trend in RSS, open file descriptors or asyncio tasks over the second half;
- the app approved through the API at the start is still there.

    SOAK_SECONDS=60 python -m bench.soak        # exits non-zero when a check fails
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_overhead import free_port  # noqa: E402
from tests.engines import Engine, start_dockerd  # noqa: E402

BUSY = 10      # containers writing logs continuously (not linked: bulk operations leave them alone)
VICTIMS = 8    # linked containers that lifecycle and bulk operations act on
SAMPLE_EVERY = 2.0


@dataclass
class Outage:
    start: float
    end: float | None = None

    def covers(self, t0: float, t1: float, slack: float = 3.0) -> bool:
        end = self.end if self.end is not None else float("inf")
        return t1 >= self.start and t0 <= end + slack


@dataclass
class Run:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    bad: list[str] = field(default_factory=list)
    operation_ids: set[str] = field(default_factory=set)
    outages: list[Outage] = field(default_factory=list)
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)  # t, rss MB, fds, tasks
    log_lines: int = 0
    log_ended: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ws_closed_early: int = 0

    def in_outage(self, t0: float, t1: float) -> bool:
        return any(o.covers(t0, t1) for o in self.outages)


class WsClient:
    """One WebSocket client: records every operationId it is told about; may follow logs."""

    def __init__(self, session: aiohttp.ClientSession, url: str, run: Run, follow: str | None) -> None:
        self.session, self.url, self.run, self.follow = session, url, run, follow
        self.seen: set[str] = set()
        self.task: asyncio.Task | None = None
        self.stopping = False

    async def start(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/api/v1/ws", heartbeat=30)
        await self.ws.send_json({"type": "auth", "data": {"token": ""}})
        reply = await self.ws.receive_json(timeout=10)
        assert reply["type"] == "auth_success", reply
        if self.follow:
            await self.subscribe()
        self.task = asyncio.create_task(self.read())

    async def subscribe(self) -> None:
        await self.ws.send_json({"type": "container.logs.subscribe",
                                 "data": {"containerId": self.follow, "tail": 10, "follow": True}})

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            kind, data = message.get("type", ""), message.get("data") or {}
            if kind.startswith("container.") and kind.endswith((".completed", ".failed")):
                if "operationId" in data:
                    self.seen.add(data["operationId"])
            elif kind == "container.logs":
                self.run.log_lines += 1
            elif kind == "container.logs.batch":
                self.run.log_lines += len(data.get("lines", []))
            elif kind == "container.logs.ended":
                self.run.log_ended[data.get("reason", "?")] += 1
        if not self.stopping:
            self.run.ws_closed_early += 1

    async def stop(self) -> None:
        self.stopping = True
        await self.ws.close()
        if self.task:
            await asyncio.gather(self.task, return_exceptions=True)


def proc_sample(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def tasks_of(session: aiohttp.ClientSession, url: str) -> int:
    """The daemon's asyncio task count, from its Prometheus metrics."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("nekzusd_asyncio_tasks "):
            return int(float(line.split()[1]))
    return -1


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per second)."""
    if len(points) < 3:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / var


async def request(session: aiohttp.ClientSession, run: Run, route: str, method: str, url: str,
                  **kwargs) -> tuple[int, dict | list | None]:
    t0 = time.monotonic()
    try:
        async with session.request(method, url, **kwargs) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        run.bad.append(f"{route}: connection failed: {exc!r}")
        return 0, None
    t1 = time.monotonic()
    run.latencies[route].append(t1 - t0)
    run.statuses[route][status] += 1
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
        run.bad.append(f"{route}: {status} body is not JSON")
    if status >= 500:
        allowed = status == 503 and isinstance(data, dict) and data.get("error") == "RUNTIME_UNAVAILABLE"
        if not (allowed and run.in_outage(t0, t1)):
            run.bad.append(f"{route}: {status} {str(data)[:200]}")
    return status, data


async def api_load(session, url: str, run: Run, rate: float, deadline: float, victims: list[str]) -> None:
    """Paced mixed load: each tick picks a request kind by weight."""
    kinds = [("list", 30), ("list_all", 10), ("inspect", 15), ("stats", 10), ("batch_stats", 5), ("apps", 5),
             ("lifecycle", 15), ("batch", 5), ("bulk", 1), ("logs_tail", 4)]
    names, weights = zip(*kinds)
    in_flight: set[asyncio.Task] = set()
    interval = 1.0 / rate
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        kind = random.choices(names, weights)[0]
        task = asyncio.create_task(one_request(session, url, run, kind, victims))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*in_flight, return_exceptions=True)


async def one_request(session, url: str, run: Run, kind: str, victims: list[str]) -> None:
    victim = random.choice(victims)
    base = f"{url}/api/v1/containers"
    if kind == "list":
        await request(session, run, "GET /containers", "GET", base)
    elif kind == "list_all":
        await request(session, run, "GET /containers?all", "GET", f"{base}?all=true")
    elif kind == "inspect":
        await request(session, run, "GET /containers/{id}", "GET", f"{base}/{victim}")
    elif kind == "stats":
        await request(session, run, "GET /containers/{id}/stats", "GET", f"{base}/{victim}/stats")
    elif kind == "batch_stats":
        await request(session, run, "GET /containers/stats", "GET", f"{base}/stats")
    elif kind == "apps":
        await request(session, run, "GET /apps", "GET", f"{url}/api/v1/apps")
    elif kind == "lifecycle":
        op = random.choice(["restart", "restart", "stop", "start"])
        status, data = await request(session, run, f"POST /containers/{{id}}/{op}", "POST",
                                     f"{base}/{victim}/{op}?timeout=2")
        if status == 202 and isinstance(data, dict):
            run.operation_ids.add(data["operationId"])
    elif kind == "batch":
        chosen = random.sample(victims, 3)
        await request(session, run, "POST /containers/batch", "POST", f"{base}/batch",
                      json={"action": "restart", "containerIds": chosen, "timeout": 2})
    elif kind == "bulk":
        await request(session, run, "POST /containers/start-all", "POST", f"{base}/start-all")
    elif kind == "logs_tail":
        await request(session, run, "GET /discovery", "GET", f"{url}/api/v1/discovery")


async def sampler(session, url: str, pid: int, run: Run, deadline: float, started: float) -> None:
    while time.monotonic() < deadline:
        rss, fds = proc_sample(pid)
        try:
            tasks = await tasks_of(session, url)
        except aiohttp.ClientError:
            tasks = -1
        run.samples.append((time.monotonic() - started, rss, fds, tasks))
        await asyncio.sleep(SAMPLE_EVERY)


async def faults(engine: Engine, run: Run, started: float, duration: float, clients: list[WsClient]) -> None:
    """Kill the engine at 1/3 and 2/3 of the run; bring it back after a few seconds; resubscribe logs."""
    for at in (duration / 3, 2 * duration / 3):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        outage = Outage(time.monotonic())
        run.outages.append(outage)
        await asyncio.to_thread(engine.kill)
        await asyncio.sleep(min(5.0, duration / 12))
        await asyncio.to_thread(engine.restart)
        outage.end = time.monotonic()
        await asyncio.sleep(2.0)
        for client in clients:
            if client.follow and not client.ws.closed:
                await client.subscribe()


def write_config(engine: Engine, state: Path) -> tuple[str, Path]:
    """The daemon's config file; returns its base URL and the file."""
    port = free_port()
    config = state / "nekzusd.yaml"
    config.write_text(json.dumps({
        "server": {"listen": f"127.0.0.1:{port}", "tls": {"mode": "off"}},
        "state_dir": str(state), "runtimes": {"docker": {"host": engine.url}},
        "apps": [{"id": "soak", "name": "Soak"}],
    }))
    return f"http://127.0.0.1:{port}", config


async def wait_ready(session: aiohttp.ClientSession, url: str, proc) -> None:
    while True:
        try:
            async with session.get(f"{url}/api/v1/containers") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if proc.returncode is not None:
            raise RuntimeError("daemon exited during start-up")
        await asyncio.sleep(0.05)


def prepare_engine(base: Path) -> tuple[Engine, list[str], list[str]]:
    engine = start_dockerd(base / "engine")
    engine.ensure_busybox()
    busy = [engine.run(f"busy-{i}", "i=0; while true; do i=$((i+1)); echo line $i; usleep 20000; done",
                       RestartPolicy={"Name": "always"})[:12] for i in range(BUSY)]
    victims = [engine.run(f"victim-{i}", "sleep 100000", labels={"nekzus.app.id": "soak"},
                          RestartPolicy={"Name": "unless-stopped"})[:12] for i in range(VICTIMS)]
    return engine, busy, victims


async def soak(duration: float, rate: float, n_clients: int, followers: int) -> int:
    base = Path(tempfile.mkdtemp(prefix="nks-"))
    engine, busy, victims = await asyncio.to_thread(prepare_engine, base)
    state = base / "state"
    state.mkdir()
    url, config = write_config(engine, state)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nekzusd", "--log-level", "warning", "serve", "--config", str(config),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    run = Run()
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            await wait_ready(session, url, proc)
            status, _ = await request(session, run, "POST /apps", "POST", f"{url}/api/v1/apps",
                                      json={"id": "kept", "name": "Kept across faults"})
            assert status == 201, status
            clients = [WsClient(session, url, run, busy[i % len(busy)] if i < followers else None)
                       for i in range(n_clients)]
            for client in clients:
                await client.start()
            started = time.monotonic()
            deadline = started + duration
            await asyncio.gather(
                api_load(session, url, run, rate, deadline, victims),
                sampler(session, url, proc.pid, run, deadline, started),
                faults(engine, run, started, duration, clients),
            )
            await asyncio.sleep(10)  # let the last operations finish and be announced
            apps = await (await session.get(f"{url}/api/v1/apps")).json()
            kept = any(a["id"] == "kept" for a in apps)
            for client in clients:
                await client.stop()
            return report(run, clients, kept, duration)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
        await asyncio.to_thread(engine.stop)
        shutil.rmtree(base, ignore_errors=True)


def report(run: Run, clients: list[WsClient], kept: bool, duration: float) -> int:
    print(f"soak: {duration:.0f} s on {os.cpu_count()} cores, {len(clients)} WebSocket clients")
    print(f"{'route':36} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for route in sorted(run.latencies):
        lat = sorted(run.latencies[route])
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(run.statuses[route].items()))
        print(f"{route:36} {len(lat):7d} {p50:8.1f} {p99:8.1f}  {statuses}")
    failures = list(dict.fromkeys(run.bad))[:20]
    missing = sum(len(run.operation_ids - c.seen) for c in clients)
    if missing:
        failures.append(f"{missing} lifecycle notifications were lost (of {len(run.operation_ids) * len(clients)})")
    if run.ws_closed_early:
        failures.append(f"{run.ws_closed_early} WebSocket clients were closed by the server")
    if run.log_ended.get("error", 0) == 0 and run.outages:
        failures.append("no log stream ended with reason 'error' during the engine outages")
    if not kept:
        failures.append("the app approved at the start is gone")
    half = [s for s in run.samples if s[0] >= duration / 2]
    for index, name, tolerance in ((1, "RSS MB", 10.0), (2, "open fds", 8.0), (3, "asyncio tasks", 10.0)):
        points = [(s[0], s[index]) for s in half if s[index] >= 0]
        growth = slope(points) * (duration / 2)
        values = [v for _, v in points]
        print(f"{name:14} first-half-end {values[0] if values else float('nan'):8.1f}  "
              f"end {values[-1] if values else float('nan'):8.1f}  trend over last half {growth:+.1f}")
        if growth > tolerance:
            failures.append(f"{name} grows: {growth:+.1f} over the last half (tolerance {tolerance})")
    print(f"operations announced: {len(run.operation_ids)}; log lines received: {run.log_lines}; "
          f"log streams ended: {dict(run.log_ended)}; outages: {len(run.outages)}")
    if failures:
        print("FAILED:")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print("soak: all checks passed")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--rate", type=float, default=50.0, help="API requests per second")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--followers", type=int, default=20)
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.seconds, args.rate, args.clients, args.followers)))


if __name__ == "__main__":
    main()
