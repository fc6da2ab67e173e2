"""List, inspect and lifecycle against the real dockerd, with the WebSocket notifications they send."""

from __future__ import annotations

import asyncio

import pytest

from nekzusd.actions import ACTIONS
from nekzusd.keys import OPERATIONS, RUNTIMES
from nekzusd.runtimes import Ref
from tests.harness.app import base_config, next_message, run_container, unique, wait_for, ws_connect

GRAFANA = {"nekzus.app.id": "grafana"}


async def test_list_shows_linked_containers_only_and_all_with_flag(client, engine):
    linked, other = unique("linked"), unique("other")
    linked_id = await run_container(engine, linked, labels=GRAFANA)
    await run_container(engine, other)
    rows = await (await client.get("/api/v1/containers")).json()
    assert [r["name"] for r in rows] == [linked]
    row = rows[0]
    assert set(row) == {"id", "name", "image", "state", "status", "created", "ports", "labels", "runtime",
                        "namespace"}
    assert row["id"] == linked_id and len(row["id"]) == 12
    assert row["image"] == "localhost/busybox:latest"
    assert row["state"] == "running" and row["status"].startswith("Up")
    assert row["labels"] == GRAFANA and row["runtime"] == "docker" and row["namespace"] == ""
    assert isinstance(row["created"], int) and row["created"] > 1_600_000_000
    every = await (await client.get("/api/v1/containers?all=true")).json()
    assert {r["name"] for r in every} == {linked, other}


async def test_list_links_by_container_name_from_config(make_client, config_data, engine):
    name = unique("byname")
    config_data["apps"] = [{"id": "media", "name": "Media", "containers": [name]}]
    client = await make_client(config_data)
    await run_container(engine, name)
    await run_container(engine, unique("unrelated"))
    rows = await (await client.get("/api/v1/containers")).json()
    assert [r["name"] for r in rows] == [name]


async def test_states_are_mapped(client, engine):
    created = unique("created")
    await asyncio.to_thread(engine.run, created, "sleep 100000", labels=GRAFANA, start=False)
    exited = unique("exited")
    await run_container(engine, exited, "exit 3", labels=GRAFANA)
    paused = unique("paused")
    paused_id = await run_container(engine, paused, labels=GRAFANA)
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{paused_id}/pause", expect=(204,))

    async def settled() -> bool:
        rows = await (await client.get("/api/v1/containers")).json()
        return {r["name"]: r["state"] for r in rows} == {created: "created", exited: "exited", paused: "paused"}
    await wait_for(settled)
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{paused_id}/unpause", expect=(204,))


async def test_ports_are_listed(client, engine):
    name, network = unique("ports"), unique("net")
    await asyncio.to_thread(engine.api_json, "POST", "/networks/create", {"Name": network}, expect=(201,))
    await run_container(engine, name, labels=GRAFANA, NetworkMode=network,
                        PortBindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                        config={"ExposedPorts": {"80/tcp": {}, "53/udp": {}}})
    rows = await (await client.get("/api/v1/containers")).json()
    ports = rows[0]["ports"]
    assert ports[0] == {"ip": "", "privatePort": 53, "type": "udp"}
    assert ports[1]["ip"] == "127.0.0.1" and ports[1]["privatePort"] == 80 and ports[1]["type"] == "tcp"
    assert isinstance(ports[1]["publicPort"], int) and ports[1]["publicPort"] > 0


@pytest.mark.parametrize("query, code", [
    ("runtime=lxc", "INVALID_RUNTIME"),
    ("runtime=", "INVALID_RUNTIME"),
    ("all=maybe", "INVALID_PARAMETER"),
])
async def test_list_refuses_bad_query_values(client, query, code):
    response = await client.get(f"/api/v1/containers?{query}")
    assert response.status == 400
    assert (await response.json())["error"] == code


async def test_kubernetes_runtime_not_configured(client):
    response = await client.get("/api/v1/containers?runtime=kubernetes")
    assert response.status == 500
    assert (await response.json())["error"] == "NO_RUNTIME"


