"""Fixtures for the Kubernetes runtime's tests: a daemon app configured with both Docker and Kubernetes,
on the session's real (kubelet-less) control plane (``k8s_cluster`` in tests/harness/fixtures.py).
The fixtures are registered for every test by tests/conftest.py: ask for them by name, import the helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.harness.app import base_config
from tests.harness.k8s.cluster import Cluster

NAMESPACES = ["default", "team-a"]  # the daemon's; the cluster also has forbidden-ns, which it must refuse
IMAGE = "localhost/busybox:latest"
APP_ID = "web"


@pytest.fixture
async def k8s_api(k8s_cluster: Cluster) -> AsyncIterator[Any]:
    """An admin ApiClient; everything the test made in the cluster's namespaces is deleted afterwards."""
    from kubernetes_asyncio import client

    async with k8s_cluster.api_client() as api:
        yield api
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        # Until nothing is left: under load the controllers, working from a stale cache, once made a
        # ReplicaSet and its pod for a Deployment already deleted, and the next test listed that pod.
        async with asyncio.timeout(30):
            while True:
                for ns in (*NAMESPACES, "forbidden-ns"):
                    await apps.delete_collection_namespaced_deployment(ns)
                    await apps.delete_collection_namespaced_stateful_set(ns)
                    await apps.delete_collection_namespaced_replica_set(ns)
                    await core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
                await asyncio.sleep(0.2)  # a sync the controllers had queued lands in this time
                left = [len((await list_(ns)).items) for ns in (*NAMESPACES, "forbidden-ns")
                        for list_ in (apps.list_namespaced_deployment, apps.list_namespaced_replica_set,
                                      apps.list_namespaced_stateful_set, core.list_namespaced_pod)]
                if not any(left):
                    break


def k8s_config(engine, state_dir, kubeconfig, **overrides: Any) -> dict[str, Any]:
    data = base_config(engine, state_dir, apps=[{"id": APP_ID, "name": "Web"}, {"id": "grafana", "name": "Grafana"}])
    data["runtimes"] = {"primary": "docker", "docker": {"host": engine.url},
                        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "namespaces": NAMESPACES}}
    data.update(overrides)
    return data


@pytest.fixture
async def k8s_client(make_client, engine, tmp_path, k8s_cluster, k8s_api):
    return await make_client(k8s_config(engine, tmp_path / "state", k8s_cluster.kubeconfig))


def deployment(name: str, replicas: int, labels: dict[str, str] | None = None,
               container: dict[str, Any] | None = None, volumes: list[dict[str, Any]] | None = None) -> dict:
    selector = {"app": name}
    spec_container = {"name": "main", "image": IMAGE, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600"],
                      **(container or {})}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": selector},
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": {**selector, "nekzus.app.id": APP_ID, **(labels or {})}},
                              "spec": {"containers": [spec_container], "volumes": volumes or [],
                                       "terminationGracePeriodSeconds": 30}}},
    }


def bare_pod(name: str, node: str, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"nekzus.app.id": APP_ID, **(labels or {})}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"]}]}}


async def pods_of(api: Any, namespace: str, app: str, *, live_only: bool = False) -> list[Any]:
    from kubernetes_asyncio import client

    pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}")).items
    return [p for p in pods if not (live_only and p.metadata.deletion_timestamp)]


async def running_pods(api: Any, namespace: str, app: str, count: int, timeout: float = 60) -> list[str]:
    """Wait until exactly ``count`` live pods of the app run; their names."""
    async with asyncio.timeout(timeout):
        while True:
            pods = await pods_of(api, namespace, app, live_only=True)
            if len(pods) == count and all(p.status.phase == "Running" for p in pods):
                return sorted(p.metadata.name for p in pods)
            await asyncio.sleep(0.2)
