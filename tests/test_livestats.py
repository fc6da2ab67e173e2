"""Live stats over the WebSocket (container.stats.*) against the real dockerd (and Podman).

Containers are busybox sleeps; stats come from the daemon's shared samplers. Nothing waits a fixed time:
tests wait for messages (or counters), and never assert exact timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse

from nekzusd import config as config_mod
from nekzusd import revocation
from nekzusd.app import create_app
from nekzusd.keys import HUB, LIVE_STATS, RUNTIMES, TOKENS
from tests.harness.app import (BROADCASTS, base_config, next_message, raw_websocket, remote_session, run_container,
                               unique, wait_for, ws_connect)
from tests.harness.engines import Engine
from tests.harness.k8s_fixtures import deployment, k8s_api, k8s_config, running_pods  # noqa: F401 -- k8s_api: a fixture

APP = {"nekzus.app.id": "grafana"}
FIELDS = {"containerId", "cpu", "memory", "network", "timestamp"}


async def _true(value: bool) -> bool:
    return value


async def subscribe(ws: ClientWebSocketResponse, ids: list[str] | None = None, **data: Any) -> dict[str, Any]:
    if ids is not None:
        data["containerIds"] = ids
    await ws.send_json({"type": "container.stats.subscribe", "data": data})
    return await next_message(ws, "container.stats.subscribed", timeout=20)


async def error_of(ws: ClientWebSocketResponse, data: dict[str, Any],
                   type_: str = "container.stats.subscribe") -> dict[str, Any]:
    await ws.send_json({"type": type_, "data": data})
    async with asyncio.timeout(20):  # skipping broadcasts and samples of what the connection watches already
        while (reply := await ws.receive_json())["type"] in BROADCASTS | {"container.stats"}:
            pass
    assert reply["type"] == "container.stats.error", (data, reply)
    return reply["data"]


async def samples(ws: ClientWebSocketResponse, wanted: dict[str, int], timeout: float = 30.0,
                  ) -> tuple[dict[str, list[dict]], list[dict]]:
    """Read until each container of ``wanted`` sent that many container.stats: (stats by id, other messages)."""
    got: dict[str, list[dict]] = {cid: [] for cid in wanted}
    others: list[dict] = []
    async with asyncio.timeout(timeout):
        while any(len(got[cid]) < n for cid, n in wanted.items()):
            message = await ws.receive_json()
            if message["type"] == "container.stats":
                got.setdefault(message["data"]["containerId"], []).append(message["data"])
            else:
                others.append(message)
    return got, others


def stop(engine: Engine, cid: str) -> None:
    engine.api_json("POST", f"/containers/{cid}/stop?t=1", expect=(204,))


def live_of(client) -> Any:
    return client.server.app[LIVE_STATS]


async def test_subscribe_to_ids_streams_the_http_object_per_interval(engine, client):
    web = unique("web")
    ids = [await run_container(engine, web), await run_container(engine, unique("db"))]
    ws = await ws_connect(client)
    subscribed = await subscribe(ws, [web, ids[1]], interval=1)  # a name and an id
    data = subscribed["data"]
    assert data["interval"] == 1 and data["all"] is False
    assert sorted(c["containerId"] for c in data["containers"]) == sorted(ids)
    by_id = {c["containerId"]: c for c in data["containers"]}
    assert by_id[ids[0]]["requested"] == web and by_id[ids[0]]["name"] == web
    assert by_id[ids[0]]["runtime"] == "docker" and by_id[ids[0]]["namespace"] == ""
    got, _ = await samples(ws, {cid: 3 for cid in ids})
    http = await (await client.get(f"/api/v1/containers/{ids[0]}/stats")).json()
    for cid in ids:
        for stats in got[cid]:
            assert set(stats) == FIELDS == set(http) and stats["containerId"] == cid
            assert set(stats["cpu"]) == set(http["cpu"]) and set(stats["memory"]) == set(http["memory"])
        stamps = [s["timestamp"] for s in got[cid]]
        assert stamps == sorted(stamps) and stamps[-1] > stamps[0]  # new samples, not one repeated
    # A second connection watching the same containers: still one sampler (engine stream) per container.
    runtime = client.server.app[RUNTIMES].by_name["docker"]
    other = await ws_connect(client)
    await subscribe(other, ids, interval=2)
    await samples(other, {cid: 2 for cid in ids})
    live = live_of(client)
    assert runtime.samplers.active == 2 and live.active == 4
    assert all(live.watchers[("docker", "", cid)] == 2 for cid in ids)
    await ws.close()
    await other.close()


async def test_all_running_linked_containers_and_the_ones_that_start_later(engine, client):
    linked = [await run_container(engine, unique("app"), labels=APP) for _ in range(2)]
    unlinked = await run_container(engine, unique("other"))
    ws = await ws_connect(client)
    subscribed = await subscribe(ws, interval=1)
    assert subscribed["data"]["all"] is True
    assert sorted(c["containerId"] for c in subscribed["data"]["containers"]) == sorted(linked)
    got, _ = await samples(ws, {cid: 2 for cid in linked})
    assert unlinked not in got
    # A linked container that starts now joins (documented: within about 5 s plus the interval).
    late = await run_container(engine, unique("late"), labels=APP)
    got, _ = await samples(ws, {late: 2}, timeout=30)
    assert unlinked not in got
    # One that stops ends, and nothing more comes for it.
    await asyncio.to_thread(stop, engine, linked[0])
    ended = await next_message(ws, "container.stats.ended", timeout=30)
    assert ended["data"]["containerId"] == linked[0] and ended["data"]["reason"] == "container_stopped"
    got, others = await samples(ws, {linked[1]: 3, late: 3})
    assert linked[0] not in got and not [m for m in others if m["type"] == "container.stats.ended"]
    assert live_of(client).active == 2
    await ws.close()


@pytest.mark.parametrize("interval", [0, 61, -1, 0.5, "2", True, None, [], {"s": 1}])
async def test_interval_out_of_range_or_not_a_number_is_a_clean_error(engine, client, interval):
    cid = await run_container(engine, unique())
    ws = await ws_connect(client)
    error = await error_of(ws, {"containerIds": [cid], "interval": interval})
    assert error["error"] == "INVALID_INTERVAL" and "1 to 60" in error["message"]
    assert live_of(client).active == 0
    for edge in (1, 60, 1.5):  # the bounds are accepted
        assert (await subscribe(ws, [cid], interval=edge))["data"]["interval"] == edge
    await ws.close()


@pytest.mark.parametrize("ids, code", [("abc", "INVALID_MESSAGE"), ([], "INVALID_MESSAGE"),
                                       ([1, 2], "INVALID_MESSAGE"), ([f"c{i}" for i in range(300)],
                                                                     "TOO_MANY_SUBSCRIPTIONS")])
async def test_odd_container_lists_are_clean_errors(client, ids, code):
    ws = await ws_connect(client)
    error = await error_of(ws, {"containerIds": ids})
    assert error["error"] == code and "containerId" not in error
    assert live_of(client).active == 0 and live_of(client).tasks == 0
    await ws.close()


async def test_unknown_stopped_and_odd_ids(engine, client):
    running = await run_container(engine, unique())
    exited = await asyncio.to_thread(engine.run, unique("exited"), "true")
    # Exited before the first subscribe: ids are matched against a listing up to 1 s old (documented).
    async def has_exited() -> bool:
        return not (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{exited}/json"))["State"]["Running"]
    await wait_for(has_exited)
    ws = await ws_connect(client)
    for bad, code in [("no-such-container", "CONTAINER_NOT_FOUND"), ("../../etc", "INVALID_CONTAINER_ID"),
                      ("x" * 5000, "INVALID_CONTAINER_ID"), ("", "INVALID_CONTAINER_ID")]:
        error = await error_of(ws, {"containerIds": [bad]})
        assert error["error"] == code and error["containerId"] == bad[:200], error
    error = await error_of(ws, {"containerIds": [exited[:12]]})
    assert error["error"] == "CONTAINER_NOT_RUNNING"
    # Known and unknown together: the unknown one is an error, the known one is watched.
    await ws.send_json({"type": "container.stats.subscribe", "data": {"containerIds": ["nope", running]}})
    error = await next_message(ws, "container.stats.error")
    assert error["data"]["containerId"] == "nope" and error["data"]["error"] == "CONTAINER_NOT_FOUND"
    subscribed = await next_message(ws, "container.stats.subscribed")
    assert [c["containerId"] for c in subscribed["data"]["containers"]] == [running]
    for data, code in [({"containerIds": [running], "runtime": "lxc"}, "INVALID_RUNTIME"),
                       ({"containerIds": ["pod"], "namespace": "default"}, "NO_RUNTIME")]:
        assert (await error_of(ws, data))["error"] == code
    assert live_of(client).active == 1
    await ws.close()


async def test_unknown_names_cost_a_bounded_number_of_engine_lookups(engine, client):
    """256 ids in one subscribe that no listing names: 16 are looked up (the full id found, 15 unknown
    names CONTAINER_NOT_FOUND), the rest refused without an engine call (TOO_MANY_LOOKUPS)."""
    cid = await run_container(engine, unique())
    full = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["Id"]
    ws = await ws_connect(client)
    names = [f"nothing-{i}" for i in range(255)]
    await ws.send_json({"type": "container.stats.subscribe", "data": {"containerIds": [full, *names]}})
    codes: dict[str, str] = {}
    async with asyncio.timeout(30):
        while len(codes) < len(names):
            message = await ws.receive_json()
            if message["type"] == "container.stats.error":
                codes[message["data"]["containerId"]] = message["data"]["error"]
    subscribed = await next_message(ws, "container.stats.subscribed")
    assert [c["containerId"] for c in subscribed["data"]["containers"]] == [cid]
    assert list(codes.values()).count("CONTAINER_NOT_FOUND") == 15
    assert list(codes.values()).count("TOO_MANY_LOOKUPS") == 240
    await ws.close()


async def test_a_container_that_stops_ends_its_stream(engine, client):
    cid = await run_container(engine, unique())
    ws = await ws_connect(client)
    await subscribe(ws, [cid], interval=1)
    await samples(ws, {cid: 1})
    await asyncio.to_thread(stop, engine, cid)
    ended = await next_message(ws, "container.stats.ended", timeout=30)
    assert ended["data"] | {"timestamp": 0} == {"containerId": cid, "name": ended["data"]["name"], "runtime": "docker",
                                                "namespace": "", "reason": "container_stopped", "timestamp": 0}
    live = live_of(client)
    assert live.active == 0
    await wait_for(lambda: _true(live.tasks == 1))  # the connection's ticker, idle
    await ws.close()


async def test_unsubscribe_stops_the_messages(engine, client):
    ids = [await run_container(engine, unique()) for _ in range(3)]
    ws = await ws_connect(client)
    await subscribe(ws, ids[:2], interval=1)
    await samples(ws, {cid: 1 for cid in ids[:2]})
    await ws.send_json({"type": "container.stats.unsubscribe", "data": {"containerIds": [ids[0]]}})
    reply = await next_message(ws, "container.stats.unsubscribed")
    assert [c["containerId"] for c in reply["data"]["containers"]] == [ids[0]]
    got, _ = await samples(ws, {ids[1]: 3})
    assert ids[0] not in got  # nothing after the unsubscribed answer
    error = await error_of(ws, {"containerIds": [ids[0]]}, "container.stats.unsubscribe")
    assert error["error"] == "NOT_SUBSCRIBED" and error["containerId"] == ids[0]
    # No ids: everything ends.
    await ws.send_json({"type": "container.stats.unsubscribe", "data": {}})
    reply = await next_message(ws, "container.stats.unsubscribed")
    assert [c["containerId"] for c in reply["data"]["containers"]] == [ids[1]]
    assert live_of(client).active == 0
    await subscribe(ws, [ids[2]], interval=1)  # a window in which the others would have sent
    got, _ = await samples(ws, {ids[2]: 2})
    assert set(got) == {ids[2]}
    await ws.send_json({"type": "container.stats.unsubscribe", "data": {}})
    await next_message(ws, "container.stats.unsubscribed")
    assert (await error_of(ws, {}, "container.stats.unsubscribe"))["error"] == "NOT_SUBSCRIBED"
    await ws.close()


async def test_caps_per_connection_and_in_all(engine, make_client, config_data):
    client = await make_client({**config_data, "live_stats": {"max_per_connection": 2, "max_total": 3}})
    ids = [await run_container(engine, unique(f"cap{i}")) for i in range(3)]
    first = await ws_connect(client)
    error = await error_of(first, {"containerIds": ids})
    assert error["error"] == "TOO_MANY_SUBSCRIPTIONS" and "2 containers' stats per connection" in error["message"]
    await subscribe(first, ids[:2])
    error = await error_of(first, {"containerIds": ids[2:]})
    assert error["error"] == "TOO_MANY_SUBSCRIPTIONS" and error["details"]["held"] == 2
    await subscribe(first, ids[:1], interval=5)  # a new interval for a watched one takes no room
    second = await ws_connect(client)
    error = await error_of(second, {"containerIds": ids[:2]})
    assert error["error"] == "TOO_MANY_SUBSCRIPTIONS" and "follows 3" in error["message"]
    await subscribe(second, ids[2:])
    assert live_of(client).active == 3
    await first.close()
    await wait_for(lambda: _true(live_of(client).active == 1))
    await subscribe(second, ids[:1])
    assert live_of(client).active == 2
    await second.close()


async def test_remote_clients_share_the_total_like_log_streams(engine, aiohttp_client, tmp_path):
    """max_total 8: an eighth (1) kept for local clients, so a remote token from 127.0.0.3 watches at most 7
    (subscriptions.Caps, shared with log streams); the owner then still gets the last one."""
    data = base_config(engine, tmp_path / "state", auth={"local_networks": ["127.0.0.1/32"]},
                       live_stats={"max_per_connection": 8, "max_total": 8})
    client = await aiohttp_client(create_app(config_mod.parse(data, env={})))
    ids = list(await asyncio.gather(*(run_container(engine, unique("share")) for _ in range(8))))
    token = client.app[TOKENS].create("sharer", ["read:containers"], 600)
    live = client.app[LIVE_STATS]
    async with remote_session("127.0.0.3") as http:
        remote = await http.ws_connect(client.make_url("/api/v1/ws"))
        await remote.send_json({"type": "auth", "data": {"token": token}})
        assert (await remote.receive_json(timeout=5))["type"] == "auth_success"
        error = await error_of(remote, {"containerIds": ids})
        assert error["error"] == "TOO_MANY_SUBSCRIPTIONS" and "kept for local clients" in error["message"]
        await subscribe(remote, ids[:7])
        assert live.caps.held(("subject", "sharer")) == 7 and live.caps.held(("remote", None)) == 7
        owner = await ws_connect(client)
        await subscribe(owner, ids[7:])
        error = await error_of(owner, {"containerIds": ids[:1]})
        assert error["error"] == "TOO_MANY_SUBSCRIPTIONS" and "follows 8" in error["message"]
        await remote.close()
        await wait_for(lambda: _true(live.caps.held(("remote", None)) == 0 and live.active == 1))
        await owner.close()


async def test_config_refuses_a_connection_cap_above_the_total(config_data):
    with pytest.raises(config_mod.ConfigError, match="live_stats.max_per_connection"):
        config_mod.parse({**config_data, "live_stats": {"max_per_connection": 10, "max_total": 5}}, env={})
    with pytest.raises(config_mod.ConfigError, match="live_stats.max_total"):
        config_mod.parse({**config_data, "live_stats": {"max_total": 0}}, env={})


async def test_disconnect_leaves_no_task_watch_or_sampler(engine, client):
    runtime = client.server.app[RUNTIMES].by_name["docker"]
    runtime.samplers.idle = 2.0  # a limit, so that the samplers' own expiry is seen within the test
    ids = [await run_container(engine, unique(), labels=APP) for _ in range(2)]
    live = live_of(client)
    tasks_before = len(asyncio.all_tasks())
    ws = await ws_connect(client)
    await subscribe(ws, [ids[0]], interval=1)
    await subscribe(ws, interval=1)  # and "all": a follower task
    await samples(ws, {cid: 2 for cid in ids})
    assert live.active == 2 and live.tasks >= 2 and runtime.samplers.active == 2
    await ws.close()
    await wait_for(lambda: _true(live.active == 0 and live.tasks == 0 and not live.watchers))
    await wait_for(lambda: _true(runtime.samplers.active == 0), timeout=20)
    await wait_for(lambda: _true(len(asyncio.all_tasks()) <= tasks_before))


async def test_daemon_shutdown_ends_every_watch(engine, client):
    ids = [await run_container(engine, unique(), labels=APP) for _ in range(2)]
    ws = await ws_connect(client)
    await subscribe(ws, ids[:1], interval=1)
    await subscribe(ws, interval=1)
    await samples(ws, {cid: 1 for cid in ids})
    live = live_of(client)
    await client.server.close()
    assert live.active == 0 and live.tasks == 0 and not live.watchers
    closing = await ws.receive(timeout=10)
    while closing.type == aiohttp.WSMsgType.TEXT:
        closing = await ws.receive(timeout=10)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001


def _frame(text: str) -> bytes:
    """A masked client text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.slow
