"""Container statistics against the real dockerd (and Podman): fields, live samplers, batch, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nekzusd import config
from nekzusd.app import create_app
from nekzusd.descriptors import Budget
from nekzusd.keys import RUNTIMES
from nekzusd.runtimes.docker_objects import podman_sample, sample_from_stats
from nekzusd.stats import cpu_cores
from tests.harness.app import base_config, run_container, unique, wait_for
from tests.harness.engines import Engine

APP = {"nekzus.app.id": "grafana"}
LIMIT = 256 * 2**20
HELD = 64 * 2**20
CPU_QUOTA = 0.2  # small enough that the busy loop gets all of it even on a loaded 2-core machine
# Burns CPU_QUOTA of a core and holds HELD bytes of anonymous memory in `tail -c`.
BUSY = f"while :; do :; done & (head -c {HELD} /dev/zero; sleep 100000) | tail -c {HELD} > /dev/null"
FIELDS = {"containerId", "cpu", "memory", "network", "timestamp"}


def busy_container(engine: Engine, name: str, labels: dict[str, str] | None = None) -> str:
    return engine.run(name, BUSY, labels=labels if labels is not None else APP, Memory=LIMIT,
                      NanoCpus=int(CPU_QUOTA * 1e9))


def cpu_seconds(engine: Engine, full_id: str) -> float:
    """The container's CPU time read by the host from its cgroup: a reference that is not the engine."""
    pid = engine.api_json("GET", f"/containers/{full_id}/json")["State"]["Pid"]
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            for mount in ("/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"):
                usage = Path(f"{mount}{path}/cpuacct.usage")
                if usage.exists():
                    return int(usage.read_text()) / 1e9
    path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        stat = Path(f"{mount}{path}/cpu.stat")
        if stat.exists():
            return int(stat.read_text().split("usage_usec ")[1].split()[0]) / 1e6
    raise AssertionError(f"no cgroup CPU counter found for {full_id[:12]}")


async def held_memory(engine: Engine, full_id: str) -> None:
    """Wait until the tail holds its bytes (the engine's own usage figure says so)."""
    async def holding() -> bool:
        _, body = await asyncio.to_thread(engine.api, "GET", f"/containers/{full_id}/stats?stream=false&one-shot=true")
        return json.loads(body)["memory_stats"].get("usage", 0) >= HELD
    await wait_for(holding, timeout=20, interval=0.2)


def check_shape(stats: dict) -> None:
    assert set(stats) == FIELDS
    assert set(stats["cpu"]) == {"usage", "coresUsed", "totalCores"}
    assert set(stats["memory"]) == {"usage", "used", "limit", "available"}
    assert set(stats["network"]) == {"rx", "tx"}
    assert isinstance(stats["timestamp"], int) and abs(stats["timestamp"] - time.time()) < 10


def host_cpu_seconds() -> float:
    """The host's CPU time over all cores as the engines count it (/proc/stat user..softirq, no steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    return sum(int(f) for f in fields) / os.sysconf("SC_CLK_TCK")


def cpu_reading(engine: Engine, full_id: str) -> tuple[float, float]:
    return cpu_seconds(engine, full_id), host_cpu_seconds()


async def check_busy_stats(client, engine: Engine, full_id: str, path_id: str) -> dict:
    """Field by field against the host's own cgroup and /proc/stat counters and the known memory."""
    before = await asyncio.to_thread(cpu_reading, engine, full_id)
    response = await client.get(f"/api/v1/containers/{path_id}/stats")
    assert response.status == 200, await response.text()
    stats = await response.json()
    after = await asyncio.to_thread(cpu_reading, engine, full_id)
    # The formula of docs/stats.md over the request's window, from counters the engine did not report.
    reference = (after[0] - before[0]) / (after[1] - before[1]) * os.cpu_count()
    check_shape(stats)
    assert stats["containerId"] == full_id[:12]
    cpu = stats["cpu"]
    assert cpu["totalCores"] == float(os.cpu_count())
    # The quota caps the container's CPU time (it gets less when the other tests keep both cores busy: 0.12
    # was measured), and the formula divides by the host's counted CPU time, which on this loaded VM jumps
    # by up to ±40 % between 1 s windows (the engine's window is not this test's). The bands catch wrong
    # fields and scales; the exact arithmetic is checked on captured documents in test_stats_formulas.py.
    assert 0 < cpu["coresUsed"] <= 2 * CPU_QUOTA, (cpu, reference)
    assert 0.55 * reference <= cpu["coresUsed"] <= 1.8 * reference, (cpu, reference)
    assert cpu["usage"] == pytest.approx(cpu["coresUsed"] * 100, abs=0.01)
    memory = stats["memory"]
    assert memory["limit"] == LIMIT
    assert HELD <= memory["used"] <= HELD + 8 * 2**20
    assert memory["available"] == LIMIT - memory["used"]
    assert memory["usage"] == pytest.approx(memory["used"] / LIMIT * 100, abs=0.01)
    assert stats["network"] == {"rx": 0, "tx": 0}  # network none: no interface to count
    return stats


