"""`?runtime=` as a filter: the container list, batch stats, `<action>-all` and discovery without it merge
every enabled runtime (nekzusd.merged), against the real dockerd and the real kube-apiserver cluster.

A runtime that is down is a real one: a Docker host on a socket nobody listens on, a kubeconfig naming a
closed port, or a TCP server that accepts and never answers (an engine hung mid-request). Tests that need
the cluster are marked ``kubernetes`` like tests/test_kubernetes.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nekzusd.keys import OPERATIONS
from nekzusd.merged import HEADER
from nekzusd.status import gather
from tests.harness.app import base_config, run_container, unique, wait_for
from tests.harness.k8s_fixtures import (APP_ID, bare_pod, deployment, k8s_api, k8s_client, k8s_config,  # noqa: F401
                                pods_of, running_pods)

C = "/api/v1/containers"
k8s = pytest.mark.kubernetes


def order(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return row["namespace"], row["name"], row["runtime"], row["id"]


async def _create(api: Any, namespace: str, doc: dict) -> None:
    from kubernetes_asyncio import client

    if doc["kind"] == "Deployment":
        await client.AppsV1Api(api).create_namespaced_deployment(namespace, doc)
    else:
        await client.CoreV1Api(api).create_namespaced_pod(namespace, doc)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_kubeconfig(path: Path, port: int) -> Path:
    """A kubeconfig naming a loopback port: closed (refused at once) or a server that never answers."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u", "namespace": "default"}}]}))
    return path


def two_runtimes(engine, tmp_path: Path, kubeconfig: Path, docker_host: str | None = None,
                 **runtimes: Any) -> dict[str, Any]:
    data = base_config(engine, tmp_path / "state", apps=[{"id": APP_ID, "name": "Web"}])
    data["runtimes"] = {"primary": "docker", "docker": {"host": docker_host or engine.url},
                        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig),
                                       "namespaces": ["default", "team-a"]}, **runtimes}
    return data


class SilentServer:
    """A TCP server that accepts connections and reads what comes, never answering: a hung engine.
    ``open`` counts the connections its clients have not closed yet."""

    def __init__(self) -> None:
        self.open = 0
        self.most = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most = max(self.most, self.open)
        self.writers.append(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[int, SilentServer]]:
    silent = SilentServer()
    server = await asyncio.start_server(silent.hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], silent
    for writer in silent.writers:
        writer.close()
    server.close()


# ------------------------------------------------------------------ one runtime down (no cluster needed)

async def test_kubernetes_down_leaves_the_docker_rows_and_names_it(make_client, engine, tmp_path):
    name = unique("web")
    cid = await run_container(engine, name, labels={"nekzus.app.id": APP_ID, "nekzus.enable": "true"})
    client = await make_client(two_runtimes(engine, tmp_path, dead_kubeconfig(tmp_path / "kc", closed_port())))

    resp = await client.get(C)
    assert resp.status == 200, await resp.text()
    assert resp.headers[HEADER] == "kubernetes"
    assert [(r["id"], r["runtime"]) for r in await resp.json()] == [(cid, "docker")]

    # the same for batch stats, discovery and a bulk operation
    resp = await client.get(f"{C}/stats")
    body = await resp.json()
    assert resp.status == 200 and resp.headers[HEADER] == "kubernetes", body
    assert [s["containerId"] for s in body["containers"]] == [cid]
    resp = await client.get("/api/v1/discovery")
    assert resp.status == 200 and resp.headers[HEADER] == "kubernetes"
    resp = await client.post(f"{C}/restart-all?timeout=5")
    body = await resp.json()
    assert resp.status == 200 and resp.headers[HEADER] == "kubernetes", body
    assert [(r["id"], r["success"]) for r in body["results"]] == [(cid, True)]

    # named explicitly, the runtime's own error, as before
    resp = await client.get(f"{C}?runtime=kubernetes")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "RUNTIME_UNAVAILABLE", body
    assert body["details"] == {"runtime": "kubernetes"} and HEADER not in resp.headers
    resp = await client.get(f"{C}?runtime=docker")
    assert resp.status == 200 and HEADER not in resp.headers  # the other runtime was not asked