async def test_inspect_returns_raw_docker_document_with_secrets_masked(client, engine):
    name = unique("inspect")
    cid = await run_container(engine, name, env={"DB_PASSWORD": "hunter2", "API_KEY": "k-123",
                                                 "AUTHOR": "me", "PLAIN": "visible"})
    for ref in (cid, name):
        response = await client.get(f"/api/v1/containers/{ref}")
        assert response.status == 200
        doc = await response.json()
        assert doc["Id"].startswith(cid) and doc["Name"] == f"/{name}"
        assert doc["State"]["Running"] is True and doc["State"]["Pid"] > 0
        env = doc["Config"]["Env"]
        assert "DB_PASSWORD=***" in env and "API_KEY=***" in env
        assert "AUTHOR=me" in env and "PLAIN=visible" in env
        assert "hunter2" not in await response.text()


async def test_inspect_unknown_and_invalid_ids(client):
    response = await client.get("/api/v1/containers/doesnotexist")
    assert response.status == 404
    body = await response.json()
    assert body["error"] == "CONTAINER_NOT_FOUND" and "doesnotexist" in body["message"]
    response = await client.get("/api/v1/containers/" + "a" * 300)
    assert response.status == 400
    assert (await response.json())["error"] == "INVALID_CONTAINER_ID"


async def test_stop_start_restart_with_notifications(client, engine):
    name = unique("life")
    cid = await run_container(engine, name, labels=GRAFANA)
    ws = await ws_connect(client)

    response = await client.post(f"/api/v1/containers/{cid}/stop?timeout=30")
    assert response.status == 202
    body = await response.json()
    assert body["status"] == "accepted" and body["containerId"] == cid and body["timeout"] == 30
    assert body["message"] == "Container stop initiated" and isinstance(body["timestamp"], int)
    done = await next_message(ws, "container.stop.completed")
    assert done["data"]["operationId"] == body["operationId"]
    assert done["data"]["containerId"] == cid and done["data"]["status"] == "stopped"
    assert done["data"]["message"] == "Container stopped successfully"
    state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert state["Running"] is False and state["ExitCode"] == 0  # stopped by SIGTERM, not killed

    response = await client.post(f"/api/v1/containers/{name}/start")
    assert response.status == 202
    body = await response.json()
    assert "timeout" not in body and body["message"] == "Container start initiated"
    done = await next_message(ws, "container.start.completed")
    assert done["data"]["operationId"] == body["operationId"] and done["data"]["status"] == "started"

    before = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]["StartedAt"]
    response = await client.post(f"/api/v1/containers/{cid}/restart?timeout=5")
    assert response.status == 202
    body = await response.json()
    done = await next_message(ws, "container.restart.completed")
    assert done["data"]["operationId"] == body["operationId"] and done["data"]["status"] == "restarted"
    after = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert after["Running"] is True and after["StartedAt"] != before
    await ws.close()


async def test_synchronous_checks_before_202(client, engine):
    name = unique("checks")
    cid = await run_container(engine, name)
    response = await client.post(f"/api/v1/containers/{cid}/start")
    assert response.status == 409
    assert (await response.json())["error"] == "CONTAINER_ALREADY_STARTED"
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/stop?t=5", expect=(204,))
    response = await client.post(f"/api/v1/containers/{cid}/stop")
    assert response.status == 409
    assert (await response.json())["error"] == "CONTAINER_ALREADY_STOPPED"
    response = await client.post("/api/v1/containers/nosuchcontainer/restart")
    assert response.status == 404
    assert (await response.json())["error"] == "CONTAINER_NOT_FOUND"
    for bad in ("0", "301", "abc", "1.5", "-3", ""):
        response = await client.post(f"/api/v1/containers/{cid}/stop?timeout={bad}")
        assert response.status == 400, bad
        assert (await response.json())["error"] == "INVALID_TIMEOUT"
    response = await client.post(f"/api/v1/containers/{cid}/start?runtime=lxc")
    assert (response.status, (await response.json())["error"]) == (400, "INVALID_RUNTIME")


async def test_failed_operation_is_announced(client, engine):
    """A start that the engine refuses (the command does not exist) ends in container.start.failed."""
    name = unique("broken")
    cid = (await asyncio.to_thread(engine.run, name, ["/no/such/binary"], start=False))[:12]
    ws = await ws_connect(client)
    response = await client.post(f"/api/v1/containers/{cid}/start")
    assert response.status == 202
    body = await response.json()
    failed = await next_message(ws, "container.start.failed")
    data = failed["data"]
    assert data["operationId"] == body["operationId"] and data["containerId"] == cid
    assert data["error"] == "CONTAINER_START_FAILED"
    assert data["message"].startswith("Failed to start container") and "/no/such/binary" in data["message"]
    await ws.close()