async def test_a_client_that_stops_reading_gets_the_latest_sample_per_container(engine, client):
    """It reads nothing: once its socket is full, each container's stats replace the one still queued
    (the queue holds one per container), until the client is closed as stuck; then nothing is left."""
    ids = list(await asyncio.gather(*(run_container(engine, unique("slow")) for _ in range(20))))
    hub = client.server.app[HUB]
    live = live_of(client)
    sock = await asyncio.to_thread(raw_websocket, client.port)
    sock.sendall(_frame(json.dumps({"type": "container.stats.subscribe",
                                    "data": {"containerIds": ids, "interval": 1}})))
    await wait_for(lambda: _true(live.active == 20), timeout=20)
    [peer] = [c for c in hub.clients if live.of(c) is not None]
    # Limits, so that the server side fills in seconds rather than minutes: the socket's send buffer, the
    # transport's high-water mark and how much aiohttp writes before it waits for the transport (256 KiB).
    peer._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer._transport.set_write_buffer_limits(high=4096)
    peer.ws._writer._limit = 4096
    await wait_for(lambda: _true(live.replaced > 20), timeout=60)
    depth = []
    for _ in range(20):  # while the writer is blocked: at most one stats message per container queued
        depth.append(len(peer._queue))
        await asyncio.sleep(0.1)
    assert max(depth) <= 20 + 2, depth
    await wait_for(lambda: _true(live.active == 0 and live.tasks == 0), timeout=60)  # closed as stuck
    assert peer.closed
    sock.close()


