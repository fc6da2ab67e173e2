"""Soak test: many clients, mixed API load, log streams and engine faults against a real daemon.

A private dockerd and a real `nekzusd serve` process (plain HTTP on loopback). For SOAK_SECONDS
(default 600): WebSocket clients (some following the logs of busy containers, resubscribing when a
stream ends, as a dashboard would), a paced mix of API requests including lifecycle, batch and bulk
operations and app approvals, and the engine killed (SIGKILL) and restarted twice. At the end it prints
per-route latency and checks:

- no 5xx, except 503 RUNTIME_UNAVAILABLE while the engine is down (and a few seconds after);
- no WebSocket notification lost: every client got every lifecycle result the daemon counted, and
  every operationId a 202 promised;
- every followed log stream cut by an outage ended with reason "error", and lines flowed again after;
- no growth trend in RSS over the second half (the engine kills come in the first; when the engine is slow
  to come back, the load goes on until a third of the run has passed quietly after it); open file descriptors
  and asyncio tasks (less those of work in flight) back to their idle level once the load has drained.
  Their trend under load is printed, not judged: memory a process once took is not given back, so RSS
  can only be judged by its trend, but descriptors and tasks are, and what is given back did not leak.
  On a busy host, queues and the recovery after the second engine kill grow them in the second half
  (+30 tasks in a run beside the test suite, back to idle 40 s later);
- every app approval that was acknowledged is still there (and every acknowledged removal gone).

    SOAK_SECONDS=60 python -m bench.soak        # exits non-zero when a check fails
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import Daemon, lab, linked, open_fds, rss_mb
from tests.harness.app import authenticate
from tests.harness.engines import Engine

APP = "soak"
BUSY = 10      # containers writing 50 log lines/s each (not linked: bulk operations leave them alone)
VICTIMS = 12   # linked containers that lifecycle and bulk operations act on
SAMPLE_EVERY = 1.0
AFTER_OUTAGE = 5.0  # seconds after the engine is back during which 503s are still expected
RESUBSCRIBE_AFTER = 1.0
API_CONNECTIONS = 64
SETTLE = 3.0  # seconds for the clients' streams to start before the idle figures are taken
DRAIN = 40.0  # at most this long after the load: longer than stats samplers' idle expiry and connection keep-alive
# Request kinds and their weights: mostly reads, as a dashboard makes them, with every write kind.
KINDS = {"list": 28, "list_all": 10, "inspect": 14, "stats": 10, "batch_stats": 4, "apps": 5, "discovery": 4,
         "export_preview": 3, "app_write": 4, "lifecycle": 6, "batch": 1, "bulk": 1}
# Per sampled figure: RSS growth over the last half (outside outages) that counts as a trend; descriptors and
# tasks held after the drain beyond their idle level that count as a leak.
TOLERANCE = {"rss_mb": 10.0, "fds": 8.0, "idle_tasks": 25.0}


@dataclass
class Outage:
    start: float
    end: float | None = None

    def covers(self, t0: float, t1: float) -> bool:
        end = self.end if self.end is not None else float("inf")
        return t1 >= self.start and t0 <= end + AFTER_OUTAGE


@dataclass
class Run:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    bad: list[str] = field(default_factory=list)
    operation_ids: set[str] = field(default_factory=set)
    outages: list[Outage] = field(default_factory=list)
    deadline: float = 0.0  # when the load and the sampling end (faults() may push it back)
    samples: list[dict[str, float]] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)  # idle figures with every client connected
    after: dict[str, float] = field(default_factory=dict)  # the same once the load has drained
    apps: dict[str, bool] = field(default_factory=dict)  # app id -> should exist (acknowledged add/remove)
    removing: set[str] = field(default_factory=set)  # removals on their way
    log_lines: int = 0
    in_flight: int = 0  # API requests sent and not answered yet
    ws_closed_early: int = 0

    def in_outage(self, t0: float, t1: float) -> bool:
        return any(o.covers(t0, t1) for o in self.outages)


class WsClient:
    """One WebSocket client: counts every lifecycle result it is told; a follower keeps a log stream of
    one container open, resubscribing when it ends, and remembers how each ended and when lines came."""

    def __init__(self, session: aiohttp.ClientSession, url: str, run: Run, follow: str | None) -> None:
        self.session, self.url, self.run, self.follow = session, url, run, follow
        self.seen: set[str] = set()
        self.results = 0
        self.ended: list[tuple[float, str]] = []  # (time, reason)
        self.last_line = 0.0
        self.stopping = False
        self.streaming = False
        self.task: asyncio.Task | None = None
        self._resubscribes: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/api/v1/ws", heartbeat=30)
        await authenticate(self.ws)
        if self.follow:
            await self.subscribe()
        self.task = asyncio.create_task(self.read())

    async def subscribe(self) -> None:
        await self.ws.send_json({"type": "container.logs.subscribe",
                                 "data": {"containerId": self.follow, "tail": 10, "follow": True}})

    async def _resubscribe(self) -> None:
        await asyncio.sleep(RESUBSCRIBE_AFTER)
        if not self.stopping and not self.ws.closed:
            await self.subscribe()

    def _later(self, coro) -> None:
        if self.stopping:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._resubscribes.add(task)
        task.add_done_callback(self._resubscribes.discard)

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            kind, data = message.get("type", ""), message.get("data") or {}
            if kind.startswith("container.") and kind.endswith((".completed", ".failed")):
                self.results += 1
                if "operationId" in data:
                    self.seen.add(data["operationId"])
            elif kind == "container.logs":
                self.run.log_lines += 1
                self.last_line = time.monotonic()
            elif kind == "container.logs.started":
                self.streaming = True
            elif kind == "container.logs.ended":
                self.streaming = False
                reason = data.get("reason", "?")
                self.ended.append((time.monotonic(), reason))
                if reason != "stopped":  # "stopped" is this client's own doing
                    self._later(self._resubscribe())
            elif kind == "container.logs.error" and not self.streaming:  # the subscription was refused
                self._later(self._resubscribe())
        if not self.stopping:
            self.run.ws_closed_early += 1

    async def stop(self) -> None:
        self.stopping = True
        for task in list(self._resubscribes):
            task.cancel()
        await self.ws.close()
        await asyncio.gather(*([self.task] if self.task else []), *self._resubscribes, return_exceptions=True)


def scrape(url: str, timeout: float = 60.0) -> dict[str, float]:
    """The daemon's unlabelled gauges, and operations counted over all labels, from its /metrics. Blocking:
    called in a thread of its own (see ``sampler``)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    figures: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line.startswith(("nekzusd_asyncio_tasks ", "nekzusd_operations_in_flight ",
                            "nekzusd_http_requests_in_flight ")):
            name, number = line.split()
            figures[name.removeprefix("nekzusd_")] = float(number)
        elif line.startswith("nekzusd_operations_total{"):
            figures["operations"] += float(line.rsplit(" ", 1)[1])
    return figures


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
    run.in_flight += 1
    try:
        async with session.request(method, url, **kwargs) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        run.bad.append(f"{route}: connection failed: {exc!r}")
        return 0, None
    finally:
        run.in_flight -= 1
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


