"""Attacks on the daemon's limits, against the real daemon and the real dockerd: flooding the routes that
were in no rate-limit pool, reading the engine's version and errors from the probes as a stranger, and
approving apps without bound (many, or huge) to grow the daemon's memory and its per-row linking cost.

Remote clients connect from 127.0.0.2 while only 127.0.0.1 is local.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from nekzusd.apps import App, Apps
from nekzusd.auth import Tokens
from nekzusd.config import AppConfig
from nekzusd.keys import RATE_LIMITER
from nekzusd.runtimes import Container
from nekzusd.views.apps import MAX_CONTAINER_NAME, MAX_CONTAINERS, MAX_NAME
from tests.harness.app import remote_config, run_container, unique
from tests.harness.engine_proxy import CountingProxy
from tests.test_openapi import app_routes



def remote(config_data: dict[str, Any], **rate_limit: Any) -> dict[str, Any]:
    remote_config(config_data)
    if rate_limit:
        config_data["rate_limit"] = rate_limit
    return config_data


def token(config_data: dict[str, Any], scopes: list[str]) -> dict[str, str]:
    """An Authorization header signed with the daemon's secret (made when the daemon started)."""
    secret = (Path(config_data["state_dir"]) / "jwt.secret").read_bytes().strip()
    return {"Authorization": f"Bearer {Tokens(secret, 'nekzus', 'nekzus').create('attacker', scopes, 600)}"}


# --- rate-limit gaps ----------------------------------------------------------------------------

async def test_status_page_metrics_and_probes_share_the_status_pool(remote_client, config_data):
    """A remote reader flooding the status page (each load listed containers from the engine) is limited;
    the other pools are untouched."""
    client = await remote_client(remote(config_data, status={"per_minute": 6, "burst": 3}))
    read = token(config_data, ["read:*"])
    seen = []
    for path in ("/", "/metrics", "/readyz"):
        async with client.get(path, headers=read) as resp:
            await resp.read()
            assert resp.status == 200, path
            seen.append((resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]))
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
    for path in ("/", "/metrics", "/healthz", "/api/v1/openapi.json", "/no/such/page"):
        async with client.get(path, headers=read) as resp:
            body = await resp.json()
            assert resp.status == 429 and body["error"] == "RATE_LIMITED", path
            assert int(resp.headers["Retry-After"]) >= 1
    assert client.app[RATE_LIMITER].rejected == 5
    async with client.get("/api/v1/containers", headers=read) as resp:
        assert resp.status == 200  # another pool


async def test_every_route_spends_a_token_of_some_pool(remote_client, config_data):
    """Each route the app registers (and a path none matches) answers a remote client with RateLimit-*
    headers, i.e. it is in a pool: a route added later cannot be left out by accident."""
    client = await remote_client(remote(config_data, **{
        pool: {"per_minute": 600, "burst": 1000} for pool in ("containers", "apps", "websocket", "status")}))
    routes = sorted(app_routes(client.app))
    assert len(routes) > 25
    missing = []
    for method, path in [*routes, ("GET", "/no/such/route"), ("POST", "/api/v1/nothing")]:
        async with client.request(method, path.replace("{}", "abc")) as resp:
            await resp.read()
            if "RateLimit-Limit" not in resp.headers:
                missing.append((method, path, resp.status))
    assert missing == []
    ws = await client.ws_connect("/api/v1/ws")  # the upgrade itself
    assert "RateLimit-Limit" in ws._response.headers
    await ws.close()


async def test_a_local_flood_of_the_status_page_shares_one_listing(engine, make_client, config_data, tmp_path):
    """Local clients are exempt from rate limits, so the page's own cache is what protects the engine:
    50 concurrent loads cost a handful of listings, not 50."""
    async with CountingProxy(engine.url, tmp_path / "p.sock") as proxy:
        client = await make_client(proxy.route(config_data))
        await run_container(engine, unique("shown"))

        async def load() -> int:
            async with client.get("/") as resp:
                await resp.read()
                return resp.status

        before = proxy.listings
        statuses = await asyncio.gather(*(load() for _ in range(50)))
        assert statuses == [200] * 50
        flood = proxy.listings - before
        assert 1 <= flood <= 5, flood  # one per LIST_TTL (plus the health tracker's, if an event came)
        await client.close()


# --- the probes tell strangers nothing but up or down ----------------------------------------------

