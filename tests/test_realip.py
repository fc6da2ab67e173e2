"""The client address (docs/api.md): the TCP peer, X-Forwarded-For only from trusted proxies, IPv4/IPv6/mapped.

Pure functions first, then the running daemon seen from real sockets: 127.0.0.2 (remote in these
configs), a dual-stack listener that sees IPv4 clients as ::ffff:a.b.c.d, and IPv6 loopback.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import pytest

from nekzusd.realip import client_address, parse_ip
from tests.harness.app import remote_session

ip = ipaddress.ip_address
nets = lambda *n: tuple(ipaddress.ip_network(x) for x in n)  # noqa: E731


@pytest.mark.parametrize("text, want", [
    ("192.0.2.7", "192.0.2.7"),
    (" 192.0.2.7 ", "192.0.2.7"),
    ("192.0.2.7:5678", "192.0.2.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:10.1.2.3", "10.1.2.3"),  # IPv4-mapped: the IPv4 address it carries
    ("[::ffff:10.1.2.3]:80", "10.1.2.3"),
    ("unknown", None),
    ("", None),
    ("10.0.0.300", None),
    ("_hidden", None),
])
def test_parse_ip(text, want):
    assert parse_ip(text) == (ip(want) if want else None)


PROXIES = nets("127.0.0.1/32", "10.9.0.0/16", "fd00:9::/64")


@pytest.mark.parametrize("peer, xff, want", [
    # an untrusted peer: its header is ignored, whatever it claims
    ("198.51.100.4", ["127.0.0.1"], "198.51.100.4"),
    ("198.51.100.4", ["10.9.0.1, 127.0.0.1"], "198.51.100.4"),
    # a trusted proxy: the right-most hop that is not a proxy
    ("127.0.0.1", ["203.0.113.5"], "203.0.113.5"),
    ("127.0.0.1", ["127.0.0.1, 203.0.113.5"], "203.0.113.5"),  # the client's own claim (left) ignored
    ("127.0.0.1", ["198.51.100.9, 203.0.113.5, 10.9.3.3"], "203.0.113.5"),  # chain of proxies
    ("127.0.0.1", ["198.51.100.9", "203.0.113.5"], "203.0.113.5"),  # several header lines, in order
    ("127.0.0.1", ["2001:db8::5, fd00:9::1"], "2001:db8::5"),
    ("127.0.0.1", ["[2001:db8::5]:1234"], "2001:db8::5"),
    ("127.0.0.1", ["::ffff:203.0.113.5"], "203.0.113.5"),
    ("::ffff:127.0.0.1", ["203.0.113.5"], "203.0.113.5"),  # a mapped peer is the IPv4 proxy
    ("127.0.0.1", [], None),  # no header: an unknown client, never the proxy itself
    ("127.0.0.1", [""], None),
    ("127.0.0.1", ["10.9.0.1"], None),  # every hop a proxy: who sent it is unknown
    ("127.0.0.1", ["10.9.0.1, 127.0.0.1"], None),
    ("127.0.0.1", ["garbage, 203.0.113.5"], "203.0.113.5"),  # garbage left of the real hop does not matter
    ("127.0.0.1", ["203.0.113.5, garbage"], None),  # garbled where it counts: unknown, never the proxy
    (None, ["127.0.0.1"], None),
])
def test_client_address(peer, xff, want):
    assert client_address(peer, xff, PROXIES) == (ip(want) if want else None)


def test_no_trusted_proxies_means_the_peer():
    assert client_address("127.0.0.1", ["203.0.113.5"], ()) == ip("127.0.0.1")


# --- the running daemon: locality as the API sees it -------------------------------------------

async def status_of(client, path="/api/v1/apps", **kwargs) -> int:
    async with client.get(path, **kwargs) as resp:
        await resp.read()
        return resp.status


async def test_spoofed_forwarded_for_is_ignored_from_an_untrusted_peer(remote_client, config_data):
    client = await remote_client(config_data)
    assert await status_of(client) == 401
    assert await status_of(client, headers={"X-Forwarded-For": "127.0.0.1"}) == 401
    assert await status_of(client, headers={"X-Forwarded-For": "10.0.0.1, 127.0.0.1"}) == 401


async def test_forwarded_for_is_honoured_from_a_trusted_proxy(remote_client, config_data):
    client = await remote_client(config_data, local_networks=["192.168.0.0/16"], trusted_proxies=["127.0.0.2/32"])
    assert await status_of(client) == 401  # the proxy itself is not local
    assert await status_of(client, headers={"X-Forwarded-For": "192.168.1.20"}) == 200
    # a client behind the proxy cannot make itself local by writing the header first
    assert await status_of(client, headers={"X-Forwarded-For": "192.168.1.20, 203.0.113.5"}) == 401


async def test_forwarded_for_feeds_the_rate_limiter_too(remote_client, config_data):
    """Behind a trusted proxy, each real client has its own bucket (not one shared by the proxy)."""
    config_data["rate_limit"] = {"apps": {"per_minute": 1, "burst": 2}}
    client = await remote_client(config_data, local_networks=["192.168.0.0/16"], trusted_proxies=["127.0.0.2/32"])
    first = {"X-Forwarded-For": "203.0.113.5"}
    assert [await status_of(client, headers=first) for _ in range(3)] == [401, 401, 429]
    assert await status_of(client, headers={"X-Forwarded-For": "203.0.113.6"}) == 401  # a fresh bucket
    assert await status_of(client, headers={"X-Forwarded-For": "192.168.1.20"}) == 200  # local: exempt


async def test_ipv4_mapped_peer_on_a_dual_stack_listener(make_client, config_data):
    """A listener on :: sees IPv4 clients as ::ffff:127.0.0.x; IPv4 networks in the config still apply."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    config_data["auth"] = {"local_networks": ["127.0.0.1/32"]}
    try:
        local = await make_client(config_data, server_kwargs={"host": "::"})
    except OSError as exc:
        pytest.skip(f"cannot listen on ::: {exc}")
    port = local.server.port
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/v1/apps") as resp:
            assert resp.status == 200
        async with remote_session() as other:
            async with other.get(f"http://127.0.0.1:{port}/api/v1/apps") as resp:
                assert resp.status == 401


async def test_ipv6_loopback_is_local_only_when_configured(make_client, config_data):
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 sockets here")
    config_data["auth"] = {"local_networks": ["::1/128"]}
    try:
        client = await make_client(config_data, server_kwargs={"host": "::1"})
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    assert await status_of(client) == 200
    config_data["auth"] = {"local_networks": ["127.0.0.0/8"]}
    client = await make_client(config_data, server_kwargs={"host": "::1"})
    assert await status_of(client) == 401
