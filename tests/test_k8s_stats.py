"""Pod statistics of the Kubernetes runtime: choosing the source, the metrics API, 503 METRICS_UNAVAILABLE.

Three kinds of tests, each saying what is real:
- The metrics-API path at the HTTP boundary: metrics-server cannot be installed here, so a small fake API
  server answers with the bodies in tests/data/k8s/ (the pod, node, "404 page not found" and nodes/proxy
  403 answers recorded from the real kube-apiserver of tests/harness/k8s; PodMetrics and the metrics API's
  discovery list written in metrics-server's exact shape, see tests/data/k8s/README.md). Everything on
  nekzusd's side is real: config, runtime, its HTTP client, the daemon's routes.
- METRICS_UNAVAILABLE against the real, kubelet-less control plane (``kubernetes`` mark): no metrics API
  and no kubelet, the real answers of a cluster without either.
- Config validation and the pure mapping of the two sources' documents.
The kubelet path against a real kubelet is in tests/test_k8s_stats_live.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nekzusd import config
from nekzusd.keys import RUNTIMES
from nekzusd.runtimes import k8s_stats
from nekzusd.stats import as_json, cpu_cores
from tests.harness.k8s_fixtures import deployment, k8s_api, k8s_config, running_pods  # noqa: F401

DATA = Path(__file__).parent / "data" / "k8s"
POD = json.loads((DATA / "pod-running.json").read_text())
NAME = POD["metadata"]["name"]
NODE = POD["spec"]["nodeName"]
METRICS_GROUP = "/apis/metrics.k8s.io/v1beta1"
POD_METRICS = f"{METRICS_GROUP}/namespaces/default/pods/{NAME}"
SUMMARY = f"/api/v1/nodes/{NODE}/proxy/stats/summary"
NOT_SERVED = (404, (DATA / "metrics-api-missing.txt").read_text(), "text/plain")  # the real answer
FORBIDDEN = (403, (DATA / "node-proxy-forbidden.json").read_text(), "application/json")  # the real answer

Answer = tuple[int, str, str]


# ------------------------------------------------------------------------------------------ config

def test_stats_source_defaults_to_auto_and_is_validated() -> None:
    assert config.parse({}, {}).runtimes.kubernetes.stats == "auto"
    for mode in ("metrics", "kubelet"):
        assert config.parse({"runtimes": {"kubernetes": {"stats": mode}}}, {}).runtimes.kubernetes.stats == mode
    with pytest.raises(config.ConfigError) as refused:
        config.parse({"runtimes": {"kubernetes": {"stats": "cadvisor"}}}, {})
    assert refused.value.problems == ["runtimes.kubernetes.stats: must be one of auto, metrics, kubelet"]
    example = (Path(__file__).parent.parent / "etc" / "nekzusd.yaml").read_text()
    assert "stats: auto" in example and "nodes/proxy" in example


# ------------------------------------------------------------------------------------------ pure mapping

def summary_entry(cpu_ns: int, stamp: str, nano: int | None = 250_000_000) -> dict[str, Any]:
    """A pod of a kubelet 1.20 /stats/summary (fields as the kubelet names them)."""
    cpu: dict[str, Any] = {"time": stamp, "usageCoreNanoSeconds": cpu_ns}
    if nano is not None:
        cpu["usageNanoCores"] = nano
    return {"podRef": {"name": NAME, "namespace": "default", "uid": POD["metadata"]["uid"]},
            "cpu": cpu, "memory": {"time": stamp, "usageBytes": 9 << 20, "workingSetBytes": 7 << 20},
            "network": {"time": stamp, "name": "eth0", "rxBytes": 100, "txBytes": 50,
                        "interfaces": [{"name": "eth0", "rxBytes": 100, "txBytes": 50},
                                       {"name": "eth1", "rxBytes": 1, "txBytes": 2}]},
            "containers": []}


def test_kubelet_cpu_comes_from_two_readings_and_first_from_the_kubelets_own_rate() -> None:
    uid = POD["metadata"]["uid"]
    first = k8s_stats.pod_reading({"pods": [summary_entry(10_000_000_000, "2026-12-01T10:00:00.100000001Z")]},
                                  "default", NAME, uid)
    second = k8s_stats.pod_reading({"pods": [summary_entry(10_600_000_000, "2026-12-01T10:00:02.100000001Z")]},
                                   "default", NAME, uid)
    assert first is not None and second is not None
    assert second.time_ns - first.time_ns == 2_000_000_000  # nanoseconds kept exactly
    alone = k8s_stats.kubelet_sample(NAME, first, None, 0.6, 320 << 20)
    assert cpu_cores(alone) == pytest.approx(0.25)  # the kubelet's usageNanoCores
    paired = k8s_stats.kubelet_sample(NAME, second, first, 0.6, 320 << 20)
    assert cpu_cores(paired) == pytest.approx(0.3)  # 0.6 s of CPU over 2 s
    stats = as_json(paired, cpu_cores(paired) or 0.0)
    assert stats["cpu"] == {"usage": 30.0, "coresUsed": 0.3, "totalCores": 0.6}
    assert stats["memory"] == {"usage": round((7 << 20) / (320 << 20) * 100, 2), "used": 7 << 20,
                               "limit": 320 << 20, "available": (320 - 7) << 20}
    assert stats["network"] == {"rx": 101, "tx": 52}  # summed over the interfaces
    # Another pod of the same name (a StatefulSet's replacement) is not this one.
    assert k8s_stats.pod_reading({"pods": [summary_entry(1, "2026-12-01T10:00:00Z")]}, "default", NAME,
                                 "another-uid") is None


def test_pod_figures_are_summed_from_containers_without_pod_level_cgroups() -> None:
    entry = summary_entry(0, "2026-12-01T10:00:00Z")
    del entry["cpu"], entry["memory"], entry["network"]
    entry["containers"] = [
        {"name": "a", "cpu": {"time": "2026-12-01T10:00:01Z", "usageCoreNanoSeconds": 5, "usageNanoCores": 1},
         "memory": {"workingSetBytes": 10}},
        {"name": "b", "cpu": {"time": "2026-12-01T10:00:02Z", "usageCoreNanoSeconds": 7, "usageNanoCores": 2},
         "memory": {"workingSetBytes": 20}}]
    reading = k8s_stats.pod_reading({"pods": [entry]}, "default", NAME, None)
    assert reading == k8s_stats.Reading(time_ns=1796119202 * 10**9, cpu_ns=12, nano_cores=3, working_set=30,
                                        rx=0, tx=0, scope="containers")
    # The same while the pod's own reading is still the all-zero one taken as its cgroup was made.
    entry["cpu"] = {"time": "2026-12-01T09:59:59Z", "usageNanoCores": 0, "usageCoreNanoSeconds": 0}
    entry["memory"] = {"time": "2026-12-01T09:59:59Z", "workingSetBytes": 0}
    assert k8s_stats.pod_reading({"pods": [entry]}, "default", NAME, None) == reading


# ------------------------------------------------------------------------------------------ HTTP boundary

class FakeApi:
    """The API paths stats need, each answer settable, with every request path kept in ``asked``."""

    def __init__(self) -> None:
        self.pod: dict[str, Any] = copy.deepcopy(POD)
        self.discovery: Answer = (200, (DATA / "metrics-api-resources.json").read_text(), "application/json")
        self.metrics: Answer = (200, (DATA / "podmetrics.json").read_text(), "application/json")
        self.summary: Answer = FORBIDDEN
        self.summary_size = 0  # > 0: a summary of that many bytes, streamed
        self.asked: list[str] = []
        self.hosts: list[str] = []  # the Host header of each request (a proxied request names the API server)
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/pods", self.list_pods)
        app.router.add_get("/apis/apps/v1/namespaces/default/{kind}", self.empty_list)
        app.router.add_get("/api/v1/namespaces/default/pods/{name}", self.get_pod)
        app.router.add_get(f"/api/v1/nodes/{NODE}", self.get_node)
        app.router.add_get(METRICS_GROUP, self.get_discovery)
        app.router.add_get(METRICS_GROUP + "/namespaces/default/pods/{name}", self.get_metrics)
        app.router.add_get(SUMMARY, self.get_summary)
        self.app = app

    def count(self, path: str) -> int:
        return self.asked.count(path)

    async def answer(self, request: web.Request, answer: Answer) -> web.Response:
        assert request.headers["Authorization"] == "Bearer fake-token"
        self.asked.append(request.path)
        self.hosts.append(request.host)
        status, body, content_type = answer
        return web.Response(status=status, text=body, content_type=content_type)

    async def get_discovery(self, request: web.Request) -> web.Response:
        return await self.answer(request, self.discovery)

    async def get_metrics(self, request: web.Request) -> web.Response:
        return await self.answer(request, self.metrics)

    async def list_pods(self, request: web.Request) -> web.Response:
        return await self.answer(request, (200, json.dumps({"kind": "PodList", "items": [self.pod]}),
                                           "application/json"))

    async def empty_list(self, request: web.Request) -> web.Response:
        return await self.answer(request, (200, json.dumps({"items": []}), "application/json"))

    async def get_pod(self, request: web.Request) -> web.Response:
        return await self.answer(request, (200, json.dumps(self.pod), "application/json"))

    async def get_node(self, request: web.Request) -> web.Response:
        return await self.answer(request, (200, (DATA / "node.json").read_text(), "application/json"))

    async def get_summary(self, request: web.Request) -> web.StreamResponse:
        if not self.summary_size:
            return await self.answer(request, self.summary)
        self.asked.append(request.path)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * (1 << 20)
        try:
            for _ in range(self.summary_size >> 20):
                await response.write(chunk)
        except ConnectionError:
            pass  # nekzusd hung up: what is being tested
        return response


@pytest.fixture
async def fake_api(aiohttp_server) -> tuple[FakeApi, Any]:
    fake = FakeApi()
    return fake, await aiohttp_server(fake.app, host="127.0.0.1")


async def daemon_for(fake_api, make_client, tmp_path, stats: str = "auto"):
    """A Kubernetes-only daemon whose kubeconfig points at the fake API server."""
    fake, server = fake_api
    tmp_path.mkdir(exist_ok=True)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
        "users": [{"name": "u", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]}))
    client = await make_client({
        "state_dir": str(tmp_path / "state"), "server": {"listen": "127.0.0.1:0", "tls": {"mode": "off"}},
        "runtimes": {"primary": "kubernetes", "docker": {"enabled": False},
                     "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "namespaces": ["default"],
                                    "stats": stats}},
        "apps": [{"id": "grafana", "name": "Grafana"}]})
    return fake, client


@pytest.fixture
async def daemon(fake_api, make_client, tmp_path):
    return await daemon_for(fake_api, make_client, tmp_path)


async def forget_samplers(client) -> None:
    """End every live sampler, so that the next request starts a new one (and chooses its source)."""
    await client.app[RUNTIMES].pick("kubernetes").pod_stats.samplers.close()


async def test_metrics_api_stats_with_limits_from_the_pod_spec(daemon):
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
    assert fake.count(f"/api/v1/nodes/{NODE}") == 0  # limits known: the node is not needed
    assert fake.count(SUMMARY) == 0  # the metrics API answered: the kubelet is not asked


async def test_auto_learns_once_whether_the_metrics_api_is_served(daemon):
    fake, client = daemon
    for _ in range(3):
        resp = await client.get(f"/api/v1/containers/default/{NAME}/stats")
        assert resp.status == 200, await resp.text()
        await forget_samplers(client)  # each request then starts a sampler that needs a source
    assert fake.count(POD_METRICS) == 3
    assert fake.count(METRICS_GROUP) == 1  # asked once, not per request (again after RECHECK seconds)


async def test_an_unlimited_pod_uses_its_nodes_allocatable(daemon):
    fake, client = daemon
    for c in fake.pod["spec"]["containers"]:
        c["resources"].pop("limits")
    stats = await (await client.get(f"/api/v1/containers/{NAME}/stats?namespace=default")).json()
    node = json.loads((DATA / "node.json").read_text())["status"]["allocatable"]
    assert node["cpu"] == "16" and node["memory"] == "64Gi"
    assert stats["cpu"]["totalCores"] == 16.0 and stats["memory"]["limit"] == 64 * 1024 ** 3


async def assert_metrics_unavailable(resp, tried: list[str]) -> dict[str, Any]:
    body = await resp.json()
    assert (resp.status, body["error"]) == (503, "METRICS_UNAVAILABLE"), body
    assert resp.headers["Retry-After"] == "30"
    assert [t["source"] for t in body["details"]["tried"]] == tried
    assert body["details"]["containerId"] == NAME and body["details"]["namespace"] == "default"
    return body


async def test_without_metrics_api_auto_tries_the_kubelet_and_says_what_to_install_or_grant(daemon):
    fake, client = daemon
    fake.discovery = NOT_SERVED
    body = await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"),
                                            ["kubelet"])
    kubelet = body["details"]["tried"][0]
    assert 'cannot get resource \\"nodes/proxy\\"' in kubelet["reason"] or "nodes/proxy" in kubelet["reason"]
    assert "grant get on nodes/proxy" in kubelet["fix"] and "install metrics-server" in kubelet["fix"]
    assert "no source answers" in body["message"] and "grant get on nodes/proxy" in body["message"]
    assert fake.count(POD_METRICS) == 0  # known absent: never asked per pod


async def test_metrics_without_a_sample_yet_falls_back_to_the_kubelet(daemon):
    fake, client = daemon
    fake.metrics = (404, (DATA / "podmetrics-not-found.json").read_text(), "application/json")
    body = await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"),
                                            ["metrics", "kubelet"])
    assert "no figures for this pod yet" in body["details"]["tried"][0]["reason"]
    assert fake.count(SUMMARY) == 1
    # metrics-server is there, only this pod was not sampled yet: the next request asks it again.
    await forget_samplers(client)
    fake.metrics = (200, (DATA / "podmetrics.json").read_text(), "application/json")
    resp = await client.get(f"/api/v1/containers/default/{NAME}/stats")
    assert resp.status == 200 and (await resp.json())["cpu"]["coresUsed"] == 0.1376
    assert fake.count(METRICS_GROUP) == 1


async def test_a_registered_but_dead_metrics_api_is_left_until_the_recheck(daemon):
    """metrics-server down behind its APIService: the API server answers 503 (written in its shape);
    auto reads the kubelet instead and stops asking the metrics API until it checks again."""
    fake, client = daemon
    fake.metrics = (503, "service unavailable\n", "text/plain")
    body = await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"),
                                            ["metrics", "kubelet"])
    assert "registered but not answering" in body["details"]["tried"][0]["reason"]
    await forget_samplers(client)
    await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"), ["kubelet"])
    assert fake.count(POD_METRICS) == 1  # not asked again before the recheck


async def test_forced_sources_ask_only_themselves(fake_api, make_client, tmp_path):
    fake, client = await daemon_for(fake_api, make_client, tmp_path, stats="metrics")
    fake.metrics = NOT_SERVED
    body = await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"),
                                            ["metrics"])
    assert body["details"]["tried"][0] == {
        "source": "metrics", "reason": "the metrics API (metrics.k8s.io) is not served by this cluster",
        "fix": "install metrics-server"}
    assert fake.count(SUMMARY) == 0 and fake.count(METRICS_GROUP) == 0

    fake, client = await daemon_for(fake_api, make_client, tmp_path / "2", stats="kubelet")
    fake.asked.clear()
    await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"), ["kubelet"])
    assert fake.count(POD_METRICS) == 0 and fake.count(METRICS_GROUP) == 0 and fake.count(SUMMARY) == 1


async def test_batch_stats_leave_such_pods_out_and_say_so(daemon):
    fake, client = daemon
    fake.discovery = NOT_SERVED
    resp = await client.get("/api/v1/containers/stats?runtime=kubernetes")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["containers"] == []
    [left_out] = body["statsUnavailable"]
    assert {k: left_out[k] for k in ("containerId", "namespace", "runtime", "error")} == {
        "containerId": NAME, "namespace": "default", "runtime": "kubernetes", "error": "METRICS_UNAVAILABLE"}
    assert "nodes/proxy" in left_out["message"]


async def test_a_huge_summary_is_cut_off_not_buffered(fake_api, make_client, tmp_path):
    """A kubelet (or something in its place) that sends without end: nekzusd stops reading at 16 MiB."""
    fake, client = await daemon_for(fake_api, make_client, tmp_path, stats="kubelet")
    fake.summary_size = 64 << 20
    body = await assert_metrics_unavailable(await client.get(f"/api/v1/containers/default/{NAME}/stats"),
                                            ["kubelet"])
    assert "too large" in body["details"]["tried"][0]["reason"]


async def test_a_flood_of_stats_requests_costs_one_source_call(fake_api, make_client, tmp_path):
    """50 requests at once for a pod without a source: one sampler, so one kubelet summary asked; then
    50 more for the batch route: still within the summary's 2 s, no new call."""
    import asyncio

    fake, client = await daemon_for(fake_api, make_client, tmp_path, stats="kubelet")
    answers = await asyncio.gather(*(client.get(f"/api/v1/containers/default/{NAME}/stats") for _ in range(50)))
    assert {r.status for r in answers} == {503}
    assert fake.count(SUMMARY) == 1
    batches = await asyncio.gather(*(client.get("/api/v1/containers/stats?runtime=kubernetes") for _ in range(50)))
    assert {r.status for r in batches} == {200}
    assert fake.count(SUMMARY) <= 2  # once more at most, should the 2 s have passed meanwhile


