"""Attacks on this round's live surfaces: HTTP log streams, live stats and state-change broadcasts over the
WebSocket, the merged list's filters. Real daemon (an app on a real socket, or ``nekzusd serve``), real
dockerd; remote attackers come from 127.0.0.2-9 with a read token while only 127.0.0.1 is local.
The catalogue rows are in docs/security.md (K21 onwards)."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse

from nekzusd import config as config_mod
from nekzusd.app import create_app
from nekzusd.descriptors import Budget
from nekzusd.hub import CONTROL_RESERVE, LOG_QUEUE_SIZE
from nekzusd.keys import HUB, LIVE_STATS, LOG_STREAMS, STATE_CHANGES
from tests.harness.app import (base_config, bearer, next_message, raw_websocket, remote_config, remote_connector,
                               remote_session, run_container, unique, wait_for, ws_connect)
from tests.harness.engine_proxy import CountingProxy


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
    async with CountingProxy(engine.url, tmp_path / "p.sock") as proxy:
        data = proxy.route(remote_config(base_config(engine, tmp_path / "state")))
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


APP = {"nekzus.app.id": "grafana"}  # linked to the app every base_config approves


async def test_stats_subscribe_abuse_from_a_read_token(engine, remote_client, config_data):
    """Before auth; "all" must not name containers no app links; one frame of 4,000 repeats of an id;
    subscribe/unsubscribe churn: every answer clean, one watch per container, nothing left behind."""
    client = await remote_client(remote_config(config_data))
    linked = await run_container(engine, unique("linked"), labels=APP)
    hidden = await run_container(engine, unique("hidden"))
    live = client.app[LIVE_STATS]
    async with remote_session("127.0.0.2") as http:
        stranger = await http.ws_connect(client.make_url("/api/v1/ws"))
        await stranger.send_json({"type": "container.stats.subscribe", "data": {"containerIds": [linked]}})
        assert (await stranger.receive_json(timeout=10))["data"]["error"] == "UNAUTHORIZED"
        assert live.active == 0
        await stranger.close()

        ws = await remote_ws(client, config_data, http)
        await ws.send_json({"type": "container.stats.subscribe", "data": {"interval": 1}})
        answer = (await next_message(ws, "container.stats.subscribed"))["data"]
        assert [c["containerId"] for c in answer["containers"]] == [linked] and answer["all"]
        seen: set[str] = set()
        for _ in range(3):  # three rounds of samples: only the linked container, never the other one
            message = await next_message(ws, "container.stats", where=lambda m: True)
            seen.add(message["data"]["containerId"])
        assert seen == {linked}
        await ws.send_json({"type": "container.stats.unsubscribe", "data": {}})
        await next_message(ws, "container.stats.unsubscribed")

        await ws.send_json({"type": "container.stats.subscribe", "data": {"containerIds": [linked] * 4000}})
        answer = (await next_message(ws, "container.stats.subscribed"))["data"]
        assert len(answer["containers"]) == 1 and live.active == 1
        for _ in range(20):
            await ws.send_json({"type": "container.stats.subscribe",
                                "data": {"containerIds": [linked, hidden, linked[:6]], "interval": 1}})
            await ws.send_json({"type": "container.stats.unsubscribe", "data": {}})
            answer = (await next_message(ws, "container.stats.unsubscribed"))["data"]
            assert {c["containerId"] for c in answer["containers"]} <= {linked, hidden}
        assert live.active == 0
        await ws.close()
    await wait_for(lambda: _true(live.active == 0 and live.tasks == 0 and not live.watchers))


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def capped64(aiohttp_client, engine, tmp_path):
    """A daemon following at most 64 log streams: 8 kept for local clients, 32 per remote address or subject."""
    data = remote_config(base_config(engine, tmp_path / "state",  # the caps, not the rate limit, are under test
                                     rate_limit={"containers": {"per_minute": 600, "burst": 100}}))
    app = create_app(config_mod.parse(data, env={}), budget=replace(Budget.current(), log_streams=64))
    return await aiohttp_client(app), data


async def test_http_log_streams_from_eight_addresses_leave_the_owner_its_reserve(capped64, engine):
    """Followed GET …/logs from 127.0.0.2-9, from one token and from several: a share per address and per
    subject, 7/8 of the cap for all remote clients, and the owner still gets the last eighth."""
    client, data = capped64
    streams = client.app[LOG_STREAMS]
    assert (streams.max_subscriptions, streams.local_reserve, streams.remote_share) == (64, 8, 32)
    cid = await run_container(engine, unique("quiet"), "echo hello; sleep 100000")
    url = client.make_url(f"/api/v1/containers/{cid}/logs")
    opened: list[aiohttp.ClientResponse] = []
    sessions = {n: aiohttp.ClientSession(connector=remote_connector(f"127.0.0.{n}", limit=0)) for n in range(2, 10)}

    async def burst(http: aiohttp.ClientSession, headers: dict[str, str] | None, count: int) -> list[str]:
        """``count`` concurrent follows: the refusals' messages (the streams that opened are kept)."""
        async def one() -> str:
            resp = await http.get(url, params={"follow": "true", "tail": "1"}, headers=headers)
            if resp.status == 200:
                opened.append(resp)
                return ""
            body = await resp.json()
            resp.close()
            assert body["error"] == "TOO_MANY_SUBSCRIPTIONS", body
            return f"{resp.status} {body['message']}"
        return [r for r in await asyncio.gather(*(one() for _ in range(count))) if r]

    try:
        a = bearer(data, ["read:containers"], "alice")
        refused = await burst(sessions[2], a, 33)
        assert len(refused) == 1 and "per client address" in refused[0] and refused[0].startswith("429")
        refused = await burst(sessions[3], a, 1)  # the same token elsewhere: its subject's share is used up
        assert len(refused) == 1 and "per client subject" in refused[0]
        refused = await burst(sessions[3], bearer(data, ["read:containers"], "bob"), 25)
        assert len(refused) == 1 and "kept for local clients" in refused[0]
        for n in range(4, 10):  # every other address, each with its own token: nothing left for remote clients
            refused = await burst(sessions[n], bearer(data, ["read:containers"], f"user{n}"), 2)
            assert len(refused) == 2 and all("kept for local clients" in r for r in refused)
        assert streams.held(("remote", None)) == 56 and streams.active == 56
        refused = await burst(client.session, None, 9)  # the owner (127.0.0.1, local trust)
        assert len(refused) == 1 and refused[0].startswith("503"), refused
        assert streams.active == 64
        first = opened[0]
        assert await first.content.readline() == b"hello\n"
    finally:
        for resp in opened:
            resp.close()
        for http in sessions.values():
            await http.close()
    await wait_for(lambda: _true(streams.active == 0 and streams.held(("remote", None)) == 0), timeout=20)


