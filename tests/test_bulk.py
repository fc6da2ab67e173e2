"""Bulk and batch lifecycle operations against the real dockerd: shapes, targets, validation,
partial failure, WebSocket notifications and the process-wide concurrency bound seen from the engine."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from nekzusd.concurrency import gather_all
from nekzusd.errors import ApiError
from tests.harness.app import next_message, run_container, unique, ws_connect
from tests.harness.engines import Engine

APP = {"nekzus.app.id": "grafana"}
# Takes a second to stop, so that operations in flight overlap visibly in the engine's events.
SLOW_STOP = ["sh", "-c", "trap 'sleep 1; exit 0' TERM; sleep 100000 & wait $!"]


def state(engine: Engine, container_id: str) -> dict:
    return engine.api_json("GET", f"/containers/{container_id}/json")["State"]


async def states(engine: Engine, ids: list[str]) -> list[str]:
    return [(await asyncio.to_thread(state, engine, i))["Status"] for i in ids]


async def test_stop_start_restart_all_act_on_linked_containers(engine: Engine, client) -> None:
    a = await run_container(engine, unique("a"), labels=APP)
    b = await run_container(engine, unique("b"), labels=APP)
    created = (await asyncio.to_thread(engine.run, unique("c"), labels=APP, start=False))[:12]
    unlinked = await run_container(engine, unique("u"))
    names = {cid: (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["Name"][1:]
             for cid in (a, b, created)}
    by_name = sorted((a, b), key=names.get)
    ws = await ws_connect(client)

    response = await client.post("/api/v1/containers/stop-all?timeout=5")
    assert response.status == 200
    assert await response.json() == {
        "message": "Stop all operation completed", "total": 2, "success": 2, "failed": 0,
        "results": [{"id": i, "name": names[i], "success": True} for i in by_name]}
    assert await states(engine, [a, b, unlinked, created]) == ["exited", "exited", "running", "created"]
    announced = {(await next_message(ws, "container.stop.completed"))["data"]["containerId"] for _ in range(2)}
    assert announced == {a, b}

    response = await client.post("/api/v1/containers/start-all")
    body = await response.json()
    assert body["message"] == "Start all operation completed"
    assert (body["total"], body["success"], body["failed"]) == (3, 3, 0)
    assert [r["id"] for r in body["results"]] == sorted((a, b, created), key=names.get)
    assert await states(engine, [a, b, created]) == ["running"] * 3

    before = {i: (await asyncio.to_thread(state, engine, i))["StartedAt"] for i in (a, b, created)}
    response = await client.post("/api/v1/containers/restart-all")
    body = await response.json()
    assert body["message"] == "Restart all operation completed"
    assert (body["total"], body["success"], body["failed"]) == (3, 3, 0)
    after = {i: (await asyncio.to_thread(state, engine, i))["StartedAt"] for i in (a, b, created)}
    assert all(after[i] != before[i] for i in after)
    assert (await asyncio.to_thread(state, engine, unlinked))["StartedAt"]  # untouched, still running
    await ws.close()


async def test_nothing_to_do_is_an_empty_result(engine: Engine, client) -> None:
    await run_container(engine, unique("only"), labels=APP)
    response = await client.post("/api/v1/containers/start-all")
    assert await response.json() == {"message": "Start all operation completed", "total": 0, "success": 0,
                                     "failed": 0, "results": []}


async def test_batch_keeps_order_and_reports_each_failure(engine: Engine, client) -> None:
    running = await run_container(engine, unique("run"), labels=APP)
    stopped = (await asyncio.to_thread(engine.run, unique("stopped"), start=False))[:12]
    name_of = {cid: (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["Name"][1:]
               for cid in (running, stopped)}
    ws = await ws_connect(client)
    response = await client.post("/api/v1/containers/batch", json={
        "action": "stop", "containerIds": ["nosuchcontainer", running, stopped], "timeout": 3})
    assert response.status == 200
    assert await response.json() == {
        "message": "Batch operation completed", "total": 3, "success": 1, "failed": 2,
        "results": [
            {"id": "nosuchcontainer", "name": "", "success": False, "error": "container not found"},
            {"id": running, "name": name_of[running], "success": True},
            {"id": stopped, "name": name_of[stopped], "success": False, "error": "container already stopped"},
        ]}
    message = await next_message(ws, "container.stop.completed")
    assert message["data"]["containerId"] == running and message["data"]["operationId"]
    assert (await asyncio.to_thread(state, engine, running))["Status"] == "exited"
    await ws.close()


async def test_batch_engine_failure_is_a_failed_result_with_its_notification(engine: Engine, client) -> None:
    # A container whose command does not exist: the engine refuses to start it.
    broken = (await asyncio.to_thread(engine.run, unique("broken"), ["/no/such/binary"], start=False))[:12]
    ws = await ws_connect(client)
    body = await (await client.post("/api/v1/containers/batch",
                                    json={"action": "start", "containerIds": [broken]})).json()
    assert (body["total"], body["success"], body["failed"]) == (1, 0, 1)
    assert body["results"][0]["success"] is False and body["results"][0]["error"]
    failed = await next_message(ws, "container.start.failed")
    assert failed["data"]["containerId"] == broken and failed["data"]["error"] == "CONTAINER_START_FAILED"
    await ws.close()


BAD_BODIES = [
    (b"not json", "INVALID_REQUEST_BODY"),
    (b"[]", "INVALID_REQUEST_BODY"),
    ({"action": "kill", "containerIds": ["x"]}, "INVALID_ACTION"),
    ({"containerIds": ["x"]}, "INVALID_ACTION"),
    ({"action": 3, "containerIds": ["x"]}, "INVALID_REQUEST_BODY"),
    ({"action": "stop", "containerIds": []}, "EMPTY_CONTAINER_LIST"),
    ({"action": "stop"}, "EMPTY_CONTAINER_LIST"),
    ({"action": "stop", "containerIds": "x"}, "INVALID_REQUEST_BODY"),
    ({"action": "stop", "containerIds": [1]}, "INVALID_REQUEST_BODY"),
    ({"action": "stop", "containerIds": ["x"] * 2}, "INVALID_REQUEST_BODY"),
    ({"action": "stop", "containerIds": [f"c{i}" for i in range(101)]}, "INVALID_REQUEST_BODY"),
    ({"action": "stop", "containerIds": ["bad id!"]}, "INVALID_CONTAINER_ID"),
    ({"action": "stop", "containerIds": ["x"], "timeout": 0}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": 301}, "INVALID_TIMEOUT"),
    # The API types timeout "number"; batch validates it as the query parameter: anything but a whole number of
    # seconds in 1..300 is INVALID_TIMEOUT, whatever its JSON type.
    ({"action": "stop", "containerIds": ["x"], "timeout": "abc"}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": "15"}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": 15.5}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": True}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": [15]}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": {"s": 15}}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": 0.0}, "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "timeout": 300.5}, "INVALID_TIMEOUT"),
    (b'{"action": "stop", "containerIds": ["x"], "timeout": 1e400}', "INVALID_TIMEOUT"),
    ({"action": "stop", "containerIds": ["x"], "force": True}, "INVALID_REQUEST_BODY"),
]


@pytest.mark.parametrize("body, code", BAD_BODIES)
async def test_batch_body_is_validated_before_anything_runs(engine: Engine, client, body, code) -> None:
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = await client.post("/api/v1/containers/batch", **kwargs)
    assert response.status == 400
    assert (await response.json())["error"] == code


async def test_a_whole_float_timeout_is_that_many_seconds(engine: Engine, client) -> None:
    """15.0 is 15: the engine is given an integer grace period (it refuses `t=1.0`), and applies it."""
    stubborn = await run_container(engine, unique("stubborn"), ["sleep", "100000"], labels=APP)  # ignores TERM
    since = time.time()
    response = await client.post("/api/v1/containers/batch",
                                 json={"action": "stop", "containerIds": [stubborn], "timeout": 1.0})
    body = await response.json()
    assert response.status == 200 and body["results"][0]["success"] is True, body
    query = (f"/events?since={since:.3f}&until={time.time():.3f}&filters="
             + json.dumps({"type": ["container"], "event": ["kill"]}).replace(" ", ""))
    _, raw = await asyncio.to_thread(engine.api, "GET", query)
    kills = {json.loads(line)["Actor"]["Attributes"]["signal"]: json.loads(line)["timeNano"]
             for line in raw.splitlines() if json.loads(line)["id"].startswith(stubborn)}
    grace = (kills["9"] - kills["15"]) / 1e9  # the engine's own clock: TERM, then KILL when grace ran out
    assert 1 <= grace < 5, grace  # one second, not the default ten


async def test_a_name_and_its_id_are_duplicates(engine: Engine, client) -> None:
    name = unique("twice")
    container_id = await run_container(engine, name, labels=APP)
    response = await client.post("/api/v1/containers/batch",
                                 json={"action": "stop", "containerIds": [name, container_id]})
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "INVALID_REQUEST_BODY" and body["details"]["duplicate"] == container_id
    assert (await asyncio.to_thread(state, engine, container_id))["Status"] == "running"  # nothing ran


async def test_bad_timeout_query_on_bulk_routes(engine: Engine, client) -> None:
    for path in ("stop-all", "restart-all", "start-all"):
        response = await client.post(f"/api/v1/containers/{path}?timeout=abc")
        assert response.status == 400 and (await response.json())["error"] == "INVALID_TIMEOUT"


def restart_windows(engine: Engine, since: float, until: float, ids: set[str]) -> list[tuple[int, int]]:
    """(first kill, restart) times of each container's restart, from dockerd's own event log."""
    query = f"/events?since={since:.3f}&until={until:.3f}&filters=" + json.dumps({"type": ["container"]})
    status, raw = engine.api("GET", query.replace(" ", ""))
    assert status == 200
    began: dict[str, int] = {}
    windows = []
    for line in raw.splitlines():
        event = json.loads(line)
        cid = event["Actor"]["ID"][:12]
        if cid not in ids:
            continue
        if event["Action"].startswith("kill") and cid not in began:
            began[cid] = event["timeNano"]
        elif event["Action"] == "restart":
            windows.append((began.pop(cid), event["timeNano"]))
    return windows


def most_at_once(windows: list[tuple[int, int]]) -> int:
    edges = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def test_one_bound_for_all_bulk_requests_seen_from_the_engine(engine: Engine, make_client,
                                                                   config_data) -> None:
    config_data["bulk"] = {"concurrency": 2}
    client = await make_client(config_data)
    linked = [await run_container(engine, unique("l"), SLOW_STOP, labels=APP) for _ in range(4)]
    others = [await run_container(engine, unique("o"), SLOW_STOP) for _ in range(3)]
    since = time.time() - 1
    restart_all, batch = await asyncio.gather(
        client.post("/api/v1/containers/restart-all?timeout=5"),
        client.post("/api/v1/containers/batch", json={"action": "restart", "containerIds": others, "timeout": 5}))
    assert (await restart_all.json())["success"] == 4
    assert (await batch.json())["success"] == 3
    windows = await asyncio.to_thread(restart_windows, engine, since, time.time() + 1, set(linked + others))
    assert len(windows) == 7
    # Seven one-second restarts from two requests: never more than two in the engine at once, and the
    # two requests did share the engine (some restarts overlapped).
    assert most_at_once(windows) == 2


async def test_gather_all_keeps_order_and_a_failure_cancels_the_rest() -> None:
    async def after(delay: float, value: int) -> int:
        await asyncio.sleep(delay)
        return value
    assert await gather_all([after(0.02, 1), after(0, 2), after(0.01, 3)]) == [1, 2, 3]

    cancelled = asyncio.Event()

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fails() -> None:
        raise ApiError(409, "CONTAINER_ALREADY_STOPPED", "already stopped")
    with pytest.raises(ApiError) as raised:  # itself, not an exception group
        await gather_all([waits(), fails()])
    assert raised.value.code == "CONTAINER_ALREADY_STOPPED" and cancelled.is_set()


async def test_pause_all_unpause_all_and_batch_pause(engine: Engine, client) -> None:
    """pause-all takes the linked running containers, unpause-all the linked paused ones; a batch pause of a
    stopped container is a failed result in the clients' wording, with no notification."""
    a = await run_container(engine, unique("pa"), labels=APP)
    b = await run_container(engine, unique("pb"), labels=APP)
    stopped = (await asyncio.to_thread(engine.run, unique("ps"), labels=APP, start=False))[:12]
    unlinked = await run_container(engine, unique("pu"))
    ws = await ws_connect(client)

    body = await (await client.post("/api/v1/containers/pause-all")).json()
    assert body["message"] == "Pause all operation completed"
    assert (body["total"], body["success"], body["failed"]) == (2, 2, 0), body
    assert {r["id"] for r in body["results"]} == {a, b}
    assert await states(engine, [a, b, stopped, unlinked]) == ["paused", "paused", "created", "running"]
    announced = {(await next_message(ws, "container.pause.completed"))["data"]["containerId"] for _ in range(2)}
    assert announced == {a, b}

    name_of = {cid: (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["Name"][1:]
               for cid in (stopped, a)}
    response = await client.post("/api/v1/containers/batch", json={"action": "pause", "containerIds": [stopped, a]})
    assert (await response.json())["results"] == [
        {"id": stopped, "name": name_of[stopped], "success": False, "error": "container not running"},
        {"id": a, "name": name_of[a], "success": False, "error": "container already paused"},
    ]

    body = await (await client.post("/api/v1/containers/unpause-all")).json()
    assert body["message"] == "Unpause all operation completed"
    assert (body["total"], body["success"], body["failed"]) == (2, 2, 0), body
    assert await states(engine, [a, b]) == ["running", "running"]
    # Only the unpauses were announced: the refused batch sent nothing.
    seen = []
    async with asyncio.timeout(15):
        while sum(t == "container.unpause.completed" for t in seen) < 2:
            seen.append((await ws.receive_json())["type"])
    assert not [t for t in seen if t.startswith("container.pause")], seen
    await ws.close()
