"""DNS rebinding against the real daemon and the real dockerd: a local address is not enough for local trust.

The attack: a page on ``http://rebind.attacker.example:8443`` re-resolves its own name to the server. The
browser then connects from a local address (here 127.0.0.1, local in the default config) and sends Host,
Origin and ``Sec-Fetch-Site: same-origin`` that all name the attacker. Every such request must need a token;
the same requests with a Host that names this server (an IP literal, localhost, the machine's names, an
``allowed_hosts`` name) keep the token-less local access, and a token works whatever the Host (a reverse
proxy with its own domain).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from nekzusd import config as config_mod
from nekzusd.config import ConfigError
from nekzusd.hostnames import CACHE_SIZE, ServerNames, normalise, own_names
from nekzusd.keys import TOKENS
from tests.harness.app import next_message, run_container, unique, wait_for

C = "/api/v1/containers"
ATTACKER = "rebind.attacker.example:8443"
SECRET_VALUE = "rebind-sesame-7731"


def browser_headers(host: str) -> dict[str, str]:
    """What a browser sends for a same-origin fetch of a page served under ``host``."""
    return {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}


HOSTILE_HOSTS = [
    ATTACKER,
    "rebind.attacker.example",
    "REBIND.Attacker.Example.",
    "127.0.0.1.attacker.example",
    "localhost.attacker.example",
    "localhost.attacker.example.:80",
    "evil.localhost",  # only localhost itself: a subdomain is a name someone else may answer for
    "user@127.0.0.1",
    "127.0.0.1@attacker.example",
    "localhost:80@attacker.example",
    "127.0.0.1:80:81",
    "127.0.0.1:",
    "127.0.0.1:8o",
    "127.0.0.1:123456",
    "0x7f.1",
    "0x7f000001",
    "2130706433",
    "127.1",
    "0177.0.0.1",
    "127.0.0.01",
    "127.000.000.001",
    "[127.0.0.1]",
    "[::1",
    "::1",
    "[::1]x",
    "[::1]:",
    "[fe80::1%25eth0]",
    "[v1.fe]",
    "[]",
    "local host",
    "localhost/x",
    "xn--localhost-",
    "",
    ".",
    "..localhost",
]


# --- the grammar, as pure functions -----------------------------------------------------------------

NAMES = ServerNames([*own_names("srv", "srv.home.example"), "nas.home.arpa"])


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_hosts_do_not_name_this_server(host):
    assert not NAMES.match(host)


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.0.0.1:8443", "127.0.0.1.", "10.1.2.3", "192.168.1.20:8443", "0.0.0.0",
    "[::1]", "[::1]:8443", "[::ffff:127.0.0.1]:8443", "[2001:DB8::1]",
    "localhost", "LOCALHOST:8443", "localhost.", "localhost.:8443",
    "srv", "SRV.local", "srv.home.example", "srv.home.example.:8443", "nas.home.arpa", "NAS.Home.Arpa:443",
])
def test_names_of_this_server(host):
    assert NAMES.match(host)


def test_normalised_forms():
    assert normalise("LocalHost.:8443") == "localhost"
    assert normalise("[0:0::1]:1") == "[::1]"
    assert normalise("lоcalhost") is None  # a Cyrillic "о": not ASCII, never equal to localhost
    assert normalise("\u212aube.local") is None  # Kelvin sign lower-cases to "k" in Python: refused first
    assert NAMES.match(None) is False


def test_remembered_answers_stay_bounded_and_right():
    """A client that varies its Host on every request cannot grow memory, nor poison later answers."""
    names = ServerNames(own_names("srv", ""))
    for i in range(5 * CACHE_SIZE):
        assert not names.match(f"rebind-{i}.attacker.example")
        assert len(names._answers) <= CACHE_SIZE
    assert names.match("127.0.0.1:8443") and names.match("SRV.local") and not names.match("srv.attacker.example")
    assert not names.match("localhost" + "." * 300)  # longer than any host: refused, not remembered
    assert "localhost" + "." * 300 not in names._answers


@pytest.mark.parametrize("value, words", [
    (["*.home.arpa"], "wildcards"),
    (["nas.home.arpa:8443"], "not a host name"),
    (["https://nas.home.arpa"], "not a host name"),
    (["user@nas"], "not a host name"),
    (["nås.home.arpa"], "xn--"),
    (["[::1]"], "not a host name"),
    ([""], "not a host name"),
    ("nas.home.arpa", "must be a list"),
    ([7], "must be a string"),
])
def test_allowed_hosts_are_validated(config_data, value, words):
    config_data["server"]["allowed_hosts"] = value
    with pytest.raises(ConfigError) as info:
        config_mod.parse(config_data, env={})
    assert any(p.startswith("server.allowed_hosts") and words in p for p in info.value.problems), info.value.problems


def test_allowed_hosts_are_normalised(config_data):
    config_data["server"]["allowed_hosts"] = ["NAS.Home.Arpa.", "xn--ns-xia.home.arpa"]
    assert config_mod.parse(config_data, env={}).server.allowed_hosts == ("nas.home.arpa", "xn--ns-xia.home.arpa")


# --- the attack against the running daemon ----------------------------------------------------------

async def status_and_body(response: aiohttp.ClientResponse) -> tuple[int, str]:
    return response.status, await response.text()


async def started_at(engine, cid: str) -> str:
    return (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]["StartedAt"]


async def ws_auth(client, headers: dict[str, str], token: str = "") -> dict[str, Any]:
    """Upgrade with ``headers``, send the auth message, return the answer. A client trusted as local is
    authenticated from the moment it connects, so a broadcast (health_change) may come first: skipped."""
    ws = await client.ws_connect("/api/v1/ws", headers=headers)
    try:
        await ws.send_json({"type": "auth", "data": {"token": token}})
        while (reply := await ws.receive_json(timeout=5))["type"] not in ("auth_success", "auth_failed", "error"):
            pass
        return reply
    finally:
        await ws.close()


async def attack(client, engine, cid: str, headers: dict[str, str]) -> None:
    """List, restart, unsanitised export and the WebSocket handshake, each refused; nothing reached the engine."""
    before = await started_at(engine, cid)
    status, body = await status_and_body(await client.get(C, headers=headers))
    assert status == 401 and '"UNAUTHORIZED"' in body, (headers, status, body)
    status, body = await status_and_body(await client.post(f"{C}/{cid}/restart", headers=headers))
    assert status == 401 and '"UNAUTHORIZED"' in body, (headers, status, body)
    status, body = await status_and_body(
        await client.post(f"{C}/{cid}/export", json={"sanitize_secrets": False}, headers=headers))
    assert status == 401 and SECRET_VALUE not in body, (headers, status, body)
    reply = await ws_auth(client, headers)
    assert reply["type"] == "auth_failed" and reply["data"]["error"] == "UNAUTHORIZED", (headers, reply)
    for page in ("/", "/metrics"):  # what runs on the server, for the same readers as the API
        status, body = await status_and_body(await client.get(page, headers=headers))
        assert status == 401 and cid not in body, (page, headers, status)
    assert await started_at(engine, cid) == before  # the restart never ran


async def allowed(client, engine, cid: str, headers: dict[str, str]) -> None:
    """The same four requests succeed without a token."""
    before = await started_at(engine, cid)
    status, body = await status_and_body(await client.get(C, headers=headers))
    assert status == 200 and cid in body, (headers, status)
    status, body = await status_and_body(
        await client.post(f"{C}/{cid}/export", json={"sanitize_secrets": False}, headers=headers))
    assert status == 200 and SECRET_VALUE in body, (headers, status)
    reply = await ws_auth(client, headers)
    assert reply == {"type": "auth_success", "data": {"deviceId": "local", "message": "authenticated"}}, headers
    for page in ("/", "/metrics"):
        assert (await client.get(page, headers=headers)).status == 200, (page, headers)
    response = await client.post(f"{C}/{cid}/restart?timeout=1", headers=headers)
    assert response.status == 202, (headers, response.status)

    async def restarted() -> bool:
        return await started_at(engine, cid) != before
    await wait_for(restarted, timeout=30)


@pytest.fixture
async def target(engine) -> str:
    return await run_container(engine, unique("rebind"), env={"DB_PASSWORD": SECRET_VALUE},
                               labels={"nekzus.app.id": "grafana"})  # listed: linked to a config app


async def test_rebinding_host_gets_no_local_trust(client, engine, target):
    """The attack as a browser makes it: Host, Origin and Sec-Fetch-Site all name the attacker."""
    await attack(client, engine, target, browser_headers(ATTACKER))
    await attack(client, engine, target, {"Host": ATTACKER})  # a non-browser client, no fetch metadata


@pytest.mark.parametrize("host", [h for h in HOSTILE_HOSTS if h and h.isascii() and " " not in h])
async def test_every_hostile_host_needs_a_token(client, host):
    status, body = await status_and_body(await client.get(C, headers={"Host": host}))
    assert status == 401 and '"UNAUTHORIZED"' in body, (host, status, body)


async def test_names_of_this_server_keep_local_trust(make_client, config_data, engine, target):
    config_data["server"]["allowed_hosts"] = ["nas.home.arpa"]
    client = await make_client(config_data)
    port = client.server.port
    hostname = socket.gethostname()
    hosts = ["127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}",
             f"{hostname.upper()}.:{port}", f"{hostname.split('.')[0]}.local", "nas.home.arpa",
             f"NAS.home.arpa:{port}"]
    for host in hosts:
        status, _ = await status_and_body(await client.get(C, headers=browser_headers(host)))
        assert status == 200, host
    for host in (f"127.0.0.1:{port}", "localhost", "nas.home.arpa:8443"):
        await allowed(client, engine, target, browser_headers(host))


async def test_allowed_host_does_not_open_other_names(make_client, config_data, engine, target):
    config_data["server"]["allowed_hosts"] = ["nas.home.arpa"]
    client = await make_client(config_data)
    for host in ("nas.home.arpa.attacker.example", "evil.nas.home.arpa", "nas.home.arpa@attacker.example"):
        await attack(client, engine, target, browser_headers(host))


async def test_a_token_works_whatever_the_host(client, engine, target):
    """A local caller that names the attacker still gets in with a token, like anyone else."""
    token = client.app[TOKENS].create("phone", ["write:containers"], 600)
    headers = {**browser_headers(ATTACKER), "Authorization": f"Bearer {token}"}
    response = await client.get(C, headers=headers)
    assert response.status == 200
    reply = await ws_auth(client, browser_headers(ATTACKER), token)
    assert reply == {"type": "auth_success", "data": {"deviceId": "phone", "message": "authenticated"}}
    bad = {**browser_headers(ATTACKER), "Authorization": "Bearer not-a.jwt"}
    assert (await client.get(C, headers=bad)).status == 401  # and a bad token is refused, not ignored


async def test_token_through_a_reverse_proxy_with_its_own_domain(remote_client, config_data, engine, target):
    """nginx on 127.0.0.2 serves nekzusd as containers.example.com and passes Host and X-Forwarded-For."""
    client = await remote_client(config_data, local_networks=["127.0.0.1/32", "192.168.0.0/16"],
                                 trusted_proxies=["127.0.0.2/32"])
    token = client.app[TOKENS].create("phone", ["write:containers"], 600)
    proxied = {"Host": "containers.example.com", "X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"}
    assert (await client.get(C, headers=proxied)).status == 401
    with_token = {**proxied, "Authorization": f"Bearer {token}"}
    response = await client.get(C, headers=with_token)
    assert response.status == 200 and target in await response.text()
    before = await started_at(engine, target)
    assert (await client.post(f"{C}/{target}/restart?timeout=1", headers=with_token)).status == 202

    async def restarted() -> bool:
        return await started_at(engine, target) != before
    await wait_for(restarted, timeout=30)
    reply = await ws_auth(client, proxied, token)
    assert reply["type"] == "auth_success" and reply["data"]["deviceId"] == "phone"
    # a LAN client through the proxy: its address is local, but the proxy's domain is not a name of ours
    lan = {**proxied, "X-Forwarded-For": "192.168.1.20"}
    assert (await client.get(C, headers=lan)).status == 401


async def test_proxy_domain_in_allowed_hosts_trusts_lan_clients_behind_it(remote_client, config_data):
    config_data["server"]["allowed_hosts"] = ["containers.example.com"]
    client = await remote_client(config_data, local_networks=["127.0.0.1/32", "192.168.0.0/16"],
                                 trusted_proxies=["127.0.0.2/32"])
    lan = {"Host": "containers.example.com", "X-Forwarded-For": "192.168.1.20"}
    assert (await client.get(C, headers=lan)).status == 200
    internet = {**lan, "X-Forwarded-For": "203.0.113.5"}
    assert (await client.get(C, headers=internet)).status == 401  # the name alone is not trust


async def test_websocket_upgrade_with_rebinding_host_cannot_subscribe(client, target):
    """The socket opens (a token may follow), but nothing is served before a token."""
    ws = await client.ws_connect("/api/v1/ws", headers=browser_headers(ATTACKER))
    await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": target}})
    reply = await next_message(ws, "error")
    assert reply["data"]["error"] == "UNAUTHORIZED"
    await ws.close()


# --- what only a hand-made client can send ----------------------------------------------------------

async def raw_exchange(port: int, head: bytes) -> tuple[int, bytes]:
    """Send one request head as bytes (``Connection: close``) and return the status and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


