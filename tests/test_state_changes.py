"""``container.state_changed``: state pushed to WebSocket clients from the engine's own event stream,
whatever changed it (the engine's raw API by hand, a crash, a health check, an operation of ours), coalesced,
and resynced after the engine went away. Real dockerd and Podman; Kubernetes in test_state_changes_k8s.py."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, web

from nekzusd.keys import STATE_CHANGES
from nekzusd.runtimes.base import Container
from nekzusd.state_changes import Told, changes
from tests.harness.app import base_config, next_message, run_container, unique, wait_for, ws_connect
from nekzusd.auth import load_or_create_secret
from tests.harness.engine_proxy import EngineProxy, end_to_end
from tests.harness.engines import Engine
from tests.test_auth_matrix import raw_token

FIELDS = {"containerId", "name", "runtime", "namespace", "state", "previousState", "status", "health", "timestamp"}


async def state_message(ws: ClientWebSocketResponse, cid: str, state: str, timeout: float = 30.0,
                        ) -> dict[str, Any]:
    """The next message about ``cid`` (in ``state``, unless that is empty)."""
    def about(m: dict[str, Any]) -> bool:
        return m["data"]["containerId"] == cid and m["data"]["state"] == (state or m["data"]["state"])
    message = await next_message(ws, "container.state_changed", timeout=timeout, where=about)
    assert set(message["data"]) == FIELDS
    return message["data"]


async def chain_to(ws: ClientWebSocketResponse, cid: str, state: str, before: str | None,
                   timeout: float = 30.0) -> dict[str, Any]:
    """The messages of one container until it reaches ``state``: each one's previousState is what the one
    before said (``before`` for the first), so clients can follow. Engines may pass through states of
    their own (Podman: running, stopped, exited). Returns the last."""
    async with asyncio.timeout(timeout):
        while True:
            data = await state_message(ws, cid, "", timeout=timeout)
            assert data["previousState"] == before, (data, before)
            before = data["state"]
            if data["state"] == state:
                return data


async def connect(client: Any) -> ClientWebSocketResponse:
    """A local WebSocket, once the daemon has its baseline listing of every runtime (a container made
    before that is part of the baseline, never announced)."""
    watches = client.app[STATE_CHANGES].watches

    async def baselines() -> bool:
        return all(w.known is not None for w in watches)
    await wait_for(baselines, timeout=30)
    return await ws_connect(client)


async def fresh_running(engine: Engine, ws: ClientWebSocketResponse, prefix: str, **kwargs: Any) -> str:
    """A container created after the baseline: announced as new (previousState null or created)."""
    cid = await run_container(engine, unique(prefix), **kwargs)
    data = await state_message(ws, cid, "running")
    assert data["previousState"] in (None, "created")
    return cid


async def raw(engine: Engine, method: str, path: str, expect: tuple[int, ...] = (204,)) -> None:
    """A call to the engine's own API, not through nekzusd."""
    await asyncio.to_thread(engine.api_json, method, path, expect=expect)


@pytest.fixture(params=["docker", "podman"])
def any_engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "docker":
        yield request.getfixturevalue("engine")
        return
    podman = request.getfixturevalue("podman_engine")
    yield podman
    podman.remove_all()


async def test_hand_stop_start_kill_pause_through_the_raw_engine_api(any_engine, make_client, tmp_path):
    client = await make_client(base_config(any_engine, tmp_path / "state"))
    ws = await connect(client)
    cid = await fresh_running(any_engine, ws, "hand")

    await raw(any_engine, "POST", f"/containers/{cid}/stop?t=5")
    data = await chain_to(ws, cid, "exited", "running")
    assert (data["runtime"], data["namespace"]) == ("docker", "")
    assert data["name"].startswith("hand-") and data["status"].startswith("Exited (0)")

    await raw(any_engine, "POST", f"/containers/{cid}/start", expect=(204, 304))
    await chain_to(ws, cid, "running", "exited")

    await raw(any_engine, "POST", f"/containers/{cid}/pause")
    await chain_to(ws, cid, "paused", "running")
    await raw(any_engine, "POST", f"/containers/{cid}/unpause")
    await chain_to(ws, cid, "running", "paused")

    await raw(any_engine, "POST", f"/containers/{cid}/kill")  # a crash: SIGKILL, exit code 137
    data = await chain_to(ws, cid, "exited", "running")
    assert data["status"].startswith("Exited (137)")

    await raw(any_engine, "DELETE", f"/containers/{cid}")
    await chain_to(ws, cid, "removed", "exited")
    await ws.close()


async def test_a_crash_from_inside_reports_the_exit_code(engine, client):
    ws = await connect(client)
    cid = await fresh_running(engine, ws, "crash", cmd="sleep 1; exit 3")
    data = await state_message(ws, cid, "exited")
    assert data["previousState"] == "running" and data["status"].startswith("Exited (3)")
    await ws.close()