async def test_a_state_change_storm_chains_for_readers_and_tells_strangers_nothing(engine, make_client, config_data):
    """30 containers killed and started twice through the raw engine API, all at once (120 state changes
    in a burst). A reader that keeps up can follow every container's chain to its real final state; a
    client that reads nothing holds a bounded queue, then is closed as stuck; a remote socket that never
    authenticated is told nothing; the daemon's own tables stay the size of the container set."""
    client = await make_client(remote_config(config_data))
    ids = list(await asyncio.gather(*(run_container(engine, unique("storm")) for _ in range(30))))
    hub = client.app[HUB]
    watch = client.app[STATE_CHANGES].watches[0]
    await wait_for(lambda: _true(watch.known is not None and _all_running(watch, ids)), timeout=30)
    reader = await ws_connect(client)
    sock = await asyncio.to_thread(raw_websocket, client.port)  # local, so authenticated at once; reads nothing
    port = sock.getsockname()[1]
    await wait_for(lambda: _true(any(c._transport.get_extra_info("peername")[1] == port for c in hub.clients)))
    [stuck] = [c for c in hub.clients if c._transport.get_extra_info("peername")[1] == port]
    stuck._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stuck._transport.set_write_buffer_limits(high=4096)
    stuck.ws._writer._limit = 4096
    async with remote_session("127.0.0.2") as http:
        stranger = await http.ws_connect(client.make_url("/api/v1/ws"))

        def storm() -> None:
            with ThreadPoolExecutor(16) as pool:
                for _ in range(2):
                    list(pool.map(lambda c: engine.api_json("POST", f"/containers/{c}/kill", expect=(204,)), ids))
                    list(pool.map(lambda c: engine.api_json("POST", f"/containers/{c}/start", expect=(204,)), ids))

        told = {cid: "running" for cid in ids}
        depth = 0
        t0 = time.monotonic()
        stormer = asyncio.create_task(asyncio.to_thread(storm))
        async with asyncio.timeout(90):
            while not stormer.done() or any(s != "running" for s in told.values()) or not _all_running(watch, ids):
                depth = max(depth, len(stuck._queue))
                try:
                    message = await reader.receive_json(timeout=1)
                except TimeoutError:
                    continue
                if message["type"] != "container.state_changed" or message["data"]["containerId"] not in told:
                    continue
                data = message["data"]
                assert data["previousState"] == told[data["containerId"]], data  # every chain holds
                told[data["containerId"]] = data["state"]
        await stormer
        print(f"storm {time.monotonic() - t0:.1f}s, {watch.sent} messages, queue depth {depth}")
        assert watch.sent >= 30  # at least one change per container was announced
        assert len(watch.known) <= len(ids) + 50 and len(watch._sent_at) <= len(ids)
        assert depth <= LOG_QUEUE_SIZE + CONTROL_RESERVE
        got = [m.json()["type"] async for m in stranger if m.type == aiohttp.WSMsgType.TEXT]
        assert got == ["auth_failed"]  # at the auth deadline (10 s), and nothing before it

    await wait_for(lambda: _true(stuck.closed), timeout=30)  # closed as stuck: nothing accepted for 10 s
    await reader.close()
    sock.close()


