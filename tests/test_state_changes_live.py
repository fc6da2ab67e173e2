"""``container.state_changed`` on the live cluster (tests/harness/k8s_live.py): the pod status is written by a real
kubelet, and the crash is a real one (the pod's container killed through the node's own dockerd)."""

from __future__ import annotations

import asyncio


from tests.harness.k8s_live import LIVE, container, kubelet_cluster, live_api, live_client, pod  # noqa: F401
from tests.test_state_changes import chain_to, connect

pytestmark = LIVE


async def test_a_pod_run_and_crashed_on_a_real_kubelet(live_client, live_api, kubelet_cluster):
    from kubernetes_asyncio import client

    ws = await connect(live_client)
    manifest = pod("crashy", container("main", "sleep 3600 & wait"), restartPolicy="Never")
    created = await client.CoreV1Api(live_api).create_namespaced_pod("default", manifest)
    data = await chain_to(ws, "crashy", "running", None, timeout=90)  # pending, then the kubelet's Running
    assert (data["runtime"], data["namespace"], data["health"]) == ("kubernetes", "default", "healthy")

    (main,) = await asyncio.to_thread(kubelet_cluster.containers_of, created.metadata.uid)
    status, _ = await asyncio.to_thread(kubelet_cluster.engine.api, "POST", f"/containers/{main['Id']}/kill")
    assert status == 204
    data = await chain_to(ws, "crashy", "failed", "running", timeout=60)
    assert data["status"].startswith("Error")
    await ws.close()
