"""The Kubernetes runtime against a real kube-apiserver + controller-manager + scheduler (tests/harness/k8s).

There is no kubelet: ``fake_kubelet`` (tests/harness/k8s/cluster.py) plays its two parts through the API (marks
bound pods Running, finishes pods being deleted). Everything else is the real control plane: Deployments,
ReplicaSets, scheduling, scaling, rollouts, RBAC.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from nekzusd.errors import ApiError
from nekzusd.keys import HEALTH, OPERATIONS, RUNTIMES
from nekzusd.runtimes import Ref
from tests.harness.app import next_message, wait_for, ws_connect
from tests.harness.k8s_fixtures import APP_ID, bare_pod, deployment, k8s_config, pods_of, running_pods

pytestmark = pytest.mark.kubernetes
K8S = "runtime=kubernetes"


async def _create(api, namespace: str, doc: dict) -> None:
    from kubernetes_asyncio import client

    if doc["kind"] == "Deployment":
        await client.AppsV1Api(api).create_namespaced_deployment(namespace, doc)
    else:
        await client.CoreV1Api(api).create_namespaced_pod(namespace, doc)


async def test_list_across_configured_namespaces_only(k8s_client, k8s_api, k8s_cluster):
    await _create(k8s_api, "default", deployment("web", 1, container={"ports": [{"containerPort": 8080}]}))
    await _create(k8s_api, "team-a", deployment("api", 1))
    await _create(k8s_api, "forbidden-ns", deployment("hidden", 1))
    await _create(k8s_api, "default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unlinked"},
                                       "spec": {"nodeName": k8s_cluster.info.node_name,
                                                "containers": [{"name": "c", "image": "x"}]}})
    async with k8s_cluster.fake_kubelet():
        web = (await running_pods(k8s_api, "default", "web", 1))[0]
        api = (await running_pods(k8s_api, "team-a", "api", 1))[0]

        rows = await (await k8s_client.get(f"/api/v1/containers?{K8S}")).json()
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {web, api}  # linked pods of default and team-a; not forbidden-ns, not unlinked
    row = by_id[web]
    assert row["runtime"] == "kubernetes" and row["namespace"] == "default" and row["name"] == web
    assert row["state"] == "running" and row["image"] == "localhost/busybox:latest"
    assert row["ports"] == [{"ip": "", "privatePort": 8080, "type": "tcp"}]
    assert row["labels"]["nekzus.app.id"] == APP_ID and isinstance(row["created"], int) and row["created"] > 0
    assert row["status"].startswith("Running, 1/1 ready")
    assert by_id[api]["namespace"] == "team-a"

    one = await (await k8s_client.get(f"/api/v1/containers?{K8S}&namespace=team-a")).json()
    assert [r["id"] for r in one] == [api]
    every = await (await k8s_client.get(f"/api/v1/containers?{K8S}&all=true")).json()
    assert "unlinked" in {r["id"] for r in every}
    pending = next(r for r in every if r["id"] == "unlinked")
    assert pending["state"] == "running"  # fake_kubelet ran it too


async def test_an_app_lists_a_deployment_by_name(make_client, engine, tmp_path, k8s_cluster, k8s_api):
    """Pod names change with every rollout; an app names the Deployment and links all of its pods."""
    data = k8s_config(engine, tmp_path / "state", k8s_cluster.kubeconfig)
    data["apps"] = [{"id": "shop", "name": "Shop", "containers": ["shop-frontend"]}]
    client = await make_client(data)
    unlabelled = deployment("shop-frontend", 2)
    unlabelled["spec"]["template"]["metadata"]["labels"].pop("nekzus.app.id")
    await _create(k8s_api, "default", unlabelled)
    async with k8s_cluster.fake_kubelet():
        pods = await running_pods(k8s_api, "default", "shop-frontend", 2)
        rows = await (await client.get(f"/api/v1/containers?{K8S}")).json()
    assert sorted(r["id"] for r in rows) == sorted(pods)


async def test_namespaces_outside_the_config_are_refused(k8s_client):
    for path in (f"/api/v1/containers?{K8S}&namespace=forbidden-ns",
                 f"/api/v1/containers/some-pod?{K8S}&namespace=forbidden-ns",
                 "/api/v1/containers/forbidden-ns/some-pod"):
        resp = await k8s_client.get(path)
        body = await resp.json()
        assert resp.status == 403 and body["error"] == "NAMESPACE_NOT_ALLOWED", (path, body)
        assert body["details"]["allowed"] == ["default", "team-a"]
    resp = await k8s_client.post("/api/v1/containers/forbidden-ns/some-pod/stop")
    assert resp.status == 403 and (await resp.json())["error"] == "NAMESPACE_NOT_ALLOWED"
    resp = await k8s_client.get(f"/api/v1/containers/Not_A_Pod?{K8S}")
    assert resp.status == 400 and (await resp.json())["error"] == "INVALID_CONTAINER_ID"
    resp = await k8s_client.get("/api/v1/containers/default/no-such-pod")
    assert resp.status == 404 and (await resp.json())["error"] == "CONTAINER_NOT_FOUND"


async def test_stop_start_restart_a_deployment(k8s_client, k8s_api, k8s_cluster):
    from kubernetes_asyncio import client

    apps = client.AppsV1Api(k8s_api)
    await _create(k8s_api, "default", deployment("web", 2))
    ws = await ws_connect(k8s_client)
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        first = await running_pods(k8s_api, "default", "web", 2)

        # stop through the path form: 202, then `completed` only once the pods are gone
        resp = await k8s_client.post(f"/api/v1/containers/default/{first[0]}/stop?timeout=5")
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()
        assert accepted["containerId"] == first[0] and accepted["timeout"] == 5
        done = await next_message(ws, "container.stop.completed", timeout=40)
        assert done["data"]["operationId"] == accepted["operationId"]
        assert done["data"]["namespace"] == "default"
        assert await pods_of(k8s_api, "default", "web") == []
        scaled = await apps.read_namespaced_deployment("web", "default")
        assert not scaled.spec.replicas
        assert scaled.metadata.annotations["nekzus.io/replicas-before-stop"] == "2"

        rows = await (await k8s_client.get(f"/api/v1/containers?{K8S}")).json()
        assert [(r["id"], r["state"]) for r in rows] == [("web", "stopped")]
        assert "was 2 replicas" in rows[0]["status"]
        resp = await k8s_client.post("/api/v1/containers/default/web/stop")
        assert resp.status == 409 and (await resp.json())["error"] == "CONTAINER_ALREADY_STOPPED"

        # start through the query form, from the id the list shows
        resp = await k8s_client.post(f"/api/v1/containers/web/start?{K8S}&namespace=default")
        assert resp.status == 202, await resp.text()
        await next_message(ws, "container.start.completed", timeout=40)
        second = await running_pods(k8s_api, "default", "web", 2, timeout=5)
        assert not set(second) & set(first)
        restored = await apps.read_namespaced_deployment("web", "default")
        assert restored.spec.replicas == 2
        assert "nekzus.io/replicas-before-stop" not in (restored.metadata.annotations or {})

        # restart: a rollout; `completed` once the new pods replaced the old ones
        resp = await k8s_client.post(f"/api/v1/containers/default/{second[1]}/restart?timeout=3")
        assert resp.status == 202, await resp.text()
        await next_message(ws, "container.restart.completed", timeout=60)
        third = await running_pods(k8s_api, "default", "web", 2, timeout=15)
        assert not set(third) & set(second)
        rolled = await apps.read_namespaced_deployment("web", "default")
        assert "kubectl.kubernetes.io/restartedAt" in rolled.spec.template.metadata.annotations
    await ws.close()


async def test_inspect_both_path_forms(k8s_client, k8s_api, k8s_cluster):
    from kubernetes_asyncio import client

    await client.CoreV1Api(k8s_api).create_namespaced_secret("default", {
        "metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}})
    container = {
        "ports": [{"containerPort": 80, "hostPort": 8081, "protocol": "UDP"}],
        "env": [{"name": "MODE", "value": "prod"}, {"name": "DB_PASSWORD", "value": "hunter2"},
                {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"},
                         {"name": "creds", "mountPath": "/run/creds", "readOnly": True}],
        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
    }
    volumes = [{"name": "data", "emptyDir": {}}, {"name": "creds", "secret": {"secretName": "creds"}}]
    await _create(k8s_api, "default", deployment("web", 1, container=container, volumes=volumes))
    try:
        async with k8s_cluster.fake_kubelet(namespaces=("default",)):
            pod = (await running_pods(k8s_api, "default", "web", 1))[0]
        path_form = await k8s_client.get(f"/api/v1/containers/default/{pod}")
        query_form = await k8s_client.get(f"/api/v1/containers/{pod}?{K8S}&namespace=default")
        assert path_form.status == query_form.status == 200
        details, other = await path_form.json(), await query_form.json()
    finally:
        await client.CoreV1Api(k8s_api).delete_namespaced_secret("creds", "default")
    assert details == other
    assert details["id"] == pod and details["namespace"] == "default" and details["runtime"] == "kubernetes"
    assert details["state"] == "running" and details["images"] == ["localhost/busybox:latest"]
    assert details["owner"] == {"kind": "Deployment", "name": "web"}
    assert details["node"] == k8s_cluster.info.node_name and details["restarts"] == 0
    assert details["podIP"].startswith("127.")
    assert details["ports"] == [{"ip": "", "privatePort": 80, "publicPort": 8081, "type": "udp"}]
    env = {e.get("name", "envFrom"): e for e in details["env"]}
    assert env["MODE"]["value"] == "prod"
    assert env["DB_PASSWORD"]["value"] == "***"
    assert env["API_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "password"}}
    assert env["envFrom"]["envFrom"] == {"configMapRef": {"name": "settings"}}
    assert "hunter2" not in str(details)
    mounts = {m["mountPath"]: m for m in details["mounts"]}
    assert mounts["/data"]["type"] == "emptyDir" and mounts["/data"]["readOnly"] is False
    assert mounts["/run/creds"] == {"name": "creds", "mountPath": "/run/creds", "readOnly": True,
                                    "type": "secret", "source": "creds", "container": "main"}
    assert details["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}


async def test_pods_without_an_owner_are_refused_before_the_202(k8s_client, k8s_api, k8s_cluster):
    await _create(k8s_api, "team-a", bare_pod("loner", k8s_cluster.info.node_name))
    await k8s_cluster.mark_pods_running("team-a")
    for op in ("stop", "restart"):
        resp = await k8s_client.post(f"/api/v1/containers/team-a/loner/{op}")
        body = await resp.json()
        assert resp.status == 409 and body["error"] == "POD_NOT_SCALABLE", body
        assert "no owner" in body["message"] and body["details"]["owner"] is None
    rows = await (await k8s_client.get(f"/api/v1/containers?{K8S}&namespace=team-a")).json()
    assert [(r["id"], r["state"]) for r in rows] == [("loner", "running")]  # untouched


async def test_missing_rbac_rights_give_a_clear_error(make_client, engine, tmp_path, k8s_cluster, k8s_api):
    from kubernetes_asyncio import client

    await _create(k8s_api, "default", deployment("web", 1))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pod = (await running_pods(k8s_api, "default", "web", 1))[0]
    limited = await make_client(k8s_config(engine, tmp_path / "state", k8s_cluster.kubeconfig_limited))
    rows = await (await limited.get(f"/api/v1/containers?{K8S}")).json()  # "view" may read
    assert [r["id"] for r in rows] == [pod]
    resp = await limited.post(f"/api/v1/containers/default/{pod}/stop")
    body = await resp.json()
    assert resp.status == 500 and body["error"] == "CONTAINER_STOP_FAILED", body
    assert "RBAC does not allow nekzusd to patch deployments.apps in namespace default" in body["message"]
    assert (await client.AppsV1Api(k8s_api).read_namespaced_deployment("web", "default")).spec.replicas == 1


async def test_pod_logs_without_a_kubelet_end_in_a_clear_error(k8s_client, k8s_api, k8s_cluster):
    """The API server relays logs from the node's kubelet, which this cluster lacks (its real 500)."""
    await _create(k8s_api, "default", deployment("web", 1))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pod = (await running_pods(k8s_api, "default", "web", 1))[0]
    ws = await ws_connect(k8s_client)
    await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": pod, "namespace": "default"}})
    await next_message(ws, "container.logs.started")
    error = await next_message(ws, "container.logs.error")
    assert error["data"]["error"] == "CONTAINER_LOGS_FAILED"
    assert "kubelet" in error["data"]["message"] and "10250" in error["data"]["message"]
    ended = await next_message(ws, "container.logs.ended")
    assert ended["data"]["reason"] == "error"
    await ws.close()


