"""Attacks on this round's live surfaces: HTTP log streams, live stats and state-change broadcasts over the
WebSocket, the merged list's filters. Real daemon (an app on a real socket, or ``nekzusd serve``), real
dockerd; remote attackers come from 127.0.0.2-9 with a read token while only 127.0.0.1 is local.
The catalogue rows are in docs/security.md (K21 onwards)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse, web

from nekzusd.keys import LIVE_STATS
from tests.harness.app import (base_config, bearer, next_message, remote_config, remote_session, run_container,
                               unique)
from tests.harness.engine_proxy import EngineProxy


class CountingProxy(EngineProxy):
    """Counts the container listings the daemon asks the real engine for."""

    def __init__(self, engine_socket: str, listen: Path) -> None:
        super().__init__(engine_socket, listen)
        self.listings = 0

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if re.search(r"/containers/json\b", request.raw_path):
            self.listings += 1
        return await super().forward(request)


async def remote_ws(client: Any, data: dict[str, Any], http: Any, subject: str = "viewer") -> ClientWebSocketResponse:
    ws = await http.ws_connect(client.make_url("/api/v1/ws"))
    await ws.send_json({"type": "auth", "data": {"token": bearer(data, ["read:containers"], subject)[
        "Authorization"].removeprefix("Bearer ")}})
    assert (await ws.receive_json(timeout=10))["type"] == "auth_success"
    return ws


async def test_stats_subscribes_naming_made_up_namespaces_share_one_listing(engine, make_client, tmp_path):
    """A read token names the Docker runtime with a new ``namespace`` in every subscribe. Docker has no
    namespaces, so the listing the ids are matched against is the same; before, each namespace string was
    a listing of its own (one engine list per message, each kept 5 s: 40 messages, 40 listings)."""
    proxy = CountingProxy(engine.url.removeprefix("unix://"), tmp_path / "p.sock")
    await proxy.start()
    try:
        data = remote_config(base_config(engine, tmp_path / "state"))
        data["runtimes"] = {"docker": {"host": f"unix://{proxy.listen}"}}
        client = await make_client(data)
        cid = await run_container(engine, unique("watched"))
        async with remote_session("127.0.0.2") as http:
            ws = await remote_ws(client, data, http)
            before = proxy.listings
            for i in range(40):
                await ws.send_json({"type": "container.stats.subscribe", "data": {
                    "containerIds": [cid], "runtime": "docker", "namespace": f"made-up-{i}"}})
            for _ in range(40):
                await next_message(ws, "container.stats.subscribed", timeout=30)
            listings = proxy.listings - before
            assert listings <= 5, listings  # one per second at most, shared (RESOLVE_AGE)
            assert len(client.app[LIVE_STATS].listings._entries) <= 2
            await ws.close()
        await client.close()
    finally:
        await proxy.stop()
