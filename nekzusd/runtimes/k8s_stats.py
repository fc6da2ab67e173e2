"""Pod statistics of the Kubernetes runtime, from whichever source the cluster has (docs/kubernetes.md#stats).

Both sources give Docker's stats object (nekzusd/stats.py) through the same shared samplers, one per pod
whoever asks:

- ``metrics``: the metrics API (metrics.k8s.io, served by metrics-server). It gives a CPU rate that
  metrics-server already measured between its own two readings, and the memory working set; no network.
- ``kubelet``: the kubelet's summary (``/stats/summary``) read through the API server's node proxy, which
  needs ``get`` on ``nodes/proxy``. It gives cumulative CPU time, the working set and network counters of
  every pod of the node, so CPU comes from two readings as for Docker. One summary a node serves every
  pod sampler of that node for ``SUMMARY_TTL`` seconds: a batch over 50 pods costs one call per node.

``stats: auto`` asks the API server once whether it serves the metrics API (discovery, again every
``RECHECK`` seconds) and then uses it, falling back to the kubelet for a pod metrics-server has not
sampled yet; a cluster without it uses the kubelet. Nothing is probed per request. When no source
answers, the caller gets ``MetricsUnavailable`` (503) naming each source tried and what would fix it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from ..errors import ContainerNotRunning, EngineError, MetricsUnavailable, RuntimeUnavailable
from ..stats import Sample, Samplers
from . import k8s_objects as k8s
from .answers import read_bounded
from .base import Ref

MODES = ("auto", "metrics", "kubelet")
CALL_TIMEOUT = 5.0     # seconds for one statistics call (three fit in the sampler's first-sample wait)
KUBELET_POLL = 2.0     # seconds between a pod sampler's readings of its node's summary
SUMMARY_TTL = 2.0      # seconds one node summary answers every sampler of that node
METRICS_POLL = 10.0    # seconds between PodMetrics readings (metrics-server itself samples every 15-60 s)
FIRST_WAIT = 8.0       # seconds a new pod may be missing from its kubelet's summary before that is an answer
RECHECK = 300.0        # auto: seconds before asking again whether the cluster serves the metrics API
MAX_ANSWER = 16 << 20  # bytes of one answer (a summary of a full node of 110 pods is well under 1 MiB)
SECOND_NS = 1_000_000_000

METRICS_GROUP = "/apis/metrics.k8s.io/v1beta1"
GRANT_PROXY = ("grant get on nodes/proxy to nekzusd's account (docs/kubernetes.md#stats), "
               "or install metrics-server")
REACH_KUBELET = ("check that the node's kubelet runs and the API server can reach it, "
                 "or install metrics-server")

Request = Callable[..., AbstractAsyncContextManager[aiohttp.ClientResponse]]


class SourceUnavailable(Exception):
    """One source cannot give a pod's figures: why, and what would fix it. ``absent`` means the source is
    missing from the whole cluster (not just for this pod), so ``auto`` stops asking it until RECHECK."""

    def __init__(self, reason: str, fix: str, absent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix
        self.absent = absent

    def as_json(self, source: str) -> dict[str, str]:
        return {"source": source, "reason": self.reason, "fix": self.fix}


@dataclass(frozen=True)
class Reading:
    """One pod's figures from a kubelet summary: cumulative CPU nanoseconds at ``time_ns``, the kubelet's
    own rate between its last two readings (``nano_cores``, None at first), working set, network bytes."""

    time_ns: int
    cpu_ns: int
    nano_cores: int | None
    working_set: int
    rx: int
    tx: int
    scope: str = "pod"  # "pod": the pod's own cgroup; "containers": its containers' figures summed


class PodStats:
    """The statistics source of one Kubernetes runtime and the samplers reading it."""

    def __init__(self, mode: str, request: Request, runtime: str = k8s.RUNTIME) -> None:
        self.mode = mode
        self._request = request
        self.samplers = Samplers(runtime)
        self._summaries: dict[str, tuple[float, asyncio.Task[Any]]] = {}
        self._metrics_served: bool | None = None
        self._checked_at = -math.inf
        self._check_lock = asyncio.Lock()
        self.discoveries = 0      # times auto asked whether the metrics API is served
        self.summary_calls = 0    # kubelet summaries fetched

    @staticmethod
    def _key(namespace: str, name: str) -> str:
        return f"{namespace}/{name}"

    def cached(self, ref: Ref) -> dict[str, Any] | None:
        """The latest stats of a live sampler of that pod, without any API call."""
        return self.samplers.cached(self._key(ref.namespace, ref.id))

    async def get(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Stats of a running pod, from its sampler (started now if none runs)."""
        meta = pod["metadata"]
        return await self.samplers.get(self._key(meta["namespace"], meta["name"]), lambda: self._samples(pod))

    async def close(self) -> None:
        await self.samplers.close()
        tasks = [task for _at, task in self._summaries.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._summaries.clear()

    # ------------------------------------------------------------------------------- choosing
    async def _samples(self, pod: dict[str, Any]) -> AsyncGenerator[Sample, None]:
        """The first source (in the configured order) that gives a first reading, then its readings."""
        meta = pod["metadata"]
        tried: list[dict[str, str]] = []
        for source in await self._order():
            readings = self._metrics(pod) if source == "metrics" else self._kubelet(pod)
            async with aclosing(readings):
                try:
                    first = await anext(readings)
                except SourceUnavailable as exc:
                    tried.append(exc.as_json(source))
                    if exc.absent and source == "metrics":
                        self._metrics_served, self._checked_at = False, time.monotonic()
                    continue
                yield first
                try:
                    async for sample in readings:
                        yield sample
                except SourceUnavailable as exc:  # gone meanwhile: the next request chooses again
                    raise MetricsUnavailable(meta["name"], meta["namespace"], [exc.as_json(source)]) from None
            return
        raise MetricsUnavailable(meta["name"], meta["namespace"], tried)

    async def _order(self) -> tuple[str, ...]:
        if self.mode != "auto":
            return (self.mode,)
        return ("metrics", "kubelet") if await self._metrics_api_served() else ("kubelet",)

    async def _metrics_api_served(self) -> bool:
        """Whether the API server serves metrics.k8s.io: asked once, then every RECHECK seconds."""
        if self._metrics_served is not None and time.monotonic() - self._checked_at < RECHECK:
            return self._metrics_served
        async with self._check_lock:
            if self._metrics_served is None or time.monotonic() - self._checked_at >= RECHECK:
                self.discoveries += 1
                try:
                    await self._get_json(METRICS_GROUP)
                    served = True
                except EngineError:  # 404: no such group; 503: registered, but metrics-server is down
                    served = False
                self._metrics_served, self._checked_at = served, time.monotonic()
        return bool(self._metrics_served)

    # ------------------------------------------------------------------------------- calls
    async def _get_json(self, path: str) -> Any:
        """One GET, its answer read up to MAX_ANSWER bytes within CALL_TIMEOUT. KubeError (an
        EngineError with ``status`` and ``reason``) for non-2xx answers, RuntimeUnavailable otherwise."""
        async with self._request("GET", path, timeout=CALL_TIMEOUT) as response:
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    body = await read_bounded(response, MAX_ANSWER, f"GET {path}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise RuntimeUnavailable(k8s.RUNTIME, f"GET {path}: answer broke off: {exc!r}") from None
        return json.loads(body)

    async def _limits(self, pod: dict[str, Any]) -> tuple[float, float]:
        """The cores and memory the pod may use: its containers' limits, else its node's allocatable
        resources (needs get on nodes; without it 0), asked once per sampler."""
        cores, memory = sum_limits(pod, "cpu"), sum_limits(pod, "memory")
        if cores is None or memory is None:
            node_name = (pod.get("spec") or {}).get("nodeName") or ""
            try:
                node = await self._get_json(f"/api/v1/nodes/{quote(node_name, safe='')}") if node_name else None
            except EngineError:
                node = None
            allocatable = ((node or {}).get("status") or {}).get("allocatable") or {}
            if cores is None:
                cores = k8s.parse_quantity(allocatable.get("cpu")) if allocatable.get("cpu") else 0.0
            if memory is None:
                memory = k8s.parse_quantity(allocatable.get("memory")) if allocatable.get("memory") else 0.0
        return cores, memory

    # ------------------------------------------------------------------------------- metrics API
    async def _metrics(self, pod: dict[str, Any]) -> AsyncGenerator[Sample, None]:
        meta = pod["metadata"]
        path = f"{METRICS_GROUP}/namespaces/{meta['namespace']}/pods/{meta['name']}"
        cores, memory = await self._limits(pod)
        while True:
            try:
                doc = await self._get_json(path)
            except EngineError as exc:
                raise _metrics_refusal(exc) from None
            yield metrics_sample(meta["name"], doc, cores, memory)
            await asyncio.sleep(METRICS_POLL)

    # ------------------------------------------------------------------------------- kubelet
    async def _kubelet(self, pod: dict[str, Any]) -> AsyncGenerator[Sample, None]:
        """Readings of the pod in its node's summary, each paired with the last one of an earlier time
        (the kubelet refreshes its figures every 10-15 s; between two, a summary repeats the last); the
        first is paired with the kubelet's own rate. Ends (ContainerNotRunning) when the pod leaves the
        summary: it stopped, or was deleted."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        node = spec.get("nodeName") or ""
        if not node:
            raise SourceUnavailable("the pod is not on a node yet", "ask again once it runs")
        cores, memory = await self._limits(pod)
        # A pod on the host's network has none of its own: the summary then shows the host's interfaces,
        # which are not the pod's traffic (as Docker shows none for --network host).
        own_network = not spec.get("hostNetwork")
        before: Reading | None = None
        current: Reading | None = None
        waiting_since = time.monotonic()
        while True:
            reading = pod_reading(await self._summary(node), meta["namespace"], meta["name"], meta.get("uid"))
            if reading is None:
                if current is not None:
                    raise ContainerNotRunning(meta["name"], f"Pod {meta['name']} is no longer on node {node}")
                if time.monotonic() - waiting_since > FIRST_WAIT:
                    raise SourceUnavailable(f"node {node}'s kubelet has no figures for this pod yet",
                                            "ask again in a few seconds")
            elif current is None or reading.scope != current.scope:
                before, current = None, reading  # two scopes' CPU times are not comparable: start again
            elif reading.time_ns > current.time_ns:
                before, current = current, reading
            if current is not None and (before is not None or current.nano_cores is not None):
                yield kubelet_sample(meta["name"], current, before, cores, memory, own_network)
            await asyncio.sleep(KUBELET_POLL)

    async def _summary(self, node: str) -> Any:
        """The node's summary, fetched at most once per SUMMARY_TTL whoever asks (the fetch is a task
        of its own, so a caller that leaves does not cancel it for the others)."""
        now = time.monotonic()
        entry = self._summaries.get(node)
        if entry is None or now - entry[0] > SUMMARY_TTL:
            for name, (at, old) in list(self._summaries.items()):
                if old.done() and now - at > SUMMARY_TTL:
                    del self._summaries[name]
            task = asyncio.create_task(self._fetch_summary(node), name=f"k8s-summary-{node}")
            task.add_done_callback(_retrieve)
            entry = self._summaries[node] = (now, task)
        return await asyncio.shield(entry[1])

    async def _fetch_summary(self, node: str) -> Any:
        self.summary_calls += 1
        try:
            return await self._get_json(f"/api/v1/nodes/{quote(node, safe='')}/proxy/stats/summary")
        except RuntimeUnavailable as exc:
            raise SourceUnavailable(f"no kubelet summary of node {node}: {exc.message}", REACH_KUBELET) from None
        except EngineError as exc:
            status = getattr(exc, "status", 500)
            if status in (401, 403):
                raise SourceUnavailable(f"the API server refused the kubelet summary of node {node} "
                                        f"(HTTP {status}): {exc}", GRANT_PROXY) from None
            raise SourceUnavailable(f"the API server could not read node {node}'s kubelet summary "
                                    f"(HTTP {status}): {str(exc)[:300]}", REACH_KUBELET) from None


def _metrics_refusal(exc: EngineError) -> SourceUnavailable:
    status, reason = exc.status, getattr(exc, "reason", "")
    if (status == 404 and reason != "NotFound") or status == 503:
        what = "not served by this cluster" if status == 404 else f"registered but not answering: {exc}"
        return SourceUnavailable(f"the metrics API (metrics.k8s.io) is {what}", "install metrics-server",
                                 absent=True)
    if status == 404:
        return SourceUnavailable("metrics-server has no figures for this pod yet (it samples every 15-60 s)",
                                 "ask again within a minute")
    if status in (401, 403):
        return SourceUnavailable(f"the metrics API refused (HTTP {status}): {exc}",
                                 "grant get on pods.metrics.k8s.io (docs/kubernetes.md#rbac-nekzusd-needs)")
    return SourceUnavailable(f"the metrics API failed (HTTP {status}): {str(exc)[:300]}", "see metrics-server's log")


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a summary fetch's failure as seen: its callers may all have left."""
    if not task.cancelled():
        task.exception()


# ------------------------------------------------------------------------------- pure mapping

def sum_limits(pod: dict[str, Any], resource: str) -> float | None:
    """The pod's limit of a resource: the sum of its containers' limits, or None when one has none."""
    total = 0.0
    for c in (pod.get("spec") or {}).get("containers") or []:
        limit = ((c.get("resources") or {}).get("limits") or {}).get(resource)
        if limit is None:
            return None
        total += k8s.parse_quantity(limit)
    return total


def metrics_sample(name: str, metrics: dict[str, Any], cores_limit: float, memory_limit: float) -> Sample:
    """A PodMetrics object as a Sample. metrics-server's CPU figure is already a rate between its own
    two readings; it is carried as the CPU time of one second against a previous reading one second
    earlier, the way dockerd's own previous reading is (``cpu_cores`` then gives exactly that rate)."""
    containers = metrics.get("containers") or []
    cores = sum(k8s.parse_quantity((c.get("usage") or {}).get("cpu")) for c in containers)
    used = sum(k8s.parse_quantity((c.get("usage") or {}).get("memory")) for c in containers)
    read = k8s.parse_time(metrics.get("timestamp")) or time.time()
    read_ns = int(read * SECOND_NS)
    return Sample(container_id=name, read=read, online_cpus=1,
                  cpu_total=round(cores * SECOND_NS), system_cpu=read_ns,
                  pre_cpu_total=0, pre_system_cpu=read_ns - SECOND_NS,
                  memory_usage=int(used), memory_limit=int(memory_limit), total_cores=cores_limit)


def pod_reading(summary: dict[str, Any], namespace: str, name: str, uid: str | None) -> Reading | None:
    """The pod's figures in a kubelet summary (/stats/summary), None when the summary lacks it.

    Pod-level cpu and memory exist when the kubelet runs with --cgroups-per-qos (the default); without
    them the containers' figures are summed, and so they are while the pod's own reading is still the one
    the kubelet took as its cgroup was made (all zero; measured: the next comes 10-20 s later). Network:
    summed over the pod's interfaces (for a pod on the host's network, those are the host's)."""
    for entry in summary.get("pods") or []:
        ref = entry.get("podRef") or {}
        if ref.get("namespace") != namespace or ref.get("name") != name or (uid and ref.get("uid") != uid):
            continue
        containers = entry.get("containers") or []
        cpu = entry.get("cpu") or {}
        scope = "pod" if cpu.get("usageCoreNanoSeconds") else "containers"
        if scope == "pod":
            cpu_ns = int(cpu["usageCoreNanoSeconds"])
            nano = cpu.get("usageNanoCores")
            stamp = cpu.get("time")
        else:
            parts = [c.get("cpu") or {} for c in containers]
            parts = [p for p in parts if p.get("usageCoreNanoSeconds") is not None]
            if not parts:
                return None
            cpu_ns = sum(int(p["usageCoreNanoSeconds"]) for p in parts)
            rates = [p.get("usageNanoCores") for p in parts]
            nano = None if None in rates else sum(int(r) for r in rates if r is not None)
            stamp = max((p.get("time") or "" for p in parts), default="")
        read = k8s.parse_time(stamp)
        if read is None:
            return None
        memory = entry.get("memory") or {}
        if scope == "pod" and memory.get("workingSetBytes") is not None:
            working_set = int(memory["workingSetBytes"])
        else:
            working_set = sum(int((c.get("memory") or {}).get("workingSetBytes") or 0) for c in containers)
        network = entry.get("network") or {}
        interfaces = network.get("interfaces") or ([network] if network.get("name") else [])
        return Reading(time_ns=_time_ns(str(stamp), read), cpu_ns=cpu_ns,
                       nano_cores=None if nano is None else int(nano), working_set=working_set,
                       rx=sum(int(i.get("rxBytes") or 0) for i in interfaces),
                       tx=sum(int(i.get("txBytes") or 0) for i in interfaces), scope=scope)
    return None


def kubelet_sample(name: str, current: Reading, before: Reading | None, cores_limit: float,
                   memory_limit: float, network: bool = True) -> Sample:
    """A Sample of ``current`` paired with the reading ``before`` it (Δ CPU time / Δ time, as for Docker
    with online CPUs 1 and the system's CPU time counted as wall time); without one, with the kubelet's
    own rate between its last two readings, carried as the CPU time of the second before ``current``.
    ``network`` False: the pod has no network of its own, its counters are 0."""
    if before is not None:
        pre_cpu, pre_time = before.cpu_ns, before.time_ns
    else:
        pre_cpu, pre_time = current.cpu_ns - (current.nano_cores or 0), current.time_ns - SECOND_NS
    return Sample(container_id=name, read=current.time_ns / SECOND_NS, online_cpus=1,
                  cpu_total=current.cpu_ns, system_cpu=current.time_ns,
                  pre_cpu_total=pre_cpu, pre_system_cpu=pre_time,
                  memory_usage=current.working_set, memory_limit=int(memory_limit),
                  rx_bytes=current.rx if network else 0, tx_bytes=current.tx if network else 0,
                  total_cores=cores_limit)


def _time_ns(stamp: str, read: float) -> int:
    """RFC 3339 time in integer nanoseconds: the kubelet's times have nanoseconds, more than a float's
    53 bits keep exact for the Δ of two readings a few seconds apart."""
    _seconds, _dot, rest = stamp.partition(".")
    digits = rest[:len(rest) - len(rest.lstrip("0123456789"))][:9].ljust(9, "0")
    return math.floor(read) * SECOND_NS + int(digits)