async def test_single_stats_fields_on_a_busy_container(engine: Engine, client) -> None:
    full_id = await asyncio.to_thread(busy_container, engine, unique("busy"))
    await held_memory(engine, full_id)
    await check_busy_stats(client, engine, full_id, full_id[:12])


async def test_repeat_requests_share_one_live_sampler(engine: Engine, client) -> None:
    name = unique("live")
    full_id = await asyncio.to_thread(busy_container, engine, name)
    runtime = client.app[RUNTIMES].pick(None)
    started = time.monotonic()
    first = await asyncio.gather(*(client.get(f"/api/v1/containers/{full_id[:12]}/stats") for _ in range(4)))
    first_latency = time.monotonic() - started
    assert [r.status for r in first] == [200] * 4
    assert runtime.samplers.active == 1  # four concurrent first callers, one sampler
    started = time.monotonic()
    again = await client.get(f"/api/v1/containers/{name}/stats")  # by name: the same sampler
    repeat_latency = time.monotonic() - started
    assert again.status == 200
    assert (await again.json())["containerId"] == full_id[:12]
    assert runtime.samplers.active == 1
    assert repeat_latency < first_latency / 5  # answered from the live sample, not a new engine round
    stamps = {(await first[0].json())["timestamp"]}

    async def advanced() -> bool:
        response = await client.get(f"/api/v1/containers/{full_id[:12]}/stats")
        stamps.add((await response.json())["timestamp"])
        return len(stamps) > 1
    await wait_for(advanced, timeout=10, interval=0.3)  # the sampler keeps reading


def engine_fds(engine: Engine) -> int:
    return len(os.listdir(f"/proc/{engine.pid}/fd"))


async def test_samplers_stop_when_nobody_asks(engine: Engine, client) -> None:
    runtime = client.app[RUNTIMES].pick(None)
    runtime.samplers.idle = 3.0
    ids = [await run_container(engine, unique("idle"), labels=APP) for _ in range(3)]
    await asyncio.gather(*(client.get(f"/api/v1/containers/{i}/stats") for i in ids))
    while_sampling = await asyncio.to_thread(engine_fds, engine)
    assert runtime.samplers.active == 3

    async def stopped() -> bool:
        return runtime.samplers.active == 0
    await wait_for(stopped, timeout=10)

    async def closed() -> bool:  # seen from dockerd: the three stats streams it served are closed
        return await asyncio.to_thread(engine_fds, engine) <= while_sampling - 3
    await wait_for(closed, timeout=10)


async def test_stopped_missing_and_malformed_containers(engine: Engine, client) -> None:
    exited = await run_container(engine, unique("exited"), "true", labels=APP)
    created = (await asyncio.to_thread(engine.run, unique("created"), start=False))[:12]

    async def has_exited() -> bool:
        state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{exited}/json"))["State"]
        return state["Status"] == "exited"
    await wait_for(has_exited)
    for container_id in (exited, created):
        response = await client.get(f"/api/v1/containers/{container_id}/stats")
        assert response.status == 409
        body = await response.json()
        assert body["error"] == "CONTAINER_NOT_RUNNING" and container_id in body["message"]
    response = await client.get("/api/v1/containers/nosuchcontainer/stats")
    assert response.status == 404 and (await response.json())["error"] == "CONTAINER_NOT_FOUND"
    response = await client.get("/api/v1/containers/bad%20id!/stats")
    assert response.status == 400 and (await response.json())["error"] == "INVALID_CONTAINER_ID"