class ListLagsItsEvents(EngineProxy):
    """The real dockerd, but for ``LAG`` seconds after each ``die`` it lists the containers as they were
    before: what a loaded host does (dockerd sends ``die`` before its list shows the exit; seconds were
    seen beside a busy suite), made long enough here that one look right after the event cannot see it."""

    LAG = 1.5

    def __init__(self, engine_url: str, listen: Path) -> None:
        super().__init__(engine_url, listen)
        self.stale_until = 0.0
        self.last_list: bytes | None = None
        self.stale_answers = 0

    async def forward(self, request: web.Request) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        if request.path.endswith("/containers/json"):
            if now < self.stale_until and self.last_list is not None:
                self.stale_answers += 1
                return web.Response(body=self.last_list, content_type="application/json")
            async with await self.upstream(request) as upstream:
                body = await upstream.read()
                self.last_list = body
                return web.Response(body=body, status=upstream.status, headers=end_to_end(upstream.headers))
        if not request.path.endswith("/events"):
            return await super().forward(request)
        async with await self.upstream(request) as upstream:
            response = web.StreamResponse(status=upstream.status, headers=end_to_end(upstream.headers))
            await response.prepare(request)
            async for line in upstream.content:
                if b'"Action":"die"' in line:
                    self.stale_until = asyncio.get_running_loop().time() + self.LAG
                await response.write(line)
            return response


async def test_an_exit_the_engine_lists_late_is_still_reported(engine, make_client, tmp_path):
    """The exit shows in the engine's list 1.5 s after its ``die`` and nothing follows it: looked at
    again and again after the event, the daemon still reports it (one look after the event missed it)."""
    async with ListLagsItsEvents(engine.url, tmp_path / "lag.sock") as proxy:
        client = await make_client(proxy.route(base_config(engine, tmp_path / "state")))
        ws = await connect(client)
        cid = await fresh_running(engine, ws, "late", cmd="sleep 100000")
        await raw(engine, "POST", f"/containers/{cid}/kill")
        data = await state_message(ws, cid, "exited", timeout=15)
        assert data["previousState"] == "running"
        assert proxy.stale_answers >= 1  # the daemon did look while the list still said running
        await ws.close()


async def test_health_check_results_are_pushed(engine, client):
    """A HEALTHCHECK that passes while a file exists: healthy, then unhealthy once it is removed."""
    ws = await connect(client)
    check = {"Healthcheck": {"Test": ["CMD-SHELL", "test -e /tmp/ok"], "Interval": 200_000_000,
                             "Timeout": 5_000_000_000, "Retries": 1, "StartPeriod": 0}}
    cid = await run_container(engine, unique("health"), "touch /tmp/ok; sleep 100000", config=check)
    data = await next_message(ws, "container.state_changed", timeout=20,
                              where=lambda m: m["data"]["containerId"] == cid and m["data"]["health"] == "healthy")
    assert data["data"]["state"] == "running" and "(healthy)" in data["data"]["status"]
    exec_id = (await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/exec",
                                       {"Cmd": ["rm", "-f", "/tmp/ok"]}, expect=(201,)))["Id"]
    await asyncio.to_thread(engine.api_json, "POST", f"/exec/{exec_id}/start", {"Detach": True}, expect=(200,))
    data = await next_message(ws, "container.state_changed", timeout=20,
                              where=lambda m: m["data"]["containerId"] == cid and m["data"]["health"] == "unhealthy")
    assert (data["data"]["state"], data["data"]["previousState"]) == ("running", "running")
    assert "(unhealthy)" in data["data"]["status"]
    await ws.close()


async def test_an_api_operation_is_pushed_besides_its_completion(engine, client):
    ws = await connect(client)
    cid = await fresh_running(engine, ws, "api")
    response = await client.post(f"/api/v1/containers/{cid}/stop?timeout=5")
    assert response.status == 202
    data = await state_message(ws, cid, "exited")
    assert data["previousState"] == "running"
    await ws.close()


@pytest.mark.slow
async def test_restart_of_many_is_coalesced(engine, make_client, tmp_path):
    """20 containers restarted by hand in one burst (100 engine events): each one announced at most twice
    (exited, then running: one message per container per window), never one per engine event (kill, die,
    stop, start, restart: five)."""
    count = 20
    ids = await asyncio.gather(*(run_container(engine, unique("many")) for _ in range(count)))
    client = await make_client(base_config(engine, tmp_path / "state"))
    watch = client.app[STATE_CHANGES].watches[0]
    await wait_for(lambda: _known(watch, ids), timeout=30)
    ws = await connect(client)

    def restart_all() -> None:
        for cid in ids:
            engine.api_json("POST", f"/containers/{cid}/restart?t=5", expect=(204,))
    seen: dict[str, list[str]] = {cid: [] for cid in ids}
    sentinel = asyncio.get_running_loop().create_future()

    async def collect() -> None:  # reads all along (a client that stops reading is closed)
        async for frame in ws:
            message = frame.json()
            if message["type"] != "container.state_changed":
                continue
            if message["data"]["containerId"] in seen:
                seen[message["data"]["containerId"]].append(message["data"]["state"])
            elif message["data"]["name"].startswith("sentinel-") and not sentinel.done():
                sentinel.set_result(None)
    reader = asyncio.create_task(collect())
    await asyncio.to_thread(restart_all)

    async def settled() -> bool:  # the daemon knows them all running again: every message is queued
        return all(told.state == "running" for key, told in watch.known.items() if key[1] in seen)
    await wait_for(settled, timeout=30)
    await run_container(engine, unique("sentinel"))  # its message comes after all of those (one queue)
    await asyncio.wait_for(sentinel, 20)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert all(not states or states[-1] == "running" for states in seen.values()), seen  # last state wins
    total = sum(len(v) for v in seen.values())
    assert all(len(states) <= 2 for states in seen.values()), seen
    assert total <= 2 * count, total
    rows = await (await client.get("/api/v1/containers?all=true")).json()
    assert {r["id"]: r["state"] for r in rows if r["id"] in seen} == dict.fromkeys(ids, "running")
    await ws.close()