def _all_running(watch: Any, ids: list[str]) -> bool:
    return all(watch.known.get(("", c)) is not None and watch.known[("", c)].state == "running" for c in ids)


ODD_TAILS = ["-1", "1e3", "\u0661\u0662", "0x10", "+5", " 5", "5 ", "nan", "inf", "", "1.0", "-0", "5\x00"]
ODD_TIMES = ["nan", "inf", "-1", "1e10", "253402300800", "999999999999", "0000-01-01T00:00:00Z",
             "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "2024-02-30T00:00:00Z",
             "2024-05-01T12:00:00+24:00", "2024-05-01t12:00:00z", "2024-05-01T12:00:60Z",
             "\u0661\u0669\u0667\u0660-01-01T00:00:00Z", "2024-05-01T12:00:00.1234567890Z", "2024-05-01 12:00:00Z",
             "1e3s", "-5m", "999999999d", "", ".5", "1714564800.", "\u00b2", "1_000", "2024-05-01T12:00:00Z\n"]


async def test_odd_log_queries_methods_and_headers_are_clean_answers(engine, client):
    """What a stranger would try on GET …/logs: every odd tail and time a 400 naming it, huge numbers cut or
    refused, a name twice, other methods, Range and conditional headers, Accept games, another site's
    page and a rebinding Host from the owner's own address. Never a 500, never a CORS header."""
    cid = await run_container(engine, unique(), "echo hello; sleep 100000")
    path = f"/api/v1/containers/{cid}/logs"
    await wait_for(lambda: _answers(client, path, "hello\n"))

    async def get(params: Any = None, headers: dict[str, str] | None = None, method: str = "GET",
                  ) -> tuple[int, str, Any]:
        async with client.request(method, path, params=params, headers=headers) as resp:
            assert not any(h.lower().startswith("access-control-") for h in resp.headers), resp.headers
            if resp.headers.get("Content-Type", "").startswith("application/json") and method != "HEAD":
                return resp.status, "json", await resp.json()
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()

    for tail in ODD_TAILS:
        status, _, body = await get({"tail": tail})
        assert (status, body["error"]) == (400, "INVALID_TAIL"), (tail, body)
    assert await get({"tail": "9" * 5000}) == (200, "text/plain; charset=utf-8", "hello\n")  # cut to 1000
    for name in ("since", "until"):
        for value in ODD_TIMES:
            status, _, body = await get({name: value})
            assert (status, body["error"], body["details"]["parameter"]) == (400, "INVALID_PARAMETER", name), (
                name, value, body)
    status, _, body = await get([("tail", "1"), ("tail", "2")])
    assert (status, body["error"]) == (400, "INVALID_PARAMETER") and "more than once" in body["message"]
    status, _, body = await get({"follow": "on"})
    assert (status, body["details"]) == (400, {"parameter": "follow", "value": "on"})
    for method in ("HEAD", "OPTIONS", "POST", "PUT", "DELETE"):
        assert (await get(method=method))[0] == 405, method
    for headers in ({"Range": "bytes=0-1"}, {"If-None-Match": "*"},
                    {"If-Modified-Since": "Sat, 1 Jan 2050 00:00:00 GMT"},
                    {"Accept": "application/x-ndjson;q=nan"}, {"Accept": "application/json"}):
        assert await get(headers=headers) == (200, "text/plain; charset=utf-8", "hello\n"), headers
    for method, headers in (("GET", {"Origin": "http://evil.example"}),
                            ("GET", {"Host": "rebind.attacker.example:8443"}),
                            ("OPTIONS", {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})):
        status, _, body = await get(headers=headers, method=method)
        assert (status, body["error"]) == (401, "UNAUTHORIZED"), headers  # a preflight too: no CORS
    assert client.app[LOG_STREAMS].active == 0