async def api_load(session, url: str, run: Run, rate: float, victims: list[str]) -> None:
    """Paced mixed load until ``run.deadline``: each tick starts one request of a kind picked by weight."""
    names, weights = zip(*KINDS.items(), strict=True)
    in_flight: set[asyncio.Task] = set()
    interval = 1.0 / rate
    next_at = time.monotonic()
    while time.monotonic() < run.deadline:
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
    elif kind == "discovery":
        await request(session, run, "GET /discovery", "GET", f"{url}/api/v1/discovery")
    elif kind == "export_preview":
        await request(session, run, "POST /containers/{id}/export/preview", "POST", f"{base}/{victim}/export/preview",
                      json={})
    elif kind == "app_write":
        await app_write(session, url, run)
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


async def app_write(session, url: str, run: Run) -> None:
    """Approve a new app, or remove one approved earlier (keeping about ten), remembering what was
    acknowledged: the end check compares that with what the daemon lists."""
    present = [app_id for app_id, wanted in run.apps.items()
               if wanted and app_id.startswith("w-") and app_id not in run.removing]
    if len(present) > 10 and random.random() < 0.5:
        app_id = random.choice(present)
        run.removing.add(app_id)
        status, _ = await request(session, run, "DELETE /apps/{id}", "DELETE", f"{url}/api/v1/apps/{app_id}")
        run.removing.discard(app_id)
        if status == 204:
            run.apps[app_id] = False
    else:
        app_id = f"w-{uuid.uuid4().hex[:10]}"
        status, _ = await request(session, run, "POST /apps", "POST", f"{url}/api/v1/apps",
                                  json={"id": app_id, "name": app_id})
        if status == 201:
            run.apps[app_id] = True


