"""Pod metrics and pod logs of the Kubernetes runtime, tested at the HTTP boundary.

Both need components that cannot run on this machine (metrics-server, and a kubelet that the API server
relays logs from). So here, and only here, the Kubernetes API is a small fake HTTP server answering with
the bodies in tests/data/k8s/: the pod and node documents and the error answers were recorded from the
real kube-apiserver of tests/k8s; the PodMetrics and log bodies are written in those components' exact
shape (see tests/data/k8s/README.md). Everything on nekzusd's side is real: the runtime, its HTTP client
(kubernetes-asyncio), the daemon's routes and the WebSocket log stream.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nekzusd.config import KubernetesConfig
from nekzusd.errors import ApiError, EngineError, RuntimeUnavailable
from nekzusd.keys import RUNTIMES
from nekzusd.runtimes import Ref
from nekzusd.runtimes.kubernetes import KubernetesRuntime
from tests.conftest import next_message, ws_connect

DATA = Path(__file__).parent / "data" / "k8s"
POD = json.loads((DATA / "pod-running.json").read_text())
NAME = POD["metadata"]["name"]
LOG = (DATA / "pod-log.txt").read_bytes()


class FakeApi:
    """The few API paths these tests need, with what each request asked for kept in ``asked``."""

    def __init__(self) -> None:
        self.pod: dict[str, Any] = copy.deepcopy(POD)
        self.metrics: tuple[int, str, str] = (200, (DATA / "podmetrics.json").read_text(), "application/json")
        self.log: tuple[int, list[bytes], str] = (200, _chunks(LOG), "text/plain")
        self.asked: list[tuple[str, dict[str, str]]] = []
        self.hosts: list[str] = []  # the Host header of each request (a proxied request names the API server)
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/pods/{name}", self.get_pod)
        app.router.add_get("/api/v1/nodes/fake-node", self.get_node)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{name}", self.get_metrics)
        app.router.add_get("/api/v1/namespaces/default/pods/{name}/log", self.get_log)
        self.app = app

    def _note(self, request: web.Request) -> None:
        assert request.headers["Authorization"] == "Bearer fake-token"
        self.asked.append((request.path, dict(request.query)))
        self.hosts.append(request.host)

    async def get_pod(self, request: web.Request) -> web.Response:
        self._note(request)
        if request.match_info["name"] != NAME:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                      "message": f'pods "{request.match_info["name"]}" not found', "code": 404},
                                     status=404)
        return web.json_response(self.pod)

    async def get_node(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.Response(text=(DATA / "node.json").read_text(), content_type="application/json")

    async def get_metrics(self, request: web.Request) -> web.Response:
        self._note(request)
        status, body, content_type = self.metrics
        return web.Response(status=status, text=body, content_type=content_type)

    async def get_log(self, request: web.Request) -> web.StreamResponse:
        """Sent in pieces that cut lines apart, as a kubelet's stream arrives."""
        self._note(request)
        status, chunks, content_type = self.log
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response


def _chunks(data: bytes, size: int = 50) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.fixture
async def fake_api(aiohttp_server) -> tuple[FakeApi, Any]:
    fake = FakeApi()
    return fake, await aiohttp_server(fake.app, host="127.0.0.1")


