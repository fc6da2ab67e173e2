"""A trusted reverse proxy that passes no usable X-Forwarded-For, against the real daemon and dockerd.

The setup an owner gets from a stock ``proxy_pass``: nginx on the same box (127.0.0.2 here, inside the local
networks and listed in ``trusted_proxies``) forwards internet clients but sets no ``X-Forwarded-For``. Every
such request used to be the proxy's own, local address: token-less access for the whole internet. A request
from a trusted proxy without a usable hop (missing, empty, garbled, or naming only proxies) is now a remote
client of unknown address: it needs a token, and all such clients share one rate-limit bucket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nekzusd.keys import RATE_LIMITER, TOKENS
from tests.harness.app import remote_connector, run_container, unique, wait_for

C = "/api/v1/containers"
PROXY = "127.0.0.2"
SECRET_VALUE = "proxy-sesame-5519"

UNUSABLE = [
    None,  # no header at all
    "",
    " ",
    ",",
    "unknown",  # what nginx writes for a unix-socket client
    "garbage",
    "203.0.113.5, garbage",  # garbled where it counts: the right-most hop
    "203.0.113.5,",
    PROXY,  # only trusted proxies
    f"{PROXY}, {PROXY}",
    "127.0.0.2:5555",
    "[::ffff:127.0.0.2]",
    "_hidden",  # an RFC 7239 obfuscated identifier
]


def proxy_config(config_data: dict[str, Any]) -> dict[str, Any]:
    config_data["auth"] = {"local_networks": ["127.0.0.0/8"], "trusted_proxies": [f"{PROXY}/32"]}
    return config_data


async def through_proxy(make_client, config_data) -> Any:
    return await make_client(proxy_config(config_data), connector=remote_connector(PROXY))


def forwarded(xff: str | None) -> dict[str, str]:
    return {} if xff is None else {"X-Forwarded-For": xff}


async def started_at(engine, cid: str) -> str:
    return (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]["StartedAt"]


@pytest.fixture
async def target(engine) -> str:
    return await run_container(engine, unique("proxied"), env={"DB_PASSWORD": SECRET_VALUE},
                               labels={"nekzus.app.id": "grafana"})


@pytest.mark.parametrize("xff", UNUSABLE)
async def test_no_usable_forwarded_for_is_never_local(make_client, config_data, engine, target, xff):
    client = await through_proxy(make_client, config_data)
    headers = {"Host": "127.0.0.1", **forwarded(xff)}
    before = await started_at(engine, target)
    for method, path, body in (("GET", C, None), ("POST", f"{C}/{target}/restart", None),
                               ("POST", f"{C}/{target}/export", {"sanitize_secrets": False})):
        response = await client.request(method, path, json=body, headers=headers)
        text = await response.text()
        assert response.status == 401 and '"UNAUTHORIZED"' in text, (xff, path, response.status, text)
        assert SECRET_VALUE not in text
    ws = await client.ws_connect("/api/v1/ws", headers=headers)
    await ws.send_json({"type": "auth", "data": {"token": ""}})
    reply = await ws.receive_json(timeout=5)
    await ws.close()
    assert reply["type"] == "auth_failed" and reply["data"]["error"] == "UNAUTHORIZED", (xff, reply)
    assert await started_at(engine, target) == before


async def test_the_proxy_still_forwards_local_and_token_clients(make_client, config_data, engine, target):
    client = await through_proxy(make_client, config_data)
    response = await client.get(C, headers={"Host": "127.0.0.1", "X-Forwarded-For": "127.0.0.1"})
    assert response.status == 200 and target in await response.text()  # a local client behind the proxy
    token = client.app[TOKENS].create("phone", ["write:containers"], 600)
    for xff in (None, "garbage", PROXY):  # an unknown client with a token is served like any remote one
        headers = {"Authorization": f"Bearer {token}", **forwarded(xff)}
        assert (await client.get(C, headers=headers)).status == 200, xff
    before = await started_at(engine, target)
    response = await client.post(f"{C}/{target}/restart?timeout=1", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 202

    async def restarted() -> bool:
        return await started_at(engine, target) != before
    await wait_for(restarted, timeout=30)


async def test_direct_local_clients_are_unaffected(client):
    """127.0.0.1 is no proxy in the default config: its missing header means nothing, it is local."""
    assert (await client.get(C)).status == 200


async def test_unknown_clients_share_one_rate_limit_bucket(make_client, config_data):
    """However the header is garbled, unknown clients draw from the same bucket; real clients keep theirs."""
    config_data["rate_limit"] = {"containers": {"per_minute": 1, "burst": 3}}
    client = await through_proxy(make_client, config_data)
    statuses = []
    for xff in UNUSABLE[:6]:
        async with client.get(C, headers=forwarded(xff)) as response:
            statuses.append(response.status)
            if response.status == 429:
                assert (await response.json())["error"] == "RATE_LIMITED"
                assert int(response.headers["Retry-After"]) >= 1
    assert statuses == [401, 401, 401, 429, 429, 429], statuses
    async with client.get(C, headers={"X-Forwarded-For": "203.0.113.5"}) as response:
        assert response.status == 401  # a known remote client: its own, full bucket
        assert response.headers["RateLimit-Remaining"] == "2"
    async with client.get(C, headers={"X-Forwarded-For": "127.0.0.1"}) as response:
        assert response.status == 200  # a local client behind the proxy: exempt
    assert client.app[RATE_LIMITER].rejected == 3
