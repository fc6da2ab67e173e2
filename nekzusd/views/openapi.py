"""GET /api/v1/openapi.json: the API description shipped in the package (nekzusd/openapi.json).

The file is read and encoded once, when the route is set up, so serving it costs no disk I/O.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from ..auth import PUBLIC, requires

_DOCUMENT = resources.files("nekzusd").joinpath("openapi.json").read_bytes()


@requires(PUBLIC)  # it describes the API, it reveals nothing about the server's containers
async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=_DOCUMENT, content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})