async def test_a_container_that_stops_is_no_longer_reported(engine: Engine, client) -> None:
    container_id = await run_container(engine, unique("stopping"), labels=APP)
    assert (await client.get(f"/api/v1/containers/{container_id}/stats")).status == 200
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{container_id}/stop?t=1", expect=(204,))

    async def refused() -> bool:
        return (await client.get(f"/api/v1/containers/{container_id}/stats")).status == 409
    await wait_for(refused, timeout=5)


def engine_stats_latency(engine: Engine, full_id: str) -> float:
    started = time.monotonic()
    status, _ = engine.api("GET", f"/containers/{full_id}/stats?stream=false")
    assert status == 200
    return time.monotonic() - started


async def test_batch_stats_covers_linked_running_containers_concurrently(engine: Engine, client) -> None:
    linked = [await asyncio.to_thread(engine.run, unique("linked"), "sleep 100000", labels=APP) for _ in range(6)]
    await run_container(engine, unique("off"), "true", labels=APP)  # linked but exits at once
    unlinked = await run_container(engine, unique("unlinked"))
    stopped = await run_container(engine, unique("stopped"), labels=APP)
    await asyncio.to_thread(engine.api_json, "POST", f"/containers/{stopped}/stop?t=1", expect=(204,))
    other = await asyncio.to_thread(engine.run, unique("ref"), "sleep 100000")
    single = await asyncio.to_thread(engine_stats_latency, engine, other)

    started = time.monotonic()
    response = await client.get("/api/v1/containers/stats")
    elapsed = time.monotonic() - started
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"containers", "timestamp"}
    assert sorted(c["containerId"] for c in body["containers"]) == sorted(i[:12] for i in linked)
    assert unlinked not in {c["containerId"] for c in body["containers"]}
    for stats in body["containers"]:
        check_shape(stats)
    # One after another would take six engine rounds; concurrently it is about one.
    assert elapsed < 2.5 * single + 0.5, (elapsed, single)
    # The single route gives the same 12-character id.
    one = await (await client.get(f"/api/v1/containers/{linked[0]}/stats")).json()
    assert one["containerId"] == linked[0][:12]


POOL = 8  # the daemon's pool of short engine calls, made small here (Budget.engine_pool; up to 100)
MANY = POOL + 4  # more containers than that pool holds


def start_many(engine: Engine, count: int) -> list[str]:
    """``count`` linked running containers, created a few at a time (bare ``sleep``: force-removed later)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> str:
        return engine.run(unique("many"), ["sleep", "100000"], labels=APP)
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def engine_batch_latency(engine: Engine, full_ids: list[str]) -> float:
    """The raw engine asked for one sample of every container at once: what a batch costs the engine."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    with ThreadPoolExecutor(len(full_ids)) as pool:
        list(pool.map(lambda full_id: engine_stats_latency(engine, full_id), full_ids))
    return time.monotonic() - started


async def test_batch_stats_of_more_containers_than_a_connection_pool_holds(engine: Engine, aiohttp_client,
                                                                          config_data) -> None:
    """Each live sampler holds one engine stream open; more of them than the pool of short engine calls
    holds must not starve the batch (or anything else). The pool is made small so that a dozen containers
    exceed it, as 110 would exceed the pool of 100 a usual descriptor limit gives (the run took 45 s of CPU)."""
    budget = dataclasses.replace(Budget.current(), engine_pool=POOL)
    client = await aiohttp_client(create_app(config.parse(config_data, env={}), budget))
    ids = await asyncio.to_thread(start_many, engine, MANY)
    runtime = client.app[RUNTIMES].pick(None)
    assert runtime.pool_limit == POOL
    raw = await asyncio.to_thread(engine_batch_latency, engine, ids)
    started = time.monotonic()
    async with asyncio.timeout(45):
        response = await client.get("/api/v1/containers/stats")
    elapsed = time.monotonic() - started
    assert response.status == 200, await response.text()
    # All first samples are awaited together, so the batch costs about what the raw engine takes to answer
    # the same containers at once, measured just before, beside the same other tests (the allowance is for
    # the load they may add between the two). A starved stream would never be answered (the 45 s timeout
    # above); samples taken a few at a time would cost many such batches.
    assert elapsed < 2 * raw + 5, (elapsed, raw)
    body = await response.json()
    assert sorted(c["containerId"] for c in body["containers"]) == sorted(i[:12] for i in ids)
    assert runtime.samplers.active == MANY
    # Asked again while every sampler is live: answered from them, and a single call still works.
    again = await client.get("/api/v1/containers/stats")
    assert again.status == 200 and len((await again.json())["containers"]) == MANY
    single = await client.get(f"/api/v1/containers/{ids[0][:12]}/stats")
    assert single.status == 200, await single.text()


