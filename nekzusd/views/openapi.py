"""GET /api/v1/openapi.json: the API description (nekzusd.apidoc: the packaged file plus the lifecycle paths).

The document is built and encoded once, at import, so serving it costs no disk I/O.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..apidoc import DOCUMENT
from ..auth import PUBLIC, requires

_DOCUMENT = json.dumps(DOCUMENT, indent=1).encode()


@requires(PUBLIC)  # it describes the API, it reveals nothing about the server's containers
async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=_DOCUMENT, content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})
