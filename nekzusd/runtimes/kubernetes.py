"""Kubernetes through kubernetes-asyncio: pods as containers, their Deployment/StatefulSet as the thing
that is stopped, started and restarted (docs/kubernetes.md).

kubernetes-asyncio supplies the configuration (kubeconfig or in-cluster service account, token refresh)
and the HTTP session (TLS context, connection pool); requests are sent on that session directly (see
``_Transport``) and answers read as plain JSON with orjson, which is much cheaper than its generated models
and keeps the field names of the Kubernetes documentation. Imported only when the runtime is enabled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import yaml
import yarl
from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import incluster_config
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

from ..config import KubernetesConfig
from ..errors import ApiError, ContainerNotFound, ContainerNotRunning, EngineError, RuntimeUnavailable
from . import k8s_objects as k8s
from .base import Container, Event, LogLine, Ref, Runtime
from .k8s_stats import PodStats
from .k8s_watch import pod_events
from .logparse import READ_SIZE, LogParser, line_time, stamp_seconds, stamped_lines

CALL_TIMEOUT = 15.0   # seconds for any single API call
POLL = 0.25           # seconds between looks while waiting for pods to come or go
START_WAIT = 25.0     # seconds start waits for the pods to run (inside the operation's deadline)
SETTLE_MARGIN = 25.0  # stop/restart wait the grace period plus this for the pods to go or roll
# How the kubelet ends a follow stream whose container went away (gRPC status text from dockershim), and
# the part of it that means "removed" (a deleted pod), which is the end of the log rather than a failure.
_RPC_ERROR = re.compile(r"rpc error: code = \w+ desc = .*\Z", re.S)
_RPC_START = "rpc error: code = "
_CONTAINER_GONE = re.compile(r"No such container|not found|is terminated", re.I)


class KubeError(EngineError):
    """A non-2xx answer of the API server, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message, status)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """What a Ref names: a pod (and its controlling owner), or a workload nekzusd scaled to 0."""

    pod: dict[str, Any] | None
    workload: k8s.Workload | None
    owner: dict[str, str] | None  # {"kind", "name"} of the pod's controller, whatever its kind

    @property
    def container(self) -> Container:
        if self.pod is not None:
            return k8s.container_from_pod(self.pod)
        assert self.workload is not None
        return k8s.container_from_workload(self.workload)


