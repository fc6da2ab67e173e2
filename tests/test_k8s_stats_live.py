"""Pod statistics from the kubelet's summary, against a real kubelet (tests/harness/k8s_live.py): no fake anywhere.

The live cluster has no metrics-server (none is installable here), so ``stats: auto`` must learn that
once and read the kubelet's summary through the API server's node proxy. Its pods run on the host's
network (no bridge on these machines), for which the summary shows the host's interfaces, so nekzusd
reports 0: the summing of a pod's own interfaces is tested on the summary's shape in
tests/test_k8s_stats.py only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import pytest

from nekzusd.keys import RUNTIMES
from nekzusd.runtimes import k8s_stats
from tests.harness.app import wait_for
from tests.harness.k8s_live import (LIVE, NODE_NAME, container, kubelet_cluster, live_api, live_client,  # noqa: F401
                            live_config, pod, wait_pod)

pytestmark = LIVE

BUSY = "while :; do :; done"                      # one core, as much as it gets
IDLE = "sleep 3600 & wait"
HOLD = "head -c 40m /dev/zero > /dev/shm/held; sleep 3600 & wait"  # 40 MiB of tmpfs: in the working set


async def create(api: Any, doc: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    from kubernetes_asyncio import client

    await client.CoreV1Api(api).create_namespaced_pod(namespace, doc)
    return await wait_pod(api, namespace, doc["metadata"]["name"])


async def raw_summary(api: Any) -> dict[str, Any]:
    """The node's summary straight from the API server, as nekzusd reads it."""
    response = await api.call_api(f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary", "GET",
                                  auth_settings=["BearerToken"], _preload_content=False)
    return json.loads(await response.read())


def raw_reading(summary: dict[str, Any], doc: dict[str, Any]) -> k8s_stats.Reading | None:
    meta = doc["metadata"]
    return k8s_stats.pod_reading(summary, meta["namespace"], meta["name"], meta["uid"])


def pod_stats(client):
    return client.app[RUNTIMES].pick("kubernetes").pod_stats


