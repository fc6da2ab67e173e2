"""The WebSocket endpoint: handshake (local and token), envelope errors, ping, auth timeout."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import WSMsgType

from nekzusd import ws as ws_module
from nekzusd.auth import Tokens, load_or_create_secret
from tests.harness.app import ws_connect


def remote_config(config_data: dict) -> dict:
    """The test client (127.0.0.1) is not local: tokens are required."""
    config_data["auth"] = {"local_networks": ["10.0.0.0/8"]}
    return config_data


def tokens_for(config_data: dict) -> Tokens:
    from pathlib import Path
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    return Tokens(secret, "nekzus", "nekzus")


async def test_local_client_handshake_and_ping(client):
    ws = await ws_connect(client)
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}
    await ws.close()


@pytest.mark.parametrize("raw, code", [
    ("not json", "INVALID_MESSAGE"),
    ("[1, 2]", "INVALID_MESSAGE"),
    ('{"data": {}}', "INVALID_MESSAGE"),
    ('{"type": "ping", "data": 5}', "INVALID_MESSAGE"),
    ('{"type": "launch.rockets", "data": {}}', "UNKNOWN_MESSAGE_TYPE"),
])
async def test_bad_messages_get_errors_and_the_connection_stays(client, raw, code):
    ws = await ws_connect(client)
    await ws.send_str(raw)
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "error" and reply["data"]["error"] == code and reply["data"]["message"]
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}
    await ws.close()


async def test_remote_client_authenticates_with_first_message(make_client, config_data):
    client = await make_client(remote_config(config_data))
    token = tokens_for(config_data).create("phone", ["read:containers"], 600)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": "x"}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "error" and reply["data"]["error"] == "UNAUTHORIZED"
    await ws.send_json({"type": "auth", "data": {"token": token}})
    assert await ws.receive_json(timeout=5) == {
        "type": "auth_success", "data": {"deviceId": "phone", "message": "authenticated"}}
    await ws.close()


async def test_remote_client_with_bearer_header(make_client, config_data):
    client = await make_client(remote_config(config_data))
    token = tokens_for(config_data).create("script", ["*"], 600)
    ws = await client.ws_connect("/api/v1/ws", headers={"Authorization": f"Bearer {token}"})
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}
    await ws.close()


async def test_remote_bad_token_fails_and_closes(make_client, config_data):
    client = await make_client(remote_config(config_data))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": "not.a.token"}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "auth_failed" and reply["data"]["error"] == "UNAUTHORIZED"
    closing = await ws.receive(timeout=5)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == 1008


async def test_remote_bad_bearer_header_is_refused_before_upgrade(make_client, config_data):
    client = await make_client(remote_config(config_data))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/api/v1/ws", headers={"Authorization": "Bearer nonsense"})
    assert info.value.status == 401


async def test_local_client_bad_token_is_ignored(client):
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": "garbage"}})
    assert (await ws.receive_json(timeout=5))["data"]["deviceId"] == "local"
    await ws.close()


async def test_remote_client_that_never_authenticates_is_closed(make_client, config_data, monkeypatch):
    monkeypatch.setattr(ws_module, "AUTH_TIMEOUT", 0.5)  # a timing constant, not a replaced component
    client = await make_client(remote_config(config_data))
    ws = await client.ws_connect("/api/v1/ws")
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "auth_failed" and reply["data"]["error"] == "AUTH_TIMEOUT"
    closing = await ws.receive(timeout=5)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == 1008