class KubernetesRuntime(Runtime):
    name = "kubernetes"
    # No pause or unpause: the Kubernetes API has no way to freeze a pod's processes.
    actions = frozenset({"start", "stop", "restart"})

    def __init__(self, config: KubernetesConfig) -> None:
        self.config = config
        self.namespaces = tuple(config.namespaces) or ("default",)
        self._api: ApiClient | None = None
        self._transport: _Transport | None = None
        self._connect_lock = asyncio.Lock()
        self.pod_stats = PodStats(config.stats, self._response)
        self.samplers = self.pod_stats.samplers  # the same name as Docker's, for whoever counts live samplers

    # ------------------------------------------------------------------------------- connection
    async def open(self) -> None:
        try:
            await self._client()
        except RuntimeUnavailable:
            pass  # the daemon starts anyway; every call retries and says why it cannot

    async def close(self) -> None:
        await self.pod_stats.close()
        if self._api is not None:
            await self._api.close()
            self._api = None
            self._transport = None

    async def _client(self) -> ApiClient:
        if self._api is not None:
            return self._api
        async with self._connect_lock:
            if self._api is None:
                configuration = Configuration()
                try:
                    if self.config.kubeconfig:
                        path = os.path.expanduser(self.config.kubeconfig)
                        data = await asyncio.to_thread(_read_yaml, path)
                        loader = KubeConfigLoader(data, config_base_path=os.path.dirname(os.path.abspath(path)))
                        await loader.load_and_set(configuration)
                    else:
                        await asyncio.to_thread(incluster_config.load_incluster_config, configuration)
                except Exception as exc:  # a missing file, bad YAML, no service account: all "not available"
                    source = self.config.kubeconfig or "in-cluster service account"
                    raise RuntimeUnavailable(self.name, f"cannot load {source}: {exc}") from None
                api = ApiClient(configuration)
                self._transport = await _Transport.of(api)
                self._api = api
        return self._api

    @asynccontextmanager
    async def _response(self, method: str, path: str, *, query: list[tuple[str, Any]] | None = None,
                        body: Any = None, content_type: str = "application/json",
                        timeout: float | None = CALL_TIMEOUT) -> AsyncIterator[aiohttp.ClientResponse]:
        """One API call; non-2xx answers become KubeError, unreachable servers RuntimeUnavailable.
        ``timeout`` bounds the call up to the response headers (streams then read without a deadline).

        The request is sent on kubernetes-asyncio's own session and connector (its TLS context from the
        kubeconfig or service account) with the headers its ``call_api`` would send, the token asked of
        the configuration each time (its refresh hook renews an in-cluster token); what ``call_api``
        adds per request (serialising parameters through its model machinery, two thread-pool hops in
        aiohttp for the environment's proxy and ~/.netrc) is done once, in ``_Transport.of``."""
        api = await self._client()
        transport = self._transport
        assert transport is not None
        headers = {**api.default_headers, "Accept": "application/json", "Content-Type": content_type}
        auth = (await api.configuration.auth_settings()).get("BearerToken")
        if auth:
            headers[auth["key"]] = auth["value"]
        url = transport.host + path
        if query:
            url += "?" + urlencode(query)
        data = orjson.dumps(body) if body is not None and method not in ("GET", "HEAD") else None
        try:
            async with asyncio.timeout(timeout):
                response = await transport.session.request(
                    method, url, headers=headers, data=data, timeout=_NO_TIMEOUT,
                    auth=None if auth else transport.netrc_auth, **transport.options)
        except TimeoutError:
            raise RuntimeUnavailable(self.name, f"{method} {path}: no answer within {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable(self.name, f"{method} {path}: {exc}") from None
        try:
            if not 200 <= response.status < 300:
                raise await _kube_error(response)
            yield response
        finally:
            response.release()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._response(method, path, **kwargs) as response:
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    raw = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise RuntimeUnavailable(self.name, f"{method} {path}: answer broke off: {exc!r}") from None
        return orjson.loads(raw) if raw else None

    async def _optional(self, path: str) -> Any:
        """A GET whose 404 is an answer (None), not an error."""
        try:
            return await self._json("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def ping(self) -> dict[str, Any]:
        version = await self._json("GET", "/version", timeout=5)
        return {"version": version.get("gitVersion", ""), "apiVersion": "v1"}

    # ------------------------------------------------------------------------------- names
    def _namespace(self, namespace: str | None) -> str:
        if not namespace:
            return self.namespaces[0]
        if namespace not in self.namespaces:
            raise ApiError(403, "NAMESPACE_NOT_ALLOWED",
                           f"Namespace {namespace[:63]!r} is not one nekzusd is configured for "
                           f"(runtimes.kubernetes.namespaces: {', '.join(self.namespaces)})",
                           {"namespace": namespace[:253], "allowed": list(self.namespaces)})
        return namespace

    def list_scope(self, namespace: str) -> str:
        return self._namespace(namespace) if namespace else ""  # NAMESPACE_NOT_ALLOWED before any call

    def validate_ref(self, ref: Ref) -> Ref:
        if len(ref.id) > 253 or not k8s.DNS_SUBDOMAIN_RE.fullmatch(ref.id):
            raise ApiError(400, "INVALID_CONTAINER_ID",
                           "Container ID must be a Kubernetes pod name (lower-case DNS subdomain: "
                           "[a-z0-9]([-a-z0-9]*[a-z0-9])? parts joined by dots, at most 253 characters)",
                           {"containerId": ref.id[:253]})
        return Ref(ref.id, self._namespace(ref.namespace))

    # ------------------------------------------------------------------------------- reading
    async def list_containers(self, namespace: str | None = None) -> list[Container]:
        namespaces = [self._namespace(namespace)] if namespace else list(self.namespaces)
        per_namespace = await asyncio.gather(*(self._list_namespace(ns) for ns in namespaces))
        return [c for rows in per_namespace for c in rows]

    async def _list_namespace(self, namespace: str) -> list[Container]:
        try:
            pods, deployments, statefulsets = await asyncio.gather(
                self._json("GET", f"/api/v1/namespaces/{namespace}/pods"),
                self._json("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments"),
                self._json("GET", f"/apis/apps/v1/namespaces/{namespace}/statefulsets"))
        except KubeError as exc:
            raise EngineError(f"namespace {namespace}: {exc}", exc.status) from None
        rows = [k8s.container_from_pod(pod) for pod in pods["items"]]
        for kind, found in (("Deployment", deployments), ("StatefulSet", statefulsets)):
            for doc in found["items"]:
                doc["metadata"].setdefault("namespace", namespace)
                workload = k8s.Workload(kind, doc)
                if workload.replicas_before_stop is not None:
                    rows.append(k8s.container_from_workload(workload))
        return rows

    async def _pod(self, ref: Ref) -> dict[str, Any] | None:
        return await self._optional(f"/api/v1/namespaces/{ref.namespace}/pods/{ref.id}")

    async def _workload(self, kind: str, namespace: str, name: str) -> k8s.Workload | None:
        doc = await self._optional(f"/apis/apps/v1/namespaces/{namespace}/{k8s.WORKLOAD_KINDS[kind]}/{name}")
        return None if doc is None else k8s.Workload(kind, doc)

    async def _resolve(self, ref: Ref) -> Target:
        """The pod of that name with its owner, else a stopped workload of that name, else 404."""
        pod = await self._pod(ref)
        if pod is not None:
            owner = _controller(pod["metadata"])
            if owner is None:
                return Target(pod, None, None)
            kind, name = owner["kind"], owner["name"]
            if kind == "ReplicaSet":  # a Deployment's pods belong to its ReplicaSet of the moment
                replica_set = await self._optional(f"/apis/apps/v1/namespaces/{ref.namespace}/replicasets/{name}")
                parent = _controller(replica_set["metadata"]) if replica_set else None
                if parent is not None and parent["kind"] == "Deployment":
                    kind, name = "Deployment", parent["name"]
            workload = await self._workload(kind, ref.namespace, name) if kind in k8s.WORKLOAD_KINDS else None
            return Target(pod, workload, {"kind": kind, "name": name})
        for kind in k8s.WORKLOAD_KINDS:
            workload = await self._workload(kind, ref.namespace, ref.id)
            if workload is not None and workload.replicas_before_stop is not None:
                return Target(None, workload, {"kind": kind, "name": workload.name})
        raise ContainerNotFound(ref.id)

    async def get(self, ref: Ref) -> Container:
        return (await self._resolve(ref)).container

    async def inspect(self, ref: Ref) -> dict[str, Any]:
        target = await self._resolve(ref)
        if target.pod is None:
            assert target.workload is not None
            return k8s.workload_details(target.workload)
        return k8s.pod_details(target.pod, target.owner)

    # ------------------------------------------------------------------------------- lifecycle
    async def check_operation(self, container: Container, action: str) -> None:
        """The refusals that must come before the 202: no workload to act on (409), a workload that
        already runs (409), and rights nekzusd's account lacks (RBAC)."""
        target = await self._resolve(Ref(container.id, container.namespace))
        workload = target.workload
        if action == "restart" and workload is None:
            if target.owner is None or target.owner["kind"] == "Job":
                raise _not_recreated(container, target.owner)
            await self._require("delete", "", "pods", container.namespace, container.id)
            return
        if workload is None:
            raise _not_scalable(container, target.owner)
        if action == "start" and workload.replicas > 0:
            raise ApiError(409, "CONTAINER_ALREADY_STARTED",
                           f"{workload.describe()} already runs {workload.replicas} replica(s); "
                           f"pod {container.id} is {container.state}",
                           {"containerId": container.id, "state": container.state})
        await self._require("patch", "apps", k8s.WORKLOAD_KINDS[workload.kind], workload.namespace, workload.name)

    async def _require(self, verb: str, group: str, resource: str, namespace: str, name: str) -> None:
        """Ask the API server whether nekzusd may do this, so that a missing RBAC right is said clearly
        before anything changes. An unanswerable review lets the operation itself report."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                                  "namespace": namespace, "name": name}}}
        try:
            answer = await self._json("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                      body=review)
        except KubeError:
            return
        if not (answer.get("status") or {}).get("allowed"):
            full = f"{resource}.{group}" if group else resource
            raise EngineError(f"Kubernetes RBAC does not allow nekzusd to {verb} {full} in namespace "
                              f"{namespace} (needed for {name}); grant the role in docs/kubernetes.md", 403)

    async def _target_workload(self, ref: Ref) -> tuple[Target, k8s.Workload]:
        target = await self._resolve(ref)
        if target.workload is None:
            raise _not_scalable(target.container, target.owner)
        return target, target.workload

    async def _change(self, workload: k8s.Workload,
                      decide: Callable[[k8s.Workload], dict[str, Any] | None]) -> k8s.Workload:
        """Apply the merge patch ``decide`` asks for, guarded by the resourceVersion it was decided on.
        When someone changed the workload meanwhile (409, e.g. stop-all stopping two pods of one
        Deployment), decide again on the fresh object: None then means "nothing left to do"."""
        for _attempt in range(5):
            patch = decide(workload)
            if patch is None:
                return workload
            patch.setdefault("metadata", {})["resourceVersion"] = workload.doc["metadata"]["resourceVersion"]
            try:
                doc = await self._json("PATCH", workload.path, body=patch,
                                       content_type="application/merge-patch+json")
                return k8s.Workload(workload.kind, doc)
            except KubeError as exc:
                if exc.status != 409:
                    raise
            fresh = await self._workload(workload.kind, workload.namespace, workload.name)
            if fresh is None:
                raise EngineError(f"{workload.describe()} was deleted", 404)
            workload = fresh
        raise EngineError(f"{workload.describe()} kept changing under nekzusd; try again", 409)

    async def stop(self, ref: Ref, timeout: int) -> None:
        """Scale the owner to 0, keeping its replica count, and return once its pods are gone."""
        _target, workload = await self._target_workload(ref)
        workload = await self._change(workload, lambda w: None if w.replicas == 0 else {
            "metadata": {"annotations": {k8s.REPLICAS_ANNOTATION: str(w.replicas)}}, "spec": {"replicas": 0}})
        await self._wait(lambda: self._pods_gone(workload, timeout), timeout + SETTLE_MARGIN,
                         f"pods of {workload.describe()} to terminate")

    async def start(self, ref: Ref) -> None:
        """Scale the owner back to the count stop kept, and return once that many pods run."""
        _target, workload = await self._target_workload(ref)
        await self._scale_up(workload)

    async def _scale_up(self, workload: k8s.Workload) -> None:
        workload = await self._change(workload, lambda w: None if w.replicas > 0 else {
            "metadata": {"annotations": {k8s.REPLICAS_ANNOTATION: None}},
            "spec": {"replicas": w.replicas_before_stop or 1}})
        replicas = workload.replicas
        await self._wait(lambda: self._pods_running(workload, replicas), START_WAIT,
                         f"{replicas} running pod(s) of {workload.describe()} (it may still come up)")

    async def restart(self, ref: Ref, timeout: int) -> None:
        """Roll the owner like `kubectl rollout restart`; a pod of another recreating owner (ReplicaSet,
        DaemonSet) is deleted instead. A workload nekzusd stopped is simply started."""
        target = await self._resolve(ref)
        workload = target.workload
        if workload is None:
            if target.pod is None or target.owner is None or target.owner["kind"] == "Job":
                raise _not_recreated(target.container, target.owner)
            await self._delete_pod(target.pod, timeout)
            await self._wait(lambda: self._pod_replaced(target.pod), timeout + SETTLE_MARGIN,
                             f"pod {ref.id} to be replaced")
            return
        if workload.replicas_before_stop is not None:
            await self._scale_up(workload)
            return
        asked = time.time()

        def roll(w: k8s.Workload) -> dict[str, Any] | None:
            annotations = (w.template.get("metadata") or {}).get("annotations") or {}
            if (k8s.parse_time(annotations.get(k8s.RESTARTED_AT_ANNOTATION)) or 0) >= asked - 1:
                return None  # a concurrent restart (restart-all on two pods of one owner) rolls it already
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return {"spec": {"template": {"metadata": {"annotations": {k8s.RESTARTED_AT_ANNOTATION: stamp}}}}}

        workload = await self._change(workload, roll)
        await self._wait(lambda: self._rolled_out(workload, timeout), timeout + SETTLE_MARGIN,
                         f"the rollout of {workload.describe()}")

    async def _wait(self, done: Any, limit: float, what: str) -> None:
        try:
            async with asyncio.timeout(limit):
                while not await done():
                    await asyncio.sleep(POLL)
        except TimeoutError:
            raise EngineError(f"gave up waiting for {what} after {limit:g} s") from None

    async def _pods_of(self, workload: k8s.Workload) -> list[dict[str, Any]]:
        found = await self._json("GET", f"/api/v1/namespaces/{workload.namespace}/pods",
                                 query=[("labelSelector", workload.selector)])
        return found["items"]

    async def _pods_gone(self, workload: k8s.Workload, grace: int) -> bool:
        pods = await self._pods_of(workload)
        await self._shorten_grace(pods, grace)
        return not pods

    async def _shorten_grace(self, pods: list[dict[str, Any]], grace: int) -> None:
        """Pods a controller is deleting with a longer grace period than the operation's timeout get
        theirs shortened to it (their kubelet then finishes them); nekzusd never force-deletes."""
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and (meta.get("deletionGracePeriodSeconds") or 0) > grace:
                await self._delete_pod(pod, grace)

    async def _delete_pod(self, pod: dict[str, Any], grace: int) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": grace,
                "preconditions": {"uid": meta["uid"]}}
        try:
            await self._json("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body=body)
        except KubeError as exc:
            if exc.status not in (404, 409):  # gone already, or already a newer pod of that name
                raise

    async def _pods_running(self, workload: k8s.Workload, replicas: int) -> bool:
        pods = await self._pods_of(workload)
        running = [p for p in pods if k8s.pod_state(p) == "running"]
        return len(running) >= replicas

    async def _pod_replaced(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        now = await self._optional(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
        return now is None or now["metadata"]["uid"] != meta["uid"]

    async def _rolled_out(self, workload: k8s.Workload, grace: int) -> bool:
        """`kubectl rollout status`'s test; meanwhile old pods being deleted get the restart's grace."""
        current = await self._workload(workload.kind, workload.namespace, workload.name)
        if current is None:
            raise EngineError(f"{workload.describe()} was deleted during the restart", 404)
        status, replicas = current.doc.get("status") or {}, current.replicas
        if (status.get("observedGeneration") or 0) < current.doc["metadata"].get("generation", 0):
            return False
        if workload.kind == "Deployment":
            done = all((status.get(key) or 0) == replicas
                       for key in ("updatedReplicas", "replicas", "availableReplicas"))
        else:
            done = ((status.get("readyReplicas") or 0) == replicas
                    and status.get("updateRevision") == status.get("currentRevision"))
        if not done:
            await self._shorten_grace(await self._pods_of(current), grace)
        return done

    # ------------------------------------------------------------------------------- stats and logs
    async def stats(self, ref: Ref) -> dict[str, Any]:
        """From the pod's live sampler (runtimes/k8s_stats.py: metrics API or kubelet summary)."""
        hit = self.pod_stats.cached(ref)
        if hit is not None:
            return hit
        pod = await self._pod(ref)
        if pod is None:
            raise ContainerNotFound(ref.id)
        container = k8s.container_from_pod(pod)
        if not container.running:
            raise ContainerNotRunning(ref.id, f"Pod {ref.id} is {container.state}, not running", container.state)
        return await self.pod_stats.get(pod)

    async def logs(self, ref: Ref, *, tail: int, follow: bool, timestamps: bool, since: float | None = None,
                   until: float | None = None, container: str = "",
                   opened: Callable[[], None] | None = None) -> AsyncGenerator[LogLine, None]:
        """The log of one container of the pod (``container``; may be left out when the pod has one), as
        the API server relays it from the node's kubelet. A follow stream ends when that container stops
        (exits, is restarted, or its pod is deleted), or at ``until``.

        The kubelet merges stdout and stderr into one text stream, so every line is "stdout". When the container
        goes away under a follow stream the kubelet may end the body with its own words, ``rpc error: code = …
        desc = …``, which are not a log line. With timestamps (asked when wanted, or for a window, whose bounds
        the API has only in whole seconds and without an end) every log entry starts with its stamp: a long
        line the engine stored in pieces is joined back under its first stamp, and the kubelet's words are the
        unstamped text. Without, the stream is a third of the bytes for short lines, and a line that reads
        like those words is held back until the log goes on: at the end of a follow body it was the kubelet's."""

        pod = await self._pod(ref)
        if pod is None:
            raise ContainerNotFound(ref.id)
        name = _log_container(pod, container)
        query = [("container", name), ("tailLines", str(tail)), ("follow", "true" if follow else "false"),
                 ("timestamps", "true" if timestamps or since is not None or until is not None else "false")]
        if since is not None:
            query.append(("sinceTime", datetime.fromtimestamp(int(since), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
        path = f"/api/v1/namespaces/{ref.namespace}/pods/{ref.id}/log"
        windowed = since is not None or until is not None
        stamped = timestamps or windowed
        parser = LogParser(multiplexed=False, stamped=stamped)
        held: tuple[str, str] | None = None  # unstamped: a line like the kubelet's last words, out if the log goes on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CALL_TIMEOUT if not follow else (
            None if until is None else loop.time() + until - time.time())
        async with AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(self._response("GET", path, query=query))
            except KubeError as exc:
                raise _log_error(exc, ref, name) from None
            if opened is not None:
                opened()
            last_words = ""
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await response.content.read(READ_SIZE)
                except TimeoutError:
                    if not follow:
                        raise RuntimeUnavailable(self.name, f"log of {ref.id}/{name}: no answer within "
                                                            f"{CALL_TIMEOUT:g} s") from None
                    chunk = b""  # until has come
                except aiohttp.ClientError as exc:
                    raise RuntimeUnavailable(self.name, f"log stream broke: {exc!r}") from None
                pairs = parser.feed(chunk) if chunk else parser.flush()
                lines = []
                for stream, message in pairs:
                    if stamped and line_time(message) is None:  # not a log entry: what the kubelet said on ending
                        last_words = message
                        continue
                    if not chunk and (cut := _RPC_ERROR.search(message)):  # said right after an unfinished line
                        last_words, message = message[cut.start():], message[:cut.start()]
                        if not message:
                            continue
                    if windowed:  # reading every stamp halves the throughput: only when asked
                        moment = stamp_seconds(message)
                        if moment is not None and since is not None and moment < since:
                            continue
                        if moment is not None and until is not None and moment > until:
                            chunk = b""  # one stream, in time order: nothing later is wanted
                            break
                    lines.append((stream, message))
                if follow and not stamped:
                    if held is not None and lines:
                        lines.insert(0, held)
                        held = None
                    if lines and lines[-1][1].startswith(_RPC_START):
                        held = lines.pop()
                for line in stamped_lines(lines, timestamps) if stamped else (LogLine(s, m) for s, m in lines):
                    yield line
                if not chunk:
                    break
        if held is not None:
            last_words = held[1]
        if last_words and not _CONTAINER_GONE.search(last_words):
            raise EngineError(f"the kubelet ended the log of {ref.id}/{name}: {last_words[:300]}")

    def events(self) -> AsyncGenerator[Event, None]:
        """Pod changes in every configured namespace (runtimes/k8s_watch.py)."""
        return pod_events(self._response, self.namespaces, self.name)


_NO_TIMEOUT = aiohttp.ClientTimeout()  # what kubernetes-asyncio passes: deadlines are ours (asyncio.timeout)


@dataclass(frozen=True)
class _Transport:
    """kubernetes-asyncio's HTTP session, with what it looked up on every request looked up once.

    Its session has ``trust_env=True``, so aiohttp, on each request, reads the proxy variables
    (HTTPS_PROXY, NO_PROXY, ...) in one thread-pool hop and ~/.netrc in another; a listing's three
    calls cost six hops. The environment of a running daemon does not change: the proxy (when the
    kubeconfig names none: its ``proxy-url`` wins, as in kubernetes-asyncio) and the netrc login for the
    API server's host are resolved here once, and the session is replaced by one on the same connector
    that does not look again."""

    session: aiohttp.ClientSession
    host: str                           # the API server's URL, without a trailing path
    options: dict[str, Any]             # proxy, proxy_auth, proxy_headers, server_hostname
    netrc_auth: aiohttp.BasicAuth | None  # sent only when there is no bearer token (aiohttp refuses both)

    @classmethod
    async def of(cls, api: ApiClient) -> _Transport:
        rest = api.rest_client
        host = api.configuration.host or ""
        options, netrc_auth = await asyncio.to_thread(_environment, yarl.URL(host), rest.proxy)
        if rest.proxy_headers:
            options["proxy_headers"] = rest.proxy_headers
        if rest.server_hostname:
            options["server_hostname"] = rest.server_hostname
        old = rest.pool_manager
        # Same connector (TLS context, pool limit), same read buffer for large watch events; no trust_env.
        session = aiohttp.ClientSession(connector=old.connector, read_bufsize=2**21)
        old.detach()
        rest.pool_manager = session  # so that ApiClient.close() still closes it
        return cls(session, host, options, netrc_auth)


def _environment(host: yarl.URL, proxy: str | None) -> tuple[dict[str, Any], aiohttp.BasicAuth | None]:
    """The proxy options and netrc login aiohttp's ``trust_env`` would find for the API server (blocking:
    reads ~/.netrc). A kubeconfig ``proxy-url`` is used as is, without looking at the environment."""
    options: dict[str, Any] = {}
    if proxy:
        options["proxy"] = proxy
    else:
        try:
            options["proxy"], options["proxy_auth"] = get_env_proxy_for_url(host)
        except LookupError:
            pass
    netrc_auth = None
    netrc = netrc_from_env()
    if netrc is not None and host.host is not None:
        try:
            netrc_auth = basicauth_from_netrc(netrc, host.host)
        except LookupError:
            pass
    return options, netrc_auth


def _read_yaml(path: str) -> Any:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _controller(meta: dict[str, Any]) -> dict[str, str] | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return {"kind": ref["kind"], "name": ref["name"]}
    return None


def _not_scalable(container: Container, owner: dict[str, str] | None) -> ApiError:
    if owner is None:
        why = "it has no owner: nekzusd stops and starts pods by scaling their Deployment or StatefulSet, " \
              "and deleting a bare pod would lose it for good"
    else:
        why = f"its owner is {owner['kind']} {owner['name']}, which nekzusd cannot scale to 0 " \
              "(only a Deployment or StatefulSet)"
    return ApiError(409, "POD_NOT_SCALABLE", f"Pod {container.id} cannot be stopped or started: {why}",
                    {"containerId": container.id, "namespace": container.namespace, "owner": owner})


def _not_recreated(container: Container, owner: dict[str, str] | None) -> ApiError:
    what = "it has no owner" if owner is None else f"its owner is {owner['kind']} {owner['name']}"
    return ApiError(409, "POD_NOT_SCALABLE",
                    f"Pod {container.id} cannot be restarted: {what}, so nothing would recreate it",
                    {"containerId": container.id, "namespace": container.namespace, "owner": owner})


async def _kube_error(response: aiohttp.ClientResponse) -> KubeError:
    """The Status object's reason and message (or the plain text some endpoints answer)."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            text = (await response.read()).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        text = ""
    try:
        status = json.loads(text)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return KubeError(response.status, status.get("reason", ""), status.get("message", text))
    return KubeError(response.status, "", f"HTTP {response.status}: {text.strip()[:300]}")


def _log_container(pod: dict[str, Any], asked: str) -> str:
    """The container whose log is read: the one asked (a container or init container of the pod), else the
    pod's only container; a pod with several needs one named, and both errors list the choices."""
    spec = pod.get("spec") or {}
    names = [c.get("name", "") for c in spec.get("containers") or []]
    choices = names + [c.get("name", "") for c in spec.get("initContainers") or []]
    pod_name = pod["metadata"]["name"]
    details = {"pod": pod_name, "containers": names}
    if asked:
        if asked in choices:
            return asked
        raise ApiError(404, "POD_CONTAINER_NOT_FOUND",
                       f"Pod {pod_name} has no container {asked[:63]!r}; its containers: {', '.join(choices)}",
                       {**details, "container": asked[:63], "initContainers": choices[len(names):]})
    if len(names) == 1:
        return names[0]
    raise ApiError(400, "POD_CONTAINER_REQUIRED",
                   f"Pod {pod_name} has {len(names)} containers ({', '.join(names)}): "
                   "name the one whose log you want with \"container\"", details)


def _log_error(exc: KubeError, ref: Ref, container: str) -> Exception:
    """What the API server's refusal to open a log means for the caller."""
    if exc.status == 404:
        return ContainerNotFound(ref.id)
    if exc.status == 400 and ("waiting to start" in str(exc) or "is not running" in str(exc)):
        # e.g. "container \"main\" in pod \"web\" is waiting to start: ContainerCreating"
        return ContainerNotRunning(ref.id, f"Pod {ref.id}: {exc}", "pending")
    return EngineError(f"Kubernetes could not read the log of {ref.id}/{container} (from the node's kubelet): "
                       f"{exc}", exc.status)
