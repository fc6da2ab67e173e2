"""``container.state_changed`` for Kubernetes pods, from the pod watch (runtimes/k8s_watch.py), on the
session's real kube-apiserver. There is no kubelet in this cluster: the test writes the pod status
through the API as a kubelet would (that is the boundary that cannot run here), and the control plane,
the watch and the daemon are real."""

from __future__ import annotations

import pytest

from nekzusd.keys import STATE_CHANGES
from nekzusd.runtimes import k8s_watch
from tests.harness.app import next_message
from tests.harness.k8s_fixtures import bare_pod, deployment, k8s_api, k8s_client, running_pods  # noqa: F401
from tests.test_state_changes import chain_to, connect

pytestmark = pytest.mark.kubernetes


def _kube_watch(client):
    return next(w for w in client.app[STATE_CHANGES].watches if w.runtime.name == "kubernetes")


async def test_pod_status_written_through_the_api_is_pushed(k8s_client, k8s_api, k8s_cluster):
    from kubernetes_asyncio import client

    core = client.CoreV1Api(k8s_api)
    ws = await connect(k8s_client)
    await core.create_namespaced_pod("team-a", bare_pod("watched", k8s_cluster.info.node_name))
    data = await chain_to(ws, "watched", "pending", None)
    assert (data["runtime"], data["namespace"], data["name"]) == ("kubernetes", "team-a", "watched")

    assert await k8s_cluster.mark_pods_running("team-a") == ["watched"]
    data = await chain_to(ws, "watched", "running", "pending")
    assert data["health"] == "healthy" and "1/1 ready" in data["status"]

    failed = {"status": {"phase": "Failed", "reason": "Error", "containerStatuses": [{
        "name": "main", "image": "localhost/busybox:latest", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}}
    await core.patch_namespaced_pod_status("watched", "team-a", failed)
    data = await chain_to(ws, "watched", "failed", "running")
    assert data["status"].startswith("Error")

    await core.delete_namespaced_pod("watched", "team-a", grace_period_seconds=0)
    await chain_to(ws, "watched", "removed", "failed")
    await ws.close()


async def test_a_rescheduled_pod_is_one_removed_and_one_new(k8s_client, k8s_api, k8s_cluster):
    """A Deployment's pod deleted by hand: the old name goes (through Terminating), the ReplicaSet's
    replacement comes. Every message's previousState is what the one before about that pod said."""
    import asyncio

    from kubernetes_asyncio import client

    await client.AppsV1Api(k8s_api).create_namespaced_deployment("default", deployment("resched", 1))
    ws = await connect(k8s_client)
    told: dict[str, str] = {}

    async def until(done) -> None:
        async with asyncio.timeout(30):
            while not done():
                data = (await next_message(ws, "container.state_changed"))["data"]
                # The first message of a pod may follow one sent before this client connected (the
                # Deployment's pod can be seen pending first): the chain is checked from there on.
                assert data["name"] not in told or data["previousState"] == told[data["name"]], (data, told)
                told[data["name"]] = data["state"]

    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        (old,) = await running_pods(k8s_api, "default", "resched", 1)
        await until(lambda: told.get(old) == "running")
        await client.CoreV1Api(k8s_api).delete_namespaced_pod(old, "default")
        await until(lambda: told.get(old) == "removed"
                    and any(n.startswith("resched-") and n != old and s == "running" for n, s in told.items()))
    await ws.close()


async def test_the_watch_reopens_from_its_version(k8s_client, k8s_api, k8s_cluster):
    """One watch request against the real server: a fresh one starts with every pod (ADDED: no gap after
    the listing), one reopened from a version carries the later change and nothing from before.
    (The 410 Gone path is not provoked: this young cluster's watch cache still serves any version.)"""
    import asyncio

    from kubernetes_asyncio import client

    runtime = _kube_watch(k8s_client).runtime
    core = client.CoreV1Api(k8s_api)
    await core.create_namespaced_pod("default", bare_pod("before", k8s_cluster.info.node_name))
    queue: asyncio.Queue = asyncio.Queue()
    task = asyncio.create_task(k8s_watch._watch_once(runtime._response, "default", None, queue))
    assert (await asyncio.wait_for(queue.get(), 10)).container_id == "before"  # a fresh watch: ADDED first
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    pods = await core.list_namespaced_pod("default")
    version = pods.metadata.resource_version

    task = asyncio.create_task(k8s_watch._watch_once(runtime._response, "default", version, queue))
    await core.create_namespaced_pod("default", bare_pod("after", k8s_cluster.info.node_name))
    event = await asyncio.wait_for(queue.get(), 10)
    assert (event.container_id, event.action) == ("after", "added")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
