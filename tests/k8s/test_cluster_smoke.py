"""Smoke tests of the kubelet-less test cluster itself (tests/harness/k8s/cluster.sh + cluster.py).

They also pin down the behaviours the Kubernetes runtime of nekzusd has to live with:
graceful pod deletion never finishes without a kubelet, pod logs answer 500, and
metrics.k8s.io does not exist.  See tests/harness/k8s/README.md.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import pytest

from tests.harness.k8s.cluster import Cluster

pytestmark = pytest.mark.kubernetes

IMAGE = "localhost/busybox:latest"


@pytest.fixture
def k8s(k8s_cluster: Cluster) -> Cluster:
    """The session's cluster (tests/conftest.py), shared with the runtime's tests."""
    return k8s_cluster


async def _wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def _deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": IMAGE,
                                         "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600"]}]},
            },
        },
    }


async def _raw_get(cluster: Cluster, path: str, token: str | None = None) -> tuple[int, str]:
    info = cluster.info
    ctx = ssl.create_default_context(cafile=str(info.ca_file))
    headers = {"Authorization": f"Bearer {token or info.admin_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(info.api_url + path, headers=headers, ssl=ctx) as resp:
            return resp.status, await resp.text()


async def test_deployment_pods_run_scale_to_zero(k8s):
    from kubernetes_asyncio import client

    ns, name = "default", "smoke"
    async with k8s.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        await apps.create_namespaced_deployment(ns, _deployment(name, 2))

        async def two_bound_pods():
            pods = (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
            bound = [p for p in pods if p.spec.node_name == k8s.info.node_name]
            return bound if len(bound) == 2 else None

        # controller-manager creates ReplicaSet + pods, the scheduler binds them to the fake node
        await _wait_for(two_bound_pods, timeout=60, what="2 pods bound to the fake node")
        pods = (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
        assert {p.status.phase for p in pods} == {"Pending"}  # no kubelet: nobody starts them

        patched = await k8s.mark_pods_running(ns)
        assert sorted(patched) == sorted(p.metadata.name for p in pods)
        pods = (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
        assert [p.status.phase for p in pods] == ["Running", "Running"]
        for p in pods:
            assert p.status.pod_ip.startswith("127.")
            assert p.status.container_statuses[0].ready is True
            assert p.status.start_time is not None

        async def deployment_ready():
            d = await apps.read_namespaced_deployment(name, ns)
            return d.status.ready_replicas == 2 and d.status.available_replicas == 2
        await _wait_for(deployment_ready, what="deployment readyReplicas == 2")

        # scale to 0 through the scale subresource
        await apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 0}})
        scale = await apps.read_namespaced_deployment_scale(name, ns)
        assert scale.spec.replicas is None  # 0 is omitted from the JSON (omitempty): treat None as 0

        # The ReplicaSet controller deletes the pods gracefully (30 s default). Without a kubelet
        # that never finishes: the pods stay, with a deletionTimestamp ("Terminating").
        async def all_terminating():
            pods = (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
            return pods if pods and all(p.metadata.deletion_timestamp for p in pods) else None
        terminating = await _wait_for(all_terminating, what="pods marked for deletion")
        assert len(terminating) == 2
        assert all(p.metadata.deletion_grace_period_seconds == 30 for p in terminating)
        await asyncio.sleep(3)
        still = (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
        assert len(still) == 2, "pods went away without a kubelet: update tests/harness/k8s/README.md"

        # the deployment already counts them as gone
        d = await apps.read_namespaced_deployment(name, ns)
        assert not d.status.replicas

        # what a kubelet would do: confirm the deletion (grace period 0)
        deleted = await k8s.force_delete_terminating(ns)
        assert sorted(deleted) == sorted(p.metadata.name for p in terminating)

        async def no_pods():
            return not (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
        await _wait_for(no_pods, timeout=10, what="pods deleted")

        await apps.delete_namespaced_deployment(name, ns)


async def test_fake_kubelet_runs_and_removes_pods(k8s):
    from kubernetes_asyncio import client

    ns, name = "team-a", "auto"
    async with k8s.api_client() as api, k8s.fake_kubelet(namespaces=(ns,)):
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        await apps.create_namespaced_deployment(ns, _deployment(name, 1))

        async def ready():
            d = await apps.read_namespaced_deployment(name, ns)
            return d.status.ready_replicas == 1
        await _wait_for(ready, timeout=60, what="deployment ready with the fake kubelet")

        await apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 0}})

        async def gone():
            return not (await core.list_namespaced_pod(ns, label_selector=f"app={name}")).items
        await _wait_for(gone, timeout=30, what="pods removed with the fake kubelet")
        await apps.delete_namespaced_deployment(name, ns)


async def test_limited_user_rbac(k8s):
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.rest import ApiException

    async with k8s.api_client() as admin:
        await client.AppsV1Api(admin).create_namespaced_deployment("default", _deployment("rbac", 0))
    try:
        async with k8s.api_client(limited=True) as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            # "view" in default and team-a: reading works
            names = [d.metadata.name for d in (await apps.list_namespaced_deployment("default")).items]
            assert "rbac" in names
            await core.list_namespaced_pod("team-a")
            # ... but scaling does not
            with pytest.raises(ApiException) as exc:
                await apps.patch_namespaced_deployment_scale("rbac", "default", {"spec": {"replicas": 1}})
            assert exc.value.status == 403
            body = json.loads(exc.value.body)
            assert body["reason"] == "Forbidden"
            assert 'User "limited" cannot patch resource "deployments/scale"' in body["message"]
            # nothing at all in forbidden-ns, nor cluster-wide
            for call in (lambda: core.list_namespaced_pod("forbidden-ns"),
                         lambda: core.list_pod_for_all_namespaces(),
                         lambda: core.list_node()):
                with pytest.raises(ApiException) as exc:
                    await call()
                assert exc.value.status == 403
    finally:
        async with k8s.api_client() as admin:
            await client.AppsV1Api(admin).delete_namespaced_deployment("rbac", "default")


async def test_pod_log_and_metrics_answers_without_kubelet(k8s):
    """The exact answers are recorded in README.md for the runtime's error handling."""
    from kubernetes_asyncio import client

    async with k8s.api_client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "logs"},
            "spec": {"nodeName": k8s.info.node_name,
                     "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"]}]}})
        await k8s.mark_pods_running("default")
        try:
            status, text = await _raw_get(k8s, "/api/v1/namespaces/default/pods/logs/log")
            assert status == 500, text
            body = json.loads(text)
            assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == 500
            assert "dial tcp 127.0.0.1:10250: connect: connection refused" in body["message"]
            print("pod log answer:", text)

            status, text = await _raw_get(k8s, "/apis/metrics.k8s.io/v1beta1")
            assert status == 404, text
            print("metrics answer:", status, text)
            status, text = await _raw_get(k8s, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods")
            assert status == 404, text
        finally:
            await core.delete_namespaced_pod("logs", "default", grace_period_seconds=0)
