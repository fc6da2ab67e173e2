"""One read token from one address must not take every log stream of the daemon.

The red team held all 1,024 streams from 127.0.0.3 with one read token (33 connections x 32 containers),
and the owner then got TOO_MANY_SUBSCRIPTIONS. Now each remote address and each token subject has a share
of the daemon-wide cap, and remote clients together leave a reserve to local clients. The daemon runs with a
cap of 64 (a Budget with 64 log streams) so that the attack takes seconds: reserve 8, share 32, so remote
clients hold at most 56. Real daemon, real dockerd; remote clients come from 127.0.0.3-5, the owner is
127.0.0.1.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from nekzusd import config as config_mod
from nekzusd.app import create_app
from nekzusd.descriptors import Budget
from nekzusd.keys import LOG_STREAMS, RUNTIMES, TOKENS
from tests.harness.app import base_config, remote_config, remote_session, run_container, unique, wait_for, ws_connect

CAP = 64


@pytest.fixture
async def daemon(aiohttp_client, engine, tmp_path):
    data = remote_config(base_config(engine, tmp_path / "state"))
    app = create_app(config_mod.parse(data, env={}), budget=replace(Budget.current(), log_streams=CAP))
    return await aiohttp_client(app)


@pytest.fixture
async def containers(engine) -> list[str]:
    return list(await asyncio.gather(*(run_container(engine, unique("share")) for _ in range(16))))


async def remote_ws(client, http: aiohttp.ClientSession, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(client.make_url("/api/v1/ws"))
    await ws.send_json({"type": "auth", "data": {"token": token}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "auth_success", reply
    return ws


async def subscribe(ws: aiohttp.ClientWebSocketResponse, ids: list[str]) -> list[Any]:
    """Subscribe to each container; per container, "started" or the error's (code, message)."""
    for cid in ids:
        await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": cid, "tail": 0}})
    outcomes: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while len(outcomes) < len(ids):
            message = await ws.receive_json()
            data = message.get("data") or {}
            if message["type"] == "container.logs.started":
                outcomes[data["containerId"]] = "started"
            elif message["type"] == "container.logs.error":
                outcomes[data["containerId"]] = (data["error"], data["message"])
    return [outcomes[cid] for cid in ids]


def session(address: str) -> aiohttp.ClientSession:
    return remote_session(address)


async def test_remote_clients_get_a_share_and_the_owner_keeps_a_reserve(daemon, containers) -> None:
    streams = daemon.app[LOG_STREAMS]
    assert (streams.max_subscriptions, streams.local_reserve, streams.remote_share) == (CAP, 8, 32)
    tokens = daemon.app[TOKENS]
    token_a, token_b, token_c = (tokens.create(s, ["read:containers"], 600) for s in ("ra", "rb", "rc"))
    async with session("127.0.0.3") as from_3, session("127.0.0.4") as from_4, session("127.0.0.5") as from_5:
        a1, a2 = await remote_ws(daemon, from_3, token_a), await remote_ws(daemon, from_3, token_a)
        assert await subscribe(a1, containers) == ["started"] * 16
        assert await subscribe(a2, containers) == ["started"] * 16  # 32: the share of 127.0.0.3 and of "ra"
        # The same address with another token, and the same token from another address: both refused.
        other_token = await remote_ws(daemon, from_3, token_c)
        [refused] = await subscribe(other_token, containers[:1])
        assert refused[0] == "TOO_MANY_SUBSCRIPTIONS" and "per client address" in refused[1]
        same_token = await remote_ws(daemon, from_5, token_a)
        [refused] = await subscribe(same_token, containers[:1])
        assert refused[0] == "TOO_MANY_SUBSCRIPTIONS" and "per client subject" in refused[1]
        # A second remote client gets what is left to remote clients (56 - 32), not the reserve.
        b1, b2 = await remote_ws(daemon, from_4, token_b), await remote_ws(daemon, from_4, token_b)
        assert await subscribe(b1, containers) == ["started"] * 16
        second = await subscribe(b2, containers)
        assert second[:8] == ["started"] * 8
        assert {o[0] for o in second[8:]} == {"TOO_MANY_SUBSCRIPTIONS"}
        assert all("kept for local clients" in o[1] for o in second[8:])
        assert streams.active == CAP - 8
        # The owner still follows logs: the reserve is its own, then the daemon-wide cap holds for it too.
        owner = await ws_connect(daemon)
        mine = await subscribe(owner, containers[:9])
        assert mine[:8] == ["started"] * 8
        assert mine[8][0] == "TOO_MANY_SUBSCRIPTIONS" and f"follows {CAP} log streams" in mine[8][1]
        # Streams that end give their share back.
        await a1.close()
        await wait_for(lambda: _true(streams.held(("subject", "ra")) == 16))
        await owner.close()
        await wait_for(lambda: _true(streams.active == CAP - 8 - 16))
        assert await subscribe(other_token, containers[:1]) == ["started"]
        for ws in (a2, other_token, same_token, b1, b2):
            await ws.close()
        await wait_for(lambda: _true(streams.active == 0))
        assert streams.held(("remote", None)) == 0


async def _true(value: bool) -> bool:
    return value


async def test_remote_client_cannot_multiply_stats_samplers(daemon, containers, engine) -> None:
    """Stats samplers (one engine stream each) are keyed by the container's own id: however many names,
    short ids or connections a remote read token uses, a container has one sampler, so samplers stay
    bounded by the running containers, not by what a client asks."""
    runtime = daemon.app[RUNTIMES].by_name["docker"]
    token = daemon.app[TOKENS].create("stats", ["read:containers"], 600)
    full_id = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{containers[0]}/json"))["Id"]
    names = [full_id[:n] for n in range(12, 65, 4)] + [containers[0]]
    async with session("127.0.0.3") as http:
        headers = {"Authorization": f"Bearer {token}"}

        async def ask(ref: str) -> int:
            async with http.get(daemon.make_url(f"/api/v1/containers/{ref}/stats"), headers=headers) as response:
                return response.status

        statuses = await asyncio.gather(*(ask(ref) for ref in names))
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    assert runtime.samplers.active == 1
