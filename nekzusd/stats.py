"""Container statistics: the formulas of docs/stats.md and a cache of live per-container samplers.

The formulas work on `Sample`, a runtime-neutral reading of cumulative counters; each runtime turns its
engine's documents into samples (Docker/Podman in ``runtimes/docker``). The first request for a container
starts a sampler that keeps reading samples in the background, so a caller asking again within
``idle`` seconds is answered from the latest one at once; a sampler nobody asked for stops by itself, so
an idle daemon puts no load on the engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .concurrency import gather_all
from .errors import ApiError, EngineError, MetricsUnavailable, RuntimeUnavailable
from .runtimes.base import Ref

if TYPE_CHECKING:
    from .runtimes.base import Container, Runtime

log = logging.getLogger(__name__)

IDLE_EXPIRY = 30.0     # seconds without a request before a sampler stops
SAMPLE_TIMEOUT = 15.0  # seconds a sampler waits for its next sample (Podman streams every 5 s)


@dataclass(frozen=True)
class Sample:
    """One reading of a container's counters. CPU values are cumulative nanoseconds; ``system_cpu`` is
    the host's CPU time summed over its cores. ``pre_*`` is the engine's own previous reading, 0 if none."""

    container_id: str
    read: float                 # unix time of the reading
    online_cpus: int
    cpu_total: int
    system_cpu: int
    pre_cpu_total: int = 0
    pre_system_cpu: int = 0
    memory_usage: int = 0
    memory_reclaimable: int = 0  # inactive_file (cgroup v2) or cache (v1): not counted as used
    memory_limit: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    # The cores the container may use when that is not every online CPU (a Kubernetes pod: its limits or
    # its node's allocatable CPU); None: ``online_cpus``.
    total_cores: float | None = None


def cpu_cores(sample: Sample, previous: Sample | None = None) -> float | None:
    """Cores busy between two readings: Δcontainer / Δsystem × online CPUs (as `docker stats`).

    Uses the engine's previous reading when it gave one, else ``previous``; None when neither exists."""
    if sample.pre_system_cpu:
        cpu_before, system_before = sample.pre_cpu_total, sample.pre_system_cpu
    elif previous is not None:
        cpu_before, system_before = previous.cpu_total, previous.system_cpu
    else:
        return None
    system_delta = sample.system_cpu - system_before
    cpu_delta = sample.cpu_total - cpu_before
    if system_delta <= 0 or cpu_delta < 0:  # no time passed, or the counters restarted
        return 0.0
    return cpu_delta / system_delta * sample.online_cpus


def as_json(sample: Sample, cores: float) -> dict[str, Any]:
    """The API's stats object for one container (docs/stats.md)."""
    used = max(sample.memory_usage - sample.memory_reclaimable, 0)
    limit = sample.memory_limit
    return {
        "containerId": sample.container_id,
        "cpu": {"usage": round(cores * 100, 2), "coresUsed": round(cores, 4),
                "totalCores": float(sample.online_cpus if sample.total_cores is None else sample.total_cores)},
        "memory": {"usage": round(used / limit * 100, 2) if limit else 0.0, "used": used, "limit": limit,
                   "available": max(limit - used, 0)},
        "network": {"rx": sample.rx_bytes, "tx": sample.tx_bytes},
        "timestamp": int(sample.read),
    }


SampleSource = Callable[[], AsyncGenerator[Sample, None]]


