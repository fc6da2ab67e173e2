"""Engine path injection: names the engine accepts must not walk the daemon to another engine endpoint.

Docker takes almost any string as a network name (``a/b``, ``x?y``, ``..``, ``../containers/web/json#``).
The export looked networks up by name interpolated raw into the engine URL, so a network named
``../containers/web/json#`` exported container web's inspect as the network, and one named
``../containers/big/export?x=`` had the daemon read a whole container filesystem into memory, then answer
500 with a traceback. These tests perform the attack with a read token from a remote address (127.0.0.2)
against the real daemon and the real dockerd.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import yaml

from nekzusd.errors import EngineError
from nekzusd.keys import RUNTIMES, TOKENS
from nekzusd.runtimes.base import Ref
from nekzusd.runtimes.docker import engine_path
from tests.harness.app import base_config, remote_config, remote_session, run_container, unique
from tests.harness.engines import Engine

C = "/api/v1/containers"


def hostile_names(web: str, big: str, tag: str) -> list[str]:
    return [f"../containers/{web}/json#", f"../containers/{big}/export?x=", f"{tag}/b", f"{tag}?y=1", f"{tag}#x",
            f"{tag}%2Fz", ".."]


def create_networks(engine: Engine, names: list[str]) -> dict[str, str]:
    """The names dockerd accepts, each with its id (a name it refuses is left out: nothing to attack)."""
    created = {}
    for index, name in enumerate(names):
        status, body = engine.api("POST", "/networks/create",
                                  {"Name": name, "Driver": "bridge", "Labels": {"netmark": f"NETMARK-{index}"}})
        if status == 201:
            created[name] = yaml.safe_load(body)["Id"]
    return created


def remove_networks(engine: Engine, ids: list[str]) -> None:
    for network_id in ids:
        engine.api("DELETE", f"/networks/{network_id}")


@pytest.fixture
async def remote(make_client, engine, tmp_path):
    """The daemon, with 127.0.0.2 a remote address, a read token, and a session from 127.0.0.2."""
    data = remote_config(base_config(engine, tmp_path / "state"))
    client = await make_client(data)
    token = client.app[TOKENS].create("reader", ["read:containers"], 600)
    async with remote_session(headers={"Authorization": f"Bearer {token}"}) as http:
        yield client, http


async def test_hostile_network_names_export_their_own_network_only(remote, engine, caplog) -> None:
    client, http = remote
    tag = unique("n")
    web, big, victim = unique("web"), unique("big"), unique("victim")
    await run_container(engine, web, labels={"mark": "WEBMARK-only-in-web"})
    await run_container(engine, big)
    networks = await asyncio.to_thread(create_networks, engine, hostile_names(web, big, tag))
    try:
        assert f"../containers/{web}/json#" in networks, f"dockerd refused the name: {sorted(networks)}"
        first, *others = networks.values()
        victim_id = await run_container(engine, victim, NetworkMode=first)
        for network_id in others:
            await asyncio.to_thread(engine.api_json, "POST", f"/networks/{network_id}/connect",
                                    {"Container": victim_id}, expect=(200,))
        caplog.set_level(logging.DEBUG)
        for path in (f"{C}/{victim}/export", f"{C}/{victim_id}/export"):
            async with http.post(client.make_url(path), json={}) as response:
                text = await response.text()
                assert response.status == 200, text
            body = yaml.safe_load(text)
            compose = yaml.safe_load(body["content"])
            assert "WEBMARK" not in text and "overlay2" not in text  # container web's inspect is not there
            declared = {decl["name"]: decl for decl in compose["networks"].values()}
            for index, name in enumerate(hostile_names(web, big, tag)):
                if name in networks:  # each network is its own, found by its id
                    assert declared[name].get("labels") == {"netmark": f"NETMARK-{index}"}, declared.get(name)
        async with http.get(client.make_url(f"{C}/{victim}")) as response:
            inspect = await response.json()
            assert response.status == 200 and "WEBMARK" not in str(inspect)
            assert set(inspect["NetworkSettings"]["Networks"]) == set(networks)
        assert "Traceback" not in caplog.text
    finally:
        await asyncio.to_thread(engine.remove_all)
        await asyncio.to_thread(remove_networks, engine, list(networks.values()))


async def test_engine_paths_quote_each_segment_against_the_real_engine(remote, engine) -> None:
    """A name is one segment: dockerd finds the network by its quoted name (``?``, ``#``, ``%``, ``/``). A name
    with a dot or empty part between slashes is refused: dockerd decodes ``%2F``, cleans the path and
    redirects, so no quoting keeps it inside its segment. A redirect the engine answers anyway is an
    EngineError, not a traceback."""
    client, _ = remote
    runtime = client.app[RUNTIMES].by_name["docker"]
    web, tag = unique("web"), unique("n")
    await run_container(engine, web, labels={"mark": "WEBMARK-only-in-web"})
    networks = await asyncio.to_thread(create_networks, engine, [n for n in hostile_names(web, web, tag) if n != ".."])
    try:
        addressable = {name: network_id for name, network_id in networks.items() if not name.startswith("../")}
        assert len(addressable) >= 3, sorted(networks)
        for name, network_id in addressable.items():
            found = await runtime._optional_json("networks", name)
            assert found is not None and found["Id"] == network_id, (name, found and found.get("Name"))
        for name in [n for n in networks if n.startswith("../")] + ["..", ".", "", "a//b", "a/./b", "a/"]:
            with pytest.raises(EngineError) as refused:
                engine_path("networks", name)
            assert refused.value.status == 400
            assert await runtime._optional_json("networks", name) is None
        assert engine_path("images", "sha256:ab/c?d#e", "json") == "images/sha256%3Aab%2Fc%3Fd%23e/json"
        with pytest.raises(EngineError) as redirected:  # what quoting alone would send: dockerd redirects
            await runtime._json("GET", f"networks/..%2Fcontainers%2F{web}%2Fjson", what="network")
        assert redirected.value.status == 502
    finally:
        await asyncio.to_thread(remove_networks, engine, list(networks.values()))


async def test_an_oversized_engine_answer_is_a_clean_engine_error(remote, engine) -> None:
    """What the red team's ``export?x=`` network made the daemon read: a container's filesystem. Read through
    the daemon's own JSON call, it stops at the limit with a 502 EngineError instead of buffering it all."""
    client, _ = remote
    runtime = client.app[RUNTIMES].by_name["docker"]
    big = unique("big")
    await run_container(engine, big)
    with pytest.raises(EngineError) as too_big:
        await runtime._json("GET", engine_path("containers", big, "export"), what="export", limit=256 * 1024)
    assert too_big.value.status == 502 and "too large" in str(too_big.value)
    with pytest.raises(EngineError) as not_json:  # within the limit but not JSON: still an EngineError
        await runtime._json("GET", "_ping", what="ping")  # "OK"
    assert not_json.value.status == 502
    # The daemon keeps answering the same engine afterwards: the cut connection did not poison the pool.
    assert (await runtime.get(Ref(big))).name == big
