"""/metrics, /healthz and /readyz against the real dockerd (and against an engine that is not there)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nekzusd.auth import Tokens
from tests.harness.app import next_message, remote_session, run_container, unique, wait_for, ws_connect


async def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_requests_counted_by_route_template_with_latency(client, engine) -> None:
    cid = await run_container(engine, unique("m"), labels={"nekzus.app.id": "grafana"})
    for _ in range(3):
        assert (await client.get(f"/api/v1/containers/{cid}")).status == 200
    assert (await client.get("/api/v1/containers/no-such-container")).status == 404
    assert (await client.get("/no/such/route")).status == 404
    samples = await scrape(client)
    route = "/api/v1/containers/{id}"
    assert value(samples, "nekzusd_http_requests_total", route=route, method="GET", status="200") == 3
    assert value(samples, "nekzusd_http_requests_total", route=route, method="GET", status="404") == 1
    assert value(samples, "nekzusd_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(samples, "nekzusd_http_request_duration_seconds_count", route=route) == 4
    assert value(samples, "nekzusd_http_request_duration_seconds_bucket", route=route, le="+Inf") == 4
    assert not any(cid in str(key) for key in samples), "raw paths must not become label values"


async def test_operations_ws_clients_and_runtime_up(client, engine) -> None:
    cid = await run_container(engine, unique("m"), labels={"nekzus.app.id": "grafana"})
    ws = await ws_connect(client)
    assert (await client.post(f"/api/v1/containers/{cid}/stop?timeout=1")).status == 202
    await next_message(ws, "container.stop.completed")
    assert (await client.post(f"/api/v1/containers/{cid}/stop?timeout=1")).status == 409  # not an operation
    samples = await scrape(client)
    assert value(samples, "nekzusd_operations_total", kind="stop", result="success") == 1
    assert value(samples, "nekzusd_operations_total", kind="stop", result="failure") == 0
    assert value(samples, "nekzusd_operation_duration_seconds_count", kind="stop") == 1
    assert value(samples, "nekzusd_websocket_clients") == 1
    assert value(samples, "nekzusd_runtime_up", runtime="docker") == 1
    assert value(samples, "nekzusd_runtime_ping_seconds", runtime="docker") > 0
    await ws.close()


async def test_log_lines_streamed_are_counted(client, engine) -> None:
    cid = await run_container(engine, unique("m"), "echo one; echo two; echo three; sleep 100000",
                              labels={"nekzusd.app.id": "grafana"})
    ws = await ws_connect(client)
    async def logged() -> bool:  # the three lines have reached the engine's log
        status, body = await asyncio.to_thread(engine.api, "GET", f"/containers/{cid}/logs?stdout=1")
        return status == 200 and b"three" in body
    await wait_for(logged, timeout=10, interval=0.05)
    await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": cid, "follow": False}})
    await next_message(ws, "container.logs.ended")
    samples = await scrape(client)
    assert value(samples, "nekzusd_log_lines_streamed_total") == 3
    assert value(samples, "nekzusd_log_lines_dropped_total") == 0
    assert value(samples, "nekzusd_log_streams") == 0  # the tail ended
    await ws.close()


async def test_rate_limit_rejections_are_counted(make_client, config_data) -> None:
    config_data["auth"] = {"local_networks": ["127.0.0.1/32"]}
    config_data["rate_limit"] = {"containers": {"per_minute": 1, "burst": 2}}
    client = await make_client(config_data)
    secret = (Path(config_data["state_dir"]) / "jwt.secret").read_bytes().strip()
    token = Tokens(secret, "nekzus", "nekzus").create("script", ["read:*"], 60)
    statuses = []
    async with remote_session() as remote:
        for _ in range(5):
            async with remote.get(client.make_url("/api/v1/containers"),
                                  headers={"Authorization": f"Bearer {token}"}) as resp:
                statuses.append(resp.status)
    assert statuses == [200, 200, 429, 429, 429]
    assert value(await scrape(client), "nekzusd_rate_limit_rejections_total") == 3


async def test_unreachable_runtime_reported_down(make_client, config_data, tmp_path: Path) -> None:
    config_data["runtimes"] = {"docker": {"host": f"unix://{tmp_path}/missing.sock"}}
    client = await make_client(config_data)
    samples = await scrape(client)
    assert value(samples, "nekzusd_runtime_up", runtime="docker") == 0
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "not_ready"
    assert not body["runtime"]["reachable"] and body["runtime"]["error"]
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_readyz_when_the_engine_answers(client, engine) -> None:
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ready"
    assert body["runtime"]["name"] == "docker" and body["runtime"]["primary"]
    assert body["runtime"]["version"] == engine.api_json("GET", "/version")["Version"]


async def test_metrics_need_a_token_from_remote(make_client, config_data) -> None:
    config_data["auth"] = {"local_networks": ["127.0.0.1/32"]}
    client = await make_client(config_data)
    url = client.make_url("/metrics")
    secret = (Path(config_data["state_dir"]) / "jwt.secret").read_bytes().strip()
    token = Tokens(secret, "nekzus", "nekzus").create("prometheus", ["read:*"], 60)
    async with remote_session() as remote:
        async with remote.get(url) as resp:
            assert resp.status == 401
        async with remote.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200 and "nekzusd_runtime_up" in await resp.text()
        for probe in ("/healthz", "/readyz"):  # probes stay open
            async with remote.get(client.make_url(probe)) as resp:
                assert resp.status == 200


async def test_two_apps_keep_separate_registries(make_client, config_data) -> None:
    first = await make_client(config_data)
    second = await make_client(config_data)
    await first.get("/healthz")
    await first.get("/healthz")
    assert value(await scrape(second), "nekzusd_http_requests_total", route="/healthz", method="GET",
                 status="200") == 0
    assert value(await scrape(first), "nekzusd_http_requests_total", route="/healthz", method="GET",
                 status="200") == 2


async def test_unknown_methods_do_not_grow_labels(client) -> None:
    for method in ("PROPFIND", "MKCOL", "PURGE"):  # methods the parser accepts but nobody routes
        await client.request(method, "/healthz")
    samples = await scrape(client)
    methods = {dict(labels).get("method") for name, labels in samples if name == "nekzusd_http_requests_total"}
    assert methods <= {"GET", "OTHER"} and "OTHER" in methods


async def test_asyncio_tasks_gauge_follows_open_websockets(client) -> None:
    """The soak test judges task leaks by this gauge: it must rise with live work and fall back after."""
    async def tasks() -> float:
        return value(await scrape(client), "nekzusd_asyncio_tasks")

    before = await tasks()
    assert before >= 1  # at least the scrape's own request handler
    sockets = [await ws_connect(client) for _ in range(5)]
    assert await tasks() >= before + 10  # each connection: its handler and its writer task
    for ws in sockets:
        await ws.close()
    await wait_for(lambda: _at_most(tasks, before))


async def _at_most(read, limit: float) -> bool:
    return await read() <= limit


async def test_http_requests_in_flight_gauge_counts_the_scrape_and_nothing_left_over(client) -> None:
    """A scrape sees itself in flight; requests that ended (also with an error) are no longer counted."""
    for path in ("/api/v1/containers", "/api/v1/nosuch", "/healthz"):
        await client.get(path)
    assert value(await scrape(client), "nekzusd_http_requests_in_flight") == 1


async def test_operations_in_flight_gauge(client, engine) -> None:
    """Counted from the 202 until the result is announced (a shell without a TERM trap takes the grace)."""
    cid = (await asyncio.to_thread(engine.run, unique("m"), ["sleep", "100000"]))[:12]
    ws = await ws_connect(client)
    assert value(await scrape(client), "nekzusd_operations_in_flight") == 0
    assert (await client.post(f"/api/v1/containers/{cid}/stop?timeout=3")).status == 202
    assert value(await scrape(client), "nekzusd_operations_in_flight") == 1
    await next_message(ws, "container.stop.completed")
    assert value(await scrape(client), "nekzusd_operations_in_flight") == 0
    await ws.close()
