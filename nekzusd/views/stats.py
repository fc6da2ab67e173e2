"""Resource statistics of one container, or of every linked running container."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import stats
from ..errors import engine_errors
from ..keys import APPS
from .common import json_response, listed, target

_FAILED = ("CONTAINER_STATS_FAILED", "Failed to get container stats")


async def container_stats(request: web.Request) -> web.Response:
    runtime, ref = target(request)
    with engine_errors(*_FAILED):
        return json_response(await runtime.stats(ref))


async def all_stats(request: web.Request) -> web.Response:
    """Linked running containers only (never nekzusd's own), sampled concurrently."""
    runtime, containers = await listed(request)
    running = [c for c in request.app[APPS].linked(containers) if c.running and not runtime.is_self(c)]
    running.sort(key=lambda c: (c.namespace, c.name))
    unavailable: list[dict[str, Any]] = []
    with engine_errors(*_FAILED):
        results = await stats.collect(runtime, running, unavailable=unavailable)
    body: dict[str, Any] = {"containers": results, "timestamp": int(time.time())}
    if unavailable:  # pods left out because no statistics source answers for them (docs/stats.md)
        body["statsUnavailable"] = unavailable
    return json_response(body)
