"""Prometheus metrics, one registry per app (so tests can build many apps side by side).

Requests and operations are counted as they happen; what other parts of the daemon already count (WebSocket
clients, log streams, rate-limit rejections, runtime reachability) is read at scrape time by a collector,
so those modules need not know about Prometheus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .keys import METRICS, OPERATIONS
from .operations import Operation

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # route label of requests no route matched (keeps label cardinality bounded)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def route_of(request: web.Request) -> str:
    """The matched route's template (``/api/v1/containers/{id}``), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


class Metrics:
    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # HTTP requests being handled now, also those whose client gave up waiting: the work in flight
        # that the task count includes (the soak test leaves it out of its leak trend).
        self.requests_in_flight = 0
        self.requests = Counter("nekzusd_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("nekzusd_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.operations = Counter("nekzusd_operations", "Lifecycle operations by kind and result",
                                  ["kind", "result"], registry=self.registry)
        self.operation_latency = Histogram("nekzusd_operation_duration_seconds",
                                           "Lifecycle operation duration by kind", ["kind"],
                                           buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_LiveCollector(app))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"  # any token is a method to the parser
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_operation(self, operation: Operation) -> None:
        """An ``Operations.listeners`` entry."""
        self.operations.labels(operation.action.name, "success" if operation.ok else "failure").inc()
        if operation.duration is not None:
            self.operation_latency.labels(operation.action.name).observe(operation.duration)

    def expose(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Reads the daemon's live counters at scrape time (see ``status.live_counters``)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []  # the set of families depends on which services are up; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        from .status import live_counters, runtime_states

        info = GaugeMetricFamily("nekzusd_info", "Build information", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        live = live_counters(self.app)
        gauges = {"websocket_clients": "Connected WebSocket clients",
                  "log_streams": "Active log streams (WebSocket subscriptions and HTTP log streams)"}
        counters = {"log_lines_streamed": "Log lines sent to clients (WebSocket subscriptions and HTTP log streams)",
                    "log_lines_dropped": "Log lines dropped because a client's send queue was full",
                    "rate_limit_rejections": "Requests refused with 429 RATE_LIMITED"}
        for key, help_text in gauges.items():
            if live.get(key) is not None:
                yield GaugeMetricFamily(f"nekzusd_{key}", help_text, value=live[key])
        for key, help_text in counters.items():
            if live.get(key) is not None:
                yield CounterMetricFamily(f"nekzusd_{key}", help_text, value=live[key])
        up = GaugeMetricFamily("nekzusd_runtime_up", "1 when the runtime answered its last ping",
                               labels=["runtime"])
        latency = GaugeMetricFamily("nekzusd_runtime_ping_seconds", "Latency of the runtime's last ping",
                                    labels=["runtime"])
        for state in runtime_states(self.app):
            up.add_metric([state.name], 1 if state.reachable else 0)
            if state.latency is not None:
                latency.add_metric([state.name], state.latency)
        yield up
        yield latency
        operations = self.app.get(OPERATIONS)
        if operations is not None:
            yield GaugeMetricFamily("nekzusd_operations_in_flight", "Lifecycle operations accepted and not finished",
                                    value=operations.in_flight)
        metrics = self.app.get(METRICS)
        if metrics is not None:
            yield GaugeMetricFamily("nekzusd_http_requests_in_flight", "HTTP requests being handled (this scrape too)",
                                    value=metrics.requests_in_flight)
        yield from _asyncio_tasks()


def _asyncio_tasks() -> Iterator[Metric]:
    """Tasks alive on the serving loop: a count that only grows means something is never awaited (the
    soak test watches its trend). Read at scrape time, which runs on that loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # scraped off the loop (a plain registry dump): there is nothing to count
        return
    yield GaugeMetricFamily("nekzusd_asyncio_tasks", "asyncio tasks alive on the event loop",
                            value=len(asyncio.all_tasks(loop)))