async def test_docker_down_leaves_the_kubernetes_rows_and_names_it(make_client, engine, tmp_path):
    """Docker on a dead socket. Kubernetes answering without the cluster: a stand-in API server (a boundary
    fake, as in test_k8s_stats.py) that answers every list with no items; the marked tests below
    do the same against the real cluster."""
    async def empty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"items": []}'
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(empty, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        client = await make_client(two_runtimes(engine, tmp_path, dead_kubeconfig(tmp_path / "kc", port),
                                                docker_host=f"unix://{tmp_path}/nobody.sock"))
        resp = await client.get(f"{C}?all=true")
        assert resp.status == 200, await resp.text()
        assert resp.headers[HEADER] == "docker" and await resp.json() == []
    finally:
        server.close()
        await server.wait_closed()


async def test_both_down_is_503_naming_each(make_client, engine, tmp_path):
    client = await make_client(two_runtimes(engine, tmp_path, dead_kubeconfig(tmp_path / "kc", closed_port()),
                                            docker_host=f"unix://{tmp_path}/nobody.sock"))
    for method, path in (("GET", C), ("GET", f"{C}/stats"), ("GET", "/api/v1/discovery"),
                         ("POST", f"{C}/stop-all")):
        resp = await client.request(method, path)
        body = await resp.json()
        assert resp.status == 503 and body["error"] == "RUNTIME_UNAVAILABLE", (path, body)
        assert set(body["details"]["runtimes"]) == {"docker", "kubernetes"}, body
        assert "docker" in body["message"] and "kubernetes" in body["message"]
        assert resp.headers["Retry-After"] == "5" and HEADER not in resp.headers


async def test_a_hung_runtime_costs_its_own_deadline_only(make_client, engine, tmp_path, silent_server):
    """Kubernetes accepts and never answers: the list comes after read_timeout (3 s here: Docker's part of
    fifty lists at once must fit in it on a loaded machine too), not the engine calls' 15 s, and fifty
    requests at once leave no task of theirs and no engine connection behind."""
    port, silent = silent_server
    name = unique("web")
    cid = await run_container(engine, name, labels={"nekzus.app.id": APP_ID})
    client = await make_client(two_runtimes(engine, tmp_path, dead_kubeconfig(tmp_path / "kc", port),
                                            read_timeout=3))
    started = time.monotonic()
    resp = await client.get(C)
    took = time.monotonic() - started
    assert resp.status == 200 and resp.headers[HEADER] == "kubernetes"
    assert [r["id"] for r in await resp.json()] == [cid]
    assert 2.9 <= took < 12, took

    started = time.monotonic()
    answers = await asyncio.gather(*(client.get(C) for _ in range(50)))
    assert [(r.status, r.headers.get(HEADER)) for r in answers] == [(200, "kubernetes")] * 50
    assert time.monotonic() - started < 14
    for r in answers:
        r.release()
    assert silent.most >= 50  # every request did reach the hung engine
    # What is left is the daemon's own: the state-change watcher's listing, which waits for the engine calls'
    # deadline (one call per namespace and kind: 6), its pod watch (one per namespace: 2) and the health
    # tracker's listing (6); the requests' calls were all cancelled and their sockets closed.
    await wait_for(lambda: _at_most(silent.open, 16), timeout=10)
    leftovers = [t for t in asyncio.all_tasks() if "merged" in getattr(t.get_coro(), "__qualname__", "")
                 or "each.<locals>" in getattr(t.get_coro(), "__qualname__", "")]
    assert leftovers == []


async def _at_most(value: int, bound: int) -> bool:
    return value <= bound


async def test_podman_as_the_docker_runtime_merges_the_same_way(podman_engine, make_client, tmp_path):
    """Podman's Docker-compatible API behind the docker runtime, with a Kubernetes that is down: its rows,
    and the header."""
    client = await make_client(two_runtimes(podman_engine, tmp_path,
                                            dead_kubeconfig(tmp_path / "kc", closed_port())))
    try:
        full_id = await asyncio.to_thread(podman_engine.run, unique("pod"), ["sleep", "100000"],
                                          labels={"nekzus.app.id": APP_ID})
        resp = await client.get(C)
        assert resp.status == 200 and resp.headers[HEADER] == "kubernetes"
        assert [(r["id"], r["runtime"]) for r in await resp.json()] == [(full_id[:12], "docker")]
        resp = await client.post(f"{C}/stop-all?timeout=2")
        body = await resp.json()
        assert resp.status == 200 and resp.headers[HEADER] == "kubernetes", body
        assert [(r["id"], r["success"]) for r in body["results"]] == [(full_id[:12], True)]
    finally:
        await asyncio.to_thread(podman_engine.remove_all)


async def test_odd_parameters_are_refused_cleanly(make_client, engine, tmp_path):
    """What a stranger would try on the merged routes: lists and repeats of runtimes, a huge namespace."""
    client = await make_client(two_runtimes(engine, tmp_path, dead_kubeconfig(tmp_path / "kc", closed_port())))
    cases = [(f"{C}?runtime=docker,kubernetes", 400, "INVALID_RUNTIME"),
             (f"{C}?runtime=docker&runtime=kubernetes", 400, "INVALID_PARAMETER"),
             (f"{C}?runtime=", 400, "INVALID_RUNTIME"),
             (f"{C}/stats?runtime=*", 400, "INVALID_RUNTIME"),
             (f"{C}?namespace={'a' * 6000}", 403, "NAMESPACE_NOT_ALLOWED"),  # a client error: not degraded
             (f"{C}?namespace=kube-system", 403, "NAMESPACE_NOT_ALLOWED"),
             ("/api/v1/discovery?namespace=../../etc", 403, "NAMESPACE_NOT_ALLOWED")]
    for path, status, code in cases:
        resp = await client.get(path)
        body = await resp.json()
        assert resp.status == status and body["error"] == code, (path[:80], body)
        assert len(json.dumps(body)) < 2000  # the huge value is not echoed back whole
    resp = await client.post(f"{C}/stop-all?runtime=podman")
    assert resp.status == 400 and (await resp.json())["error"] == "INVALID_RUNTIME"


async def test_a_docker_only_daemon_answers_as_before(client, engine):
    """One enabled runtime: no header, and its own errors (the namespace is ignored by Docker)."""
    cid = await run_container(engine, unique("g"), labels={"nekzus.app.id": "grafana"})
    resp = await client.get(f"{C}?namespace=whatever")
    assert resp.status == 200 and HEADER not in resp.headers
    assert [r["id"] for r in await resp.json()] == [cid]
    resp = await client.post(f"{C}/pause-all")
    body = await resp.json()
    assert resp.status == 200 and "skippedRuntimes" not in body and body["success"] == 1, body
    assert (await client.post(f"{C}/unpause-all")).status == 200


# ------------------------------------------------------------------ both runtimes up (the real cluster)

@pytest.fixture
async def both(engine, k8s_client, k8s_api, k8s_cluster) -> AsyncIterator[dict[str, Any]]:
    """One linked Docker container, a running linked pod in default and one in team-a, an unlinked
    container and pod asking to be discovered."""
    names = {"docker": unique("web"), "docker_candidate": unique("cand")}
    ids = {"docker": await run_container(engine, names["docker"], labels={"nekzus.app.id": APP_ID}),
           "docker_candidate": await run_container(engine, names["docker_candidate"],
                                                   labels={"nekzus.enable": "true"})}
    await _create(k8s_api, "default", deployment("web", 1))
    await _create(k8s_api, "team-a", deployment("api", 1))
    candidate = bare_pod("k8s-cand", k8s_cluster.info.node_name, labels={"nekzus.enable": "true"})
    candidate["metadata"]["labels"].pop("nekzus.app.id")
    await _create(k8s_api, "default", candidate)
    async with k8s_cluster.fake_kubelet(namespaces=("default", "team-a")):
        ids["default"] = (await running_pods(k8s_api, "default", "web", 1))[0]
        ids["team-a"] = (await running_pods(k8s_api, "team-a", "api", 1))[0]
        yield ids


@k8s
async def test_the_list_merges_both_runtimes_and_filters(k8s_client, both):
    resp = await k8s_client.get(C)
    rows = await resp.json()
    assert resp.status == 200 and HEADER not in resp.headers
    assert [(r["id"], r["runtime"], r["namespace"]) for r in rows] == [
        (both["docker"], "docker", ""), (both["default"], "kubernetes", "default"),
        (both["team-a"], "kubernetes", "team-a")]  # Docker rows first (no namespace), then by namespace
    assert rows == sorted(rows, key=order)

    docker = await (await k8s_client.get(f"{C}?runtime=docker")).json()
    assert [r["id"] for r in docker] == [both["docker"]]
    kube = await (await k8s_client.get(f"{C}?runtime=kubernetes")).json()
    assert [r["id"] for r in kube] == [both["default"], both["team-a"]]
    # ?namespace= without a runtime narrows the Kubernetes rows only
    team_a = await (await k8s_client.get(f"{C}?namespace=team-a")).json()
    assert [r["id"] for r in team_a] == [both["docker"], both["team-a"]]
    every = await (await k8s_client.get(f"{C}?all=true")).json()
    assert {both["docker_candidate"], "k8s-cand"} <= {r["id"] for r in every}
    assert every == sorted(every, key=order)

    # the status page counts what the list shows, per runtime
    status = await gather(k8s_client.app)
    listed = Counter((r["runtime"], r["state"]) for r in every)
    assert {(rt, state): n for rt, states in status["containers"]["byState"].items()
            for state, n in states.items()} == dict(listed)
    assert status["containers"]["total"] == len(every)


@k8s
async def test_discovery_merges_both_runtimes(k8s_client, both):
    rows = await (await k8s_client.get("/api/v1/discovery")).json()
    assert [(r["id"], r["runtime"]) for r in rows] == [(both["docker_candidate"], "docker"),
                                                       ("k8s-cand", "kubernetes")]
    assert rows[1]["suggestedAppId"] == "k8s-cand" and rows[1]["namespace"] == "default"
    only = await (await k8s_client.get("/api/v1/discovery?runtime=kubernetes")).json()
    assert [r["id"] for r in only] == ["k8s-cand"]
    none = await (await k8s_client.get("/api/v1/discovery?namespace=team-a")).json()
    assert [r["id"] for r in none] == [both["docker_candidate"]]


@k8s
async def test_batch_stats_cover_both_runtimes(k8s_client, both):
    """Docker's stats come back; this cluster has neither metrics-server nor a kubelet, so its pods cannot be
    sampled: they are left out and named in statsUnavailable (both runtimes answered: no header)."""
    resp = await k8s_client.get(f"{C}/stats")
    body = await resp.json()
    assert resp.status == 200, body
    assert [s["containerId"] for s in body["containers"]] == [both["docker"]]
    assert HEADER not in resp.headers
    assert {(u["runtime"], u["error"]) for u in body["statsUnavailable"]} == {("kubernetes", "METRICS_UNAVAILABLE")}
    resp = await k8s_client.get(f"{C}/stats?runtime=docker")
    body = await resp.json()
    assert resp.status == 200 and HEADER not in resp.headers and "statsUnavailable" not in body
    resp = await k8s_client.get(f"{C}/stats?runtime=kubernetes")  # named: the same, its pods only
    body = await resp.json()
    assert resp.status == 200 and body["containers"] == [] and body["statsUnavailable"], body


@k8s
async def test_bulk_across_both_runtimes(k8s_client, k8s_api, k8s_cluster, engine, both):
    async with k8s_cluster.fake_kubelet(namespaces=("default", "team-a")):
        resp = await k8s_client.post(f"{C}/stop-all?timeout=5")
        body = await resp.json()
        assert resp.status == 200 and HEADER not in resp.headers, body
        assert [(r["id"], r["success"]) for r in body["results"]] == [
            (both["docker"], True), (both["default"], True), (both["team-a"], True)], body
        assert "skippedRuntimes" not in body
        assert await pods_of(k8s_api, "default", "web") == [] and await pods_of(k8s_api, "team-a", "api") == []
        inspected = await asyncio.to_thread(engine.api_json, "GET", f"/containers/{both['docker']}/json")
        assert inspected["State"]["Status"] == "exited"

        # start-all with a namespace: the Docker container and team-a's workload, not default's
        resp = await k8s_client.post(f"{C}/start-all?namespace=team-a")
        body = await resp.json()
        assert resp.status == 200 and body["success"] == 2, body
        assert {r["id"] for r in body["results"]} == {both["docker"], "api"}
        await running_pods(k8s_api, "team-a", "api", 1)
        assert await pods_of(k8s_api, "default", "web") == []

    # pause: Kubernetes cannot; its containers are left alone and it is reported, Docker's are paused
    resp = await k8s_client.post(f"{C}/pause-all")
    body = await resp.json()
    assert resp.status == 200, body
    assert [(r["id"], r["success"]) for r in body["results"]] == [(both["docker"], True)]
    assert body["skippedRuntimes"] == [{"runtime": "kubernetes", "error": "ACTION_NOT_SUPPORTED",
                                        "message": "The kubernetes runtime cannot pause containers"}]
    resp = await k8s_client.post(f"{C}/pause-all?runtime=kubernetes")  # named: 501, as before
    assert resp.status == 501 and (await resp.json())["error"] == "ACTION_NOT_SUPPORTED"
    resp = await k8s_client.post(f"{C}/unpause-all")
    assert resp.status == 200 and (await resp.json())["success"] == 1
    assert len([o for o in k8s_client.app[OPERATIONS].recent if o.action.name == "pause"]) == 1


@pytest.fixture
async def forwarder(k8s_cluster) -> AsyncIterator[Any]:
    """A TCP relay to the real API server that the test can cut, like the cluster going away under a
    running daemon (stopping the session's cluster itself would cost the other tests their fixture)."""
    host, port = k8s_cluster.api_url.removeprefix("https://").rsplit(":", 1)
    links: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        links.update((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)

    class Relay:
        port = server.sockets[0].getsockname()[1]

        @staticmethod
        async def cut() -> None:
            server.close()
            for link in links:
                link.close()
            await server.wait_closed()

    yield Relay
    await Relay.cut()


@k8s
async def test_the_cluster_going_away_leaves_docker_answering(make_client, engine, tmp_path, k8s_cluster, k8s_api,
                                                              forwarder):
    cid = await run_container(engine, unique("web"), labels={"nekzus.app.id": APP_ID})
    await _create(k8s_api, "default", deployment("web", 1))
    kubeconfig = tmp_path / "relayed-kubeconfig"
    kubeconfig.write_text(k8s_cluster.kubeconfig.read_text().replace(
        k8s_cluster.api_url, f"https://127.0.0.1:{forwarder.port}"))
    client = await make_client(k8s_config(engine, tmp_path / "state", kubeconfig))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pod = (await running_pods(k8s_api, "default", "web", 1))[0]
        resp = await client.get(C)
        assert resp.status == 200 and HEADER not in resp.headers
        assert [r["id"] for r in await resp.json()] == [cid, pod]

    await forwarder.cut()
    resp = await client.get(C)
    assert resp.status == 200 and resp.headers[HEADER] == "kubernetes"
    assert [r["id"] for r in await resp.json()] == [cid]


def test_read_timeout_is_checked(engine, tmp_path):
    from nekzusd.config import ConfigError, parse

    for bad, problem in ((0, "must be greater than 0"), ("soon", "must be a number"), (True, "must be a number")):
        data = base_config(engine, tmp_path / "state")
        data["runtimes"]["read_timeout"] = bad
        with pytest.raises(ConfigError) as exc:
            parse(data, env={})
        assert exc.value.problems == [f"runtimes.read_timeout: {problem}"], bad
    data = base_config(engine, tmp_path / "state")
    data["runtimes"]["read_timeout"] = 3
    assert parse(data, env={}).runtimes.read_timeout == 3.0
