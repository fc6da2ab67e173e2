"""A container of the host is not a local client: the attack of a compromised container through its bridge's
gateway, against the real daemon and a real dockerd.

Docker's bridge subnets come from private ranges inside the default ``auth.local_networks`` (172.17.0.0/16
first, 172.18-31 after, 192.168.x). The test engine has no default bridge, so the test makes a bridge network
with such a subnet (172.29.251.0/24), serves the daemon on its gateway (the host's own address on that
bridge: the traffic stays on this machine's virtual bridge) and has a busybox container on it call the API
with ``wget``, as a compromised web app would."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nekzusd import config as config_mod
from nekzusd import containernets
from nekzusd.app import create_app
from nekzusd.containernets import ContainerNetworks
from nekzusd.keys import CONTAINER_NETWORKS
from nekzusd.runtimes.docker import bridge_subnets
from tests.harness.app import base_config, unique, wait_for
from tests.harness.engines import Engine
from tests.harness.machine import machine_lock
from tests.test_logs import WAIT_GO, go

SUBNET, GATEWAY = "172.29.251.0/24", "172.29.251.1"


@pytest.fixture
def bridge(engine: Engine) -> Any:
    """A bridge network of the test engine with a subnet inside the default local networks."""
    with machine_lock("address-pools"):
        status, body = engine.api("POST", "/networks/create", {
            "Name": unique("lan-like"), "Driver": "bridge",
            "IPAM": {"Config": [{"Subnet": SUBNET, "Gateway": GATEWAY}]}})
    assert status == 201, body
    network = json.loads(body)["Id"]
    yield network
    engine.remove_all()
    engine.api("DELETE", f"/networks/{network}")


async def serve_on_gateway(engine: Engine, state: Path, **auth: Any) -> tuple[web.AppRunner, int, web.Application]:
    data = base_config(engine, state)  # the default local_networks: 172.16.0.0/12 is "local"
    if auth:
        data["auth"] = auth
    app = create_app(config_mod.parse(data, env={}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, GATEWAY, 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1], app


async def from_inside(engine: Engine, network: str, port: int, times: int = 1) -> str:
    """What a container on ``network`` gets for the container list, asked ``times`` times in a row (``wget``
    prints the body or the error)."""
    cid = await asyncio.to_thread(
        engine.run, unique("inside"),
        f"for i in $(seq {times}); do wget -qO- 'http://{GATEWAY}:{port}/api/v1/containers?all=true' 2>&1; done; "
        "echo END; sleep 100000", NetworkMode=network)

    async def done() -> bool:
        return b"END" in await asyncio.to_thread(lambda: engine.api("GET", f"/containers/{cid}/logs?stdout=1")[1])
    await wait_for(done, timeout=30)
    logs = await asyncio.to_thread(lambda: engine.api("GET", f"/containers/{cid}/logs?stdout=1")[1])
    return logs.decode(errors="replace")


async def test_a_container_on_a_bridge_is_not_a_local_client(engine, bridge, tmp_path):
    """Before: the container listed every container (200) and could stop them or export their secrets
    without a token. Now it needs one (401); the host, calling from the gateway address, is still local."""
    runner, port, app = await serve_on_gateway(engine, tmp_path / "state")
    try:
        assert any(str(net) == SUBNET for net, _ in app[CONTAINER_NETWORKS].subnets)
        answer = await from_inside(engine, bridge, port, times=25)  # the containers pool: burst 20
        assert "401 Unauthorized" in answer and '"runtime"' not in answer, answer
        assert "429 Too Many Requests" in answer, answer  # not exempt from the rate limits either
        connector = aiohttp.TCPConnector(local_addr=(GATEWAY, 0))
        async with aiohttp.ClientSession(connector=connector) as host:
            async with host.get(f"http://{GATEWAY}:{port}/api/v1/containers?all=true") as resp:
                assert resp.status == 200  # the gateway is the host itself
    finally:
        await runner.cleanup()


async def test_the_owner_may_trust_containers_again(engine, bridge, tmp_path):
    runner, port, _ = await serve_on_gateway(engine, tmp_path / "state", trust_container_networks=True)
    try:
        answer = await from_inside(engine, bridge, port)
        assert '"runtime":"docker"' in answer, answer
    finally:
        await runner.cleanup()


def test_only_bridge_subnets_count_and_odd_answers_are_skipped():
    networks = [
        {"Name": "bridge", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"},
                                                                  {"Subnet": "fd00:dead::/64"}]}},
        {"Name": "lan", "Driver": "macvlan", "IPAM": {"Config": [{"Subnet": "192.168.1.0/24"}]}},  # the LAN itself
        {"Name": "host", "Driver": "host", "IPAM": {"Config": []}},
        {"Name": "odd", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "not a net"}, {"Gateway": "x"}, "junk"]}},
        {"Name": "none", "Driver": "null", "IPAM": None}, "junk"]
    assert [(str(n), str(g) if g else None) for n, g in bridge_subnets(networks)] == [
        ("172.17.0.0/16", "172.17.0.1"), ("fd00:dead::/64", None)]
    assert bridge_subnets({"message": "not a list"}) == []
    nets = ContainerNetworks([])
    nets.subnets = tuple(bridge_subnets(networks))
    assert nets.contains(ipaddress.ip_address("172.17.0.2")) and nets.contains(ipaddress.ip_address("fd00:dead::5"))
    assert not nets.contains(ipaddress.ip_address("172.17.0.1"))  # the gateway: the host
    assert not nets.contains(ipaddress.ip_address("192.168.1.20")) and not nets.contains(None)


async def test_podman_bridge_networks_are_learnt(podman_engine, make_client, tmp_path):
    client = await make_client(base_config(podman_engine, tmp_path / "state"))
    listed = podman_engine.api_json("GET", "/networks")
    expected = {str(n) for n, _ in bridge_subnets(listed)}
    assert expected, listed  # Podman's own default network at least
    assert {str(n) for n, _ in client.app[CONTAINER_NETWORKS].subnets} == expected


async def test_a_network_made_after_start_is_learnt_when_its_container_starts(engine, tmp_path, monkeypatch):
    """The periodic look is made to wait an hour: the container's start alone (a state change) makes the
    daemon learn the new network, before the container's first request."""
    monkeypatch.setattr(containernets, "REFRESH", 3600.0)
    data = base_config(engine, tmp_path / "state")
    app = create_app(config_mod.parse(data, env={}))
    runner = web.AppRunner(app)
    await runner.setup()
    network = None
    try:
        networks = app[CONTAINER_NETWORKS]
        assert not any(str(net) == SUBNET for net, _ in networks.subnets)
        with machine_lock("address-pools"):
            status, body = engine.api("POST", "/networks/create", {
                "Name": unique("late"), "Driver": "bridge",
                "IPAM": {"Config": [{"Subnet": SUBNET, "Gateway": GATEWAY}]}})
        assert status == 201, body
        network = json.loads(body)["Id"]
        site = web.TCPSite(runner, GATEWAY, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        cid = await asyncio.to_thread(
            engine.run, unique("late"), WAIT_GO + f"wget -qO- 'http://{GATEWAY}:{port}/api/v1/containers' 2>&1; "
            "echo END; sleep 100000", NetworkMode=network)

        async def learnt() -> bool:
            return any(str(net) == SUBNET for net, _ in networks.subnets)
        await wait_for(learnt, timeout=10)
        await go(engine, cid[:12])

        async def done() -> bool:
            return b"END" in await asyncio.to_thread(lambda: engine.api("GET", f"/containers/{cid}/logs?stdout=1")[1])
        await wait_for(done, timeout=30)
        logs = (await asyncio.to_thread(lambda: engine.api("GET", f"/containers/{cid}/logs?stdout=1")[1])).decode()
        assert "401 Unauthorized" in logs, logs
    finally:
        await runner.cleanup()
        if network is not None:
            engine.remove_all()
            engine.api("DELETE", f"/networks/{network}")
