"""The formulas of docs/stats.md on stats documents captured from the real dockerd and Podman (tests/data/stats)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nekzusd.errors import EngineError
from nekzusd.runtimes.docker_objects import sample_from_stats
from nekzusd.stats import Sample, Samplers, as_json, cpu_cores

DATA = Path(__file__).parent / "data" / "stats"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_dockerd_sample_uses_the_engines_previous_reading() -> None:
    doc = load("docker-busy.json")
    sample = sample_from_stats(doc)
    cpu, pre = doc["cpu_stats"], doc["precpu_stats"]
    expected = ((cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"])
                / (cpu["system_cpu_usage"] - pre["system_cpu_usage"]) * cpu["online_cpus"])
    cores = cpu_cores(sample)
    assert cores == pytest.approx(expected)
    assert 0.1 < cores <= 0.21  # the container was limited to 0.2 CPU and burning all of it
    stats = as_json(sample, cores)
    assert stats["containerId"] == doc["id"][:12]
    assert stats["cpu"] == {"usage": round(expected * 100, 2), "coresUsed": round(expected, 4), "totalCores": 2.0}


def test_cgroup_v1_memory_leaves_out_the_page_cache() -> None:
    doc = load("docker-busy.json")
    memory = doc["memory_stats"]
    stats = as_json(sample_from_stats(doc), 0.0)["memory"]
    used = memory["usage"] - memory["stats"]["cache"]
    assert memory["stats"]["cache"] >= 8 * 2**20  # the 8 MiB file in /tmp
    assert stats == {"usage": round(used / memory["limit"] * 100, 2), "used": used, "limit": 256 * 2**20,
                     "available": 256 * 2**20 - used}
    assert 64 * 2**20 <= used < 72 * 2**20  # the 64 MiB tail holds, plus a little


def test_cgroup_v2_memory_leaves_out_inactive_file() -> None:
    # Not captured: this host runs cgroup v1. A v2 document has no "cache", only inactive_file.
    doc = load("docker-busy.json")
    doc["memory_stats"] = {"usage": 100_000_000, "limit": 200_000_000,
                           "stats": {"anon": 60_000_000, "file": 40_000_000, "inactive_file": 30_000_000}}
    memory = as_json(sample_from_stats(doc), 0.0)["memory"]
    assert memory == {"usage": 35.0, "used": 70_000_000, "limit": 200_000_000, "available": 130_000_000}


def test_network_is_summed_over_interfaces() -> None:
    doc = load("docker-two-networks.json")
    assert len(doc["networks"]) == 2
    network = as_json(sample_from_stats(doc), 0.0)["network"]
    assert network == {"rx": sum(i["rx_bytes"] for i in doc["networks"].values()),
                       "tx": sum(i["tx_bytes"] for i in doc["networks"].values())}
    assert network["rx"] > 0 and network["tx"] > 0


def test_podman_sample_needs_a_second_reading_of_our_own() -> None:
    first, second = load("podman-busy.json"), load("podman-busy-next.json")
    assert "id" not in first and first["Id"]  # Podman spells it Id
    a, b = sample_from_stats(first), sample_from_stats(second)
    assert a.container_id == first["Id"][:12]
    assert cpu_cores(a) is None  # precpu all zero: nothing to compare with
    cores = cpu_cores(b, a)
    expected = ((second["cpu_stats"]["cpu_usage"]["total_usage"] - first["cpu_stats"]["cpu_usage"]["total_usage"])
                / (second["cpu_stats"]["system_cpu_usage"] - first["cpu_stats"]["system_cpu_usage"]) * 2)
    assert cores == pytest.approx(expected)
    assert 0.1 < cores <= 0.21
    memory = as_json(b, cores)["memory"]
    assert memory["used"] == second["memory_stats"]["usage"]  # no counters to subtract
    assert memory["limit"] == 256 * 2**20


def test_stopped_containers_give_no_sample() -> None:
    assert sample_from_stats(load("docker-stopped.json")) is None
    assert (DATA / "podman-stopped.body").read_bytes().strip() == b""


def test_counters_going_backwards_read_as_idle_not_negative() -> None:
    sample = sample_from_stats(load("docker-busy.json"))
    restarted = Sample(sample.container_id, sample.read + 1, 2, cpu_total=10, system_cpu=sample.system_cpu + 10**9)
    assert cpu_cores(restarted, sample) == 0.0


async def _samples_then(error: Exception | None, count: int):
    sample = sample_from_stats(load("podman-busy.json"))
    for i in range(count):
        yield Sample(sample.container_id, sample.read + i, 2, cpu_total=sample.cpu_total + i * 10**8,
                     system_cpu=sample.system_cpu + i * 2 * 10**9)
        await asyncio.sleep(0.01)
    if error is not None:
        raise error
    await asyncio.sleep(3600)


async def test_samplers_share_one_sampler_and_stop_when_idle() -> None:
    # The source here is a generator of real-shaped samples: this checks the cache's lifecycle only.
    samplers = Samplers("test", idle=0.2)
    started = []

    def source():
        started.append(1)
        return _samples_then(None, 10**6)

    first = await asyncio.gather(*(samplers.get("busy", source) for _ in range(5)))
    assert len(started) == 1 and samplers.active == 1
    assert all(s["cpu"]["coresUsed"] == pytest.approx(0.1) for s in first)
    async def idle() -> bool:  # nobody asks any more: after ``idle`` (0.2 s) the sampler goes
        return samplers.active == 0
    async with asyncio.timeout(10):
        while not await idle():
            await asyncio.sleep(0.02)
    await samplers.close()


async def test_sampler_failure_reaches_every_waiter_and_is_forgotten() -> None:
    samplers = Samplers("test")
    results = await asyncio.gather(*(samplers.get("gone", lambda: _samples_then(EngineError("boom"), 1))
                                     for _ in range(3)), return_exceptions=True)
    assert [str(r) for r in results] == ["boom"] * 3
    assert samplers.active == 0
    await samplers.close()