async def test_notifications_reach_every_authenticated_client(client, engine):
    cid = await run_container(engine, unique("fanout"))
    sockets = [await ws_connect(client) for _ in range(3)]
    unauthenticated = await client.ws_connect("/api/v1/ws")  # local, never sent auth: still authenticated
    response = await client.post(f"/api/v1/containers/{cid}/restart?timeout=2")
    op = (await response.json())["operationId"]
    for ws in [*sockets, unauthenticated]:
        done = await next_message(ws, "container.restart.completed")
        assert done["data"]["operationId"] == op
    for ws in [*sockets, unauthenticated]:
        await ws.close()


async def test_stop_marks_app_unhealthy_and_start_recovers(make_client, config_data, engine):
    # The container runs before the daemon starts, so the daemon's first listing sees it: one started in the
    # moment between that listing and the daemon's event subscription would go unnoticed until the next event
    # (seen once under load: the app never turned healthy).
    cid = await run_container(engine, unique("health"), labels=GRAFANA)
    client = await make_client(config_data)
    ws = await ws_connect(client)
    await wait_for(lambda: _app_health(client, "healthy"))
    await client.post(f"/api/v1/containers/{cid}/stop?timeout=5")
    change = await next_message(ws, "health_change", where=lambda m: m["data"]["status"] == "unhealthy")
    assert change["data"] == {"appId": "grafana", "appName": "Grafana", "status": "unhealthy",
                              "message": "Container stopped", "timestamp": change["data"]["timestamp"]}
    await client.post(f"/api/v1/containers/{cid}/start")
    change = await next_message(ws, "health_change")
    assert change["data"]["status"] == "healthy"
    await ws.close()


async def test_stop_outside_nekzusd_is_noticed_from_engine_events(client, engine):
    cid = await run_container(engine, unique("outside"), labels=GRAFANA)
    ws = await ws_connect(client)
    await wait_for(lambda: _app_health(client, "healthy"))
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/stop?t=5", expect=(204,))
    change = await next_message(ws, "health_change", where=lambda m: m["data"]["status"] == "unhealthy")
    assert change["data"]["appId"] == "grafana" and change["data"]["message"] == "Container stopped"
    await ws.close()


async def _app_health(client, status: str) -> bool:
    apps = await (await client.get("/api/v1/apps")).json()
    return any(a["id"] == "grafana" and a["health"] == status for a in apps)


async def test_unknown_routes_and_methods_are_json(client):
    response = await client.get("/api/v1/nothing/here")
    assert response.status == 404
    assert await response.json() == {"error": "NOT_FOUND", "message": "No such route"}
    response = await client.delete("/api/v1/containers")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert (await response.json())["error"] == "METHOD_NOT_ALLOWED"
    response = await client.post("/api/v1/containers/ns/pod/explode")
    assert response.status == 404
    assert (await response.json())["error"] == "NOT_FOUND"


async def test_operations_on_one_container_run_in_the_order_asked(client, engine):
    """restart then stop, sent back to back: the stop must not overtake the restart (which would leave the
    container running)."""
    cid = await run_container(engine, unique("ordered"))
    ws = await ws_connect(client)
    restart = await client.post(f"/api/v1/containers/{cid}/restart?timeout=2")
    stop = await client.post(f"/api/v1/containers/{cid}/stop?timeout=2")
    assert (restart.status, stop.status) == (202, 202)
    first = await next_message(ws, "container.restart.completed")
    second = await next_message(ws, "container.stop.completed")
    assert first["data"]["operationId"] == (await restart.json())["operationId"]
    assert second["data"]["operationId"] == (await stop.json())["operationId"]
    state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert state["Running"] is False
    await ws.close()


async def test_a_request_queued_behind_an_operation_is_checked_against_the_state_it_leaves(client, engine):
    """stop of a container that takes 2 s to stop, then start at once: the start waits its turn and is checked
    against "exited" (what the stop leaves), not the engine's "running" of the moment; a second stop is the 409
    the first one makes true."""
    cid = await run_container(engine, unique("queued"), ["sh", "-c", "trap 'sleep 2; exit 0' TERM; "
                                                          "while :; do sleep 0.2; done"])
    ws = await ws_connect(client)
    stop = await client.post(f"/api/v1/containers/{cid}/stop?timeout=10")
    again = await client.post(f"/api/v1/containers/{cid}/stop?timeout=10")
    start = await client.post(f"/api/v1/containers/{cid}/start")
    assert (stop.status, again.status, start.status) == (202, 409, 202)
    assert (await again.json())["error"] == "CONTAINER_ALREADY_STOPPED"
    assert (await stop.json())["operationId"] == \
        (await next_message(ws, "container.stop.completed"))["data"]["operationId"]
    assert (await start.json())["operationId"] == \
        (await next_message(ws, "container.start.completed"))["data"]["operationId"]
    state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert state["Running"] is True
    await ws.close()