async def test_probes_answer_strangers_with_the_status_only(remote_client, config_data, engine):
    client = await remote_client(remote(config_data))
    async with client.get("/readyz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ready"}
    async with client.get("/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    for headers in ({"Authorization": "Bearer forged"}, token(config_data, ["other:thing"])):
        async with client.get("/readyz", headers=headers) as resp:
            assert await resp.json() == {"status": "ready"}
    async with client.get("/readyz", headers=token(config_data, ["read:containers"])) as resp:
        body = await resp.json()
        assert body["runtime"]["version"] == engine.api_json("GET", "/version")["Version"]
    async with client.get("/healthz", headers=token(config_data, ["read:*"])) as resp:
        assert set(await resp.json()) == {"status", "version", "uptimeSeconds"}


async def test_a_down_engine_is_not_described_to_strangers(make_client, config_data, tmp_path, remote_client):
    config_data["runtimes"] = {"docker": {"host": f"unix://{tmp_path}/absent.sock"}}
    client = await remote_client(remote(config_data))
    async with client.get("/readyz") as resp:
        assert resp.status == 503 and await resp.json() == {"status": "not_ready"}
    local = await make_client(config_data)  # same config: 127.0.0.1 is local
    async with local.get("/readyz") as resp:
        body = await resp.json()
        assert resp.status == 503 and body["runtime"]["error"]  # the owner still sees why


# --- unbounded apps ------------------------------------------------------------------------------

def _app(i: int, containers: list[str] | None = None) -> dict[str, Any]:
    return {"id": f"app-{i:04d}", "name": f"App {i}", "containers": containers or []}


async def test_apps_up_to_the_default_cap_then_refused(client, engine):
    """256 apps of the largest allowed size are accepted, the 257th is a 409 TOO_MANY_APPS; config apps do
    not count; deleting one makes room; the linking still finds containers named by the last app."""
    names = [f"n{j:02d}-" + "x" * (MAX_CONTAINER_NAME - 4) for j in range(MAX_CONTAINERS)]
    for i in range(256):
        body = {**_app(i, [f"{i}{n}"[:MAX_CONTAINER_NAME] for n in names]), "name": "N" * MAX_NAME}
        async with client.post("/api/v1/apps", json=body) as resp:
            assert resp.status == 201, (i, await resp.text())
    async with client.post("/api/v1/apps", json=_app(256)) as resp:
        body = await resp.json()
        assert resp.status == 409 and body["error"] == "TOO_MANY_APPS" and body["details"] == {"limit": 256}
    apps = await (await client.get("/api/v1/apps")).json()
    assert len(apps) == 257  # and the config file's grafana

    linked = unique("linked")
    await client.delete("/api/v1/apps/app-0000")
    async with client.post("/api/v1/apps", json=_app(999, ["other", linked])) as resp:
        assert resp.status == 201
    await run_container(engine, linked)
    rows = await (await client.get("/api/v1/containers")).json()
    assert [r["name"] for r in rows] == [linked]


async def test_concurrent_approvals_cannot_pass_the_cap(make_client, config_data):
    config_data["max_api_apps"] = 5
    client = await make_client(config_data)
    for i in range(3):
        assert (await client.post("/api/v1/apps", json=_app(i))).status == 201

    async def approve(i: int) -> tuple[int, str]:
        async with client.post("/api/v1/apps", json=_app(i)) as resp:
            return resp.status, (await resp.json()).get("error", "")

    results = await asyncio.gather(*(approve(i) for i in range(10, 30)))
    assert sorted(results).count((201, "")) == 2
    assert sorted(results)[2:] == [(409, "TOO_MANY_APPS")] * 18
    await client.close()
    again = await make_client(config_data)  # the store agrees after a restart
    ids = [a["id"] for a in await (await again.get("/api/v1/apps")).json() if a["source"] == "api"]
    assert len(ids) == 5
    assert (await again.post("/api/v1/apps", json=_app(99))).status == 409


@pytest.mark.parametrize("body, field", [
    ({"id": "a" * 65, "name": "x"}, "id"),
    ({"id": "ok", "name": "x" * (MAX_NAME + 1)}, "name"),
    ({"id": "ok", "name": "line\nbreak"}, "name"),
    ({"id": "ok", "name": "   "}, "name"),
    ({"id": "ok", "name": "x", "containers": [f"c{i}" for i in range(MAX_CONTAINERS + 1)]}, "containers"),
    ({"id": "ok", "name": "x", "containers": ["c" * (MAX_CONTAINER_NAME + 1)]}, "containers[0]"),
    ({"id": "ok", "name": "x", "containers": ["web", ""]}, "containers[1]"),
    ({"id": "ok", "name": "x", "containers": ["../etc"]}, "containers[0]"),
    ({"id": "ok", "name": "x", "containers": ["a\nb"]}, "containers[0]"),
    ({"id": "ok", "name": "x", "containers": ["web", "db", "web"]}, "containers[2]"),
    ({"id": "ok", "name": "x", "containers": [["nested"]]}, "containers[0]"),
])
async def test_oversized_or_malformed_app_fields_are_refused(client, body, field):
    async with client.post("/api/v1/apps", json=body) as resp:
        payload = await resp.json()
        assert resp.status == 400 and payload["error"] == "INVALID_REQUEST_BODY", payload
        assert payload["details"]["field"] == field and payload["message"]
    assert [a["id"] for a in await (await client.get("/api/v1/apps")).json()] == ["grafana"]


async def test_the_60_kb_app_of_the_report_is_refused(client):
    """The original attack: one app carrying 60 KB of container names (50 names of 1,200 bytes)."""
    body = {"id": "big", "name": "Big", "containers": [f"c{i:03d}" + "x" * 1196 for i in range(MAX_CONTAINERS)]}
    async with client.post("/api/v1/apps", json=body) as resp:
        assert resp.status == 400 and (await resp.json())["details"] == {"field": "containers[0]",
                                                                          "maxLength": MAX_CONTAINER_NAME}


# --- linking stays linear -------------------------------------------------------------------------

class CountedName(str):
    """A container name that counts the comparisons made against it (a real str otherwise)."""

    compares = 0

    def __eq__(self, other: object) -> bool:
        CountedName.compares += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class NoStore:
    """``Apps`` only touches its store to add, remove and load; this test does none of those."""


def _naive_app_of(apps: list[App], c: Container) -> App | None:
    """The definition of linking, row by row over every app (what the index must agree with)."""
    label = c.labels.get("nekzus.app.id")
    by_id = {a.id: a for a in apps}
    if label in by_id:
        return by_id[label]
    return next((a for a in sorted(apps, key=lambda a: a.id) if a.lists(c)), None)


def _container(name: str, labels: dict[str, str] | None = None, workload: str = "") -> Container:
    return Container(id=name[:12], name=name, image="busybox", state="running", status="Up", created=0,
                     runtime="docker", labels=labels or {}, workload=workload)


def test_linking_does_not_compare_a_container_with_every_app():
    """2,000 containers against 256 apps of 50 names each: the old linking compared each unlinked
    container's name with all 12,800 listed names (25 million comparisons); the index makes it a look-up."""
    config = [AppConfig(id=f"app-{i:03d}", name="", containers=tuple(f"svc-{i}-{j}" for j in range(50)))
              for i in range(256)]
    registry = Apps(config, NoStore())  # type: ignore[arg-type]
    containers = [_container(CountedName(f"svc-{i % 300}-{i % 50}")) for i in range(2000)]
    CountedName.compares = 0
    linked = [registry.app_of(c) for c in containers]
    assert CountedName.compares <= 2 * len(containers), CountedName.compares
    assert sum(a is not None for a in linked) == sum(i % 300 < 256 for i in range(2000))
    assert all(a is None or c.name in a.containers for a, c in zip(linked, containers, strict=True))


def test_the_index_agrees_with_the_definition_of_linking():
    rnd = random.Random(7)
    names = [f"c{i}" for i in range(30)]
    for _ in range(200):
        config = [AppConfig(id=f"a{i}", name="", containers=tuple(rnd.sample(names, rnd.randint(0, 4))))
                  for i in rnd.sample(range(20), rnd.randint(0, 8))]
        registry = Apps(config, NoStore())  # type: ignore[arg-type]
        for _ in range(20):
            labels = {"nekzus.app.id": f"a{rnd.randrange(25)}"} if rnd.random() < 0.3 else {}
            c = _container(rnd.choice(names), labels, rnd.choice(["", *names]))
            assert registry.app_of(c) == _naive_app_of(registry.all(), c)
