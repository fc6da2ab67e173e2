"""Pod metrics of the Kubernetes runtime, tested at the HTTP boundary.

They need metrics-server, which cannot run on this machine. So here, and only here, the Kubernetes API is
a small fake HTTP server answering with the bodies in tests/data/k8s/: the pod and node documents and the
error answers were recorded from the real kube-apiserver of tests/harness/k8s; the PodMetrics bodies are written in
metrics-server's exact shape (see tests/data/k8s/README.md). Everything on nekzusd's side is real: the
runtime, its HTTP client (kubernetes-asyncio) and the daemon's routes.

Pod logs were tested here too, on written kubelet answers; they are now tested against a real kubelet
(tests/test_kubernetes_live.py), which also showed what those answers lacked (a pod with two containers
needs one named; the kubelet's last words when a pod goes away).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web


DATA = Path(__file__).parent / "data" / "k8s"
POD = json.loads((DATA / "pod-running.json").read_text())
NAME = POD["metadata"]["name"]


class FakeApi:
    """The few API paths these tests need, with what each request asked for kept in ``asked``."""

    def __init__(self) -> None:
        self.pod: dict[str, Any] = copy.deepcopy(POD)
        self.metrics: tuple[int, str, str] = (200, (DATA / "podmetrics.json").read_text(), "application/json")
        self.asked: list[tuple[str, dict[str, str]]] = []
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/pods/{name}", self.get_pod)
        app.router.add_get("/api/v1/nodes/fake-node", self.get_node)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{name}", self.get_metrics)
        self.app = app

    def _note(self, request: web.Request) -> None:
        assert request.headers["Authorization"] == "Bearer fake-token"
        self.asked.append((request.path, dict(request.query)))

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
