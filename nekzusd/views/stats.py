"""Resource statistics of one container, or of every linked running container."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import stats
from ..errors import engine_errors
from ..keys import APPS
from ..merged import STATS_TIMEOUT, headers, merged, per_runtime
from ..runtimes import Container, Runtime
from .common import json_response, listed, target

_FAILED = ("CONTAINER_STATS_FAILED", "Failed to get container stats")


async def container_stats(request: web.Request) -> web.Response:
    runtime, ref = target(request)
    with engine_errors(*_FAILED):
        return json_response(await runtime.stats(ref))


async def all_stats(request: web.Request) -> web.Response:
    """Linked running containers only (never nekzusd's own) of every covered runtime, each runtime sampled
    concurrently; in the list's order. A runtime whose listing or sampling fails is left out like in the
    list (nekzusd.merged); pods no statistics source answers for are left out and named in
    ``statsUnavailable`` (docs/stats.md)."""
    listing = await listed(request)
    apps = request.app[APPS]
    targets = [(r, c) for r, c in merged((r, apps.linked(rows)) for r, rows in listing.answered)
               if c.running and not r.is_self(c)]
    left_out: list[dict[str, Any]] = []

    async def sample(runtime: Runtime, containers: list[Container]) -> list[dict[str, Any]]:
        return await stats.collect(runtime, containers, unavailable=left_out)

    with engine_errors(*_FAILED):
        results, unavailable = await per_runtime([r for r, _rows in listing.answered], targets, sample,
                                                 _container_id, STATS_TIMEOUT)
    body: dict[str, Any] = {"containers": results, "timestamp": int(time.time())}
    if left_out:
        body["statsUnavailable"] = left_out
    return json_response(body, headers=headers(listing.unavailable | unavailable))


def _container_id(stats_object: dict[str, Any]) -> str:
    return str(stats_object.get("containerId", ""))
