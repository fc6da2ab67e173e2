"""Listening on ``[::]`` is dual-stack, and an IPv4 client seen through it (``::ffff:127.0.0.2``) is the IPv4
address it carries for local trust, rate limits and the per-client connection cap. A real daemon process."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from nekzusd.listen import ConnectionLimits, open_sockets, peer_address
from tests.harness.app import base_config
from tests.harness.netattack import LimitedDaemon, connect, read_until_closed, still_open

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this kernel")


@pytest.fixture
async def daemon(engine, tmp_path: Path):
    config = base_config(engine, tmp_path / "state", auth={"local_networks": ["127.0.0.2/32"]})
    config["server"].update({"listen": "[::]:0", "max_connections_per_client": 2, "head_timeout": 30})
    d = LimitedDaemon(tmp_path / "d", config)
    await d.start()
    yield d
    await d.close()


async def get(port: int, source: str, target: str = "127.0.0.1", path: str = "/api/v1/containers") -> int:
    host = f"[{target}]" if ":" in target else target
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as http:
        async with http.get(f"http://{host}:{port}{path}") as resp:
            await resp.read()
            return resp.status


async def test_ipv4_and_ipv6_clients_reach_a_wildcard_ipv6_listener(daemon: LimitedDaemon) -> None:
    assert f"listening on http://[::]:{daemon.port}" in daemon.stderr()
    # 127.0.0.2 is the one local network: trusted although it arrived as ::ffff:127.0.0.2
    assert await get(daemon.port, "127.0.0.2") == 200
    assert await get(daemon.port, "127.0.0.3") == 401  # another IPv4 client is remote
    assert await get(daemon.port, "::1", "::1") == 401  # IPv6 works too (and ::1 is not local here)
    log = daemon.stderr()
    assert "client=127.0.0.2 " in log and "client=127.0.0.3 " in log and "::ffff:" not in log


async def test_the_connection_cap_counts_a_mapped_peer_as_its_ipv4_address(daemon: LimitedDaemon) -> None:
    held = [connect("127.0.0.4", daemon.port, b"GET / HT") for _ in range(2)]
    try:
        extra = connect("127.0.0.4", daemon.port)
        try:
            seconds, got = await read_until_closed(extra, 5)
        finally:
            extra.close()
        assert got.startswith(b"HTTP/1.1 429"), got
        assert json.loads(got.partition(b"\r\n\r\n")[2])["error"] == "TOO_MANY_CONNECTIONS"
        assert all([await still_open(s, 0.05) for s in held])
    finally:
        for s in held:
            s.close()
    assert "refused a connection from 127.0.0.4:" in daemon.stderr()


def test_peer_addresses_are_normalised() -> None:
    assert str(peer_address("::ffff:127.0.0.2")) == "127.0.0.2"
    assert str(peer_address("fe80::1%eth0")) == "fe80::1"
    assert str(peer_address("::1")) == "::1"
    assert peer_address("not an address") is None


def test_a_name_with_two_addresses_gets_two_sockets() -> None:
    try:
        socks = open_sockets("localhost", 0, 8)
    except OSError as exc:  # e.g. "localhost" resolving to a port already taken on one family
        pytest.skip(f"cannot bind localhost: {exc}")
    try:
        families = {s.family for s in socks}
        assert socket.AF_INET in families
        assert len({s.getsockname()[1] for s in socks}) == 1  # port 0: the same chosen port on each
        for s in socks:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in socks:
            s.close()


def test_the_ipv6_wildcard_is_dual_stack() -> None:
    (sock,) = open_sockets("::", 0, 8)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            sock.setblocking(True)
            sock.settimeout(5)
            conn, peer = sock.accept()
            conn.close()
        assert peer[0] == "::ffff:127.0.0.1"
    finally:
        sock.close()


def test_the_cap_counts_an_ipv6_slash_64_as_one_client_and_exempts_the_host() -> None:
    limits = ConnectionLimits(2, 100, [ipaddress.ip_network("127.0.0.1/32")])
    first, second, third = (ipaddress.ip_address(f"2001:db8::{i}") for i in (1, 2, 3))
    assert limits.admit(first) is None and limits.admit(second) is None
    assert limits.admit(third) == "per_client"  # same /64: one client
    assert limits.admit(ipaddress.ip_address("2001:db8:0:1::1")) is None  # the next /64 is another
    for _ in range(10):
        assert limits.admit(ipaddress.ip_address("127.0.0.1")) is None
    limits.release(first)
    assert limits.admit(third) is None
    assert limits.capped_open == 3


def test_the_capped_clients_share_refuses_with_total() -> None:
    limits = ConnectionLimits(5, 3, [])
    addrs = [ipaddress.ip_address(f"10.0.0.{i}") for i in range(1, 5)]
    assert [limits.admit(a) for a in addrs] == [None, None, None, "total"]
    limits.release(addrs[0])
    assert limits.admit(addrs[3]) is None
