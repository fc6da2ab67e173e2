"""Resource statistics of one container, or of every linked running container."""

from __future__ import annotations

import time

from aiohttp import web

from .. import stats
from ..errors import ApiError, EngineError
from ..keys import APPS
from .common import json_response, listed, target


def _stats_failed(exc: Exception) -> ApiError:
    return ApiError(500, "CONTAINER_STATS_FAILED", f"Failed to get container stats: {exc}")


async def container_stats(request: web.Request) -> web.Response:
    runtime, ref = target(request)
    try:
        return json_response(await runtime.stats(ref))
    except EngineError as exc:
        raise _stats_failed(exc) from None


async def all_stats(request: web.Request) -> web.Response:
    """Linked running containers only (never nekzusd's own), sampled concurrently."""
    runtime, containers = await listed(request)
    running = [c for c in request.app[APPS].linked(containers) if c.running and not runtime.is_self(c)]
    running.sort(key=lambda c: (c.namespace, c.name))
    try:
        results = await stats.collect(runtime, running)
    except EngineError as exc:
        raise _stats_failed(exc) from None
    return json_response({"containers": results, "timestamp": int(time.time())})
