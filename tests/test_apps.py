"""Approved apps: the config file, the API, the SQLite store across restarts (and kill -9), discovery."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

from nekzusd.apps import App, app_health
from nekzusd.runtimes import Container
from tests.harness.app import run_container, unique


async def test_apps_from_config_and_api(client, engine):
    apps = await (await client.get("/api/v1/apps")).json()
    assert apps == [{"id": "grafana", "name": "Grafana", "containers": [], "source": "config", "health": "unknown"}]

    response = await client.post("/api/v1/apps", json={"id": "media", "name": "Media", "containers": ["jelly"]})
    assert response.status == 201
    assert (await response.json())["source"] == "api"
    ids = [a["id"] for a in await (await client.get("/api/v1/apps")).json()]
    assert ids == ["grafana", "media"]

    response = await client.post("/api/v1/apps", json={"id": "media", "name": "Again"})
    assert (response.status, (await response.json())["error"]) == (409, "APP_EXISTS")
    response = await client.delete("/api/v1/apps/grafana")
    assert (response.status, (await response.json())["error"]) == (409, "APP_FROM_CONFIG")
    response = await client.delete("/api/v1/apps/nope")
    assert (response.status, (await response.json())["error"]) == (404, "APP_NOT_FOUND")
    response = await client.delete("/api/v1/apps/media")
    assert response.status == 204
    assert [a["id"] for a in await (await client.get("/api/v1/apps")).json()] == ["grafana"]


async def test_app_body_is_validated(client):
    cases = [
        (b"not json", "INVALID_REQUEST_BODY"),
        (b"[]", "INVALID_REQUEST_BODY"),
        (b'{"id": "x"}', "INVALID_REQUEST_BODY"),
        (b'{"id": 5, "name": "x"}', "INVALID_REQUEST_BODY"),
        (b'{"id": "x", "name": "x", "colour": 1}', "INVALID_REQUEST_BODY"),
        (b'{"id": "has space", "name": "x"}', "INVALID_REQUEST_BODY"),
        (b'{"id": "x", "name": "x", "containers": [1]}', "INVALID_REQUEST_BODY"),
    ]
    for body, code in cases:
        response = await client.post("/api/v1/apps", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 400, body
        payload = await response.json()
        assert payload["error"] == code, body
    response = await client.post("/api/v1/apps", data=b'{"id":"x","name":"x","colour":1}')
    assert (await response.json())["details"]["field"] == "colour"


async def test_api_approval_links_containers(client, engine):
    name = unique("approved")
    await run_container(engine, name, labels={"nekzus.app.id": "newapp", "nekzus.enable": "true"})
    assert await (await client.get("/api/v1/containers")).json() == []
    discovered = await (await client.get("/api/v1/discovery")).json()
    assert [(d["name"], d["suggestedAppId"]) for d in discovered] == [(name, "newapp")]
    await client.post("/api/v1/apps", json={"id": "newapp", "name": "New"})
    assert [r["name"] for r in await (await client.get("/api/v1/containers")).json()] == [name]
    assert await (await client.get("/api/v1/discovery")).json() == []


async def test_store_survives_daemon_restart(make_client, config_data):
    first = await make_client(config_data)
    await first.post("/api/v1/apps", json={"id": "kept", "name": "Kept", "containers": ["a", "b"]})
    await first.close()
    second = await make_client(config_data)
    apps = {a["id"]: a for a in await (await second.get("/api/v1/apps")).json()}
    assert apps["kept"]["containers"] == ["a", "b"] and apps["kept"]["source"] == "api"


def test_store_survives_kill_9(tmp_path):
    """An acknowledged approval is on disk: the writing process is killed with SIGKILL right after it."""
    db = tmp_path / "nekzusd.db"
    script = textwrap.dedent(f"""
        import asyncio, os, sys
        from pathlib import Path
        from nekzusd.store import Store
        async def main():
            store = Store(Path({str(db)!r}))
            await store.open()
            for i in range(20):
                assert await store.add_app(f"app{{i}}", "App", [], float(i))
            print("ok", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "ok"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM apps").fetchone()
    assert rows == (20,)


def _c(name: str, state: str = "running", health: str | None = None, labels=None) -> Container:
    return Container(id=name, name=name, image="i", state=state, status="", created=0, runtime="docker",
                     labels=labels or {}, health=health)


def test_app_health_rules():
    assert app_health([]) == ("unknown", "No linked containers")
    assert app_health([_c("a"), _c("b")]) == ("healthy", "All containers running")
    assert app_health([_c("a"), _c("b", "exited")]) == ("unhealthy", "Container stopped")
    assert app_health([_c("a", health="unhealthy")]) == ("unhealthy", "Container unhealthy")


def test_app_links_by_label_or_name():
    app = App("web", "Web", ("nginx",))
    assert app.links(_c("x", labels={"nekzus.app.id": "web"}))
    assert app.links(_c("nginx"))
    assert not app.links(_c("other", labels={"nekzus.app.id": "web2"}))
    pod = Container(id="nginx-7d8f9b6c5d-x2k4m", name="nginx-7d8f9b6c5d-x2k4m", image="i", state="running",
                    status="", created=0, runtime="kubernetes", namespace="default", workload="nginx")
    assert app.links(pod)
    assert not App("other", "Other", ("nginx-7d8f9b6c5d",)).links(pod)


async def test_concurrent_deletes_of_one_app(client):
    import asyncio

    await client.post("/api/v1/apps", json={"id": "twice", "name": "Twice"})
    responses = await asyncio.gather(*(client.delete("/api/v1/apps/twice") for _ in range(4)))
    assert sorted(r.status for r in responses) == [204, 404, 404, 404]
    for r in responses:
        if r.status == 404:
            assert (await r.json())["error"] == "APP_NOT_FOUND"
