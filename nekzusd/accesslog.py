"""One structured line per request on stderr (journald keeps it), and the request metrics.

Only the path is logged, never the query string or headers: tokens may travel in either.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from .auth import CLIENT, PRINCIPAL
from .keys import METRICS
from .metrics import route_of

log = logging.getLogger("nekzusd.access")

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
async def observe(request: web.Request, handler):
    """Outermost middleware: sees the final status, including errors rendered by the error middleware."""
    started = time.perf_counter()
    status = 500
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
        log.info("%s", format_line(request, status, seconds))
        request.app[METRICS].observe_request(route_of(request), request.method, status, seconds)
