"""The merged container list (Docker + Kubernetes, no ``?runtime=``) against the sum of the two raw lists.

The lab's dockerd with its base containers, and the test suite's real kube-apiserver (tests/k8s, no
kubelet: ``pods`` bare pods marked Running through the API, as a kubelet would) in the one namespace the
daemon is configured for. The raw figures, measured in the same run over kept-alive connections: the
engine's ``GET /containers/json?all=1`` plus the API server's ``GET /api/v1/namespaces/default/pods`` (what
``kubectl get pods`` asks). nekzusd asks both runtimes at once (and the API server for Deployments and
StatefulSets too, to list the workloads it scaled to 0), so the ratio can be below 1. Skipped, with the
reason as its row, where the cluster's binaries are not built (tests/k8s/cluster.sh build).

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
from tests.k8s.cluster import Cluster, available

NAMESPACE = "default"


async def _median_ms(session: aiohttp.ClientSession, url: str, n: int, **kwargs: object) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
            await response.read()
            assert response.status == 200, response.status
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


async def measure(engine_sock: str, cluster: Cluster, daemon_url: str, requests: int) -> tuple[float, float, float]:
    """Median ms of (engine list, API server pod list, daemon merged list), in interleaved rounds."""
    info = cluster.info
    assert info is not None
    tls = ssl.create_default_context(cafile=str(info.ca_file))
    kube_url = f"{info.api_url}/api/v1/namespaces/{NAMESPACE}/pods"
    auth = {"Authorization": f"Bearer {info.admin_token}"}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(engine_sock)) as docker, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), headers=auth) as kube, \
            aiohttp.ClientSession() as api:
        calls = (lambda n: _median_ms(docker, "http://docker/containers/json?all=1", n),
                 lambda n: _median_ms(kube, kube_url, n),
                 lambda n: _median_ms(api, f"{daemon_url}/api/v1/containers?all=true", n))
        for call in calls:  # warm every path
            await call(10)
        rounds: list[list[float]] = [[], [], []]
        for _ in range(5):  # interleaved, so that machine noise hits all three alike
            for figures, call in zip(rounds, calls, strict=True):
                figures.append(await call(max(requests // 5, 1)))
    docker_ms, kube_ms, daemon_ms = (statistics.median(r) for r in rounds)
    return docker_ms, kube_ms, daemon_ms


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
            docker_ms, kube_ms, daemon_ms = asyncio.run(
                measure(str(lab.engine.socket_path), cluster, daemon.url, requests))
    finally:
        cluster.stop()
    raw = docker_ms + kube_ms
    return [Row(f"merged list ({len(lab.base)} containers + {pods} pods), median; engine: docker + kube lists",
                daemon_ms, "ms", raw, "ratio <= 1.5", daemon_ms / raw <= 1.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    standalone("merged_list", run, args.containers, pods=args.pods, requests=args.requests)


if __name__ == "__main__":
    main()