async def test_a_revoked_token_ends_the_session_and_its_watches(engine, aiohttp_client, tmp_path):
    data = base_config(engine, tmp_path / "state", auth={"local_networks": ["127.0.0.1/32"]})
    client = await aiohttp_client(create_app(config_mod.parse(data, env={})))
    cid = await run_container(engine, unique())
    token = client.app[TOKENS].create("watcher", ["read:containers"], 600)
    async with remote_session("127.0.0.3") as http:
        ws = await http.ws_connect(client.make_url("/api/v1/ws"))
        await ws.send_json({"type": "auth", "data": {"token": token}})
        assert (await ws.receive_json(timeout=5))["type"] == "auth_success"
        await subscribe(ws, [cid], interval=1)
        await subscribe(ws, interval=1)
        live = client.app[LIVE_STATS]
        assert live.caps.held(("subject", "watcher")) == 1
        await asyncio.to_thread(revocation.revoke, revocation.path_in(Path(data["state_dir"])), subject="watcher")
        last = await next_message(ws, "auth_revoked", timeout=15)
        assert last["data"]["error"] == "TOKEN_REVOKED"
        await wait_for(lambda: _true(live.active == 0 and live.tasks == 0))
        assert live.caps.held(("remote", None)) == 0
        await ws.close()