@pytest.fixture
async def daemon(fake_api, make_client, tmp_path):
    """A Kubernetes-only daemon whose kubeconfig points at the fake API server."""
    fake, server = fake_api
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
        "users": [{"name": "u", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]}))
    client = await make_client({
        "state_dir": str(tmp_path / "state"), "server": {"listen": "127.0.0.1:0", "tls": {"mode": "off"}},
        "runtimes": {"primary": "kubernetes", "docker": {"enabled": False},
                     "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "namespaces": ["default"]}},
        "apps": [{"id": "grafana", "name": "Grafana"}]})
    return fake, client


async def test_stats_from_pod_metrics_with_limits_from_the_pod_spec(daemon):
    fake, client = daemon
    resp = await client.get(f"/api/v1/containers/default/{NAME}/stats")
    assert resp.status == 200, await resp.text()
    stats = await resp.json()
    # metrics-server: 137581447n + 0 CPU, 92780Ki + 324Ki memory; limits 500m+100m CPU, 256Mi+64Mi memory
    used = (92780 + 324) * 1024
    limit = (256 + 64) * 1024 * 1024
    assert stats == {
        "containerId": NAME,
        "cpu": {"usage": 13.76, "coresUsed": 0.1376, "totalCores": 0.6},
        "memory": {"usage": round(used / limit * 100, 2), "used": used, "limit": limit, "available": limit - used},
        "network": {"rx": 0, "tx": 0},
        "timestamp": 1795883762,  # the PodMetrics timestamp, 2026-11-28T16:36:02Z
    }
    assert ("/api/v1/nodes/fake-node", {}) not in fake.asked  # limits known: the node is not needed


async def test_stats_of_an_unlimited_pod_use_the_node_allocatable(daemon):
    fake, client = daemon
    for c in fake.pod["spec"]["containers"]:
        c["resources"].pop("limits")
    stats = await (await client.get(f"/api/v1/containers/{NAME}/stats?namespace=default")).json()
    node = json.loads((DATA / "node.json").read_text())["status"]["allocatable"]
    assert node["cpu"] == "16" and node["memory"] == "64Gi"
    assert stats["cpu"]["totalCores"] == 16.0 and stats["memory"]["limit"] == 64 * 1024 ** 3


async def test_stats_errors_are_clear(daemon):
    fake, client = daemon
    fake.metrics = (404, (DATA / "metrics-api-missing.txt").read_text(), "text/plain")  # the real answer
    body = await (await client.get(f"/api/v1/containers/default/{NAME}/stats")).json()
    assert body["error"] == "CONTAINER_STATS_FAILED" and "metrics.k8s.io) is not available" in body["message"]

    fake.metrics = (404, (DATA / "podmetrics-not-found.json").read_text(), "application/json")
    body = await (await client.get(f"/api/v1/containers/default/{NAME}/stats")).json()
    assert body["error"] == "CONTAINER_STATS_FAILED" and "No metrics for pod" in body["message"]

    fake.pod["status"]["phase"] = "Pending"
    resp = await client.get(f"/api/v1/containers/default/{NAME}/stats")
    assert resp.status == 409 and (await resp.json())["error"] == "CONTAINER_NOT_RUNNING"


async def test_logs_are_lines_of_the_first_container(daemon):
    fake, client = daemon
    runtime = client.app[RUNTIMES].pick("kubernetes")
    lines = [line async for line in runtime.logs(Ref(NAME, "default"), tail=3, follow=False, timestamps=True)]
    expected = LOG.decode().splitlines()
    assert [line.message for line in lines] == expected
    assert {line.stream for line in lines} == {"stdout"}
    assert int(lines[0].timestamp) == 1795883730  # 2026-11-28T16:35:30Z, read from the line itself
    path, query = fake.asked[-1]
    assert path.endswith(f"/pods/{NAME}/log")
    assert query == {"container": "grafana", "tailLines": "3", "follow": "false", "timestamps": "true"}


async def test_a_last_line_without_newline_still_arrives(daemon):
    fake, client = daemon
    fake.log = (200, _chunks(b"one\ntw") + [b"o\nthree"], "text/plain")
    runtime = client.app[RUNTIMES].pick("kubernetes")
    lines = [line.message async for line in runtime.logs(Ref(NAME, "default"), tail=10, follow=True,
                                                         timestamps=False)]
    assert lines == ["one", "two", "three"]
    assert fake.asked[-1][1]["follow"] == "true"


async def test_log_subscription_over_the_websocket(daemon):
    fake, client = daemon
    ws = await ws_connect(client)
    await ws.send_json({"type": "container.logs.subscribe",
                        "data": {"containerId": NAME, "namespace": "default", "tail": 5, "follow": True}})
    await next_message(ws, "container.logs.started")
    got = [(await next_message(ws, "container.logs"))["data"] for _ in range(3)]
    assert [d["message"] for d in got] == LOG.decode().splitlines()
    assert all(d["containerId"] == NAME and d["stream"] == "stdout" for d in got)
    ended = await next_message(ws, "container.logs.ended")
    assert ended["data"]["reason"] == "container_stopped"
    await ws.close()


async def test_log_errors_are_clear(daemon):
    fake, client = daemon
    fake.log = (500, [(DATA / "pod-log-no-kubelet.json").read_bytes()], "application/json")  # the real answer
    runtime = client.app[RUNTIMES].pick("kubernetes")
    with pytest.raises(EngineError) as exc:
        async for _ in runtime.logs(Ref(NAME, "default"), tail=1, follow=False, timestamps=False):
            pass
    assert "kubelet" in str(exc.value) and "connection refused" in str(exc.value)
    with pytest.raises(ApiError) as missing:
        async for _ in runtime.logs(Ref("gone", "default"), tail=1, follow=False, timestamps=False):
            pass
    assert missing.value.code == "CONTAINER_NOT_FOUND"


def _kubeconfig(path: Path, server: str, **cluster: str) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]}))
    return str(path)


async def test_the_api_servers_proxy_comes_from_the_kubeconfig_else_from_the_environment(
        fake_api, tmp_path, monkeypatch, unused_tcp_port):
    """nekzusd reads the proxy variables once, not on each request as kubernetes-asyncio's session would;
    the proxy it uses must stay the same: the kubeconfig's ``proxy-url``, else HTTP(S)_PROXY / NO_PROXY.
    The API server is a name that does not resolve, so an answer can only come through the proxy, here
    the fake API server itself (a proxied plain-HTTP request carries the API server's name as Host)."""
    fake, server = fake_api
    fake_url = f"http://127.0.0.1:{server.port}"
    api_server = "http://kube-api.nekzus-test.invalid:6443"
    for var in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)

    async def pod_through(kubeconfig: str) -> str:
        runtime = KubernetesRuntime(KubernetesConfig(enabled=True, kubeconfig=kubeconfig))
        try:
            return (await runtime.get(Ref(NAME, "default"))).name
        finally:
            await runtime.close()

    monkeypatch.setenv("HTTP_PROXY", fake_url)
    assert await pod_through(_kubeconfig(tmp_path / "env", api_server)) == NAME
    assert fake.hosts[-1] == "kube-api.nekzus-test.invalid"

    fake.hosts.clear()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_tcp_port}")  # nothing listens there
    assert await pod_through(_kubeconfig(tmp_path / "own", api_server, **{"proxy-url": fake_url})) == NAME
    assert fake.hosts and set(fake.hosts) == {"kube-api.nekzus-test.invalid"}

    monkeypatch.setenv("HTTP_PROXY", fake_url)
    monkeypatch.setenv("NO_PROXY", ".nekzus-test.invalid")  # bypassed: the name is then looked up, and fails
    with pytest.raises(RuntimeUnavailable):
        await pod_through(_kubeconfig(tmp_path / "bypass", api_server))