def figures_now(url: str, pid: int, run: Run, timeout: float = 60.0) -> dict[str, float]:
    """RSS, descriptors and tasks of the daemon; ``idle_tasks`` leaves out the tasks of work in flight
    (operations running, requests being handled: counted by the daemon, since a request this load gave up
    waiting for still runs there), which a busy engine makes pile up and drain again: a trend in what
    remains is a leak, not a queue. Blocking: called in a thread, never behind the load's event loop. RSS
    and descriptors come from /proc; a scrape that takes longer than ``timeout`` leaves the tasks out (-1)."""
    in_flight = run.in_flight
    try:
        scraped = scrape(url, timeout)
    except OSError:  # URLError, a timeout
        scraped = {}
    tasks = scraped.get("asyncio_tasks", -1)
    requests = max(in_flight, scraped.get("http_requests_in_flight", 0.0) - 1)  # less the scrape itself
    operations = scraped.get("operations_in_flight", -1)
    idle_tasks = tasks - max(operations, 0) - requests if tasks >= 0 else -1
    return {"rss_mb": rss_mb(pid), "fds": open_fds(pid), "tasks": tasks, "idle_tasks": idle_tasks,
            "operations_in_flight": operations}


async def drained(url: str, pid: int, run: Run) -> dict[str, float]:
    """The daemon's figures once no operation is in flight and descriptors and tasks are back within
    tolerance of their idle level, or after DRAIN seconds, whichever comes first (trend_failures then
    judges them)."""
    deadline = time.monotonic() + DRAIN
    while True:
        figures = await asyncio.to_thread(figures_now, url, pid, run)
        settled = figures["operations_in_flight"] == 0 and all(
            figures[key] <= run.before[key] + TOLERANCE[key] for key in ("fds", "idle_tasks"))
        if settled or time.monotonic() >= deadline:
            return figures
        await asyncio.sleep(SAMPLE_EVERY)