async def test_batch_and_bulk_with_runtime_kubernetes(k8s_client, k8s_api, k8s_cluster):
    await _create(k8s_api, "default", deployment("web", 2))
    await _create(k8s_api, "default", bare_pod("loner", k8s_cluster.info.node_name))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pods = await running_pods(k8s_api, "default", "web", 2)
        # stop-all: two pods of one Deployment stop together (one scale to 0); the bare pod fails clearly
        resp = await k8s_client.post(f"/api/v1/containers/stop-all?{K8S}&timeout=5")
        body = await resp.json()
        assert resp.status == 200, body
        results = {r["id"]: r for r in body["results"]}
        assert set(results) == {*pods, "loner"}
        assert all(results[p]["success"] for p in pods), body
        assert results["loner"]["success"] is False and "no owner" in results["loner"]["error"]
        assert await pods_of(k8s_api, "default", "web") == []

        resp = await k8s_client.post(f"/api/v1/containers/batch?{K8S}&namespace=default",
                                     json={"action": "start", "containerIds": ["web"]})
        body = await resp.json()
        assert resp.status == 200 and body["success"] == 1, body
        await running_pods(k8s_api, "default", "web", 2, timeout=5)


async def test_health_follows_pods_changed_outside_nekzusd(k8s_client, k8s_api, k8s_cluster):
    """The pod watch (Runtime.events) notices a scale-down made with the API directly."""
    from kubernetes_asyncio import client

    await _create(k8s_api, "default", deployment("web", 1))
    ws = await ws_connect(k8s_client)
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        await running_pods(k8s_api, "default", "web", 1)
        # the daemon started before the pod ran: only a pod event can have refreshed the app's health
        await wait_for(lambda: _is(k8s_client.app[HEALTH].status.get(APP_ID), "healthy"), timeout=20)
    # With the fake kubelet gone the deleted pod stays Terminating, as a real kubelet keeps it through the
    # grace period while the container stops. The fake kubelet would remove it within 0.3 s, and on a loaded
    # machine that came before the daemon's listing: the app then had no pod at all ("unknown", not announced).
    await client.AppsV1Api(k8s_api).patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    # The controller manager deletes the pod: beside a loaded run's other tests that once took over 20 s.
    unhealthy = await next_message(ws, "health_change", timeout=60,
                                   where=lambda m: m["data"]["status"] == "unhealthy")
    assert unhealthy["data"]["appId"] == APP_ID and unhealthy["data"]["message"] == "Container stopped"
    await ws.close()