async def test_a_pod_that_does_not_run_has_no_stats(daemon):
    fake, client = daemon
    fake.pod["status"]["phase"] = "Pending"
    resp = await client.get(f"/api/v1/containers/default/{NAME}/stats")
    assert resp.status == 409 and (await resp.json())["error"] == "CONTAINER_NOT_RUNNING"
    assert fake.count(METRICS_GROUP) == fake.count(SUMMARY) == 0


# ------------------------------------------------------------------------------------------ real control plane

@pytest.fixture
async def running_pod(k8s_cluster, k8s_api) -> str:
    from kubernetes_asyncio import client

    await client.AppsV1Api(k8s_api).create_namespaced_deployment("default", deployment("web", 1))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        return (await running_pods(k8s_api, "default", "web", 1))[0]


@pytest.mark.kubernetes
async def test_a_cluster_without_metrics_api_or_kubelet_answers_503(make_client, engine, tmp_path, k8s_cluster,
                                                                    running_pod):
    """The real kube-apiserver without metrics-server, whose node has no kubelet listening: both sources
    tried, each with the server's own reason; the batch leaves the pod out and says so."""
    client = await make_client(k8s_config(engine, tmp_path / "state", k8s_cluster.kubeconfig))
    resp = await client.get(f"/api/v1/containers/default/{running_pod}/stats")
    body = await resp.json()
    assert (resp.status, body["error"]) == (503, "METRICS_UNAVAILABLE"), body
    kubelet = body["details"]["tried"][0]
    assert [t["source"] for t in body["details"]["tried"]] == ["kubelet"]
    assert "connection refused" in kubelet["reason"] and "kubelet" in kubelet["fix"]
    assert "install metrics-server" in kubelet["fix"]

    batch = await client.get("/api/v1/containers/stats?runtime=kubernetes&namespace=default")
    answer = await batch.json()
    assert batch.status == 200 and answer["containers"] == [], answer
    assert [p["containerId"] for p in answer["statsUnavailable"]] == [running_pod]


@pytest.mark.kubernetes
async def test_without_the_nodes_proxy_right_the_answer_says_to_grant_it(make_client, engine, tmp_path, k8s_cluster,
                                                                         running_pod):
    client = await make_client(_with_stats(k8s_config(engine, tmp_path / "state", k8s_cluster.kubeconfig_limited),
                                           "kubelet"))
    resp = await client.get(f"/api/v1/containers/default/{running_pod}/stats")
    body = await resp.json()
    assert (resp.status, body["error"]) == (503, "METRICS_UNAVAILABLE"), body
    [kubelet] = body["details"]["tried"]
    assert 'User "limited" cannot get resource "nodes/proxy"' in kubelet["reason"]
    assert kubelet["fix"].startswith("grant get on nodes/proxy")


def _with_stats(data: dict[str, Any], stats: str) -> dict[str, Any]:
    data["runtimes"]["kubernetes"]["stats"] = stats
    return data