async def _answers(client: Any, path: str, text: str) -> bool:
    async with client.get(path) as resp:
        return await resp.text() == text


async def test_stats_lookups_of_one_client_are_bounded_across_its_connections(engine, make_client, tmp_path):
    """Ten connections of one read token from one address each subscribe to 256 unknown names at once.
    Each subscribe may cost 16 engine lookups, so before, ten connections cost 160 at once (and 10 messages
    a second each, 64 connections, 10,000 a second: the owner's inspects went from 3 to 26 ms, up to
    132 ms). The client's lookups are now bounded in all its connections together; the owner keeps its own."""
    async with CountingProxy(engine.url, tmp_path / "p.sock") as proxy:
        data = proxy.route(remote_config(base_config(engine, tmp_path / "state")))
        client = await make_client(data)
        async with remote_session("127.0.0.2") as http:
            sockets = [await remote_ws(client, data, http) for _ in range(10)]
            before, started = proxy.inspects, time.monotonic()
            for i, ws in enumerate(sockets):
                await ws.send_json({"type": "container.stats.subscribe",
                                    "data": {"containerIds": [f"nobody-{i}-{j}" for j in range(256)]}})
            codes: dict[str, int] = {}
            for ws in sockets:
                for _ in range(256):
                    message = await next_message(ws, "container.stats.error")
                    codes[message["data"]["error"]] = codes.get(message["data"]["error"], 0) + 1
            elapsed = time.monotonic() - started
            lookups = proxy.inspects - before
            assert codes["CONTAINER_NOT_FOUND"] == lookups and codes["TOO_MANY_LOOKUPS"] == 2560 - lookups
            assert lookups <= 16 * (1 + elapsed) + 4, (lookups, elapsed)
            owner = await ws_connect(client)  # local: not the stranger's budget
            await owner.send_json({"type": "container.stats.subscribe",
                                   "data": {"containerIds": [f"owners-{j}" for j in range(20)]}})
            owner_codes = [(await next_message(owner, "container.stats.error"))["data"]["error"] for _ in range(20)]
            assert owner_codes.count("CONTAINER_NOT_FOUND") == 16, owner_codes
            for ws in [*sockets, owner]:
                await ws.close()
        await client.close()
