"""The engine down at start-up, or going away while the daemon runs: 503s, then recovery by itself."""

from __future__ import annotations

import asyncio

from tests.conftest import next_message, run_container, unique, wait_for, ws_connect


async def _status(client, path: str = "/api/v1/containers?all=true") -> int:
    return (await client.get(path)).status


async def test_engine_stopped_and_started_while_daemon_runs(client, engine):
    name = unique("survivor")
    await run_container(engine, name, labels={"nekzus.app.id": "grafana"})
    assert await _status(client) == 200

    await asyncio.to_thread(engine.kill)
    for path in ("/api/v1/containers", f"/api/v1/containers/{name}"):
        response = await client.get(path)
        assert response.status == 503
        body = await response.json()
        assert body["error"] == "RUNTIME_UNAVAILABLE" and "docker" in body["message"]
        assert response.headers["Retry-After"] == "5"
    response = await client.post(f"/api/v1/containers/{name}/stop")
    assert (response.status, (await response.json())["error"]) == (503, "RUNTIME_UNAVAILABLE")

    await asyncio.to_thread(engine.restart)
    await wait_for(lambda: _ok(client), timeout=30)
    rows = await (await client.get("/api/v1/containers?all=true")).json()
    assert name in [r["name"] for r in rows]


async def _ok(client) -> bool:
    return await _status(client) == 200


async def test_engine_down_at_startup_then_up(make_client, config_data, engine):
    await asyncio.to_thread(engine.kill)
    client = await make_client(config_data)
    assert await _status(client) == 503
    assert (await client.get("/api/v1/apps")).status == 200  # the rest of the daemon works
    await asyncio.to_thread(engine.restart)
    await wait_for(lambda: _ok(client), timeout=30)


async def test_event_watch_resumes_after_engine_restart(client, engine):
    """Health tracking reconnects to the event stream by itself after the engine came back."""
    await asyncio.to_thread(engine.kill)
    await asyncio.to_thread(engine.restart)
    cid = await run_container(engine, unique("after"), labels={"nekzus.app.id": "grafana"})
    ws = await ws_connect(client)

    async def healthy() -> bool:
        apps = await (await client.get("/api/v1/apps")).json()
        return apps[0]["health"] == "healthy"
    await wait_for(healthy, timeout=30)
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/stop?t=5", expect=(204,))
    change = await next_message(ws, "health_change", where=lambda m: m["data"]["status"] == "unhealthy")
    assert change["data"]["appId"] == "grafana"
    await ws.close()