@pytest.mark.podman
async def test_podman_live_stats(podman_engine: Engine, make_client, tmp_path: Path):
    client = await make_client(base_config(podman_engine, tmp_path / "state"))
    try:
        cid = (await asyncio.to_thread(podman_engine.run, unique("pstats"), labels=APP))[:12]
        ws = await ws_connect(client)
        subscribed = await subscribe(ws, interval=1)
        assert [c["containerId"] for c in subscribed["data"]["containers"]] == [cid]
        got, _ = await samples(ws, {cid: 3}, timeout=60)
        assert all(set(s) == FIELDS for s in got[cid])
        started = time.monotonic()
        await asyncio.to_thread(stop, podman_engine, cid)
        ended = await next_message(ws, "container.stats.ended", timeout=30)
        assert ended["data"]["containerId"] == cid and time.monotonic() - started < 30
        await ws.close()
    finally:
        await asyncio.to_thread(podman_engine.remove_all)


@pytest.mark.kubernetes
async def test_a_pod_without_metrics_is_an_error_of_its_own_and_the_rest_keeps_going(
        engine, make_client, tmp_path, k8s_cluster, k8s_api):  # noqa: F811 -- the fixture
    """The test cluster has no metrics-server (like many small ones): the pod's watch reports it once and
    stays; the Docker container watched on the same connection keeps its stats coming."""
    from kubernetes_asyncio import client as k8s

    client = await make_client(k8s_config(engine, tmp_path / "state", k8s_cluster.kubeconfig))
    await k8s.AppsV1Api(k8s_api).create_namespaced_deployment("default", deployment("web", 1))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pod = (await running_pods(k8s_api, "default", "web", 1))[0]
    cid = await run_container(engine, unique())
    ws = await ws_connect(client)
    subscribed = await subscribe(ws, [pod], namespace="default", interval=1)
    assert subscribed["data"]["containers"][0] | {"name": pod} == {
        "containerId": pod, "name": pod, "runtime": "kubernetes", "namespace": "default", "requested": pod}
    # The pod's error may come at once: read everything from here on (subscribe() would skip it).
    await ws.send_json({"type": "container.stats.subscribe", "data": {"containerIds": [cid], "interval": 1}})
    got, others = await samples(ws, {cid: 4})
    errors = [m["data"] for m in others if m["type"] == "container.stats.error"]
    assert len(errors) == 1, errors  # said once, not at every interval
    assert errors[0]["containerId"] == pod and errors[0]["namespace"] == "default"
    assert errors[0]["error"] in ("METRICS_UNAVAILABLE", "CONTAINER_STATS_FAILED")
    assert "metrics" in errors[0]["message"]
    assert pod not in got and live_of(client).active == 2
    await ws.close()