async def test_starting_a_paused_container_is_refused_before_202(client, engine):
    cid = await run_container(engine, unique("paused"))
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/pause", expect=(204,))
    response = await client.post(f"/api/v1/containers/{cid}/start")
    assert response.status == 409
    body = await response.json()
    assert body["error"] == "CONTAINER_ALREADY_STARTED" and "paused" in body["message"]
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/unpause", expect=(204,))


async def test_keyed_locks_forget_idle_keys():
    from nekzusd.operations import KeyedLocks

    locks, order = KeyedLocks(), []

    async def worker(key: str, n: int) -> None:
        async with locks.hold(key):
            order.append((key, n, "in"))
            await asyncio.sleep(0.01)
            order.append((key, n, "out"))
    await asyncio.gather(worker("a", 1), worker("a", 2), worker("b", 1))
    a_events = [e for e in order if e[0] == "a"]
    assert a_events == [("a", 1, "in"), ("a", 1, "out"), ("a", 2, "in"), ("a", 2, "out")]
    assert len(locks) == 0


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/api/v1/containers/start-all", "POST"),
    ("GET", "/api/v1/containers/batch/export", "POST"),
    ("DELETE", "/api/v1/containers/batch", "POST"),
    ("POST", "/api/v1/containers/stats", "GET"),
])
async def test_literal_paths_answer_405_rather_than_falling_through(client, method, path, allowed):
    response = await client.request(method, path)
    assert response.status == 405
    assert allowed in response.headers["Allow"]
    assert (await response.json())["error"] == "METHOD_NOT_ALLOWED"


async def test_namespace_path_form_without_kubernetes_is_not_found(client):
    response = await client.get("/api/v1/containers/default/some-pod")
    assert response.status == 404
    body = await response.json()
    assert body["error"] == "NOT_FOUND" and "Kubernetes" in body["message"]


async def test_lifecycle_checks_run_in_the_documented_order(client, engine):
    """docs/api.md (Lifecycle): runtime, then timeout, then the container, then its state."""
    cid = await run_container(engine, unique("order"))
    cases = [("nosuch/stop?runtime=lxc&timeout=0", 400, "INVALID_RUNTIME"),
             ("nosuch/stop?timeout=0", 400, "INVALID_TIMEOUT"),
             ("nosuch/stop?timeout=5", 404, "CONTAINER_NOT_FOUND"),
             (f"{cid}/start?timeout=5", 409, "CONTAINER_ALREADY_STARTED")]
    for path, status, code in cases:
        response = await client.post(f"/api/v1/containers/{path}")
        assert (response.status, (await response.json())["error"]) == (status, code), path


async def test_background_operations_are_bounded(client, engine, monkeypatch):
    """A slow engine must not let callers queue unbounded work: past the bound, a 503 before any 202."""
    from nekzusd import operations

    monkeypatch.setattr(operations, "MAX_IN_FLIGHT", 1)  # a limit, not a replaced component
    slow = await run_container(engine, unique("slow"), ["sh", "-c", "trap 'sleep 3; exit 0' TERM; "
                                                        "while :; do sleep 0.2; done"])
    other = await run_container(engine, unique("other"))
    assert (await client.post(f"/api/v1/containers/{slow}/stop?timeout=10")).status == 202
    response = await client.post(f"/api/v1/containers/{other}/stop")
    assert response.status == 503
    assert (await response.json())["error"] == "TOO_MANY_OPERATIONS" and response.headers["Retry-After"] == "5"