async def test_runtime_calls_directly(k8s_client, k8s_api, k8s_cluster):
    """What handlers rely on, called as plain functions: ping, get of a stopped workload, 404s."""
    runtime = k8s_client.app[RUNTIMES].pick("kubernetes")
    assert (await runtime.ping())["version"] == "v1.20.2"
    assert runtime.validate_ref(Ref("x")) == Ref("x", "default")
    with pytest.raises(ApiError) as exc:
        await runtime.get(Ref("nothing", "team-a"))
    assert exc.value.code == "CONTAINER_NOT_FOUND"


async def _is(value, expected) -> bool:
    return value == expected


def test_a_docker_only_daemon_never_loads_kubernetes_asyncio(tmp_path):
    code = (
        "import sys, asyncio\n"
        "from nekzusd import config\n"
        "from nekzusd.app import create_app\n"
        "from nekzusd.runtimes import Runtimes\n"
        f"c = config.parse({{'state_dir': {str(tmp_path)!r}}}, env={{}})\n"
        "create_app(c)\n"
        "async def main():\n"
        "    r = Runtimes(c.runtimes); await r.open(); await r.close()\n"
        "asyncio.run(main())\n"
        "assert 'kubernetes_asyncio' not in sys.modules, 'loaded'\n"
        "assert 'nekzusd.runtimes.kubernetes' not in sys.modules\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


async def test_stop_and_start_a_statefulset(k8s_client, k8s_api, k8s_cluster):
    from kubernetes_asyncio import client

    doc = deployment("db", 2)
    doc.update(kind="StatefulSet")
    doc["spec"]["serviceName"] = "db"
    await client.AppsV1Api(k8s_api).create_namespaced_stateful_set("team-a", doc)
    async with k8s_cluster.fake_kubelet(namespaces=("team-a",)):
        assert await running_pods(k8s_api, "team-a", "db", 2) == ["db-0", "db-1"]
        ws = await ws_connect(k8s_client)
        assert (await k8s_client.post("/api/v1/containers/team-a/db-1/stop?timeout=2")).status == 202
        await next_message(ws, "container.stop.completed", timeout=40)
        assert await pods_of(k8s_api, "team-a", "db") == []
        rows = await (await k8s_client.get(f"/api/v1/containers?{K8S}&namespace=team-a")).json()
        assert [(r["id"], r["state"]) for r in rows] == [("db", "stopped")]
        details = await (await k8s_client.get("/api/v1/containers/team-a/db")).json()
        assert details["owner"] == {"kind": "StatefulSet", "name": "db"} and details["replicasBeforeStop"] == 2
        assert (await k8s_client.post("/api/v1/containers/team-a/db/start")).status == 202
        await next_message(ws, "container.start.completed", timeout=40)
        assert await running_pods(k8s_api, "team-a", "db", 2, timeout=10) == ["db-0", "db-1"]
        await ws.close()


def test_quantities_and_selectors():
    from nekzusd.runtimes.k8s_objects import parse_quantity, selector_string

    assert parse_quantity("250m") == 0.25 and parse_quantity("137581447n") == pytest.approx(0.137581447)
    assert parse_quantity("64Mi") == 64 * 2 ** 20 and parse_quantity("1G") == 1e9 and parse_quantity("1e3") == 1000
    assert parse_quantity("2") == 2 and parse_quantity(None) == 0
    with pytest.raises(ValueError):
        parse_quantity("12 apples")
    assert selector_string({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]}, {"key": "legacy", "operator": "DoesNotExist"}]}) \
        == "a=1,b=2,tier in (web,api),!legacy"