async def stats_of(client, name: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/containers/default/{name}/stats")
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_auto_reads_the_kubelet_cpu_from_two_readings_and_the_working_set(live_client, live_api):
    busy = await create(live_api, pod("busy", container("main", BUSY, resources={"limits": {"cpu": "500m"}})))
    held = await create(live_api, pod("held", container("main", HOLD)))
    sources = pod_stats(live_client)

    first = await stats_of(live_client, "busy")
    assert sources.discoveries == 1 and sources._metrics_served is False  # no metrics API: learnt once
    assert first["containerId"] == "busy" and first["cpu"]["totalCores"] == 0.5  # its limit
    # The first answer is the kubelet's own rate; the next readings are paired by nekzusd. Follow the raw
    # summary until it moved on twice: nekzusd's answer for the second reading must be Δcpu/Δt of the two.
    # (The kubelet refreshes a pod's figures every 10-20 s; its first pod-level reading is all zero, taken
    # as the cgroup was made, so the first readings may be the containers' sum: only pod-level ones count.)
    readings: list[k8s_stats.Reading] = []
    async with asyncio.timeout(90):
        while len(readings) < 2:
            reading = raw_reading(await raw_summary(live_api), busy)
            assert reading is not None
            if reading.scope == "pod" and (not readings or reading.time_ns > readings[-1].time_ns):
                readings.append(reading)
            await stats_of(live_client, "busy")  # keeps the sampler alive, as a polling client does
            await asyncio.sleep(0.5)
    before, after = readings
    expected = (after.cpu_ns - before.cpu_ns) / (after.time_ns - before.time_ns)
    assert 0.05 < expected <= 0.5 * 1.1, expected  # busy, within its 500m quota

    async def paired() -> bool:
        return (await stats_of(live_client, "busy"))["timestamp"] == after.time_ns // 10**9
    await wait_for(paired, timeout=10)
    stats = await stats_of(live_client, "busy")
    assert stats["cpu"]["coresUsed"] == pytest.approx(expected, abs=1e-4)
    assert stats["cpu"]["usage"] == pytest.approx(expected * 100, abs=0.01)

    # Memory: the working set of the summary's reading nekzusd answered with.
    async def holding() -> bool:
        return (await stats_of(live_client, "held"))["memory"]["used"] >= 40 << 20
    await wait_for(holding, timeout=60)  # the kubelet's figures move every 10-20 s
    held_stats = await stats_of(live_client, "held")
    summary = await raw_summary(live_api)
    reading = raw_reading(summary, held)
    assert reading is not None
    if reading.time_ns // 10**9 == held_stats["timestamp"]:  # same reading (they change every 10-20 s)
        assert held_stats["memory"]["used"] == reading.working_set
    assert held_stats["cpu"]["coresUsed"] < 0.05  # idle
    node_memory = (summary["node"]["memory"].get("availableBytes") or 0) + summary["node"]["memory"]["workingSetBytes"]
    assert 0 < held_stats["memory"]["limit"] <= node_memory * 1.5  # no limit: the node's allocatable
    # Host network: the summary shows the host's interfaces for it, which are not the pod's traffic.
    pod_network = next(p for p in summary["pods"] if p["podRef"]["name"] == "held").get("network") or {}
    assert sum(i.get("rxBytes") or 0 for i in pod_network.get("interfaces") or []) > 0
    assert held_stats["network"] == {"rx": 0, "tx": 0}


async def test_batch_reads_one_summary_for_every_pod_of_the_node(live_client, live_api):
    docs = [await create(live_api, pod(f"p{i}", container("main", IDLE))) for i in range(3)]
    sources = pod_stats(live_client)
    calls = sources.summary_calls
    resp = await live_client.get("/api/v1/containers/stats?runtime=kubernetes&namespace=default")
    body = await resp.json()
    assert resp.status == 200, body
    assert sorted(c["containerId"] for c in body["containers"]) == ["p0", "p1", "p2"]
    assert "statsUnavailable" not in body
    assert sources.summary_calls - calls == 1  # three new samplers, one summary
    assert sources.samplers.active == len(docs)


async def test_stats_kubelet_forced(make_client, tmp_path, kubelet_cluster, live_api):
    config = live_config(tmp_path / "state", kubelet_cluster.kubeconfig)
    config["runtimes"]["kubernetes"]["stats"] = "kubelet"
    client = await make_client(config)
    await create(live_api, pod("idle", container("main", IDLE)))
    stats = await stats_of(client, "idle")
    assert stats["containerId"] == "idle" and stats["memory"]["used"] > 0
    assert pod_stats(client).discoveries == 0  # forced: the metrics API is never asked about


async def test_metrics_forced_on_a_cluster_without_it_is_503_even_with_a_kubelet(make_client, tmp_path,
                                                                                 kubelet_cluster, live_api):
    config = live_config(tmp_path / "state", kubelet_cluster.kubeconfig)
    config["runtimes"]["kubernetes"]["stats"] = "metrics"
    client = await make_client(config)
    await create(live_api, pod("idle", container("main", IDLE)))
    resp = await client.get("/api/v1/containers/default/idle/stats")
    body = await resp.json()
    assert (resp.status, body["error"]) == (503, "METRICS_UNAVAILABLE"), body
    assert [t["source"] for t in body["details"]["tried"]] == ["metrics"]


async def test_a_pod_that_stops_ends_its_sampler_and_has_no_stats(live_client, live_api):
    from kubernetes_asyncio import client

    await create(live_api, pod("brief", container("main", IDLE)))
    await create(live_api, pod("done", container("main", "sleep 2"), restartPolicy="Never"))
    assert (await stats_of(live_client, "brief"))["containerId"] == "brief"
    sources = pod_stats(live_client)
    await client.CoreV1Api(live_api).delete_namespaced_pod("brief", "default", grace_period_seconds=0)

    async def sampler_ended() -> bool:
        return sources.samplers.active == 0
    await wait_for(sampler_ended, timeout=30)  # the pod left the kubelet's summary
    resp = await live_client.get("/api/v1/containers/default/brief/stats")
    assert resp.status == 404 and (await resp.json())["error"] == "CONTAINER_NOT_FOUND"

    await wait_pod(live_api, "default", "done", phase="Succeeded")
    resp = await live_client.get("/api/v1/containers/default/done/stats")
    assert resp.status == 409 and (await resp.json())["error"] == "CONTAINER_NOT_RUNNING"
    batch = await (await live_client.get("/api/v1/containers/stats?runtime=kubernetes&namespace=default")).json()
    assert batch["containers"] == [] and "statsUnavailable" not in batch


async def test_latency_through_nekzusd_against_a_raw_summary_call(make_client, tmp_path, kubelet_cluster, live_api):
    """Figures for the report, medians: the raw summary call through the API server; nekzusd's first
    answer for a pod on a fresh daemon (kubeconfig, connection, discovery, pod, summary, node); on a warm
    daemon with no sampler or summary cached (pod, summary, node); and from a live sampler."""
    await create(live_api, pod("idle", container("main", IDLE)))

    async def timed(call: Any, times: int, between: Any = None) -> float:
        took = []
        for i in range(times):
            if between is not None:
                await between(i)
            started = time.perf_counter()
            await call()
            took.append(time.perf_counter() - started)
        return round(statistics.median(took) * 1000, 1)

    raw = await timed(lambda: raw_summary(live_api), 9)
    clients: list[Any] = []

    async def fresh_daemon(i: int) -> None:
        clients.append(await make_client(live_config(tmp_path / f"state{i}", kubelet_cluster.kubeconfig)))
    cold = await timed(lambda: stats_of(clients[-1], "idle"), 5, fresh_daemon)
    client = clients[-1]

    async def forget(_i: int) -> None:
        await pod_stats(client).close()  # no sampler, no summary: the next request reads them again
    warm = await timed(lambda: stats_of(client, "idle"), 9, forget)
    await stats_of(client, "idle")
    cached = await timed(lambda: stats_of(client, "idle"), 20)
    figures = {"raw summary": raw, "fresh daemon": cold, "new sampler": warm, "live sampler": cached}
    print(f"\nstats latency, median ms: {figures}", file=sys.stderr)
    assert cached < raw  # answered from the sampler, no API call