async def pause_and_unpause(client, engine, name: str) -> None:
    """pause and unpause through the daemon, their notifications, the engine's state, and their 409s."""
    cid = await run_container(engine, name)
    ws = await ws_connect(client)
    response = await client.post(f"/api/v1/containers/{name}/pause")
    assert response.status == 202
    body = await response.json()
    assert body["message"] == "Container pause initiated" and body["containerId"] == cid and "timeout" not in body
    done = await next_message(ws, "container.pause.completed")
    assert done["data"]["operationId"] == body["operationId"] and done["data"]["status"] == "paused"
    assert done["data"]["message"] == "Container paused successfully"
    state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert state["Paused"] is True and state["Status"] == "paused"

    for action, code in (("pause", "CONTAINER_ALREADY_PAUSED"), ("start", "CONTAINER_ALREADY_STARTED")):
        response = await client.post(f"/api/v1/containers/{cid}/{action}")
        assert (response.status, (await response.json())["error"]) == (409, code)

    response = await client.post(f"/api/v1/containers/{cid}/unpause")
    assert response.status == 202
    body = await response.json()
    done = await next_message(ws, "container.unpause.completed")
    assert done["data"]["operationId"] == body["operationId"] and done["data"]["status"] == "unpaused"
    state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert state["Paused"] is False and state["Running"] is True

    response = await client.post(f"/api/v1/containers/{cid}/unpause")
    body = await response.json()
    assert (response.status, body["error"]) == (409, "CONTAINER_NOT_PAUSED")
    assert body["details"] == {"containerId": cid, "state": "running"}
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/stop?t=5", expect=(204,))
    response = await client.post(f"/api/v1/containers/{cid}/pause")
    assert (response.status, (await response.json())["error"]) == (409, "CONTAINER_NOT_RUNNING")
    await ws.close()


async def test_pause_and_unpause_with_notifications(client, engine):
    await pause_and_unpause(client, engine, unique("pause"))


async def test_pause_and_unpause_on_podman(podman_engine, make_client, tmp_path):
    client = await make_client(base_config(podman_engine, tmp_path / "state"))
    try:
        await pause_and_unpause(client, podman_engine, unique("ppause"))
    finally:
        await asyncio.to_thread(podman_engine.remove_all)


async def test_a_failed_pause_is_announced(client, engine):
    """The container goes between the 202 and the engine call: container.pause.failed, CONTAINER_PAUSE_FAILED."""
    name = unique("gone")
    cid = await run_container(engine, name)
    ws = await ws_connect(client)
    runtime, operations = client.app[RUNTIMES].pick("docker"), client.app[OPERATIONS]
    container = await operations.prepare(runtime, Ref(cid), ACTIONS["pause"])
    await asyncio.to_thread(engine.api_json, "DELETE", f"/containers/{cid}?force=1", expect=(204,))
    operations.submit(runtime, container, ACTIONS["pause"], 10)
    failed = await next_message(ws, "container.pause.failed")
    assert failed["data"]["containerId"] == cid and failed["data"]["error"] == "CONTAINER_PAUSE_FAILED"
    assert failed["data"]["message"].startswith("Failed to pause container: ")
    await ws.close()


async def ambiguous_prefix_is_a_400(client, engine) -> None:
    """Seventeen containers: two of them share a first hex digit, so that digit names no one container.
    dockerd 20.10 answers such a prefix with a 500 and Podman with a 404; the daemon says what it is."""
    from concurrent.futures import ThreadPoolExecutor

    def create(_: int) -> str:
        return engine.run(unique("amb"), labels=GRAFANA, start=False)
    with ThreadPoolExecutor(8) as pool:
        ids = await asyncio.to_thread(lambda: list(pool.map(create, range(17))))
    firsts = [i[0] for i in ids]
    prefix = next(c for c in firsts if firsts.count(c) > 1)
    for method, path in (("GET", ""), ("POST", "/stop"), ("POST", "/start"), ("GET", "/stats"),
                         ("GET", "/logs"), ("POST", "/export/preview")):
        response = await client.request(method, f"/api/v1/containers/{prefix}{path}")
        body = await response.json()
        assert response.status == 400, (path, body)
        assert body["error"] == "INVALID_CONTAINER_ID" and body["details"]["containerId"] == prefix, (path, body)
        assert "more than one container" in body["message"], (path, body)
    response = await client.get(f"/api/v1/containers/{ids[0][:12]}")  # a longer prefix names it
    assert response.status == 200


async def test_an_ambiguous_id_prefix_is_a_400(client, engine):
    await ambiguous_prefix_is_a_400(client, engine)


async def test_an_ambiguous_id_prefix_is_a_400_on_podman(podman_engine, make_client, tmp_path):
    client = await make_client(base_config(podman_engine, tmp_path / "state"))
    try:
        await ambiguous_prefix_is_a_400(client, podman_engine)
    finally:
        await asyncio.to_thread(podman_engine.remove_all)