@pytest.mark.parametrize("head, status", [
    (b"GET /api/v1/containers HTTP/1.0\r\n\r\n", 401),  # HTTP/1.0, no Host at all
    (b"GET /api/v1/containers HTTP/1.1\r\nConnection: close\r\n\r\n", 400),  # HTTP/1.1 demands a Host
    (b"GET http://rebind.attacker.example/api/v1/containers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     b"Connection: close\r\n\r\n", 401),  # the absolute target names the attacker
    (b"GET http://127.0.0.1@rebind.attacker.example/api/v1/containers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     b"Connection: close\r\n\r\n", 401),
    (b"GET http://127.0.0.1/api/v1/containers HTTP/1.1\r\nHost: rebind.attacker.example\r\n"
     b"Connection: close\r\n\r\n", 401),  # and the Host must name us too
    (b"GET /api/v1/containers HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: rebind.attacker.example\r\n"
     b"Connection: close\r\n\r\n", 400),  # two Hosts: refused by the parser
    (b"GET /api/v1/containers HTTP/1.1\r\nHost: rebind.attacker.example\r\nhost: 127.0.0.1\r\n"
     b"Connection: close\r\n\r\n", 400),
    (b"GET /api/v1/containers HTTP/1.1\r\nHost: l\xd0\xbecalhost\r\nConnection: close\r\n\r\n", 401),  # Cyrillic
    (b"GET /api/v1/containers HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n\r\n", 401),
    (b"GET /api/v1/containers HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", 401),
    (b"GET //127.0.0.1/api/v1/containers HTTP/1.1\r\nHost: rebind.attacker.example\r\n"
     b"Connection: close\r\n\r\n", 404),  # a path, not an authority: no such route, and Host is not read from it
    # the good forms, for contrast
    (b"GET /api/v1/containers HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 200),
    (b"GET http://localhost/api/v1/containers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 200),
    (b"GET http://[::1]:8443/api/v1/containers HTTP/1.1\r\nHost: [::1]:8443\r\nConnection: close\r\n\r\n", 200),
])
async def test_raw_requests(client, head, status):
    got, answer = await raw_exchange(client.server.port, head)
    assert got == status, answer[:400]
    if status == 401:
        assert b'"UNAUTHORIZED"' in answer


async def test_websocket_upgrade_without_host_is_not_local(client):
    """A hand-made HTTP/1.0-style upgrade naming nothing: the socket opens, auth with no token fails."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"GET /api/v1/ws HTTP/1.1\r\nHost: rebind.attacker.example\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            payload = b'{"type":"auth","data":{"token":""}}'
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            await writer.drain()
            frame = await reader.readexactly(2)
            text = await reader.readexactly(frame[1] & 0x7F)
    finally:
        writer.close()
        await writer.wait_closed()
    assert b'"auth_failed"' in text and b'"UNAUTHORIZED"' in text
