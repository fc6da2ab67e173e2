"""Resource statistics of one container, or of every linked running container."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import stats
from ..errors import engine_errors
from ..keys import APPS
from ..merged import STATS_TIMEOUT, Answers, Scope, each, merged
from ..runtimes import Runtime
from .common import json_response, listed, target

_FAILED = ("CONTAINER_STATS_FAILED", "Failed to get container stats")


async def container_stats(request: web.Request) -> web.Response:
    runtime, ref = target(request)
    with engine_errors(*_FAILED):
        return json_response(await runtime.stats(ref))


async def all_stats(request: web.Request) -> web.Response:
    """Linked running containers only (never nekzusd's own) of every covered runtime, each runtime sampled
    concurrently; in the list's order. A runtime whose listing or sampling fails is left out like in the
    list (nekzusd.merged)."""
    listing = await listed(request)
    apps = request.app[APPS]
    targets = [(r, c) for r, c in merged((r, apps.linked(rows)) for r, rows in listing.answered)
               if c.running and not r.is_self(c)]

    async def sample(runtime: Runtime) -> list[dict[str, Any]]:
        return await stats.collect(runtime, [c for r, c in targets if r is runtime])

    with engine_errors(*_FAILED):
        sampled = await each(Scope(tuple(r for r, _rows in listing.answered)), sample, STATS_TIMEOUT)
    # Each runtime's results keep its targets' order; put them back in the merged order (a stable sort: a
    # pod name repeated in two namespaces keeps its runtime's order).
    position: dict[tuple[str, str], int] = {}
    for i, (runtime, container) in enumerate(targets):
        position.setdefault((runtime.name, container.id), i)
    results = sorted(((r, s) for r, found in sampled.answered for s in found),
                     key=lambda pair: position.get((pair[0].name, pair[1].get("containerId", "")), len(targets)))
    headers = Answers([], listing.unavailable | sampled.unavailable).headers
    return json_response({"containers": [s for _r, s in results], "timestamp": int(time.time())}, headers=headers)
