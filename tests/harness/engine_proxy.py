"""A real HTTP hop on a unix socket in front of the test engine, for tests that must see or disturb what
the daemon sends to the engine (a proxy, not a mock: the real dockerd answers everything).

Subclasses decide what to do with each request in ``forward``; ``upstream(request)`` sends it on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def end_to_end(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}


class EngineProxy:
    def __init__(self, engine_url: str, listen: Path) -> None:
        """``engine_url``: the real engine's ``unix://`` URL (``Engine.url``); the proxy listens on ``listen``."""
        self.engine_socket = engine_url.removeprefix("unix://")
        self.listen = listen
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.listen}"

    def route(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` (a daemon's configuration data) with its Docker engine reached through this proxy."""
        config["runtimes"] = {"docker": {"host": self.url}}
        return config

    async def upstream(self, request: web.Request) -> aiohttp.ClientResponse:
        """The request, as the daemon sent it (raw path kept), sent to the real engine."""
        return await self._session.request(request.method, URL(f"http://engine{request.raw_path}", encoded=True),
                                           data=await request.read(), headers=end_to_end(request.headers),
                                           timeout=aiohttp.ClientTimeout(total=None))

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Pass the request and stream the engine's answer back unchanged."""
        async with await self.upstream(request) as upstream:
            response = web.StreamResponse(status=upstream.status, headers=end_to_end(upstream.headers))
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.engine_socket))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.listen)).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def __aenter__(self) -> EngineProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


class CountingProxy(EngineProxy):
    """Counts what the daemon asks the real engine for: container listings and single-container lookups."""

    def __init__(self, engine_url: str, listen: Path) -> None:
        super().__init__(engine_url, listen)
        self.listings = 0
        self.inspects = 0

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if re.search(r"/containers/json\b", request.raw_path):
            self.listings += 1
        elif re.search(r"/containers/[^/]+/json$", request.path):
            self.inspects += 1
        return await super().forward(request)