class Sampler:
    """Reads one container's samples in the background and keeps the latest stats object."""

    def __init__(self, source: SampleSource, runtime: str, idle: float) -> None:
        self.runtime = runtime
        self.idle = idle
        self.latest: dict[str, Any] | None = None
        self.last_asked = time.monotonic()
        self.first: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run(source), name="stats-sampler")

    async def _run(self, source: SampleSource) -> None:
        previous: Sample | None = None
        samples = source()
        try:
            while not self.first.done() or time.monotonic() - self.last_asked < self.idle:
                async with asyncio.timeout(SAMPLE_TIMEOUT):
                    sample = await anext(samples, None)
                if sample is None:
                    raise EngineError("the engine ended the stats stream")
                cores = cpu_cores(sample, previous)
                previous = sample
                if cores is not None:
                    self.latest = as_json(sample, cores)
                    if not self.first.done():
                        self.first.set_result(self.latest)
                        self.last_asked = time.monotonic()  # its waiters were answered just now
        except TimeoutError:
            self._fail(RuntimeUnavailable(self.runtime, f"no stats sample within {SAMPLE_TIMEOUT:g} s"))
        except (ApiError, EngineError) as exc:
            self._fail(exc)
        except Exception as exc:  # a malformed engine document must not leave callers waiting
            log.warning("stats sampler failed: %r", exc)
            self._fail(EngineError(f"unreadable stats: {exc}"))
        finally:
            await samples.aclose()
            if not self.first.done():
                self.first.cancel()

    def _fail(self, exc: Exception) -> None:
        if not self.first.done():
            self.first.set_exception(exc)
            self.first.exception()  # retrieved here: nobody may be waiting any more

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def get(self) -> dict[str, Any]:
        self.last_asked = time.monotonic()
        if self.latest is not None:
            return self.latest
        try:
            return await asyncio.shield(self.first)
        except asyncio.CancelledError:
            if self.first.cancelled():  # the sampler was stopped (shutdown), not this caller
                raise RuntimeUnavailable(self.runtime, "stats sampling stopped") from None
            raise


class Samplers:
    """Live samplers by container key, shared by every caller; each stops ``idle`` s after its last use."""

    def __init__(self, runtime: str, idle: float = IDLE_EXPIRY) -> None:
        self.runtime = runtime  # named in the errors of its samplers
        self.idle = idle
        self._by_key: dict[str, Sampler] = {}

    @property
    def active(self) -> int:
        return sum(1 for s in set(self._by_key.values()) if s.alive)

    def cached(self, key: str) -> dict[str, Any] | None:
        """The latest stats of a live sampler known under ``key`` (an id or a name), if any."""
        sampler = self._by_key.get(key)
        if sampler is None or not sampler.alive or sampler.latest is None:
            return None
        sampler.last_asked = time.monotonic()
        return sampler.latest

    async def get(self, key: str, source: SampleSource, alias: str | None = None) -> dict[str, Any]:
        """The latest stats of the container ``key``, starting its sampler if none runs; ``alias`` (the
        name the caller used) then finds the same sampler through ``cached``."""
        sampler = self._by_key.get(key)
        if sampler is None or not sampler.alive:
            sampler = self._by_key[key] = Sampler(source, self.runtime, self.idle)
            sampler.task.add_done_callback(functools.partial(self._forget, sampler))
        if alias is not None and alias != key:
            self._by_key[alias] = sampler
        return await sampler.get()

    def _forget(self, sampler: Sampler, _task: asyncio.Task[None]) -> None:
        for key in [k for k, s in self._by_key.items() if s is sampler]:
            del self._by_key[key]

    async def close(self) -> None:
        samplers = set(self._by_key.values())
        for sampler in samplers:
            sampler.task.cancel()
        await asyncio.gather(*(s.task for s in samplers), return_exceptions=True)
        self._by_key.clear()


# Containers one batch request samples at once. A first Docker sample is mostly waiting (about 2 s for
# dockerd's collector), so the bound is set above a home server's container count: at 32, a batch of 110
# took four such waits (10 s) instead of one (2.6 s). The engine calls are bounded by the clients' pools too.
BATCH_CONCURRENCY = 256


async def collect(runtime: Runtime, containers: list[Container], limit: int = BATCH_CONCURRENCY,
                  unavailable: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Stats of many containers, concurrently (bounded), in the given order. Containers that stopped or
    vanished since they were listed are left out; so are pods no statistics source answers for (a
    missing optional cluster component), each then noted in ``unavailable`` so that the answer can say
    so. Any other failure fails the whole batch."""
    async def one(container: Container) -> dict[str, Any] | None:
        try:
            return await runtime.stats(Ref(container.id, container.namespace))
        except MetricsUnavailable as exc:
            if unavailable is not None:
                unavailable.append({"containerId": container.id, "namespace": container.namespace,
                                    "runtime": container.runtime, "error": exc.code, "message": exc.message})
            return None
        except ApiError as exc:
            if exc.status in (404, 409):
                return None
            raise

    return [stats for stats in await gather_all((one(c) for c in containers), limit=limit) if stats is not None]