async def told(clients: list[WsClient], operations: float, within: float = 10.0) -> None:
    """Wait (at most ``within`` s) until every client has read the lifecycle results the daemon counted:
    the last ones may still be on their way when the drain ends early. A shortfall is judged by report."""
    deadline = time.monotonic() + within
    while any(c.results < operations for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def sampler(url: str, pid: int, run: Run, started: float) -> None:
    """Samples every SAMPLE_EVERY seconds until ``run.deadline``, in a thread: on a machine busy with other
    work the load's event loop falls behind, and a sampler waiting its turn there took too few samples to
    judge a trend. Nor does it wait long for a daemon slow to answer: RSS and descriptors are sampled all
    the same."""
    while time.monotonic() < run.deadline:
        run.samples.append({"t": time.monotonic() - started, **figures_now(url, pid, run, 2 * SAMPLE_EVERY)})
        time.sleep(SAMPLE_EVERY)


async def faults(engine: Engine, run: Run, started: float, duration: float) -> None:
    """Kill the engine (SIGKILL) at 1/6 and 2/6 of the run and bring it back a few seconds later: the
    second half then shows whether the daemon settled back or keeps growing. An engine slow to come back
    (beside other work, a restart has taken 20 s) could leave that half without a quiet moment to judge
    RSS by, so the run then lasts until a third of it has passed after the last recovery."""
    next_at = started + duration / 6
    for _ in range(2):
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        outage = Outage(time.monotonic())
        run.outages.append(outage)
        await asyncio.to_thread(engine.kill)
        await asyncio.sleep(min(5.0, duration / 12))
        await asyncio.to_thread(engine.restart)
        outage.end = time.monotonic()
        next_at = max(started + 2 * duration / 6, outage.end + duration / 12)
    run.deadline = max(run.deadline, outage.end + AFTER_OUTAGE + duration / 3)


def prepare(engine: Engine, n_busy: int) -> tuple[list[str], list[str]]:
    busy = [engine.run(f"busy-{i}", "i=0; while true; do i=$((i+1)); echo line $i; usleep 20000; done",
                       RestartPolicy={"Name": "always"})[:12] for i in range(n_busy)]
    victims = [engine.run(f"victim-{i}", "sleep 100000", labels=linked(APP),
                          RestartPolicy={"Name": "unless-stopped"})[:12] for i in range(VICTIMS)]
    return busy, victims


async def soak(engine: Engine, duration: float, rate: float, n_clients: int, followers: int, n_busy: int,
               samples_out: Path | None) -> int:
    busy, victims = await asyncio.to_thread(prepare, engine, n_busy)
    daemon = await asyncio.to_thread(Daemon, engine, APP)
    run = Run()
    try:
        # API requests share at most API_CONNECTIONS kept-alive connections (as a browser limits its own),
        # so that the daemon's open descriptors measure the daemon, not the load generator's pool.
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=API_CONNECTIONS),
                                      timeout=timeout) as api:
            url = daemon.url
            status, _ = await request(session, run, "POST /apps", "POST", f"{url}/api/v1/apps",
                                      json={"id": "kept", "name": "Kept across faults"})
            assert status == 201, status
            run.apps["kept"] = True
            clients = [WsClient(session, url, run, busy[i % len(busy)] if i < followers else None)
                       for i in range(n_clients)]
            for client in clients:
                await client.start()
            await asyncio.sleep(SETTLE)
            run.before = await asyncio.to_thread(figures_now, url, daemon.pid, run)
            started = time.monotonic()
            run.deadline = started + duration
            await asyncio.gather(
                api_load(api, url, run, rate, victims),
                asyncio.to_thread(sampler, url, daemon.pid, run, started),
                faults(engine, run, started, duration),
            )
            # The last operations finish and are announced; idle stats samplers and kept-alive connections
            # expire: what the daemon holds should come back to what it held before the load.
            run.after = await drained(url, daemon.pid, run)
            operations = (await asyncio.to_thread(scrape, url))["operations"]
            await told(clients, operations)
            listed = {a["id"] for a in await (await session.get(f"{url}/api/v1/apps")).json()}
            for client in clients:
                await client.stop()
    finally:
        await asyncio.to_thread(daemon.close)
    if samples_out is not None:
        samples_out.write_text(json.dumps({"samples": run.samples, "outages": [
            (o.start - started, (o.end or o.start) - started) for o in run.outages]}, indent=1))
    return report(run, clients, listed, operations, duration, started)


def trend_failures(run: Run, duration: float, started: float) -> list[str]:
    """RSS: growth over the second half, leaving out outages and their recovery. Descriptors and tasks: what
    is held once the load has drained, against the idle level (their trend is printed alongside)."""
    failures = []
    quiet = [s for s in run.samples if s["t"] >= duration / 2
             and not run.in_outage(started + s["t"], started + s["t"])]
    for key, tolerance in TOLERANCE.items():
        points = [(s["t"], s[key]) for s in quiet if s[key] >= 0]
        growth = slope(points) * (duration / 2)
        values = [v for _, v in points] or [float("nan")]
        print(f"{key:10} mid {values[0]:8.1f}  end {values[-1]:8.1f}  max {max(values):8.1f}  "
              f"trend over the last half {growth:+.1f} (tolerance {tolerance:g})")
        if key != "rss_mb":  # memory a process once took is not given back; the others must be
            print(f"{'':10} idle before the load {run.before[key]:8.1f}  after it drained {run.after[key]:8.1f}")
            if run.after[key] > run.before[key] + tolerance:
                failures.append(f"{key}: {run.after[key]:.0f} held after the load drained, {run.before[key]:.0f} "
                                f"before it (tolerance {tolerance:g})")
            continue
        if len(points) < 3:
            failures.append(f"{key}: too few samples in the second half to judge a trend")
        elif growth > tolerance:
            failures.append(f"{key} grows: {growth:+.1f} over the last half (tolerance {tolerance:g})")
    return failures