async def _known(watch: Any, ids: list[str]) -> bool:
    return watch.known is not None and set(ids) <= {key[1] for key in watch.known}


async def test_engine_restart_mid_stream_resyncs(engine, client):
    """The engine dies; the container's process dies while it is away; the engine comes back: the change
    made during the gap is announced after the resync, and the stream works again."""
    ws = await connect(client)
    cid = await fresh_running(engine, ws, "gap")
    pid = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]["Pid"]
    await asyncio.to_thread(engine.kill)
    os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(engine.restart)
    data = await state_message(ws, cid, "exited", timeout=40)
    assert data["previousState"] == "running"
    other = await fresh_running(engine, ws, "after")  # the stream is live again
    await raw(engine, "POST", f"/containers/{other}/stop?t=5")
    assert (await state_message(ws, other, "exited"))["previousState"] == "running"
    await ws.close()


async def test_a_remote_read_token_receives_it(engine, remote_client, config_data):
    """Read scope suffices, as for the other notifications: a remote client (127.0.0.2) with a read token."""
    client = await remote_client(config_data)
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": raw_token("read", secret)}})
    assert (await ws.receive_json(timeout=5))["type"] == "auth_success"
    cid = await run_container(engine, unique("remote"))
    assert (await state_message(ws, cid, "running"))["runtime"] == "docker"
    await ws.close()


async def test_an_unauthenticated_socket_receives_nothing(engine, remote_client, config_data):
    """Before its auth message, a remote socket is told nothing (it would learn names and states)."""
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    watch = client.app[STATE_CHANGES].watches[0]
    cid = await run_container(engine, unique("stranger"))
    await wait_for(lambda: _known(watch, [cid]))
    await raw(engine, "POST", f"/containers/{cid}/stop?t=5")
    await wait_for(lambda: _state_known(watch, cid, "exited"))
    await ws.send_json({"type": "auth", "data": {"token": "not-a.jwt"}})
    message = await ws.receive_json(timeout=5)  # the first thing it gets is the refusal
    assert message["type"] == "auth_failed", message


async def _state_known(watch: Any, cid: str, state: str) -> bool:
    return any(key[1] == cid and told.state == state for key, told in (watch.known or {}).items())


def _row(cid: str, state: str, health: str | None = None) -> Container:
    return Container(id=cid, name=f"n-{cid}", image="i", state=state, status=state.title(), created=0,
                     runtime="docker", health=health)


def test_changes_chain_hold_and_removal() -> None:
    """The comparison alone (pure): new, changed, health-only, unchanged, removed; a held container's
    change is kept back with its entry as clients know it, so the next comparison still sees it."""
    known = {("", "a"): Told("n-a", "running", None), ("", "b"): Told("n-b", "running", "healthy"),
             ("", "c"): Told("n-c", "exited", None), ("", "gone"): Told("n-gone", "exited", None)}
    rows = [_row("a", "exited"), _row("b", "running", "unhealthy"), _row("c", "exited"), _row("new", "created")]
    now, out, waiting = changes(known, rows, "docker")
    said = {key[1]: (m["previousState"], m["state"], m["health"]) for key, m in out}
    assert said == {"a": ("running", "exited", None), "b": ("running", "running", "unhealthy"),
                    "new": (None, "created", None), "gone": ("exited", "removed", None)}
    assert not waiting and ("", "gone") not in now and now[("", "a")].state == "exited"

    held_now, held_out, waiting = changes(known, rows, "docker", held={("", "a"), ("", "gone")})
    assert waiting and {key[1] for key, _ in held_out} == {"b", "new"}
    assert held_now[("", "a")].state == "running" and held_now[("", "gone")].state == "exited"
    _, later, _ = changes(held_now, [_row("a", "paused")], "docker")  # last state wins, from what was told
    assert [(m["previousState"], m["state"]) for key, m in later if key[1] == "a"] == [("running", "paused")]
