"""GET /api/v1/containers/{id}/logs and /{namespace}/{pod}/logs: the stream itself is ``httplogs``."""

from __future__ import annotations

from aiohttp import web

from .. import httplogs


async def container_logs(request: web.Request) -> web.StreamResponse:
    return await httplogs.serve(request)