async def test_engine_down_is_a_503(make_client, config_data, tmp_path: Path) -> None:
    config_data["runtimes"] = {"docker": {"host": f"unix://{tmp_path}/missing.sock"}}
    client = await make_client(config_data)
    for path in ("/api/v1/containers/abc123def456/stats", "/api/v1/containers/stats"):
        response = await client.get(path)
        assert response.status == 503, path
        assert (await response.json())["error"] == "RUNTIME_UNAVAILABLE"


def test_stats_does_not_depend_on_lifecycle_modules() -> None:
    """stats is read-only and runtime-neutral: importing it must not pull in bulk operations."""
    code = "import sys, nekzusd.stats; print(sorted(m for m in sys.modules if m.startswith('nekzusd.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "nekzusd.stats" in loaded
    for module in ("nekzusd.bulk", "nekzusd.operations", "nekzusd.apps"):
        assert f"'{module}'" not in loaded, loaded


def podman_document(read: str, cpu_ns: int, busy_ns: int) -> dict:
    """A Podman 4.3 `stream=false` stats document (fields as the real engine gives them): precpu zero,
    and system_cpu_usage the host's busy CPU time, read from the root cgroup's cpuacct.usage."""
    return {"Id": "c0ffee" * 10 + "abcd", "read": read, "memory_stats": {"usage": 1 << 20, "limit": 1 << 30},
            "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}, "system_cpu_usage": busy_ns, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0}}


def test_podman_cpu_is_measured_against_elapsed_time_not_the_hosts_busy_time() -> None:
    """The cause of a flaky test_podman_stats (1.86 cores for a 0.2-core quota): over one second of a
    quiet 2-core host, the container used 0.2 s and everything else 0.01 s. Dividing by Podman's busy
    time says the container used nearly both cores; docs/stats.md divides by elapsed CPU time, as dockerd's is."""
    first = podman_document("2026-01-01T00:00:00.000000000Z", 50_000_000_000, 7_000_000_000_000)
    second = podman_document("2026-01-01T00:00:01.000000000Z", 50_200_000_000, 7_000_210_000_000)
    raw = cpu_cores(sample_from_stats(second), sample_from_stats(first))
    assert raw == pytest.approx(1.905, abs=0.001)  # the engine's figure taken as dockerd's: wrong
    assert cpu_cores(podman_sample(second), podman_sample(first)) == pytest.approx(0.2, abs=1e-6)


@pytest.mark.podman
async def test_podman_stats(podman_engine: Engine, make_client, tmp_path: Path) -> None:
    """Podman: precpu zero, `Id`, memory without counters, empty body when stopped."""
    client = await make_client(base_config(podman_engine, tmp_path / "state"))
    try:
        full_id = await asyncio.to_thread(busy_container, podman_engine, unique("pbusy"))
        await held_memory(podman_engine, full_id)
        stats = await check_busy_stats(client, podman_engine, full_id, full_id[:12])
        batch = await (await client.get("/api/v1/containers/stats")).json()
        assert [c["containerId"] for c in batch["containers"]] == [stats["containerId"]]
        exited = await asyncio.to_thread(podman_engine.run, unique("pexit"), "true", labels=APP)

        async def refused() -> bool:
            return (await client.get(f"/api/v1/containers/{exited[:12]}/stats")).status == 409
        await wait_for(refused, timeout=10)
    finally:
        await asyncio.to_thread(podman_engine.remove_all)
