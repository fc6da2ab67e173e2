"""One structured line per request on stderr (journald keeps it), and the request metrics.

Only the path is logged, never the query string or headers: tokens may travel in either.

A caller nobody authenticated can provoke error answers as fast as it can send (401, 404, 429): those
lines are throttled per client address (a burst, then about one per few seconds, with a count of the
lines held back), so that a stranger cannot flood the journal. Answers to authenticated callers and
successful answers are always logged; the metrics count every request either way.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from .auth import CLIENT, PRINCIPAL
from .keys import METRICS
from .logthrottle import Throttle
from .metrics import route_of

log = logging.getLogger("nekzusd.access")
_strangers = Throttle(log, burst=20, interval=3.0, global_burst=200, global_interval=0.05)

CLIENT_CLOSED = 499  # the client went away before the answer (nginx's convention)


def _field(value: str) -> str:
    """A logfmt value: quoted when it holds spaces, quotes or '='."""
    if value and not any(ch in value for ch in ' "=\\') and value.isprintable():
        return value
    return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'


def format_line(request: web.Request, status: int, seconds: float) -> str:
    principal = request.get(PRINCIPAL)
    client = request.get(CLIENT) or request.remote or "-"
    return (f"method={request.method} path={_field(request.path)} status={status} "
            f"duration_ms={seconds * 1000:.1f} client={client} "
            f"subject={_field(principal.subject) if principal else '-'}")


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: sees the final status, including errors rendered by the error middleware."""
    started = time.perf_counter()
    status = 500
    metrics = request.app[METRICS]
    metrics.requests_in_flight += 1
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        seconds = time.perf_counter() - started
        if status < 400 or request.get(PRINCIPAL) is not None:
            log.info("%s", format_line(request, status, seconds))
        else:
            _strangers.log(request.get(CLIENT), logging.INFO, "%s", format_line(request, status, seconds))
        metrics.requests_in_flight -= 1
        metrics.observe_request(route_of(request), request.method, status, seconds)
