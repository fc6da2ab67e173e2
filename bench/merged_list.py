"""The merged container list (Docker + Kubernetes, no ``?runtime=``) against the sum of the two raw lists.

The lab's dockerd with its base containers, and the test suite's real kube-apiserver (tests/k8s, no
kubelet: ``pods`` bare pods marked Running through the API, as a kubelet would) in the one namespace the
daemon is configured for. The raw figures, measured in the same run over kept-alive connections: the
engine's ``GET /containers/json?all=1`` plus the API server's lists that a Kubernetes listing needs (pods,
and Deployments and StatefulSets for the workloads nekzusd scaled to 0), asked at once as the runtime does.
nekzusd asks both runtimes at once, so the ratio can be below 1. Also each runtime's part alone against
its raw list. Skipped, with the reason as its row, where the cluster's binaries are not built
(tests/harness/k8s/cluster.sh build).

    python -m bench.merged_list [--containers 30] [--pods 20] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import Daemon, Lab, Row, standalone
from tests.harness.k8s.cluster import Cluster, available

NAMESPACE = "default"


async def _median_ms(session: aiohttp.ClientSession, urls: list[str], n: int) -> float:
    """Median ms until every URL answered, asked at once (one URL: one request)."""
    async def get(url: str) -> None:
        async with session.get(url) as response:
            await response.read()
            assert response.status == 200, response.status

    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await asyncio.gather(*(get(url) for url in urls))
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def _make_pods(cluster: Cluster, pods: int) -> None:
    from kubernetes_asyncio import client

    async with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        for i in range(pods):
            await core.create_namespaced_pod(NAMESPACE, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"bench-{i:02d}", "labels": {"nekzus.app.id": "bench"}},
                "spec": {"nodeName": cluster.info.node_name,
                         "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}})
    await cluster.mark_pods_running(NAMESPACE)


async def measure(engine_sock: str, cluster: Cluster, daemon_url: str, requests: int) -> list[float]:
    """Median ms of: the engine's list, the API server's three lists, the daemon's merged list, its Docker
    list and its Kubernetes list; in interleaved rounds."""
    info = cluster.info
    assert info is not None
    tls = ssl.create_default_context(cafile=str(info.ca_file))
    kube = f"{info.api_url}/api/v1/namespaces/{NAMESPACE}"
    kube_apps = f"{info.api_url}/apis/apps/v1/namespaces/{NAMESPACE}"
    daemon = f"{daemon_url}/api/v1/containers?all=true"
    auth = {"Authorization": f"Bearer {info.admin_token}"}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(engine_sock)) as docker_session, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), headers=auth) as kube_session, \
            aiohttp.ClientSession() as api:
        calls = ((docker_session, ["http://docker/containers/json?all=1"]),
                 (kube_session, [f"{kube}/pods", f"{kube_apps}/deployments", f"{kube_apps}/statefulsets"]),
                 (api, [daemon]), (api, [f"{daemon}&runtime=docker"]), (api, [f"{daemon}&runtime=kubernetes"]))
        for session, urls in calls:  # warm every path
            await _median_ms(session, urls, 10)
        rounds: list[list[float]] = [[] for _ in calls]
        for _ in range(5):  # interleaved, so that machine noise hits every figure alike
            for figures, (session, urls) in zip(rounds, calls, strict=True):
                figures.append(await _median_ms(session, urls, max(requests // 5, 1)))
    return [statistics.median(r) for r in rounds]


def run(lab: Lab, pods: int = 20, requests: int = 200) -> list[Row]:
    ok, reason = available(build_if_missing=False)
    if not ok:
        return [Row(f"merged list: skipped ({reason[:80]})", 0.0, "skipped")]
    cluster = Cluster()
    cluster.start(Path(tempfile.mkdtemp(prefix="nkb-k8s-")))
    try:
        asyncio.run(_make_pods(cluster, pods))
        runtimes = {"primary": "docker", "docker": {"host": lab.engine.url},
                    "kubernetes": {"enabled": True, "kubeconfig": str(cluster.kubeconfig),
                                   "namespaces": [NAMESPACE]}}
        with Daemon(lab.engine, runtimes=runtimes) as daemon:
            docker_ms, kube_ms, merged_ms, docker_only_ms, kube_only_ms = asyncio.run(
                measure(str(lab.engine.socket_path), cluster, daemon.url, requests))
    finally:
        cluster.stop()
    raw = docker_ms + kube_ms
    what = f"{len(lab.base)} containers + {pods} pods"
    return [
        Row(f"merged list ({what}), median; engine: docker + kube lists", merged_ms, "ms", raw, "ratio <= 1.5",
            merged_ms / raw <= 1.5),
        Row("  its Docker part (?runtime=docker); engine: docker list", docker_only_ms, "ms", docker_ms),
        Row("  its Kubernetes part (?runtime=kubernetes); engine: kube lists", kube_only_ms, "ms", kube_ms),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    standalone("merged_list", run, args.containers, pods=args.pods, requests=args.requests)


if __name__ == "__main__":
    main()
