"""What the status page, /readyz and /metrics report, gathered as plain data.

``gather(app)`` builds the status page's dict; ``RuntimeProbe`` pings each runtime with a short timeout
and caches the answer briefly, so the page, /readyz and /metrics together cost the engine one ping per
``RuntimeProbe.TTL``. The page's container listing is cached the same way (``RuntimeProbe.listings``,
``LIST_TTL``): a flood of page loads, even from an exempt local address, costs the engine one listing per
runtime per ``LIST_TTL``, and callers that arrive while a listing runs wait for that one. Counters owned
by other parts of the daemon are read here, defensively, because those parts may be absent (a daemon
without log streaming still has a status page).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import __version__
from .errors import ApiError
from .keys import APPS, HEALTH, HUB, LIVE_STATS, LOG_STREAMS, OPERATIONS, PROBE, RATE_LIMITER, RUNTIMES, STARTED_AT
from .runtimes import Container, Runtime, Runtimes
from .secrets import scrub_text

LIST_TIMEOUT = 3.0  # the page must render even when an engine is slow
LIST_TTL = 1.0  # seconds the status page's container listing is reused (the page refreshes every 10 s)


@dataclass(frozen=True)
class RuntimeState:
    name: str
    primary: bool
    reachable: bool
    version: str = ""
    latency: float | None = None  # seconds the last ping took
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "primary": self.primary, "reachable": self.reachable,
                "version": self.version, "error": self.error,
                "latencyMs": None if self.latency is None else round(self.latency * 1000, 1)}


class RuntimeProbe:
    TTL = 2.0       # seconds a ping result is reused
    TIMEOUT = 2.0   # a runtime that does not answer a ping in this long counts as down

    def __init__(self, runtimes: Runtimes) -> None:
        self._runtimes = runtimes
        self.states: dict[str, RuntimeState] = {}
        self._lock = asyncio.Lock()
        self._checked = -math.inf
        self._list_lock = asyncio.Lock()
        self._listed = -math.inf
        self._listings: list[list[Container] | None] = []

    async def check(self) -> list[RuntimeState]:
        """Every runtime's reachability, pinging (concurrently) only when the cache is stale."""
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if now - self._checked >= self.TTL:
                states = await asyncio.gather(*(self._ping(r) for r in self._runtimes.all()))
                self.states = {s.name: s for s in states}
                self._checked = asyncio.get_running_loop().time()
        return list(self.states.values())

    async def listings(self) -> list[list[Container] | None]:
        """Each runtime's containers (None where the listing failed), in ``Runtimes.all()`` order, listed
        again only when older than ``LIST_TTL``. The lock makes concurrent callers share one listing
        without a task of its own to own: the first lists, the others find its fresh result."""
        async with self._list_lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self._listed >= LIST_TTL:
                self._listings = list(await asyncio.gather(*(_list(r) for r in self._runtimes.all())))
                self._listed = loop.time()
            return self._listings

    async def primary(self) -> RuntimeState:
        await self.check()
        return self.states[self._runtimes.primary]

    async def _ping(self, runtime: Runtime) -> RuntimeState:
        primary = runtime.name == self._runtimes.primary
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.TIMEOUT):
                info = await runtime.ping()
        except TimeoutError:
            return RuntimeState(runtime.name, primary, False, error=f"no answer within {self.TIMEOUT:g} s")
        except ApiError as exc:
            return RuntimeState(runtime.name, primary, False, error=exc.message)
        except Exception as exc:  # whatever the engine client raised, the runtime is not usable now
            return RuntimeState(runtime.name, primary, False, error=str(exc) or type(exc).__name__)
        return RuntimeState(runtime.name, primary, True, str(info.get("version", "")),
                            time.perf_counter() - started)


def runtime_states(app: web.Application) -> list[RuntimeState]:
    """The last ping results, without pinging (for synchronous readers such as the metrics collector)."""
    probe = app.get(PROBE)
    return list(probe.states.values()) if probe is not None else []


def live_counters(app: web.Application) -> dict[str, int]:
    """Counters other parts of the daemon keep (WebSocket hub, log streams, rate limiter)."""
    clients = list(app[HUB].clients)
    log_streams = app[LOG_STREAMS]
    return {
        "websocket_clients": len(clients),
        "websocket_authenticated": sum(c.authenticated for c in clients),
        "log_streams": log_streams.active,
        "log_lines_streamed": log_streams.lines_sent,
        "log_lines_dropped": log_streams.lines_dropped,
        **_live_stats_counters(app),
        "rate_limit_rejections": app[RATE_LIMITER].rejected,
    }


def _live_stats_counters(app: web.Application) -> dict[str, int]:
    live = app.get(LIVE_STATS)
    if live is None:
        return {}
    return {"stats_subscriptions": live.active, "stats_messages_sent": live.sent,
            "stats_messages_replaced": live.replaced}


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if days or hours:
        parts.append(f"{hours} h")
    parts.append(f"{minutes} min")
    if not days and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts)


async def _list(runtime: Runtime) -> list[Container] | None:
    try:
        async with asyncio.timeout(LIST_TIMEOUT):
            return await runtime.list_containers()
    except Exception:  # shown as "not reachable" on the page; the probe says why
        return None


def _container_json(c: Container) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "state": c.state, "status": c.status, "runtime": c.runtime,
            "namespace": c.namespace}


async def gather(app: web.Application) -> dict[str, Any]:
    """Everything the status page shows, as plain data."""
    runtimes = app[RUNTIMES].all()
    probe = app[PROBE]
    states, lists = await asyncio.gather(probe.check(), probe.listings())
    reachable = {s.name: s.reachable for s in states}
    containers: list[Container] = []
    by_state: dict[str, dict[str, int]] = {}
    for runtime, listed in zip(runtimes, lists, strict=True):
        if listed is None or not reachable.get(runtime.name):
            continue
        containers += listed
        by_state[runtime.name] = dict(sorted(Counter(c.state for c in listed).items()))

    apps_registry, health = app[APPS], app[HEALTH]
    linked: dict[str, list[Container]] = {}
    for c in containers:
        owner = apps_registry.app_of(c)
        if owner is not None:
            linked.setdefault(owner.id, []).append(c)
    apps = [{"id": a.id, "name": a.name, "source": a.source, "health": health.status.get(a.id, "unknown"),
             "containers": [_container_json(c) for c in sorted(linked.get(a.id, []), key=lambda c: c.name)]}
            for a in apps_registry.all()]

    operations = app[OPERATIONS]
    recent = [{"id": o.id, "kind": o.action.name, "containerId": o.container_id, "container": o.name,
               "runtime": o.runtime, "result": "success" if o.ok else "failure", "error": scrub_text(o.error or ""),
               "durationMs": None if o.duration is None else round(o.duration * 1000),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o.finished or o.started))}
              for o in reversed(operations.recent)]

    uptime = time.time() - app[STARTED_AT]
    return {
        "version": __version__,
        "uptimeSeconds": int(uptime),
        "uptime": human_duration(uptime),
        "runtimes": [s.as_json() for s in states],
        "containers": {"total": len(containers), "byState": by_state},
        "apps": apps,
        "operations": {"inFlight": operations.in_flight, "recent": recent},
        "live": live_counters(app),
    }