def log_failures(run: Run, followers: list[WsClient]) -> list[str]:
    """Each follower's stream ended with 'error' in each outage, and lines came after the last one."""
    failures = []
    for outage in run.outages:
        window_end = (outage.end or outage.start) + AFTER_OUTAGE
        missing = [c.follow for c in followers
                   if not any(outage.start <= t <= window_end and r == "error" for t, r in c.ended)]
        if missing:
            failures.append(f"{len(missing)} of {len(followers)} followed log streams did not end with 'error' "
                            f"in the outage at {outage.start:.0f}")
    if run.outages:
        last = run.outages[-1].end or 0.0
        silent = [c.follow for c in followers if c.last_line <= last + AFTER_OUTAGE]
        if silent:
            failures.append(f"{len(silent)} followers got no log line after the last outage")
    return failures


def report(run: Run, clients: list[WsClient], listed: set[str], operations: float, duration: float,
           started: float) -> int:
    print(f"soak: {duration:.0f} s (ran {run.deadline - started:.0f}) on {os.cpu_count()} cores, "
          f"{len(clients)} WebSocket clients, "
          f"{sum(1 for c in clients if c.follow)} following logs, {len(run.outages)} engine kills")
    print(f"{'route':40} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for route in sorted(run.latencies):
        lat = sorted(run.latencies[route])
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(run.statuses[route].items()))
        print(f"{route:40} {len(lat):7d} {p50:8.1f} {p99:8.1f}  {statuses}")
    failures = list(dict.fromkeys(run.bad))[:20]
    if len(run.bad) > 20:
        failures.append(f"... {len(run.bad)} bad answers in all")
    missing_ids = sum(len(run.operation_ids - c.seen) for c in clients)
    if missing_ids:
        failures.append(f"{missing_ids} promised lifecycle notifications were lost "
                        f"(of {len(run.operation_ids) * len(clients)})")
    short = [c.results for c in clients if c.results != operations]
    if short or operations == 0:
        failures.append(f"{len(short)} clients did not get exactly the {operations:.0f} lifecycle results the "
                        f"daemon counted (got {sorted(set(short))[:5]})")
    if run.ws_closed_early:
        failures.append(f"{run.ws_closed_early} WebSocket clients were closed by the server")
    followers = [c for c in clients if c.follow]
    failures += log_failures(run, followers)
    lost = sorted(a for a, wanted in run.apps.items() if wanted and a not in listed)
    back = sorted(a for a, wanted in run.apps.items() if not wanted and a in listed)
    if lost or back:
        failures.append(f"approved apps lost: {lost[:5]}; removed apps back: {back[:5]}")
    failures += trend_failures(run, duration, started)
    ended = defaultdict(int)
    for c in followers:
        for _, reason in c.ended:
            ended[reason] += 1
    print(f"lifecycle results counted by the daemon: {operations:.0f}; 202s: {len(run.operation_ids)}; "
          f"log lines received: {run.log_lines}; log streams ended: {dict(ended)}; "
          f"apps acknowledged: {sum(run.apps.values())} present, {len(run.apps) - sum(run.apps.values())} removed")
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
    parser.add_argument("--followers", type=int, default=20, help="WebSocket clients following a busy container")
    parser.add_argument("--busy", type=int, default=BUSY, help="containers writing logs, followed in turn")
    parser.add_argument("--samples", type=Path, help="write the RSS/fd/task samples here (JSON)")
    args = parser.parse_args()
    if args.followers > 0 and args.busy < 1:
        parser.error("--followers needs at least one --busy container to follow")
    with lab() as the_lab:
        code = asyncio.run(soak(the_lab.engine, args.seconds, args.rate, args.clients, args.followers,
                                args.busy, args.samples))
    sys.exit(code)


if __name__ == "__main__":
    main()