async def test_a_batch_refuses_a_pod_without_an_owner_like_a_single_operation(k8s_client, k8s_api, k8s_cluster):
    """One path of preconditions: the batch's failed result carries the single 409's message, decided before
    the engine is called, so no operation runs or is announced."""
    await _create(k8s_api, "team-a", bare_pod("loner", k8s_cluster.info.node_name))
    await k8s_cluster.mark_pods_running("team-a")
    for action in ("stop", "restart"):
        single = await k8s_client.post(f"/api/v1/containers/team-a/loner/{action}")
        refused = await single.json()
        assert single.status == 409 and refused["error"] == "POD_NOT_SCALABLE", refused
        resp = await k8s_client.post(f"/api/v1/containers/batch?{K8S}&namespace=team-a",
                                     json={"action": action, "containerIds": ["loner"], "timeout": 5})
        body = await resp.json()
        assert resp.status == 200 and body["results"] == [
            {"id": "loner", "name": "loner", "success": False, "error": refused["message"]}], body
    operations = k8s_client.app[OPERATIONS]
    assert list(operations.recent) == [] and operations.in_flight == 0  # nothing ran, nothing to announce


async def test_pause_is_not_supported_by_kubernetes(k8s_client, k8s_api, k8s_cluster):
    """501 ACTION_NOT_SUPPORTED before any lookup, for one pod, for pause-all and for a batch."""
    await _create(k8s_api, "default", deployment("web", 1))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pod = (await running_pods(k8s_api, "default", "web", 1))[0]
    for method_path, body in ((f"/api/v1/containers/default/{pod}/pause", None),
                              (f"/api/v1/containers/default/{pod}/unpause", None),
                              (f"/api/v1/containers/pause-all?{K8S}", None),
                              (f"/api/v1/containers/batch?{K8S}&namespace=default",
                               {"action": "unpause", "containerIds": [pod]})):
        resp = await k8s_client.post(method_path, json=body)
        answer = await resp.json()
        assert resp.status == 501 and answer["error"] == "ACTION_NOT_SUPPORTED", (method_path, answer)
        assert answer["details"]["runtime"] == "kubernetes"
    assert list(k8s_client.app[OPERATIONS].recent) == []
